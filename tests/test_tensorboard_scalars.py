"""`sne train --log-dir`: TensorBoard scalars that match history.json, once per epoch after a resume."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import run_cli
from sne.train import run as run_module
from sne.train.scalars import SCALARS

pytest.importorskip("tensorboard")


def train_args(zoo, out, log_dir) -> list[str]:
    return ["train", "--zoo", str(zoo), "--target", "frequency", "--out", str(out), "--epochs", "4",
            "--batch-size", "32", "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8", "--device", "cpu",
            "--log-dir", str(log_dir)]


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scalars_match_history_once_per_epoch_after_a_kill_and_resume(shared_sine_zoo, tmp_path, capsys, monkeypatch):
    out, log_dir = tmp_path / "run", tmp_path / "tb"
    real_save = run_module._save_checkpoint

    def killed_before_the_third_commit(path, state):
        # Epoch 3's scalars are written by now; its last.pt is not, so the resume trains it again.
        if path.name == "last.pt" and state["state"]["epoch"] == 3:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(run_module, "_save_checkpoint", killed_before_the_third_commit)
    code, _, _ = run_cli(train_args(shared_sine_zoo.path, out, log_dir), capsys)
    assert code == 130
    assert [step for step, _ in read_scalars(log_dir)["loss/train"]] == [1, 2, 3]

    monkeypatch.setattr(run_module, "_save_checkpoint", real_save)
    code, _, err = run_cli(train_args(shared_sine_zoo.path, out, log_dir), capsys)
    assert code == 0, err
    assert str(log_dir) in err
    history = json.loads((out / "history.json").read_text())
    scalars = read_scalars(log_dir)
    assert set(scalars) == set(SCALARS)
    for tag, key in SCALARS.items():
        assert scalars[tag] == [(h["epoch"], pytest.approx(h[key], rel=1e-6)) for h in history], tag
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # one file per process


def test_without_tensorboard_log_dir_is_one_line_saying_what_to_install(shared_sine_zoo, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    code, out, err = run_cli(train_args(shared_sine_zoo.path, tmp_path / "run", tmp_path / "tb"), capsys)
    assert code == 2
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and "pip install 'sne[tb]'" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()
