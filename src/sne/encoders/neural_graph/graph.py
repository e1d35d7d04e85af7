"""The neural graph of a weight-space record (Kofinas et al. 2024), and batches of them.

Nodes are neurons, edges are weights. A node's features are its bias (0, flagged absent, where it
has none), the activation applied to it and its kind (``NODE_KINDS``); an edge's features are its
kernel and its kind (``EDGE_KINDS``). Every edge is directed forward (with ``reverse_edges`` it also
appears reversed, under its own edge types), so information flows both ways in message passing.

Edge features are kernels, centre-padded to ``max_kernel_size`` along each of ``kernel_dims``
dimensions and flattened (``max_kernel_size ** kernel_dims`` slots, the encoder's fixed edge width);
a kernel with fewer dimensions gets leading dimensions of size 1 (a 1-D kernel of length k is a 1 x k
kernel). A linear weight is a 1 x 1 kernel: its value sits in the centre slot. A kernel larger than
the maximum is refused: that is the method's real limitation, which SNE does not have.

Chain records (no layer knows its inputs, or a traced plain chain of dense layers): nodes are the
network's inputs (input channels for a CNN), then the outputs of every layer in order; layer i has
one edge from each of its input nodes to each of its output nodes.

  Conv -> Flatten -> Linear: a linear layer whose inputs are ``k`` times its predecessor's channels
  reads a flattened (channels, *map) activation, channel-major. It is a convolution whose kernel
  covers the whole map, so it gets one edge per (channel, output neuron) whose feature is that
  channel's k weights laid out as a map and centre-padded like any kernel. Records do not keep the
  map's shape: a map is taken to be square (cubic after a conv3d) when k is a perfect square
  (cube), else a row of k; the choice is the same for every network, so it never breaks
  permutation symmetry. A map larger than the maximum kernel size is refused like a large kernel.

  Residual connections (``Layer.skip_from``: levels whose outputs are added to a layer's input)
  are identity edges: channel c of the skipped-from layer's output to channel c of the layer's
  input nodes (its predecessor's outputs), with a 1 in the centre slot and their own edge type.

Any other record is built from its data flow (``Layer.inputs``; a chain record with other kinds,
such as a state_dict's batch norms, gets the chain's flow). Each operation's outputs are new nodes;
its input nodes are the output nodes of the operations its input slices name, slice by slice
(concatenation), ``block`` inputs per node (a flattened map, read as a kernel as above). Per kind:

* linear, conv: an edge from each input node to each output node, the kernel as its feature.
  Grouped and depthwise convolutions have edges only within a group. Transposed convolutions have
  an edge from each input to each output channel of its group, the kernel ``weight[in, out]`` as
  feature, under their own edge kind (the kernel scatters instead of gathering).
* batch_norm, layer_norm, group_norm: a diagonal linear layer (as the paper): one edge from input
  channel c to output c. A batch norm's running statistics are folded in, as in inference:
  ``scale = weight / sqrt(running_var + eps)`` is the edge's value and
  ``bias - running_mean * scale`` the output's bias; layer and group norms (statistics of each
  sample) give ``weight`` and ``bias`` as they are. Norms over several axes are refused.
* residual addition (a slice summing several sources): a set of *sum* nodes, one per neuron, with
  identity edges (1 in the centre slot) from each source's neuron; the operation reads the sum
  nodes. A sum is built once per set of sources and reused by every reader, and a sum whose
  sources extend an earlier sum's takes that sum's nodes as one source: a transformer's residual
  stream becomes a chain of sum-node sets, one per addition. (Edges from every source straight
  into the reader would repeat the reader's weights once per source.)
* attention (``nn.MultiheadAttention``, packed ``in_proj_weight``), following the paper's section 3
  with multi-dimensional edge features, split where the network's symmetries require it: d
  *query/key* nodes with an edge from each input neuron carrying the 2 values (W_q[j, i],
  W_k[j, i]) (a 1 x 2 kernel) and the 2 biases (b_q, b_k) as node features; d *value* nodes with
  edges carrying W_v[j, i] and bias b_v; one *head* node per head, joined by feature-less edges
  from the query/key nodes of its head and to the value nodes of its head; the d output nodes,
  with edges from the value nodes carrying out_proj.weight and biases out_proj.bias. The paper's
  single 3-value edge (W_q, W_k, W_v) would tie value dimension j to query/key dimension j, but
  the network keeps its function when the value dimensions of a head are permuted on their own
  (with out_proj's columns): only this split graph is invariant to all its symmetries. The
  record names only the query's source, so keys and values are drawn from it too (exact for
  self-attention; cross-attention loses where its keys come from).
* embedding (V, d): one input-side node per row (its own positional embedding, like an input
  neuron: the token id means something) with an edge to each of the d output nodes carrying
  ``weight[v, j]``; the embedding is a linear layer on the one-hot token. (As node features the
  rows would need V x d values per node set, or lose which row feeds which output.)
* parameter (free tensors such as a class token (1, 1, d) and a positional embedding (1, T, d)),
  and buffers that some operation reads: each tensor's rows along its last axis are input-side
  nodes, like an embedding's, with edges to the operation's d output nodes; readers add those
  outputs (sum nodes), so position t's row reaches the residual stream exactly where the network
  adds it. Buffers nothing reads (masks used inside other operations) make no nodes.
* inputs the record cannot tie to neurons (a slice whose sources' widths do not match it, after an
  operation the trace does not follow, such as a functional attention): *opaque* nodes, one per
  input feature, with feature-less edges from every neuron of every source.

Node roles and positions: input-side nodes (network inputs, then embedding and parameter rows, in
record order) are inputs with unique positions; the last operation's outputs are the outputs; all
other nodes are hidden and share their operation's index (sum nodes: their latest source's;
opaque nodes: their reader's). Kinds tell the added node sets apart (chain graphs are all kind 0).
Every choice depends on the architecture only, so a permutation of hidden neurons that keeps the
network's function permutes the graph's nodes: the graph is the same up to node order.

Kinds a neural graph cannot read (anything outside ``READABLE_KINDS``, attention with separate
q/k/v projections or bias_k/bias_v) are refused in one line naming the layer and its kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F

from sne.errors import CannotRead, SneError
from sne.weights.record import (
    ACTIVATION_INDEX,
    ACTIVATIONS,
    KIND_BY_WEIGHT_NDIM,
    LAYER_KINDS,
    NORM_KINDS,
    TRANSPOSED_KINDS,
    InputSlice,
    activation_index,
    Layer,
    NetworkRecord,
)

#: Edge types: weights (learned values), fixed edges (residual identities; head membership and
#: opaque flow, see EDGE_KINDS), and both reversed.
WEIGHT_EDGE, RESIDUAL_EDGE, REVERSED_WEIGHT_EDGE, REVERSED_RESIDUAL_EDGE = range(4)
NUM_EDGE_TYPES = 4
#: ``edge_layer`` of fixed edges: they hold no parameter, never standardised.
NO_LAYER = -1

#: What a node is, beyond its role (``node_kind``); 0 for every node of a chain graph.
NODE_KINDS = ("neuron", "sum", "row", "query_key", "value", "head", "opaque")
NEURON, SUM_NODE, ROW_NODE, QUERY_KEY_NODE, VALUE_NODE, HEAD_NODE, OPAQUE_NODE = range(len(NODE_KINDS))
#: What an edge is, beyond its type (``edge_kind``); 0 ("plain": a linear or convolution weight, or
#: a residual identity) for every edge of a chain graph.
EDGE_KINDS = ("plain", "transposed", "norm", "row", "query_key", "value", "attention_out", "head", "opaque")
(PLAIN_EDGE, TRANSPOSED_EDGE, NORM_EDGE, ROW_EDGE, QUERY_KEY_EDGE, VALUE_EDGE, ATTENTION_OUT_EDGE, HEAD_EDGE,
 OPAQUE_EDGE) = range(len(EDGE_KINDS))

#: Kinds of operation a neural graph reads (see the module docstring).
READABLE_KINDS = LAYER_KINDS
_DENSE_CHAIN_KINDS = tuple(KIND_BY_WEIGHT_NDIM.values())


@dataclass(frozen=True)
class GraphSpec:
    """How records become graphs: the edge-feature kernel size and dimensions, reversed edges."""

    max_kernel_size: int = 5
    kernel_dims: int = 2
    reverse_edges: bool = True

    @property
    def edge_slots(self) -> int:
        return self.max_kernel_size**self.kernel_dims

    @property
    def centre_slot(self) -> int:
        """The flat slot of a 1 x 1 kernel (a linear weight) inside the padded kernel."""
        centre = (self.max_kernel_size - 1) // 2
        return sum(centre * self.max_kernel_size**d for d in range(self.kernel_dims))


@dataclass
class GraphBatch:
    """Neural graphs of a batch of networks, as one disjoint graph (N nodes, E edges, F slots).

    ``node_layer`` is 0 for input-side nodes and i + 1 for outputs of the record's layer i (and for
    the sum, attention and opaque nodes that belong to it); ``node_position`` is the input or
    output neuron's index, or for hidden nodes the layer index i. ``edge_layer`` is the index of
    the layer a weight edge belongs to (``NO_LAYER`` for fixed edges). ``node_bias2`` is a second
    bias (the key bias of attention's query/key nodes). Values are raw; the encoder standardises
    them with its fitted statistics.
    """

    num_graphs: int
    node_graph: torch.Tensor  # (N,) long: which network
    node_role: torch.Tensor  # (N,) long: 0 input, 1 hidden, 2 output
    node_position: torch.Tensor  # (N,) long
    node_layer: torch.Tensor  # (N,) long
    node_activation: torch.Tensor  # (N,) long, index into ACTIVATIONS
    node_bias: torch.Tensor  # (N,) float
    node_bias_mask: torch.Tensor  # (N,) bool: the node has a bias
    edge_index: torch.Tensor  # (2, E) long: source, target
    edge_kernel: torch.Tensor  # (E, F) float
    edge_kernel_mask: torch.Tensor  # (E, F) bool: slot holds a real value
    edge_type: torch.Tensor  # (E,) long
    edge_layer: torch.Tensor  # (E,) long
    node_kind: torch.Tensor  # (N,) long, index into NODE_KINDS
    node_bias2: torch.Tensor  # (N,) float
    node_bias2_mask: torch.Tensor  # (N,) bool
    edge_kind: torch.Tensor  # (E,) long, index into EDGE_KINDS


INPUT_ROLE, HIDDEN_ROLE, OUTPUT_ROLE = range(3)


def _map_shape(values: int, previous: Layer) -> tuple[int, ...]:
    """The spatial shape of a flattened map of ``values`` positions after ``previous`` (see module doc)."""
    dims = max(len(previous.kernel_shape), 1)
    side = round(values ** (1.0 / dims))
    if side**dims == values:
        return (side,) * dims
    return (values,)


def layer_kernel_shapes(record: NetworkRecord, spec: GraphSpec) -> list[tuple[int, ...]]:
    """Each layer's edge kernel shape, after checking that the record makes a neural graph.

    Raises :class:`SneError` naming the layer for a kernel beyond ``spec``, layers that do not
    chain, or a skip connection that cannot be an identity edge.
    """
    source, layers = record.source, record.layers
    shapes = []
    for i, layer in enumerate(layers):
        shape = layer.kernel_shape
        if i > 0 and layer.in_features != layers[i - 1].out_features:
            previous = layers[i - 1]
            inputs, channels = layer.in_features, previous.out_features
            if not (layer.kind == "linear" and previous.kind != "linear" and inputs % channels == 0):
                raise CannotRead(
                    f"{source}: layers '{previous.name}' ({channels} outputs) and '{layer.name}' ({inputs} inputs) "
                    f"do not chain, so they make no neural graph"
                )
            shape = _map_shape(inputs // channels, previous)
            what = f"flattened input map {'x'.join(map(str, shape))} of layer '{layer.name}'"
        else:
            what = f"layer '{layer.name}' kernel {'x'.join(map(str, shape))}"
        _check_kernel(record, what, shape, spec)
        shapes.append(shape)
    _residual_pairs(record)
    return shapes


def _residual_pairs(record: NetworkRecord) -> list[tuple[int, int]]:
    """(source layer, target layer) index pairs of identity edges; target is the layer whose outputs
    are the skipping layer's input nodes."""
    position = {layer.level: i for i, layer in enumerate(record.layers)}
    pairs = []
    for i, layer in enumerate(record.layers):
        for level in layer.skip_from:
            s = position.get(level)
            if s is None or s >= i - 1:
                raise SneError(
                    f"{record.source}: layer '{layer.name}' skips from level {level}, which is not a layer "
                    f"before its direct input"
                )
            if record.layers[s].out_features != record.layers[i - 1].out_features:
                raise SneError(
                    f"{record.source}: layer '{layer.name}' skips from level {level} with "
                    f"{record.layers[s].out_features} outputs onto {record.layers[i - 1].out_features} inputs"
                )
            pairs.append((s, i - 1))
    return pairs


def _pad_kernels(kernels: torch.Tensor, shape: tuple[int, ...], spec: GraphSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels`` (edges, *shape) -> centre-padded flat kernels and real-slot mask, (edges, F) each."""
    edges = kernels.shape[0]
    full = (1,) * (spec.kernel_dims - len(shape)) + tuple(shape)
    kernels = kernels.reshape(edges, *full)
    padding = []
    for size in reversed(full):  # F.pad takes the last dimension first
        before = (spec.max_kernel_size - size) // 2
        padding += [before, spec.max_kernel_size - size - before]
    mask = F.pad(torch.ones(1, *full, dtype=torch.bool), padding).reshape(1, -1).expand(edges, -1)
    return F.pad(kernels, padding).reshape(edges, -1), mask


def uses_chain_graph(record: NetworkRecord) -> bool:
    """Whether ``record`` gets the chain graph: only dense, ungrouped layers, and either no layer
    knows its inputs (``skip_from`` may add identity edges) or each reads all of its predecessor's
    outputs (the network's input for the first), a flattened map counting as one block per channel."""
    layers = record.layers
    if any(l.kind not in _DENSE_CHAIN_KINDS or l.attrs.get("groups", 1) != 1 for l in layers):
        return False
    if all(l.inputs is None for l in layers):
        return True
    for i, layer in enumerate(layers):
        if layer.inputs is None or layer.skip_from or len(layer.inputs) != 1:
            return False
        (s,) = layer.inputs
        if s.sources != (i - 1,) or s.offset != 0 or s.size != layer.in_features:
            return False
        if i > 0:
            channels = layers[i - 1].out_features
            if s.block != layer.in_features // channels or layer.in_features % channels:
                return False
        elif s.block != 1:
            return False
    return True


def build_graph(record: NetworkRecord, spec: GraphSpec, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The neural graph of one network, forward edges only (see the module docstring). Raises
    :class:`SneError` naming the layer for what the graph cannot hold."""
    if not uses_chain_graph(record):
        return _FlowGraph(record, spec, dtype).build()
    shapes = layer_kernel_shapes(record, spec)
    layers = record.layers
    inputs = layers[0].in_features
    widths = [inputs, *(layer.out_features for layer in layers)]
    offsets = [0, *torch.tensor(widths).cumsum(0).tolist()]
    num_nodes = offsets[-1]
    node_layer = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
    role = torch.full((num_nodes,), HIDDEN_ROLE)
    role[:inputs] = INPUT_ROLE
    role[offsets[-2]:] = OUTPUT_ROLE
    position = node_layer - 1  # hidden nodes: their layer's index
    position[:inputs] = torch.arange(inputs)
    position[offsets[-2]:] = torch.arange(widths[-1])
    activation = torch.tensor(
        [ACTIVATION_INDEX["input"]] + [activation_index(layer.activation) for layer in layers]
    ).repeat_interleave(torch.tensor(widths))
    bias = torch.zeros(num_nodes, dtype=dtype)
    bias_mask = torch.zeros(num_nodes, dtype=torch.bool)
    for i, layer in enumerate(layers):
        if layer.bias is not None:
            bias[offsets[i + 1]:offsets[i + 2]] = layer.bias.to(dtype)
            bias_mask[offsets[i + 1]:offsets[i + 2]] = True

    sources, targets, kernels, masks, edge_layer, edge_type = [], [], [], [], [], []
    for i, (layer, shape) in enumerate(zip(layers, shapes)):
        channels, out = widths[i], layer.out_features
        weight = layer.weight.to(dtype).reshape(out, channels, *shape)  # a flattened map becomes a kernel
        kernel, mask = _pad_kernels(weight.reshape(out * channels, *shape), shape, spec)
        sources.append(offsets[i] + torch.arange(channels).repeat(out))
        targets.append(offsets[i + 1] + torch.arange(out).repeat_interleave(channels))
        kernels.append(kernel)
        masks.append(mask)
        edge_layer.append(torch.full((out * channels,), i))
        edge_type.append(torch.full((out * channels,), WEIGHT_EDGE))
    for s, t in _residual_pairs(record):
        channels = widths[t + 1]
        sources.append(offsets[s + 1] + torch.arange(channels))
        targets.append(offsets[t + 1] + torch.arange(channels))
        identity, mask = _pad_kernels(torch.ones(channels, 1, dtype=dtype), (1,), spec)
        kernels.append(identity)
        masks.append(mask)
        edge_layer.append(torch.full((channels,), NO_LAYER))
        edge_type.append(torch.full((channels,), RESIDUAL_EDGE))
    return {
        "node_role": role,
        "node_position": position,
        "node_layer": node_layer,
        "node_activation": activation,
        "node_bias": bias,
        "node_bias_mask": bias_mask,
        "edge_index": torch.stack([torch.cat(sources), torch.cat(targets)]),
        "edge_kernel": torch.cat(kernels),
        "edge_kernel_mask": torch.cat(masks),
        "edge_type": torch.cat(edge_type),
        "edge_layer": torch.cat(edge_layer),
        **_plain_kinds(num_nodes, sum(len(e) for e in edge_layer), dtype),
    }


def _plain_kinds(num_nodes: int, num_edges: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The kind fields of a chain graph: every node a neuron, every edge plain, no second bias."""
    return {
        "node_kind": torch.zeros(num_nodes, dtype=torch.long),
        "node_bias2": torch.zeros(num_nodes, dtype=dtype),
        "node_bias2_mask": torch.zeros(num_nodes, dtype=torch.bool),
        "edge_kind": torch.zeros(num_edges, dtype=torch.long),
    }


def _grouped_pairs(weight: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The channel pairs of a grouped weight ``(rows, columns per group, *kernel)``, in its flattened
    order: row r meets the columns of its own group, ``(r // rows per group) * columns + j``."""
    rows, columns = int(weight.shape[0]), int(weight.shape[1])
    row = torch.arange(rows).repeat_interleave(columns)
    return row, (row // (rows // groups)) * columns + torch.arange(columns).repeat(rows)


def _check_kernel(record: NetworkRecord, what: str, shape: tuple[int, ...], spec: GraphSpec) -> None:
    if len(shape) > spec.kernel_dims:
        raise CannotRead(
            f"{record.source}: {what} has {len(shape)} dimensions; the neural graph holds kernels of at most "
            f"{spec.kernel_dims} (option kernel_dims)"
        )
    if any(s > spec.max_kernel_size for s in shape):
        raise CannotRead(
            f"{record.source}: {what} is larger than the maximum kernel size {spec.max_kernel_size} "
            f"(option max_kernel_size)"
        )


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _refuse(record: NetworkRecord, layer: Layer, why: str) -> SneError:
    return SneError(f"{record.source}: layer '{layer.name}' ({layer.kind}) {why}; a neural graph cannot read it")


def _input_width(layer: Layer) -> int:
    """How many input features a layer reads (all groups of a grouped convolution)."""
    if layer.kind in _DENSE_CHAIN_KINDS:
        return int(layer.weight.shape[1]) * int(layer.attrs.get("groups", 1))
    return layer.in_features


def record_flow(record: NetworkRecord) -> list[tuple[InputSlice, ...] | None]:
    """Each layer's input slices: the record's own, or, when no layer knows its inputs, the chain's
    (layer i reads layer i - 1, the first the network's input, plus its ``skip_from`` levels)."""
    layers = record.layers
    if any(l.inputs is not None for l in layers):
        return [l.inputs for l in layers]
    skips = {}
    for source, target in _residual_pairs(record):
        skips.setdefault(target + 1, []).append(source)
    flow: list[tuple[InputSlice, ...] | None] = []
    for i, layer in enumerate(layers):
        if layer.kind in ("parameter", "buffer"):
            flow.append(None)
            continue
        size = _input_width(layer)
        if i == 0 or layer.kind == "embedding":
            flow.append((InputSlice(0, size, 1, (-1,)),))
            continue
        previous = layers[i - 1]
        channels = previous.out_features
        block = size // channels if size % channels == 0 else 0
        if block < 1 or (block > 1 and not (layer.kind == "linear" and previous.kind != "linear")):
            raise CannotRead(
                f"{record.source}: layers '{previous.name}' ({channels} outputs) and '{layer.name}' ({size} inputs) "
                f"do not chain, so they make no neural graph"
            )
        flow.append((InputSlice(0, size, block, tuple(sorted([i - 1, *skips.get(i, [])]))),))
    return flow


class _FlowGraph:
    """The neural graph of a record with data flow (see the module docstring), built operation by
    operation in record order."""

    def __init__(self, record: NetworkRecord, spec: GraphSpec, dtype: torch.dtype) -> None:
        self.record, self.spec, self.dtype = record, spec, dtype
        self.layers = record.layers
        self.flow = record_flow(record)
        self.read = {src for slices in self.flow if slices for s in slices for src in s.sources}
        self.nodes: list[dict[str, torch.Tensor]] = []
        self.edges: list[dict[str, torch.Tensor]] = []
        self.num_nodes = 0
        self.input_positions = 0
        self.outputs: dict[int, torch.Tensor] = {}  # layer index (-1: the network's input) -> output node ids
        self.sums: dict[frozenset, torch.Tensor] = {}

    # --- nodes and edges ------------------------------------------------------------------------

    def add_nodes(self, count: int, owner: int, kind: int, activation: str | None,
                  bias: torch.Tensor | None = None, bias2: torch.Tensor | None = None) -> torch.Tensor:
        """``count`` new nodes of layer ``owner`` (-1: input-side nodes); their ids."""
        last = len(self.layers) - 1
        if owner < 0:
            role = INPUT_ROLE
            position = torch.arange(self.input_positions, self.input_positions + count)
            self.input_positions += count
        elif owner == last and kind == NEURON:
            role, position = OUTPUT_ROLE, torch.arange(count)
        else:
            role, position = HIDDEN_ROLE, torch.full((count,), max(0, min(owner, last - 1)))
        values = {}
        for name, value in (("node_bias", bias), ("node_bias2", bias2)):
            value = None if value is None else value.to(self.dtype).reshape(count)
            values[name] = torch.zeros(count, dtype=self.dtype) if value is None else value
            values[name + "_mask"] = torch.full((count,), value is not None)
        node_activation = ACTIVATION_INDEX["input"] if owner < 0 else activation_index(activation)
        self.nodes.append({
            "node_role": torch.full((count,), role),
            "node_position": position,
            "node_layer": torch.full((count,), owner + 1),
            "node_activation": torch.full((count,), node_activation),
            **values,
            "node_kind": torch.full((count,), kind),
        })
        ids = torch.arange(self.num_nodes, self.num_nodes + count)
        self.num_nodes += count
        return ids

    def add_edges(self, source: torch.Tensor, target: torch.Tensor, kind: int, owner: int = NO_LAYER,
                  kernels: torch.Tensor | None = None, shape: tuple[int, ...] = (), identity: bool = False) -> None:
        """Weight edges of layer ``owner`` with ``kernels`` (edges, *shape), or fixed edges: identities
        (1 in the centre slot) or feature-less ones."""
        count = len(source)
        if kernels is not None:
            padded, mask = _pad_kernels(kernels.to(self.dtype).reshape(count, *shape), shape, self.spec)
            edge_type, layer = WEIGHT_EDGE, owner
        elif identity:
            padded, mask = _pad_kernels(torch.ones(count, 1, dtype=self.dtype), (1,), self.spec)
            edge_type, layer = RESIDUAL_EDGE, NO_LAYER
        else:
            padded = torch.zeros(count, self.spec.edge_slots, dtype=self.dtype)
            mask = torch.zeros(count, self.spec.edge_slots, dtype=torch.bool)
            edge_type, layer = RESIDUAL_EDGE, NO_LAYER
        self.edges.append({
            "edge_index": torch.stack([source, target]),
            "edge_kernel": padded,
            "edge_kernel_mask": mask,
            "edge_type": torch.full((count,), edge_type),
            "edge_layer": torch.full((count,), layer),
            "edge_kind": torch.full((count,), kind),
        })

    def dense_edges(self, source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, kind: int,
                    owner: int, shape: tuple[int, ...] = ()) -> None:
        """An edge from every ``source`` to every ``target`` node; ``weights`` (targets, sources, *shape)."""
        self.add_edges(source.repeat(len(target)), target.repeat_interleave(len(source)), kind, owner,
                       weights.reshape(len(target) * len(source), *shape), shape)

    # --- inputs ---------------------------------------------------------------------------------

    def width(self, i: int, source: int) -> int:
        if source not in self.outputs:
            layer = self.layers[i]
            raise _refuse(self.record, layer, f"reads from layer {source}, which does not come before it")
        return len(self.outputs[source])

    def summed(self, sources: tuple[int, ...]) -> torch.Tensor:
        """The nodes of the sum of ``sources``' outputs: a source's own, or sum nodes (see the module docstring)."""
        if len(sources) == 1:
            return self.outputs[sources[0]]
        key = frozenset(sources)
        if key in self.sums:
            return self.sums[key]
        earlier = [k for k in self.sums if k < key]
        base = max(earlier, key=lambda k: (len(k), sorted(k, reverse=True))) if earlier else frozenset()
        parts = ([self.sums[base]] if base else []) + [self.outputs[s] for s in sorted(key - base)]
        nodes = self.add_nodes(len(parts[0]), max(sources), SUM_NODE, None)
        for part in parts:
            self.add_edges(part, nodes, PLAIN_EDGE, identity=True)
        self.sums[key] = nodes
        return nodes

    def opaque(self, i: int, s: InputSlice) -> torch.Tensor:
        """One node per input feature of slice ``s``, fed by every neuron of every source."""
        nodes = self.add_nodes(s.size, i, OPAQUE_NODE, None)
        sources = torch.cat([self.outputs[src] for src in s.sources] or [torch.zeros(0, dtype=torch.long)])
        self.add_edges(sources.repeat(s.size), nodes.repeat_interleave(len(sources)), OPAQUE_EDGE)
        return nodes

    def inputs(self, i: int, allow_blocks: bool) -> list[tuple[torch.Tensor, int, int, tuple[int, ...]]]:
        """Layer i's input nodes, slice by slice: (node ids, inputs per node, first input, sources)."""
        layer = self.layers[i]
        slices = self.flow[i]
        if slices is None:  # never run in the traced forward pass: inputs unknown
            slices = (InputSlice(0, _input_width(layer), 1, ()),)
        parts = []
        for s in slices:
            widths = [self.width(i, src) for src in s.sources]
            block = s.block if s.block >= 1 and s.size % s.block == 0 else 0
            if widths and block and (block == 1 or allow_blocks) and all(w == s.size // block for w in widths):
                parts.append((self.summed(s.sources), block, s.offset, s.sources))
            else:
                parts.append((self.opaque(i, s), 1, s.offset, s.sources))
        features = sum(len(ids) * block for ids, block, _, _ in parts)
        if features != _input_width(layer):
            raise _refuse(self.record, layer, f"reads {features} input features but its weights take "
                                              f"{_input_width(layer)}")
        return parts

    def channels(self, i: int) -> torch.Tensor:
        """Layer i's input nodes, one per input feature."""
        return torch.cat([ids for ids, _, _, _ in self.inputs(i, allow_blocks=False)])

    def map_dims(self, sources: tuple[int, ...]) -> int:
        """Kernel dimensions of the layer whose flattened map a block holds (through normalisations)."""
        index = next((s for s in sources if s >= 0), -1)
        while index >= 0:
            layer = self.layers[index]
            if layer.kind not in NORM_KINDS:
                return max(len(layer.kernel_shape), 1)
            slices = self.flow[index]
            index = next((s for s in slices[0].sources if s >= 0), -1) if slices else -1
        return 1

    # --- operations -----------------------------------------------------------------------------

    def build(self) -> dict[str, torch.Tensor]:
        record, layers = self.record, self.layers
        for layer in layers:
            if layer.kind not in READABLE_KINDS:
                raise CannotRead(f"{record.source}: layer '{layer.name}' is of kind '{layer.kind}', which a neural "
                               f"graph cannot read (it reads {', '.join(READABLE_KINDS)})")
        self.outputs[-1] = self.add_nodes(self.network_inputs(), -1, NEURON, None)
        for i, layer in enumerate(layers):
            if layer.kind in _DENSE_CHAIN_KINDS or layer.kind in TRANSPOSED_KINDS:
                self.outputs[i] = self.dense(i, layer)
            elif layer.kind in NORM_KINDS:
                self.outputs[i] = self.norm(i, layer)
            elif layer.kind == "attention":
                self.outputs[i] = self.attention(i, layer)
            elif layer.kind == "embedding":
                self.outputs[i] = self.embedding(i, layer)
            else:
                self.outputs[i] = self.parameter(i, layer)
        nodes = {key: torch.cat([part[key] for part in self.nodes]) for key in self.nodes[0]}
        if self.edges:
            edges = {key: torch.cat([part[key] for part in self.edges], dim=-1 if key == "edge_index" else 0)
                     for key in self.edges[0]}
        else:
            edges = _no_edges(self.spec, self.dtype)
        return {**nodes, **edges}

    def network_inputs(self) -> int:
        """Input neurons: one per feature the first reader of the network's input takes (per block)."""
        for layer, slices in zip(self.layers, self.flow):
            if layer.kind in ("embedding", "parameter", "buffer") or not slices:
                continue
            for s in slices:
                if -1 in s.sources:
                    return s.size // s.block if s.block >= 1 and s.size % s.block == 0 else s.size
        return 0

    def dense(self, i: int, layer: Layer) -> torch.Tensor:
        record, weight = self.record, layer.weight
        kernel = tuple(int(k) for k in weight.shape[2:])
        _check_kernel(record, f"layer '{layer.name}' kernel {_shape_text(kernel)}", kernel, self.spec)
        groups = int(layer.attrs.get("groups", 1))
        outputs = self.add_nodes(layer.out_features, i, NEURON, layer.activation, layer.bias)
        if layer.kind in TRANSPOSED_KINDS:  # weight (in, out / groups, *kernel): edge in -> out of its group
            source, target = _grouped_pairs(weight, groups)
            self.add_edges(self.channels(i)[source], outputs[target], TRANSPOSED_EDGE, i,
                           weight.reshape(len(source), *kernel), kernel)
        elif groups > 1:  # weight (out, in / groups, *kernel): edges within a group only
            target, source = _grouped_pairs(weight, groups)
            self.add_edges(self.channels(i)[source], outputs[target], PLAIN_EDGE, i,
                           weight.reshape(len(source), *kernel), kernel)
        else:
            out = len(outputs)
            for ids, block, offset, sources in self.inputs(i, allow_blocks=layer.kind == "linear"):
                units = len(ids)
                part = weight[:, offset:offset + units * block]
                shape = kernel
                if block > 1:  # a flattened map: one kernel per channel (see the module docstring)
                    side = round(block ** (1.0 / self.map_dims(sources)))
                    shape = (side,) * self.map_dims(sources) if side ** self.map_dims(sources) == block else (block,)
                    what = f"flattened input map {_shape_text(shape)} of layer '{layer.name}'"
                    _check_kernel(record, what, shape, self.spec)
                self.dense_edges(ids, outputs, part.reshape(out, units, *shape), PLAIN_EDGE, i, shape)
        return outputs

    def norm(self, i: int, layer: Layer) -> torch.Tensor:
        tensors = layer.tensors
        count = layer.out_features
        for name in ("weight", "bias", "running_mean", "running_var"):
            if name in tensors and tuple(tensors[name].shape) != (count,):
                raise _refuse(self.record, layer, f"holds '{name}' of shape {_shape_text(tensors[name].shape)} "
                                                  f"(a normalisation over several axes)")
        one = torch.ones(count, dtype=self.dtype)
        scale = tensors["weight"].to(self.dtype) if "weight" in tensors else one
        shift = tensors["bias"].to(self.dtype) if "bias" in tensors else None
        if "running_var" in tensors:  # fold the running statistics in, as at inference
            factor = (tensors["running_var"].to(self.dtype) + float(layer.attrs.get("eps", 1e-5))).rsqrt()
            mean = tensors["running_mean"].to(self.dtype) if "running_mean" in tensors else 0 * one
            scale = scale * factor
            shift = (0 * one if shift is None else shift) - mean * scale
        channels = self.channels(i)
        outputs = self.add_nodes(count, i, NEURON, layer.activation, shift)
        self.add_edges(channels, outputs, NORM_EDGE, i, scale.reshape(count), ())
        return outputs

    def attention(self, i: int, layer: Layer) -> torch.Tensor:
        tensors = layer.tensors
        expected = {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
        other = [name for name in tensors if name not in expected]
        if "in_proj_weight" not in tensors or "out_proj.weight" not in tensors or other:
            what = f"'{other[0]}'" if other else "no packed in_proj_weight"
            raise _refuse(self.record, layer, f"has {what} (only packed q/k/v projections without bias_k/bias_v)")
        d = layer.out_features
        heads = int(layer.attrs.get("num_heads", 1))
        in_proj, out_proj = tensors["in_proj_weight"], tensors["out_proj.weight"]
        if tuple(in_proj.shape) != (3 * d, d) or tuple(out_proj.shape) != (d, d) or d % heads:
            raise _refuse(self.record, layer, f"has in_proj_weight {_shape_text(in_proj.shape)}, out_proj.weight "
                                              f"{_shape_text(out_proj.shape)} and {heads} heads, which do not fit")
        _check_kernel(self.record, f"layer '{layer.name}' query/key edge feature 2", (2,), self.spec)
        x = self.channels(i)
        bias = tensors.get("in_proj_bias")
        bq, bk, bv = (None, None, None) if bias is None else bias.reshape(3, d)
        query_key = self.add_nodes(d, i, QUERY_KEY_NODE, "identity", bq, bk)
        value = self.add_nodes(d, i, VALUE_NODE, "identity", bv)
        head = self.add_nodes(heads, i, HEAD_NODE, "other")
        outputs = self.add_nodes(d, i, NEURON, layer.activation, tensors.get("out_proj.bias"))
        wq, wk, wv = in_proj.reshape(3, d, d)
        self.dense_edges(x, query_key, torch.stack([wq, wk], dim=-1), QUERY_KEY_EDGE, i, (2,))
        self.dense_edges(x, value, wv, VALUE_EDGE, i)
        of_head = head[torch.arange(d) // (d // heads)]
        self.add_edges(query_key, of_head, HEAD_EDGE)
        self.add_edges(of_head, value, HEAD_EDGE)
        self.dense_edges(value, outputs, out_proj, ATTENTION_OUT_EDGE, i)
        return outputs

    def embedding(self, i: int, layer: Layer) -> torch.Tensor:
        weight = layer.weight  # (rows, d)
        outputs = self.add_nodes(layer.out_features, i, NEURON, layer.activation)
        rows = self.add_nodes(int(weight.shape[0]), -1, ROW_NODE, None)
        self.dense_edges(rows, outputs, weight.T, ROW_EDGE, i)
        return outputs

    def parameter(self, i: int, layer: Layer) -> torch.Tensor:
        if layer.kind == "buffer" and i not in self.read:  # used inside other operations only
            return torch.zeros(0, dtype=torch.long)
        # Its width: what its first reader adds it to (else its primary tensor's last axis).
        d = next((s.size // s.block for slices in self.flow if slices for s in slices
                  if i in s.sources and s.block >= 1 and s.size % s.block == 0), layer.out_features)
        tensors = {}
        for name, tensor in layer.tensors.items():
            if not tensor.is_floating_point():
                continue
            if (tensor.shape[-1] if tensor.dim() else 1) == d:
                tensors[name] = tensor
            elif layer.kind == "parameter":  # a buffer's other tensors are constants used elsewhere (masks)
                raise _refuse(self.record, layer, f"holds '{name}' of shape {_shape_text(tensor.shape)}, whose last "
                                                  f"axis is not the {d} features it is added to")
        outputs = self.add_nodes(d, i, NEURON, layer.activation)
        for tensor in tensors.values():
            rows = tensor.reshape(-1, d)
            self.dense_edges(self.add_nodes(len(rows), -1, ROW_NODE, None), outputs, rows.T, ROW_EDGE, i)
        return outputs


def _no_edges(spec: GraphSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "edge_index": torch.zeros(2, 0, dtype=torch.long),
        "edge_kernel": torch.zeros(0, spec.edge_slots, dtype=dtype),
        "edge_kernel_mask": torch.zeros(0, spec.edge_slots, dtype=torch.bool),
        "edge_type": torch.zeros(0, dtype=torch.long),
        "edge_layer": torch.zeros(0, dtype=torch.long),
        "edge_kind": torch.zeros(0, dtype=torch.long),
    }


def graph_counts(graph: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(input-side nodes, output nodes) of a built graph."""
    role = graph["node_role"]
    return int((role == INPUT_ROLE).sum()), int((role == OUTPUT_ROLE).sum())


def collate_graphs(graphs: Sequence[dict[str, torch.Tensor]], spec: GraphSpec) -> GraphBatch:
    """One disjoint graph of built graphs (node ids offset per network), reversed edges added per ``spec``."""
    if not graphs:
        raise SneError("cannot encode an empty batch of networks")
    sizes = torch.tensor([len(g["node_role"]) for g in graphs])
    offsets = sizes.cumsum(0) - sizes
    edge_index = torch.cat([g["edge_index"] + int(o) for g, o in zip(graphs, offsets)], dim=1)
    fields = {key: torch.cat([g[key] for g in graphs]) for key in graphs[0] if key != "edge_index"}
    if spec.reverse_edges:
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        # Reversed types are the forward types shifted by 2 (WEIGHT -> REVERSED_WEIGHT, ...).
        fields["edge_type"] = torch.cat([fields["edge_type"], fields["edge_type"] + 2])
        for key in ("edge_kernel", "edge_kernel_mask", "edge_layer", "edge_kind"):
            fields[key] = torch.cat([fields[key], fields[key]])
    return GraphBatch(
        num_graphs=len(graphs),
        node_graph=torch.repeat_interleave(torch.arange(len(graphs)), sizes),
        edge_index=edge_index,
        **fields,
    )


def batch_graphs(records: Sequence[NetworkRecord], spec: GraphSpec, dtype: torch.dtype = torch.float32) -> GraphBatch:
    """One disjoint graph of all ``records`` (node ids offset per network), reversed edges added per ``spec``."""
    if not records:
        raise SneError("cannot encode an empty batch of networks")
    return collate_graphs([build_graph(record, spec, dtype) for record in records], spec)


def num_weight_edges(record: NetworkRecord) -> int:
    """Forward weight edges of a record's graph: sum of out x in channels per layer (flattened maps count once)."""
    total, channels = 0, record.layers[0].in_features
    for layer in record.layers:
        total += layer.out_features * channels
        channels = layer.out_features
    return total


__all__ = [
    "ACTIVATIONS",
    "EDGE_KINDS",
    "NODE_KINDS",
    "READABLE_KINDS",
    "GraphBatch",
    "GraphSpec",
    "batch_graphs",
    "build_graph",
    "collate_graphs",
    "graph_counts",
    "layer_kernel_shapes",
    "num_weight_edges",
    "record_flow",
    "uses_chain_graph",
]
