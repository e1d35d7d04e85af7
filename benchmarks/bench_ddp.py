"""Training throughput on 1 and on N processes (``torchrun --nproc_per_node N -m sne train``).

A sine-INR zoo is generated once (shared initialisation, ``--n`` networks) into ``--work``; then the
same ``sne train`` command (SNE, default options) runs on 1 process and on ``--processes`` processes,
each process on one thread. Networks/s = training networks per epoch / median seconds of an epoch's
training (from the run's history.json, validation excluded; the first epoch is dropped as warm-up).

    python benchmarks/bench_ddp.py --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from sne.bench.environment import cpu_model
from sne.io_utils import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def train(zoo: Path, out: Path, processes: int, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    common = ["train", "--zoo", str(zoo), "--target", "frequency", "--encoder", "sne", "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--seed", "0", "--device", "cpu", "--out", str(out)]
    if processes == 1:
        command = [str(BIN / "sne"), *common]
    else:
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(processes), "-m", "sne", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    history = json.loads((out / "history.json").read_text())
    # An epoch's seconds include its validation, which every process runs whole.
    seconds = [entry["seconds"] for entry in history[1:]] or [history[0]["seconds"]]
    config = json.loads((out / "config.json").read_text())
    return {"processes": processes, "epoch_seconds": [e["seconds"] for e in history],
            "median_epoch_s": statistics.median(seconds), "command": " ".join(command[:1] + common), "config": config}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sne-bench-ddp"))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_ddp.json")
    args = parser.parse_args()

    zoo = args.work / "zoo"
    if not (zoo / "metadata.parquet").exists():
        subprocess.run([str(BIN / "sne"), "zoo", "generate", "sine-inr", "--n", str(args.n), "--seed", "0", "--init",
                        "shared", "--out", str(zoo)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    manifest = json.loads((zoo / "manifest.json").read_text())
    train_networks = manifest["splits"]["train"]
    rows = []
    for processes in (1, args.processes):
        row = train(zoo, args.work / f"run{processes}", processes, args)
        row["networks_per_s"] = train_networks / row["median_epoch_s"]
        rows.append(row)
        print(f"{processes} process(es): {row['median_epoch_s']:.1f} s/epoch, {row['networks_per_s']:.1f} networks/s",
              flush=True)
    write_json_atomic(args.out, {
        "benchmark": "ddp",
        "device": "cpu",
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads_per_process": 1,
        "load_average_after": os.getloadavg(),
        "zoo": {"recipe": "sine-inr", "n": args.n, "init": "shared", "train_networks": train_networks},
        "method": "median seconds of an epoch (training plus validation, history.json), first epoch dropped; "
                  "networks/s = training networks / that",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
