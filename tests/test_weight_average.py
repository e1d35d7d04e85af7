"""Training with an exponential moving average of the weights (``--ema-epochs``): what is kept is
the average of every step's weights, a resumed run continues it exactly, bad values are refused."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from conftest import fit_killed_in_second_epoch
from sne.errors import SneError
from sne.train import TrainConfig, fit, load_run


def _config(zoo, **fields) -> TrainConfig:
    # Batch norm in the SNE encoder, so buffers are averaged as well as parameters.
    base = dict(zoo=str(zoo.path), target="frequency", encoder="sne",
                encoder_options={"hidden": 8, "heads": 2, "out_dim": 8}, epochs=3, batch_size=32, head_hidden=[8],
                seed=0, device="cpu", ema_epochs=0.5)
    return TrainConfig(**{**base, **fields})


def test_the_kept_weights_are_the_average_of_every_steps_weights(shared_sine_zoo, tmp_path):
    steps: list[list[torch.Tensor]] = []

    def record(optimizer, *_):
        steps.append([p.detach().clone().double() for group in optimizer.param_groups for p in group["params"]])

    before = register_optimizer_step_pre_hook(
        lambda optimizer, *_: None if steps else record(optimizer))
    after = register_optimizer_step_post_hook(record)
    try:
        summary = fit(_config(shared_sine_zoo), tmp_path / "run", progress=False)
    finally:
        before.remove()
        after.remove()
    decay = 1 - 1 / (0.5 * summary["steps_per_epoch"])
    expected = steps[0]
    for weights in steps[1:]:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]

    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    trained, kept = last["training_model"], last["model"]
    assert len(steps) == 1 + summary["epochs"] * summary["steps_per_epoch"]
    moved = 0
    for first, final, average in zip(steps[0], steps[-1], expected):
        # The parameter's name: the training weights that equal the last step's.
        name = next(k for k, v in trained.items() if v.shape == final.shape and torch.equal(v.double(), final))
        torch.testing.assert_close(kept[name].double(), average, rtol=1e-5, atol=1e-7)
        if not torch.equal(first, final):  # fixed tables stay as they are
            assert not torch.equal(kept[name].double(), final)
            moved += 1
    assert moved > len(steps[0]) // 2
    assert any("running_mean" in k and not torch.equal(kept[k], trained[k]) for k in kept)
    # Prediction and evaluation read the average: best.pt is the last epoch's average here.
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    if best["epoch"] == summary["epochs"]:
        assert all(torch.equal(best["model"][k], kept[k]) for k in kept)
    run = load_run(tmp_path / "run", device="cpu", which="last")
    assert "training_model" not in run.meta and "average" not in run.meta
    assert all(torch.equal(v, kept[k]) for k, v in run.predictor.state_dict().items())


def test_a_resumed_averaging_run_equals_an_uninterrupted_one(shared_sine_zoo, tmp_path, monkeypatch):
    config = _config(shared_sine_zoo, bn_recalibration=2)
    fit(config, tmp_path / "whole", progress=False)
    fit_killed_in_second_epoch(config, tmp_path / "resumed", monkeypatch)
    fit(config, tmp_path / "resumed", progress=False)
    whole, resumed = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in ("whole", "resumed"))
    assert [h["val_loss"] for h in resumed["state"]["history"]] == [h["val_loss"] for h in whole["state"]["history"]]
    for part in ("model", "training_model", "average"):
        for name, tensor in whole[part].items():
            assert torch.equal(resumed[part][name], tensor), (part, name)


def test_without_averaging_checkpoints_hold_the_training_weights_alone(shared_sine_zoo, tmp_path):
    fit(_config(shared_sine_zoo, ema_epochs=0.0, epochs=1), tmp_path / "run", progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "training_model" not in last and "average" not in last


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, True])
def test_bad_averaging_horizons_are_refused_before_anything_is_written(shared_sine_zoo, tmp_path, value):
    with pytest.raises(SneError, match="--ema-epochs must be a number of epochs >= 0"):
        fit(_config(shared_sine_zoo, ema_epochs=value), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


SCRIPT = Path(sys.executable).parent / "sne"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the sne console script is not installed")
@pytest.mark.parametrize("command", [["train", "--target", "frequency", "--out", "{out}"],
                                     ["bench", "inr", "--runs", "{out}", "--results", "{out}"]])
def test_the_installed_script_refuses_a_negative_horizon_in_one_line(shared_sine_zoo, tmp_path, command):
    args = [a.format(out=tmp_path / "out") for a in command]
    done = subprocess.run([str(SCRIPT), *args, "--zoo", str(shared_sine_zoo.path), "--ema-epochs", "-2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "--ema-epochs" in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "out").exists()
