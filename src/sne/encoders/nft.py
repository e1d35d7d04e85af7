"""The neural functional transformer NFT (Zhou et al. 2023b), built from the ``nfn`` package's layers.

    weights, biases  -> per-layer standardisation (fitted on the training split)
                     -> per-entry Linear(1 -> hidden) + learned layer / input / output embeddings
                     -> [x + NPAttention(LN(x)); x + FF(LN(x))] x num_layers  (equivariant)
                     -> HNPPool -> flatten -> BatchNorm -> Linear             (invariant) -> z

The weight-space self-attention (``nfn.layers.NPAttention``), layer norm, embeddings and pooling
are the package's; this module assembles them into pre-norm transformer blocks. The attention is
equivariant to permutations of every neuron; the learned input and output embeddings
(``LearnedPosEmbedding``) give input and output neurons their identity back, so the pooling keeps
them (``HNPPool``) and the code is invariant to hidden-neuron permutations, as in the paper.
No layer norm before the pooling: it would divide out each entry's magnitude, and weight scales
carry much of what there is to predict (the residual stream keeps them). Takes one fixed chain of
linear and conv2d layers, like :mod:`sne.encoders.nfn`.

Weight-space outputs (:meth:`~sne.encoders.base.Encoder.make_weight_head`): the blocks map weight
space to weight space, so instead of pooling, a per-entry linear map (zero-initialised) reads one
value per parameter off the residual stream, as a transformer decodes its tokens; it is scaled
into weight units like :mod:`sne.encoders.nfn`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from nfn.common import WeightSpaceFeatures
from nfn.layers import ChannelLinear, HNPPool, LearnedPosEmbedding, NPAttention, SimpleLayerNorm, TupleOp
from torch import nn

from sne.encoders.base import Architecture, register_encoder
from sne.encoders.common import check_positive_int
from sne.encoders.nfn import WeightSpaceEncoder, from_wsfeat, network_spec, to_wsfeat, zero_parameters
from sne.errors import SneError
from sne.weights.batch import StackedWeights

#: hidden 32 rather than wider: NPAttention is memory-bound on the CPU, ~4x slower at hidden 64.
DEFAULT_OPTIONS: dict[str, Any] = {
    "hidden": 32, "heads": 4, "num_layers": 2, "ff_mult": 2, "out_dim": 32, "batch_norm": True,
}


class NFTBlock(nn.Module):
    """Pre-norm transformer block in weight space: self-attention, then a per-entry feed-forward."""

    def __init__(self, spec, channels: int, heads: int, ff_mult: int, share_projections: bool) -> None:
        super().__init__()
        self.attention_norm = SimpleLayerNorm(spec, channels)
        self.attention = NPAttention(spec, channels, num_heads=heads, share_projections=share_projections)
        self.feedforward_norm = SimpleLayerNorm(spec, channels)
        self.feedforward = TupleOp(nn.Sequential(
            ChannelLinear(channels, ff_mult * channels), nn.GELU(), ChannelLinear(ff_mult * channels, channels)
        ))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feedforward(self.feedforward_norm(x))


@register_encoder("nft")
class NFTEncoder(WeightSpaceEncoder):
    """Neural functional transformer; fixed architecture of linear and conv2d layers.

    Options: ``hidden`` channels of every weight-space entry; ``heads`` attention heads;
    ``num_layers`` transformer blocks; ``ff_mult`` feed-forward width as a multiple of ``hidden``;
    ``out_dim`` size of z; ``batch_norm`` (see :class:`~sne.encoders.nfn.WeightSpaceEncoder`).
    """

    defaults = DEFAULT_OPTIONS

    def build(self, architecture: Architecture, options: dict[str, Any]) -> None:
        for key in ("heads", "ff_mult"):
            check_positive_int(self.name, key, options[key])
        hidden, heads = options["hidden"], options["heads"]
        if hidden % heads:
            raise SneError(f"nft option hidden ({hidden}) must be divisible by heads ({heads})")
        spec = network_spec(architecture)
        # Shared query/key/value projections need every layer to have `hidden` channels per entry;
        # a conv layer has hidden x kernel taps, so conv networks get per-layer projections.
        share = all(kind == "linear" for kind, _, _ in architecture)
        self.embed = TupleOp(ChannelLinear(1, hidden))
        self.position = LearnedPosEmbedding(spec, hidden)
        self.blocks = nn.Sequential(*(NFTBlock(spec, hidden, heads, options["ff_mult"], share)
                                      for _ in range(options["num_layers"])))
        self.pool = HNPPool(spec)
        self.readout = self.readout_layer(hidden * HNPPool.get_num_outs(spec))

    def encode(self, batch: StackedWeights) -> torch.Tensor:
        return self.readout(self.pool(self.entry_states(batch)).flatten(1))

    def entry_states(self, batch: StackedWeights) -> WeightSpaceFeatures:
        """Every weight-space entry's state after the last block, ``hidden`` channels."""
        return self.blocks(self.position(self.embed(to_wsfeat(batch))))

    def build_weight_head(self) -> nn.Module:
        return zero_parameters(TupleOp(ChannelLinear(self.options["hidden"], 1)))

    def equivariant_outputs(self, batch: StackedWeights) -> StackedWeights:
        return from_wsfeat(self.weight_head(self.entry_states(batch)), batch.has_bias)
