"""Training throughput and parameter count of every registered encoder, side by side.

For each encoder in the registry (encoders added later show up without changes here) and each
network shape, with default options: one training step on a prepared batch of networks is
forward + backward + Adam step of the encoder and a linear head. Networks/s = batch / median step
time; ``prepare`` (CPU, may run in data-loader workers) is timed once, separately. Shapes, random
weights built with ``sne.weights.record_from_module``: (a) sine-INR SIRENs 1->32->32->1,
(b) the small-CNN-zoo architecture (GUIDE section 6). Fixed-architecture encoders are built for
the shape at hand. An encoder that cannot be built or cannot take a shape is listed with the
reason. ``--variant NAME:key=value,...`` adds a row for an encoder with options given (default: SNE
with its optional source-neuron features and input positions, off in its defaults). Encoders with
a self-supervised ``pretrain`` stage (hyperrep) also get that stage timed, with their default
options, on the same batch; their training step then trains only what is not frozen. Results go
to ``results/bench_encoders.json``.

    python benchmarks/bench_encoders.py --steps 5 --threads 1

SNE's peak memory and FLOPs per step stay in ``bench_sne_train.py``; here SNE is one row among all.
"""

from __future__ import annotations

import os

# Read by OpenMP when torch loads: spinning threads make CPU timings swing here (GUIDE section 8).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sne.bench.environment import cpu_model  # noqa: E402
from sne.bench.runs import configuration_label
from sne.cli import parse_options
from sne.encoders import Encoder, batch_to, build_encoder, encoder_names
from sne.errors import SneError, one_line
from sne.io_utils import write_json_atomic
from sne.weights import record_from_module
from sne.weights.record import NetworkRecord


def siren_module() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 32), nn.Linear(32, 32), nn.Linear(32, 1))


def small_cnn_module() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


SHAPES = {"siren_1-32-32-1": siren_module, "small_cnn": small_cnn_module}


def random_records(shape: str, count: int, seed: int) -> list[NetworkRecord]:
    """``count`` networks of ``shape`` with PyTorch's default random initialisation."""
    torch.manual_seed(seed)
    return [record_from_module(SHAPES[shape](), source=f"{shape}#{i}") for i in range(count)]


#: Encoder options benchmarked beside the defaults unless --variant says otherwise.
DEFAULT_VARIANTS = ["sne:use_source_features=true", "sne:use_source_features=true,use_input_positions=true"]


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (encoder name, options given)."""
    name, _, options = text.partition(":")
    return name, parse_options([pair for pair in options.split(",") if pair])


def measure(
    name: str, shape: str, records: list[NetworkRecord], args: argparse.Namespace, options: dict | None = None
) -> dict:
    entry: dict = {"encoder": name, "shape": shape, "batch": len(records)}
    if options:
        entry["encoder_options_given"] = options
    torch.manual_seed(0)
    try:
        encoder = build_encoder(name, architecture=records[0].architecture, **(options or {}))
        encoder.check_records(records)
        encoder.fit_input_statistics(records)
    except (SneError, ImportError) as error:
        return {**entry, "skipped": one_line(error)}
    device = torch.device(args.device)
    encoder.to(device)
    entry["parameters"] = sum(p.numel() for p in encoder.parameters())
    entry["options"] = encoder.options

    if type(encoder).pretrain is not Encoder.pretrain:
        start = time.perf_counter()
        log = encoder.pretrain(records, {"seed": 0, "batch_size": args.batch, "device": str(device)}, False)
        seconds = time.perf_counter() - start
        epochs = len(log.get("epochs", [])) if isinstance(log, dict) else 0
        entry["pretrain"] = {"seconds": seconds, "epochs": epochs,
                             "networks_per_s": len(records) * epochs / seconds if epochs else None}

    head = nn.Linear(encoder.out_dim, 1).to(device)
    trainable = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    start = time.perf_counter()
    batch = encoder.prepare(records)
    entry["prepare_s"] = time.perf_counter() - start
    batch = batch_to(batch, device)
    targets = torch.rand(len(records), device=device)
    encoder.train()

    def step() -> None:
        loss = (head(encoder(batch)).squeeze(1) - targets).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    with_grad = sum(p.numel() for p in encoder.parameters() if p.grad is not None)
    return {**entry, "step_s_median": median, "step_s_all": times, "networks_per_s": len(records) / median,
            "encoder_parameters_with_gradient": with_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--encoders", default="all", help="Comma-separated names, or all.")
    parser.add_argument("--variant", action="append", default=None,
                        help=f"NAME:key=value,... an encoder with options (repeatable; default {DEFAULT_VARIANTS}).")
    parser.add_argument("--out", type=Path, default=Path("results/bench_encoders.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = encoder_names() if args.encoders == "all" else args.encoders.split(",")
    configurations = [(name, {}) for name in names] + [
        parse_variant(v) for v in (DEFAULT_VARIANTS if args.variant is None else args.variant)
    ]

    results = []
    for shape in SHAPES:
        records = random_records(shape, args.batch, seed=1)
        for name, options in configurations:
            entry = measure(name, shape, records, args, options)
            results.append(entry)
            name = configuration_label(name, options)
            if "skipped" in entry:
                print(f"{shape:>16} {name:>10}: skipped ({entry['skipped']})")
                continue
            pretrain = entry.get("pretrain")
            speed = pretrain and pretrain["networks_per_s"]
            extra = f", pretraining {speed:.0f} networks/s" if speed else ""
            print(f"{shape:>16} {name:>10}: {entry['networks_per_s']:8.0f} networks/s "
                  f"({entry['step_s_median'] * 1e3:.1f} ms/step), {entry['parameters']:,} parameters{extra}")

    report = {
        "benchmark": "encoders",
        "measures": "median time of forward + backward + Adam step (encoder + linear head) on one prepared batch",
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "command": "python benchmarks/bench_encoders.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "variant"))
        + "".join(f" --variant {v}" for v in (args.variant or [])),
        "results": results,
    }
    write_json_atomic(args.out, report)
    print(f"threads {args.threads}; written to {args.out}")


if __name__ == "__main__":
    main()
