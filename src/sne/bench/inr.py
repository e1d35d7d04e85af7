"""Benchmarks on one INR zoo: frequency regression on sine INRs (the SNE paper's Table 1) and
label classification on digit INRs (the Neural Graphs / DWSNet task).

Trains every requested (encoder, invariance weight, seed) on the zoo with the shared training
code, evaluates each on the test split, and merges the rows into one results JSON per benchmark
and initialisation protocol. Runs live under ``runs_dir`` and resume when the command is repeated.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from sne.bench.paper import PAPER_INR_FREQUENCY_MSE
from sne.bench.results import check_mergeable, write_merged, zoo_identity, zoo_summary
from sne.bench.runs import BenchRuns, options_key
from sne.errors import SneError
from sne.io_utils import bounded_path
from sne.train.evaluate import evaluate_run
from sne.train.run import fit
from sne.zoo import Zoo


#: benchmark name -> (target column, the literature's numbers for it or None).
INR_BENCHMARKS = {"inr_frequency": ("frequency", PAPER_INR_FREQUENCY_MSE), "digit_inr_label": ("label", None)}


def run_inr_benchmark(
    zoo_path: str | Path,
    runs: BenchRuns,
    invariance_weights: Sequence[float] = (0.0,),
    benchmark: str = "inr_frequency",
) -> Path:
    """Run ``benchmark`` (a key of :data:`INR_BENCHMARKS`); return the results file's path."""
    if benchmark not in INR_BENCHMARKS:
        raise SneError(f"unknown benchmark '{benchmark}' (expected one of {', '.join(INR_BENCHMARKS)})")
    target, paper = INR_BENCHMARKS[benchmark]
    zoo = Zoo.open(zoo_path)
    if target not in zoo.targets:
        raise SneError(f"the zoo at {zoo.path} has no target '{target}': is it the right kind of zoo for {benchmark}?")
    init = zoo.manifest.get("options", {}).get("init", "unknown")
    # A derived zoo (sne zoo derive) is other data: its results go to a file of their own.
    variant = zoo.manifest.get("options", {}).get("variant")
    views = zoo.manifest.get("options", {}).get("views", 1)
    # Several INRs per image (digit-inr -o views=K) are other data than one: a file of their own.
    label = "_".join([init, *([variant] if variant else []), *([f"views{views}"] if views > 1 else [])])
    path = runs.results_dir / f"{benchmark}_{label}.json"
    # Refused now rather than after hours of training: the file holds results on another zoo.
    described = zoo_summary(zoo)
    check_mergeable(path, {"benchmark": benchmark, "zoo": described}, lambda r: zoo_identity(r["zoo"]))
    entries = []
    for encoder in runs.encoders:
        for weight in invariance_weights:
            for seed in runs.seeds:
                run_dir = bounded_path(runs.runs_dir / f"{runs.run_name(encoder)}_lambda{weight:g}_seed{seed}")
                config = runs.train_config(encoder, zoo.path, target, seed, invariance_weight=weight)
                started = time.perf_counter()
                summary = fit(config, run_dir)
                result = evaluate_run(run_dir, device=runs.device, test_time_flips=summary["test_time_flips"])
                result["wall_seconds_this_invocation"] = time.perf_counter() - started
                result["encoder_options_given"] = runs.options_for(encoder)
                entries.append(result)
    summary = {
        "benchmark": benchmark,
        "command": runs.command,
        "zoo": described,
        "init": init,
        "variant": variant,
        "paper_mse": paper,
        "entries": entries,
    }
    return write_merged(path, summary, lambda r: zoo_identity(r["zoo"]), entry_identity)


def entry_identity(entry: dict) -> tuple:
    """Rows of one results file differ by encoder, options given, lambda, seed and epochs (a longer
    run of a configuration is a row beside the shorter one, not its replacement)."""
    return entry["encoder"], options_key(entry), entry["invariance_weight"], entry["train_seed"], entry["epochs"]
