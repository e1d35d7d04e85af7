"""Kill anywhere: the installed `sne` script is SIGKILLed at random moments while it generates a
zoo, trains a run or imports a published zoo, and the same command is run again each time.
The finished output must equal an uninterrupted run's, bit for bit where the format promises it,
and no temporary may be left anywhere. `make soak` runs this; `make test` deselects it (slow).

SNE_SOAK_KILLS (default 20) sets the kills per command, SNE_SOAK_SEED (default 0) their moments.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from test_unterthiner_import import tf_layout

pytestmark = pytest.mark.soak

SNE = Path(sys.executable).with_name("sne")
KILLS = int(os.environ.get("SNE_SOAK_KILLS", "20"))
SEED = int(os.environ.get("SNE_SOAK_SEED", "0"))
# One thread: a resumed process must compute exactly what the uninterrupted one did.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
#: Manifest and config entries that say when or by which command line, not what was made.
VOLATILE = {"created", "completed", "command"}
TEMPORARY = (".*.tmp", "*.partial")


def run(command: list[str], log: Path) -> subprocess.CompletedProcess:
    with open(log, "w") as err:
        done = subprocess.run([str(SNE), *command], env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{log.read_text()[-3000:]}"
    return done


def timed_reference(command: list[str], log: Path) -> float:
    started = time.monotonic()
    run(command, log)
    return time.monotonic() - started


def temporaries(root: Path) -> list[Path]:
    return sorted(p for pattern in TEMPORARY for p in root.rglob(pattern))


def kill_anywhere(command: list[str], scratch: Path, duration: float, check: Callable[[], None],
                  start_over: Callable[[], None], rng: np.random.Generator) -> dict:
    """Run ``command`` again and again, SIGKILLing it at moments drawn from [0, 1.2 * duration],
    until it has been killed :data:`KILLS` times; then run it to the end and ``check`` the output.

    A run that ends before its moment must have succeeded and be checked too; ``start_over`` then
    removes the output so the next kills fall in every phase of the work again.
    """
    kills = finished = 0
    log = scratch / "stderr.log"
    while kills < KILLS:
        moment = float(rng.uniform(0, 1.2 * duration))
        with open(log, "w") as err:
            # Own process group: the kill reaches any child (data-loader workers) too.
            process = subprocess.Popen([str(SNE), *command], env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=moment)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                kills += 1
                continue
        assert code == 0, f"a resumed run exited {code} after {kills} kills:\n{log.read_text()[-3000:]}"
        check()
        start_over()
        finished += 1
    run(command, log)
    check()
    return {"kills": kills, "finished_between_kills": finished}


# --- comparisons -----------------------------------------------------------------------------------


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_same_zoo(zoo: Path, reference: Path) -> None:
    assert files(zoo) == files(reference)
    manifest, expected = (json.loads((r / "manifest.json").read_text()) for r in (zoo, reference))
    assert manifest["complete"] is True
    assert {k: v for k, v in manifest.items() if k not in VOLATILE} == {
        k: v for k, v in expected.items() if k not in VOLATILE}
    pd.testing.assert_frame_equal(pd.read_parquet(zoo / "metadata.parquet"), pd.read_parquet(reference / "metadata.parquet"))
    for name in files(reference):
        if name.endswith(".safetensors"):
            mine, theirs = load_file(str(zoo / name)), load_file(str(reference / name))
            assert mine.keys() == theirs.keys(), name
            for key in theirs:
                assert torch.equal(mine[key], theirs[key]), f"{name}: {key} differs"
        elif name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(zoo / name), pd.read_parquet(reference / name))


def _history(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in entries]  # wall time differs


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """What resume promises (sne.train.run): the same epochs, losses, selection and weights —
    model, optimizer and schedule state — as a run never interrupted; only wall times differ."""
    tb = {str(p.relative_to(run_dir)) for p in (run_dir / "tb").rglob("*")} if (run_dir / "tb").exists() else set()
    assert [f for f in files(run_dir) if f not in tb] == files(reference)
    config, expected = (json.loads((r / "config.json").read_text()) for r in (run_dir, reference))
    assert {k: v for k, v in config.items() if k not in VOLATILE} == {k: v for k, v in expected.items() if k not in VOLATILE}
    history = json.loads((run_dir / "history.json").read_text())
    assert _history(history) == _history(json.loads((reference / "history.json").read_text()))
    last, last_ref = (torch.load(r / "last.pt", weights_only=True) for r in (run_dir, reference))
    assert _history(last["state"].pop("history")) == _history(last_ref["state"].pop("history"))
    last["state"].pop("train_seconds"), last_ref["state"].pop("train_seconds")
    assert last["state"] == last_ref["state"]
    for key in ("model", "optimizer", "scheduler"):
        assert_same_tensors(last[key], last_ref[key], key)
    best, best_ref = (torch.load(r / "best.pt", weights_only=True) for r in (run_dir, reference))
    assert best["epoch"] == best_ref["epoch"]
    assert_same_tensors(best["model"], best_ref["model"], "best model")
    if tb:
        assert_scalars_match_history(run_dir / "tb", history)


def assert_same_tensors(a, b, where: str) -> None:
    """Nested state dicts equal, tensors bit for bit."""
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_scalars_match_history(log_dir: Path, history: list[dict]) -> None:
    """Each epoch's scalars once, as TensorBoard reads them (a resume purges the epochs it redoes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sne.train.scalars import SCALARS

    events = EventAccumulator(str(log_dir))
    events.Reload()
    for tag, key in SCALARS.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(h["epoch"], pytest.approx(h[key], rel=1e-6)) for h in history], tag


# --- the three commands ----------------------------------------------------------------------------


def has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def soak_zoo_generate(tmp_path: Path, arguments: list[str], rng: np.random.Generator) -> dict:
    reference, out = tmp_path / "reference", tmp_path / "soaked"
    duration = timed_reference(["zoo", "generate", *arguments, "--out", str(reference)], tmp_path / "reference.log")

    def check() -> None:
        assert_same_zoo(out, reference)
        assert not temporaries(tmp_path), temporaries(tmp_path)

    return kill_anywhere(["zoo", "generate", *arguments, "--out", str(out)], tmp_path, duration, check,
                         lambda: shutil.rmtree(out), rng)


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng([SEED, sum(map(ord, request.node.name))])


def test_zoo_generate_sine_inr(tmp_path, rng):
    result = soak_zoo_generate(tmp_path, ["sine-inr", "--n", "40", "--steps", "100", "--seed", "1", "--shard-size", "4"], rng)
    assert result["kills"] == KILLS


def test_zoo_generate_small_cnn(tmp_path, rng):
    arguments = ["small-cnn", "--n", "12", "-o", "epochs=1", "-o", "batch_size=256", "--seed", "2", "--shard-size", "2"]
    assert soak_zoo_generate(tmp_path, arguments, rng)["kills"] == KILLS


def test_train(tmp_path, rng):
    zoo = tmp_path / "zoo"
    run(["zoo", "generate", "sine-inr", "--n", "60", "--steps", "100", "--init", "shared", "--seed", "3",
         "--out", str(zoo)], tmp_path / "zoo.log")
    arguments = ["train", "--zoo", str(zoo), "--target", "frequency", "--epochs", "12", "--batch-size", "8",
                 "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8", "--invariance-weight", "0.1",
                 "--device", "cpu", "--seed", "4"]
    reference, out = tmp_path / "reference", tmp_path / "soaked"
    duration = timed_reference([*arguments, "--out", str(reference)], tmp_path / "reference.log")
    log_dir = ["--log-dir", str(out / "tb")] if has_tensorboard() else []

    def check() -> None:
        assert_same_run(out, reference)
        assert not temporaries(tmp_path), temporaries(tmp_path)

    result = kill_anywhere([*arguments, "--out", str(out), *log_dir], tmp_path, duration, check, lambda: shutil.rmtree(out), rng)
    assert result["kills"] == KILLS


def write_published_zoo(directory: Path, networks: int, seed: int) -> None:
    """A published small-CNN zoo in Unterthiner et al.'s file formats, random weights: big enough
    (several shards of the imported zoo) that kills land while it is written, not only before."""
    layout = tf_layout()
    width = int(layout["end_idx"].max())
    generator = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    np.save(directory / "weights.npy", generator.normal(0, 0.1, (networks, width)).astype(np.float32))
    accuracy = generator.uniform(0.1, 0.9, networks)
    metrics = pd.DataFrame({
        "config.activation": np.where(np.arange(networks) % 2, "relu", "tanh"),
        "modeldir": [f"models/{i:05d}" for i in range(networks)], "step": 86,
        "test_accuracy": accuracy, "train_accuracy": accuracy + 0.05, "test_loss": 1.0, "train_loss": 0.9,
    })
    with gzip.open(directory / "metrics.csv.gz", "wt") as handle:
        metrics.to_csv(handle, index=False)
    layout.to_csv(directory / "layout.csv", index=False)


def test_zoo_import_unterthiner(tmp_path, rng):
    published = tmp_path / "published"
    write_published_zoo(published, networks=2100, seed=5)
    reference, out = tmp_path / "reference", tmp_path / "soaked"
    duration = timed_reference(["zoo", "import", "unterthiner", str(published), "--out", str(reference)],
                               tmp_path / "reference.log")

    def check() -> None:
        assert_same_zoo(out, reference)
        assert not temporaries(tmp_path), temporaries(tmp_path)

    result = kill_anywhere(["zoo", "import", "unterthiner", str(published), "--out", str(out)], tmp_path, duration,
                           check, lambda: shutil.rmtree(out), rng)
    assert result["kills"] == KILLS
