"""SNE training throughput and peak memory: forward + backward + Adam step on batches of 64 networks.

Two network shapes with random weights: (a) sine-INR SIRENs 1->32->32->1, (b) small CNNs
(3 x Conv2d(16, 3x3) from 1 channel + Linear(16, 10)). Each shape runs in a fresh process so that
the peak memory of the training steps (CPU: growth of ``ru_maxrss`` from before the first step; CUDA:
``torch.cuda.max_memory_allocated``) is its own. Every configuration (``--config NAME:key=value,...``;
by default today's defaults, preset wide, the earlier ones and the first release's) is measured in the
same run,
so their ratios compare like with like. Results go to ``results/bench_sne_train.json``.

    python benchmarks/bench_sne_train.py --steps 10 --threads 1
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
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sne.bench.environment import cpu_model  # noqa: E402
from sne.cli import format_options, parse_options
from sne.encoders import batch_to
from sne.encoders.sne import SNEEncoder
from sne.io_utils import write_json_atomic
from sne.weights.record import NetworkRecord, make_layer

SHAPES = {
    "siren_1-32-32-1": [(32, 1), (32, 32), (1, 32)],
    "small_cnn": [(16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (10, 16)],
}


def random_records(shapes: list[tuple[int, ...]], count: int, seed: int) -> list[NetworkRecord]:
    generator = torch.Generator().manual_seed(seed)
    return [
        NetworkRecord(
            tuple(
                make_layer(
                    f"layer{level}",
                    level,
                    torch.randn(*shape, generator=generator) / shape[1] ** 0.5,
                    0.1 * torch.randn(shape[0], generator=generator),
                )
                for level, shape in enumerate(shapes)
            )
        )
        for _ in range(count)
    ]


#: The earlier defaults where today's differ (the chunk stage at full width, no neuron features,
#: neuron order encoded): the options a config written before each change resolves to.
PREVIOUS_DEFAULT = ",".join(format_options(SNEEncoder.defaults_of_older_configs))
#: Configurations measured unless --config says otherwise: today's defaults, with the chunk stage at
#: the paper's width and depth, the earlier defaults, and the first release's (the earlier ones with
#: one set per part).
DEFAULT_CONFIGS = ["default:", "wide:preset=wide", f"previous-default:{PREVIOUS_DEFAULT}",
                   f"first-release:part_window=null,{PREVIOUS_DEFAULT}"]


def parse_config(text: str) -> tuple[str, dict]:
    """``NAME:key=value,...`` -> (name, SNE options)."""
    name, _, options = text.partition(":")
    return name, parse_options([pair for pair in options.split(",") if pair])


def run_shape(shape_name: str, config: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    name, options = parse_config(config)
    if args.chunk_micro_batch is not None:
        options["chunk_micro_batch"] = args.chunk_micro_batch
    encoder = SNEEncoder(**options).to(device)
    head = torch.nn.Linear(encoder.out_dim, 1).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    records = random_records(SHAPES[shape_name], args.batch, seed=1)
    targets = torch.rand(args.batch, device=device)

    prepare_start = time.perf_counter()
    cpu_batch = encoder.prepare(records)
    prepare_s = time.perf_counter() - prepare_start
    batch = batch_to(cpu_batch, device)

    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def step() -> None:
        started = time.perf_counter()
        loss = (head(encoder(batch)).squeeze(1) - targets).square().mean()
        synchronize()
        forward_done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        synchronize()
        backward_done = time.perf_counter()
        optimizer.step()
        synchronize()
        for phase, seconds in zip(phases, (forward_done - started, backward_done - forward_done,
                                           time.perf_counter() - backward_done)):
            phases[phase].append(seconds)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        memory_base = torch.cuda.memory_allocated(device)
    else:
        memory_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.warmup):
        step()
    for timings in phases.values():
        timings.clear()
    times = []
    for _ in range(args.steps):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - memory_base) / 2**20
        memory_method = "torch.cuda.max_memory_allocated above the allocation before the first step"
    else:
        # ru_maxrss (KiB on Linux) never decreases: its growth since setup is the steps' peak.
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - memory_base) / 2**10
        memory_method = "growth of ru_maxrss from before the first step"

    # FLOPs of one step, after the memory measurement: FlopCounterMode counts the math attention
    # kernel (which materialises the attention matrix), not the fused ones used above.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    median = statistics.median(times)
    return {
        "config": name,
        "options_given": options,
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "shape": shape_name,
        "layers": [list(s) for s in SHAPES[shape_name]],
        "batch": args.batch,
        "chunks_per_batch": int(batch.element_mask.shape[0]),
        "real_elements_fraction": float(batch.element_mask.float().mean()),
        "prepare_s": prepare_s,
        "step_s_median": median,
        "step_s_all": times,
        "networks_per_s": args.batch / median,
        # Where a step's time goes (medians); prepare_s, once per batch, runs in data-loader workers
        # when --workers is given.
        "phase_s_median": {phase: statistics.median(timings[: args.steps]) for phase, timings in phases.items()},
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / 1e9 / median,
        "peak_memory_mb": peak_mb,
        "peak_rss_mb": peak_rss_mb,
        "memory_method": memory_method,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk-micro-batch", type=int, default=None)
    parser.add_argument("--config", action="append", default=None,
                        help=f"NAME:key=value,... SNE options to measure (repeatable; default {DEFAULT_CONFIGS})")
    parser.add_argument("--out", type=Path, default=Path("results/bench_sne_train.json"))
    args = parser.parse_args()

    # A fresh process per shape: ru_maxrss never decreases, so a shared process would mix peaks.
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        results = [pool.apply(run_shape, (name, config, args)) for config in args.config or DEFAULT_CONFIGS
                   for name in SHAPES]

    encoder = SNEEncoder()
    report = {
        "benchmark": "sne_train",
        "default_encoder_options": encoder.options,
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(args.device),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "steps": args.steps,
        "warmup": args.warmup,
        "results": results,
    }
    write_json_atomic(args.out, report)
    for r in results:
        print(
            f"{r['config']:>16} {r['shape']:>16}: {r['step_s_median']:.3f} s/step, {r['networks_per_s']:.0f} networks/s, "
            f"{r['gflop_per_step']:.1f} GFLOP/step ({r['gflop_per_s']:.0f} GFLOP/s), "
            f"peak +{r['peak_memory_mb']:.0f} MB (rss {r['peak_rss_mb']:.0f} MB), {r['chunks_per_batch']} chunks"
        )
    print(f"encoder parameters: {report['encoder_parameters']}; threads {args.threads}; written to {args.out}")


if __name__ == "__main__":
    main()
