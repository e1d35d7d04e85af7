"""Reading real-size networks: time of ``record_from_module`` (trace with torch.export + the symmetry
pass) and of one random equivalent permutation, on a ResNet-18 and a ViT-S built from the test suite's
reference architectures (tests/network_families.py) with random weights.

Median of ``--repeats`` timed runs after one warm-up (torch.export's first call in a process pays for
its own set-up); peak resident memory of the process at the end.

    python benchmarks/bench_record.py --threads 1
"""

from __future__ import annotations

import os

# Read by OpenMP when torch loads: spinning threads make CPU timings swing here (GUIDE section 8).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from sne.bench.environment import cpu_model  # noqa: E402
from sne.io_utils import write_json_atomic  # noqa: E402
from sne.weights import random_equivalent_permutation, record_from_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the reference architectures live beside the tests that use them
import network_families  # noqa: E402

NETWORKS = {
    "resnet18": lambda: network_families.resnet(depth_per_stage=(2, 2, 2, 2), widths=(64, 128, 256, 512),
                                                image=32),
    "vit_s16": lambda: network_families.vit(dim=384, depth=12, heads=6, patch=16, image=224, in_channels=3,
                                            mlp_ratio=4),
}


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_record.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, build in NETWORKS.items():
        module, example = build()
        record_from_module(module, example)  # warm-up
        record_seconds, record = timed(lambda: record_from_module(module, example), args.repeats)
        generator = torch.Generator().manual_seed(0)
        permute_seconds, _ = timed(lambda: random_equivalent_permutation(record, generator), args.repeats)
        rows.append({
            "network": name,
            "parameters": sum(p.numel() for p in module.parameters()),
            "operations": len(record.layers),
            "symmetry_groups": len(record.symmetries),
            "permuted_neurons": sum(group.size for group in record.symmetries),
            "record_s": round(record_seconds, 3),
            "permute_s": round(permute_seconds, 3),
        })
        print(rows[-1], flush=True)
    write_json_atomic(args.out, {
        "benchmark": "record",
        "method": " ".join(__doc__.split("\n\n")[:2]).replace("\n", " "),
        "command": f"python benchmarks/bench_record.py --threads {args.threads} --repeats {args.repeats}",
        "device": "cpu", "cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "networks": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
