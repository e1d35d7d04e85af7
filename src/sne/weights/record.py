"""The weight-space record of one network: its parameterised operations in computation order,
the data flow between them, and the neuron permutations that leave its function unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch

from sne.errors import SneError

#: Dense layer kinds, keyed by the number of dimensions of the weight (what a bare state_dict tells).
KIND_BY_WEIGHT_NDIM = {2: "linear", 3: "conv1d", 4: "conv2d", 5: "conv3d"}
#: Transposed convolutions: weight ``(in, out / groups, *kernel)``.
TRANSPOSED_KINDS = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
#: Per-channel normalisations: ``weight``/``bias`` of one value per channel (and running statistics).
NORM_KINDS = ("batch_norm", "layer_norm", "group_norm")
#: Every kind of operation a record holds. Order matters: SNE's type encoding indexes it, and the
#: first four are the kinds of the first release, so their indices stay as trained encoders know them.
LAYER_KINDS = (
    *KIND_BY_WEIGHT_NDIM.values(), *TRANSPOSED_KINDS, "embedding", *NORM_KINDS, "attention", "parameter", "buffer",
)
#: Kinds whose weight maps ``in_features`` inputs to ``out_features`` outputs through its first two axes.
DENSE_KINDS = (*KIND_BY_WEIGHT_NDIM.values(), *TRANSPOSED_KINDS)
#: The tensor that plays the weight / bias of each kind (local names, as in the module's state_dict).
_PRIMARY = {"attention": ("in_proj_weight", "in_proj_bias")}


class InputSlice(NamedTuple):
    """Features ``[offset, offset + size)`` of an operation's input, in blocks of ``block`` inputs per
    source neuron (``block > 1`` after flattening a feature map), are the sum of the outputs of the
    operations ``sources`` (indices into the record's layers; ``-1``: the network's input). Several
    sources are a residual addition; several slices a concatenation."""

    offset: int
    size: int
    block: int
    sources: tuple[int, ...]


class Member(NamedTuple):
    """Where a permutation group acts: along ``axis`` of tensor ``tensor`` of layer ``layer``, the
    range starting at ``offset`` viewed as ``(group size, inner)`` is reordered along its first axis."""

    layer: int
    tensor: str
    axis: int
    offset: int = 0
    inner: int = 1


class PermutationGroup(NamedTuple):
    """``size`` neurons that may be permuted together, anywhere in ``members``, without changing the
    network's function. ``name`` says what they are (for people: "hidden units of 'fc1'", ...)."""

    size: int
    members: tuple[Member, ...]
    name: str = ""


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, eq=False)
class Layer:
    """One parameterised operation of a network.

    ``tensors`` holds its parameters and buffers under the module's own local names, in state_dict
    order (``weight``, ``bias``, ``running_mean``, ``in_proj_weight``, ``out_proj.weight``, ...); the
    full key of tensor ``t`` is ``name.t`` (just ``t`` for the root module). Layouts are PyTorch's:
    ``(out, in, *kernel)`` for linear and convolution, ``(in, out / groups, *kernel)`` for transposed
    convolution, ``(num_embeddings, dim)`` for an embedding. ``attrs`` holds what the weights cannot
    tell (stride, padding, groups, heads, eps, ...) when the source knows it. ``activation`` is the
    nonlinearity applied to the output (``"identity"``: none; ``None``: unknown). ``skip_from``
    lists levels whose outputs are added to this layer's input; ``inputs`` is the full data flow
    into it, when known (see :class:`InputSlice`).
    """

    name: str
    kind: str
    level: int
    tensors: Mapping[str, torch.Tensor]
    activation: str | None = None
    skip_from: tuple[int, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[InputSlice, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", _frozen(self.tensors))
        object.__setattr__(self, "attrs", _frozen(self.attrs))

    def key(self, tensor: str) -> str:
        """The state_dict key of local tensor ``tensor``."""
        return f"{self.name}.{tensor}" if self.name else tensor

    @property
    def weight(self) -> torch.Tensor:
        """The primary tensor: ``weight``, ``in_proj_weight`` of fused attention, a free parameter's value."""
        names = _PRIMARY.get(self.kind)
        if names and names[0] in self.tensors:
            return self.tensors[names[0]]
        if "weight" in self.tensors:
            return self.tensors["weight"]
        return next(iter(self.tensors.values()))

    @property
    def bias(self) -> torch.Tensor | None:
        return self.tensors.get(_PRIMARY.get(self.kind, ("", "bias"))[1])

    @property
    def weight_name(self) -> str:
        return next(name for name, tensor in self.tensors.items() if tensor is self.weight)

    @property
    def out_features(self) -> int:
        if self.kind in TRANSPOSED_KINDS:
            return int(self.weight.shape[1]) * int(self.attrs.get("groups", 1))
        if self.kind == "embedding":
            return int(self.weight.shape[1])
        if self.kind == "attention":
            return int(self.attrs.get("embed_dim", self.weight.shape[1]))
        if self.kind in NORM_KINDS or self.kind in ("parameter", "buffer"):
            return int(self.weight.shape[-1] if self.weight.dim() else 1)
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        if self.kind in TRANSPOSED_KINDS or self.kind == "embedding":
            return int(self.weight.shape[0])
        if self.kind in DENSE_KINDS or self.kind == "attention":
            return int(self.weight.shape[1])
        return self.out_features

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Spatial kernel shape; ``()`` for every kind but (transposed) convolutions."""
        return tuple(int(s) for s in self.weight.shape[2:]) if self.kind in DENSE_KINDS else ()

    @property
    def num_parameters(self) -> int:
        """Learned values: every floating-point tensor but normalisation statistics and buffers."""
        if self.kind == "buffer":
            return 0
        return sum(t.numel() for n, t in self.tensors.items() if t.is_floating_point() and not n.startswith("running_"))

    def with_tensors(self, **updates: torch.Tensor | None) -> "Layer":
        """A copy with some tensors replaced (``weight``/``bias`` name the primary ones)."""
        tensors = dict(self.tensors)
        for name, value in updates.items():
            if name == "weight":
                name = self.weight_name
            elif name == "bias":
                name = _PRIMARY.get(self.kind, ("", "bias"))[1]
            if value is None:
                tensors.pop(name, None)
            else:
                tensors[name] = value
        return replace(self, tensors=tensors)


@dataclass(frozen=True, eq=False)
class NetworkRecord:
    """An immutable, ordered tuple of layers; ``source`` names where it came from (for errors).

    ``symmetries`` lists the neuron permutations that leave the network's function unchanged, when
    the source told them (a traced module does); ``None`` for a plain chain, whose symmetries
    follow from the chain itself (:func:`sne.weights.permute.symmetry_groups`).
    """

    layers: tuple[Layer, ...]
    source: str = "<memory>"
    meta: dict = field(default_factory=dict, compare=False)
    symmetries: tuple[PermutationGroup, ...] | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise SneError(f"{self.source}: the network has no parameterised layers")

    @property
    def num_parameters(self) -> int:
        return sum(layer.num_parameters for layer in self.layers)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(layer.kind for layer in self.layers)

    @property
    def is_chain(self) -> bool:
        """Whether every layer is dense (linear or convolution, not grouped or transposed) and each
        feeds only the next: the networks of the first release, which every encoder reads."""
        for i, layer in enumerate(self.layers):
            if layer.kind not in KIND_BY_WEIGHT_NDIM.values() or layer.skip_from or layer.attrs.get("groups", 1) != 1:
                return False
            if layer.inputs is not None and any(s.sources not in ((i - 1,),) for s in layer.inputs):
                return False
        return True

    @property
    def architecture(self) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
        """Hashable signature (kind, weight shape, has bias) per layer, for fixed-architecture encoders."""
        return tuple((l.kind, tuple(l.weight.shape), l.bias is not None) for l in self.layers)

    @property
    def signature(self) -> tuple:
        """Every layer's kind and every tensor's name and shape: equal exactly for one architecture."""
        return tuple(
            (l.kind, tuple((n, tuple(t.shape)) for n, t in l.tensors.items()), tuple(sorted(l.attrs.items())))
            for l in self.layers
        )

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer under the module's own keys, in the record's order."""
        return {layer.key(name): tensor for layer in self.layers for name, tensor in layer.tensors.items()}

    def with_layers(self, layers: Iterable[Layer]) -> "NetworkRecord":
        return replace(self, layers=tuple(layers))

    def to(self, dtype: torch.dtype) -> "NetworkRecord":
        """A copy with every floating-point tensor in ``dtype`` (integer buffers stay)."""
        return self.with_layers(
            replace(l, tensors={n: t.to(dtype) if t.is_floating_point() else t for n, t in l.tensors.items()})
            for l in self.layers
        )


def check_tensors(name: str, tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Detached tensors; :class:`SneError` for non-finite values in any floating-point one."""
    checked = {}
    for local, tensor in tensors.items():
        tensor = torch.as_tensor(tensor).detach()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            where = "its " + local if local in ("weight", "bias") else f"'{local}'"
            raise SneError(f"{source}: layer '{name}' has non-finite values (NaN or inf) in {where}")
        checked[local] = tensor
    return checked


def make_layer(
    name: str,
    level: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    skip_from: Sequence[int] = (),
    source: str = "<memory>",
) -> Layer:
    """Build a validated dense layer; the kind follows from the weight's number of dimensions."""
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
    tensors = check_tensors(name, {"weight": weight} | ({} if bias is None else {"bias": bias}), source)
    return Layer(name, kind, level, tensors, activation, tuple(skip_from))
