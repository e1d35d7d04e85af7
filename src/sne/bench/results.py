"""Benchmark results files: what they say about zoos, and how repeated invocations accumulate.

A results file holds the entries of every invocation made on the same data: running a benchmark
again with other encoders (or seeds, or lambdas) adds their entries and replaces the ones it
recomputed, so one table can be built up step by step, on different machines. A file that holds
another benchmark's results, or results on other data, is never replaced: the write is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import Callable

from sne.errors import SneError
from sne.io_utils import write_json_atomic
from sne.zoo import Zoo


#: Recipe options that make zoos of one recipe and dataset other data; a label names them.
LABELLED_OPTIONS = ("kernel", "input_range", "init_gain", "hidden_gain", "hidden_gain_max", "views")


def zoo_label(zoo: Zoo) -> str:
    """A short name for a zoo in tables: ``recipe/dataset`` (or the directory name), plus the
    options of :data:`LABELLED_OPTIONS` it was made with (``small-cnn/digits kernel=7``)."""
    return label_of(zoo.manifest.get("recipe"), zoo.manifest.get("options") or {}, zoo.path.name)


def label_of(recipe: str | None, options: dict, directory: str) -> str:
    """:func:`zoo_label` from a zoo's recipe, recipe options and directory name."""
    dataset = options.get("dataset")
    label = f"{recipe}/{dataset}" if dataset else directory
    return " ".join([label, *(f"{key}={options[key]}" for key in LABELLED_OPTIONS if key in options)])


def targets_digest(zoo: Zoo) -> str:
    """A short digest of every network's target values: zoos made from the same recipe, options
    and seed by different code (other floating-point rounding) are told apart by it."""
    import pandas as pd

    columns = sorted(c for c in zoo.targets if c in zoo.metadata.columns)
    hashed = pd.util.hash_pandas_object(zoo.metadata[columns], index=True).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def zoo_summary(zoo: Zoo) -> dict:
    """What a results file says about a zoo: where it came from and how it was split."""
    splits = {s: int(len(zoo.split_ids(s))) for s in ("train", "val", "test")}
    return {
        "label": zoo_label(zoo),
        "path": str(zoo.path),
        "n": len(zoo),
        "splits": splits,
        "excluded": len(zoo) - sum(splits.values()),
        "recipe": zoo.manifest.get("recipe"),
        "options": zoo.manifest.get("options"),
        "seed": zoo.manifest.get("seed"),
        "command": zoo.command,
        "targets_digest": targets_digest(zoo),
    }


#: Recipe options that say how a zoo was computed, not what it holds: every network is trained on
#: its own (grouping is exact, tested per recipe), so a zoo made on a GPU and one made on a CPU from
#: the same recipe, options and seed are the same data up to floating-point rounding. Each entry
#: keeps its zoo's full options, so a table can still say where every row's zoo was made.
EXECUTION_OPTIONS = ("device", "compile", "group_size")


#: Options of an imported zoo that say where its files were, not what they hold.
LOCATION_OPTIONS = ("source", "targets", "splits")


def zoo_identity(summary: dict) -> tuple:
    """What makes two zoo summaries the same data wherever and however the zoo was made: recipe,
    options other than :data:`EXECUTION_OPTIONS`, n and seed; for an imported zoo, the digest of its
    targets in place of the paths it was imported from (:data:`LOCATION_OPTIONS`), so the same
    files imported from another directory or machine are the same data."""
    given = summary.get("options") or {}
    options = {k: v for k, v in given.items() if k not in EXECUTION_OPTIONS + LOCATION_OPTIONS}
    content = summary.get("targets_digest") if any(k in given for k in LOCATION_OPTIONS) else None
    return tuple(json.dumps(v, sort_keys=True)
                 for v in (summary.get("recipe"), options, summary.get("n"), summary.get("seed"), content))


def check_mergeable(path: Path, result: dict, data_key: Callable[[dict], object]) -> None:
    """Raise :class:`SneError` saying why ``result`` cannot be merged into the file at ``path``
    (another benchmark's results, results on other data, or a file that is not a results file);
    benchmarks call it before training too, so a refusal never comes after hours of work."""
    path = Path(path)
    if not path.exists():
        return
    old = _read(path)
    if not isinstance(old, dict) or not isinstance(old.get("entries"), list):
        why = "is not a results file this code can read"
    elif old.get("benchmark") != result.get("benchmark"):
        why = f"holds results of benchmark '{old.get('benchmark')}', not '{result.get('benchmark')}'"
    else:
        try:
            same = data_key(old) == data_key(result)
        except (KeyError, TypeError):  # a file of an older layout: its data cannot be told the same
            same = False
        if same:
            return
        why = f"holds {result.get('benchmark')} results on other zoos (or another target)"
    raise SneError(f"{path} {why}; nothing written, the file is unchanged: give a transfer benchmark its own file "
                   f"with --name NAME, or write to another directory with --results DIR")


def write_merged(
    path: Path,
    result: dict,
    data_key: Callable[[dict], object],
    entry_key: Callable[[dict], tuple],
    finish: Callable[[dict], dict] = lambda merged: merged,
) -> Path:
    """Write ``result``; if ``path`` holds results on the same data (equal ``data_key``), keep its
    entries that ``result`` did not recompute (matched by ``entry_key``). ``finish`` derives
    whatever depends on all merged entries (a summary table) before the file is written.

    Raises :class:`SneError` (and writes nothing) if ``path`` holds another benchmark's results or
    results on other data (:func:`check_mergeable`): replacing them would lose their rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two benchmark processes may finish together (e.g. one per encoder group): merge one at a time.
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_mergeable(path, result, data_key)
        entries = list(result["entries"])
        commands = [result.get("command")]
        old = _read(path)
        if old:
            fresh = {entry_key(e) for e in entries}
            entries = [e for e in old["entries"] if entry_key(e) not in fresh] + entries
            commands = [c for c in old.get("commands", [old.get("command")]) if c not in commands] + commands
        merged = finish({**result, "entries": entries, "commands": commands})
        write_json_atomic(path, merged)
    return path


def _read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # no file, or an unreadable one (refused by check_mergeable when it exists)
