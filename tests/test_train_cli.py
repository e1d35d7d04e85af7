"""End to end: zoo -> train -> evaluate -> predict, resume after interruption, and bad input at the CLI."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import fit_killed_in_second_epoch, run_cli
from sne.train import TrainConfig, fit, load_run
from sne.zoo import Zoo

SMALL_SNE = {"hidden": 32, "heads": 4, "chunk_size": 32, "out_dim": 16}


@pytest.fixture(scope="module")
def shared_zoo(shared_sine_zoo) -> Zoo:
    return shared_sine_zoo


def small_config(zoo: Zoo, **overrides) -> TrainConfig:
    values = dict(zoo=str(zoo.path), target="frequency", encoder="sne", encoder_options=SMALL_SNE, epochs=8,
                  batch_size=16, lr=2e-3, milestones=[0.8], head_hidden=[64], seed=0, device="cpu", invariance_weight=0.0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained_run(shared_zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sne"
    fit(small_config(shared_zoo), out, progress=False)
    return out


def test_training_lowers_loss_and_beats_the_mean_predictor(trained_run, capsys):
    history = json.loads((trained_run / "history.json").read_text())
    assert len(history) == 8
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    code, out, _ = run_cli(["evaluate", str(trained_run), "--json", "--device", "cpu"], capsys)
    assert code == 0
    result = json.loads(out)
    metrics = result["metrics"]
    assert metrics["n"] == 40
    assert metrics["mse"] < 0.5 * metrics["mean_predictor_mse"]
    assert metrics["kendall_tau"] > 0.5
    assert (trained_run / "eval.json").exists() and Path(result["plot"]).stat().st_size > 0
    assert result["permutation_sensitivity"]["mean_abs_change"] >= 0


def test_evaluate_by_a_column_gives_each_groups_metrics(trained_run, tmp_path, capsys):
    out = tmp_path / "by.json"
    code, printed, _ = run_cli(["evaluate", str(trained_run), "--by", "frequency", "--bins", "4", "--out", str(out),
                                "--json", "--device", "cpu"], capsys)
    assert code == 0
    result = json.loads(printed)
    groups = result["by"]["groups"]
    assert [g["n"] for g in groups] == [10, 10, 10, 10]
    assert all(g["low"] < g["high"] for g in groups)
    assert all(a["high"] == b["low"] for a, b in zip(groups, groups[1:]))
    # Squared errors add up over a partition: the groups hold the networks their predictions belong to.
    total = sum(g["n"] * g["mse"] for g in groups) / result["metrics"]["n"]
    assert total == pytest.approx(result["metrics"]["mse"], rel=1e-9)
    assert json.loads(out.read_text())["by"] == result["by"]


def test_evaluate_by_a_column_the_zoo_lacks_names_its_columns_and_writes_nothing(trained_run, tmp_path, capsys):
    out = tmp_path / "by.json"
    code, _, err = run_cli(["evaluate", str(trained_run), "--by", "learning_rate", "--out", str(out), "--device", "cpu"],
                           capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "'learning_rate'" in err and "frequency" in err
    assert not out.exists()


def test_bench_breakdown_keeps_one_row_per_run_and_zoo_and_refuses_other_groupings(trained_run, shared_zoo, tmp_path,
                                                                                    capsys):
    from project_scripts import load_script

    args = ["bench", "breakdown", str(trained_run), "--by", "frequency", "--bins", "4", "--name", "where",
            "--results", str(tmp_path)]
    assert run_cli(args, capsys)[0] == 0
    assert run_cli([*args, "--zoo", str(shared_zoo.path)], capsys)[0] == 0  # the run's own zoo again: replaced
    path = tmp_path / "where.json"
    data = json.loads(path.read_text())
    assert len(data["entries"]) == 1 and len(data["commands"]) == 2
    entry = data["entries"][0]
    assert entry["encoder_options_given"] == SMALL_SNE and entry["seed"] == 0
    assert sum(g["n"] for g in entry["by"]["groups"]) == entry["metrics"]["n"]
    before = path.read_bytes()
    code, _, err = run_cli([*args[:-4], "--bins", "3", "--name", "where", "--results", str(tmp_path)], capsys)
    assert code == 2 and "nothing written" in err and path.read_bytes() == before
    results_page = load_script("scripts/make_results_md.py")
    results_page.ROOT = tmp_path  # the page names result files relative to the repository
    page = "\n".join(results_page.breakdown_section(path, data))
    assert "test metrics by `frequency`" in page
    assert page.count("| sne (") == 1 and page.count(", n=10 |") == 4


@pytest.mark.parametrize("args, named", [
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--workers", "-1"], "--workers"),
    (["--invariance-weight", "nan"], "--invariance-weight"), (["--epochs", "0"], "--epochs"),
    (["-o", "part_window=1"], "part_window"),
])
def test_unusable_training_numbers_are_one_line_before_anything_is_written(args, named, shared_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--zoo", str(shared_zoo.path), "--target", "frequency", "--out", str(out),
                            "--device", "cpu", *args], capsys)
    assert code == 2 and named in err and "Traceback" not in err and "a bug" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_zoo_without_validation_networks_is_refused_before_anything_is_written(shared_zoo, tmp_path, capsys):
    from sne.zoo import export_zoo
    from sne.zoo.folder import import_folder

    table = pd.read_csv(export_zoo(shared_zoo, tmp_path / "shared"))
    table["split"] = ["test" if i % 5 == 0 else "train" for i in range(len(table))]
    table.to_csv(tmp_path / "table.csv", index=False)
    zoo = import_folder(tmp_path / "shared", tmp_path / "no-val", targets=tmp_path / "table.csv")
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--zoo", str(zoo.path), "--target", "frequency", "--out", str(out), "--device",
                            "cpu"], capsys)
    assert code == 2 and "0 val network(s)" in err and str(zoo.path) in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_run_given_its_zoo_by_a_relative_path_is_evaluated_and_resumed_from_anywhere(shared_zoo, tmp_path, capsys,
                                                                                         monkeypatch):
    run = tmp_path / "run"
    train = ["train", "--target", "frequency", "--out", str(run), "--epochs", "1", "--device", "cpu", "-o", "hidden=16",
             "-o", "chunk_hidden=16", "--batch-size", "16"]
    monkeypatch.chdir(shared_zoo.path.parent)
    assert run_cli([*train, "--zoo", shared_zoo.path.name], capsys)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["evaluate", str(run), "--json", "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out)["metrics"]["n"] == len(shared_zoo.split_ids("test"))
    monkeypatch.chdir(shared_zoo.path.parent.parent)
    code, _, err = run_cli([*train, "--zoo", f"{shared_zoo.path.parent.name}/{shared_zoo.path.name}"], capsys)
    assert code == 0, err  # the same zoo spelled from elsewhere resumes (the run is complete: nothing to do)
    shutil.copytree(shared_zoo.path, tmp_path / "copy")
    code, _, err = run_cli([*train, "--zoo", str(tmp_path / "copy")], capsys)
    assert code == 2 and "different configuration" in err


def test_weights_too_large_for_float32_are_one_line_and_never_a_nan_prediction(trained_run, shared_zoo, tmp_path,
                                                                                capsys):
    from sne.weights.io import save_record_file

    record = shared_zoo.records([0])[0]
    huge = record.with_layers(layer.with_tensors(**{k: v * 1e37 for k, v in layer.tensors.items()})
                              for layer in record.layers)
    save_record_file(huge, tmp_path / "huge.safetensors")
    save_record_file(record, tmp_path / "fine.safetensors")
    code, out, err = run_cli(["predict", str(trained_run), str(tmp_path / "fine.safetensors"),
                              str(tmp_path / "huge.safetensors"), "--json", "--device", "cpu"], capsys)
    assert code == 2
    fine, bad = json.loads(out, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))
    largest = max(float(t.abs().max()) for layer in huge.layers for t in layer.tensors.values())
    assert isinstance(fine["prediction"], float) and "not finite" in bad["error"] and f"{largest:.3g}" in bad["error"]
    assert "huge.safetensors" in err and "fine.safetensors" not in err.splitlines()[0]


def test_file_names_are_printed_as_they_are(trained_run, tmp_path, capsys):
    odd = tmp_path / "bad:fire:[bold]x.pt"
    odd.write_bytes(b"")
    code, _, err = run_cli(["predict", str(trained_run), str(odd), "--device", "cpu"], capsys)
    assert code == 2 and str(odd) in err


def test_strict_json_has_no_nan():
    from sne.io_utils import json_text

    assert json.loads(json_text({"tau": float("nan"), "rows": [1.5, float("inf"), (float("-inf"),)]})) == \
        {"tau": None, "rows": [1.5, None, [None]]}


def test_an_empty_list_of_seeds_is_refused_before_anything_is_written(shared_zoo, tmp_path, capsys):
    code, _, err = run_cli(["bench", "inr", "--zoo", str(shared_zoo.path), "--seeds", "", "--results", str(tmp_path),
                            "--runs", str(tmp_path / "runs"), "--device", "cpu"], capsys)
    assert code == 2 and "--seeds is empty" in err and not list(tmp_path.iterdir())


def test_a_network_of_an_architecture_the_run_never_saw_gets_one_note(trained_run, shared_zoo, tmp_path, capsys):
    from sne.weights.io import save_record_file

    save_record_file(shared_zoo.records([0])[0], tmp_path / "seen.safetensors")
    (tmp_path / "narrow.py").write_text(
        "import torch\nfrom torch import nn\nfrom sne.zoo.siren import Sine\n\n\n"
        "def build():\n    return nn.Sequential(nn.Linear(1, 8), Sine(), nn.Linear(8, 1)), torch.zeros(1, 1)\n")
    torch.manual_seed(0)
    from sne.zoo.siren import Sine
    torch.save(torch.nn.Sequential(torch.nn.Linear(1, 8), Sine(), torch.nn.Linear(8, 1)).state_dict(),
               tmp_path / "narrow.pt")
    code, out, err = run_cli(["predict", str(trained_run), str(tmp_path / "seen.safetensors"), "--device", "cpu"],
                             capsys)
    assert code == 0 and "note:" not in err
    code, out, err = run_cli(["predict", str(trained_run), str(tmp_path / "narrow.pt"), "--arch",
                              f"{tmp_path / 'narrow.py'}:build", "--device", "cpu"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 1
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "narrow.pt" in notes[0] and "none of the 1 the run was trained on" in notes[0]


def test_metric_groups_partition_every_column_kind():
    import numpy as np
    import pandas as pd

    from sne.train.evaluate import metric_groups

    numbers = pd.Series(np.arange(20, dtype=float))
    groups = metric_groups(numbers, bins=4)
    assert [g["members"].sum() for g in groups] == [5, 5, 5, 5]
    assert groups[-1]["group"].endswith("]") and groups[0]["group"].endswith(")")
    few = metric_groups(pd.Series([3, 1, 3, 1, 2]), bins=4)
    assert [(g["group"], int(g["members"].sum())) for g in few] == [("1", 2), ("2", 1), ("3", 2)]
    names = metric_groups(pd.Series(["adam", None, "sgd", "adam"]), bins=4)
    assert [(g["group"], int(g["members"].sum())) for g in names] == [("adam", 2), ("sgd", 1), ("missing", 1)]
    ties = pd.Series([0.0] * 12 + list(np.arange(1.0, 9.0)))
    tied = metric_groups(ties, bins=4)
    assert (np.stack([g["members"] for g in tied]).sum(0) == 1).all()  # each network in exactly one group


def test_resume_after_interruption_matches_uninterrupted_run(shared_zoo, tmp_path, monkeypatch):
    config = small_config(shared_zoo, epochs=3, encoder_options={**SMALL_SNE, "hidden": 8}, head_hidden=[16])
    fit(config, tmp_path / "whole", progress=False)

    fit_killed_in_second_epoch(config, tmp_path / "resumed", monkeypatch)
    assert len(json.loads((tmp_path / "resumed" / "history.json").read_text())) == 1
    assert not list((tmp_path / "resumed").glob(".*.tmp"))
    fit(config, tmp_path / "resumed", progress=False)

    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert len(resumed["state"]["history"]) == 3
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0)


def test_resume_with_a_different_configuration_is_refused(shared_zoo, trained_run, capsys):
    code, _, err = run_cli(["train", "--zoo", str(shared_zoo.path), "--target", "frequency", "--out",
                            str(trained_run), "--epochs", "5", "--device", "cpu"], capsys)
    assert code == 2
    assert str(trained_run) in err and "different configuration" in err


def test_predict_reads_safetensors_and_state_dict_files(shared_zoo, trained_run, tmp_path, capsys):
    ids = shared_zoo.split_ids("test")[:2]
    records = shared_zoo.records(ids)
    files = [tmp_path / "a.safetensors", tmp_path / "b.pt"]
    save_file({k: v.contiguous() for k, v in records[0].to_state_dict().items()}, files[0])
    torch.save(dict(records[1].to_state_dict()), files[1])
    code, out, err = run_cli(["predict", str(trained_run), *map(str, files), "--device", "cpu"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    # The files name no activations, so the sine phases the run learned are not read, and a note says so.
    assert "note:" in err and "--arch" in err
    expected = load_run(trained_run, device="cpu").predictor.predict([_without_activations(r) for r in records])
    for line, value in zip(lines, expected):
        assert float(line.split("\t")[2]) == pytest.approx(float(value), rel=1e-4, abs=1e-5)


def test_python_api_takes_modules_state_dicts_and_files(shared_zoo, trained_run, tmp_path):
    record = shared_zoo.records(shared_zoo.split_ids("test")[:1])[0]
    module = torch.nn.Sequential()
    module.add_module("layers", torch.nn.Sequential(*(torch.nn.Linear(l.in_features, l.out_features) for l in record.layers)))
    module.load_state_dict(record.to_state_dict())
    path = tmp_path / "inr.safetensors"
    save_file({k: v.contiguous() for k, v in record.to_state_dict().items()}, path)
    run = load_run(trained_run, device="cpu")
    predictions = run.predict([_without_activations(record), module, dict(record.to_state_dict()), str(path)])
    assert predictions.shape == (4,)
    # The module's Linear layers compute no sine either: none of the four has phases to read.
    assert predictions == pytest.approx([predictions[0]] * 4, rel=1e-5)
    assert run.embed([module]).shape == (1, SMALL_SNE["out_dim"])


def _without_activations(record):
    """``record`` as a bare state_dict of it reads: the same layers, activations unknown."""
    from sne.weights.record import make_layer

    return record.with_layers([make_layer(layer.name, layer.level, layer.weight, layer.bias) for layer in record.layers])


def _bad_files(tmp_path: Path, good: dict) -> dict[str, Path]:
    truncated = tmp_path / "truncated.safetensors"
    save_file(good, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00not json at all")
    not_state_dict = tmp_path / "object.pt"
    with open(not_state_dict, "wb") as handle:
        pickle.dump(Path("/etc/passwd"), handle)  # a pickle that would run arbitrary constructors
    nan_weights = tmp_path / "nan.safetensors"
    save_file({**good, "layers.1.weight": torch.full_like(good["layers.1.weight"], float("nan"))}, nan_weights)
    batchnorm = tmp_path / "batchnorm.pt"
    torch.save({**good, "bn.weight": torch.ones(4), "bn.bias": torch.zeros(4), "bn.running_mean": torch.zeros(4)},
               batchnorm)
    return {"truncated": truncated, "garbage": garbage, "not_state_dict": not_state_dict, "nan": nan_weights,
            "batchnorm": batchnorm}


@pytest.mark.parametrize("case", ["truncated", "garbage", "not_state_dict", "nan", "batchnorm"])
def test_bad_checkpoint_files_give_one_line_errors(case, shared_zoo, trained_run, tmp_path, capsys):
    good = {k: v.contiguous() for k, v in shared_zoo.records([0])[0].to_state_dict().items()}
    bad = _bad_files(tmp_path, good)[case]
    embeddings = tmp_path / "codes.npy"
    for command in (["predict", str(trained_run), str(bad)],
                    ["embed", str(trained_run), str(bad), "--out", str(embeddings)]):
        code, out, err = run_cli([*command, "--device", "cpu"], capsys)
        assert code == 2
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert bad.name in err
        assert "Traceback" not in err
    assert not embeddings.exists()


def test_unknown_target_and_encoder_names(shared_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--zoo", str(shared_zoo.path), "--target", "accuracy", "--out", str(out)], capsys)
    assert code == 2 and "accuracy" in err and "frequency" in err
    code, _, err = run_cli(["train", "--zoo", str(shared_zoo.path), "--target", "frequency", "--encoder", "nope",
                            "--out", str(out)], capsys)
    assert code == 2 and "nope" in err and "sne" in err
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "1", "-3"])
def test_too_few_training_networks_are_refused_before_anything_is_written(value, shared_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--zoo", str(shared_zoo.path), "--target", "frequency", "--max-train", value,
                            "--out", str(out), "--device", "cpu"], capsys)
    assert code == 2 and f"--max-train must be at least 2, got {value}" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
