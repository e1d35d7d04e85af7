"""The weight-space record of one network: its parameterised layers in computation order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch

from sne.errors import SneError

#: Layer kinds the package understands, keyed by the number of dimensions of the weight.
KIND_BY_WEIGHT_NDIM = {2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}
LAYER_KINDS = tuple(KIND_BY_WEIGHT_NDIM.values())


@dataclass(frozen=True)
class Layer:
    """One parameterised layer.

    ``weight`` is in PyTorch layout: ``(out, in)`` for linear, ``(out, in, *kernel)`` for convolutions.
    ``activation`` is the nonlinearity applied to this layer's output ("identity" when none), or
    ``None`` when the source does not say. ``skip_from`` lists levels whose outputs are added to
    this layer's input (residual connections), when known.
    """

    name: str
    kind: str
    level: int
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    activation: str | None = None
    skip_from: tuple[int, ...] = ()

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Spatial kernel shape; ``()`` for linear layers."""
        return tuple(int(s) for s in self.weight.shape[2:])

    @property
    def num_parameters(self) -> int:
        return self.weight.numel() + (0 if self.bias is None else self.bias.numel())


@dataclass(frozen=True)
class NetworkRecord:
    """An immutable, ordered tuple of layers; ``source`` names where it came from (for errors)."""

    layers: tuple[Layer, ...]
    source: str = "<memory>"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.layers:
            raise SneError(f"{self.source}: the network has no linear or convolutional layers")

    @property
    def num_parameters(self) -> int:
        return sum(layer.num_parameters for layer in self.layers)

    @property
    def architecture(self) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
        """Hashable signature (kind, weight shape, has bias) per layer, for fixed-architecture encoders."""
        return tuple((l.kind, tuple(l.weight.shape), l.bias is not None) for l in self.layers)

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters under their original names (``<name>.weight``, ``<name>.bias``)."""
        state: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            state[f"{layer.name}.weight"] = layer.weight
            if layer.bias is not None:
                state[f"{layer.name}.bias"] = layer.bias
        return state

    def with_layers(self, layers: Iterable[Layer]) -> "NetworkRecord":
        return replace(self, layers=tuple(layers))

    def to(self, dtype: torch.dtype) -> "NetworkRecord":
        return self.with_layers(
            replace(l, weight=l.weight.to(dtype), bias=None if l.bias is None else l.bias.to(dtype))
            for l in self.layers
        )


def make_layer(
    name: str,
    level: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    skip_from: Sequence[int] = (),
    source: str = "<memory>",
) -> Layer:
    """Build a validated layer; the kind follows from the weight's number of dimensions."""
    weight = torch.as_tensor(weight).detach()
    kind = KIND_BY_WEIGHT_NDIM.get(weight.dim())
    if kind is None:
        raise SneError(
            f"{source}: unknown layer type for '{name}': weight of shape {tuple(weight.shape)} "
            f"(expected 2-D linear or 3/4/5-D convolution weights)"
        )
    if not weight.is_floating_point():
        raise SneError(f"{source}: layer '{name}' has non-floating-point weights ({weight.dtype})")
    if bias is not None:
        bias = torch.as_tensor(bias).detach()
        if tuple(bias.shape) != (weight.shape[0],):
            raise SneError(
                f"{source}: layer '{name}' has a bias of shape {tuple(bias.shape)} that does not fit "
                f"its weight of shape {tuple(weight.shape)} (expected ({weight.shape[0]},))"
            )
    for part, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise SneError(f"{source}: layer '{name}' has non-finite values (NaN or inf) in its {part}")
    return Layer(name, kind, level, weight, bias, activation, tuple(skip_from))
