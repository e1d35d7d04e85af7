"""Trained runs evaluated group by group: each run's test metrics on each zoo, split by one column of
the zoo's table (:func:`sne.train.evaluate.grouped_metrics`), into ``results/NAME.json``.

An overall number hides where an encoder's error comes from: which hyper-parameters of the networks,
which range of the target. Running again with more runs adds their rows; a file that groups by
another column, or in other bins, is refused (:func:`sne.bench.results.write_merged`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from sne.bench.results import write_merged, zoo_label, zoo_summary
from sne.bench.transfer import check_results_name
from sne.errors import SneError
from sne.train.evaluate import DEFAULT_BINS, evaluate_run
from sne.train.run import load_run
from sne.zoo import Zoo

BENCHMARK = "grouped_evaluation"


def grouped_evaluation(name: str, runs: Sequence[str | Path], zoos: Sequence[str | Path], by: str,
                       bins: int = DEFAULT_BINS, device: str = "cpu", command: str | None = None,
                       results_dir: str | Path = "results") -> Path:
    """Evaluate every run of ``runs`` on the test split of every zoo of ``zoos`` (none: each run's
    own zoo), grouped by the zoos' column ``by``; merge the rows into ``results_dir/NAME.json``."""
    path = Path(results_dir) / f"{check_results_name(name)}.json"
    if not runs:
        raise SneError("name at least one run directory to evaluate")
    entries = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, run_dir in enumerate(runs):
            run = load_run(run_dir, device=device)
            config, train_zoo = run.config, zoo_label(Zoo.open(run.zoo_path))
            for zoo_path in zoos or [run.zoo_path]:
                zoo = Zoo.open(zoo_path)
                result = evaluate_run(run_dir, zoo.path, device=device, out=Path(scratch) / f"{i}.json", plot=False,
                                      sensitivity=False, by=by, bins=bins)
                entries.append({**{k: v for k, v in result.items() if k not in ("path", "zoo_options", "zoo_recipe")},
                                "encoder_options_given": config.encoder_options or {},
                                "seed": config.seed, "zoo": zoo_label(zoo), "zoo_summary": zoo_summary(zoo),
                                "train_zoo": train_zoo})
    result = {"benchmark": BENCHMARK, "name": name, "by": by, "bins": bins, "command": command, "entries": entries}
    return write_merged(path, result, data_key=lambda r: (r.get("by"), r.get("bins")),
                        entry_key=lambda e: (e["run"], e["zoo"]))
