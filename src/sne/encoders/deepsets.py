"""DeepSets baseline (Zaheer et al. 2017): all of a network's parameters as one unordered set.

    element (a scalar weight or bias) -> features -> phi (MLP) - reference -> mean over the network
    -> batch norm -> rho (MLP) -> z

The set holds every value of every floating-point tensor of every operation (weights, biases,
normalisation scales, shifts and running statistics, attention projections, free parameters);
integer buffers and operations of kind ``buffer`` are left out. An element's features are its
value and, with ``layer_features`` (the default), a sinusoidal encoding of its tensor's
*position* (:func:`tensor_positions`): what a set of all weights can know without breaking
invariance, since a functionally-equivalent permutation moves values only within their own
tensor. Every operation reserves a weight slot and a bias slot and takes one more slot per further
tensor, so a chain's positions are ``2 * level + is_bias``, as in the first release, and trained
encoders keep their fitted statistics. ``layer_features=false`` gives the pure set of values, the
SNE paper's DeepSets baseline.

Two fitted input statistics make it learn at all on zoos whose networks differ little (measured on
the shared-init test zoo: without them it stayed at the mean predictor). ``standardize``: values
are standardised per position with training statistics (layers differ in scale by orders of
magnitude). ``reference``: from every element's phi code, the mean phi code of a reference set of
its position is subtracted, the set being quantiles of the training networks' values there; the
pooled code then says how a network's distributions differ from the population's, instead of
being 99 % what all networks share, and that stays true while phi trains.

Nothing depends on layer shapes: one encoder takes any architecture (positions never seen in
training are used raw), and its codes are exactly invariant to neuron permutations (up to
floating-point summation order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sne.encoders.base import Architecture, Encoder, register_encoder
from sne.encoders.common import build_mlp, mean_std, check_positive_int, check_widths, quantiles, resolve_options
from sne.encoders.positional import sinusoidal_encoding
from sne.errors import SneError
from sne.weights.record import NetworkRecord

DEFAULT_OPTIONS: dict[str, Any] = {
    "phi_hidden": [64, 64],
    "rho_hidden": [64],
    "width": 64,
    "out_dim": 32,
    "pooling": "mean",
    "layer_features": True,
    "position_dim": 16,
    "standardize": True,
    "reference": True,
    "batch_norm": True,
}
POOLINGS = ("mean", "sum")
#: Positions (:func:`tensor_positions`) with fitted statistics; later ones are used raw.
MAX_FITTED_POSITIONS = 256
#: Size of each position's reference set (evenly spaced quantiles of the training values).
REFERENCE_QUANTILES = 32
#: Elements whose phi codes are computed (and, in training, checkpointed) together: bounds the memory
#: of a batch by this block (~0.5 GB of activations at the default widths), not by the networks' size.
ELEMENT_BLOCK = 2**19


@dataclass
class ElementBatch:
    """All parameters of a batch of networks, concatenated.

    ``values`` (elements,); ``position`` (elements,) :func:`tensor_positions`; ``network`` (elements,)
    the index of each element's network in the batch; ``counts`` (networks,) elements per network.
    """

    values: torch.Tensor
    position: torch.Tensor
    network: torch.Tensor
    counts: torch.Tensor


def tensor_positions(record: NetworkRecord) -> list[tuple[torch.Tensor, int]]:
    """Every floating-point tensor of ``record`` (operations of kind ``buffer`` left out) with its
    position: an operation's weight (``layer.weight``) at ``2 * level + shift``, its bias at
    ``2 * level + shift + 1``, its further tensors (normalisation statistics, attention's output
    projection, more free parameters) after them, in the operation's order, where ``shift`` counts
    the further tensors of earlier operations. A chain has none: ``2 * level + is_bias``."""
    tensors, shift = [], 0
    for layer in record.layers:
        if layer.kind == "buffer":
            continue
        weight, bias = layer.weight, layer.bias
        others = [t for t in layer.tensors.values()
                  if t.is_floating_point() and t.numel() and t is not weight and t is not bias]
        base = 2 * layer.level + shift
        for slot, tensor in ((0, weight), (1, bias)):
            if tensor is not None and tensor.is_floating_point() and tensor.numel():
                tensors.append((tensor, base + slot))
        tensors += [(tensor, base + 2 + i) for i, tensor in enumerate(others)]
        shift += len(others)
    return tensors


@register_encoder("deepsets")
class DeepSetsEncoder(Encoder):
    """Set of scalar parameters -> phi -> pooling -> rho -> z; takes any architecture.

    Trained at lr 3e-3 by default: at 1e-3 it stayed at the mean predictor for 20 epochs on the
    shared-init test zoo, at 3e-3 it reached 0.67 normalised MSE.

    Options (:data:`DEFAULT_OPTIONS`): ``phi_hidden`` / ``rho_hidden`` hidden widths of phi and
    rho; ``width`` size of phi's output (the pooled code); ``out_dim`` size of z; ``pooling``
    ``mean`` or ``sum`` over a network's elements; ``layer_features`` add the element's position
    encoding of ``position_dim`` features; ``standardize`` and ``reference`` (module docstring);
    ``batch_norm`` on the pooled code (as SNE's :class:`~sne.encoders.sne.SetPool`; codes then
    depend on the batch in training mode only).
    """

    default_train_options = {"lr": 3e-3}

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        o = resolve_options("deepsets", DEFAULT_OPTIONS, options)
        phi_hidden = check_widths("deepsets", "phi_hidden", o["phi_hidden"])
        rho_hidden = check_widths("deepsets", "rho_hidden", o["rho_hidden"])
        width = check_positive_int("deepsets", "width", o["width"])
        self.out_dim = check_positive_int("deepsets", "out_dim", o["out_dim"])
        check_positive_int("deepsets", "position_dim", o["position_dim"])
        if o["pooling"] not in POOLINGS:
            raise SneError(f"deepsets option pooling must be one of {', '.join(POOLINGS)}, got {o['pooling']!r}")
        for name in ("layer_features", "standardize", "reference", "batch_norm"):
            if not isinstance(o[name], bool):
                raise SneError(f"deepsets option {name} must be true or false, got {o[name]!r}")
        super().__init__(architecture=architecture, **o)
        self.register_buffer("value_mean", torch.zeros(MAX_FITTED_POSITIONS))
        self.register_buffer("value_std", torch.ones(MAX_FITTED_POSITIONS))
        # Reference sets, in the units phi sees; all zeros (and so a constant offset) until fitted.
        self.register_buffer("reference_values", torch.zeros(MAX_FITTED_POSITIONS, REFERENCE_QUANTILES))
        self.phi = build_mlp(1 + (o["position_dim"] if o["layer_features"] else 0), phi_hidden, width)
        self.norm = nn.BatchNorm1d(width) if o["batch_norm"] else nn.Identity()
        self.rho = build_mlp(width, rho_hidden, self.out_dim)

    @torch.no_grad()
    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        """Per position: mean and standard deviation of the training values, then the reference set."""
        batch = self.prepare(records)
        values = batch.values.to(torch.float64)
        quantile_levels = torch.linspace(0, 1, REFERENCE_QUANTILES, dtype=torch.float64)
        for position in batch.position.unique().tolist():
            if position >= MAX_FITTED_POSITIONS:
                continue
            selected = values[batch.position == position]
            if self.options["standardize"]:
                self.value_mean[position], self.value_std[position] = mean_std(selected)
                selected = (selected - self.value_mean[position].double()) / self.value_std[position].double()
            if self.options["reference"]:
                self.reference_values[position] = quantiles(selected, quantile_levels)

    def prepare(self, records: Sequence[NetworkRecord]) -> ElementBatch:
        if not records:
            raise SneError("cannot encode an empty batch of networks")
        values, positions, counts = [], [], []
        for record in records:
            count = 0
            for tensor, position in tensor_positions(record):
                values.append(tensor.reshape(-1).to(self.value_mean.dtype))
                positions.append(torch.full((tensor.numel(),), position, dtype=torch.long))
                count += tensor.numel()
            if not count:
                raise SneError(f"{record.source}: deepsets found nothing to encode (no floating-point parameters)")
            counts.append(count)
        counts_tensor = torch.tensor(counts)
        return ElementBatch(
            values=torch.cat(values).to(self.value_mean.dtype),
            position=torch.cat(positions),
            network=torch.repeat_interleave(torch.arange(len(records)), counts_tensor),
            counts=counts_tensor,
        )

    def _phi(self, values: torch.Tensor, position_codes: torch.Tensor | None) -> torch.Tensor:
        features = values.unsqueeze(-1)
        if position_codes is not None:
            features = torch.cat([features, position_codes], dim=-1)
        return self.phi(features)

    def _pool_phi(self, values: torch.Tensor, position: torch.Tensor, network: torch.Tensor,
                  table: torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` plus the phi codes of these elements summed per network."""
        codes = self._phi(values, None if table is None else table[position])
        return pooled.index_add(0, network, codes)

    def forward(self, batch: ElementBatch) -> torch.Tensor:
        dtype = self.value_mean.dtype
        num_positions = int(batch.position.max()) + 1
        fitted = torch.arange(num_positions, device=batch.position.device) < MAX_FITTED_POSITIONS
        fitted_index = torch.arange(num_positions, device=fitted.device).clamp_max(MAX_FITTED_POSITIONS - 1)
        mean = torch.where(fitted, self.value_mean[fitted_index], 0.0)
        std = torch.where(fitted, self.value_std[fitted_index], 1.0)
        values = (batch.values - mean[batch.position]) / std[batch.position]
        # Few distinct positions: encode each once, then look the elements' encodings up.
        table = None
        if self.options["layer_features"]:
            positions = torch.arange(num_positions, device=values.device)
            table = sinusoidal_encoding(positions, self.options["position_dim"], dtype=dtype)
        pooled = values.new_zeros(len(batch.counts), self.phi[-1].out_features)
        # Blocks of elements, checkpointed in training: a batch of large networks (tens of millions of
        # weights) would otherwise keep every element's phi activations for the backward pass.
        blocks = range(0, len(values), ELEMENT_BLOCK)
        checkpointed = torch.is_grad_enabled() and len(blocks) > 1
        for start in blocks:
            part = slice(start, start + ELEMENT_BLOCK)
            args = (values[part], batch.position[part], batch.network[part], table, pooled)
            pooled = checkpoint(self._pool_phi, *args, use_reentrant=False) if checkpointed else self._pool_phi(*args)
        if self.options["reference"]:
            reference = self.reference_values[fitted_index] * fitted.unsqueeze(-1)
            codes = table.unsqueeze(1).expand(-1, REFERENCE_QUANTILES, -1) if table is not None else None
            reference_codes = self._phi(reference, codes).mean(1)
            # Subtracting each element's reference code before pooling = subtracting their sum after it.
            per_position = torch.zeros(len(batch.counts), num_positions, dtype=torch.long, device=values.device)
            per_position.index_put_((batch.network, batch.position), torch.ones_like(batch.network), accumulate=True)
            pooled = pooled - per_position.to(pooled.dtype) @ reference_codes
        if self.options["pooling"] == "mean":
            pooled = pooled / batch.counts.unsqueeze(-1).to(pooled.dtype)
        return self.rho(self.norm(pooled))
