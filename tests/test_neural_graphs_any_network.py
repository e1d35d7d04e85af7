"""Neural graphs of any architecture (records with data flow): every network family encodes, exactly
invariantly to its functionally-equivalent permutations; what each kind of operation becomes in the
graph; what a neural graph refuses, in one line."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from network_families import FAMILIES, HELD_OUT_VARIANTS
from sne.encoders import build_encoder
from sne.encoders.neural_graph.graph import (
    ATTENTION_OUT_EDGE,
    HEAD_EDGE,
    HEAD_NODE,
    INPUT_ROLE,
    NORM_EDGE,
    OPAQUE_NODE,
    QUERY_KEY_EDGE,
    QUERY_KEY_NODE,
    RESIDUAL_EDGE,
    ROW_EDGE,
    ROW_NODE,
    SUM_NODE,
    TRANSPOSED_EDGE,
    VALUE_EDGE,
    GraphSpec,
    build_graph,
    uses_chain_graph,
)
from sne.errors import SneError
from sne.weights.permute import random_equivalent_permutation
from sne.weights.record import Layer, NetworkRecord
from sne.weights.trace import record_from_module

ALL_FAMILIES = [*FAMILIES.items(), *HELD_OUT_VARIANTS]
SMALL = {"hidden": 16, "num_layers": 2, "out_dim": 8}
SPEC = GraphSpec(max_kernel_size=5, reverse_edges=False)
_RECORDS: dict[str, NetworkRecord] = {}


def family_record(name: str) -> NetworkRecord:
    """The float64 record of a family's network (traced once per session)."""
    if name not in _RECORDS:
        module, example = dict(ALL_FAMILIES)[name]()
        _RECORDS[name] = record_from_module(module, example, source=name).to(torch.float64)
    return _RECORDS[name]


@pytest.fixture(scope="module")
def encoders():
    built = {}
    for name, options in (("ng_gnn", SMALL), ("ng_t", {**SMALL, "heads": 2})):
        torch.manual_seed(0)
        built[name] = build_encoder(name, **options).double().eval()
    return built


def codes(model, records) -> torch.Tensor:
    with torch.no_grad():
        return model(model.prepare(records))


def layer_index(record: NetworkRecord, name: str) -> int:
    return next(i for i, layer in enumerate(record.layers) if layer.name == name)


def centre(graph, rows) -> torch.Tensor:
    return graph["edge_kernel"][rows, SPEC.centre_slot]


# --- every family -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, _ in ALL_FAMILIES])
def test_ng_gnn_codes_every_family_identically_for_equivalent_permutations(name, encoders):
    record = family_record(name)
    assert not uses_chain_graph(record)
    permuted = random_equivalent_permutation(record, torch.Generator().manual_seed(1))
    moved = [not torch.equal(a, b) for x, y in zip(record.layers, permuted.layers)
             for a, b in zip(x.tensors.values(), y.tensors.values())]
    assert any(moved)  # the permutation is not the identity
    model = encoders["ng_gnn"]
    model.fit_input_statistics([record])
    z = codes(model, [record, permuted])
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z[1], z[0], atol=1e-8, rtol=0)
    # Not invariant to what changes the function: one weight of the first layer moved.
    first = record.layers[0]
    weight = first.weight.clone()
    weight.view(-1)[0] += 1.0
    changed = record.with_layers([first.with_tensors(weight=weight), *record.layers[1:]])
    assert (codes(model, [changed])[0] - z[0]).abs().max() > 1e-6


@pytest.mark.parametrize("name", list(FAMILIES))
def test_ng_t_codes_every_family_identically_for_equivalent_permutations(name, encoders):
    record = family_record(name)
    permuted = random_equivalent_permutation(record, torch.Generator().manual_seed(2))
    z = codes(encoders["ng_t"], [record, permuted])
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z[1], z[0], atol=1e-8, rtol=0)


# --- what each kind becomes ---------------------------------------------------------------------


def test_batch_norm_is_a_diagonal_layer_with_its_running_statistics_folded_in():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        module[1].running_mean.normal_()
        module[1].running_var.uniform_(0.5, 2.0)
        module[1].weight.normal_()
        module[1].bias.normal_()
    module = module.double().eval()
    record = record_from_module(module, torch.randn(2, 2, 6, 6, dtype=torch.float64))
    graph = build_graph(record, SPEC, torch.float64)
    norm = (graph["edge_layer"] == 1).nonzero().squeeze(1)
    src, dst = graph["edge_index"][:, norm]
    assert len(norm) == 4 and (graph["edge_kind"][norm] == NORM_EDGE).all()
    scale, shift = centre(graph, norm), graph["node_bias"][dst]
    # The diagonal layer computes what the batch norm computes at inference, channel by channel.
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = module[1](x[:, :, None, None])[:, :, 0, 0]
    order = torch.argsort(src)
    torch.testing.assert_close(x * scale[order] + shift[order], expected)
    # The flattened 4x4 map of each channel is one 4x4 kernel of the linear layer (as in chains).
    linear = graph["edge_layer"] == 2
    assert int(linear.sum()) == 3 * 4 and int(graph["edge_kernel_mask"][linear][0].sum()) == 16


def test_residual_sums_are_sum_nodes_and_a_transformer_stream_chains_them():
    resnet, vit = build_graph(family_record("resnet"), SPEC), build_graph(family_record("vit"), SPEC)
    for graph in (resnet, vit):
        sums = (graph["node_kind"] == SUM_NODE).nonzero().squeeze(1)
        into = torch.isin(graph["edge_index"][1], sums)
        # Only identity edges (1 in the centre slot) enter sum nodes, two per node: the stream so
        # far and the one operation added to it.
        assert (graph["edge_type"][into] == RESIDUAL_EDGE).all() and (centre(graph, into) == 1).all()
        assert torch.bincount(graph["edge_index"][1][into])[sums].eq(2).all()
    # ResNet: one sum per block (8 + 16 channels); ViT: embedding + 2 additions per layer + ... (5 x 16).
    assert int((resnet["node_kind"] == SUM_NODE).sum()) == 24
    assert int((vit["node_kind"] == SUM_NODE).sum()) == 5 * 16


def test_attention_has_query_key_value_and_head_nodes_with_its_projections_on_edges():
    record = family_record("vit")
    i = layer_index(record, "encoder.layers.0.self_attn")
    layer, d, heads = record.layers[i], 16, 2
    graph = build_graph(record, SPEC, torch.float64)
    src, dst = graph["edge_index"]
    kind = graph["edge_kind"]
    of_layer = graph["edge_layer"] == i
    wq, wk, wv = layer.tensors["in_proj_weight"].reshape(3, d, d)
    query_key = (of_layer & (kind == QUERY_KEY_EDGE)).nonzero().squeeze(1)
    # Query/key edges carry 2 values: a 1 x 2 kernel, centre-padded.
    kernel = graph["edge_kernel"][query_key].view(-1, 5, 5)
    assert graph["edge_kernel_mask"][query_key].view(-1, 5, 5)[:, 2, 1:3].all()
    assert int(graph["edge_kernel_mask"][query_key].sum()) == 2 * d * d
    qk_nodes = torch.unique(dst[query_key])
    x_nodes = torch.unique(src[query_key])
    rebuilt = torch.zeros(2, d, d, dtype=torch.float64)
    rows, cols = torch.searchsorted(qk_nodes, dst[query_key]), torch.searchsorted(x_nodes, src[query_key])
    rebuilt[0, rows, cols], rebuilt[1, rows, cols] = kernel[:, 2, 1], kernel[:, 2, 2]
    torch.testing.assert_close(rebuilt[0], wq, atol=0, rtol=0)
    torch.testing.assert_close(rebuilt[1], wk, atol=0, rtol=0)
    bq, bk, bv = layer.tensors["in_proj_bias"].reshape(3, d)
    torch.testing.assert_close(graph["node_bias"][qk_nodes], bq, atol=0, rtol=0)
    torch.testing.assert_close(graph["node_bias2"][qk_nodes], bk, atol=0, rtol=0)
    assert (graph["node_kind"][qk_nodes] == QUERY_KEY_NODE).all()
    value = (of_layer & (kind == VALUE_EDGE)).nonzero().squeeze(1)
    v_nodes = torch.unique(dst[value])
    rebuilt = torch.zeros(d, d, dtype=torch.float64)
    rebuilt[torch.searchsorted(v_nodes, dst[value]), torch.searchsorted(x_nodes, src[value])] = centre(graph, value)
    torch.testing.assert_close(rebuilt, wv, atol=0, rtol=0)
    torch.testing.assert_close(graph["node_bias"][v_nodes], bv, atol=0, rtol=0)
    out = (of_layer & (kind == ATTENTION_OUT_EDGE)).nonzero().squeeze(1)
    assert torch.equal(torch.unique(src[out]), v_nodes) and len(out) == d * d
    # Heads: each query/key node goes to one head node, each head node to its head's value nodes.
    head_edges = kind == HEAD_EDGE
    into_heads = head_edges & torch.isin(src, qk_nodes)
    head_nodes = torch.unique(dst[into_heads])
    assert len(head_nodes) == heads and (graph["node_kind"][head_nodes] == HEAD_NODE).all()
    assert torch.bincount(dst[into_heads])[head_nodes].eq(d // heads).all()
    from_heads = head_edges & torch.isin(src, head_nodes)
    assert torch.equal(torch.unique(dst[from_heads]), v_nodes)
    assert not graph["edge_kernel_mask"][head_edges].any()


def test_embeddings_and_free_parameters_are_input_side_rows():
    gpt, vit = family_record("gpt"), family_record("vit")
    graph = build_graph(gpt, SPEC, torch.float64)
    inputs = graph["node_role"] == INPUT_ROLE
    # No input neurons for token ids: the 50 + 8 embedding rows are the input side, each its own position.
    assert int(inputs.sum()) == 58 and (graph["node_kind"][inputs] == ROW_NODE).all()
    assert sorted(graph["node_position"][inputs].tolist()) == list(range(58))
    rows = (graph["edge_layer"] == 0).nonzero().squeeze(1)
    assert (graph["edge_kind"][rows] == ROW_EDGE).all()
    src, dst = graph["edge_index"][:, rows]
    rebuilt = torch.zeros(50, 16, dtype=torch.float64)
    rebuilt[src - src.min(), dst - dst.min()] = centre(graph, rows)
    torch.testing.assert_close(rebuilt, gpt.layers[0].weight, atol=0, rtol=0)
    # The functional attention (fused qkv, scaled_dot_product_attention) is not followed: its
    # projection reads 16 opaque nodes, each fed by all 48 qkv outputs.
    proj = layer_index(gpt, "blocks.0.attn.proj")
    opaque = graph["node_kind"] == OPAQUE_NODE
    assert int((opaque & (graph["node_layer"] == proj + 1)).sum()) == 16
    assert torch.bincount(graph["edge_index"][1], minlength=len(opaque))[opaque].eq(48).all()
    # ViT: 1 input channel, then the class token (1 row) and positional embedding (17 rows).
    graph = build_graph(vit, SPEC, torch.float64)
    inputs = graph["node_role"] == INPUT_ROLE
    assert graph["node_kind"][inputs].tolist() == [0] + [ROW_NODE] * 18
    parameter = layer_index(vit, "")
    assert int((graph["edge_layer"] == parameter).sum()) == 18 * 16


def test_grouped_and_transposed_convolutions_have_edges_only_where_weights_are():
    mobilenet, unet = family_record("mobilenet"), family_record("unet")
    graph = build_graph(mobilenet, SPEC, torch.float64)
    depthwise = layer_index(mobilenet, "features.1.depthwise.0")  # 8 channels, groups 8, 3x3
    edges = (graph["edge_layer"] == depthwise).nonzero().squeeze(1)
    src, dst = graph["edge_index"][:, edges]
    assert len(edges) == 8 and len(torch.unique(src)) == 8 and len(torch.unique(dst)) == 8
    assert torch.equal(graph["edge_kernel"][edges][graph["edge_kernel_mask"][edges]],
                       mobilenet.layers[depthwise].weight.reshape(-1))
    graph = build_graph(unet, SPEC, torch.float64)
    up = layer_index(unet, "ups.0.up")  # ConvTranspose2d(16, 8, 2, stride 2): weight (16, 8, 2, 2)
    edges = (graph["edge_layer"] == up).nonzero().squeeze(1)
    assert len(edges) == 16 * 8 and (graph["edge_kind"][edges] == TRANSPOSED_EDGE).all()
    assert torch.equal(graph["edge_kernel"][edges][graph["edge_kernel_mask"][edges]],
                       unet.layers[up].weight.reshape(-1))  # edge (in i, out o) holds weight[i, o]
    # The decoder conv after the concatenation reads the up-convolution's 8 outputs and the skip's 8.
    after = layer_index(unet, "ups.0.conv.block.0")
    src = graph["edge_index"][0, graph["edge_layer"] == after]
    assert torch.equal(torch.unique(graph["node_layer"][src]), torch.tensor([layer_index(unet, "downs.1.block.4") + 1,
                                                                            up + 1]))


def test_traced_chains_keep_the_chain_graph():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    traced = record_from_module(module, torch.randn(2, 1, 6, 6, dtype=torch.float64))
    assert uses_chain_graph(traced)
    bare = traced.with_layers(replace(layer, inputs=None) for layer in traced.layers)
    a, b = build_graph(traced, SPEC, torch.float64), build_graph(bare, SPEC, torch.float64)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not a["node_kind"].any() and not a["edge_kind"].any()


def test_kinds_reach_only_the_graphs_that_have_them(encoders):
    """Chain graphs (all kinds 0) are encoded as before kinds existed; a checkpoint without the kind
    tables loads."""
    model = encoders["ng_gnn"]
    torch.manual_seed(0)
    chain = NetworkRecord(tuple(record_from_module(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
                                                   .double()).layers), source="mlp")
    vit = family_record("vit")
    before = codes(model, [chain, vit])
    state = {k: v for k, v in model.state_dict().items() if "kind" not in k and "bias2" not in k}
    torch.manual_seed(1)
    other = build_encoder("ng_gnn", **SMALL).double().eval()
    other.load_state_dict(state)  # the kind tables of `other` stay as initialised
    after = codes(other, [chain, vit])
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)
    assert (after[1] - before[1]).abs().max() > 1e-6


# --- refusals -----------------------------------------------------------------------------------


def one_line_error(call, *args) -> str:
    with pytest.raises(SneError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_what_a_neural_graph_cannot_read_is_refused_in_one_line(encoders):
    model = encoders["ng_gnn"]
    vit = family_record("vit")
    odd = Layer("rnn", "lstm", 99, {"weight_ih_l0": torch.randn(64, 16, dtype=torch.float64)})
    message = one_line_error(model.prepare, [vit.with_layers([*vit.layers, odd])])
    assert message.startswith("vit: layer 'rnn' is of kind 'lstm', which a neural graph cannot read")

    class BiasKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True, add_bias_kv=True)

        def forward(self, x):
            h = self.fc(x)
            return self.att(h, h, h, need_weights=False)[0]

    record = record_from_module(BiasKV(), torch.randn(2, 3, 4), source="bias_kv")
    message = one_line_error(model.check_records, [record])
    assert "layer 'att' (attention) has 'bias_k'" in message and "cannot read it" in message

    big = nn.Sequential(nn.Conv2d(3, 4, 7), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    record = record_from_module(big, torch.randn(2, 3, 16, 16), source="big")
    assert not uses_chain_graph(record)
    message = one_line_error(model.prepare, [record])
    assert message == "big: layer '0' kernel 7x7 is larger than the maximum kernel size 5 (option max_kernel_size)"

    wide = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LayerNorm([2, 4, 4]), nn.Flatten(), nn.Linear(32, 2))
    record = record_from_module(wide, torch.randn(2, 1, 6, 6), source="wide")
    assert "layer '1' (layer_norm) holds 'weight' of shape 2x4x4" in one_line_error(model.prepare, [record])

    resnet = family_record("resnet")
    weights = build_encoder("ng_gnn", **SMALL)
    weights.make_weight_head()
    message = one_line_error(weights.prepare_weights, [resnet])
    assert "one value per parameter only for a chain" in message and "'bn1' is batch_norm" in message
    message = one_line_error(build_encoder("ng_gnn", **SMALL, probe_points=2).prepare, [resnet])
    assert "probe features need an all-linear network" in message
