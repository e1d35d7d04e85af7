"""torchrun with 2 CPU processes trains what one process trains, and resumes like it.

One step on two processes has the gradient of one process to float64 rounding (checked exactly
below). Over epochs, float32 rounding (~1e-5 of a code) becomes more: Adam divides each gradient
by its running scale, so parameters whose gradient is ~0 (biases right before a batch norm) take
full-size steps in the direction of the rounding noise. Runs are therefore compared to 2%.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sne.encoders.sne import SNEEncoder
from sne.train import distributed
from sne.train.run import load_checkpoint
from test_sne_encoder import SMALL, mixed_records

TORCHRUN = Path(sys.executable).with_name("torchrun")
#: invariance_weight > 0: permuted copies must be drawn as one process draws them.
ARGS = ["--target", "frequency", "--encoder", "sne", "--option", "hidden=16", "--option", "heads=2",
        "--option", "out_dim=8", "--epochs", "2", "--batch-size", "16", "--max-train", "64", "--seed", "0",
        "--device", "cpu", "--invariance-weight", "0.5"]


def command(zoo: Path, out: Path, processes: int) -> tuple[list[str], dict]:
    args = [*ARGS, "--zoo", str(zoo), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if processes == 1:
        return [str(Path(sys.executable).with_name("sne")), "train", *args], env
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes), "-m", "sne", "train", *args], env


def train(zoo: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    line, env = command(zoo, out, processes)
    return subprocess.run(line, capture_output=True, text=True, env=env, timeout=600)


def assert_same_run(one: Path, two: Path) -> None:
    history_one = json.loads((one / "history.json").read_text())
    history_two = json.loads((two / "history.json").read_text())
    for a, b in zip(history_one, history_two, strict=True):
        for key in ("train_loss", "invariance_loss", "val_loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-4), (a["epoch"], key)
    state_one, state_two = (load_checkpoint(run / "last.pt")["model"] for run in (one, two))
    assert state_one.keys() == state_two.keys()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_train_what_one_trains_and_resume_alike(shared_sine_zoo, tmp_path):
    zoo = shared_sine_zoo.path
    one = train(zoo, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr
    two = train(zoo, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    said = " ".join((two.stdout + two.stderr).split())
    assert said.count("trained 2 epochs") == 1  # rank 0 speaks for all
    # Each process steps through every batch with its share of it: the steps of one process.
    steps = "(8 Adam steps, 4 an epoch)"
    assert steps in said and steps in " ".join((one.stdout + one.stderr).split())
    assert_same_run(tmp_path / "one", tmp_path / "two")

    # Resume across a change of process count: two processes killed after their first epoch, then one.
    halves = tmp_path / "halves"
    line, env = command(zoo, halves, 2)
    process = subprocess.Popen(line, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not (halves / "last.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    epochs_done = len(json.loads((halves / "history.json").read_text()))
    resumed = train(zoo, halves, 1)
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_done in (1, 2)  # 2 only if the kill came too late to interrupt anything
    assert_same_run(tmp_path / "one", halves)


def _loss(encoder, records, weight) -> tuple[torch.Tensor, torch.Tensor]:
    codes = encoder(getattr(encoder, "module", encoder).prepare(records))
    return codes.square().mean(1).mean() * weight, codes.detach()


def _one_step_on_a_share(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    encoder = distributed.sync_batch_norms(SNEEncoder(**SMALL).double().train())
    model = torch.nn.parallel.DistributedDataParallel(encoder, find_unused_parameters=True)
    records = mixed_records(torch.float64)
    share = records[rank::2]
    loss, codes = _loss(model, share, len(share) * 2 / len(records))
    loss.backward()
    torch.save({"codes": codes, "grads": {n: p.grad for n, p in encoder.named_parameters()},
                "buffers": dict(encoder.named_buffers())}, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


def test_one_step_on_two_processes_is_the_step_of_one(tmp_path):
    """Batch statistics over both processes' networks, losses weighted by share: codes, gradients
    and running statistics of one process, in float64 (6 networks of 6 architectures, 3 + 3)."""
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL).double().train()
    records = mixed_records(torch.float64)
    loss, codes = _loss(encoder, records, 1.0)
    loss.backward()
    port = 29000 + os.getpid() % 1000
    torch.multiprocessing.spawn(_one_step_on_a_share, args=(port, str(tmp_path)), nprocs=2)
    shares = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    for rank, share in enumerate(shares):
        torch.testing.assert_close(share["codes"], codes[rank::2], atol=1e-10, rtol=0)
        for name, parameter in encoder.named_parameters():
            if parameter.grad is None:
                assert share["grads"][name] is None, name
            else:
                torch.testing.assert_close(share["grads"][name], parameter.grad, atol=1e-10, rtol=1e-9, msg=name)
        for name, buffer in encoder.named_buffers():
            torch.testing.assert_close(share["buffers"][name], buffer, atol=1e-12, rtol=0, msg=name)
