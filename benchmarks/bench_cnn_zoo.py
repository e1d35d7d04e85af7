"""CNN-zoo training throughput: the stacked recipe code vs one ``nn.Module`` at a time.

Both train the same networks (the first ids of seed 0: same sampled hyper-parameters, initial
weights, mini-batches and dropout masks) for the same number of epochs, then evaluate them on the
dataset's train and test parts. The stacked side is the recipe's ``generate_shard`` (all networks in
one shard, grouped by activation); the one-at-a-time side is :func:`sne.zoo.cnn.train_alone`
(``ZooCnn`` + ``torch.optim``) plus a plain evaluation, on the first ``--sequential`` networks only,
its rate extrapolated per network (the JSON says so). Each recipe is measured at every thread count.

    python benchmarks/bench_cnn_zoo.py --networks 128 --sequential 6 --threads 1,2
"""

from __future__ import annotations

import argparse
import os

# OpenMP reads this once, when torch loads: spinning threads make CPU timings swing (GUIDE, section 8).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sne.allocator import keep_large_blocks_in_heap  # noqa: E402
from sne.data import load_dataset  # noqa: E402
from sne.bench.environment import cpu_model  # noqa: E402
from sne.io_utils import write_json_atomic  # noqa: E402
from sne.zoo.cnn import train_alone  # noqa: E402
from sne.zoo.recipes import FitProgress, get_recipe  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stacked(recipe, options: dict, networks: int) -> tuple[float, np.ndarray]:
    """Seconds and test accuracies of the recipe's stacked training of networks 0..networks-1."""
    device = torch.device(options["device"])
    synchronize(device)
    start = time.perf_counter()
    shard = recipe.generate_shard(np.arange(networks), 0, options, FitProgress())
    synchronize(device)
    return time.perf_counter() - start, np.array([row["test_accuracy"] for row in shard.rows])


@torch.no_grad()
def _accuracy(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 512) -> float:
    correct = sum(int((model(x[i : i + chunk]).argmax(1) == y[i : i + chunk]).sum()) for i in range(0, len(y), chunk))
    return correct / len(y)


def run_sequential(recipe, options: dict, networks: int) -> tuple[float, np.ndarray]:
    """Seconds and test accuracies of training networks 0..networks-1 one ``nn.Module`` at a time."""
    data = load_dataset(options["dataset"])
    accuracies = []
    start = time.perf_counter()
    for network_id in range(networks):
        model, _ = train_alone(recipe, network_id, 0, options)
        model.eval()
        _accuracy(model, data.train_x, data.train_y)  # the stacked side evaluates on both parts too
        accuracies.append(_accuracy(model, data.test_x, data.test_y))
    return time.perf_counter() - start, np.array(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="small-cnn,cnn-s")
    parser.add_argument("--networks", type=int, default=128, help="networks trained stacked (one group)")
    parser.add_argument("--sequential", type=int, default=6, help="networks trained one at a time (a prefix)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every network (not sampled here)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench_cnn_zoo.json"))
    args = parser.parse_args()

    heap_kept = keep_large_blocks_in_heap()  # as under the command line that users run
    load_dataset(args.dataset)  # loading is not training: keep it out of the timings
    runs = []
    for name in args.recipes.split(","):
        recipe = get_recipe(name)
        options = recipe.resolve_options({
            "dataset": args.dataset, "epochs": args.epochs, "epochs_min": args.epochs,
            "batch_size": args.batch_size, "group_size": args.networks, "device": args.device,
        })
        sequential_count = min(args.sequential, args.networks)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            stacked_seconds, stacked_accuracy = run_stacked(recipe, options, args.networks)
            sequential_seconds, sequential_accuracy = run_sequential(recipe, options, sequential_count)
            stacked_rate = args.networks * args.epochs / stacked_seconds
            sequential_rate = sequential_count * args.epochs / sequential_seconds
            # Same networks, same batches and masks: their accuracies must agree (up to rounding).
            agreement = float(np.abs(stacked_accuracy[:sequential_count] - sequential_accuracy).max())
            runs.append({
                "recipe": name,
                "torch_threads": threads,
                "stacked": {
                    "networks": args.networks,
                    "seconds": stacked_seconds,
                    "seconds_per_epoch_all_networks": stacked_seconds / args.epochs,
                    "network_epochs_per_second": stacked_rate,
                    "test_accuracy_median": float(np.median(stacked_accuracy)),
                },
                "sequential": {
                    "networks": sequential_count,
                    "seconds": sequential_seconds,
                    "network_epochs_per_second": sequential_rate,
                    "note": f"ZooCnn + torch.optim, one network at a time, on the first {sequential_count} of the "
                    f"{args.networks} networks; its rate is extrapolated per network",
                },
                "max_test_accuracy_difference": agreement,
                "speedup": stacked_rate / sequential_rate,
            })
            print(
                f"{name}, {threads} thread(s): stacked {stacked_seconds:.1f} s for {args.networks} networks x "
                f"{args.epochs} epoch(s) ({stacked_rate:.1f} network-epochs/s), one at a time "
                f"{sequential_rate:.2f} network-epochs/s, speedup {stacked_rate / sequential_rate:.1f}x"
            )
    result = {
        "benchmark": "CNN-zoo training throughput, stacked recipe vs one model at a time",
        "what_is_timed": "training for the given epochs plus evaluation on the train and test parts, per network",
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "runs": runs,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        # glibc returns large freed buffers to the OS unless told otherwise (sne.allocator; or the user's MALLOC_*).
        "large_blocks_kept_in_heap": heap_kept,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "torch_version": torch.__version__,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device)),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    write_json_atomic(args.out, result)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
