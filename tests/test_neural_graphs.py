"""Neural graphs: construction from records, exact permutation invariance of NG-GNN and NG-T, probe
features, the kernel-size limit, configs, and learning through the real training loop."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from sne.encoders import build_encoder, build_encoder_from_config, encoder_names
from sne.encoders.neural_graph.encoder import probe_activations
from sne.encoders.neural_graph.graph import (
    ACTIVATION_INDEX,
    RESIDUAL_EDGE,
    REVERSED_RESIDUAL_EDGE,
    WEIGHT_EDGE,
    GraphSpec,
    batch_graphs,
    build_graph,
    num_weight_edges,
)
from sne.errors import SneError
from sne.train import TrainConfig, fit
from sne.train.evaluate import evaluate_run
from sne.weights import record_from_module
from sne.weights.permute import permute_hidden, random_equivalent_permutation, random_permutations
from sne.weights.record import NetworkRecord, make_layer

ENCODERS = ["ng_gnn", "ng_t"]
SMALL = {"hidden": 16, "num_layers": 2, "out_dim": 8}
SMALL_BY_ENCODER = {"ng_gnn": SMALL, "ng_t": {**SMALL, "heads": 2}}


def mlp(widths: list[int], generator: torch.Generator, dtype=torch.float64, activation: str = "tanh") -> NetworkRecord:
    layers = [
        make_layer(f"fc{i}", i, torch.randn(n_out, n_in, generator=generator, dtype=dtype),
                   torch.randn(n_out, generator=generator, dtype=dtype),
                   activation if i < len(widths) - 2 else "identity")
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
    ]
    return NetworkRecord(tuple(layers), source=f"mlp{widths}")


def small_cnn(seed: int) -> NetworkRecord:
    """GUIDE section 6's small-CNN-zoo architecture, from a random module."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
    return record_from_module(module.double(), source="small_cnn")


def flatten_cnn(seed: int) -> NetworkRecord:
    """Schürholt CNN-s (GUIDE section 6): 5x5, 5x5 and 2x2 kernels, Flatten of a 4 x 3 x 3 map."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.Tanh(), nn.Conv2d(8, 6, 5), nn.MaxPool2d(2), nn.Tanh(),
        nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh(), nn.Linear(20, 10),
    )
    return record_from_module(module.double(), source="cnn_s")


def encoder(name: str, **options):
    torch.manual_seed(0)
    return build_encoder(name, **{**SMALL_BY_ENCODER[name], **options}).double().eval()


def codes(model, records) -> torch.Tensor:
    with torch.no_grad():
        return model(model.prepare(records))


# --- graph construction -------------------------------------------------------------------------


def test_mlp_graph_has_one_edge_per_weight_and_biases_on_their_neurons():
    g = torch.Generator().manual_seed(0)
    record = mlp([3, 5, 4, 2], g)
    spec = GraphSpec(max_kernel_size=3, reverse_edges=False)
    graph = build_graph(record, spec, torch.float64)
    weights = sum(layer.weight.numel() for layer in record.layers)
    assert graph["edge_index"].shape == (2, weights) == (2, num_weight_edges(record))
    assert int(graph["edge_kernel_mask"].sum()) == weights  # one real slot per edge: the centre
    assert graph["edge_kernel_mask"][:, spec.centre_slot].all()
    src, dst = graph["edge_index"]
    offsets = [0, 3, 8, 12, 14]
    for i, layer in enumerate(record.layers):
        rows = graph["edge_layer"] == i
        rebuilt = torch.zeros_like(layer.weight)
        rebuilt[dst[rows] - offsets[i + 1], src[rows] - offsets[i]] = graph["edge_kernel"][rows, spec.centre_slot]
        assert torch.equal(rebuilt, layer.weight)
        assert torch.equal(graph["node_bias"][offsets[i + 1]:offsets[i + 2]], layer.bias)
    assert not graph["node_bias_mask"][:3].any() and graph["node_bias_mask"][3:].all()
    assert graph["node_role"].tolist() == [0] * 3 + [1] * 9 + [2] * 2
    assert graph["node_position"].tolist() == [0, 1, 2] + [0] * 5 + [1] * 4 + [0, 1]
    assert graph["node_activation"][3:8].eq(ACTIVATION_INDEX["tanh"]).all()
    assert graph["node_activation"][-2:].eq(ACTIVATION_INDEX["identity"]).all()


def test_cnn_graph_holds_every_weight_once_with_centred_kernels():
    record = flatten_cnn(0)
    spec = GraphSpec(max_kernel_size=5, reverse_edges=False)
    graph = build_graph(record, spec, torch.float64)
    # Edges per layer: out x in channels; the Linear(36, 20) after 4 channels has 20 x 4 edges of 3x3 maps.
    assert graph["edge_index"].shape[1] == 8 * 1 + 6 * 8 + 4 * 6 + 20 * 4 + 10 * 20 == num_weight_edges(record)
    # Real slots, read edge by edge in slot order, are exactly the weights in PyTorch order.
    assert torch.equal(graph["edge_kernel"][graph["edge_kernel_mask"]],
                       torch.cat([layer.weight.reshape(-1) for layer in record.layers]))
    kernel = graph["edge_kernel_mask"][graph["edge_layer"] == 2][0].view(5, 5)  # a 2x2 kernel
    assert kernel.nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    flattened = graph["edge_kernel_mask"][graph["edge_layer"] == 3][0].view(5, 5)  # a 3x3 map, centred
    assert flattened[1:4, 1:4].all() and int(flattened.sum()) == 9
    assert graph["node_role"].eq(0).sum() == 1 and graph["node_role"].eq(2).sum() == 10


def test_residual_network_graph_has_identity_edges():
    g = torch.Generator().manual_seed(0)
    record = mlp([2, 6, 6, 6, 1], g)
    record = record.with_layers([*record.layers[:3], replace(record.layers[3], skip_from=(0,))])
    graph = batch_graphs([record], GraphSpec(max_kernel_size=3))
    src, dst = graph.edge_index
    residual = graph.edge_type == RESIDUAL_EDGE
    # Outputs of layer 0 (nodes 2..7) are added, channel by channel, to the input of layer 3
    # (outputs of layer 2, nodes 14..19).
    assert src[residual].tolist() == list(range(2, 8)) and dst[residual].tolist() == list(range(14, 20))
    assert graph.edge_kernel[residual, 4].eq(1).all() and int(graph.edge_kernel_mask[residual].sum()) == 6
    reversed_residual = graph.edge_type == REVERSED_RESIDUAL_EDGE
    assert src[reversed_residual].tolist() == list(range(14, 20))
    assert int((graph.edge_type == WEIGHT_EDGE).sum()) == num_weight_edges(record)
    bad = record.with_layers([*record.layers[:3], replace(record.layers[3], skip_from=(2,))])
    with pytest.raises(SneError, match="skips from level 2"):
        build_graph(bad, GraphSpec())


def test_kernels_beyond_the_maximum_are_refused_naming_the_layer():
    g = torch.Generator().manual_seed(0)
    big = NetworkRecord((make_layer("conv", 0, torch.randn(4, 3, 7, 7, generator=g)),
                         make_layer("fc", 1, torch.randn(2, 4, generator=g))), source="big.pt")
    model = build_encoder("ng_gnn", **SMALL)
    with pytest.raises(SneError, match=r"big\.pt: layer 'conv' kernel 7x7 is larger than the maximum kernel size 5"):
        model.prepare([big])
    assert build_encoder("ng_gnn", **SMALL, max_kernel_size=7).prepare([big]).edge_kernel.shape[1] == 49
    volume = NetworkRecord((make_layer("c3", 0, torch.randn(2, 1, 3, 3, 3, generator=g)),), source="v.pt")
    with pytest.raises(SneError, match="3 dimensions; the neural graph holds kernels of at most 2"):
        model.check_records([volume])
    wide_map = NetworkRecord((make_layer("c", 0, torch.randn(2, 1, 3, 3, generator=g)),
                              make_layer("fc", 1, torch.randn(3, 2 * 36, generator=g))), source="m.pt")
    with pytest.raises(SneError, match="flattened input map 6x6 of layer 'fc' is larger"):
        model.check_records([wide_map])


# --- invariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_codes_are_invariant_to_hidden_permutations_and_see_other_changes(name):
    g = torch.Generator().manual_seed(1)
    records = [mlp([2, 16, 16, 3], g), small_cnn(0), flatten_cnn(1)]
    model = encoder(name)
    model.fit_input_statistics(records)
    permuted = [random_equivalent_permutation(r, g) for r in records]
    before, after = codes(model, records), codes(model, permuted[::-1]).flip(0)
    torch.testing.assert_close(after, before, atol=1e-12, rtol=0)
    # Not invariant to what changes the function: reordering input neurons, or moving one weight.
    first = records[0].layers[0]
    inputs_swapped = records[0].with_layers([first.with_tensors(weight=first.weight.flip(1)), *records[0].layers[1:]])
    moved = first.weight.clone()
    moved[0, 0], moved[1, 0] = first.weight[1, 0], first.weight[0, 0]
    regrouped = records[0].with_layers([first.with_tensors(weight=moved), *records[0].layers[1:]])
    for changed in (inputs_swapped, regrouped):
        assert (codes(model, [changed])[0] - before[0]).abs().max() > 1e-6


@pytest.mark.parametrize("name", ENCODERS)
def test_probe_features_keep_the_encoder_invariant(name):
    g = torch.Generator().manual_seed(2)
    record = mlp([2, 8, 8, 1], g, activation="sine")
    model = encoder(name, probe_points=4, sine_w0=3.0)
    permuted = random_equivalent_permutation(record, g)
    torch.testing.assert_close(codes(model, [permuted]), codes(model, [record]), atol=1e-12, rtol=0)


def test_probe_features_are_the_network_outputs_and_follow_their_neurons():
    g = torch.Generator().manual_seed(3)
    record = mlp([3, 6, 6, 2], g, activation="relu")
    record = record.with_layers([*record.layers[:2], replace(record.layers[2], skip_from=(0,))])
    probes = torch.randn(4, 8, dtype=torch.float64, generator=g)
    spec = GraphSpec(max_kernel_size=3)
    values = probe_activations(batch_graphs([record], spec, torch.float64), probes, spec, sine_w0=30.0)
    l0, l1, l2 = record.layers
    h0 = torch.relu(probes[:, :3] @ l0.weight.T + l0.bias)
    h1 = torch.relu(h0 @ l1.weight.T + l1.bias) + h0  # the skip adds layer 0's outputs to layer 2's input
    torch.testing.assert_close(values[-2:].T, h1 @ l2.weight.T + l2.bias)

    plain = mlp([3, 6, 5, 2], g, activation="relu")
    perms = random_permutations(plain, g)
    permuted = permute_hidden(plain, perms)
    graphs = [batch_graphs([r], spec, torch.float64) for r in (plain, permuted)]
    original, moved = (probe_activations(graph, probes, spec, 30.0) for graph in graphs)
    torch.testing.assert_close(moved[3:9], original[3:9][perms[0]])
    torch.testing.assert_close(moved[9:14], original[9:14][perms[1]])
    torch.testing.assert_close(moved[14:], original[14:])
    conv = NetworkRecord((make_layer("c", 0, torch.randn(2, 1, 3, 3), activation="relu"),))
    with pytest.raises(SneError, match="probe features need an all-linear network"):
        encoder("ng_gnn", probe_points=2).prepare([conv])


# --- options and config -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_config_round_trip_gives_identical_outputs(name):
    g = torch.Generator().manual_seed(4)
    records = [mlp([2, 16, 16, 3], g), small_cnn(2)]
    model = encoder(name, reverse_edges=False, probe_points=0)
    model.fit_input_statistics(records)
    config = json.loads(json.dumps(model.config()))
    rebuilt = build_encoder_from_config(config).double().eval()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.options == model.options and name in encoder_names()
    torch.testing.assert_close(codes(rebuilt, records), codes(model, records), atol=0, rtol=0)


def test_bad_options_and_oversized_networks_are_user_errors():
    with pytest.raises(SneError, match="unknown ng_gnn option"):
        build_encoder("ng_gnn", heads=2)
    with pytest.raises(SneError, match="divisible"):
        build_encoder("ng_t", hidden=10, heads=4)
    with pytest.raises(SneError, match="true or false"):
        build_encoder("ng_t", reverse_edges="yes")
    g = torch.Generator().manual_seed(5)
    with pytest.raises(SneError, match="70 input neurons exceed .* 64 \\(option max_input_neurons\\)"):
        build_encoder("ng_gnn", **SMALL).check_records([mlp([70, 4, 1], g)])
    with pytest.raises(SneError, match="empty batch"):
        build_encoder("ng_t", **SMALL_BY_ENCODER["ng_t"]).prepare([])


# --- learning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_learns_inr_frequency_through_the_training_loop(name, shared_sine_zoo, tmp_path):
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder=name,
                         encoder_options=SMALL_BY_ENCODER[name], epochs=10, batch_size=16, lr=3e-3,
                         milestones=[0.8], head_hidden=[64], seed=0, device="cpu")
    fit(config, tmp_path / name, progress=False)
    result = evaluate_run(tmp_path / name, device="cpu", plot=False)
    metrics = result["metrics"]
    assert metrics["mse"] < 0.7 * metrics["mean_predictor_mse"]
    assert result["permutation_sensitivity"]["max_abs_change"] < 1e-3  # float32 summation order only
