"""Helpers shared by the baseline encoders: options, fixed architectures, standardisation, MLPs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sne.errors import CannotRead, SneError
from sne.weights.batch import StackedWeights
from sne.weights.record import KIND_BY_WEIGHT_NDIM, NetworkRecord


def resolve_options(encoder: str, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``options``; :class:`SneError` naming any option ``encoder`` does not know."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise SneError(
            f"unknown {encoder} option(s) {', '.join(unknown)} (known: {', '.join(defaults)})"
        )
    return {**defaults, **options}


def check_positive_int(encoder: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer of at least ``minimum``, else :class:`SneError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise SneError(f"{encoder} option {name} must be {kind}, got {value!r}")
    return value


def check_widths(encoder: str, name: str, value: Any) -> list[int]:
    """A list of hidden-layer widths (possibly empty), e.g. ``[256, 256]``."""
    widths = value if isinstance(value, (list, tuple)) else [None]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in widths):
        raise SneError(f"{encoder} option {name} must be a list of positive integers, got {value!r}")
    return list(value)


def describe_architecture(architecture: Sequence, limit: int = 8) -> str:
    """``linear 32x1+b, linear 32x32+b, ...``: an architecture signature on one short line (the first
    ``limit`` layers, then how many more)."""
    shown = ", ".join(
        f"{kind} {'x'.join(str(s) for s in shape)}{'+b' if has_bias else ''}"
        for kind, shape, has_bias in list(architecture)[:limit]
    )
    more = len(architecture) - limit
    return shown + (f", ... {more} more" if more > 0 else "")


def require_architecture(encoder: str, architecture: Sequence | None) -> tuple:
    """The architecture a fixed-architecture encoder is built for; refuse to build one without it."""
    if architecture is None:
        raise SneError(f"encoder '{encoder}' takes one fixed architecture and must be built with it")
    return tuple(architecture)


#: Encoders that read networks of any architecture and kind (named in refusals).
ANY_NETWORK_ENCODERS = "sne, deepsets, ng_gnn, ng_t"


def check_dense_kinds(encoder: str, records: Sequence[NetworkRecord]) -> None:
    """Refuse (one-line :class:`SneError`, naming the layer and its kind) the first record with a
    layer that is not a plain linear or convolution layer (normalisation, attention, embedding, ...)."""
    for record in records:
        for layer in record.layers:
            if layer.kind not in KIND_BY_WEIGHT_NDIM.values() or layer.attrs.get("groups", 1) != 1:
                kind = layer.kind if layer.attrs.get("groups", 1) == 1 else f"{layer.kind}, groups={layer.attrs['groups']}"
                raise CannotRead(f"{record.source}: encoder '{encoder}' cannot read layer '{layer.name}' ({kind}); "
                               f"it reads linear and convolution layers only (any network: {ANY_NETWORK_ENCODERS})")


def check_fixed_architecture(encoder: str, built_for: Sequence, records: Sequence[NetworkRecord]) -> None:
    """Refuse (one-line :class:`SneError`) the first record whose architecture is not ``built_for``."""
    check_dense_kinds(encoder, records)
    for record in records:
        if record.architecture != tuple(built_for):
            raise CannotRead(
                f"{record.source}: encoder '{encoder}' takes only the architecture it was built for "
                f"({describe_architecture(built_for)}), got {describe_architecture(record.architecture)}; "
                f"use an encoder that takes any architecture ({ANY_NETWORK_ENCODERS})"
            )


def flat_size(architecture: Sequence) -> int:
    """Number of parameters of a network with this architecture signature."""
    total = 0
    for _, shape, has_bias in architecture:
        total += int(torch.Size(shape).numel()) + (int(shape[0]) if has_bias else 0)
    return total


def build_mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> ReLU (-> Dropout)`` per hidden width, then a final ``Linear`` to ``out_dim``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


#: Floor of a fitted standard deviation, so a constant input feature stays finite after scaling.
STD_FLOOR = 1e-6


#: Entries above which :func:`mean_std` over all entries reads ``values`` block by block: a float64
#: copy of a whole large layer would cost twice its float32 size at once.
BLOCKWISE_ELEMENTS = 1 << 22


def _blockwise_mean_std(values: torch.Tensor, unbiased: bool, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mean_std` over all entries, two passes over float64 blocks of BLOCKWISE_ELEMENTS."""
    flat = values.reshape(-1)
    blocks = [flat[i : i + BLOCKWISE_ELEMENTS] for i in range(0, flat.numel(), BLOCKWISE_ELEMENTS)]
    mean = sum(block.to(torch.float64).sum() for block in blocks) / flat.numel()
    squares = sum((block.to(torch.float64) - mean).square().sum() for block in blocks)
    std = (squares / (flat.numel() - (1 if unbiased else 0))).sqrt()
    return mean, std.clamp_min(floor)


def mean_std(
    values: torch.Tensor, dim: int | None = None, unbiased: bool = True, floor: float = STD_FLOOR
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one standardisation every encoder uses: mean and standard deviation of ``values`` in
    float64, over axis ``dim`` or over all entries. The deviation is floored at ``floor``, so a
    constant input standardises to 0 instead of infinity; a sample standard deviation
    (``unbiased``) of a single value is 1 (nothing to scale by)."""
    if dim is None and values.numel() > BLOCKWISE_ELEMENTS:
        return _blockwise_mean_std(values, unbiased, floor)
    values = values.to(torch.float64)
    count = values.numel() if dim is None else values.shape[dim]
    mean = values.mean() if dim is None else values.mean(dim)
    if unbiased and count < 2:
        return mean, torch.ones_like(mean)
    std = values.std(unbiased=unbiased) if dim is None else values.std(dim, unbiased=unbiased)
    return mean, std.clamp_min(floor)


def quantiles(values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(values, levels)`` (linear interpolation) for tensors of any size:
    ``torch.quantile`` refuses more than 2**24 elements, which one zoo's weights at one position
    or one large layer pass."""
    if values.numel() <= 2**24:
        return torch.quantile(values, levels.to(values.dtype))
    found = np.quantile(values.detach().cpu().numpy(), levels.detach().cpu().double().numpy())
    return torch.from_numpy(np.asarray(found)).to(device=values.device, dtype=values.dtype)


@torch.no_grad()
def fit_standardization(mean: torch.Tensor, std: torch.Tensor, values: torch.Tensor) -> None:
    """Set buffers ``mean``/``std`` in place to the column statistics of ``values`` (rows: training networks)."""
    fitted_mean, fitted_std = mean_std(values, dim=0)
    mean.copy_(fitted_mean.to(mean.dtype))
    std.copy_(fitted_std.to(std.dtype))


# --- weight-space encoders (nfn_np, nfn_hnp, nft, dwsnet): one fixed chain of layers --------------


def check_neuron_chain(encoder: str, architecture: Sequence, kinds: Sequence[str]) -> None:
    """Refuse an architecture that is not a chain of ``kinds`` layers whose neurons line up one to one.

    Each layer's inputs must be the previous layer's outputs (channels, after global pooling for a
    convolution followed by a linear layer): these encoders permute neuron axes as a whole, and a
    flattened feature map (one channel feeding several inputs) has no such axis.
    """
    for i, (kind, shape, _) in enumerate(architecture):
        if kind not in kinds or len(shape) < 2:
            raise CannotRead(f"encoder '{encoder}' cannot read layer {i} ({kind}): it takes only {', '.join(kinds)} "
                           f"layers (any network: {ANY_NETWORK_ENCODERS})")
    for i, (kind, shape, _) in enumerate(architecture):
        if i and shape[1] != architecture[i - 1][1][0]:
            raise CannotRead(f"encoder '{encoder}' needs each layer's inputs to be the previous layer's outputs, but "
                           f"layer {i} has {shape[1]} inputs after {architecture[i - 1][1][0]} outputs "
                           f"({describe_architecture(architecture)}); flattened feature maps are not supported")


def check_chain_records(encoder: str, built_for: Sequence, records: Sequence[NetworkRecord]) -> None:
    """:func:`check_fixed_architecture`, and refuse records with skip connections (not a plain chain)."""
    check_fixed_architecture(encoder, built_for, records)
    for record in records:
        skipping = [layer.name for layer in record.layers if layer.skip_from]
        if skipping:
            raise CannotRead(f"{record.source}: encoder '{encoder}' takes plain chains of layers, "
                           f"but layer '{skipping[0]}' has a skip connection")
        if not record.is_chain:
            branch = next((l for l in record.layers if l.inputs and (len(l.inputs) > 1 or len(l.inputs[0].sources) > 1)),
                          record.layers[0])
            raise CannotRead(f"{record.source}: encoder '{encoder}' takes plain chains of layers, but layer "
                           f"'{branch.name}' has a skip connection (a residual sum) or a concatenation")


class LayerScaler(nn.Module):
    """Standardise each layer's weights, and its biases, with one mean and one standard deviation
    fitted over the training networks (identity until fitted).

    One scalar per tensor, not per entry: per-entry statistics would differ between neurons and
    break the permutation symmetry the weight-space encoders are built on.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.register_buffer("weight_mean", torch.zeros(num_layers))
        self.register_buffer("weight_std", torch.ones(num_layers))
        self.register_buffer("bias_mean", torch.zeros(num_layers))
        self.register_buffer("bias_std", torch.ones(num_layers))

    @torch.no_grad()
    def fit(self, batch: StackedWeights) -> None:
        for i, (weight, bias) in enumerate(zip(batch.weights, batch.biases)):
            parts = ((weight, self.weight_mean, self.weight_std), (bias, self.bias_mean, self.bias_std))
            for tensor, mean, std in parts:
                mean[i], std[i] = mean_std(tensor)

    def forward(self, batch: StackedWeights) -> StackedWeights:
        return replace(
            batch,
            weights=tuple((w - self.weight_mean[i]) / self.weight_std[i] for i, w in enumerate(batch.weights)),
            biases=tuple((b - self.bias_mean[i]) / self.bias_std[i] for i, b in enumerate(batch.biases)),
        )
