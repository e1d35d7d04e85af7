"""An encoder's training defaults (permutation augmentation as a default of SNE's, off under the
paper preset): how configs, the CLI, benchmark run names and results rows resolve and name them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_cli
from sne.bench.ablation import _row_configs, study_rows
from sne.bench.runs import BenchRuns, configuration_options, options_apart_from_defaults
from sne.encoders.sne import DEFAULT_OPTIONS, PRESETS, SNEEncoder
from sne.train.run import TrainConfig, _Augmentation, _EpochBatches
from sne.weights import record_from_module

TINY = ["-o", "sne.hidden=16", "-o", "sne.heads=2", "-o", "sne.num_sab=1", "-o", "sne.out_dim=8"]


@pytest.fixture
def augmenting_sne(monkeypatch):
    """SNE with augmentation as its training default, pinned whatever default SNE ships."""
    monkeypatch.setattr(SNEEncoder, "default_train_options", {"permutation_augment": True})


def test_training_defaults_apply_unless_set_and_the_paper_preset_trains_without_augmentation(augmenting_sne):
    config = TrainConfig.for_encoder
    assert config("sne", zoo="z", target="t").permutation_augment is True
    assert config("sne", zoo="z", target="t", permutation_augment=None).permutation_augment is True
    assert config("sne", zoo="z", target="t", permutation_augment=False).permutation_augment is False
    assert config("sne", zoo="z", target="t", encoder_options={"preset": "paper"}).permutation_augment is False
    assert config("sne", zoo="z", target="t", encoder_options={"preset": "paper"},
                  permutation_augment=True).permutation_augment is True
    assert config("mlp", zoo="z", target="t").permutation_augment is False


def test_the_cli_flags_turn_training_defaults_off_and_encoders_lists_them(shared_sine_zoo, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(SNEEncoder, "default_train_options",
                        {"permutation_augment": True, "bn_recalibration": 2, "sign_flip_augment": True})
    common = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--epochs", "1", "--max-train",
              "20", "--device", "cpu", "-o", "hidden=16", "-o", "heads=2", "-o", "num_sab=1", "-o", "out_dim=8"]
    for name, extra, expected in (("default", [], (True, 2, True)),
                                  ("off", ["--no-augment-permutations", "--bn-recalibration", "0",
                                           "--no-augment-sign-flips"], (False, 0, False))):
        code, _, err = run_cli([*common, "--out", str(tmp_path / name), *extra], capsys)
        assert code == 0, err
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert (config["permutation_augment"], config["bn_recalibration"], config["sign_flip_augment"]) == expected
    code, out, _ = run_cli(["encoders"], capsys)
    sne_lines = out.split("\nsne: ")[1].splitlines()
    assert code == 0 and ("  training defaults: --augment-permutations --bn-recalibration 2 --augment-sign-flips"
                          in sne_lines)


def test_rows_name_training_switches_apart_from_their_encoders_defaults(augmenting_sne):
    # Rows at today's encoder options, so that only their training switches name them.
    row = {"encoder": "sne", "encoder_options_given": {}, "encoder_options_resolved": dict(DEFAULT_OPTIONS)}
    assert configuration_options({**row, "permutation_augment": True}) == {}
    assert configuration_options({**row, "permutation_augment": False}) == {"augment_permutations": False}
    assert configuration_options(row) == {"augment_permutations": False}  # written before the switch: off
    assert configuration_options({**row, "permutation_augment": True, "sign_flip_augment": True}) == {
        "sign_flip_augment": True}
    paper = {"encoder": "sne", "encoder_options_given": {"preset": "paper"},
             "encoder_options_resolved": {**DEFAULT_OPTIONS, **PRESETS["paper"]}, "permutation_augment": False}
    assert configuration_options(paper) == {"preset": "paper"}
    assert configuration_options({**paper, "permutation_augment": True}) == {"preset": "paper",
                                                                            "augment_permutations": True}
    # An encoder that does not augment by default is named when it does.
    peer = {"encoder": "mlp", "encoder_options_given": {}}
    assert configuration_options({**peer, "permutation_augment": False}) == {}
    assert configuration_options({**peer, "permutation_augment": True}) == {"augment_permutations": True}


def test_run_directories_spell_augmentation_whatever_the_defaults(augmenting_sne, tmp_path):
    def runs(**train_options):
        return BenchRuns(encoders=["sne", "mlp"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path,
                         device="cpu", train_options=train_options)

    assert runs().run_name("sne") == "sne_augment_permutations-true"
    assert runs(permutation_augment=False).run_name("sne") == "sne"
    assert runs().run_name("mlp") == "mlp"
    assert runs(permutation_augment=True).run_name("mlp") == "mlp_augment_permutations-true"


@pytest.fixture
def small_batch_sne(monkeypatch):
    """SNE with a batch size of its own as its training default."""
    monkeypatch.setattr(SNEEncoder, "default_train_options", {"batch_size": 16})


def test_a_batch_size_default_trains_unless_set_and_leaves_run_directories_their_meaning(small_batch_sne, tmp_path):
    config = TrainConfig.for_encoder
    assert config("sne", zoo="z", target="t").batch_size == 16
    assert config("sne", zoo="z", target="t", batch_size=64).batch_size == 64
    assert config("sne", zoo="z", target="t", encoder_options={"preset": "paper"}).batch_size == 64  # the paper's
    assert config("mlp", zoo="z", target="t").batch_size == 64

    def runs(**train_options):
        return BenchRuns(encoders=["sne", "mlp"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path,
                         device="cpu", train_options=train_options)

    # Directories name the batch size against 64, whatever the default: a run made at 64 under an
    # older default keeps its directory, and that directory keeps its meaning.
    assert runs().run_name("sne") == "sne_batch_size-16"
    assert runs(batch_size=64).run_name("sne") == "sne"
    assert runs(batch_size=16).run_name("mlp") == "mlp_batch_size-16"
    # Rows are named against the default; a row that did not record its batch size was trained at 64.
    row = {"encoder": "sne", "encoder_options_given": {}, "encoder_options_resolved": dict(DEFAULT_OPTIONS),
           "permutation_augment": False}
    assert configuration_options({**row, "batch_size": 16}) == {}
    assert configuration_options({**row, "batch_size": 64}) == {"batch_size": 64}
    assert configuration_options(row) == {"batch_size": 64}


def test_the_training_commands_take_the_encoders_batch_size_unless_given(small_batch_sne, shared_sine_zoo, tmp_path,
                                                                         capsys):
    common = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--epochs", "1", "--max-train",
              "20", "--device", "cpu", "-o", "hidden=16", "-o", "heads=2", "-o", "num_sab=1", "-o", "out_dim=8"]
    for name, extra, expected in (("default", [], 16), ("given", ["--batch-size", "8"], 8)):
        code, _, err = run_cli([*common, "--out", str(tmp_path / name), *extra], capsys)
        assert code == 0, err
        assert json.loads((tmp_path / name / "config.json").read_text())["batch_size"] == expected
    code, _, err = run_cli([*common, "--out", str(tmp_path / "zero"), "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size" in err and not (tmp_path / "zero").exists()
    code, out, _ = run_cli(["encoders"], capsys)
    assert code == 0 and "  training defaults: --batch-size 16" in out.split("\nsne: ")[1].splitlines()


def test_an_ablation_row_never_averages_seeds_trained_at_two_batch_sizes(small_batch_sne, shared_sine_zoo, tmp_path):
    from sne.bench.ablation import _check_same_training, _setting
    from sne.errors import SneError

    def configs(**train_options):
        runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path,
                         device="cpu", train_options=train_options)
        rows = study_rows("components", ["full"])
        return _setting(runs, 0.0, None), _row_configs(rows, runs, shared_sine_zoo, "frequency", 0.0, 30)[0]

    setting, default = configs()
    path = tmp_path / "ablation_components_shared.json"
    # A seed written before rows recorded their batch size: trained at 64.
    path.write_text(json.dumps({"entries": [{"row": "full", "setting": setting, "train_seed": 0}]}))
    with pytest.raises(SneError, match="batch_size=64 and would be trained with 16 now: give --batch-size 64"):
        _check_same_training(path, setting, default)
    _check_same_training(path, *configs(batch_size=64))  # more seeds of the same row: fine
    _check_same_training(path, *configs(batch_size=16))  # a setting of its own: fine


def test_plots_of_configurations_that_differ_only_in_a_default_of_their_time_get_their_own_names(tmp_path):
    runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path, device="cpu")
    then, now = ({"encoder_options_resolved": {**DEFAULT_OPTIONS, "chunk_hidden": width}} for width in (32, None))
    name = runs.plot_name("sne", 0, then)  # both have the same run name
    assert name.startswith(f"{runs.run_name('sne')}_seed0_") and name == runs.plot_name("sne", 0, dict(then))
    assert name != runs.plot_name("sne", 0, now)
    elsewhere = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path / "a", results_dir=tmp_path,
                          device="cuda", command="another command line")
    assert elsewhere.plot_name("sne", 0, then) == name  # where and how it was launched is not the configuration
    longer = BenchRuns(encoders=["sne"], seeds=[0], epochs=2, runs_dir=tmp_path, results_dir=tmp_path, device="cpu")
    assert longer.plot_name("sne", 0, then) != name


def test_rows_keep_meaning_the_options_they_resolved_to_when_a_default_changes(monkeypatch):
    def defaults(chunk_hidden, source_features):
        monkeypatch.setitem(DEFAULT_OPTIONS, "chunk_hidden", chunk_hidden)
        monkeypatch.setitem(DEFAULT_OPTIONS, "use_source_features", source_features)
        return dict(DEFAULT_OPTIONS)

    then = defaults(None, False)
    now = defaults(32, True)
    old_default = {"encoder": "sne", "encoder_options_given": {}, "encoder_options_resolved": then}
    new_default = {**old_default, "encoder_options_resolved": now}
    assert options_apart_from_defaults(old_default) == {"chunk_hidden": None, "use_source_features": False}
    assert options_apart_from_defaults(new_default) == {}
    # The other way round: a row at the later defaults read where the earlier ones hold.
    defaults(None, False)
    assert options_apart_from_defaults(old_default) == {}
    assert options_apart_from_defaults(new_default) == {"chunk_hidden": 32, "use_source_features": True}
    paper = {"encoder": "sne", "encoder_options_given": {"preset": "paper", "heads": 2},
             "encoder_options_resolved": {**DEFAULT_OPTIONS, **PRESETS["paper"], "heads": 2}}
    assert options_apart_from_defaults(paper) == {"preset": "paper", "heads": 2}
    # An encoder that publishes no defaults is named by the options given, not by all it resolved to.
    peer = {"encoder": "ng_gnn", "encoder_options_given": {"hidden": 8}, "encoder_options_resolved": {"hidden": 8,
                                                                                                     "layers": 3}}
    assert options_apart_from_defaults(peer) == {"hidden": 8}


def test_a_row_that_resolved_its_options_before_one_existed_reads_it_at_its_earlier_default(monkeypatch):
    """Rows recorded every option before use_own_neuron_features existed: such a row was trained
    without own-neuron features, whatever the default is now."""
    monkeypatch.setattr(SNEEncoder, "defaults_of_older_configs", {"use_own_neuron_features": False})
    monkeypatch.setitem(DEFAULT_OPTIONS, "use_own_neuron_features", False)
    resolved = {k: v for k, v in DEFAULT_OPTIONS.items() if k != "use_own_neuron_features"}
    row = {"encoder": "sne", "encoder_options_given": {}, "encoder_options_resolved": resolved}
    assert options_apart_from_defaults(row) == {}
    monkeypatch.setitem(DEFAULT_OPTIONS, "use_own_neuron_features", True)
    assert options_apart_from_defaults(row) == {"use_own_neuron_features": False}


def test_augmentation_trains_networks_of_unknown_symmetries_as_they_are():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double() for _ in range(2)]
    records = [record_from_module(m, torch.randn(4, 3, dtype=torch.float64)) for m in models]
    batches = [torch.tensor([0, 1])]
    permuted, kept = _EpochBatches(list, records, batches, seeds=[5], permute=False, augment=_Augmentation(permutable=[True, False]))[0][2]
    assert not permuted.layers[0].weight.equal(records[0].layers[0].weight)
    assert kept is records[1]


def test_ablation_rows_name_runs_by_the_augmentation_they_train_with(augmenting_sne, shared_sine_zoo, tmp_path):
    runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path, device="cpu")
    names = {}
    for study in ("components", "invariance"):
        rows = study_rows(study, ["full", "no-invariance"] if study == "components" else ["lambda-0", "augment"])
        configs, skipped = _row_configs(rows, runs, shared_sine_zoo, "frequency", 0.0, 30)
        names.update({row.name: name for row, _, name in configs})
        names.update({entry["row"]: names[entry["same_as"]] for entry in skipped})
    # Full SNE trains with its default augmentation, so it is the invariance study's augmentation row.
    assert names["full"] == names["augment"] == "sne_permutation_augment-true"
    assert names["no-invariance"] == names["lambda-0"] == "sne"


def test_every_evaluation_records_the_training_settings_that_name_a_configuration(tiny_sne_run, tmp_path):
    from sne.train.evaluate import evaluate_run
    from sne.train.run import TUNED_TRAINING

    result = evaluate_run(tiny_sne_run, device="cpu", out=tmp_path / "eval.json", plot=False, sensitivity=False)
    config = json.loads((tiny_sne_run / "config.json").read_text())
    # A row that did not record one would read as trained at its value of long ago (BEFORE_IT_EXISTED).
    assert {name: result[name] for name in TUNED_TRAINING} == {name: config[name] for name in TUNED_TRAINING}


def test_rows_that_differ_in_schedule_alone_are_named_apart_and_older_rows_read_as_what_they_trained_with():
    row = {"encoder": "sne", "encoder_options_given": {}, "encoder_options_resolved": dict(DEFAULT_OPTIONS),
           **SNEEncoder.default_train_options}
    default = TrainConfig(zoo="z", target="t")
    recorded = {**row, "milestones": list(default.milestones), "warmup_epochs": default.warmup_epochs,
                "weight_decay": default.weight_decay}
    assert configuration_options(recorded) == {}
    # Written before rows recorded their schedule and averaging: multistep, the weights themselves.
    older = {k: v for k, v in recorded.items() if k not in ("schedule", "ema_epochs")}
    assert configuration_options(older) == {"schedule": "multistep", "ema_epochs": 0.0}
    assert configuration_options({**older, "schedule": "multistep"}) == {"schedule": "multistep", "ema_epochs": 0.0}
    assert configuration_options({**recorded, "schedule": "cosine", "warmup_epochs": 1.0}) == {
        "schedule": "cosine", "warmup_epochs": 1.0}
    assert configuration_options({**recorded, "milestones": [0.8, 0.95]}) == {"milestones": [0.8, 0.95]}


@pytest.mark.parametrize("command", [["bench", "inr"], ["bench", "ablation", "--study", "chunk-size", "--rows",
                                                         "chunk-4", "--max-train", "40", *TINY]])
def test_one_zoo_benchmarks_take_a_learning_rate_and_name_runs_and_rows_by_it(command, shared_sine_zoo, tmp_path,
                                                                              capsys):
    encoders = ["--encoders", "deepsets"] if command[1] == "inr" else []
    args = [*command, "--zoo", str(shared_sine_zoo.path), *encoders, "--epochs", "1", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--device", "cpu"]
    code, _, err = run_cli([*args, "--lr", "nope"], capsys)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "results").exists()
    code, _, err = run_cli([*args, "--lr", "5e-4"], capsys)
    assert code == 0, err
    (results,) = (tmp_path / "results").glob("*.json")
    (entry,) = json.loads(results.read_text())["entries"]
    (config,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("config.json")]
    assert entry["lr"] == config["lr"] == 5e-4 and "lr-0.0005" in entry["run"]
    assert configuration_options(entry)["lr"] == 5e-4
