"""Weight-space outputs of the encoders and the dilation style-editing task: output shapes, exact
equivariance, the identity edit at initialisation, values back in their places, refusals, the
render and the dilation targets, learning through the shared loop, and the CLI end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from sne.bench.style_edit import (
    EDIT_TARGET,
    dilate,
    edited_renders,
    load_editor,
    load_split,
    mse_per_network,
    open_digit_inr_zoo,
    render,
    render_edited,
    source_images,
    stack_parameters,
    train_editor,
)
from sne.data import load_dataset
from sne.encoders import build_encoder, build_encoder_from_config
from sne.encoders.base import weight_output_encoder_names
from sne.encoders.chunking import pad_chunk
from sne.encoders.dwsnet import from_spaces, to_spaces, weight_spaces
from sne.encoders.neural_graph.encoder import graph_parameters
from sne.encoders.neural_graph.graph import GraphSpec, batch_graphs
from sne.encoders.nfn import from_wsfeat, to_wsfeat
from sne.encoders.sne import place_elements
from sne.errors import SneError
from sne.train import TrainConfig
from sne.weights import StackedWeights
from sne.weights.permute import permute_hidden, random_equivalent_permutation, random_permutations, random_sign_flips
from sne.weights.record import NetworkRecord
from sne.zoo import generate_zoo
from sne.zoo.digit_inr import psnr
from sne.zoo.digit_inr import source_images as recipe_source_images
from test_equivariant_baselines import CNN, CNN_1D, network
from test_neural_graphs import flatten_cnn, mlp
from test_sne_encoder import mixed_records
from project_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
EQUIVARIANT = ["ng_gnn", "ng_t", "dwsnet", "nfn_np", "nfn_hnp", "nft"]
SMALL = {
    "sne": {"hidden": 16, "heads": 2, "num_sab": 1, "out_dim": 8, "chunk_size": 8},
    "mlp": {"hidden": [16], "out_dim": 8},
    "ng_gnn": {"hidden": 16, "num_layers": 2, "out_dim": 8},
    "ng_t": {"hidden": 16, "num_layers": 2, "out_dim": 8, "heads": 2},
    "nfn_np": {"hidden": 8, "num_layers": 2, "out_dim": 8},
    "nfn_hnp": {"hidden": 8, "num_layers": 2, "out_dim": 8},
    "nft": {"hidden": 8, "heads": 2, "num_layers": 2, "out_dim": 8},
    "dwsnet": {"hidden": 8, "num_layers": 2, "out_dim": 8},
}
SIREN = [(32, 2), (32, 32), (1, 32)]
SHAPES = {"siren": SIREN, "cnn": CNN, "cnn1d": CNN_1D}
#: Architectures each encoder takes: the SIREN, chains of convolutions (the nfn package's layers
#: take 2-D kernels only) and, for those not built on neuron chains, conv -> flatten -> linear.
ARCHITECTURES = {name: ["siren", "cnn"] for name in SMALL}
ARCHITECTURES["dwsnet"].append("cnn1d")
for _name in ("ng_gnn", "ng_t", "sne", "mlp"):
    ARCHITECTURES[_name].append("flatten_cnn")


def records_of(arch: str, count: int, generator: torch.Generator) -> list[NetworkRecord]:
    if arch == "flatten_cnn":
        return [flatten_cnn(seed) for seed in range(count)]
    return [network(SHAPES[arch], generator) for _ in range(count)]


def editor(name: str, records: list[NetworkRecord]):
    """A float64 encoder of ``name`` with input statistics fitted on ``records`` and a weight head."""
    torch.manual_seed(0)
    encoder = build_encoder(name, architecture=records[0].architecture, **SMALL[name]).double().eval()
    encoder.fit_input_statistics(records)
    encoder.make_weight_head()
    return encoder


def edit(encoder, records):
    return encoder.forward_weights(encoder.prepare_weights(records))


def randomize_head(encoder) -> None:
    """Non-zero output layers, so that equivariance is not trivially met by all-zero outputs."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in encoder.weight_head.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def detached(record: NetworkRecord) -> NetworkRecord:
    """``record`` with every tensor detached from the graph (to permute outputs like their inputs)."""
    return record.with_layers(layer.with_tensors(**{n: t.detach() for n, t in layer.tensors.items()})
                              for layer in record.layers)


# --- the interface ------------------------------------------------------------------------------


def test_every_weight_space_encoder_has_weight_outputs():
    assert set(weight_output_encoder_names()) == {*EQUIVARIANT, "sne", "mlp"}


@pytest.mark.parametrize(
    ("name", "arch"),
    [pytest.param(n, a, id=f"{n}-{a}") for n in sorted(SMALL) for a in ARCHITECTURES[n]],
)
def test_outputs_have_the_parameter_shapes_and_start_as_the_identity_edit(name, arch):
    records = records_of(arch, 3, torch.Generator().manual_seed(0))
    encoder = editor(name, records)
    outputs = edit(encoder, records)
    assert len(outputs) == len(records)
    for output, record in zip(outputs, records):
        assert isinstance(output, NetworkRecord) and output.source == record.source
        assert len(output.layers) == len(record.layers)
        for value, layer in zip(output.layers, record.layers):
            assert value.name == layer.name and value.kind == layer.kind
            assert value.weight.shape == layer.weight.shape
            assert (value.bias is None) == (layer.bias is None)
            assert value.bias is None or value.bias.shape == layer.bias.shape
            # Zero output layers: the untrained editor changes nothing.
            assert not value.weight.any() and (value.bias is None or not value.bias.any())
    loss = sum(v.weight.square().sum() for output in outputs for v in output.layers)
    loss.backward()
    assert any(p.grad is not None for p in encoder.weight_head.parameters())


@pytest.mark.parametrize(
    ("name", "arch"),
    [pytest.param(n, a, id=f"{n}-{a}") for n in EQUIVARIANT for a in ARCHITECTURES[n]],
)
def test_outputs_are_permutation_equivariant(name, arch):
    """Permuting hidden neurons of the input permutes the edit the same way (float64, exact up to rounding)."""
    g = torch.Generator().manual_seed(1)
    records = records_of(arch, 3, g)
    encoder = editor(name, records)
    randomize_head(encoder)
    outputs = edit(encoder, records)
    perms = [random_permutations(r, g) for r in records]
    moved = edit(encoder, [permute_hidden(r, p) for r, p in zip(records, perms)])
    for output, perm, moved_output in zip(outputs, perms, moved):
        expected = permute_hidden(detached(output), perm)
        for value, layer in zip(moved_output.layers, expected.layers):
            torch.testing.assert_close(value.weight, layer.weight, atol=1e-10, rtol=0)
            if layer.bias is not None:
                torch.testing.assert_close(value.bias, layer.bias, atol=1e-10, rtol=0)
    # Not vacuous: outputs are not zero and differ between networks.
    assert (outputs[0].layers[1].weight - outputs[1].layers[1].weight).abs().max() > 1e-6


def test_values_go_back_to_their_parameters():
    """The bookkeeping that places outputs: fed each encoder's own input values, it gives the records back."""
    def assert_records(values, records):
        for output, record in zip(values, records):
            for value, layer in zip(output.layers, record.layers):
                assert torch.equal(value.weight, layer.weight.to(value.weight.dtype))
                assert (value.bias is None) == (layer.bias is None)
                assert value.bias is None or torch.equal(value.bias, layer.bias.to(value.bias.dtype))

    records = mixed_records(torch.float64)
    # SNE: elements in kernel-shape groups (conv1d, 2-D kernels of three sizes, conv3d, linear and biases).
    assert_records(place_elements(pad_chunk(records, 8, torch.float64).tap_values, records), records)
    # Neural graph: kernels un-padded off forward weight edges (reversed and residual edges skipped), biases off nodes.
    g = torch.Generator().manual_seed(2)
    residual = mlp([2, 6, 6, 6, 1], g)
    residual = residual.with_layers([*residual.layers[:3], replace(residual.layers[3], skip_from=(0,))])
    graph_records = [residual, flatten_cnn(0), mlp([3, 5, 2], g)]
    batch = batch_graphs(graph_records, GraphSpec(max_kernel_size=5), torch.float64)
    assert_records(graph_parameters(batch, batch.edge_kernel, batch.node_bias, graph_records), graph_records)
    # DWSNet spaces and the nfn package's features.
    for shapes in (CNN, CNN_1D, SIREN):
        stacked = StackedWeights.from_records([network(shapes, g)], torch.float64)
        spaces = weight_spaces(network(shapes, g).architecture)
        back = from_spaces(to_spaces(stacked, spaces), spaces, network(shapes, g).architecture)
        for a, b in zip(back.weights + back.biases, stacked.weights + stacked.biases):
            assert torch.equal(a, b)
    stacked = StackedWeights.from_records([network(CNN, g)], torch.float64)
    back = from_wsfeat(to_wsfeat(stacked), stacked.has_bias)
    assert all(torch.equal(a, b) for a, b in zip(back.weights + back.biases, stacked.weights + stacked.biases))


@pytest.mark.parametrize("name", ["sne", "ng_gnn", "dwsnet", "mlp"])
def test_weight_head_survives_the_config_round_trip(name):
    records = records_of("siren", 2, torch.Generator().manual_seed(3))
    encoder = editor(name, records)
    randomize_head(encoder)
    config = json.loads(json.dumps(encoder.config()))
    assert config["weight_head"] is True
    rebuilt = build_encoder_from_config(config).double().eval()
    rebuilt.load_state_dict(encoder.state_dict())
    for a, b in zip(edit(rebuilt, records), edit(encoder, records)):
        for x, y in zip(a.layers, b.layers):
            torch.testing.assert_close(x.weight, y.weight, atol=0, rtol=0)
    assert "weight_head" not in build_encoder(name, architecture=records[0].architecture, **SMALL[name]).config()


@pytest.mark.parametrize("name", ["statnn", "deepsets", "hyperrep"])
def test_encoders_without_weight_outputs_refuse_with_one_line(name):
    record = network(SIREN, torch.Generator().manual_seed(0), torch.float32)
    encoder = build_encoder(name, architecture=record.architecture)
    with pytest.raises(SneError) as caught:
        encoder.make_weight_head()
    message = str(caught.value)
    assert "\n" not in message and f"'{name}' cannot output one value per parameter" in message and "ng_gnn" in message
    with pytest.raises(SneError, match="no weight head: call make_weight_head"):
        build_encoder("ng_gnn").forward_weights(build_encoder("ng_gnn").prepare_weights([record]))


# --- the task -------------------------------------------------------------------------------------


def test_dilation_is_the_3x3_grey_scale_maximum():
    image = np.zeros((28, 28))
    image[10, 10] = 0.5  # a lone pixel becomes a 3x3 block
    image[10, 11] = 0.8  # its brighter neighbour wins where both reach
    image[0, 0] = 1.0  # a corner: the borders are reflected, nothing from outside the image
    dilated = dilate(torch.tensor(image, dtype=torch.float32).reshape(1, 784)).reshape(28, 28).double().numpy()
    assert dilated[9:12, 9].tolist() == [0.5] * 3
    assert dilated[9:12, 10:13].ravel().tolist() == pytest.approx([0.8] * 9)
    assert dilated[:2, :2].ravel().tolist() == [1.0] * 4 and dilated[2, 2] == 0.0
    # Against a direct 3x3 maximum with edge padding (what 'reflect' amounts to for a 3x3 window).
    rng = np.random.default_rng(0)
    images = rng.random((3, 28, 28))
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    expected = windows.max(axis=(-1, -2))
    assert np.array_equal(dilate(torch.tensor(images)).numpy(), expected)


@pytest.fixture(scope="module")
def digit_zoo(tmp_path_factory):
    """48 digit INRs, 100 fitting steps (~5 s); split 29/10/9."""
    out = tmp_path_factory.mktemp("digit") / "zoo"
    return generate_zoo("digit-inr", out, n=48, seed=0, options={"steps": 100}, command="test zoo", progress=False)


def test_render_of_an_unedited_inr_reproduces_its_fitted_image(digit_zoo):
    test = load_split(digit_zoo, "test")
    expected = recipe_source_images(load_dataset("digits"), test.ids)["images"]
    assert torch.equal(test.images, expected) and torch.equal(source_images(digit_zoo, test.ids), expected)
    errors = mse_per_network(render(test.parameters), test.images)
    fit_mse = torch.tensor(digit_zoo.metadata.loc[test.ids, "fit_mse"].to_numpy())
    torch.testing.assert_close(errors, fit_mse, rtol=1e-3, atol=1e-8)
    assert psnr(errors).min() > 35
    assert torch.equal(test.targets, dilate(test.images)) and (test.targets >= test.images).all()


def test_an_edit_is_made_to_the_copy_the_editor_read(digit_zoo):
    """Training shows the editor permuted, sign-flipped copies: each edit must be added to the copy it
    was made for. An edit that scales every parameter by 1.1 renders the same for any copy (float64)."""
    records = [r.with_layers(l.with_tensors(**{n: t.double() for n, t in l.tensors.items()}) for l in r.layers)
               for r in load_split(digit_zoo, "test").records[:4]]
    generator = torch.Generator().manual_seed(3)
    copies = [random_sign_flips(random_equivalent_permutation(r, generator), generator) for r in records]
    encoder = editor("sne", records)
    encoder.weight_values = lambda inputs, read: [r.with_layers(
        l.with_tensors(**{n: 0.1 * t for n, t in l.tensors.items()}) for l in r.layers) for r in read]
    expected = render([1.1 * p for p in stack_parameters(records)])
    for networks in (records, copies):
        torch.testing.assert_close(render_edited(encoder, encoder.prepare_weights(networks)), expected,
                                   atol=1e-10, rtol=0)
    # Not vacuous: the copies' parameters differ from the originals', so editing the originals by the
    # copies' edits renders something else.
    misplaced = render([p + 0.1 * q for p, q in zip(stack_parameters(records), stack_parameters(copies))])
    assert (misplaced - expected).abs().max() > 1e-3


def test_a_short_training_run_edits_better_than_no_edit(digit_zoo, tmp_path):
    config = TrainConfig(zoo=str(digit_zoo.path), target=EDIT_TARGET, encoder="dwsnet",
                         encoder_options={"hidden": 16, "num_layers": 2}, epochs=12, batch_size=8, lr=3e-3,
                         seed=0, device="cpu")
    summary = train_editor(config, tmp_path / "run", progress=False)
    assert summary["epochs"] == 12 and summary["encoder_parameters"] > 0
    trained, meta = load_editor(tmp_path / "run", device="cpu")
    assert meta["config"]["target"] == EDIT_TARGET
    test = load_split(digit_zoo, "test")
    no_edit = float(mse_per_network(render(test.parameters), test.targets).mean())
    edited = float(mse_per_network(edited_renders(trained, test), test.targets).mean())
    # Reached here: 0.0081 against 0.0198 for no edit.
    assert edited < 0.7 * no_edit
    with pytest.raises(SneError, match="without the invariance regulariser"):
        train_editor(replace(config, invariance_weight=0.1), tmp_path / "other", progress=False)


def test_other_zoos_are_refused(tmp_path):
    sine = generate_zoo("sine-inr", tmp_path / "sine", n=4, seed=0, options={"steps": 2}, command="", progress=False)
    with pytest.raises(SneError, match="recipe 'sine-inr'; style editing needs a digit-inr zoo"):
        open_digit_inr_zoo(sine.path)


def test_cli_runs_end_to_end_and_merges_results(digit_zoo, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    common = ["bench", "style-edit", "--zoo", str(digit_zoo.path), "--epochs", "2", "--batch-size", "8",
              "--runs", str(tmp_path / "runs"), "--results", str(results), "--device", "cpu",
              "-o", "mlp.hidden=[16]", "-o", "ng_gnn.hidden=16", "-o", "ng_gnn.num_layers=1"]
    code, _, err = run_cli([*common, "--encoders", "statnn"], capsys)
    assert code == 2 and "cannot output one value per parameter" in err and not results.exists()
    code, _, err = run_cli([*common, "--encoders", "mlp"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*common, "--encoders", "ng_gnn"], capsys)
    assert code == 0, err
    path = results / "style_edit_independent.json"
    data = json.loads(path.read_text())
    assert data["benchmark"] == "style_edit" and data["zoo"]["recipe"] == "digit-inr"
    assert [e["encoder"] for e in data["entries"]] == ["mlp", "ng_gnn"] and len(data["commands"]) == 2
    for entry in data["entries"]:
        metrics = entry["metrics"]
        assert metrics["n"] == 9 and metrics["no_edit_test_mse"] == data["no_edit"]["test_mse"]
        assert metrics["relative_to_no_edit"] == pytest.approx(metrics["test_mse"] / metrics["no_edit_test_mse"])
        assert entry["epochs"] == 2 and entry["hardware"]["device"] == "cpu" and Path(entry["plot"]).stat().st_size
    # The results page renders the file.
    page = load_script("scripts/make_results_md.py")
    monkeypatch.setattr(page, "ROOT", tmp_path)
    text = "\n".join(page.style_edit_section(path, data))
    assert "| no edit (render of the INR as fitted) |" in text and "| ng_gnn (batch_size=8, hidden=16, num_layers=1) | 0 |" in text

    import sne.bench.style_edit

    seen = {}

    def record_names(zoo, runs, *args, **kwargs):
        seen["encoders"] = list(runs.encoders)
        return path

    monkeypatch.setattr(sne.bench.style_edit, "run_style_edit_benchmark", record_names)
    code, _, err = run_cli([*common, "--encoders", "all"], capsys)
    assert code == 0, err
    assert seen["encoders"] == weight_output_encoder_names()
