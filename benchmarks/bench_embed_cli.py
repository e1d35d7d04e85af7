"""Encoding real-size checkpoints with the installed command line: ``sne embed`` on a ResNet-18 and a ViT-S.

What a user runs, timed as a whole: a fresh ``sne embed RUN FILE --arch ...`` process per network
(start-up, reading the run, loading and tracing the checkpoint, encoding, writing the code), one
CPU thread. The checkpoints are the reference architectures of ``bench_record.py`` with random
weights, saved here as safetensors (nothing downloaded); the run is an SNE at today's defaults
trained for one epoch on a small sine-INR zoo made here (the codes mean nothing; the work of
encoding does not depend on what the encoder learned). A tiny INR checkpoint gives the fixed cost
of a call. Peak memory is the largest resident set of the ``sne embed`` process.

    python benchmarks/bench_embed_cli.py --threads 1
"""

from __future__ import annotations

import os

# Read by OpenMP when torch loads: spinning threads make CPU timings swing here (GUIDE section 8).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_record import NETWORKS  # noqa: E402

from sne.bench.environment import cpu_model  # noqa: E402
from sne.encoders import get_encoder_class  # noqa: E402
from sne.io_utils import write_json_atomic  # noqa: E402
from sne.weights.io import save_state_dict_file  # noqa: E402

#: Runs one command and prints its wall seconds and the peak resident set (KiB) of its children.
_MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
            "print(rc.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.stderr.write(rc.stderr.decode()[-2000:])")


def resnet18():
    """``--arch`` factory: the ResNet-18 of bench_record.py (module, example input)."""
    return NETWORKS["resnet18"]()


def vit_s16():
    """``--arch`` factory: the ViT-S/16 of bench_record.py (module, example input)."""
    return NETWORKS["vit_s16"]()


def tiny_inr():
    """``--arch`` factory: a sine-INR-shaped MLP 1 -> 32 -> 32 -> 1."""
    return torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 1))


FACTORIES = {"tiny_inr": tiny_inr, "resnet18": resnet18, "vit_s16": vit_s16}


def sne_command() -> list[str]:
    beside = Path(sys.executable).with_name("sne")
    return [str(beside)] if beside.exists() else [shutil.which("sne") or "sne"]


def measured(command: list[str], env: dict) -> tuple[int, float, float, str]:
    """(exit code, wall seconds, peak resident MB, stderr tail) of ``command`` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, env=env,
                          check=True)
    code, seconds, peak_kib = done.stdout.split()
    return int(code), float(seconds), int(peak_kib) / 1024, done.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--networks", default=",".join(FACTORIES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_embed_cli.json")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    sne = sne_command()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        setup = [[*sne, "zoo", "generate", "sine-inr", "--n", "64", "--seed", "0", "--steps", "50",
                  "--device", "cpu", "--out", str(scratch / "zoo")],
                 [*sne, "train", "--zoo", str(scratch / "zoo"), "--target", "frequency", "--encoder", "sne",
                  "--epochs", "1", "--device", "cpu", "--out", str(scratch / "run")]]
        for command in setup:
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        options = json.loads((scratch / "run" / "config.json").read_text()).get("encoder_options", {})
        resolved = get_encoder_class("sne").resolved_options(options)
        for name in [n for n in args.networks.split(",") if n]:
            built = FACTORIES[name]()
            module = built[0] if isinstance(built, tuple) else built
            checkpoint = scratch / f"{name}.safetensors"
            save_state_dict_file(module.state_dict(), checkpoint)
            command = [*sne, "embed", str(scratch / "run"), str(checkpoint), "--arch", f"{Path(__file__)}:{name}",
                       "--device", "cpu", "--out", str(scratch / f"{name}.npy")]
            code, seconds, peak_mb, err = measured(command, env)
            row = {"network": name, "parameters": sum(p.numel() for p in module.parameters()),
                   "exit_code": code, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb)}
            if code != 0:
                row["error"] = err.splitlines()[-1] if err else "no message"
            rows.append(row)
            print(row, flush=True)
    write_json_atomic(args.out, {
        "benchmark": "embed_cli",
        "method": " ".join(__doc__.split("\n\n")[1].split()),
        "command": "python benchmarks/bench_embed_cli.py " + " ".join(sys.argv[1:]),
        "device": "cpu", "cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "encoder": "sne", "encoder_options_given": options,
        "encoder_options_resolved": resolved,
        "networks": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
