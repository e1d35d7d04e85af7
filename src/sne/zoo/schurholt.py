"""Import the model zoos of Schürholt et al. (2022), "Model Zoos: A Dataset of Diverse Populations of
Neural Network Models" (modelzoos.cc; Zenodo records linked from github.com/ModelZoos/ModelZooDataset).

Each zoo is a Ray Tune experiment directory with one folder per trained model::

    DIR/<trial>/params.json                     hyper-parameters ("model::nlin", "optim::lr", "seed", ...)
    DIR/<trial>/result.json                     one JSON object per line and epoch: training_iteration,
                                                test_acc, train_acc, ggap (generalisation gap), loss_*, ...
    DIR/<trial>/checkpoint_<epoch:06d>/checkpoints   the model's state_dict at that epoch (torch.save)

A checkpoint pairs with the result line whose ``training_iteration`` is its epoch. ``epoch`` picks
one epoch (every trial must have it), ``"last"`` (default: each trial's last checkpoint with a
result line) or ``"all"`` (every checkpoint with a result line; all of one trial share its split).
Targets: ``test_accuracy`` (``test_acc``), ``generalization_gap`` (``ggap``, else train_acc -
test_acc) and ``epoch``; params.json becomes hyper-parameter columns. The CNN zoos are chains
that read without ``--arch``, their hidden activation taken from ``model::nlin``; the ResNet-18
zoos (BatchNorm, residual blocks) need ``--arch``. A checkpoint with non-finite weights is kept as
diverged (out of every split).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from sne.errors import SneError, one_line
from sne.weights.arch import arch_from_spec
from sne.weights.io import load_state_dict_file, record_from_state_dict
from sne.weights.record import DENSE_KINDS
from sne.zoo.format import DIVERGED, Zoo
from sne.zoo.importing import (
    ImportedZoo, infer_targets, is_finite_state, plain_value, seeded_group_splits, write_imported, zeroed_non_finite,
)

RECIPE = "schurholt-import"
CHECKPOINT = re.compile(r"checkpoint_(\d+)")


def _result_lines(path: Path) -> dict[int, dict[str, Any]]:
    """result.json's lines by training_iteration."""
    if not path.is_file():
        raise SneError(f"{path}: no such file (every trial folder needs its result.json)")
    lines: dict[int, dict[str, Any]] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SneError(f"{path}: unreadable ({one_line(error)})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as error:
            raise SneError(f"{path}: line {number} is not JSON ({one_line(error)})") from None
        epoch = entry.get("training_iteration") if isinstance(entry, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise SneError(f"{path}: line {number} has no whole training_iteration")
        lines[epoch] = entry
    return lines


def _params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SneError(f"{path}: no such file (every trial folder needs its params.json)")
    try:
        params = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SneError(f"{path}: not readable JSON ({one_line(error)})") from None
    if not isinstance(params, dict):
        raise SneError(f"{path}: not a JSON object of hyper-parameters")
    return _flat(params)


def _flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = plain_value(value)
    return flat


def _number(entry: dict[str, Any], key: str) -> float:
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def parse_schurholt(directory: str | Path, *, epoch: int | str = "last", arch: str | None = None,
                    seed: int = 0) -> ImportedZoo:
    """The checkpoints of the model zoo in ``directory`` at ``epoch`` (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SneError(f"{directory} is not a directory")
    if not (epoch in ("last", "all") or (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0)):
        raise SneError(f"--epoch {epoch!r}: expected an epoch number, 'last' or 'all'")
    trials = sorted(p for p in directory.iterdir() if p.is_dir() and (p / "params.json").exists())
    if not trials:
        raise SneError(f"{directory}: no trial folders (folders holding params.json, result.json and checkpoint_<epoch>/)")
    built = arch_from_spec(arch) if arch else None
    records, rows, groups, sources, skipped = [], [], [], [], 0
    for trial in trials:
        params, results = _params(trial / "params.json"), _result_lines(trial / "result.json")
        checkpoints = {int(m.group(1)): p for p in trial.iterdir() if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir()}
        if isinstance(epoch, int):
            if epoch not in checkpoints or epoch not in results:
                what = "checkpoint folder" if epoch not in checkpoints else "result line"
                raise SneError(f"{trial}: no {what} for epoch {epoch} (checkpoints: {sorted(checkpoints)})")
            chosen = [epoch]
        else:
            usable = sorted(e for e in checkpoints if e in results)
            skipped += len(checkpoints) - len(usable)
            if not usable:
                raise SneError(f"{trial}: no checkpoint_<epoch> folder with a matching line in result.json")
            chosen = usable if epoch == "all" else usable[-1:]
        nonlinearity = params.get("model::nlin")
        for e in chosen:
            path = checkpoints[e] / "checkpoints"
            state = load_state_dict_file(path)
            finite = is_finite_state(state)
            state = state if finite else zeroed_non_finite(state)
            if built is not None:
                record = built.record(state, source=str(path))
            else:
                record = record_from_state_dict(state, source=str(path))
                if isinstance(nonlinearity, str) and all(l.kind in DENSE_KINDS for l in record.layers):
                    names = [nonlinearity.lower()] * (len(record.layers) - 1) + ["identity"]
                    record = record_from_state_dict(state, source=str(path), activations=names)
            line = results[e]
            test, train = _number(line, "test_acc"), _number(line, "train_acc")
            gap = _number(line, "ggap") if "ggap" in line else train - test
            ok = finite and math.isfinite(test) and math.isfinite(gap)
            rows.append({"trial": trial.name, "test_accuracy": test if ok else 0.0,
                         "generalization_gap": gap if ok else 0.0, "epoch": e, DIVERGED: not ok, **params})
            records.append(record)
            sources.append(path)
            groups.append(trial.name)
    frame = pd.DataFrame(rows)
    targets, frame = infer_targets(frame, ["test_accuracy", "generalization_gap", "epoch"], str(directory),
                                   kinds={"generalization_gap": "regression", "epoch": "regression"})
    dataset = {"source": "Schürholt et al. 2022 model zoo (Ray Tune trials)", "directory": str(directory.resolve()),
               "epoch": epoch, "trials": len(trials), "skipped_checkpoints_without_results": skipped}
    options = {"source": str(directory.resolve()), "epoch": epoch, "arch": arch}
    splits = seeded_group_splits(groups, seed)
    # Targets and divergence come from each checkpoint's values, so all are read here (and on a resume).
    return ImportedZoo(RECIPE, options, records, frame.to_dict("records"), targets, dataset, splits=splits,
                       files=sources)


def import_schurholt(directory: str | Path, out: str | Path, *, epoch: int | str = "last", arch: str | None = None,
                     seed: int = 0, command: str = "") -> Zoo:
    """Import a Schürholt model zoo (see :func:`parse_schurholt`) as a zoo at ``out``."""
    return write_imported(parse_schurholt(directory, epoch=epoch, arch=arch, seed=seed), out, seed=seed,
                          command=command)
