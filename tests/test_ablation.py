"""SNE's ablation studies (sne bench ablation), permutation augmentation and the held-out
invariance measures they report."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import run_cli
from sne.bench import ablation
from sne.bench.ablation import STUDIES, study_rows
from sne.bench.runs import configuration_name

#: How run directories name SNE's default schedule and weight averaging (named, as they always were:
#: directories made before these defaults keep their meaning).
DEFAULT_SCHEDULE = "_ema_epochs-2.0_schedule-constant"
from sne.encoders import build_encoder
from sne.errors import SneError
from sne.train.run import TrainConfig, _Augmentation, _EpochBatches
from sne.weights import record_from_module

TINY = ["-o", "hidden=16", "-o", "heads=2", "-o", "out_dim=8"]


@pytest.mark.parametrize("study", [s for s in STUDIES if s != "data-fraction"])
def test_every_row_is_a_valid_sne_configuration(study):
    rows = study_rows(study)
    assert len({row.name for row in rows}) == len(rows)
    for row in rows:
        build_encoder("sne", **{"hidden": 16, "heads": 2, "out_dim": 8, **row.options})
        TrainConfig(zoo="z", target="t", **row.train)


def test_bad_study_rows_and_fractions_are_refused_in_one_line(shared_sine_zoo, tmp_path, capsys):
    common = ["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--runs", str(tmp_path / "runs"),
              "--results", str(tmp_path / "results")]
    for extra, message in (
        (["--study", "nope"], "unknown study 'nope'"),
        (["--study", "chunk-size", "--rows", "chunk-3"], "unknown row(s) chunk-3"),
        (["--study", "components", "--encoders", "statnn"], "belong to the data-fraction study"),
        (["--study", "data-fraction", "--fractions", "0"], "must be in (0, 1]"),
        (["--study", "invariance", "--max-train", "1"], "at least 2"),
    ):
        code, out, err = run_cli([*common, *extra], capsys)
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results").exists()


def test_chunk_size_study_trains_each_row_reports_invariance_and_resumes(shared_sine_zoo, tmp_path, capsys):
    args = ["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--study", "chunk-size", "--rows", "chunk-8,chunk-32",
            "--epochs", "1", "--max-train", "40", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--device", "cpu", *TINY]
    assert run_cli(args, capsys)[0] == 0
    path = tmp_path / "results" / "ablation_chunk-size_shared.json"
    data = json.loads(path.read_text())
    assert sorted(e["row"] for e in data["entries"]) == ["chunk-32", "chunk-8"]
    for entry in data["entries"]:
        assert entry["train_networks"] == 40 and entry["epochs"] == 1
        assert entry["encoder_options_used"]["chunk_size"] == int(entry["row"].split("-")[1])
        sensitivity = entry["permutation_sensitivity"]
        assert sensitivity["permutations"] == 5 and sensitivity["invariance_loss"] >= 0
    (group,) = data["summary"]
    assert group["setting"]["max_train"] == 40
    assert {row["row"]: row["paper"] for row in group["rows"]} == {"chunk-8": 0.09, "chunk-32": 0.056}
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint*")}
    # Again: nothing is retrained, and the rows are replaced, not doubled.
    assert run_cli(args, capsys)[0] == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint*")} == stamps
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
    assert len(json.loads(path.read_text())["entries"]) == 2


def test_a_row_equal_to_full_is_not_trained_twice(shared_sine_zoo, tmp_path, capsys):
    # A base without invariance regularisation or augmentation: the no-invariance row is the full row.
    code, _, _ = run_cli(["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--study", "components",
                          "--rows", "full,no-invariance", "--epochs", "1", "--max-train", "30",
                          "--invariance-weight", "0", "--no-augment-permutations", "--no-augment-sign-flips",
                          "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu",
                          *TINY], capsys)
    assert code == 0
    data = json.loads((tmp_path / "results" / "ablation_components_shared.json").read_text())
    assert [e["row"] for e in data["entries"]] == ["full"]
    assert data["same_as_full"] == [{"row": "no-invariance", "label": "without invariance regularisation or augmentation",
                                     "same_as": "full"}]


def test_data_fraction_study_scales_training_networks_and_plots(shared_sine_zoo, tmp_path, capsys, monkeypatch):
    captions = []
    plot = ablation.error_curves
    monkeypatch.setattr(ablation, "error_curves", lambda *args: captions.append(args[-1]) or plot(*args))
    for encoder, fractions in (("statnn", "0.25,1"), ("mlp", "1")):
        code, _, _ = run_cli(["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--study", "data-fraction",
                              "--encoders", encoder, "--fractions", fractions, "--epochs", "1", "--seeds", "0,1",
                              "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device",
                              "cpu"], capsys)
        assert code == 0
    # One plot of both invocations' rows, whose caption names both commands.
    assert "--encoders statnn" in captions[-1] and "--encoders mlp" in captions[-1]
    data = json.loads((tmp_path / "results" / "ablation_data-fraction_shared.json").read_text())
    train = len(shared_sine_zoo.split_ids("train"))
    networks = {e["row"]: e["train_networks"] for e in data["entries"]}
    assert networks["statnn-fraction-1"] == train
    assert networks["statnn-fraction-0.25"] == -(-train // 4)
    (group,) = data["summary"]
    assert all(row["seeds"] == [0, 1] and "std" in row["normalized_mse"] for row in group["rows"])
    assert (tmp_path / "results" / "plots" / "ablation_data-fraction_shared_0.png").stat().st_size > 0


def _tanh_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def test_augmentation_trains_on_equivalent_networks_drawn_per_batch():
    models = [_tanh_mlp(seed) for seed in range(4)]
    inputs = torch.randn(16, 3, dtype=torch.float64)
    records = [record_from_module(m, inputs) for m in models]
    batches = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    permuting = _Augmentation(permutable=[True] * 4)
    flipping = _Augmentation(permutable=[True] * 4, flippable=[True] * 4)
    augmented = _EpochBatches(list, records, batches, seeds=[11, 12], permute=False, augment=permuting)
    flipped = _EpochBatches(list, records, batches, seeds=[11, 12], permute=False, augment=flipping)
    plain = _EpochBatches(list, records, batches, seeds=[11, 12], permute=False)
    for index, batch in enumerate(batches):
        _, _, members = augmented[index]
        assert augmented[index][2][0].layers[0].weight.equal(members[0].layers[0].weight)  # seeded: drawn again alike
        _, _, signed = flipped[index]
        for position, record, flipped_record in zip(batch.tolist(), members, signed):
            assert not record.layers[0].weight.equal(records[position].layers[0].weight)
            # Sign flips draw from a stream of their own: the permutation drawn is the same.
            assert flipped_record.layers[0].weight.abs().equal(record.layers[0].weight.abs())
            assert not flipped_record.layers[0].weight.equal(record.layers[0].weight)
            for equivalent in (record, flipped_record):
                twin = copy.deepcopy(models[position])
                twin.load_state_dict(equivalent.to_state_dict(), strict=True)
                with torch.no_grad():
                    torch.testing.assert_close(twin(inputs), models[position](inputs), rtol=1e-10, atol=1e-10)
        assert all(a is b for a, b in zip(plain[index][2], [records[i] for i in batch.tolist()]))
    # With the regulariser too, each augmented network is followed by a further equivalent copy.
    both = _EpochBatches(list, records, batches, seeds=[11, 12], permute=True, augment=permuting)
    members = both[0][2]
    assert len(members) == 4 and not members[0].layers[0].weight.equal(members[2].layers[0].weight)


def test_invariance_training_refuses_networks_without_known_symmetries(tmp_path, monkeypatch):
    import sne.train.run as run_module

    class FakeZoo:
        path = tmp_path

    record = record_from_module(_tanh_mlp(0), torch.randn(2, 3, dtype=torch.float64))
    run_module.check_permutable(FakeZoo(), [record])
    monkeypatch.setattr(run_module, "supports_permutation", lambda r: False)
    with pytest.raises(SneError, match="neuron symmetries are unknown"):
        run_module.check_permutable(FakeZoo(), [record])


def test_studies_share_the_runs_they_have_in_common(shared_sine_zoo, tmp_path, capsys):
    # A base without augmentation: full SNE is then the invariance study's lambda-0 row.
    common = ["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--epochs", "1", "--max-train", "30",
              "--no-augment-permutations", "--no-augment-sign-flips", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
              "--device", "cpu", *TINY]
    assert run_cli([*common, "--study", "invariance", "--rows", "lambda-0,augment"], capsys)[0] == 0
    runs = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").glob("*/*"))
    # SNE's default schedule and weight averaging are named, as every run directory names them.
    assert [p.name for p in runs] == ["sne_ema_epochs-2.0_permutation_augment-true_schedule-constant_seed0",
                                      "sne_ema_epochs-2.0_schedule-constant_seed0"]
    assert run_cli([*common, "--study", "components", "--rows", "full"], capsys)[0] == 0
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").glob("*/*")) == runs
    full = json.loads((tmp_path / "results" / "ablation_components_shared.json").read_text())["entries"][0]
    lambda0 = json.loads((tmp_path / "results" / "ablation_invariance_shared.json").read_text())["entries"]
    assert full["metrics"] == next(e for e in lambda0 if e["row"] == "lambda-0")["metrics"]


def test_train_preset_is_for_sne_only_and_unknown_presets_are_named(shared_sine_zoo, tmp_path, capsys):
    common = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--out", str(tmp_path / "run"),
              "--epochs", "1", "--device", "cpu"]
    code, _, err = run_cli([*common, "--encoder", "statnn", "--preset", "paper"], capsys)
    assert code == 2 and "encoder 'statnn' has none" in err
    code, _, err = run_cli([*common, "--preset", "nope"], capsys)
    assert code == 2 and "unknown SNE preset 'nope'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_results_file_on_another_zoo_is_refused_before_any_training(shared_sine_zoo, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    other = {"benchmark": "ablation_chunk-size", "zoo": {"recipe": "sine-inr", "options": {}, "n": 5, "seed": 9},
             "entries": []}
    (results / "ablation_chunk-size_shared.json").write_text(json.dumps(other))
    before = (results / "ablation_chunk-size_shared.json").read_bytes()
    code, _, err = run_cli(["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--study", "chunk-size",
                            "--epochs", "1", "--runs", str(tmp_path / "runs"), "--results", str(results), *TINY],
                           capsys)
    assert code == 2 and "other zoos" in err and "Traceback" not in err
    assert (results / "ablation_chunk-size_shared.json").read_bytes() == before
    assert not (tmp_path / "runs").exists()


def test_run_directories_spell_augmentation_where_it_is_on(shared_sine_zoo, tmp_path):
    from sne.bench.ablation import _row_configs, study_rows
    from sne.bench.runs import BenchRuns

    def names(rows, **train_options):
        runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path, device="cpu",
                         train_options=train_options)
        return [name for _, _, name in _row_configs(study_rows("invariance", rows), runs, shared_sine_zoo,
                                                    "frequency", 0.0, 30)[0]]

    # SNE's defaults augment with both; the lambda rows train without either, whatever the defaults.
    assert names(["augment-sign-flips", "lambda-0", "augment"]) == [  # in the study's order
        f"sne{DEFAULT_SCHEDULE}", f"sne{DEFAULT_SCHEDULE}".replace("_schedule", "_permutation_augment-true_schedule"),
        f"sne{DEFAULT_SCHEDULE}_sign_flip_augment-true".replace("_schedule", "_permutation_augment-true_schedule")]
    assert names(["augment-sign-flips"], sign_flip_augment=False) == [
        "sne_ema_epochs-2.0_permutation_augment-true_schedule-constant_sign_flip_augment-true"]
    # Test-time flips change the evaluation only: the rows evaluated both ways share their runs, and so
    # do settings that differ only there (the base directory names no test-time flips).
    copies = ["augment-sign-flips", "augment-sign-flips-averaged", "augment-sign-flips-averaged-4",
              "augment-sign-flips-averaged-64"]
    assert names(copies) == ["sne_ema_epochs-2.0_permutation_augment-true_schedule-constant_sign_flip_augment-true"] * 4
    assert [row.train["test_time_flips"] for row in study_rows("invariance", copies)] == [0, 16, 4, 64]
    from sne.bench.ablation import _setting, _setting_tag

    def base(**train_options):
        runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path, device="cpu",
                         train_options=train_options)
        return _setting(runs, 0.0, None)

    assert base(test_time_flips=4) != base(test_time_flips=0)  # rows of their own
    assert _setting_tag(base(test_time_flips=4)) == _setting_tag(base(test_time_flips=0)) == _setting_tag(base())
    # Every setting before the batch size could be named trained at 64: giving 64 is that setting.
    assert base(batch_size=64) == base() != base(batch_size=16)
    assert _setting_tag(base(batch_size=64)) == _setting_tag(base()) != _setting_tag(base(batch_size=16))


def test_batch_size_rows_train_at_their_batch_size_in_runs_of_their_own(shared_sine_zoo, tmp_path, capsys):
    args = ["bench", "ablation", "--zoo", str(shared_sine_zoo.path), "--study", "training",
            "--rows", "multistep,multistep-batch-16", "--epochs", "1", "--max-train", "40",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu", *TINY]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    configs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("config.json")}
    assert sorted(c["batch_size"] for c in configs.values()) == [16, 64]
    (batch16,) = [name for name, c in configs.items() if c["batch_size"] == 16]
    assert "batch_size-16" in batch16
    # Their rows are named apart from the default configuration (the results page's labels).
    entries = json.loads((tmp_path / "results" / "ablation_training_shared.json").read_text())["entries"]
    names = {e["row"]: configuration_name(e) for e in entries}
    # SNE trains at batch 16, a constant rate and averaged weights by default: the row at 64 names its
    # batch size, the row at 16 does not; both name their schedule and that they keep the weights themselves.
    assert names["multistep"] == "sne_batch_size-64_ema_epochs-0.0_heads-2_hidden-16_out_dim-8_schedule-multistep"
    assert names["multistep-batch-16"] == "sne_ema_epochs-0.0_heads-2_hidden-16_out_dim-8_schedule-multistep"


def test_training_rows_that_differ_in_schedule_alone_train_in_runs_of_their_own(shared_sine_zoo, tmp_path):
    from sne.bench.ablation import _row_configs
    from sne.bench.runs import BenchRuns

    runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path, device="cpu")
    configs, skipped = _row_configs(study_rows("training"), runs, shared_sine_zoo, "frequency", 0.0, 30)
    assert not skipped
    names = {row.name: name for row, _, name in configs}
    assert len(set(names.values())) == len(names)
    assert "milestones" in names["multistep-batch-16-late-cuts"] and "schedule-cosine" in names["cosine-batch-16"]
    late = next(fields for row, fields, _ in configs if row.name == "multistep-batch-16-late-cuts")
    assert TrainConfig.for_encoder("sne", seed=0, **late).milestones == [0.8, 0.95]
