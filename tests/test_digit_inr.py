"""The digit-INR recipe: 2-D closed-form gradients, image mapping, reconstruction, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from sne.data import load_dataset
from sne.errors import SneError
from sne.zoo import Zoo, generate_zoo
from sne.data.images import IMAGE_SIZE as SIDE
from sne.zoo.digit_inr import DigitInr, pixel_grid, source_images
from sne.zoo.siren import Siren, initial_parameters, loss_and_grads, siren_forward
from project_scripts import load_script

RECIPE = DigitInr()
DIGITS = load_dataset("digits")
N_TRAIN, N_TEST = len(DIGITS.train_y), len(DIGITS.test_y)


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory) -> Zoo:
    """Four INRs at the default settings; ids 0..3 fit the dataset's train images 0..3."""
    out = tmp_path_factory.mktemp("digit") / "zoo"
    return generate_zoo("digit-inr", out, n=4, seed=0, options={"group_size": 4}, command="test", progress=False)


def test_closed_form_gradients_match_autograd_in_two_dimensions():
    params = [p.double().requires_grad_() for p in initial_parameters([1, 2, 3], in_features=2)]
    inputs = pixel_grid()[::7].double()
    targets = source_images(DIGITS, np.arange(3))["images"][:, ::7].double()
    (siren_forward(params, inputs) - targets).square().mean(1).sum().backward()
    mse, grads = loss_and_grads([p.detach() for p in params], inputs, targets)
    assert torch.allclose(mse, (siren_forward(params, inputs) - targets).square().mean(1))
    for param, grad in zip(params, grads):
        assert grad.shape == param.shape and grad.is_contiguous()
        torch.testing.assert_close(grad, param.grad, rtol=1e-10, atol=1e-12)


def test_pixel_grid_is_row_major_over_the_square():
    grid = pixel_grid()
    assert grid.shape == (SIDE * SIDE, 2)
    assert grid[0].tolist() == [-1.0, -1.0] and grid[-1].tolist() == [1.0, 1.0]
    # Pixel (row 0, column 1): the second input (column) moves first.
    assert grid[1, 0] == -1.0 and grid[1, 1] > -1.0 and grid[SIDE, 0] > -1.0


def test_ids_map_to_train_then_test_images_and_repeat():
    total = N_TRAIN + N_TEST
    ids = np.array([0, N_TRAIN - 1, N_TRAIN, total - 1, total, total + N_TRAIN])
    source = source_images(DIGITS, ids)
    assert source["image_split"].tolist() == ["train", "train", "test", "test", "train", "test"]
    assert source["image_index"].tolist() == [0, N_TRAIN - 1, 0, N_TEST - 1, 0, 0]
    assert source["repeat"].tolist() == [0, 0, 0, 0, 1, 1]
    for k, (split, index) in enumerate(zip(source["image_split"], source["image_index"])):
        x, y = (DIGITS.train_x, DIGITS.train_y) if split == "train" else (DIGITS.test_x, DIGITS.test_y)
        assert torch.equal(source["images"][k], x[index, 0].flatten())
        assert source["labels"][k] == y[index]


def test_init_seeds_independent_or_shared_per_pass():
    options = RECIPE.resolve_options({})
    assert len({RECIPE.init_seed(0, i, 0, options) for i in range(5)}) == 5
    shared = RECIPE.resolve_options({"init": "shared"})
    assert RECIPE.init_seed(0, 0, 0, shared) == RECIPE.init_seed(0, 7, 0, shared)
    # A second pass over the dataset must not duplicate the first pass's networks.
    assert RECIPE.init_seed(0, 0, 0, shared) != RECIPE.init_seed(0, N_TRAIN + N_TEST, 1, shared)


def test_option_validation():
    assert RECIPE.resolve_options({}) == {
        "init": "independent", "steps": 200, "lr": 2e-3, "group_size": 50, "device": "cpu", "compile": False,
        "dataset": "digits",
    }
    for bad, message in [
        ({"dataset": "nope"}, "dataset.*digits"),
        ({"init": "random"}, "init"),
        ({"steps": 0}, "steps"),
        ({"lr": 0}, "lr"),
        ({"points": 10}, "no option 'points'"),
    ]:
        with pytest.raises(SneError, match=message):
            RECIPE.resolve_options(bad)


def test_fitted_inr_reconstructs_its_image(small_zoo):
    metadata = small_zoo.metadata
    assert small_zoo.targets["label"] == {
        "kind": "class", "num_classes": 10, "description": "class of the fitted image"
    }
    assert metadata["image_split"].tolist() == ["train"] * 4 and metadata["image_index"].tolist() == [0, 1, 2, 3]
    assert metadata["label"].tolist() == DIGITS.train_y[:4].tolist()
    for record, row in zip(small_zoo.records(range(4)), metadata.itertuples()):
        model = Siren(in_features=2)
        model.load_state_dict(record.to_state_dict())
        with torch.no_grad():
            image = model(pixel_grid()).reshape(SIDE, SIDE)
        mse = float((image - DIGITS.train_x[row.image_index, 0]).square().mean())
        assert mse < 1e-3, mse  # PSNR above 30 dB
        assert mse == pytest.approx(row.fit_mse, rel=1e-3)
        assert row.psnr == pytest.approx(-10 * np.log10(row.fit_mse))
        # Another image is far from this reconstruction: the fit is specific, not a blur.
        other = DIGITS.train_x[(row.image_index + 1) % 4, 0]
        assert float((image - other).square().mean()) > 0.01


def test_regeneration_and_resume_are_bit_identical(tmp_path, monkeypatch):
    real = DigitInr.generate_shard

    def crash_on_second_shard(self, ids, *args):
        if ids[0] == 2:
            raise RuntimeError("simulated crash")
        return real(self, ids, *args)

    options = {"group_size": 4, "steps": 30}
    whole = generate_zoo("digit-inr", tmp_path / "whole", n=4, seed=0, options=options, shard_size=4, progress=False)
    out = tmp_path / "resumed"
    monkeypatch.setattr(DigitInr, "generate_shard", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_zoo("digit-inr", out, n=4, seed=0, options=options, shard_size=2, progress=False)
    monkeypatch.setattr(DigitInr, "generate_shard", real)
    resumed = generate_zoo("digit-inr", out, n=4, seed=0, options=options, shard_size=2, progress=False)
    # Resumed in two shards (hence two fitting groups), the networks equal one group's, bit for bit.
    for a, b in zip(resumed.records(range(4)), whole.records(range(4))):
        for x, y in zip(a.to_state_dict().values(), b.to_state_dict().values()):
            assert torch.equal(x, y)
    # `position` is where a network sits in its shard's stacked tensors: storage, not metadata.
    assert resumed.metadata.drop(columns="position").equals(whole.metadata.drop(columns="position"))


def test_cli_generates_and_trains_on_labels(tmp_path, capsys):
    out = tmp_path / "cli"
    code, _, err = run_cli(["zoo", "generate", "digit-inr", "--n", "10", "--out", str(out), "--steps", "20",
                            "--init", "shared"], capsys)
    assert code == 0, err
    zoo = Zoo.open(out)
    assert zoo.manifest["recipe"] == "digit-inr" and zoo.manifest["options"]["steps"] == 20
    assert [layer["weight_shape"] for layer in zoo.architecture] == [[32, 2], [32, 32], [1, 32]]
    assert zoo.manifest["dataset"]["name"] == "digits"
    # zoo info says how well the INRs fit their images, over the networks in a split.
    code, printed, err = run_cli(["zoo", "info", str(out), "--json"], capsys)
    assert code == 0, err
    fit = json.loads(printed)["fit"]
    kept = zoo.metadata[zoo.metadata["split"] != "excluded"]
    for column in ("fit_mse", "psnr"):
        assert fit[column]["median"] == pytest.approx(float(kept[column].median()))
        assert fit[column]["min"] == pytest.approx(float(kept[column].min()))
    # The class-target path of training and evaluation, end to end.
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--zoo", str(out), "--target", "label", "--out", str(run), "--epochs", "1",
                            "--device", "cpu", "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8"], capsys)
    assert code == 0, err
    code, printed, err = run_cli(["evaluate", str(run), "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    metrics = json.loads(printed)["metrics"]
    assert metrics["n"] == len(zoo.split_ids("test")) and 0 <= metrics["accuracy"] <= 1
    # The classification benchmark: every encoder's row in one results file, merged across calls.
    results = tmp_path / "results"
    common = ["--zoo", str(out), "--epochs", "1", "--device", "cpu", "--runs", str(tmp_path / "runs"),
              "--results", str(results), "-o", "sne.hidden=8", "-o", "sne.heads=2", "-o", "sne.out_dim=8"]
    code, _, err = run_cli(["bench", "inr", *common], capsys)
    assert code == 2 and "no target 'frequency'" in err
    for encoders in ("sne", "statnn"):
        code, _, err = run_cli(["bench", "digit-inr", *common, "--encoders", encoders], capsys)
        assert code == 0, err
    result = json.loads((results / "digit_inr_label_shared.json").read_text())
    assert [e["encoder"] for e in result["entries"]] == ["sne", "statnn"]
    assert all(0 <= e["metrics"]["accuracy"] <= 1 and e["target"] == "label" for e in result["entries"])


def test_cli_rejects_bad_options(tmp_path, capsys):
    code, _, err = run_cli(["zoo", "generate", "digit-inr", "--n", "3", "--out", str(tmp_path / "bad"),
                            "--lr", "-1"], capsys)
    assert code == 2 and "lr" in err


def test_a_multi_view_zoo_gets_its_own_results_file_and_section(tmp_path, capsys):
    out = tmp_path / "views"
    code, _, err = run_cli(["zoo", "generate", "digit-inr", "--n", "8", "-o", "views=2", "--out", str(out),
                            "--steps", "5", "--init", "shared"], capsys)
    assert code == 0, err
    results = tmp_path / "results"
    (results).mkdir()
    single = {"benchmark": "digit_inr_label", "zoo": {"recipe": "digit-inr", "options": {}, "n": 1797, "seed": 0},
              "entries": []}
    (results / "digit_inr_label_shared.json").write_text(json.dumps(single))  # the one-view table stays
    code, _, err = run_cli(["bench", "digit-inr", "--zoo", str(out), "--encoders", "statnn", "--epochs", "1",
                            "--device", "cpu", "--runs", str(tmp_path / "runs"), "--results", str(results)], capsys)
    assert code == 0, err
    assert json.loads((results / "digit_inr_label_shared.json").read_text()) == single
    data = json.loads((results / "digit_inr_label_shared_views2.json").read_text())
    module = load_script("scripts/make_results_md.py")
    module.ROOT = tmp_path
    section = "\n".join(module.digit_inr_section(results / "digit_inr_label_shared_views2.json", data))
    assert "2 views per image" in section and "2 per digits image" in section


def test_a_multi_view_zoo_reports_progress_in_images():
    from sne.zoo.recipes import FitProgress

    class Count(FitProgress):
        def __init__(self) -> None:
            self.done = []

        def group_done(self, networks: int) -> None:
            self.done.append(networks)

    # The zoo's bar counts images (--n): 3 images of 4 views are 12 INRs fitted in groups of 5.
    options = RECIPE.resolve_options({"views": 4, "steps": 2, "group_size": 5})
    count = Count()
    shard = RECIPE.generate_rows(np.arange(3), 0, options, count, {})
    assert len(shard.rows) == 12 and sum(count.done) == 3 and all(0 <= n <= 2 for n in count.done)
