"""What every zoo importer shares: the listed form of a zoo (rows, targets, splits, and its records
read on demand) and its resumable writing, target kinds inferred from a table, and the checks on values read from other people's
files. Each format's module (``sne.zoo.folder``, ``sne.zoo.dwsnet``, ...) only parses its layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from sne.errors import SneError, one_line
from sne.weights.record import NetworkRecord
from sne.zoo.format import DIVERGED, SPLITS, TARGET_KINDS, Zoo, write_listed_zoo


@dataclass
class ImportedZoo:
    """A zoo listed from a published or user layout, before it is written: one row (hyper-parameters,
    metrics, target values; class targets as codes into their ``classes``) per network, in the order
    the zoo will number them, and its records: ``load(ids)`` gives those of networks ``ids`` (indices
    into ``rows``), so that an import reads one shard of weights at a time and a resumed one only
    the shards it still lacks; ``records`` instead holds them all, read already. ``load`` may set
    ``diverged: True`` in the rows of the networks it reads (non-finite weights show only then); a
    row so flagged is kept out of every split (its record's values do not matter). ``splits`` gives
    each network's split where the layout fixes it (``None``: a split seeded by ``--seed``).
    ``activation_from`` maps layer names to the class target that holds each network's activation
    there (sampled per network, so not part of the architecture). ``files`` are the source files
    whose paths, sizes and modification times identify the import when it resumes (see
    :func:`sne.zoo.format.write_listed_zoo`); ``source`` names them in messages."""

    recipe: str
    options: dict[str, Any]
    records: list[NetworkRecord] | None
    rows: list[dict[str, Any]]
    targets: dict[str, dict[str, Any]]
    dataset: dict[str, Any]
    splits: list[str] | None = None
    architecture_names: list[str] | None = None
    activation_from: dict[str, str] = field(default_factory=dict)
    load: Callable[[np.ndarray], Sequence[NetworkRecord]] | None = None
    files: list[Path] = field(default_factory=list)
    source: str | None = None

    def __post_init__(self) -> None:
        if (self.records is None) == (self.load is None):
            raise ValueError("an imported zoo needs either its records or a way to load them")
        if (self.records is not None and len(self.records) != len(self.rows)) or (
                self.splits is not None and len(self.splits) != len(self.rows)):
            raise ValueError("an imported zoo needs one record, one row (and one split) per network")
        for name, spec in self.targets.items():
            if spec.get("kind") not in TARGET_KINDS:
                raise ValueError(f"target {name!r} has kind {spec.get('kind')!r}")


def write_imported(imported: ImportedZoo, out: str | Path, *, seed: int = 0, command: str = "",
                   shard_size: int = 1000) -> Zoo:
    """Write ``imported`` as a zoo at ``out``, resumably: the same import run again after a kill
    writes only the shards still missing (see :func:`sne.zoo.format.write_listed_zoo`); bad input
    leaves nothing at ``out``."""
    if not imported.rows:
        raise SneError(f"no networks to write to {out}")
    records = imported.records
    return write_listed_zoo(
        out, recipe=imported.recipe, options=imported.options, rows=imported.rows,
        load=imported.load or (lambda ids: [records[i] for i in ids]), targets=imported.targets,
        dataset=imported.dataset, seed=seed, command=command, shard_size=shard_size, splits=imported.splits,
        architecture_names=imported.architecture_names, activation_from=imported.activation_from or None,
        files=imported.files, source=imported.source,
    )


def read_table(path: Path, **read_csv: Any) -> pd.DataFrame:
    """A CSV file as a table; :class:`SneError` naming the file if it is missing or unreadable."""
    if not path.is_file():
        raise SneError(f"{path}: no such file")
    try:
        table = pd.read_csv(path, **read_csv)
        names = None if read_csv.get("header", "infer") is None else \
            pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    except Exception as error:  # pandas raises several types for unreadable CSV
        raise SneError(f"{path}: not a readable CSV table ({one_line(error)})") from None
    # pandas renames a repeated column 'x' to 'x.1': one of the two would be read as another column.
    repeated = sorted({n for n in names or () if names.count(n) > 1})
    if repeated:
        raise SneError(f"{path}: column {repeated[0]!r} is named twice in the header")
    return table


def check_split_names(values: Sequence[Any], where: str) -> list[str]:
    """``values`` as split names; :class:`SneError` naming ``where`` and the row of a bad one."""
    names = [str(v).strip().lower() for v in values]
    for row, name in enumerate(names):
        if name not in SPLITS:
            raise SneError(f"{where}: row {row + 1} has split {values[row]!r} (expected one of {', '.join(SPLITS)})")
    return names


def infer_targets(table: pd.DataFrame, columns: Sequence[str], where: str,
                  kinds: Mapping[str, str] | None = None,
                  specs: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[dict[str, dict], pd.DataFrame]:
    """Target specs for ``columns`` of ``table`` and the table with class columns as codes.

    A column's kind is ``specs[name]`` (a manifest entry, classes included) if given, else
    ``kinds[name]``, else inferred: numbers all in [0, 1] are ``unit_interval``, other numbers
    ``regression``, anything else ``class`` with the sorted distinct values as class names; a column
    of numbers and other values is refused unless its kind is given. Every value must be present
    (and finite for numbers): :class:`SneError` names ``where``, the column and row.
    """
    kinds, specs = dict(kinds or {}), dict(specs or {})
    unknown = sorted(set(kinds) - set(columns))
    if unknown:
        raise SneError(f"{where}: --target-kind names '{unknown[0]}', which is not a target column "
                       f"(targets: {', '.join(columns)})")
    table = table.copy()
    targets: dict[str, dict] = {}
    for name in columns:
        values = table[name]
        missing = np.flatnonzero(values.isna().to_numpy())
        if len(missing):
            raise SneError(f"{where}: row {missing[0] + 1} has no value for target '{name}'")
        numbers = pd.to_numeric(values, errors="coerce") if values.dtype != bool else values.astype(float)
        numeric = not numbers.isna().any()
        spec = dict(specs[name]) if name in specs else None
        parsed = numbers.notna().to_numpy()
        if spec is None and name not in kinds and parsed.any() and not parsed.all():
            # A typo in a column of numbers would otherwise make every distinct number a class of its own.
            row = int(np.flatnonzero(~parsed)[0])
            raise SneError(f"{where}: row {row + 1} has '{values.iloc[row]}' in target '{name}', not a number, while "
                           f"{int(parsed.sum())} of its {len(values)} values are numbers: correct the cell, or read "
                           f"the column as class names with --target-kind {name}=class")
        kind = spec["kind"] if spec else kinds.get(name) or (
            ("unit_interval" if numbers.between(0, 1).all() else "regression") if numeric else "class")
        if kind not in TARGET_KINDS:
            raise SneError(f"{where}: target '{name}' cannot be of kind {kind!r} (kinds: {', '.join(TARGET_KINDS)})")
        if kind == "class" and spec and spec.get("classes") is None:
            # A class target without names (its classes are codes 0..num_classes-1, as in digit-inr).
            codes = numbers.to_numpy(dtype=np.float64) if numeric else np.array([np.nan])
            count = spec.get("num_classes")
            bad = np.flatnonzero(~((codes >= 0) & (codes == np.round(codes)) & (count is None or codes < count)))
            if len(bad):
                raise SneError(f"{where}: row {bad[0] + 1} of class target '{name}' is not a class code"
                               + (f" below {count}" if count else ""))
            table[name] = codes.astype(np.int64)
            targets[name] = spec
            continue
        if kind == "class":
            labels = values.astype(str).str.strip()
            classes = list(spec["classes"]) if spec and spec.get("classes") is not None else _class_names(labels, numbers if numeric else None)
            index = {c: i for i, c in enumerate(classes)}
            strange = [i for i, label in enumerate(labels) if label not in index]
            if strange:
                raise SneError(f"{where}: row {strange[0] + 1} has '{labels.iloc[strange[0]]}' in class target "
                               f"'{name}', which is none of its classes {classes}")
            table[name] = labels.map(index).astype(np.int64)
            targets[name] = {**(spec or {}), "kind": "class", "num_classes": len(classes), "classes": classes}
            continue
        if not numeric:
            row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
            raise SneError(f"{where}: row {row + 1} has '{values.iloc[row]}' in {kind} target '{name}', not a number")
        bad = np.flatnonzero(~np.isfinite(numbers.to_numpy(dtype=np.float64)))
        if len(bad):
            raise SneError(f"{where}: row {bad[0] + 1} has a non-finite value in target '{name}'")
        if kind == "unit_interval" and not numbers.between(0, 1).all():
            row = int(np.flatnonzero(~numbers.between(0, 1).to_numpy())[0])
            raise SneError(f"{where}: row {row + 1} has {numbers.iloc[row]} in unit_interval target '{name}' "
                           f"(values must lie in [0, 1])")
        table[name] = numbers.astype(np.float64)
        targets[name] = {**(spec or {}), "kind": kind}
    return targets, table


def _class_names(labels: pd.Series, numbers: pd.Series | None) -> list[str]:
    """Distinct labels, in numeric order where they are all numbers (so '10' follows '9')."""
    if numbers is not None:
        order = sorted(set(zip(numbers.tolist(), labels.tolist())))
        return list(dict.fromkeys(label for _, label in order))
    return sorted(set(labels.tolist()))


def parse_target_kinds(pairs: Sequence[str]) -> dict[str, str]:
    """``name=kind`` strings (``--target-kind``) -> ``{name: kind}``."""
    kinds = {}
    for pair in pairs:
        name, sep, kind = pair.partition("=")
        if not sep or not name or kind not in TARGET_KINDS:
            raise SneError(f"--target-kind {pair}: expected NAME=KIND with KIND one of {', '.join(TARGET_KINDS)}")
        kinds[name] = kind
    return kinds


def is_finite_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of ``state`` is finite (a diverged run's are not)."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def zeroed_non_finite(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with non-finite values set to 0: the stand-in record of a diverged network (a
    record holds finite values only; the zoo keeps that network out of every split)."""
    return {k: torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0) if t.is_floating_point() else t
            for k, t in state.items()}


def plain_value(value: Any) -> Any:
    """A value from a published file as a parquet-friendly scalar: numbers and strings stay, lists
    and objects become their JSON-like text, ``None`` stays missing."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else float("nan")
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def mark_diverged(rows: list[dict[str, Any]], diverged: Sequence[bool]) -> None:
    """Set each row's ``diverged`` flag."""
    for row, flag in zip(rows, diverged):
        row[DIVERGED] = bool(flag)


def locate(listed: str, root: Path, where: str) -> Path:
    """The file a published splits file names by ``listed`` (often an absolute path on its authors'
    machine): ``listed`` itself if it exists, else the longest tail of it found under ``root``."""
    path = Path(str(listed))
    parts = path.parts[1:] if path.is_absolute() else path.parts
    for start in range(len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    if path.is_file():
        return path
    raise SneError(f"{where}: lists {listed}, which is not under {root} (nor there)")


def one_file(directory: Path, pattern: str, what: str, hint: str) -> Path:
    """The one file matching ``pattern`` in ``directory``; :class:`SneError` if none or several."""
    found = sorted(p for p in directory.glob(pattern) if p.is_file())
    if len(found) != 1:
        listed = "none" if not found else ", ".join(p.name for p in found)
        raise SneError(f"{directory}: expected one {what} ({pattern}), found {listed}; {hint}")
    return found[0]


def seeded_group_splits(groups: Sequence[str], seed: int) -> list[str]:
    """A split per entry where all entries of one group (a network's checkpoints) share their
    group's split, seeded by ``seed`` and the number of groups."""
    from sne.zoo.format import DEFAULT_SPLIT_FRACTIONS, split_assignment  # noqa: PLC0415

    unique = list(dict.fromkeys(groups))
    assigned = dict(zip(unique, split_assignment(len(unique), seed, DEFAULT_SPLIT_FRACTIONS)))
    return [str(assigned[g]) for g in groups]
