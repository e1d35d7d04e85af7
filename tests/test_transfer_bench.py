"""The cross-zoo benchmark: train on each zoo, score on every zoo, tables + plots, resume, bad input."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, trained_at_defaults
from project_scripts import load_script
from sne.bench.results import write_merged
from sne.bench.transfer import REFERENCE_STATISTICS, statistic_references, summarize
from sne.encoders import options_for_encoder
from sne.encoders.sne import DEFAULT_OPTIONS, SNEEncoder
from sne.errors import SneError
from sne.train.evaluate import evaluate_run
from sne.zoo import generate_zoo

SMALL_SNE = ["-o", "hidden=16", "-o", "heads=2", "-o", "out_dim=8", "-o", "num_sab=1"]


@pytest.fixture
def sne_trains_unaugmented(monkeypatch):
    """SNE without augmentation as its training default, pinned whatever default SNE ships: run
    directories spell augmentation as a run has it, results rows name it apart from the default."""
    monkeypatch.setattr(SNEEncoder, "default_train_options", {})


@pytest.fixture(scope="module")
def second_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "independent"
    return generate_zoo("sine-inr", out, n=60, seed=5, options={"init": "independent", "steps": 60}, command="test",
                        progress=False)


def test_cross_dataset_writes_a_full_table_plots_and_resumes(sne_trains_unaugmented, shared_sine_zoo, second_zoo,
                                                             tmp_path, capsys):
    zoos = f"{shared_sine_zoo.path},{second_zoo.path}"
    common = ["--encoders", "sne", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
              "--device", "cpu", "--epochs", "2", "--batch-size", "16", *SMALL_SNE]
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", zoos, *common], capsys)
    assert code == 2 and "no target 'test_accuracy'" in err
    # The sine zoos stand in for CNN zoos: the benchmark only needs a target every zoo has.
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", zoos, "--target", "frequency", *common], capsys)
    assert code == 0, err
    path = tmp_path / "results" / "cross_dataset.json"
    result = json.loads(path.read_text())
    labels = [z["label"] for z in result["test_zoos"]]
    assert labels == ["shared", "independent"]
    assert set(result["references"]) == set(labels)
    assert all(set(r) == set(REFERENCE_STATISTICS) for r in result["references"].values())
    # Runs and table rows are named by encoder and the options given, so variants never mix.
    name = "sne_batch_size-16_heads-2_hidden-16_num_sab-1_out_dim-8"
    table = result["summary"][name]
    assert set(table) == set(labels)
    for row in table.values():
        assert set(row["tau"]) == set(labels)
        assert all(-1 <= cell["mean"] <= 1 for cell in row["tau"].values())
        assert row["average"] == pytest.approx(sum(c["mean"] for c in row["tau"].values()) / 2)
    for entry in result["entries"]:
        assert entry["epochs"] == 2
        for kind in ("scatter", "embedding"):
            assert (tmp_path / "results" / "plots").joinpath(entry["plots"][kind].split("/")[-1]).is_file()
    # Transfer tables rank and score: the sensitivities, most of an evaluation's time, are not measured.
    run_dir = tmp_path / "runs" / "frequency" / f"{name}_seed0" / "shared"
    written = json.loads((run_dir / "eval_independent.json").read_text())
    assert written["permutation_sensitivity"] is None and written["sign_flip_sensitivity"] is None
    full = evaluate_run(run_dir, second_zoo.path, device="cpu", out=tmp_path / "full.json", plot=False)
    assert full["permutation_sensitivity"]["permutations"] == 5 and full["metrics"] == written["metrics"]
    # Re-running resumes the finished runs instead of training again.
    history = tmp_path / "runs" / "frequency" / f"{name}_seed0" / "shared" / "history.json"
    before = history.stat().st_mtime_ns
    # One zoo of the two is other data: refused in results/, so its rows go to a directory of their own.
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", str(shared_sine_zoo.path), "--target", "frequency",
                            *common], capsys)
    assert code == 2 and "other zoos" in err
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", str(shared_sine_zoo.path), "--target", "frequency",
                            *common, "--results", str(tmp_path / "results-shared")], capsys)
    assert code == 0, err
    assert history.stat().st_mtime_ns == before


def test_summary_averages_seeds_and_keeps_errors_out_of_the_mean():
    entries = [
        {"encoder": "e", "train_zoo": "a", "evaluations": {"a": {"kendall_tau": 0.5}, "b": {"error": "refused"}}},
        {"encoder": "e", "train_zoo": "a", "evaluations": {"a": {"kendall_tau": 0.7}, "b": {"error": "refused"}}},
    ]
    row = summarize(entries)["e"]["a"]
    assert row["tau"]["a"]["mean"] == pytest.approx(0.6) and row["tau"]["a"]["seeds"] == 2
    assert row["tau"]["b"] is None
    assert row["average"] == pytest.approx(0.6)


def test_the_same_zoo_twice_is_refused(shared_sine_zoo, tmp_path, capsys):
    code, _, err = run_cli(["bench", "cross-arch", "--train", str(shared_sine_zoo.path), "--test",
                            f"{shared_sine_zoo.path},{shared_sine_zoo.path}", "--runs", str(tmp_path)], capsys)
    assert code == 2 and "share the label" in err


def test_results_accumulate_over_invocations_on_the_same_data_only(tmp_path):
    path = tmp_path / "r.json"
    key = lambda e: e["encoder"]  # noqa: E731
    data = lambda r: r["zoo"]  # noqa: E731
    write_merged(path, {"benchmark": "b", "zoo": 1, "command": "c1", "entries": [{"encoder": "a", "v": 1}]}, data, key)
    write_merged(path, {"benchmark": "b", "zoo": 1, "command": "c2", "entries": [{"encoder": "b", "v": 2}]}, data, key)
    write_merged(path, {"benchmark": "b", "zoo": 1, "command": "c3", "entries": [{"encoder": "a", "v": 3}]}, data, key)
    result = json.loads(path.read_text())
    assert sorted((e["encoder"], e["v"]) for e in result["entries"]) == [("a", 3), ("b", 2)]
    assert result["commands"] == ["c1", "c2", "c3"]
    # Other data: the old entries describe something else, and replacing them would lose them.
    before = path.read_bytes()
    with pytest.raises(SneError, match="other zoos"):
        write_merged(path, {"benchmark": "b", "zoo": 2, "command": "c4", "entries": [{"encoder": "b", "v": 4}]}, data, key)
    assert path.read_bytes() == before


def test_scoped_encoder_options_reach_only_their_encoder():
    options = {"hidden": 16, "sne.hidden": 64, "ng_gnn.layers": 2}
    assert options_for_encoder("sne", options) == {"hidden": 64}
    assert options_for_encoder("ng_gnn", options) == {"hidden": 16, "layers": 2}
    assert options_for_encoder("mlp", options) == {"hidden": 16}


def test_summary_keeps_an_encoder_with_options_apart_from_its_defaults():
    # Rows trained at today's defaults, one of them given an option apart from them.
    trained = {"train_zoo": "a", "encoder_options_resolved": dict(DEFAULT_OPTIONS), **trained_at_defaults("sne")}
    entries = [
        {"encoder": "sne", **trained, "evaluations": {"a": {"kendall_tau": 0.5}}},
        {"encoder": "sne", **trained, "encoder_options_given": {"use_input_positions": True},
         "encoder_options_resolved": {**DEFAULT_OPTIONS, "use_input_positions": True},
         "evaluations": {"a": {"kendall_tau": 0.9}}},
    ]
    summary = summarize(entries)
    assert set(summary) == {"sne", "sne_use_input_positions-true"}
    assert summary["sne"]["a"]["average"] == pytest.approx(0.5)
    assert summary["sne_use_input_positions-true"]["a"]["average"] == pytest.approx(0.9)


def test_augmented_runs_are_a_configuration_of_their_own(sne_trains_unaugmented, shared_sine_zoo, tmp_path, capsys):
    common = ["--zoos", str(shared_sine_zoo.path), "--target", "frequency", "--encoders", "sne", "--runs",
              str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu", "--epochs", "1",
              "--batch-size", "16", *SMALL_SNE]
    for extra in (["--no-augment-permutations"], ["--augment-permutations"]):
        code, _, err = run_cli(["bench", "cross-dataset", *common, *extra], capsys)
        assert code == 0, err
    result = json.loads((tmp_path / "results" / "cross_dataset.json").read_text())
    plain = "sne_batch_size-16_heads-2_hidden-16_num_sab-1_out_dim-8"
    augmented = "sne_augment_permutations-true_batch_size-16_heads-2_hidden-16_num_sab-1_out_dim-8"
    assert set(result["summary"]) == {plain, augmented}
    assert sorted(e["permutation_augment"] for e in result["entries"]) == [False, True]
    for name in (plain, augmented):
        config = json.loads((tmp_path / "runs" / "frequency" / f"{name}_seed0" / "shared" / "config.json").read_text())
        assert config["permutation_augment"] == (name == augmented)


def test_rows_written_before_the_augmentation_switch_read_as_unaugmented(monkeypatch):
    from sne.bench.runs import configuration_name, options_key

    # How such rows read options that changed default since is tests/test_bench_results.py's.
    monkeypatch.setattr(SNEEncoder, "defaults_of_older_configs", {})
    old_row = {"encoder": "sne", "encoder_options_given": {"hidden": 16}}
    plain = {**old_row, "permutation_augment": False}
    augmented = {**old_row, "permutation_augment": True}
    for training_defaults, names in (
        ({}, ["sne_hidden-16", "sne_augment_permutations-true_hidden-16"]),
        ({"permutation_augment": True}, ["sne_augment_permutations-false_hidden-16", "sne_hidden-16"]),
    ):
        monkeypatch.setattr(SNEEncoder, "default_train_options", training_defaults)
        assert options_key(old_row) == options_key(plain) != options_key(augmented)
        assert [configuration_name(r) for r in (old_row, augmented)] == names


def test_rows_are_evaluated_again_from_their_saved_runs(shared_sine_zoo, second_zoo, tmp_path, capsys):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    results = tmp_path / "results"
    code, _, err = run_cli(["bench", "cross-arch", "--train", str(shared_sine_zoo.path), "--test", str(second_zoo.path),
                            "--target", "frequency", "--encoders", "sne", "--seeds", "0,1", "--epochs", "1",
                            "--batch-size", "16", "--runs", str(tmp_path / "runs"), "--results", str(results),
                            "--device", "cpu", *SMALL_SNE], capsys)
    assert code == 0, err
    path = results / "cross_arch.json"
    measured = json.loads(path.read_text())
    tampered = json.loads(path.read_text())
    for entry in tampered["entries"]:
        for cell in entry["evaluations"].values():
            cell["kendall_tau"] = 99.0
    tampered["references"] = {}
    path.write_text(json.dumps(tampered))
    gone = next(e["run"] for e in measured["entries"] if e["seed"] == 1)
    shutil.rmtree(gone)
    script = Path(__file__).resolve().parents[1] / "scripts" / "reevaluate_transfer.py"
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process computed the rows
    done = subprocess.run([sys.executable, str(script), str(path), "--encoders", "sne", "--no-plots"],
                          capture_output=True, text=True, env=one_thread)
    assert done.returncode == 0, done.stderr
    assert f"run gone, row left as it was: {gone}" in done.stdout
    after = {e["seed"]: e for e in json.loads(path.read_text())["entries"]}
    before = {e["seed"]: e for e in measured["entries"]}
    # Another process may sum in another order (thread count): the metrics agree to rounding.
    assert after[0]["evaluations"].keys() == before[0]["evaluations"].keys()
    for zoo, cell in before[0]["evaluations"].items():
        assert after[0]["evaluations"][zoo] == pytest.approx(cell, rel=1e-5, abs=1e-6)
    assert "reevaluate_transfer.py" in after[0]["reevaluated_by"]
    assert json.loads(path.read_text())["references"] == measured["references"]
    assert all(cell["kendall_tau"] == 99.0 for cell in after[1]["evaluations"].values()) and "reevaluated_by" not in after[1]
    path.write_text("{not json")
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and str(path) in done.stderr


def test_reference_statistics_are_the_taus_of_one_number_read_off_the_weights(shared_sine_zoo):
    from scipy.stats import kendalltau

    ids = shared_sine_zoo.split_ids("test")
    records = shared_sine_zoo.records(ids)
    truth = shared_sine_zoo.metadata.set_index("id").loc[ids, "frequency"].to_numpy()
    # A SIREN is a chain: its output layer is its last.
    output_norm = [float(r.layers[-1].weight.double().norm()) for r in records]
    largest = [max(float(t.abs().max()) for layer in r.layers for t in (layer.weight, layer.bias) if t is not None)
               for r in records]
    references = statistic_references([shared_sine_zoo], "frequency", batch=7)["shared"]
    assert references["output_weight_norm"] == pytest.approx(kendalltau(output_norm, truth).statistic, abs=1e-12)
    assert references["largest_weight"] == pytest.approx(kendalltau(largest, truth).statistic, abs=1e-12)
    # A target that does not vary ranks nothing: no tau, not NaN in a JSON file.
    constant = shared_sine_zoo.metadata.assign(frequency=1.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shared_sine_zoo, "metadata", constant)
        assert statistic_references([shared_sine_zoo], "frequency")["shared"] == dict.fromkeys(REFERENCE_STATISTICS)


def test_a_capped_training_split_a_learning_rate_and_a_schedule_are_configurations_of_their_own(
        sne_trains_unaugmented, shared_sine_zoo, tmp_path, capsys):
    common = ["--zoos", str(shared_sine_zoo.path), "--target", "frequency", "--encoders", "sne", "--runs",
              str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu", "--epochs", "1",
              "--batch-size", "16", *SMALL_SNE]
    for bad, message in ((["--max-train", "1"], "--max-train must be at least 2, got 1"),
                         (["--schedule", "linear"], "unknown schedule 'linear'"),
                         (["--warmup-epochs", "1"], "shorter than the 1 epochs")):
        code, _, err = run_cli(["bench", "cross-dataset", *common, *bad], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()
    for extra in ([], ["--max-train", "10"], ["--lr", "0.003"], ["--schedule", "cosine", "--warmup-epochs", "0.5"]):
        code, _, err = run_cli(["bench", "cross-dataset", *common, *extra], capsys)
        assert code == 0, err
    result = json.loads((tmp_path / "results" / "cross_dataset.json").read_text())
    # Named where they differ from SNE's defaults: the batch size here, the cap, the rate and the schedule.
    whole = "sne_batch_size-16_heads-2_hidden-16_num_sab-1_out_dim-8"
    capped = "sne_batch_size-16_heads-2_hidden-16_max_train-10_num_sab-1_out_dim-8"
    faster = "sne_batch_size-16_heads-2_hidden-16_lr-0.003_num_sab-1_out_dim-8"
    cosine = "sne_batch_size-16_heads-2_hidden-16_num_sab-1_out_dim-8_schedule-cosine_warmup_epochs-0.5"
    assert set(result["summary"]) == {whole, capped, faster, cosine}
    assert sorted((e["max_train"] or 0) for e in result["entries"]) == [0, 0, 0, 10]
    assert sorted(e["lr"] for e in result["entries"]) == [0.001, 0.001, 0.001, 0.003]
    assert sorted((e["schedule"], e["warmup_epochs"]) for e in result["entries"]) == [
        ("cosine", 0.5), ("multistep", 0.0), ("multistep", 0.0), ("multistep", 0.0)]
    config = json.loads((tmp_path / "runs" / "frequency" / f"{cosine}_seed0" / "shared" / "config.json").read_text())
    assert (config["schedule"], config["warmup_epochs"]) == ("cosine", 0.5)
    assert {e["batch_size"] for e in result["entries"]} == {16}
    config = json.loads((tmp_path / "runs" / "frequency" / f"{capped}_seed0" / "shared" / "config.json").read_text())
    assert config["max_train"] == 10
    config = json.loads((tmp_path / "runs" / "frequency" / f"{faster}_seed0" / "shared" / "config.json").read_text())
    assert config["lr"] == 0.003
    trained = {e["max_train"]: e["train_networks"] for e in result["entries"]}
    assert trained == {None: len(shared_sine_zoo.split_ids("train")), 10: 10}


def test_a_run_that_learned_nothing_is_named_under_its_table(sne_trains_unaugmented, shared_sine_zoo, tmp_path,
                                                               capsys):
    # A learning rate of 1e-12 leaves the encoder and head at their random start.
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", str(shared_sine_zoo.path), "--target", "frequency",
                            "--encoders", "sne", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
                            "--device", "cpu", "--epochs", "1", "--batch-size", "32", "--lr", "1e-12",
                            *SMALL_SNE], capsys)
    assert code == 0, err
    path = tmp_path / "results" / "cross_dataset.json"
    data = json.loads(path.read_text())
    entry = data["entries"][0]
    assert entry["best_val_loss"] >= 0.95 * entry["constant_val_loss"] > 0
    page_script = load_script("scripts/make_results_md.py")
    page_script.ROOT = tmp_path  # where its results/ are
    page = "\n".join(page_script.transfer_section(path, data))
    assert "**Learned nothing**" in page and "seed 0, trained on shared" in page
