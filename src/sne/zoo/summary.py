"""What a zoo holds, at a glance: networks per split, diverged ones, the spread of every target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sne.errors import SneError
from sne.zoo.format import EXCLUDED, SPLITS, Zoo

#: A network counts as "at chance" below 1 / classes + this margin (3.5 standard deviations of a
#: guessing network's accuracy on 450 test images, the digits test part).
CHANCE_MARGIN = 0.05


#: Per-network fit quality columns of INR recipes, summarised when a zoo has them.
FIT_COLUMNS = ("fit_mse", "psnr")


def _spread(values: np.ndarray) -> dict[str, float]:
    quartiles = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {
        "min": float(quartiles[0]), "q25": float(quartiles[1]), "median": float(quartiles[2]),
        "q75": float(quartiles[3]), "max": float(quartiles[4]), "mean": float(values.mean()),
    }


def zoo_summary(zoo: Zoo) -> dict[str, Any]:
    """A JSON summary: recipe, dataset, split counts, diverged count, and per-target statistics
    over the networks in a split (class targets: count per class name)."""
    meta = zoo.metadata
    kept = meta[meta["split"] != EXCLUDED]
    dataset = zoo.manifest.get("dataset") or {}
    summary: dict[str, Any] = {
        "path": str(zoo.path),
        "recipe": zoo.manifest["recipe"],
        "dataset": dataset.get("name"),
        "n": len(zoo),
        "splits": {split: int((meta["split"] == split).sum()) for split in SPLITS},
        "diverged": int((meta["split"] == EXCLUDED).sum()),
        "seed": zoo.manifest.get("seed"),
        "options": zoo.manifest.get("options"),
        "command": zoo.command,
        "targets": {},
    }
    if zoo.manifest.get("excluded"):
        summary["left_out_on_import"] = zoo.manifest["excluded"]
    for name, spec in zoo.targets.items():
        values = kept[name].to_numpy(dtype=np.float64)
        entry: dict[str, Any] = {"kind": spec["kind"]}
        if len(values) == 0:
            summary["targets"][name] = entry
            continue
        if spec["kind"] == "class":
            classes = spec.get("classes") or [str(c) for c in range(int(values.max()) + 1)]
            codes = values.astype(np.int64)
            entry["counts"] = {label: int((codes == c).sum()) for c, label in enumerate(classes)}
        else:
            entry.update(_spread(values))
        if name == "test_accuracy":
            chance = 1.0 / int(dataset.get("num_classes") or 10)
            entry["fraction_at_chance"] = float((values < chance + CHANCE_MARGIN).mean())
            entry["chance_threshold"] = chance + CHANCE_MARGIN
        summary["targets"][name] = entry
    # How well an INR zoo's networks fit their signals (the recipes record it per network).
    fit = {column: _spread(kept[column].to_numpy(dtype=np.float64)) for column in FIT_COLUMNS
           if column in kept and len(kept)}
    if fit:
        summary["fit"] = fit
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The summary as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    out = Console(emoji=False)
    splits = ", ".join(f"{split} {count}" for split, count in summary["splits"].items())
    out.print(
        f"[bold]{summary['path']}[/bold]: {summary['recipe']} zoo of {summary['n']} networks"
        + (f" on {summary['dataset']}" if summary["dataset"] else "")
        + f"; {splits}; diverged {summary['diverged']}",
        highlight=False,
    )
    if summary.get("left_out_on_import"):
        out.print(f"left out on import: {summary['left_out_on_import']}", highlight=False)
    table = Table(title="targets of the networks in a split")
    table.add_column("target", no_wrap=True)
    for column in ("min", "q25", "median", "q75", "max"):
        table.add_column(column, justify="right")
    table.add_column("at chance", justify="right")
    classes = []
    for name, entry in summary["targets"].items():
        if "counts" in entry:
            classes.append(f"{name}: " + ", ".join(f"{label} {count}" for label, count in entry["counts"].items()))
        elif "min" in entry:
            chance = f"{entry['fraction_at_chance']:.1%}" if "fraction_at_chance" in entry else ""
            table.add_row(name, *(f"{entry[k]:.4g}" for k in ("min", "q25", "median", "q75", "max")), chance)
    out.print(table)
    for line in classes:
        out.print(line, highlight=False)


def accuracy_histogram(zoo: Zoo, path: str | Path, target: str = "test_accuracy", bins: int = 20) -> Path:
    """A histogram PNG of ``target`` over the networks in a split, one colour per split."""
    from sne.plots import add_caption, plt, save_figure

    if target not in zoo.targets:
        raise SneError(f"the zoo at {zoo.path} has no target '{target}' (it has: {', '.join(sorted(zoo.targets))})")
    meta = zoo.metadata
    fig, ax = plt.subplots(figsize=(6, 4.0))
    parts = [meta.loc[meta["split"] == split, target].to_numpy(dtype=np.float64) for split in SPLITS]
    low, high = (0.0, 1.0) if zoo.targets[target]["kind"] == "unit_interval" else (
        min(p.min() for p in parts if len(p)), max(p.max() for p in parts if len(p))
    )
    ax.hist(parts, bins=np.linspace(low, high, bins + 1), stacked=True, label=list(SPLITS))
    ax.set_xlabel(target)
    ax.set_ylabel("networks")
    diverged = int((meta["split"] == EXCLUDED).sum())
    dataset = (zoo.manifest.get("dataset") or {}).get("name")
    where = f" on {dataset}" if dataset else ""
    ax.set_title(f"{zoo.manifest['recipe']}{where}: {len(zoo)} networks, {diverged} diverged", fontsize=10)
    ax.legend(fontsize=8)
    add_caption(fig, f"zoo {zoo.path.name}, seed {zoo.manifest.get('seed')}; command: {zoo.command}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)
