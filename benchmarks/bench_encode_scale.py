"""Encoding one network, from its record to its code, as the network grows: time and peak memory.

One CPU thread, eval mode, no gradients, one network per call, a fresh process per (encoder, size)
so that each peak is its own. The clock and the memory baseline start after the record and the
encoder exist, so what is measured is the encoder's whole work on one network: its input
(``prepare_inference``: for SNE a plan whose elements are made run by run) and its forward pass.
Memory is the growth of ``ru_maxrss`` over that work (what the allocator really touched).

Networks: MLPs 64 -> w -> w -> 10 (tanh) with w for about 1e4, 1e5, 1e6, 1e7 and 2.5e7
parameters, random weights; then a ResNet-18 (11.2M parameters, BatchNorm, downsample shortcuts)
and a ViT-S/16 (21.7M, 12 blocks of multi-head attention) built locally from the test suite's
reference architectures and traced with ``record_from_module`` (random weights, nothing
downloaded). Each configuration stops at the first size that fails or passes ``--timeout``
seconds, and says why.

    python benchmarks/bench_encode_scale.py --threads 1
"""

from __future__ import annotations

import os

# Read by OpenMP when torch loads: spinning threads make CPU timings swing here (GUIDE section 8).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from sne.bench.environment import cpu_model  # noqa: E402
from sne.cli import format_options, parse_options  # noqa: E402
from sne.encoders import build_encoder  # noqa: E402
from sne.encoders.sne import SNEEncoder  # noqa: E402
from sne.errors import SneError, one_line  # noqa: E402
from sne.io_utils import write_json_atomic  # noqa: E402
from sne.weights.record import NetworkRecord, make_layer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Hidden widths of the MLPs 64 -> w -> w -> 10.
MLP_WIDTHS = {"1e4": 70, "1e5": 280, "1e6": 960, "1e7": 3130, "2.5e7": 4960}
#: Real architectures, encoded after the MLP curve (bench_record.py builds the same two).
ARCHITECTURES = ("resnet18", "vit_s16")
#: The earlier defaults where today's differ (the chunk stage at full width, no neuron features,
#: neuron order encoded): the options a config written before each change resolves to.
SNE_PREVIOUS_DEFAULT = ",".join(format_options(SNEEncoder.defaults_of_older_configs))
#: name:options of the encoders measured (sne's options as on the command line): SNE at today's
#: defaults, with the chunk stage at the paper's width and depth, at the earlier defaults, and as
#: first released (the earlier defaults with one set per part).
DEFAULT_CONFIGS = ["sne:", "sne-wide:preset=wide", f"sne-previous-default:{SNE_PREVIOUS_DEFAULT}",
                   f"sne-first-release:part_window=null,{SNE_PREVIOUS_DEFAULT}", "ng_gnn:", "ng_t:"]


def parse_config(text: str) -> tuple[str, str, dict]:
    """``LABEL:key=value,...`` -> (label, encoder name, options); the encoder is the label's first word."""
    label, _, options = text.partition(":")
    return label, label.split("-")[0], parse_options([pair for pair in options.split(",") if pair])


def mlp_record(width: int) -> NetworkRecord:
    generator = torch.Generator().manual_seed(0)
    widths = [64, width, width, 10]
    return NetworkRecord(tuple(
        make_layer(f"fc{i}", i, torch.randn(n_out, n_in, generator=generator) / n_in**0.5,
                   0.1 * torch.randn(n_out, generator=generator), "tanh" if i < 2 else "identity")
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
    ))


def architecture_record(name: str) -> NetworkRecord:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_record import NETWORKS
    from sne.weights import record_from_module

    return record_from_module(*NETWORKS[name]())


def encode_once(config: str, size: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    label, name, options = parse_config(config)
    record = mlp_record(MLP_WIDTHS[size]) if size in MLP_WIDTHS else architecture_record(size)
    entry = {"config": label, "encoder": name, "options_given": options, "size": size,
             "network_parameters": record.num_parameters, "cpu": cpu_model()}
    try:
        encoder = build_encoder(name, architecture=record.architecture, **options).eval()
        entry["options_resolved"] = dict(encoder.options)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        with torch.no_grad():
            code = encoder(encoder.prepare_inference([record]))
        seconds = time.perf_counter() - started
    except (SneError, MemoryError, RuntimeError) as error:
        return {**entry, "stopped": one_line(error)}
    return {**entry, "seconds": seconds, "peak_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
            / 2**10, "finite": bool(torch.isfinite(code).all())}


def merged_rows(earlier: list[dict], measured: list[dict]) -> list[dict]:
    """``earlier`` with each configuration in ``measured`` replaced by its new rows, in place;
    configurations new to the file come last."""
    new = {}
    for row in measured:
        new.setdefault(row["config"], []).append(row)
    rows = []
    for config in dict.fromkeys([*(row["config"] for row in earlier), *new]):
        rows += new.get(config) or [row for row in earlier if row["config"] == config]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a size counts as too slow")
    parser.add_argument("--config", action="append", default=None,
                        help=f"LABEL:key=value,... (repeatable; default {DEFAULT_CONFIGS})")
    parser.add_argument("--sizes", default=",".join([*MLP_WIDTHS, *ARCHITECTURES]))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_encode_scale.json")
    parser.add_argument("--keep-other-configs", action="store_true",
                        help="replace only the rows of the configurations measured in an existing --out; "
                             "rows keep the load average they were measured at")
    args = parser.parse_args()

    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    rows = []
    for config in args.config or DEFAULT_CONFIGS:
        stopped = None
        for size in [s for s in args.sizes.split(",") if s]:
            if stopped is not None and size in MLP_WIDTHS:
                continue  # larger MLPs only cost more; the real architectures are still tried
            # A fresh process per measurement: ru_maxrss never decreases.
            load = os.getloadavg()[0]
            with context.Pool(1, maxtasksperchild=1) as pool:
                pending = pool.apply_async(encode_once, (config, size, args.threads))
                try:
                    row = pending.get(timeout=args.timeout)
                except multiprocessing.TimeoutError:
                    label, name, options = parse_config(config)
                    row = {"config": label, "encoder": name, "options_given": options, "size": size,
                           "cpu": cpu_model(), "stopped": f"more than {args.timeout:.0f} s"}
                    pool.terminate()
            rows.append({**row, "load_average_1min_before": load})
            stopped = row.get("stopped") or stopped
            done = (f"{row['seconds']:.2f} s, +{row['peak_growth_mb']:.0f} MB" if "seconds" in row
                    else f"stopped: {row['stopped']}")
            print(f"{row['config']:>22} {size:>9}: {done}", flush=True)
    commands = ["python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])]
    if args.keep_other_configs and args.out.exists():
        earlier = json.loads(args.out.read_text())
        # Rows kept from an earlier file were measured on its CPU (files before rows said theirs).
        rows = merged_rows([{"cpu": earlier["cpu"], **row} for row in earlier["rows"]], rows)
        commands = [*earlier.get("commands", [earlier["command"]]), *commands]
    cpus = list(dict.fromkeys(row["cpu"] for row in rows))
    report = {
        "benchmark": "encode_scale",
        "device": "cpu",
        "cpu": cpus[0] if len(cpus) == 1 else "; ".join(cpus),
        "torch": torch.__version__,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "timeout_s": args.timeout,
        "method": "one network per call, eval mode, no grad, fresh process per row; seconds and growth of "
                  "ru_maxrss over prepare_inference + forward, after the record and the encoder exist",
        "command": commands[-1],
        "commands": commands,
        "rows": rows,
    }
    write_json_atomic(args.out, report)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
