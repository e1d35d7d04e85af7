"""Resume bugs the kill-anywhere soak (tests/test_soak.py) found, each pinned by a fast test."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import fit_killed_in_second_epoch
from sne.train import TrainConfig, fit
from sne.train import run as run_module
from sne.zoo import Zoo
from sne.zoo.unterthiner import import_unterthiner
from test_unterthiner_import import write_fake_zoo


def test_an_import_killed_after_its_rename_is_done_when_run_again(tmp_path):
    """Killed between renaming the finished zoo into place and exiting, the same import run again
    returns that zoo (it used to refuse: 'already exists and is not an empty directory')."""
    published = tmp_path / "published"
    write_fake_zoo(published)
    out = tmp_path / "zoo"
    first = import_unterthiner(published, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = import_unterthiner(published, out)
    assert len(again) == len(first) and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(Exception, match="already exists and is not an empty directory"):
        import_unterthiner(published, out, step=0)  # another zoo into the same place is still refused


def test_an_import_removes_the_staging_directory_of_a_killed_one(tmp_path):
    published = tmp_path / "published"
    write_fake_zoo(published)
    stale = tmp_path / ".zoo.k1ll3d.partial"  # what a SIGKILLed import leaves beside its --out
    (stale / "shards").mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    unrelated = tmp_path / ".other.k1ll3d.partial"
    unrelated.mkdir()
    Zoo.open(import_unterthiner(published, tmp_path / "zoo").path)
    assert not stale.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.k1ll3d.partial", "published", "zoo"])


def test_a_run_killed_after_its_last_checkpoint_has_the_whole_history(shared_sine_zoo, tmp_path, monkeypatch):
    """Killed after the final epoch's last.pt but before its history.json, a resumed run used to
    find nothing left to train and keep a history one epoch short."""
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="sne",
                         encoder_options={"hidden": 8, "heads": 2, "out_dim": 8}, epochs=2, batch_size=32,
                         head_hidden=[8], seed=0, device="cpu")
    real_write = run_module.write_json_atomic

    def killed_at_the_last_history(path, obj):
        if path.name == "history.json" and len(obj) == config.epochs:
            raise KeyboardInterrupt
        real_write(path, obj)

    monkeypatch.setattr(run_module, "write_json_atomic", killed_at_the_last_history)
    try:
        fit(config, tmp_path / "run", progress=False)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(run_module, "write_json_atomic", real_write)
    fit(config, tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert [h["epoch"] for h in history] == [1, 2] == [h["epoch"] for h in last["state"]["history"]]


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(shared_sine_zoo, tmp_path, monkeypatch):
    """Dropout draws from torch's global generator, whose state no checkpoint held: a resumed run
    drew other masks than an uninterrupted one and ended with other weights."""
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="mlp",
                         encoder_options={"hidden": [16], "dropout": 0.5, "out_dim": 8}, epochs=3, batch_size=16,
                         head_hidden=[8], seed=0, device="cpu")
    fit(config, tmp_path / "whole", progress=False)
    fit_killed_in_second_epoch(config, tmp_path / "resumed", monkeypatch)
    fit(config, tmp_path / "resumed", progress=False)
    whole, resumed = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in ("whole", "resumed"))
    assert [h["train_loss"] for h in resumed["state"]["history"]] == [h["train_loss"] for h in whole["state"]["history"]]
    for name, tensor in whole["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def test_a_run_is_not_resumed_with_an_encoder_whose_defaults_changed(shared_sine_zoo, tmp_path, monkeypatch):
    from sne.encoders import sne as sne_module
    from sne.errors import SneError
    from sne.train.run import load_run

    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="sne",
                         encoder_options={"hidden": 16, "heads": 2, "out_dim": 8}, epochs=2, batch_size=32,
                         head_hidden=[16], seed=0, device="cpu")
    # A release whose default runs the chunk stage at full width.
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", None)
    fit_killed_in_second_epoch(config, tmp_path / "run", monkeypatch)
    # A run made before an option existed (its checkpoint lacks the option) resumes: the option then
    # takes its default, which is what such runs were built with.
    last = tmp_path / "run" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["encoder"]["options"]["source_code_rounds"]
    torch.save(checkpoint, last)
    snapshot = last.read_bytes()
    # A later release narrows the chunk stage by default: the options given are the same, the encoder is not.
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", 8)
    with pytest.raises(SneError, match=r"built otherwise \(chunk_hidden: None -> 8\)"):
        fit(config, tmp_path / "run", progress=False)
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", None)
    fit(config, tmp_path / "run", progress=False)  # resumed and finished
    assert last.read_bytes() != snapshot
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", 8)
    # The run itself still loads as it was trained: its saved config names every option.
    assert load_run(tmp_path / "run", device="cpu").predictor.encoder.chunk_width == 16
    # Configs that predate an option get the default it had then.
    monkeypatch.setattr(sne_module.SNEEncoder, "defaults_of_older_configs", {"chunk_hidden": None})
    from sne.encoders import build_encoder_from_config

    old = {"name": "sne", "options": {"hidden": 16, "heads": 2, "out_dim": 8}, "architecture": None}
    assert build_encoder_from_config(old).chunk_width == 16


def test_a_run_another_process_is_training_is_refused_and_left_alone(shared_sine_zoo, tmp_path, monkeypatch):
    """Two processes given the same run directory used to train it together, each overwriting the
    other's checkpoints. The second now stops in one line and changes nothing; after a kill (the lock
    goes with the process) the run resumes."""
    import fcntl
    import subprocess
    import sys
    from pathlib import Path

    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="mlp",
                         encoder_options={"hidden": [16], "out_dim": 8}, epochs=3, batch_size=16, head_hidden=[8],
                         seed=0, device="cpu")
    run = tmp_path / "run"
    fit_killed_in_second_epoch(config, run, monkeypatch)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(run / '.training.lock')!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(120)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        script = Path(sys.executable).with_name("sne")
        done = subprocess.run([str(script), "train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency",
                               "--encoder", "mlp", "-o", "hidden=[16]", "-o", "out_dim=8", "--epochs", "3",
                               "--batch-size", "16", "--device", "cpu", "--out", str(run)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "being trained by another process" in done.stderr
        assert str(run) in done.stderr and "Traceback" not in done.stderr
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
        with pytest.raises(Exception, match="being trained by another process"):
            fit(config, run, progress=False)
    finally:
        holder.kill()
        holder.wait()
    fit(config, run, progress=False)
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2, 3]
    with open(run / ".training.lock") as lock:  # released when training returns
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
