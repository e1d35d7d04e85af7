"""What NG-GNN and NG-T share: options, input features of nodes and edges, probe features, pooling.

    record -> neural graph (graph.py) -> standardised biases / kernels (fitted per layer index)
    node state  = bias embedding + activation embedding + positional embedding (+ probe embedding)
                  (+ node-kind embedding + second-bias embedding, for nodes of kind > 0)
    edge state  = kernel embedding + edge-type embedding (+ edge-kind embedding, for edges of kind > 0)
    num_layers blocks (message passing: gnn.py, attention: transformer.py) update both
    z = readout(batch norm([mean over nodes, max over nodes])) per network

Weight-space outputs (:meth:`NeuralGraphEncoder.make_weight_head`): one value per parameter, read
off the final states of the parameter's own graph element: a forward weight edge's state -> Linear
-> its centre-padded kernel, whose real slots are that edge's weights; a neuron's state -> Linear
-> its bias. Both are scaled by the layer's fitted standard deviation (undoing the input
standardisation), so outputs are in weight units.

Positional embeddings are learned: a unique one for each input neuron and each output neuron (their
order means something), and one per hidden layer shared by all its neurons (hidden neurons are
exchangeable). Every other step treats nodes and edges alike and pools with symmetric functions,
so the code of a network is invariant to permutations of its hidden neurons.

Node and edge kinds (sum, attention, embedding-row and opaque nodes; norm, attention, transposed
and opaque edges: graph.py) enter only where they are not 0, through tables created after every
other module and without drawing from the global random stream: on a chain graph (every kind 0)
the encoder computes exactly what it did before kinds existed, from the same initial weights, and
checkpoints saved before them still load (the missing tables are taken as initialised).

Input statistics (mean and std per layer index) are fitted on the values the graphs hold: a batch
norm's edges hold its scale with the running statistics folded in, attention's edges its q/k/v
and output projections, an embedding's or free parameter's edges its rows.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn
from torch_geometric.utils import scatter

from sne.encoders.base import Architecture, Encoder, WeightBatch, records_from_flat_values
from sne.encoders.common import STD_FLOOR
from sne.encoders.neural_graph.graph import (
    ACTIVATION_INDEX,
    ACTIVATIONS,
    EDGE_KINDS,
    INPUT_ROLE,
    NO_LAYER,
    NODE_KINDS,
    NUM_EDGE_TYPES,
    RESIDUAL_EDGE,
    WEIGHT_EDGE,
    GraphBatch,
    GraphSpec,
    build_graph,
    collate_graphs,
    graph_counts,
    layer_kernel_shapes,
    uses_chain_graph,
)
from sne.errors import CannotRead, SneError
from sne.weights.probe import PROBE_ACTIVATIONS, SIREN_W0, layer_probe_problem
from sne.weights.record import NetworkRecord

#: Options of both neural-graph encoders and their defaults (hidden 64 and 4 layers, as the paper).
COMMON_OPTIONS: dict[str, Any] = {
    "hidden": 64,
    "num_layers": 4,
    "out_dim": 32,
    "max_kernel_size": 5,
    "kernel_dims": 2,
    "reverse_edges": True,
    "max_layers": 32,
    "max_input_neurons": 64,
    "max_output_neurons": 64,
    "probe_points": 0,
    "sine_w0": SIREN_W0,
    "layer_norm": True,
    "batch_norm": True,
}

#: Initial standard deviation of the learned embedding tables (see NeuralGraphEncoder.__init__).
EMBEDDING_INIT_STD = 0.1



def probe_activations(batch: GraphBatch, probes: torch.Tensor, spec: GraphSpec, sine_w0: float) -> torch.Tensor:
    """Every node's value when its network runs on each probe input: (N, P) for probes (P, max inputs).

    Input node j takes column j of ``probes``; layers run in order over the graph's weight edges
    (centre slots: only all-linear networks, checked by the encoder), adding the bias and applying
    the node's activation; residual edges add their source's value. Values follow their neurons,
    so they are permuted exactly as the nodes are.
    """
    num_nodes = batch.node_role.numel()
    src, dst = batch.edge_index
    weight_edges = batch.edge_type == WEIGHT_EDGE
    residual_edges = batch.edge_type == RESIDUAL_EDGE
    target_layer = batch.node_layer[dst]
    inputs = (batch.node_role == INPUT_ROLE).nonzero().squeeze(1)
    values = probes.new_zeros(num_nodes, probes.shape[0])
    values = values.index_copy(0, inputs, probes[:, batch.node_position[inputs]].T)
    for depth in range(1, int(batch.node_layer.max()) + 1):
        nodes = (batch.node_layer == depth).nonzero().squeeze(1)
        into = (weight_edges & (target_layer == depth)).nonzero().squeeze(1)
        weights = batch.edge_kernel[into, spec.centre_slot].unsqueeze(1)
        summed = scatter(weights * values[src[into]], dst[into], 0, dim_size=num_nodes, reduce="sum")[nodes]
        pre = summed + batch.node_bias[nodes].unsqueeze(1)
        activations = batch.node_activation[nodes].unsqueeze(1)
        out = pre
        for name, function in PROBE_ACTIVATIONS.items():
            if name != "identity":
                out = torch.where(activations == ACTIVATION_INDEX[name], function(pre, sine_w0), out)
        skips = (residual_edges & (target_layer == depth)).nonzero().squeeze(1)
        if skips.numel():
            out = out + scatter(values[src[skips]], dst[skips], 0, dim_size=num_nodes, reduce="sum")[nodes]
        values = values.index_copy(0, nodes, out)
    return values


class NeuralGraphEncoder(Encoder):
    """Shared machinery of ``ng_gnn`` and ``ng_t``; subclasses provide :meth:`make_block`.

    Options (see :data:`COMMON_OPTIONS`): ``hidden`` width of node and edge states; ``num_layers``
    blocks; ``out_dim`` size of z; ``max_kernel_size`` and ``kernel_dims`` the edge-feature kernel
    (larger kernels are refused); ``reverse_edges`` adds reversed edges; ``max_layers``,
    ``max_input_neurons``, ``max_output_neurons`` size the positional embeddings and per-layer
    statistics (larger networks are refused); ``probe_points`` learned probe inputs (0: off; needs
    all-linear networks with known activations); ``sine_w0`` the factor of "sine" activations in
    probes; ``layer_norm`` pre-normalises node and edge states in every block; ``batch_norm``
    normalises the pooled codes across the batch (in training mode codes then depend on the batch;
    eval mode uses running statistics).
    """

    extra_options: ClassVar[dict[str, Any]] = {}
    weight_outputs = True

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        defaults = {**COMMON_OPTIONS, **self.extra_options}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise SneError(f"unknown {self.name} option(s) {', '.join(unknown)} (known: {', '.join(defaults)})")
        resolved = {**defaults, **options}
        self._validate(resolved)
        super().__init__(architecture=architecture, **resolved)
        hidden = resolved["hidden"]
        self.out_dim = resolved["out_dim"]
        self.spec = GraphSpec(resolved["max_kernel_size"], resolved["kernel_dims"], resolved["reverse_edges"])
        max_in, max_layers, max_out = (resolved[k] for k in ("max_input_neurons", "max_layers", "max_output_neurons"))
        # Positional table: input neurons, then hidden layers (all but the last layer), then output neurons.
        self._position_offsets = (0, max_in, max_in + max_layers - 1)
        self.position_embedding = nn.Embedding(max_in + max_layers - 1 + max_out, hidden)
        self.activation_embedding = nn.Embedding(len(ACTIVATIONS), hidden)
        self.bias_embedding = nn.Linear(2, hidden)  # (standardised bias, has bias)
        self.edge_embedding = nn.Linear(self.spec.edge_slots, hidden)
        self.edge_type_embedding = nn.Embedding(NUM_EDGE_TYPES, hidden)
        probes = resolved["probe_points"]
        if probes:
            self.probes = nn.Parameter(torch.empty(probes, max_in).uniform_(-1.0, 1.0))
            self.probe_embedding = nn.Linear(probes, hidden)
        # Per-layer-index statistics of weights and biases over the training networks; identity until fitted.
        for part in ("weight", "bias"):
            self.register_buffer(f"{part}_mean", torch.zeros(max_layers))
            self.register_buffer(f"{part}_std", torch.ones(max_layers))
        # Learned embeddings start small: at N(0, 1) the parts every network shares (positions,
        # types) dwarf the weight- and bias-dependent parts, codes of different networks nearly
        # coincide after normalisation, and training sat at the mean predictor.
        for table in (self.position_embedding, self.activation_embedding, self.edge_type_embedding):
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
        self.blocks = nn.ModuleList(self.make_block(hidden, resolved) for _ in range(resolved["num_layers"]))
        self.final_norm = norm(hidden, resolved["layer_norm"])
        # What all networks share dominates node states, and mean pooling averages away much of
        # what sets networks apart (measured at initialisation on shared-init sine INRs: codes
        # differed by ~3% between networks, and training sat at the mean predictor); batch
        # normalisation of the pooled codes restores their spread, as in SNE's SetPool.
        self.pool_norm = nn.BatchNorm1d(2 * hidden) if resolved["batch_norm"] else nn.Identity()
        self.readout = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, self.out_dim))
        # Kinds of node and edge beyond a chain's (graph.py); the global random stream is left as it
        # was, so everything drawn after building the encoder is as before kinds existed.
        with torch.random.fork_rng(devices=[]):
            self.node_kind_embedding = nn.Embedding(len(NODE_KINDS), hidden)
            self.edge_kind_embedding = nn.Embedding(len(EDGE_KINDS), hidden)
            self.bias2_embedding = nn.Parameter(torch.empty(hidden))
            for table in (self.node_kind_embedding.weight, self.edge_kind_embedding.weight, self.bias2_embedding):
                nn.init.normal_(table, std=EMBEDDING_INIT_STD)

    def make_block(self, hidden: int, options: dict[str, Any]) -> nn.Module:  # pragma: no cover - interface
        """One block mapping (node states, edge states, source, target) to updated (nodes, edges)."""
        raise NotImplementedError

    def set_degree_statistics(self, in_degree: torch.Tensor) -> None:
        """Receive the training graphs' node in-degrees (encoders whose blocks normalise by degree)."""

    # --- records -> graphs ----------------------------------------------------------------------

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        for record in records:
            self._checked_graph(record, build=False)

    def _checked_graph(self, record: NetworkRecord, build: bool = True,
                       dtype: torch.dtype | None = None) -> dict[str, torch.Tensor] | None:
        """Check that ``record`` fits this encoder (:class:`SneError` naming what does not); its graph
        when ``build`` (a record with data flow is always built: building is its check)."""
        opts = self.options
        layers = record.layers
        dtype = dtype or self.edge_embedding.weight.dtype
        chain = uses_chain_graph(record)
        graph = None
        if chain:
            layer_kernel_shapes(record, self.spec)
            inputs, outputs, what = layers[0].in_features, layers[-1].out_features, "input neurons"
        else:
            graph = build_graph(record, self.spec, dtype)
            inputs, outputs = graph_counts(graph)
            what = "input neurons (network inputs, embedding and parameter rows)"
        limits = (
            (len(layers), opts["max_layers"], "layers", "max_layers"),
            (inputs, opts["max_input_neurons"], what, "max_input_neurons"),
            (outputs, opts["max_output_neurons"], "output neurons", "max_output_neurons"),
        )
        for count, limit, what, option in limits:
            if count > limit:
                raise CannotRead(f"{record.source}: {count} {what} exceed this {self.name} encoder's {limit} "
                               f"(option {option})")
        if opts["probe_points"]:
            problem = layer_probe_problem(record)
            if problem is not None:
                raise SneError(f"{record.source}: {problem} (set probe_points to 0)")
            if not chain:
                raise SneError(f"{record.source}: probe features need a chain of linear layers, but its layers add "
                               f"or concatenate outputs (set probe_points to 0)")
        if build and graph is None:
            graph = build_graph(record, self.spec, dtype)
        return graph

    def prepare(self, records: Sequence[NetworkRecord]) -> GraphBatch:
        if not records:
            raise SneError("cannot encode an empty batch of networks")
        return collate_graphs([self._checked_graph(record) for record in records], self.spec)

    def prepare_weights(self, records: Sequence[NetworkRecord]) -> WeightBatch:
        for record in records:
            if not uses_chain_graph(record):
                odd = next((l for l in record.layers if l.kind not in ("linear", "conv1d", "conv2d", "conv3d")
                            or l.attrs.get("groups", 1) != 1), None)
                why = (f"layer '{odd.name}' is {odd.kind}{' (grouped)' if odd.attrs.get('groups', 1) != 1 else ''}"
                       if odd else "its layers add or concatenate outputs")
                raise SneError(f"{record.source}: {self.name} outputs one value per parameter only for a chain of "
                               f"linear and convolution layers, but {why}")
        return super().prepare_weights(records)

    @torch.no_grad()
    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        """Per layer index: mean and std of the weight values the graphs hold (a chain's weights
        themselves) and of their biases, over all training networks; node in-degrees."""
        self.check_records(records)
        sums: dict[tuple[str, int], torch.Tensor] = {}
        for record in records:
            for part, i, values in _layer_values(record, self.spec):
                values = values.detach().double().reshape(-1)
                moments = torch.stack([values.new_tensor(values.numel()), values.sum(), values.square().sum()])
                sums[part, i] = sums.get((part, i), 0) + moments
        for (part, i), (count, total, squares) in sums.items():
            mean = total / count
            std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(STD_FLOOR)
            getattr(self, f"{part}_mean")[i] = mean
            getattr(self, f"{part}_std")[i] = std
        degrees = []
        for start in range(0, len(records), 64):
            graph = collate_graphs([build_graph(r, self.spec) for r in records[start : start + 64]], self.spec)
            degrees.append(torch.bincount(graph.edge_index[1], minlength=graph.node_role.numel()))
        self.set_degree_statistics(torch.cat(degrees))

    # --- forward --------------------------------------------------------------------------------

    def _standardized(self, values: torch.Tensor, layer: torch.Tensor, mask: torch.Tensor, part: str) -> torch.Tensor:
        known = layer != NO_LAYER
        index = layer.clamp_min(0)
        mean = torch.where(known, getattr(self, f"{part}_mean")[index], 0.0).to(values.dtype)
        std = torch.where(known, getattr(self, f"{part}_std")[index], 1.0).to(values.dtype)
        if values.dim() == 2:
            mean, std = mean.unsqueeze(1), std.unsqueeze(1)
        return torch.where(mask, (values - mean) / std, 0.0)

    def embed_inputs(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial node states (N, hidden) and edge states (E, hidden)."""
        offsets = torch.tensor(self._position_offsets, device=batch.node_role.device)
        position = offsets[batch.node_role] + batch.node_position
        # node_layer - 1 is the index of the layer whose output the node is (inputs: masked, no bias).
        bias = self._standardized(batch.node_bias, batch.node_layer - 1, batch.node_bias_mask, "bias")
        bias_features = torch.stack([bias, batch.node_bias_mask.to(bias.dtype)], dim=1)
        nodes = (
            self.bias_embedding(bias_features)
            + self.activation_embedding(batch.node_activation)
            + self.position_embedding(position)
        )
        if self.options["probe_points"]:
            values = probe_activations(batch, self.probes, self.spec, self.options["sine_w0"])
            nodes = nodes + self.probe_embedding(values)
        # Kinds beyond a chain's: exactly nothing is added where the kind is 0 (see the module docstring).
        bias2 = self._standardized(batch.node_bias2, batch.node_layer - 1, batch.node_bias2_mask, "bias")
        special = (batch.node_kind > 0).unsqueeze(1)
        extra = self.node_kind_embedding(batch.node_kind) + bias2.unsqueeze(1) * self.bias2_embedding
        nodes = nodes + torch.where(special, extra, 0.0)
        kernels = self._standardized(batch.edge_kernel, batch.edge_layer, batch.edge_kernel_mask, "weight")
        edges = self.edge_embedding(kernels) + self.edge_type_embedding(batch.edge_type)
        edges = edges + torch.where((batch.edge_kind > 0).unsqueeze(1), self.edge_kind_embedding(batch.edge_kind), 0.0)
        return nodes, edges

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # Checkpoints from before node and edge kinds: take the missing tables as initialised
        # (they only act on kinds > 0, which chain graphs, the only ones encoded then, never have).
        for name in ("node_kind_embedding.weight", "edge_kind_embedding.weight", "bias2_embedding"):
            if prefix + name not in state_dict:
                state_dict[prefix + name] = self.get_parameter(name).detach().clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def final_states(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Node states (normalised) and edge states after the last block."""
        nodes, edges = self.embed_inputs(batch)
        source, target = batch.edge_index
        for block in self.blocks:
            nodes, edges = block(nodes, edges, source, target)
        return self.final_norm(nodes), edges

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        nodes, _ = self.final_states(batch)
        pooled = [scatter(nodes, batch.node_graph, 0, dim_size=batch.num_graphs, reduce=r) for r in ("mean", "max")]
        return self.readout(self.pool_norm(torch.cat(pooled, dim=1)))

    # --- weight-space outputs -------------------------------------------------------------------

    def build_weight_head(self) -> nn.Module:
        hidden = self.options["hidden"]
        head = nn.ModuleDict({
            "edge_norm": norm(hidden, self.options["layer_norm"]),
            "kernel": nn.Linear(hidden, self.spec.edge_slots),
            "bias": nn.Linear(hidden, 1),
        })
        for linear in (head["kernel"], head["bias"]):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        return head

    def weight_values(self, batch: GraphBatch, records: Sequence[NetworkRecord]) -> list[NetworkRecord]:
        nodes, edges = self.final_states(batch)
        head = self.weight_head
        kernels = head["kernel"](head["edge_norm"](edges))
        # Undo the per-layer standardisation of the inputs: outputs in weight units.
        kernels = kernels * self.weight_std[batch.edge_layer.clamp_min(0)].to(kernels.dtype).unsqueeze(1)
        biases = head["bias"](nodes).squeeze(1) * self.bias_std[(batch.node_layer - 1).clamp_min(0)].to(nodes.dtype)
        return graph_parameters(batch, kernels, biases, records)

    # --- options --------------------------------------------------------------------------------

    def _validate(self, options: dict[str, Any]) -> None:
        integers = [k for k, v in self.extra_options.items() if isinstance(v, int) and not isinstance(v, bool)]
        for name in ("hidden", "num_layers", "out_dim", "max_kernel_size", "kernel_dims", "max_layers",
                     "max_input_neurons", "max_output_neurons", *integers):
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SneError(f"{self.name} option {name} must be a positive integer, got {value!r}")
        if options["kernel_dims"] > 3:
            raise SneError(f"{self.name} option kernel_dims must be 1, 2 or 3, got {options['kernel_dims']}")
        probes = options["probe_points"]
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
            raise SneError(f"{self.name} option probe_points must be a non-negative integer, got {probes!r}")
        if isinstance(options["sine_w0"], bool) or not isinstance(options["sine_w0"], (int, float)):
            raise SneError(f"{self.name} option sine_w0 must be a number, got {options['sine_w0']!r}")
        for name in ("reverse_edges", "layer_norm", "batch_norm"):
            if not isinstance(options[name], bool):
                raise SneError(f"{self.name} option {name} must be true or false, got {options[name]!r}")


def _layer_values(record: NetworkRecord, spec: GraphSpec) -> list[tuple[str, int, torch.Tensor]]:
    """("weight" or "bias", layer index, values) of what a record's graph holds: for a chain graph
    each layer's weight and bias as they are (the graph holds exactly those), else the real slots of
    each layer's weight edges and the biases (both) of its nodes."""
    if uses_chain_graph(record):
        return [(part, i, values) for i, layer in enumerate(record.layers)
                for part, values in (("weight", layer.weight), ("bias", layer.bias)) if values is not None]
    graph = build_graph(record, spec, torch.float64)
    out = []
    edge_layer = graph["edge_layer"].unsqueeze(1).expand_as(graph["edge_kernel_mask"])
    weights = graph["edge_kernel"][graph["edge_kernel_mask"]]
    weight_layer = edge_layer[graph["edge_kernel_mask"]]
    bias_parts = [(graph[v][graph[m]], graph["node_layer"][graph[m]] - 1)
                  for v, m in (("node_bias", "node_bias_mask"), ("node_bias2", "node_bias2_mask"))]
    biases, bias_layer = (torch.cat(parts) for parts in zip(*bias_parts))
    for i in range(len(record.layers)):
        for part, values, layer in (("weight", weights, weight_layer), ("bias", biases, bias_layer)):
            chosen = values[layer == i]
            if chosen.numel():
                out.append((part, i, chosen))
    return out


def graph_parameters(
    batch: GraphBatch, edge_kernels: torch.Tensor, node_values: torch.Tensor, records: Sequence[NetworkRecord]
) -> list[NetworkRecord]:
    """Per-edge padded kernels (E, slots) and per-node values (N,) of a batch's graphs as one value
    per parameter of each network, in place of ``records``' parameters: forward weight edges' real kernel slots are the weights, the
    values of every layer's output neurons the biases (given the graph's own inputs, this gives the
    records' parameters back)."""
    # Forward weight edges only: reversed edges repeat them, residual edges hold no parameter.
    weight_edges = batch.edge_type == WEIGHT_EDGE
    # Real slots read edge by edge in slot order are the weights in PyTorch order (graph.py), and
    # graphs list networks, then layers, in order: the masked selection un-pads every kernel.
    weights = edge_kernels[weight_edges][batch.edge_kernel_mask[weight_edges]]
    biases = node_values[batch.node_layer > 0]  # input nodes have none
    return records_from_flat_values(weights, biases, records)


def norm(hidden: int, enabled: bool) -> nn.Module:
    return nn.LayerNorm(hidden) if enabled else nn.Identity()


def gather(node_values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``node_values``: node states onto edges (index_select: faster than indexing on CPU)."""
    return node_values.index_select(0, index)


class EdgeUpdate(nn.Module):
    """Residual edge-state update from the edge's own (normed) state and both end nodes' states."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.source = nn.Linear(hidden, hidden)
        self.target = nn.Linear(hidden, hidden, bias=False)
        self.itself = nn.Linear(hidden, hidden, bias=False)
        self.mix = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, h: torch.Tensor, e: torch.Tensor, edges: torch.Tensor, source: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        ends = gather(self.source(h), source) + gather(self.target(h), target)
        return edges + self.mix(ends + self.itself(e))


__all__ = ["COMMON_OPTIONS", "NeuralGraphEncoder", "gather", "graph_parameters", "norm", "probe_activations"]
