"""NG-GNN and NG-T beside SNE: training throughput and peak memory.

Throughput: forward + backward + Adam step on batches of 64 networks with random weights, (a) sine-INR
SIRENs 1->32->32->1, (b) GUIDE section 6 small CNNs (3 x Conv2d(16, 3x3, stride 2) + global pool +
Linear(16, 10)) recorded from random modules with ``record_from_module``; median over the timed steps.
Peak memory: growth of ``ru_maxrss`` over the steps, a fresh process per row. How encoding one
network grows with its size is ``bench_encode_scale.py``.

    python benchmarks/bench_neural_graph_memory.py --threads 1
"""

from __future__ import annotations

import os

# Read by OpenMP when torch loads: spinning threads make CPU timings swing here (GUIDE section 8).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sne.bench.environment import cpu_model  # noqa: E402
from sne.encoders import build_encoder
from sne.io_utils import write_json_atomic
from sne.weights import record_from_module
from sne.weights.record import NetworkRecord, make_layer

def siren_records(count: int, seed: int) -> list[NetworkRecord]:
    generator = torch.Generator().manual_seed(seed)
    shapes, activations = [(32, 1), (32, 32), (1, 32)], ["sine", "sine", "identity"]
    return [
        NetworkRecord(tuple(
            make_layer(f"layers.{i}", i, torch.randn(*shape, generator=generator) / shape[1] ** 0.5,
                       0.1 * torch.randn(shape[0], generator=generator), activation)
            for i, (shape, activation) in enumerate(zip(shapes, activations))
        ))
        for _ in range(count)
    ]


def small_cnn_records(count: int, seed: int) -> list[NetworkRecord]:
    torch.manual_seed(seed)
    return [
        record_from_module(nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
        ))
        for _ in range(count)
    ]


def throughput(encoder_name: str, shape: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records = siren_records(args.batch, 1) if shape == "siren_1-32-32-1" else small_cnn_records(args.batch, 1)
    encoder = build_encoder(encoder_name)
    encoder.fit_input_statistics(records)
    head = nn.Linear(encoder.out_dim, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    targets = torch.rand(args.batch)
    started = time.perf_counter()
    batch = encoder.prepare(records)
    prepare_s = time.perf_counter() - started

    def step() -> None:
        loss = (head(encoder(batch)).squeeze(1) - targets).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    memory_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "encoder": encoder_name,
        "shape": shape,
        "batch": args.batch,
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "nodes_per_batch": int(getattr(batch, "node_role", torch.empty(0)).numel()),
        "edges_per_batch": int(getattr(batch, "edge_type", torch.empty(0)).numel()),
        "prepare_s": prepare_s,
        "step_s_median": median,
        "step_s_all": times,
        "networks_per_s": args.batch / median,
        "train_peak_memory_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - memory_base) / 2**10,
    }


def _names(values: str) -> list[str]:
    """A comma-separated option as a list; empty: nothing (that part of the benchmark is skipped)."""
    return [v for v in values.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--encoders", default="ng_gnn,ng_t,sne", help="encoders timed for training throughput and peak memory")
    parser.add_argument("--out", type=Path, default=Path("results/bench_neural_graph_memory.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    # A fresh process per measurement: ru_maxrss never decreases, so a shared process would mix peaks.
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        speed = [pool.apply(throughput, (name, shape, args))
                 for name in _names(args.encoders) for shape in ("siren_1-32-32-1", "small_cnn")]
    report = {
        "benchmark": "neural_graph_memory",
        "device": "cpu",
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "encoder_options": "defaults of each encoder",
        "throughput_method": "median wall time of forward + backward + Adam step over the timed steps",
        "memory_method": "growth of ru_maxrss over the training steps, fresh process per row",
        "throughput": speed,
    }
    write_json_atomic(args.out, report)
    for r in speed:
        print(f"{r['encoder']:>7} {r['shape']:>16}: {r['step_s_median']:.2f} s/step, {r['networks_per_s']:.1f} "
              f"networks/s, {r['edges_per_batch']} edges, train peak +{r['train_peak_memory_mb']:.0f} MB, "
              f"{r['encoder_parameters']} params")



if __name__ == "__main__":
    main()
