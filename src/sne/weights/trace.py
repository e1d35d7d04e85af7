"""Read any ``nn.Module`` into a record: its parameterised operations, data flow and symmetries.

The module is traced once with ``torch.export`` (an ATen graph with every tensor's shape; it reads
control flow that ``torch.fx`` symbolic tracing cannot, such as ``nn.TransformerEncoder``), on the
caller's example input or on one guessed from the first layer. One pass over the graph then follows,
for every tensor, which of its axes carry permutable neurons (*layouts*): a linear or convolution
creates a group of neurons (its outputs); activations, pooling and normalisation keep it; a residual
addition merges the groups it adds (one residual stream); a concatenation places groups side by
side; flattening a feature map turns each channel into a block of inputs; slicing cuts a group into
independent parts; a reduction over an axis forgets it. Each parameter a group reaches becomes a
:class:`~sne.weights.record.Member` of it. Anything the pass does not understand *fixes* the groups
it touches (they are never permuted), so the symmetries it reports are always exact, if sometimes
fewer than the network has. ``nn.MultiheadAttention`` is read whole: heads, queries with keys,
values with the output projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import nn

from sne.errors import SneError, one_line
from sne.weights.record import (
    InputSlice,
    Layer,
    Member,
    NetworkRecord,
    PermutationGroup,
    check_tensors,
)

# --- modules -> operations -------------------------------------------------------------------------

_CONV = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}
_CONV_T = {nn.ConvTranspose1d: "conv_transpose1d", nn.ConvTranspose2d: "conv_transpose2d",
           nn.ConvTranspose3d: "conv_transpose3d"}
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def _module_kind(module: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """(kind, attrs) of a module the record reads whole, or ``None`` for any other module."""
    for classes, kind in ((_CONV, None), (_CONV_T, None)):
        for cls, name in classes.items():
            if isinstance(module, cls):
                attrs = {k: getattr(module, k) for k in ("stride", "padding", "dilation", "groups")}
                return name, {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
    if isinstance(module, nn.Linear):
        return "linear", {}
    if isinstance(module, nn.Embedding):
        return "embedding", {"padding_idx": module.padding_idx}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch_norm", {"eps": module.eps}
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "group_norm", {"num_groups": module.num_features, "eps": module.eps}
    if isinstance(module, nn.GroupNorm):
        return "group_norm", {"num_groups": module.num_groups, "eps": module.eps}
    if isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm":
        return "layer_norm", {"normalized_shape": list(module.normalized_shape), "rms": not isinstance(module, nn.LayerNorm)}
    if isinstance(module, nn.MultiheadAttention):
        return "attention", {"embed_dim": module.embed_dim, "num_heads": module.num_heads,
                             "batch_first": module.batch_first}
    return None


class _OpSpec(NamedTuple):
    name: str
    kind: str
    attrs: dict


def _operation_specs(module: nn.Module, source: str) -> dict[str, _OpSpec]:
    """Every module that owns state_dict entries, as an operation spec keyed by module path."""
    specs: dict[str, _OpSpec] = {}
    inside: list[str] = []  # paths of modules read whole (attention owns its out_proj)
    for path, sub in module.named_modules(remove_duplicate=False):
        if any(path.startswith(p + ".") for p in inside):
            continue
        label = f"'{path}' ({type(sub).__name__})" if path else type(sub).__name__
        if isinstance(sub, _RECURRENT):
            raise SneError(f"{source}: recurrent layer {label} is not supported (records read feed-forward "
                           f"networks: linear, convolution, normalisation, attention, embedding)")
        own = [n for n, _ in sub.named_parameters(recurse=False)]
        own += [n for n, _ in sub.named_buffers(recurse=False) if n not in sub._non_persistent_buffers_set]
        for name, parameter in sub.named_parameters(recurse=False):
            if isinstance(parameter, nn.parameter.UninitializedParameter):
                raise SneError(f"{source}: lazy module {label} is not initialised yet (run one forward pass first)")
        known = _module_kind(sub)
        if known is not None:
            specs[path] = _OpSpec(path, *known)
            if known[0] == "attention":
                inside.append(path)
        elif own:
            if type(sub).__module__.startswith("torch.nn"):
                raise SneError(f"{source}: unsupported module {label} with its own parameters or buffers "
                               f"({', '.join(own)}); see README, 'Bring your own network'")
            params = [n for n, _ in sub.named_parameters(recurse=False)]
            specs[path] = _OpSpec(path, "parameter" if params else "buffer", {})
    return specs


def _owner(key: str, specs: dict[str, _OpSpec]) -> tuple[str, str]:
    """(module path, local name) of a state_dict key: the longest path prefix that is an operation."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        path = ".".join(parts[:cut])
        if path in specs:
            return path, ".".join(parts[cut:])
    raise SneError(f"state_dict key '{key}' belongs to no module the record can read")


# --- example inputs --------------------------------------------------------------------------------

_GUESSED_SIDES = (32, 28, 16, 64, 8, 224, 96, 128)


def guess_example_input(module: nn.Module, source: str) -> torch.Tensor:
    """An input the module runs on, from its first layer: ``(2, in)`` for a linear layer, images of a
    few usual sizes for a convolution, tokens for an embedding; :class:`SneError` if none runs."""
    first = next((m for m in module.modules() if _module_kind(m) is not None), None)
    candidates: list[torch.Tensor] = []
    reference = next((p for p in module.parameters() if p.is_floating_point()), torch.empty(0))
    like = {"dtype": reference.dtype, "device": reference.device}
    if isinstance(first, nn.Linear):
        candidates = [torch.randn(2, first.in_features, **like)]
    elif isinstance(first, tuple(_CONV) + tuple(_CONV_T)):
        dims = len(first.kernel_size)
        candidates = [torch.randn(2, first.in_channels, *[side] * dims, **like) for side in _GUESSED_SIDES]
    elif isinstance(first, nn.Embedding):
        candidates = [torch.randint(0, first.num_embeddings, (2, 8), device=reference.device)]
    elif isinstance(first, nn.MultiheadAttention):
        candidates = [torch.randn(2, 4, first.embed_dim, **like)]
    for candidate in candidates:
        try:
            with torch.no_grad():
                module(candidate)
        except Exception:  # the wrong size: try the next one
            continue
        return candidate
    raise SneError(f"{source}: cannot guess an input for {type(module).__name__}; give an example input "
                   f"(an --arch factory may return (module, example_input))")


# --- groups of permutable neurons ------------------------------------------------------------------


#: The network's input, as a source in the record flow (module paths never contain a NUL).
INPUT = "\0input"


class Seg(NamedTuple):
    """A run of an axis: group ``group``'s neurons, each a block of ``inner`` consecutive entries,
    fed by the operations ``sources`` (record flow)."""

    group: int
    inner: int
    sources: frozenset


Layout = list  # of Seg, covering one axis


@dataclass
class _Groups:
    """Union-find over groups of neurons, with refinement into parts and fixing."""

    size: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed: list[bool] = field(default_factory=list)
    parts: dict[int, list[int]] = field(default_factory=dict)
    members: list[list[tuple[str, int, int, int]]] = field(default_factory=list)  # (key, axis, offset, inner)
    names: list[str] = field(default_factory=list)

    def new(self, size: int, name: str, fixed: bool = False) -> int:
        self.size.append(size)
        self.parent.append(len(self.parent))
        self.fixed.append(fixed)
        self.members.append([])
        self.names.append(name)
        return len(self.size) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def resolve(self, layout: Iterable[Seg]) -> list[Seg]:
        """The layout in current groups: merged groups by their root, refined groups by their parts."""
        out: list[Seg] = []
        for seg in layout:
            g = self.find(seg.group)
            if g in self.parts:
                out.extend(self.resolve(Seg(p, seg.inner, seg.sources) for p in self.parts[g]))
            else:
                out.append(Seg(g, seg.inner, seg.sources))
        return out

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] != self.size[b]:
            self.fix(a)
            self.fix(b)
            return
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        self.members[a].extend(self.members[b])

    def fix(self, g: int) -> None:
        g = self.find(g)
        if g in self.parts:
            for p in self.parts[g]:
                self.fix(p)
        self.fixed[g] = True

    def fix_layout(self, layout: Iterable[Seg]) -> None:
        for seg in self.resolve(layout):
            self.fix(seg.group)

    def refine(self, g: int, cuts: list[int]) -> list[int]:
        """Cut group ``g`` (a root without parts) at neuron positions ``cuts`` into independent parts."""
        bounds = [0, *sorted(set(c for c in cuts if 0 < c < self.size[g])), self.size[g]]
        if len(bounds) == 2:
            return [g]
        children = []
        for start, end in zip(bounds, bounds[1:]):
            child = self.new(end - start, f"{self.names[g]} [{start}:{end}]", self.fixed[g])
            self.members[child] = [(k, ax, off + start * inner, inner) for k, ax, off, inner in self.members[g]]
            children.append(child)
        self.parts[g] = children
        return children

    def add_member(self, layout: Iterable[Seg], key: str, axis: int, offset: int = 0, block: int = 1) -> None:
        """Make axis ``axis`` of tensor ``key``, from ``offset``, a member of every group of ``layout``."""
        for seg in self.resolve(layout):
            self.members[seg.group].append((key, axis, offset, seg.inner * block))
            offset += self.size[seg.group] * seg.inner * block


def _length(groups: _Groups, layout: Iterable[Seg]) -> int:
    return sum(groups.size[s.group] * s.inner for s in groups.resolve(layout))


def _align(groups: _Groups, a: Layout, b: Layout) -> tuple[list[Seg], list[Seg]] | None:
    """Refine both layouts at each other's cuts so that they run side by side; ``None`` if they cannot."""
    for _ in range(4):
        a, b = groups.resolve(a), groups.resolve(b)
        cuts_a = _cuts(groups, a)
        cuts_b = _cuts(groups, b)
        if cuts_a == cuts_b:
            if [s.inner for s in a] != [s.inner for s in b]:
                return None
            return a, b
        changed = False
        for layout, other in ((a, cuts_b), (b, cuts_a)):
            position = 0
            for seg in layout:
                length = groups.size[seg.group] * seg.inner
                inside = [c - position for c in other if position < c < position + length]
                if inside:
                    if any(c % seg.inner for c in inside) or seg.group in groups.parts:
                        return None
                    groups.refine(seg.group, [c // seg.inner for c in inside])
                    changed = True
                position += length
        if not changed:
            return None
    return None


def _cuts(groups: _Groups, layout: list[Seg]) -> list[int]:
    cuts, position = [], 0
    for seg in layout:
        position += groups.size[seg.group] * seg.inner
        cuts.append(position)
    return cuts


# --- values ----------------------------------------------------------------------------------------


@dataclass
class _Value:
    """What the pass knows of one tensor in the graph."""

    shape: tuple[int, ...]
    layouts: dict[int, Layout] = field(default_factory=dict)  # axis -> layout of permutable neurons
    sources: frozenset = frozenset()  # operations whose outputs reach it (record flow)
    param: str | None = None  # a parameter or buffer (or a view of one): its state_dict key
    param_axes: tuple[int | None, ...] = ()  # per axis of the value, the parameter's axis (None: not one)
    plain: bool = True  # only layout-keeping operations since its sources (no unknown operation)
    activated: frozenset = frozenset()  # sources that reach it through an activation
    bent: frozenset = frozenset()  # sources that reach it through another nonlinear function (pow, erf, ...)

    @property
    def fresh(self) -> frozenset:
        """Sources that reach it through linear, value-keeping operations only."""
        return self.sources - self.activated - self.bent


def _shape(node: Any) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(int(s) for s in value.shape) if isinstance(value, torch.Tensor) else None


_ACTIVATIONS = {
    "relu": "relu", "gelu": "gelu", "silu": "silu", "tanh": "tanh", "sigmoid": "sigmoid", "sin": "sine",
    "elu": "elu", "leaky_relu": "leaky_relu", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
    "softplus": "softplus", "mish": "mish", "hardtanh": "hardtanh", "celu": "celu", "selu": "selu",
    "softmax": "softmax", "_softmax": "softmax", "log_softmax": "log_softmax", "_log_softmax": "log_softmax",
}
_ELEMENTWISE = {
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "alias",
    "detach", "_to_copy", "to", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "erf", "pow",
    "clamp", "clamp_min", "clamp_max", "nan_to_num",
    "sign", "lift_fresh_copy", "type_as", "reciprocal", "cos", "logsigmoid", "exp2", "log1p", "expm1",
}
#: Elementwise operations that keep a tensor's values (dropout is the identity in eval mode).
_VALUE_KEEPING = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous",
                  "alias", "detach", "_to_copy", "to", "lift_fresh_copy", "type_as"}
_POOLING = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool2d_with_indices", "max_pool1d_with_indices",
    "max_pool3d_with_indices", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "upsample_bilinear2d", "upsample_bicubic2d", "upsample_linear1d", "upsample_trilinear3d", "_upsample_bilinear2d_aa",
}
_BINARY = {"add", "sub", "mul", "div", "maximum", "minimum", "rsub", "true_divide", "where", "atan2", "fmod"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "linalg_vector_norm", "norm", "prod"}
_IGNORED = {"_assert_tensor_metadata", "sym_size", "sym_numel", "_assert_async", "sym_constrain_range_for_size",
            "_assert_scalar", "sym_stride"}


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if target is getattr:
        return "getattr"
    name = getattr(target, "__name__", str(target))
    if hasattr(target, "_schema"):  # OpOverload: aten.add.Tensor -> add
        name = str(target).split(".")[1]
    elif name == "getitem":
        return "getitem"
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


class _Tracer:
    """One pass over an exported graph (see the module docstring)."""

    def __init__(self, program: torch.export.ExportedProgram, specs: dict[str, _OpSpec],
                 key_op: dict[str, str], source: str, aliases: dict[str, list[str]]) -> None:
        self.program, self.specs, self.key_op, self.source = program, specs, key_op, source
        self.aliases = aliases
        self.position = 0  # of the node being read
        self.used_as: dict[str, tuple[str, dict]] = {}  # operation path -> (kind, attrs) of its first use
        self.groups = _Groups()
        self.values: dict[torch.fx.Node, Any] = {}
        self.first_use: dict[str, int] = {}  # operation path -> position of first use
        self.flow: dict[str, tuple[InputSlice, ...]] = {}  # operation path -> inputs (sources are paths)
        self.activation: dict[str, str | None] = {}  # None: a function of its own, made of several operations
        self.opaque: set[str] = set()  # parameter keys used where the pass cannot follow them
        signature = program.graph_signature
        self.param_key = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        self.user_inputs = set(signature.user_inputs)
        self.attention_blocks = self._attention_blocks()
        self.attention_blocks.update(self._functional_attention_blocks())

    # -- helpers ---------------------------------------------------------------------------------

    def op_of(self, key: str) -> str:
        return self.key_op[key]

    def use_op(self, key: str, kind: str) -> str:
        """The operation a use of weight ``key`` as a ``kind`` belongs to: a tied weight (one tensor
        under several keys, e.g. an output layer sharing the embedding) belongs to the owner of that
        kind not yet used."""
        owners = [self.op_of(k) for k in (key, *self.aliases.get(key, ()))]
        owners.sort(key=lambda o: (self.specs[o].kind != kind, o in self.flow))
        return owners[0]

    def touch(self, op: str) -> None:
        """``op`` is used at the node being read (computation order of the record)."""
        self.first_use.setdefault(op, self.position)

    def value(self, arg: Any) -> _Value | None:
        return self.values.get(arg) if isinstance(arg, torch.fx.Node) else None

    def fix_value(self, value: Any) -> None:
        if isinstance(value, list):
            for part in value:
                self.fix_value(part)
            return
        if not isinstance(value, _Value):
            return
        for layout in value.layouts.values():
            self.groups.fix_layout(layout)
        if value.param is not None:
            self.opaque.add(value.param)

    def note_activation(self, value: _Value, name: str) -> None:
        """Activation ``name`` applied to ``value``: the activation of each operation whose output
        reaches it unchanged; one that a nonlinear function reached first has a function of its own
        (GPT-2's tanh-approximated GELU), whose last step names nothing."""
        for op in value.fresh:
            if op != INPUT and op not in self.activation:
                self.activation[op] = name
        self.note_composite(value.bent - value.activated)

    def note_composite(self, ops: Iterable[str]) -> None:
        """Operations whose output passes through a function written out of several operations
        (``x * sigmoid(x)``, ``0.5 * x * (1 + erf(x / sqrt(2)))``): their activation is unknown."""
        for op in ops:
            if op != INPUT:
                self.activation[op] = None

    def mark_identity(self, value: _Value) -> None:
        """Operations whose outputs reach a layer or the output with no activation on the way."""
        for src in value.fresh:
            if src not in self.activation and src != INPUT:
                self.activation[src] = "identity"

    def read(self, value: _Value | None, axis: int, op: str, size: int) -> tuple[InputSlice, ...]:
        """Record flow into ``op``: the layout of ``value``'s ``axis`` (size ``size``) as input slices."""
        if value is None:
            return (InputSlice(0, size, 1, (-1,)),)
        if value.plain:
            self.mark_identity(value)
        layout = value.layouts.get(axis)
        if layout is None:
            sources = value.sources or frozenset([INPUT])
            return (InputSlice(0, size, 1, tuple(sorted(sources))),)
        slices, offset = [], 0
        for seg in self.groups.resolve(layout):
            length = self.groups.size[seg.group] * seg.inner
            slices.append(InputSlice(offset, length, seg.inner, tuple(sorted(seg.sources or {INPUT}))))
            offset += length
        merged: list[InputSlice] = []
        for s in slices:  # neighbouring parts of one refined group read as one slice
            if merged and merged[-1].sources == s.sources and merged[-1].block == s.block:
                merged[-1] = InputSlice(merged[-1].offset, merged[-1].size + s.size, s.block, s.sources)
            else:
                merged.append(s)
        return tuple(merged)

    def new_output(self, op: str, key: str, axis: int, size: int, bias: str | None) -> Seg:
        """A new group: the ``size`` outputs of ``op`` (rows of ``key`` along ``axis`` and of ``bias``)."""
        g = self.groups.new(size, f"outputs of '{op}'")
        self.groups.members[g].append((key, axis, 0, 1))
        if bias is not None:
            self.groups.members[g].append((bias, 0, 0, 1))
        return Seg(g, 1, frozenset([op]))

    # -- the pass ----------------------------------------------------------------------------------

    def run(self) -> None:
        for position, node in enumerate(self.program.graph.nodes):
            self.position = position
            if node.op == "placeholder":
                shape = _shape(node) or ()
                key = self.param_key.get(node.name)
                if key is not None and key not in self.key_op:  # a non-persistent buffer: a constant
                    self.values[node] = _Value(shape)
                elif key is not None:
                    self.values[node] = _Value(shape, sources=frozenset([self.op_of(key)]), param=key,
                                               param_axes=tuple(range(len(shape))))
                elif node.name in self.user_inputs and shape:
                    self.values[node] = _Value(shape)
                continue
            if node.op == "output":
                for arg in _flat(node.args):
                    value = self.value(arg)
                    if isinstance(value, _Value) and value.plain:
                        self.mark_identity(value)
                    self.fix_value(value)
                continue
            if node.op != "call_function":
                continue
            block = self.attention_blocks.get(node)
            if block is not None:
                if block.first is node:
                    if isinstance(block, _SdpaBlock):
                        self.functional_attention(block)
                    else:
                        self.attention(block)
                continue
            self.call(node)

    def call(self, node: torch.fx.Node) -> None:
        name = _op_name(node)
        shape = _shape(node)
        args = node.args
        for key in (v.param for v in (self.value(a) for a in _flat(args)) if isinstance(v, _Value) and v.param):
            if key not in self.aliases:  # a tied weight's owner is known only to the operation using it
                self.touch(self.op_of(key))
        if name in _IGNORED:
            return
        if name == "getitem":
            parts = self.values.get(args[0])
            if isinstance(parts, list) and isinstance(args[1], int) and args[1] < len(parts):
                self.values[node] = parts[args[1]]
            return
        handler = getattr(self, f"on_{name}", None)
        if handler is not None:
            result = handler(node, shape)
        elif name in _ACTIVATIONS or name in _ELEMENTWISE:
            result = self.elementwise(node, shape, _ACTIVATIONS.get(name), name in _VALUE_KEEPING)
        elif name in _POOLING:
            result = self.pooling(node, shape)
        elif name in _BINARY:
            result = self.binary(node, shape)
        elif name in _REDUCTIONS:
            result = self.reduction(node, shape)
        else:
            result = self.unknown(node, shape)
        if result is not None:
            self.values[node] = result

    def unknown(self, node: torch.fx.Node, shape) -> _Value | None:
        sources = frozenset()
        for arg in _flat(node.args) + _flat(node.kwargs.values()):
            value = self.value(arg)
            self.fix_value(value)
            if isinstance(value, _Value):
                sources |= value.sources
        return _Value(shape, sources=sources, plain=False) if shape is not None else None

    def elementwise(self, node, shape, activation: str | None, keeps_values: bool) -> _Value | None:
        x = self.value(node.args[0])
        if not isinstance(x, _Value) or shape is None:
            return self.unknown(node, shape)
        if x.param is not None:  # a function of a parameter: followed no further
            self.opaque.add(x.param)
            return _Value(shape, sources=x.sources)
        activated, bent = x.activated, x.bent
        if activation:
            self.note_activation(x, activation)
            activated = x.sources
        elif not keeps_values:
            bent = bent | (x.sources - x.activated)
        return _Value(shape, dict(x.layouts), x.sources, plain=x.plain, activated=activated, bent=bent)

    def pooling(self, node, shape) -> _Value | list | None:
        x = self.value(node.args[0])
        if not isinstance(x, _Value) or x.param is not None:
            return self.unknown(node, shape)
        for axis, layout in x.layouts.items():
            if axis >= 2:
                self.groups.fix_layout(layout)
        out_shape = shape if shape is not None else _shape_of_first(node)
        value = _Value(out_shape or (), {a: l for a, l in x.layouts.items() if a < 2}, x.sources, plain=x.plain,
                       activated=x.activated, bent=x.bent)
        if shape is None:  # with indices: (values, indices)
            return [value, _Value(out_shape or (), sources=x.sources)]
        return value

    def binary(self, node, shape) -> _Value | None:
        if shape is None:
            return self.unknown(node, shape)
        values = [self.value(a) for a in node.args if isinstance(a, torch.fx.Node)]
        if any(not isinstance(v, _Value) for v in values):
            return self.unknown(node, shape)
        sources = frozenset().union(*(v.sources for v in values))
        shaping = values
        if _op_name(node) not in ("add", "sub", "rsub"):
            # A product of a layer's output with a function of it (x * sigmoid(x)) is that layer's own
            # activation; a factor broadcast over the neurons (a norm's 1 / rms) only scales them.
            full = [v for v in values if v.param is None and v.shape == shape]
            self.note_composite(op for v in full for w in full if w is not v for op in v.fresh & (w.activated | w.bent))
            shaping = [v for v in values if v.param is not None or v.shape == shape] or values
        return _Value(shape, self.line_up(values, shape), sources, plain=all(v.plain for v in values),
                      activated=frozenset().union(*(v.activated for v in shaping)),
                      bent=frozenset().union(*(v.bent for v in shaping)))

    def merge_layouts(self, layouts: list[Layout]) -> Layout | None:
        """One layout for values that meet entry by entry (an addition): their groups become one,
        their sources add up; ``None``, with every group fixed, when they do not line up."""
        merged = layouts[0]
        for other in layouts[1:]:
            aligned = _align(self.groups, merged, other)
            if aligned is None:
                for layout in layouts:
                    self.groups.fix_layout(layout)
                return None
            for s, t in zip(*aligned):
                self.groups.union(s.group, t.group)
            merged = [Seg(s.group, s.inner, s.sources | t.sources) for s, t in zip(*aligned)]
        return merged

    def line_up(self, values: list[_Value], shape: tuple[int, ...], skip: int | None = None) -> dict[int, Layout]:
        """The layouts of an elementwise combination of ``values`` (broadcast, right-aligned) on every
        axis but ``skip``: layouts that meet merge; a parameter met along an axis becomes a member of
        its groups; any other tensor met there (a constant per neuron) fixes them."""
        layouts: dict[int, Layout] = {}
        ndim = len(shape)
        for axis in range(ndim):
            if axis == skip:
                continue
            present = [(v, axis - (ndim - len(v.shape))) for v in values]
            present = [(v, a) for v, a in present if a >= 0 and v.shape[a] != 1]
            with_layout = [v.layouts[a] for v, a in present if a in v.layouts]
            if not with_layout:
                continue
            merged = self.merge_layouts(with_layout)
            if merged is None:
                continue
            for v, a in present:
                if a in v.layouts:
                    continue
                if v.param is not None and v.param_axes[a] is not None:
                    self.groups.add_member(merged, v.param, v.param_axes[a])
                    extra = frozenset([self.op_of(v.param)])
                    merged = [Seg(s.group, s.inner, s.sources | extra) for s in self.groups.resolve(merged)]
                else:
                    self.groups.fix_layout(merged)
                    if v.param is not None:
                        self.opaque.add(v.param)
            layouts[axis] = merged
        return layouts

    def reduction(self, node, shape) -> _Value | None:
        x = self.value(node.args[0])
        if not isinstance(x, _Value) or x.param is not None or shape is None:
            return self.unknown(node, shape)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if _op_name(node) in ("linalg_vector_norm", "norm"):
            dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        if dims is None or dims == []:
            return _Value(shape, sources=x.sources)
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % len(x.shape) for d in dims)
        keep = len(shape) == len(x.shape)
        layouts = {}
        for axis, layout in x.layouts.items():
            if axis in dims:
                continue  # a sum, mean or maximum over neurons does not depend on their order
            layouts[axis if keep else axis - sum(d < axis for d in dims)] = layout
        return _Value(shape, layouts, x.sources, activated=x.activated, bent=x.bent)

    # -- shapes ------------------------------------------------------------------------------------

    def remap(self, node, shape, x: _Value, axes: list[int | None]) -> _Value:
        """A value whose axis i is ``x``'s axis ``axes[i]`` (None: a new axis)."""
        layouts = {i: x.layouts[a] for i, a in enumerate(axes) if a is not None and a in x.layouts}
        for a, layout in x.layouts.items():
            if a not in axes:
                self.groups.fix_layout(layout)
        param_axes = tuple(None if a is None else x.param_axes[a] for a in axes) if x.param is not None else ()
        return _Value(shape, layouts, x.sources, x.param, param_axes, x.plain, x.activated, x.bent)

    def shaped(self, node, shape) -> tuple[_Value, tuple[int, ...]] | None:
        x = self.value(node.args[0])
        if not isinstance(x, _Value) or shape is None:
            return None
        return x, shape

    def moved(self, node, shape, axes: Callable[[tuple[int, ...]], list[int | None]]) -> _Value | None:
        """A view that only moves, adds or broadcasts axes: axis i of the result is axis
        ``axes(x.shape)[i]`` of the input (``None``: a new axis)."""
        got = self.shaped(node, shape)
        if got is None:
            return self.unknown(node, shape)
        x, shape = got
        return self.remap(node, shape, x, axes(x.shape))

    def on_unsqueeze(self, node, shape):
        at = node.args[1] % (len(shape) if shape else 1)
        return self.moved(node, shape, lambda old: [*range(at), None, *range(at, len(old))])

    def on_transpose(self, node, shape):
        return self.moved(node, shape, lambda old: _axis_order(node, len(old)))

    on_swapaxes = on_permute = on_transpose

    def on_t(self, node, shape):
        return self.moved(node, shape, lambda old: list(range(len(old)))[::-1])

    def on_expand(self, node, shape):
        return self.moved(node, shape, lambda old: [None] * (len(shape) - len(old)) + list(range(len(old))))

    def on_select(self, node, shape):
        got = self.shaped(node, shape)
        if got is None:
            return self.unknown(node, shape)
        x, shape = got
        d = node.args[1] % len(x.shape)
        if d in x.layouts:
            self.groups.fix_layout(x.layouts[d])
        if x.param is not None and x.param_axes[d] is not None:
            self.opaque.add(x.param)
        axes = [a for a in range(len(x.shape)) if a != d]
        return self.remap(node, shape, x, axes)

    def on_slice(self, node, shape):
        got = self.shaped(node, shape)
        if got is None:
            return self.unknown(node, shape)
        x, shape = got
        d = (node.args[1] if len(node.args) > 1 else 0) % len(x.shape)
        if shape[d] == x.shape[d]:
            return self.remap(node, shape, x, list(range(len(shape))))
        value = self.remap(node, shape, x, list(range(len(shape))))
        if x.param is not None and x.param_axes[d] is not None:
            value.param_axes = tuple(None if i == d else a for i, a in enumerate(value.param_axes))
        if d in x.layouts:
            start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
            step = node.args[4] if len(node.args) > 4 else 1
            start = start + x.shape[d] if start < 0 else start
            piece = self.cut(x.layouts[d], start, start + shape[d]) if step == 1 else None
            if piece is None:
                self.groups.fix_layout(x.layouts[d])
                del value.layouts[d]
            else:
                value.layouts[d] = piece
        return value

    def cut(self, layout: Layout, start: int, end: int) -> Layout | None:
        """The part ``[start, end)`` of an axis, refining groups at both ends; ``None`` if it cuts a block."""
        for _ in range(3):
            segs = self.groups.resolve(layout)
            position, piece, refined = 0, [], False
            for seg in segs:
                length = self.groups.size[seg.group] * seg.inner
                lo, hi = max(start, position), min(end, position + length)
                if lo < hi:
                    if (lo, hi) == (position, position + length):
                        piece.append(seg)
                    else:
                        if (lo - position) % seg.inner or (hi - position) % seg.inner:
                            return None
                        self.groups.refine(seg.group, [(lo - position) // seg.inner, (hi - position) // seg.inner])
                        refined = True
                position += length
            if not refined:
                return piece
        return None

    def on_split(self, node, shape):
        x = self.value(node.args[0])
        pieces = node.meta.get("val")
        if not isinstance(x, _Value) or not isinstance(pieces, (list, tuple)):
            return self.unknown(node, shape)
        d = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(x.shape)
        out, start = [], 0
        for piece in pieces:
            piece_shape = tuple(int(s) for s in piece.shape)
            value = _Value(piece_shape, {a: l for a, l in x.layouts.items() if a != d}, x.sources)
            if d in x.layouts:
                cut = self.cut(x.layouts[d], start, start + piece_shape[d])
                if cut is None:
                    self.groups.fix_layout(x.layouts[d])
                else:
                    value.layouts[d] = cut
            if x.param is not None:
                self.opaque.add(x.param)
            out.append(value)
            start += piece_shape[d]
        return out

    on_split_with_sizes = on_split

    def on_chunk(self, node, shape):
        return self.on_split(node, shape)

    def on_squeeze(self, node, shape):
        return self.reshape(node, shape)

    on_view = on_reshape = on_flatten = on_unflatten = on__unsafe_view = on_squeeze

    def reshape(self, node, shape):
        got = self.shaped(node, shape)
        if got is None:
            return self.unknown(node, shape)
        x, shape = got
        groups = _reshape_groups(x.shape, shape)
        if groups is None:
            self.fix_value(x)
            return _Value(shape, sources=x.sources)
        layouts: dict[int, Layout] = {}
        param_axes: list[int | None] = [None] * len(shape)
        for ins, outs in groups:
            real_in = [a for a in ins if x.shape[a] != 1]
            real_out = [b for b in outs if shape[b] != 1]
            if len(real_in) == 1 and len(real_out) == 1:
                a, b = real_in[0], real_out[0]
                if a in x.layouts:
                    layouts[b] = x.layouts[a]
                if x.param is not None:
                    param_axes[b] = x.param_axes[a]
                continue
            with_layout = [a for a in real_in if a in x.layouts]
            if len(real_out) == 1 and len(with_layout) == 1:  # flattening: neurons become blocks
                a, b = with_layout[0], real_out[0]
                outer = math.prod(x.shape[i] for i in real_in if i < a)
                inner = math.prod(x.shape[i] for i in real_in if i > a)
                layout = [Seg(s.group, s.inner * inner, s.sources) for s in self.groups.resolve(x.layouts[a])]
                layouts[b] = layout * outer
                continue
            for a in with_layout:
                self.groups.fix_layout(x.layouts[a])
            if x.param is not None and any(x.param_axes[a] is not None for a in real_in):
                self.opaque.add(x.param)
        return _Value(shape, layouts, x.sources, x.param, tuple(param_axes) if x.param is not None else (), x.plain,
                      x.activated, x.bent)

    def on_cat(self, node, shape):
        tensors = list(node.args[0])
        d = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        values = [self.value(t) for t in tensors]
        if shape is None or any(not isinstance(v, _Value) for v in values):
            return self.unknown(node, shape)
        d %= len(shape)
        # torch.cat skips 1-D empty tensors of any other rank (an empty key-value cache, say).
        values = [v for v in values if len(v.shape) == len(shape)]
        layout: Layout = []
        for v in values:
            if d in v.layouts:
                layout.extend(self.groups.resolve(v.layouts[d]))
            else:  # entries that do not move
                g = self.groups.new(v.shape[d], "concatenated", fixed=True)
                layout.append(Seg(g, 1, v.sources or frozenset([INPUT])))
        # Other axes line up as in an elementwise operation.
        others = self.line_up(values, shape, skip=d)
        if any(d in v.layouts for v in values):
            others[d] = layout
        return _Value(shape, others, frozenset().union(*(v.sources for v in values)),
                      activated=frozenset().union(*(v.activated for v in values)),
                      bent=frozenset().union(*(v.bent for v in values)))

    # -- parameterised operations ------------------------------------------------------------------

    def weight_key(self, arg) -> str | None:
        """The key of a parameter passed whole (not a view of one)."""
        value = self.value(arg)
        if isinstance(value, _Value) and value.param is not None and value.param_axes == tuple(range(len(value.shape))):
            return value.param
        return None

    def on_linear(self, node, shape):
        b = node.args[2] if len(node.args) > 2 else None
        return self.dense(node, shape, node.args[0], node.args[1], b, transposed=False)

    def on_addmm(self, node, shape):
        """``bias + x @ w``: a linear layer stored as ``(in, out)`` (Hugging Face's Conv1D)."""
        return self.dense(node, shape, node.args[1], node.args[2], node.args[0], transposed=True)

    def on_mm(self, node, shape):
        return self.dense(node, shape, node.args[0], node.args[1], None, transposed=True)

    on_matmul = on_mm

    def dense(self, node, shape, x_arg, w_arg, b_arg, transposed: bool):
        """A linear map of ``x``'s last axis by parameter ``w`` (``(out, in)``, or ``(in, out)`` when
        ``transposed``; either may be a transposed view of the stored tensor), plus an optional bias."""
        x, wv = self.value(x_arg), self.value(w_arg)
        b = self.weight_key(b_arg) if isinstance(b_arg, torch.fx.Node) else None
        if (shape is None or not isinstance(x, _Value) or x.param is not None or not isinstance(wv, _Value)
                or wv.param is None or len(wv.shape) != 2 or sorted(wv.param_axes) != [0, 1]
                or (isinstance(b_arg, torch.fx.Node) and b is None)):
            return self.unknown(node, shape)
        w = wv.param
        # Axes of the stored tensor that meet the inputs and make the outputs.
        in_axis, out_axis = wv.param_axes if transposed else wv.param_axes[::-1]
        op = self.use_op(w, "linear")
        self.touch(op)
        # A linear layer, whatever module holds it: stored (out, in) as nn.Linear, or (in, out) as
        # Hugging Face's Conv1D (GPT-2), which the record holds (out, in) like any other.
        self.used_as.setdefault(op, ("linear", {} if out_axis == 0 else {"stored_in_out": True}))
        last = len(x.shape) - 1
        self.flow.setdefault(op, self.read(x, last, op, x.shape[last]))
        if last in x.layouts:
            self.groups.add_member(x.layouts[last], w, in_axis)
        out = self.new_output(op, w, out_axis, shape[-1], b)
        layouts = {a: l for a, l in x.layouts.items() if a != last}
        layouts[len(shape) - 1] = [out]
        return _Value(shape, layouts, frozenset([op]))

    def on_conv1d(self, node, shape, transposed: bool = False, groups: int | None = None):
        x, w = self.value(node.args[0]), self.weight_key(node.args[1])
        b = self.weight_key(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
        if w is None or shape is None or not isinstance(x, _Value) or x.param is not None:
            return self.unknown(node, shape)
        if groups is None:
            groups = node.args[6] if len(node.args) > 6 else 1
        op = self.op_of(w)
        weight_shape = self.values[node.args[1]].shape
        kind = f"conv{'_transpose' if transposed else ''}{len(weight_shape) - 2}d"
        self.used_as.setdefault(op, (kind, {"groups": groups}))
        self.flow.setdefault(op, self.read(x, 1, op, x.shape[1]))
        for axis, layout in x.layouts.items():
            if axis >= 2:
                self.groups.fix_layout(layout)
        layout = x.layouts.get(1)
        in_axis, out_axis = (0, 1) if transposed else (1, 0)
        per_group_in = weight_shape[0] // groups if transposed else weight_shape[1]
        if groups == 1:
            if layout is not None:
                self.groups.add_member(layout, w, in_axis)
            out = [self.new_output(op, w, out_axis, shape[1], b)]
        elif per_group_in == 1 and layout is not None:  # depthwise: each channel keeps its own filters
            multiplier = shape[1] // x.shape[1]
            self.groups.add_member(layout, w, 0, block=1 if transposed else multiplier)
            if b is not None:
                self.groups.add_member(layout, b, 0, block=multiplier)
            out = [Seg(s.group, s.inner * multiplier, frozenset([op])) for s in self.groups.resolve(layout)]
        else:
            if layout is not None:
                self.groups.fix_layout(layout)
            out = [Seg(self.groups.new(shape[1], f"outputs of grouped '{op}'", fixed=True), 1, frozenset([op]))]
        return _Value(shape, {1: out}, frozenset([op]))

    def on_conv2d(self, node, shape):
        return self.on_conv1d(node, shape)

    on_conv3d = on_conv2d

    def on_conv_transpose1d(self, node, shape):
        groups = node.args[6] if len(node.args) > 6 else 1
        return self.on_conv1d(node, shape, transposed=True, groups=groups)

    on_conv_transpose2d = on_conv_transpose3d = on_conv_transpose1d

    def on_convolution(self, node, shape):
        transposed, groups = node.args[6], node.args[8]
        return self.on_conv1d(node, shape, transposed=transposed, groups=groups)

    def on_embedding(self, node, shape):
        w = self.weight_key(node.args[0])
        if w is None or shape is None:
            return self.unknown(node, shape)
        op = self.use_op(w, "embedding")
        self.touch(op)
        self.used_as.setdefault(op, ("embedding", {}))
        num = self.values[node.args[0]].shape[0]
        indices = self.value(node.args[1])
        self.flow.setdefault(op, (InputSlice(0, num, 1, tuple(sorted(indices.sources)) if indices and indices.sources else (-1,)),))
        out = self.new_output(op, w, 1, shape[-1], None)
        return _Value(shape, {len(shape) - 1: [out]}, frozenset([op]))

    def norm(self, node, shape, x_arg, keys: list, axes: list[int]) -> _Value | None:
        """A normalisation whose tensors ``keys`` hold one value per entry of ``x``'s ``axes``."""
        x = self.value(x_arg)
        keys = [self.weight_key(k) if isinstance(k, torch.fx.Node) else None for k in keys]
        present = [k for k in keys if k is not None]
        if not isinstance(x, _Value) or x.param is not None:
            return self.unknown(node, shape)
        if not present:
            return _Value(shape or x.shape, dict(x.layouts), x.sources)
        op = self.op_of(present[0])
        channel = axes[0]
        self.flow.setdefault(op, self.read(x, channel, op, x.shape[channel]))
        layouts = dict(x.layouts)
        for i, axis in enumerate(axes):
            if axis in x.layouts:
                for key in present:
                    self.groups.add_member(x.layouts[axis], key, i)
                layouts[axis] = [Seg(s.group, s.inner, frozenset([op])) for s in self.groups.resolve(x.layouts[axis])]
        return _Value(shape or x.shape, layouts, frozenset([op]))

    def on_batch_norm(self, node, shape):
        return self.norm(node, shape, node.args[0], list(node.args[1:5]), [1])

    def on__native_batch_norm_legit_no_training(self, node, shape):
        value = self.on_batch_norm(node, _shape_of_first(node))
        return [value, None, None] if isinstance(value, _Value) else value

    on__native_batch_norm_legit = on__native_batch_norm_legit_no_training

    def on_instance_norm(self, node, shape):
        return self.on_batch_norm(node, shape)

    def on_layer_norm(self, node, shape):
        x = self.value(node.args[0])
        if not isinstance(x, _Value):
            return self.unknown(node, shape)
        normalized = len(node.args[1])
        axes = list(range(len(x.shape) - normalized, len(x.shape)))
        keys = list(node.args[2:4]) if _op_name(node) != "rms_norm" else [node.args[2] if len(node.args) > 2 else None]
        return self.norm(node, shape, node.args[0], keys, axes)

    on_rms_norm = on_layer_norm

    def on_native_layer_norm(self, node, shape):
        value = self.on_layer_norm(node, _shape_of_first(node))
        return [value, None, None] if isinstance(value, _Value) else value

    def on_group_norm(self, node, shape):
        x = self.value(node.args[0])
        if not isinstance(x, _Value):
            return self.unknown(node, shape)
        num_groups = node.args[1]
        if num_groups not in (1, x.shape[1]) and 1 in x.layouts:
            # Statistics are per group of channels: channels may move within their group (each group
            # its own permutation), not across groups.
            size = x.shape[1] // num_groups
            if any(self.cut(x.layouts[1], g * size, (g + 1) * size) is None for g in range(num_groups)):
                self.groups.fix_layout(x.layouts[1])  # refinement is global: the layout now reads in parts
        return self.norm(node, shape, node.args[0], list(node.args[2:4]), [1])

    # -- attention -------------------------------------------------------------------------------

    _RESHAPES = {"view", "reshape", "_unsafe_view", "unflatten"}
    _SAME = {"contiguous", "clone", "alias", "_to_copy", "dropout", "detach"}

    def _functional_attention_blocks(self) -> dict[torch.fx.Node, _SdpaBlock]:
        """Every ``scaled_dot_product_attention`` whose q, k and v are head views of linear maps and
        whose output, heads merged, feeds one linear map only (GPT-style code with a fused ``qkv``)."""
        owner: dict[torch.fx.Node, _SdpaBlock] = {}
        for node in self.program.graph.nodes:
            if node.op == "call_function" and _op_name(node) == "scaled_dot_product_attention":
                block = self._match_sdpa(node)
                if block is not None and not any(n in owner for n in block.nodes):
                    for n in block.nodes:
                        owner[n] = block
        return owner

    def _match_sdpa(self, sdpa: torch.fx.Node) -> _SdpaBlock | None:
        nodes = [sdpa]
        projections, shapes = [], []
        for arg in sdpa.args[:3]:
            found = self._heads_of(arg, nodes)
            if found is None:
                return None
            projections.append(found[0])
            shapes.append(found[1])
        if len(set(shapes)) != 1:
            return None  # grouped-query attention (fewer key/value heads): not followed
        heads, head_dim = shapes[0]
        merged = self._merge_of(sdpa, nodes)
        if merged is None:
            return None
        consumer = next(iter(merged.users))
        name = _op_name(consumer)
        weight_arg = {"linear": 1, "addmm": 2, "mm": 1, "matmul": 1}.get(name)
        if weight_arg is None:
            return None
        data_arg = {"linear": 0, "addmm": 1, "mm": 0, "matmul": 0}[name]
        if consumer.args[data_arg] is not merged:
            return None
        out_weight = self.param_key.get(getattr(consumer.args[weight_arg], "name", ""))
        if out_weight is None:
            return None
        # The projections' outputs feed nothing but this attention.
        inside = set(nodes)
        for projection in projections:
            if any(user not in inside for user in projection.node.users):
                return None
        for n in nodes:
            if n is not merged and any(user not in inside for user in n.users):
                return None
        # Read at the attention itself: every projection (and its free outputs) is known by then.
        return _SdpaBlock(sdpa, nodes, projections, heads, head_dim, out_weight, name != "linear", merged)

    def _heads_of(self, arg, nodes: list) -> tuple[_Projection, tuple[int, int]] | None:
        """Follow a (batch, heads, tokens, head_dim) argument back to the linear map it views."""
        if not isinstance(arg, torch.fx.Node):
            return None
        order = [0, 1, 2, 3]  # axis i of ``arg`` is axis order[i] of the current node
        node, heads = arg, None
        offset = 0
        while True:
            name = _op_name(node) if node.op == "call_function" else ""
            if heads is None and name in ("transpose", "permute"):
                shape = _shape(node)
                if shape is None or len(shape) != 4:
                    return None
                swap = _axis_order(node, 4)
                order = [swap[i] for i in order]
            elif name in self._SAME or (name in ("mul", "div") and not isinstance(node.args[1], torch.fx.Node)):
                pass
            elif heads is None and name in self._RESHAPES:
                before, after = _shape(node.args[0]), _shape(node)
                if before is None or after is None or len(after) != 4 or before[:-1] != after[:2] \
                        or after[2] * after[3] != before[-1] or order != [0, 2, 1, 3]:
                    return None
                heads = (after[2], after[3])
            elif heads is not None and name in self._RESHAPES:
                before, after = _shape(node.args[0]), _shape(node)
                if before is None or after is None or before[-1] != after[-1]:
                    return None
            elif heads is not None and name == "getitem":
                parent = node.args[0]
                if _op_name(parent) not in ("split", "split_with_sizes", "chunk"):
                    return None
                pieces = parent.meta.get("val")
                axis = parent.args[2] if len(parent.args) > 2 else parent.kwargs.get("dim", 0)
                if axis % len(pieces[0].shape) != len(pieces[0].shape) - 1:
                    return None
                offset += sum(int(p.shape[-1]) for p in pieces[: node.args[1]])
                nodes.append(node)
                node = parent
            elif heads is not None and name in ("linear", "addmm", "mm", "matmul"):
                data, weight, bias = {"linear": (0, 1, 2), "addmm": (1, 2, 0), "mm": (0, 1, None),
                                      "matmul": (0, 1, None)}[name]
                w = self.param_key.get(getattr(node.args[weight], "name", ""))
                b_node = node.args[bias] if bias is not None and len(node.args) > bias else None
                b = self.param_key.get(getattr(b_node, "name", "")) if b_node is not None else None
                if w is None or (b_node is not None and b is None):
                    return None
                return _Projection(node, w, b, name != "linear", offset), heads
            else:
                return None
            if node not in nodes:
                nodes.append(node)
            node = node.args[0]
            if not isinstance(node, torch.fx.Node):
                return None

    def _merge_of(self, sdpa: torch.fx.Node, nodes: list) -> torch.fx.Node | None:
        """Follow the attention's (batch, heads, tokens, head_dim) output to the (batch, tokens, dim)
        merge of its heads; the node that makes it."""
        order = [0, 1, 2, 3]
        node = sdpa
        while len(node.users) == 1:
            user = next(iter(node.users))
            name = _op_name(user)
            if name in ("transpose", "permute"):
                swap = _axis_order(user, 4)
                order = [order[i] for i in swap]
            elif name in self._SAME or (name in self._RESHAPES and _shape(user) == _shape(user.args[0])):
                pass
            elif name in self._RESHAPES:
                before, after = _shape(user.args[0]), _shape(user)
                if before is None or after is None or order != [0, 2, 1, 3] or len(after) != 3 \
                        or after[:2] != before[:2] or after[2] != before[2] * before[3]:
                    return None
                nodes.append(user)
                # Leading axes may merge too (tokens of a batch in one matrix) before the projection.
                while len(user.users) == 1:
                    following = next(iter(user.users))
                    shape = _shape(following)
                    if _op_name(following) not in self._RESHAPES | self._SAME or shape is None \
                            or shape[-1] != after[-1]:
                        break
                    nodes.append(following)
                    user = following
                return user
            else:
                return None
            nodes.append(user)
            node = user
        return None

    def functional_attention(self, block: _SdpaBlock) -> None:
        """Heads, queries with keys, values with the output projection, of a hand-written attention."""
        heads, dh = block.heads, block.head_dim
        sources = frozenset()
        for projection in block.projections:
            value = self.value(projection.node)
            if isinstance(value, _Value):
                self.fix_value(value)  # the free outputs of the projection give way to the structure below
                sources |= value.sources
        for arg in list(_flat(block.first.args[3:])) + list(_flat(block.first.kwargs.values())):
            self.fix_value(self.value(arg))
        rows = lambda p: [(p.weight, 1 if p.transposed else 0)] + ([(p.bias, 0)] if p.bias else [])  # noqa: E731
        out_axis = 0 if block.out_transposed else 1
        g = self.groups.new(heads, f"heads of the attention into '{self.op_of(block.out_weight)}'")
        for p in block.projections:
            self.groups.members[g] += [(k, axis, p.offset, dh) for k, axis in rows(p)]
        self.groups.members[g].append((block.out_weight, out_axis, 0, dh))
        q, k, v = block.projections
        for h in range(heads):
            qk = self.groups.new(dh, f"query/key dimensions of head {h} of the attention into "
                                     f"'{self.op_of(block.out_weight)}'")
            self.groups.members[qk] += [(key, axis, p.offset + h * dh, 1) for p in (q, k) for key, axis in rows(p)]
            vo = self.groups.new(dh, f"value dimensions of head {h} of the attention into "
                                     f"'{self.op_of(block.out_weight)}'")
            self.groups.members[vo] += [(key, axis, v.offset + h * dh, 1) for key, axis in rows(v)]
            self.groups.members[vo].append((block.out_weight, out_axis, h * dh, 1))
        for node in block.nodes:
            shape = _shape(node)
            if shape is not None:
                self.values[node] = _Value(shape, sources=sources)

    def _attention_blocks(self) -> dict[torch.fx.Node, "_Block"]:
        """The nodes of every ``nn.MultiheadAttention`` call, read as one operation."""
        blocks: dict[str, _Block] = {}
        owner: dict[torch.fx.Node, _Block] = {}
        for node in self.program.graph.nodes:
            if node.op != "call_function":
                continue
            for path, _ in (node.meta.get("nn_module_stack") or {}).values():
                spec = self.specs.get(path)
                if spec is not None and spec.kind == "attention":
                    block = blocks.setdefault(path, _Block(path, node))
                    block.nodes.append(node)
                    owner[node] = block
                    break
        return owner

    def attention(self, block: "_Block") -> None:
        op, spec = block.path, self.specs[block.path]
        self.touch(op)
        nodes = set(block.nodes)
        d, heads = spec.attrs["embed_dim"], spec.attrs["num_heads"]
        key = lambda local: f"{op}.{local}" if op else local  # noqa: E731
        present = {k for k in self.key_op if self.key_op[k] == op}
        externals: list[torch.fx.Node] = []
        for n in block.nodes:
            for arg in _flat(n.args) + _flat(n.kwargs.values()):
                if isinstance(arg, torch.fx.Node) and arg not in nodes and arg not in externals:
                    v = self.value(arg)
                    if isinstance(v, _Value) and v.param is not None and self.op_of(v.param) == op:
                        continue
                    externals.append(arg)
        inputs = [self.value(a) for a in externals]
        layouts = []
        for value in inputs:
            if isinstance(value, _Value) and value.shape and value.shape[-1] == d and value.param is None:
                layout = value.layouts.get(len(value.shape) - 1)
                layouts.append(layout)
            else:
                self.fix_value(value if isinstance(value, _Value) else None)
        packed = key("in_proj_weight") in present
        query = next((v for v in inputs if isinstance(v, _Value) and v.shape and v.shape[-1] == d), None)
        self.flow.setdefault(op, self.read(query, len(query.shape) - 1 if query else 0, op, d))
        if packed and layouts and all(l is not None for l in layouts):
            merged = self.merge_layouts(layouts)
            if merged is not None:
                self.groups.add_member(merged, key("in_proj_weight"), 1)
        else:
            for l in layouts:
                if l is not None:
                    self.groups.fix_layout(l)
        has_bias = key("in_proj_bias") in present
        outputs = [n for n in block.nodes if any(u not in nodes for u in n.users)]
        simple = packed and key("bias_k") not in present and d % heads == 0 and len(outputs) == 1
        if simple:
            dh = d // heads
            rows = [key("in_proj_weight")] + ([key("in_proj_bias")] if has_bias else [])
            g = self.groups.new(heads, f"heads of '{op}'")
            for k in rows:
                self.groups.members[g] += [(k, 0, i * d, dh) for i in range(3)]
            self.groups.members[g].append((key("out_proj.weight"), 1, 0, dh))
            for h in range(heads):
                qk = self.groups.new(dh, f"query/key dimensions of head {h} of '{op}'")
                self.groups.members[qk] += [(k, 0, i * d + h * dh, 1) for k in rows for i in range(2)]
                vo = self.groups.new(dh, f"value dimensions of head {h} of '{op}'")
                self.groups.members[vo] += [(k, 0, 2 * d + h * dh, 1) for k in rows]
                self.groups.members[vo].append((key("out_proj.weight"), 1, h * dh, 1))
        out_bias = key("out_proj.bias") if key("out_proj.bias") in present else None
        out = self.new_output(op, key("out_proj.weight"), 0, d, out_bias)
        for n in outputs:
            shape = _shape(n)
            if shape and shape[-1] == d and simple:
                self.values[n] = _Value(shape, {len(shape) - 1: [out]}, frozenset([op]))
            elif shape:
                self.groups.fix(out.group)
                self.values[n] = _Value(shape, sources=frozenset([op]))


@dataclass
class _Projection:
    """One of the query/key/value projections of a hand-written attention: rows
    ``[offset, offset + size)`` of the outputs of the linear map ``node``."""

    node: torch.fx.Node
    weight: str
    bias: str | None
    transposed: bool  # weight stored (in, out)
    offset: int


@dataclass
class _SdpaBlock:
    """Hand-written multi-head attention around ``scaled_dot_product_attention``: the reshapes from
    the q/k/v projections to heads, the attention, and the merge of heads before ``out``."""

    first: torch.fx.Node
    nodes: list
    projections: list  # of _Projection: query, key, value
    heads: int
    head_dim: int
    out_weight: str
    out_transposed: bool
    merged: torch.fx.Node  # the node feeding the output projection


@dataclass
class _Block:
    path: str
    first: torch.fx.Node
    nodes: list = field(default_factory=list)


def _axis_order(node: torch.fx.Node, rank: int) -> list[int]:
    """Axis i of a transpose's or permute's output is axis ``order[i]`` of its input."""
    if _op_name(node) == "permute":
        return [d % rank for d in node.args[1]]
    a, b = node.args[1] % rank, node.args[2] % rank
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return order


def _flat(args: Any) -> list:
    if isinstance(args, (list, tuple)):
        return [a for x in args for a in _flat(x)]
    if isinstance(args, dict):
        return [a for x in args.values() for a in _flat(x)]
    return [args]


def _shape_of_first(node: torch.fx.Node) -> tuple[int, ...] | None:
    value = node.meta.get("val")
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(int(s) for s in value[0].shape)
    return _shape(node)


def _reshape_groups(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes of equal product between two shapes of one tensor (a view's axis mapping)."""
    if math.prod(before) != math.prod(after):
        return None
    pairs, i, j = [], 0, 0
    while i < len(before) or j < len(after):
        ins, outs = [], []
        p = q = 1
        if i < len(before):
            ins.append(i)
            p *= before[i]
            i += 1
        if j < len(after):
            outs.append(j)
            q *= after[j]
            j += 1
        while p != q:
            if p < q and i < len(before):
                ins.append(i)
                p *= before[i]
                i += 1
            elif q < p and j < len(after):
                outs.append(j)
                q *= after[j]
                j += 1
            else:
                return None
        # Trailing axes of size 1 join the run they follow.
        while i < len(before) and before[i] == 1 and (j >= len(after) or after[j] != 1):
            ins.append(i)
            i += 1
        while j < len(after) and after[j] == 1 and (i >= len(before) or before[i] != 1):
            outs.append(j)
            j += 1
        pairs.append((ins, outs))
    return pairs


# --- the record ------------------------------------------------------------------------------------


def _export(module: nn.Module, example_input: Any, source: str) -> torch.export.ExportedProgram:
    # A Hugging Face model's key-value cache is inference state, not part of the network: traced
    # with it, the cache's concatenations hide the attention heads' symmetries.
    config = getattr(module, "config", None)
    cached = getattr(config, "use_cache", None) is True
    if cached:
        config.use_cache = False
    try:
        return _export_tensor_outputs(module, example_input, source)
    finally:
        if cached:
            config.use_cache = True


def _export_tensor_outputs(module: nn.Module, example_input: Any, source: str) -> torch.export.ExportedProgram:
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    training = module.training
    module.eval()
    try:
        return torch.export.export(module, args)
    except SneError:
        raise
    except Exception as exc:
        failure = exc
    finally:
        module.train(training)
    # An output torch.export cannot flatten (an object holding tensors, such as a cache): the same
    # forward, keeping only its output's tensors, in a subclass swapped in for the module's own class,
    # so that every parameter keeps its name.
    original = type(module)
    try:
        module.__class__ = type(original.__name__, (original,), {"forward": _forward_tensors_only})
        module.eval()
        return torch.export.export(module, args)
    except Exception:
        raise SneError(f"{source}: could not trace {original.__name__} on the example input "
                       f"({one_line(failure)[:300]})") from None
    finally:
        module.__class__ = original
        module.train(training)


def _forward_tensors_only(self: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """The forward of the class ``self`` was made from, keeping only the tensors of its output (in
    mappings, dataclasses, lists and tuples, in order); other objects, such as a cache, are dropped."""
    output = super(type(self), self).forward(*args, **kwargs)
    leaves = _tensor_leaves(output)
    if not leaves:
        raise TypeError(f"no tensor in the output {type(output).__name__}")
    return leaves


def _tensor_leaves(output: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, dict):
        items = output.values()
    elif is_dataclass(output) and not isinstance(output, type):
        items = (getattr(output, f.name) for f in fields(output))
    elif isinstance(output, (list, tuple)):
        items = output
    else:
        return ()
    return tuple(t for item in items for t in _tensor_leaves(item))


def record_from_module(
    module: nn.Module, example_input: Any = None, source: str | None = None
) -> NetworkRecord:
    """The record of ``module``: every parameter and persistent buffer (copied), in computation order,
    with its data flow and symmetries, traced on ``example_input`` (a tensor or a tuple of them;
    guessed from the first layer when ``None``). ``module.load_state_dict(record.to_state_dict(),
    strict=True)`` restores the module exactly."""
    source = source or f"<{type(module).__name__}>"
    if _module_kind(module) is not None and not isinstance(module, nn.MultiheadAttention):
        raise SneError(f"{source}: a lone {type(module).__name__} is not a network; wrap it in nn.Sequential")
    specs = _operation_specs(module, source)
    state = module.state_dict()
    if not state:
        raise SneError(f"{source}: the network has no parameters")
    key_op: dict[str, str] = {}
    locals_: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        path, local = _owner(key, specs)
        key_op[key] = path
        locals_.setdefault(path, {})[local] = tensor.detach().clone()
    if example_input is None:
        example_input = guess_example_input(module, source)
    program = _export(module, example_input, source)
    aliases = tied_keys(module)
    tracer = _Tracer(program, specs, key_op, source, aliases)
    tracer.run()
    registered = {path: i for i, path in enumerate(locals_)}
    order = sorted(locals_, key=lambda p: (tracer.first_use.get(p, math.inf), registered[p]))
    index = {path: i for i, path in enumerate(order)}
    index[INPUT] = -1
    layers = []
    for level, path in enumerate(order):
        spec = specs[path]
        kind, attrs = spec.kind, dict(spec.attrs)
        used_as = tracer.used_as.get(path)
        if kind == "parameter" and used_as and "weight" in locals_[path] and set(locals_[path]) <= {"weight", "bias"}:
            kind, attrs = used_as[0], dict(used_as[1])  # a module of one's own that computes a layer
        flow = tracer.flow.get(path)
        inputs = None
        if flow is not None:
            inputs = tuple(InputSlice(s.offset, s.size, s.block,
                                      tuple(sorted(index[src] if src in index else -1 for src in s.sources)))
                           for s in flow)
        tensors = check_tensors(path or type(module).__name__, locals_[path], source)
        layer = Layer(path, kind, level, tensors, tracer.activation.get(path), (), attrs, inputs)
        layers.append(layer.from_module_layout())
    transposed = {layer.key("weight") for layer in layers if layer.attrs.get("stored_in_out")}
    symmetries = _symmetries(tracer, key_op, index, aliases, transposed)
    return NetworkRecord(tuple(layers), source=source, symmetries=symmetries)


def tied_keys(module: nn.Module) -> dict[str, list[str]]:
    """Tied tensors (one tensor under several keys): each key -> the other keys, which must move
    with it (the graph may name the tensor by any of them)."""
    by_tensor: dict[int, list[str]] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(key)
    return {key: [k for k in keys if k != key] for keys in by_tensor.values() if len(keys) > 1 for key in keys}


def _nested(inside: tuple, outside: tuple) -> bool:
    """Whether span ``inside`` lies within one block of span ``outside`` ((start, end, inner, group))."""
    start, end, inner = outside[:3]
    block = (inside[0] - start) // inner
    return start + block * inner <= inside[0] and inside[1] <= start + (block + 1) * inner


def _symmetries(tracer: _Tracer, key_op: dict[str, str], index: dict[str, int],
                aliases: dict[str, list[str]], transposed: set[str]) -> tuple[PermutationGroup, ...]:
    """The free groups of the pass as permutation groups of the record's layers (axes as the record
    holds its tensors: swapped for the ``transposed`` keys, weights stored ``(in, out)``)."""
    g = tracer.groups
    opaque = set(tracer.opaque)
    roots = [r for r in range(len(g.size)) if g.find(r) == r and r not in g.parts]
    for r in roots:
        if any(key in opaque for key, *_ in g.members[r]):
            g.fix(r)
    # Safety net: two free groups that claim overlapping ranges of one axis are fixed, unless one
    # range lies within a single block of the other (heads, and the dimensions within each head).
    changed = True
    while changed:
        changed = False
        claims: dict[tuple[str, int], list[tuple[int, int, int, int]]] = {}
        for r in roots:
            if g.fixed[r]:
                continue
            for key, axis, offset, inner in set(g.members[r]):
                claims.setdefault((key, axis), []).append((offset, offset + g.size[r] * inner, inner, r))
        for spans in claims.values():
            for i, a in enumerate(spans):
                for b in spans[i + 1:]:
                    if a[3] != b[3] and a[0] < b[1] and b[0] < a[1] and not (_nested(a, b) or _nested(b, a)):
                        g.fixed[a[3]] = g.fixed[b[3]] = True
                        changed = True
    groups = []
    for r in roots:
        if g.fixed[r] or g.size[r] < 2 or not g.members[r]:
            continue
        members = []
        for key, axis, offset, inner in dict.fromkeys(g.members[r]):
            for k in [key, *aliases.get(key, [])]:
                path = key_op[k]
                local = k[len(path) + 1:] if path else k
                members.append(Member(index[path], local, 1 - axis if k in transposed else axis, offset, inner))
        groups.append(PermutationGroup(g.size[r], tuple(dict.fromkeys(members)), g.names[r]))
    return tuple(groups)
