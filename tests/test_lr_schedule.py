"""Learning-rate schedules: warm-up, cosine decay, multi-step; resumed runs follow them exactly."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import fit_killed_in_second_epoch
from sne.errors import SneError
from sne.train import TrainConfig, fit
from sne.train.run import _lr_schedule


def _lrs(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr of every optimiser step of a run of ``config``."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler, per_step = _lr_schedule(optimizer, config, steps_per_epoch)
    lrs = []
    for _ in range(config.epochs):
        for _ in range(steps_per_epoch):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_step:
                scheduler.step()
        if not per_step:
            scheduler.step()
    return lrs


def test_cosine_warms_up_linearly_then_decays_to_zero():
    config = TrainConfig(zoo="", target="", epochs=10, lr=2e-3, schedule="cosine", warmup_epochs=2)
    lrs = _lrs(config, steps_per_epoch=5)
    assert lrs[:10] == pytest.approx([2e-3 * (i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(2e-3)
    decay = lrs[10:]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert decay[20] == pytest.approx(1e-3)  # half-way through the decay, half the lr
    assert decay[-1] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_constant_keeps_the_rate_after_its_warm_up():
    lrs = _lrs(TrainConfig(zoo="", target="", epochs=4, lr=1e-3, schedule="constant", warmup_epochs=1), 5)
    assert lrs[:5] == pytest.approx([1e-3 * (i + 1) / 5 for i in range(5)])
    assert lrs[5:] == pytest.approx([1e-3] * 15)
    assert _lrs(TrainConfig(zoo="", target="", epochs=3, lr=2e-3, schedule="constant"), 4) == pytest.approx([2e-3] * 12)


def test_multistep_with_warm_up_drops_at_the_epochs_the_per_epoch_schedule_does():
    plain = TrainConfig(zoo="", target="", epochs=10, lr=1e-3, milestones=[0.6, 0.85])
    warm = TrainConfig(zoo="", target="", epochs=10, lr=1e-3, milestones=[0.6, 0.85], warmup_epochs=1)
    per_epoch, per_step = _lrs(plain, 4), _lrs(warm, 4)
    assert per_step[:4] == pytest.approx([1e-3 * (i + 1) / 4 for i in range(4)])
    assert per_step[4:] == pytest.approx(per_epoch[4:])
    assert sorted(set(round(lr, 12) for lr in per_epoch)) == [1e-5, 1e-4, 1e-3]


@pytest.mark.parametrize("fields, message", [({"schedule": "linear"}, "unknown schedule 'linear'"),
                                             ({"warmup_epochs": 3}, "shorter than the 3 epochs"),
                                             ({"warmup_epochs": -1}, "at least 0")])
def test_bad_schedules_are_refused_before_training(shared_sine_zoo, tmp_path, fields, message):
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="mlp", epochs=3, device="cpu",
                         **fields)
    with pytest.raises(SneError, match=message):
        fit(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_resumed_cosine_run_equals_an_uninterrupted_one(shared_sine_zoo, tmp_path, monkeypatch):
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="mlp",
                         encoder_options={"hidden": [16], "out_dim": 8}, epochs=3, batch_size=16, head_hidden=[8],
                         schedule="cosine", warmup_epochs=0.5, seed=0, device="cpu")
    fit(config, tmp_path / "whole", progress=False)
    fit_killed_in_second_epoch(config, tmp_path / "resumed", monkeypatch)
    fit(config, tmp_path / "resumed", progress=False)
    whole, resumed = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in ("whole", "resumed"))
    assert [h["lr"] for h in resumed["state"]["history"]] == [h["lr"] for h in whole["state"]["history"]]
    assert whole["state"]["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    for name, tensor in whole["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
