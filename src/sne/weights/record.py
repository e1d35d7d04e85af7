"""The weight-space record of one network: its parameterised operations in computation order,
the data flow between them, and the neuron permutations that leave its function unchanged."""

from __future__ import annotations

import copy
import json
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
#: Vocabulary of layer activations that encoders embed: "input" marks a network's input (Neural
#: Graphs' input nodes), "unknown" a layer whose record does not say, "other" a named activation
#: outside this list.
ACTIVATIONS = (
    "input", "unknown", "other", "identity", "relu", "tanh", "sigmoid", "gelu", "silu", "leaky_relu", "elu", "sine",
)
ACTIVATION_INDEX = {name: i for i, name in enumerate(ACTIVATIONS)}


def activation_index(name: str | None) -> int:
    """Index of a layer's ``activation`` in :data:`ACTIVATIONS` (None: "unknown"; unlisted: "other")."""
    if name is None:
        return ACTIVATION_INDEX["unknown"]
    return ACTIVATION_INDEX.get(name, ACTIVATION_INDEX["other"])


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
    convolution, ``(num_embeddings, dim)`` for an embedding; a linear layer whose module stores its
    weight ``(in, out)`` (Hugging Face's Conv1D) holds it ``(out, in)`` too, marked by
    ``attrs["stored_in_out"]``, and :meth:`module_layout` turns it back. ``attrs`` holds what the
    weights cannot tell (stride, padding, groups, heads, eps, ...) when the source knows it.
    ``activation`` is the nonlinearity applied to the output (``"identity"``: none; ``None``:
    unknown). ``skip_from`` lists levels whose outputs are added to this layer's input; ``inputs``
    is the full data flow into it, when known (see :class:`InputSlice`).
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

    def module_layout(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Tensor ``name`` of this layer as its module stores it, given as the record holds it, and
        the other way round (the one difference, ``stored_in_out``, is a transpose)."""
        return tensor.t() if name == "weight" and self.attrs.get("stored_in_out") else tensor

    def from_module_layout(self) -> "Layer":
        """This layer, made with its tensors as its module stores them, holding them as a record does."""
        if not self.attrs.get("stored_in_out"):
            return self
        held = {name: self.module_layout(name, tensor).contiguous() for name, tensor in self.tensors.items()}
        return replace(self, tensors=held)

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
        return {layer.key(name): layer.module_layout(name, tensor)
                for layer in self.layers for name, tensor in layer.tensors.items()}

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


# ------------------------------------------------------------------------------ structure (no values)
#: Tensor dtypes a structure may name (what networks store: floats, and integer counters of norms).
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
              torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)
}


def _json_attr(value: Any, where: str) -> Any:
    """``value`` as plain JSON (tuples become lists), so that attrs survive a JSON round trip exactly."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise SneError(f"{where} is not finite ({value})")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_attr(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_attr(v, where) for k, v in value.items()}
    raise SneError(f"{where} is a {type(value).__name__}, which a structure cannot hold (JSON values only)")


def record_structure(record: NetworkRecord) -> dict[str, Any]:
    """Everything about ``record`` but its tensor values, as JSON values: per layer its name, kind,
    level, tensors (name, shape, dtype, in state_dict order), activation, skip_from, attrs (tuples
    as lists) and inputs; and the record's symmetries. Equal structures mean one architecture."""
    layers = []
    for layer in record.layers:
        where = f"{record.source}: layer '{layer.name}' attribute"
        layers.append({
            "name": layer.name,
            "kind": layer.kind,
            "level": int(layer.level),
            "tensors": [
                {"name": name, "shape": [int(s) for s in layer.module_layout(name, t).shape],
                 "dtype": str(t.dtype).removeprefix("torch.")}
                for name, t in layer.tensors.items()
            ],
            "activation": layer.activation,
            "skip_from": [int(level) for level in layer.skip_from],
            "attrs": {key: _json_attr(value, f"{where} '{key}'") for key, value in layer.attrs.items()},
            "inputs": None if layer.inputs is None else [
                {"offset": s.offset, "size": s.size, "block": s.block, "sources": list(s.sources)} for s in layer.inputs
            ],
        })
    symmetries = None if record.symmetries is None else [
        {"size": g.size, "name": g.name,
         "members": [{"layer": m.layer, "tensor": m.tensor, "axis": m.axis, "offset": m.offset, "inner": m.inner}
                     for m in g.members]}
        for g in record.symmetries
    ]
    return {"layers": layers, "symmetries": symmetries}


def _is_int(value: Any, minimum: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _fields(entry: Any, required: Sequence[str]) -> bool:
    return isinstance(entry, dict) and all(key in entry for key in required)


def structure_problem(structure: Any) -> str | None:
    """What is wrong with ``structure`` as :func:`record_structure` writes it (``None``: nothing),
    checked deeply enough that :func:`record_from_structure` cannot fail on it but for tensors."""
    if not _fields(structure, ("layers", "symmetries")) or not isinstance(structure["layers"], list):
        return "a structure is an object with a list of layers and symmetries"
    layers = structure["layers"]
    if not layers:
        return "the structure has no layers"
    keys: set[str] = set()
    shapes: list[dict[str, list[int]]] = []
    for i, layer in enumerate(layers):
        if not _fields(layer, ("name", "kind", "level", "tensors", "activation", "skip_from", "attrs", "inputs")):
            return f"layer {i} needs name, kind, level, tensors, activation, skip_from, attrs and inputs"
        name = layer["name"]
        if not isinstance(name, str) or layer["kind"] not in LAYER_KINDS or not _is_int(layer["level"], 0):
            return f"layer {i} needs a name, a kind of {', '.join(LAYER_KINDS)} and a level >= 0"
        if not (layer["activation"] is None or isinstance(layer["activation"], str)):
            return f"layer '{name}' has an activation that is not a name"
        if not (isinstance(layer["skip_from"], list) and all(_is_int(s) for s in layer["skip_from"])):
            return f"layer '{name}' has skip_from that is not a list of levels"
        if not isinstance(layer["attrs"], dict):
            return f"layer '{name}' has attrs that are not an object"
        tensors = layer["tensors"]
        if not isinstance(tensors, list) or not tensors:
            return f"layer '{name}' has no tensors"
        shapes.append({})
        for spec in tensors:
            if not (_fields(spec, ("name", "shape", "dtype")) and isinstance(spec["name"], str)
                    and isinstance(spec["shape"], list) and all(_is_int(s, 0) for s in spec["shape"])
                    and isinstance(spec["dtype"], str) and spec["dtype"] in _DTYPES):
                return f"layer '{name}' has a tensor entry {json.dumps(spec)[:80]} without a name, shape and dtype"
            key = f"{name}.{spec['name']}" if name else spec["name"]
            if key in keys:
                return f"tensor '{key}' appears twice"
            keys.add(key)
            # Symmetries name axes as the record holds a tensor: a weight stored (in, out) is turned.
            turned = spec["name"] == "weight" and layer["attrs"].get("stored_in_out")
            shapes[-1][spec["name"]] = spec["shape"][::-1] if turned else spec["shape"]
        if layer["attrs"].get("stored_in_out") and not (
                layer["kind"] == "linear" and len(shapes[-1].get("weight", ())) == 2):
            return f"layer '{name}' is marked stored_in_out but is no linear layer with a 2-D weight"
        inputs = layer["inputs"]
        if inputs is not None:
            if not isinstance(inputs, list):
                return f"layer '{name}' has inputs that are not a list"
            for s in inputs:
                if not (_fields(s, ("offset", "size", "block", "sources")) and _is_int(s["offset"], 0)
                        and _is_int(s["size"], 0) and _is_int(s["block"], 1) and isinstance(s["sources"], list)
                        and all(_is_int(j, -1) and j < len(layers) for j in s["sources"])):
                    return f"layer '{name}' has an input entry {json.dumps(s)[:80]} that is not a valid slice"
    symmetries = structure["symmetries"]
    if symmetries is None:
        return None
    if not isinstance(symmetries, list):
        return "symmetries must be a list or null"
    for group in symmetries:
        if not (_fields(group, ("size", "name", "members")) and _is_int(group["size"], 1)
                and isinstance(group["name"], str) and isinstance(group["members"], list)):
            return f"symmetry {json.dumps(group)[:80]} needs a size >= 1, a name and members"
        for m in group["members"]:
            if not (_fields(m, ("layer", "tensor", "axis", "offset", "inner")) and _is_int(m["layer"], 0)
                    and m["layer"] < len(layers) and isinstance(m["tensor"], str) and m["tensor"] in shapes[m["layer"]]
                    and _is_int(m["axis"], 0) and _is_int(m["offset"], 0) and _is_int(m["inner"], 1)):
                return f"symmetry '{group['name']}' has a member {json.dumps(m)[:80]} naming no tensor of the structure"
            shape = shapes[m["layer"]][m["tensor"]]
            if m["axis"] >= len(shape) or m["offset"] + group["size"] * m["inner"] > shape[m["axis"]]:
                return f"symmetry '{group['name']}' reaches past axis {m['axis']} of tensor '{m['tensor']}' {shape}"
    return None


def record_from_structure(
    structure: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], source: str, meta: dict | None = None
) -> NetworkRecord:
    """The record of ``structure`` (as :func:`record_structure` gives it) with tensor values
    ``tensors`` (state_dict keys). :class:`SneError` naming ``source`` for a malformed structure,
    a missing or extra key, a shape that differs from the structure's, or non-finite values;
    floating-point tensors are cast to the structure's floating dtype."""
    problem = structure_problem(structure)
    if problem:
        raise SneError(f"{source}: bad network structure: {problem}")
    used = set()
    layers = []
    for entry in structure["layers"]:
        name, local = entry["name"], {}
        for spec in entry["tensors"]:
            key = f"{name}.{spec['name']}" if name else spec["name"]
            if key not in tensors:
                raise SneError(f"{source}: no tensor '{key}', which the network's structure has")
            tensor = torch.as_tensor(tensors[key])
            if list(tensor.shape) != spec["shape"]:
                raise SneError(f"{source}: tensor '{key}' has shape {tuple(tensor.shape)} where the structure "
                               f"says {tuple(spec['shape'])}")
            dtype = _DTYPES[spec["dtype"]]
            if tensor.dtype != dtype:
                if tensor.is_floating_point() != dtype.is_floating_point:
                    raise SneError(f"{source}: tensor '{key}' is {str(tensor.dtype).removeprefix('torch.')} "
                                   f"where the structure says {spec['dtype']}")
                tensor = tensor.to(dtype)
            local[spec["name"]] = tensor
            used.add(key)
        inputs = entry["inputs"]
        layers.append(Layer(
            name, entry["kind"], entry["level"], check_tensors(name, local, source), entry["activation"],
            tuple(entry["skip_from"]), copy.deepcopy(entry["attrs"]),
            None if inputs is None else tuple(
                InputSlice(s["offset"], s["size"], s["block"], tuple(s["sources"])) for s in inputs
            ),
        ).from_module_layout())
    extra = [key for key in tensors if key not in used]
    if extra:
        raise SneError(f"{source}: tensor '{extra[0]}' is not in the network's structure")
    symmetries = structure["symmetries"]
    return NetworkRecord(
        tuple(layers), source=source, meta=dict(meta or {}),
        symmetries=None if symmetries is None else tuple(
            PermutationGroup(g["size"], tuple(
                Member(m["layer"], m["tensor"], m["axis"], m["offset"], m["inner"]) for m in g["members"]
            ), g["name"]) for g in symmetries
        ),
    )
