"""Batch-norm statistics re-estimated after every epoch (TrainConfig.bn_recalibration)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_cli, trained_at_defaults
from sne.train.run import TrainConfig, _recalibrate_batch_norms


def test_recalibration_sets_running_statistics_to_the_average_over_its_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2)).double()
    norms = [model[1], model[4]]
    for norm in norms:  # stale statistics, as a fast-moving model leaves them
        norm.running_mean.fill_(5.0)
        norm.running_var.fill_(9.0)
    records = list(torch.randn(40, 3, dtype=torch.float64) * 3 + 1)
    seen: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    hooks = [norm.register_forward_hook(lambda module, args, out, i=i: seen[i].append(args[0].detach()))
             for i, norm in enumerate(norms)]
    config = TrainConfig(zoo="", target="", batch_size=8, bn_recalibration=3, seed=0)
    _recalibrate_batch_norms(model, config, 0, records, torch.stack,
                             lambda m, indices, batch: (m(batch).sum(), torch.zeros(())), torch.device("cpu"))
    for hook in hooks:
        hook.remove()
    for i, norm in enumerate(norms):
        assert len(seen[i]) == 3 and all(len(x) == 8 for x in seen[i])
        torch.testing.assert_close(norm.running_mean, torch.stack([x.mean(0) for x in seen[i]]).mean(0))
        torch.testing.assert_close(norm.running_var, torch.stack([x.var(0) for x in seen[i]]).mean(0))
        assert norm.momentum == 0.1 and norm.num_batches_tracked == 3
    # Another epoch draws other batches; the same epoch the same ones.
    first = norms[0].running_mean.clone()
    _recalibrate_batch_norms(model, config, 0, records, torch.stack,
                             lambda m, indices, batch: (m(batch).sum(), torch.zeros(())), torch.device("cpu"))
    torch.testing.assert_close(norms[0].running_mean, first, rtol=0, atol=0)
    _recalibrate_batch_norms(model, config, 1, records, torch.stack,
                             lambda m, indices, batch: (m(batch).sum(), torch.zeros(())), torch.device("cpu"))
    assert not torch.equal(norms[0].running_mean, first)


def test_train_recalibrates_every_epoch_and_refuses_a_negative_count(shared_sine_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    # With the regulariser, whose permuted copies the loss expects in every batch it sees.
    args = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--out", str(out), "--epochs", "2",
            "--batch-size", "32", "--device", "cpu", "-o", "hidden=16", "-o", "heads=2", "-o", "chunk_hidden=16",
            "-o", "out_dim=8", "--invariance-weight", "0.5"]
    code, _, err = run_cli([*args, "--bn-recalibration", "-1"], capsys)
    assert code == 2 and "Traceback" not in err and not out.exists()
    code, _, err = run_cli([*args, "--bn-recalibration", "2"], capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["bn_recalibration"] == 2
    last = torch.load(out / "last.pt", weights_only=True)["model"]
    # Two batches averaged, after the last epoch: every batch norm counted exactly those.
    counts = {k: int(v) for k, v in last.items() if k.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {2}


def test_rows_trained_with_recalibration_are_a_configuration_of_their_own():
    """SNE recalibrates by default: its rows written before the field existed were trained without
    and say so; an encoder that does not recalibrate by default names it where set."""
    from sne.bench.runs import configuration_name
    from sne.encoders.sne import DEFAULT_OPTIONS, SNEEncoder

    assert SNEEncoder.train_defaults({})["bn_recalibration"] > 0
    assert SNEEncoder.train_defaults({"preset": "paper"})["bn_recalibration"] == 0
    row = {"encoder": "sne", "encoder_options_given": {}, "encoder_options_resolved": dict(DEFAULT_OPTIONS),
           "permutation_augment": True, "sign_flip_augment": True, "test_time_flips": 16,
           **{k: trained_at_defaults("sne")[k] for k in ("batch_size", "schedule", "ema_epochs")}}
    assert configuration_name(row) == configuration_name({**row, "bn_recalibration": 0}) == "sne_bn_recalibration-0"
    # Likewise sign flips, on by default since 2026-12-03.
    before_flips = {k: v for k, v in row.items() if k != "sign_flip_augment"}
    assert configuration_name({**before_flips, "bn_recalibration": 16}) == "sne_sign_flip_augment-false"
    assert configuration_name({**row, "bn_recalibration": SNEEncoder.train_defaults({})["bn_recalibration"]}) == "sne"
    # And test-time flips (2026-12-03): rows with flips evaluated before them were evaluated without.
    before_averaging = {k: v for k, v in row.items() if k != "test_time_flips"}
    assert configuration_name({**before_averaging, "bn_recalibration": 16}) == "sne_test_time_flips-0"
    assert configuration_name({**before_flips, "bn_recalibration": 16, "test_time_flips": 0}) == "sne_sign_flip_augment-false"
    plain = {"encoder": "deepsets", "encoder_options_given": {}, "lr": 3e-3}
    assert configuration_name(plain) == configuration_name({**plain, "bn_recalibration": 0}) == "deepsets"
    assert configuration_name({**plain, "bn_recalibration": 16}) == "deepsets_bn_recalibration-16"


def test_an_ablation_row_never_averages_seeds_trained_with_and_without_recalibration(shared_sine_zoo, tmp_path):
    from sne.bench.ablation import _check_same_training, _row_configs, _setting, study_rows
    from sne.bench.runs import BenchRuns
    from sne.errors import SneError

    def configs(**train_options):
        runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path,
                         device="cpu", train_options=train_options)
        rows = study_rows("components", ["full"])
        return _setting(runs, 0.0, None), _row_configs(rows, runs, shared_sine_zoo, "frequency", 0.0, 30)[0]

    setting, default = configs()
    assert configs(bn_recalibration=0)[0] == setting != configs(bn_recalibration=16)[0]
    path = tmp_path / "ablation_components_shared.json"
    # A seed of full SNE in this setting, written before recalibration existed (no field: trained without).
    # (On this zoo of one shared initialisation, today's default trains without sign flips.)
    path.write_text(json.dumps({"entries": [{"row": "full", "setting": setting, "train_seed": 0,
                                             "sign_flip_augment": False, "test_time_flips": 0,
                                             **{k: trained_at_defaults("sne")[k] for k in ("batch_size", "schedule", "ema_epochs")}}]}))
    with pytest.raises(SneError, match="bn_recalibration=0 .*--bn-recalibration 0"):
        _check_same_training(path, setting, default)
    _check_same_training(path, *configs(bn_recalibration=0))  # more seeds of the same row: fine
    _check_same_training(path, *configs(bn_recalibration=16))  # a setting of its own: fine


def test_an_ablation_row_never_averages_seeds_of_encoders_built_two_ways(shared_sine_zoo, tmp_path, monkeypatch):
    from sne.bench.ablation import _check_same_training, _row_configs, _setting, study_rows
    from sne.bench.runs import BenchRuns
    from sne.encoders import sne as sne_module
    from sne.errors import SneError

    runs = BenchRuns(encoders=["sne"], seeds=[0], epochs=1, runs_dir=tmp_path, results_dir=tmp_path, device="cpu",
                     encoder_options={"hidden": 16})
    setting = _setting(runs, 0.0, None)
    configs = _row_configs(study_rows("components", ["full"]), runs, shared_sine_zoo, "frequency", 0.0, 30)[0]
    resolved = dict(sne_module.SNEEncoder(hidden=16).options)
    path = tmp_path / "ablation_components_shared.json"
    seed = {"row": "full", "setting": setting, "train_seed": 0, "bn_recalibration": 16, "sign_flip_augment": False,
            "test_time_flips": 0, **{k: trained_at_defaults("sne")[k] for k in ("batch_size", "schedule", "ema_epochs")},
            "encoder_options_used": {"hidden": 16}, "encoder_options_resolved": resolved}
    # Trained with sign flips, as the default was before it chose by zoo: on this zoo of one shared
    # initialisation the default trains without them now.
    path.write_text(json.dumps({"entries": [{**seed, "sign_flip_augment": True, "test_time_flips": 16}]}))
    with pytest.raises(SneError, match=r"sign_flip_augment=True .*give --augment-sign-flips to add seeds"):
        _check_same_training(path, setting, configs)
    # Trained before sign flips existed, so without them: what the default does here.
    path.write_text(json.dumps({"entries": [{k: v for k, v in seed.items() if k != "sign_flip_augment"}]}))
    _check_same_training(path, setting, configs)
    path.write_text(json.dumps({"entries": [seed]}))
    _check_same_training(path, setting, configs)  # built as today's defaults build it: more seeds are fine
    # A release whose default flips an option: the stored seed was built the other way.
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "use_type_encoding", False)
    with pytest.raises(SneError, match=r"row 'full' .*use_type_encoding: true -> false.*-o sne.OPTION=VALUE"):
        _check_same_training(path, setting, configs)
    # Seeds that did not record how they were built are not compared.
    path.write_text(json.dumps({"entries": [{k: v for k, v in seed.items() if k != "encoder_options_resolved"}]}))
    _check_same_training(path, setting, configs)


def test_benchmarks_take_the_flag_and_name_their_runs_and_rows_by_it(shared_sine_zoo, tmp_path, capsys):
    args = ["bench", "inr", "--zoo", str(shared_sine_zoo.path), "--encoders", "deepsets", "--epochs", "1",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu"]
    code, _, err = run_cli([*args, "--bn-recalibration", "-1"], capsys)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "results").exists()
    code, _, err = run_cli([*args, "--bn-recalibration", "2"], capsys)
    assert code == 0, err
    (results,) = (tmp_path / "results").glob("inr_frequency_*.json")
    (entry,) = json.loads(results.read_text())["entries"]
    assert entry["bn_recalibration"] == 2 and "bn_recalibration-2" in entry["run"]
