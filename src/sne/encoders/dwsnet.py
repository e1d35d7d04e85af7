"""DWSNet (Navon et al. 2023): equivariant linear layers of a network's weight space, implemented here.

    weights, biases  -> per-layer standardisation (fitted on the training split)
                     -> [DWSLayer -> ReLU] x num_layers                   (equivariant)
                     -> mean over hidden neurons -> BatchNorm -> Linear   (invariant) -> z

The symmetry is the permutation of each hidden layer's neurons (input and output neurons keep
their identity). Each weight or bias tensor is seen as a *space*: an array over the hidden neuron
layers that index it (0, 1 or 2 axes) with a feature vector per entry that holds everything not
permuted — the channels, the input or output neurons it touches, and a convolution's kernel taps.

The layer is the full set of linear maps between these spaces that commute with the symmetry:
the weight-to-weight, weight-to-bias, bias-to-weight and bias-to-bias blocks of the paper, for
every pair of layers. Hidden layers permute independently, so every map between two spaces
factors over neuron layers: an axis the input and output share maps by identity or by mean-then-
broadcast; an axis only the input has is averaged; an axis only the output has is broadcast.
Grouping by the set S of axes kept (identity) gives one linear map per S: from all spaces that
have the axes S, averaged down to S, to all spaces that have them, broadcast back up. For a
1->32->32->1 MLP these are S = {} (all 6 tensors), {neurons of layer 1} and {neurons of layer 2}
(the weight rows, biases and next-layer weight columns of that layer) and the hidden weight
matrix itself (pointwise). Sums are replaced by means so that scales do not grow with width.

Takes one fixed chain of linear and convolutional layers of any kernel size (conv layers, global
pooling, linear layers); flattened feature maps are refused.

Weight-space outputs (:meth:`~sne.encoders.base.Encoder.make_weight_head`): the layers map weight
space to weight space, so instead of pooling, one more DWSLayer (zero-initialised) maps to one
channel, and the spaces are laid out as weights and biases again (:func:`from_spaces`), scaled by
each layer's fitted standard deviation into weight units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Sequence

import torch
from torch import nn

from sne.encoders.base import Architecture, register_encoder
from sne.encoders.nfn import WeightSpaceEncoder, zero_parameters
from sne.weights.batch import StackedWeights
from sne.weights.record import LAYER_KINDS

DEFAULT_OPTIONS: dict[str, Any] = {"hidden": 48, "num_layers": 4, "out_dim": 32, "batch_norm": True}


@dataclass(frozen=True)
class Space:
    """One weight or bias tensor as the equivariant layers see it.

    ``axes``: the hidden neuron layers indexing it, in tensor order (neuron layer t holds the
    outputs of record layer t - 1; 0 is the input); ``sizes``: their neuron counts; ``width``:
    entries of the feature vector per channel (fixed neurons x kernel taps).
    """

    layer: int
    part: str
    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    width: int


def weight_spaces(architecture: Architecture) -> list[Space]:
    """The spaces (weight, then bias, of each layer) of a chain of layers."""
    last = len(architecture)
    spaces = []
    for layer, (_, shape, _) in enumerate(architecture):
        out, inp, kernel = shape[0], shape[1], math.prod(shape[2:])
        rows_hidden, cols_hidden = layer + 1 < last, layer > 0
        axes = tuple(t for t, hidden in ((layer + 1, rows_hidden), (layer, cols_hidden)) if hidden)
        sizes = tuple(n for n, hidden in ((out, rows_hidden), (inp, cols_hidden)) if hidden)
        fixed = (1 if rows_hidden else out) * (1 if cols_hidden else inp)
        spaces.append(Space(layer, "weight", axes, sizes, fixed * kernel))
        spaces.append(Space(layer, "bias", axes[:1] if rows_hidden else (), sizes[:1] if rows_hidden else (),
                            1 if rows_hidden else out))
    return spaces


def to_spaces(batch: StackedWeights, spaces: Sequence[Space]) -> list[torch.Tensor]:
    """Each tensor as ``(batch, *sizes, width)``: hidden axes first, fixed neurons and taps as features."""
    out = []
    for space in spaces:
        if space.part == "bias":
            out.append(batch.biases[space.layer].reshape(-1, *space.sizes, space.width))
            continue
        weight = batch.weights[space.layer]  # (batch, out, in, *kernel)
        out.append(weight.permute(*_weight_axis_order(space, weight.dim())).reshape(-1, *space.sizes, space.width))
    return out


def _weight_axis_order(space: Space, ndim: int) -> list[int]:
    """Dimensions of a (batch, out, in, *kernel) weight in the order :func:`to_spaces` lays them out."""
    hidden = [1] if space.axes and space.axes[0] == space.layer + 1 else []
    hidden += [2] if space.layer in space.axes else []
    return [0, *hidden, *(d for d in range(1, ndim) if d not in hidden)]


def from_spaces(xs: Sequence[torch.Tensor], spaces: Sequence[Space], architecture: Architecture) -> StackedWeights:
    """Spaces of one channel, ``(batch, *sizes, width)``, as stacked weights and biases: the inverse
    of :func:`to_spaces`."""
    weights, biases = [None] * len(architecture), [None] * len(architecture)
    for x, space in zip(xs, spaces):
        shape = architecture[space.layer][1]
        if space.part == "bias":
            biases[space.layer] = x.reshape(len(x), shape[0])
            continue
        order = _weight_axis_order(space, len(shape) + 1)
        laid_out = x.reshape(len(x), *(shape[d - 1] for d in order[1:]))
        weights[space.layer] = laid_out.permute(*sorted(range(len(order)), key=order.__getitem__))
    return StackedWeights(tuple(weights), tuple(biases), tuple(bool(has_bias) for _, _, has_bias in architecture))


def kept_axis_sets(spaces: Sequence[Space]) -> list[tuple[int, ...]]:
    """Every set of axes some space has (as an ordered sub-tuple of its axes), the empty set first."""
    keys: list[tuple[int, ...]] = []
    for space in spaces:
        for k in range(len(space.axes) + 1):
            keys += [key for key in combinations(space.axes, k) if key not in keys]
    return sorted(keys, key=len)


def pool_to(x: torch.Tensor, axes: tuple[int, ...], keep: tuple[int, ...]) -> torch.Tensor:
    """Average ``x`` (batch, *axes, features) over the axes not in ``keep``."""
    dims = [1 + j for j, axis in enumerate(axes) if axis not in keep]
    return x.mean(dims) if dims else x


def broadcast_from(x: torch.Tensor, keep: tuple[int, ...], axes: tuple[int, ...]) -> torch.Tensor:
    """Give ``x`` (batch, *keep, features) size-1 dimensions for the axes not in ``keep``."""
    for j, axis in enumerate(axes):
        if axis not in keep:
            x = x.unsqueeze(1 + j)
    return x


class DWSLayer(nn.Module):
    """All linear maps from the spaces with ``c_in`` channels to the spaces with ``c_out`` channels
    that commute with hidden-neuron permutations (see the module docstring)."""

    def __init__(self, spaces: Sequence[Space], c_in: int, c_out: int) -> None:
        super().__init__()
        self.spaces = list(spaces)
        self.plan = []
        self.maps = nn.ModuleList()
        for keep in kept_axis_sets(spaces):
            members = [i for i, s in enumerate(spaces) if set(keep) <= set(s.axes)]
            in_features = sum(spaces[i].width for i in members) * c_in
            out_sizes = [spaces[i].width * c_out for i in members]
            # One bias per output entry suffices; it sits in the map every space takes (S = {}).
            self.maps.append(nn.Linear(in_features, sum(out_sizes), bias=not keep))
            self.plan.append((keep, members, out_sizes))

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor | None] = [None] * len(xs)
        for linear, (keep, members, out_sizes) in zip(self.maps, self.plan):
            pooled = torch.cat([pool_to(xs[i], self.spaces[i].axes, keep) for i in members], dim=-1)
            for i, part in zip(members, linear(pooled).split(out_sizes, dim=-1)):
                part = broadcast_from(part, keep, self.spaces[i].axes)
                outs[i] = part if outs[i] is None else outs[i] + part
        return outs


@register_encoder("dwsnet")
class DWSNetEncoder(WeightSpaceEncoder):
    """DWSNet; fixed architecture: a chain of linear and conv (1-D, 2-D, 3-D) layers.

    Options: ``hidden`` channels per equivariant layer; ``num_layers`` equivariant layers;
    ``out_dim`` size of z; ``batch_norm`` (see :class:`~sne.encoders.nfn.WeightSpaceEncoder`).
    """

    defaults = DEFAULT_OPTIONS
    kinds = LAYER_KINDS

    def build(self, architecture: Architecture, options: dict[str, Any]) -> None:
        self.spaces = weight_spaces(architecture)
        channels = [1] + [options["hidden"]] * options["num_layers"]
        self.layers = nn.ModuleList(DWSLayer(self.spaces, c_in, c_out) for c_in, c_out in zip(channels, channels[1:]))
        self.readout = self.readout_layer(sum(s.width for s in self.spaces) * channels[-1])

    def space_features(self, batch: StackedWeights) -> list[torch.Tensor]:
        """Every space's features after the last equivariant layer, ``hidden`` channels."""
        xs = to_spaces(batch, self.spaces)
        for layer in self.layers:
            xs = [torch.relu(x) for x in layer(xs)]
        return xs

    def encode(self, batch: StackedWeights) -> torch.Tensor:
        pooled = [pool_to(x, s.axes, ()) for x, s in zip(self.space_features(batch), self.spaces)]
        return self.readout(torch.cat(pooled, dim=-1))

    def build_weight_head(self) -> nn.Module:
        return zero_parameters(DWSLayer(self.spaces, self.options["hidden"], 1))

    def equivariant_outputs(self, batch: StackedWeights) -> StackedWeights:
        return from_spaces(self.weight_head(self.space_features(batch)), self.spaces, self.architecture)
