"""Import the published SIREN INR sets of DWSNets (Navon et al. 2023) and NFN (Zhou et al. 2023).

Both fit one SIREN per image with sin(30 (W x + b)) on the hidden layers and a linear output, but
the networks differ, so the zoo's dataset entry ``siren`` records which one it holds:

DWSNet (``dwsnet``), github.com/AvivNavon/DWSNets (download links in its README, e.g. the MNIST
and FashionMNIST INR archives, and the sine INRs of ``experiments/ssl``)::

    DIR/<splits>.json   {"train"|"val"|"test": {"path": [...], "label": [...]}}   (classification)
                        {"train"|"val"|"test": [path, ...]}                       (sine regression)
    DIR/.../*.pth       one state_dict per INR: seq.{0,1,2}.{weight,bias}; the sine INRs also hold
                        "coef" = [amplitude, frequency] (and "x", "y" arrays, which are dropped)

    Paths in the JSON are usually absolute paths of the authors' machine: each is found under DIR
    by its longest tail that exists. The INR computes seq(x) + 0.5.

NFN (``nfn-siren``), github.com/AllanYangZhou/nfn (``experiments/classify_siren.py``; the SIREN
datasets linked in its README)::

    DIR/<prefix>_<label>s/net<idx>.pth   one state_dict per INR: net.{0,1}.linear.{weight,bias},
                                         net.2.{weight,bias} (Sitzmann's SIREN, first_omega_0 = 30)

    Split by index as NFN does: idx < 45000 train, < 50000 val, the rest test (``split_points``).
    Augmented copies (``<prefix>_aug<i>_<label>s``) belong to another prefix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sne.errors import SneError, one_line
from sne.weights.io import load_pytorch_object, record_from_state_dict
from sne.weights.record import NetworkRecord
from sne.zoo.format import SPLITS, Zoo
from sne.zoo.importing import ImportedZoo, infer_targets, locate, one_file, write_imported

SIREN_ACTIVATIONS = ("sine", "sine", "identity")
DWSNET_SIREN = "dwsnet: seq.{0,1,2}; sin(30 (W x + b)) on hidden layers, linear output plus 0.5"
NFN_SIREN = "nfn: Sitzmann's SIREN, net.{0,1}.linear + net.2; sin(30 (W x + b)) on hidden layers, linear output"
NFN_SPLIT_POINTS = (45000, 50000)


def _numpy_globals() -> list[Any]:
    """What a pickled numpy array needs, and nothing more: the sine INRs keep their samples as arrays."""
    from numpy._core import multiarray  # noqa: PLC0415 - numpy 2's home of _reconstruct

    return [np.ndarray, np.dtype, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            multiarray._reconstruct, type(np.dtype(np.float64)), type(np.dtype(np.float32))]


def _siren_record(path: Path, obj: Any) -> NetworkRecord:
    if not isinstance(obj, dict):
        raise SneError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return record_from_state_dict(state, source=str(path), activations=SIREN_ACTIVATIONS)


def parse_dwsnet(directory: str | Path, *, splits: str | None = None) -> ImportedZoo:
    """The INRs of a DWSNet set in ``directory`` (see the module docstring); ``splits`` names the
    splits JSON (default: the one ``*.json`` in ``directory``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SneError(f"{directory} is not a directory")
    path = Path(splits) if splits else one_file(directory, "*.json", "splits file", "pass --splits FILE.json")
    try:
        table = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SneError(f"{path}: not a readable JSON splits file ({one_line(error)})") from None
    if not isinstance(table, dict) or not set(SPLITS) <= set(table):
        raise SneError(f"{path}: expected an object with {', '.join(SPLITS)} entries")
    files, labels, split_names = [], [], []
    regression = all(isinstance(table[s], list) for s in SPLITS)
    for split in SPLITS:
        entry = table[split]
        if regression:
            paths, split_labels = entry, [None] * len(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("path"), list) and isinstance(entry.get("label"), list) \
                and len(entry["path"]) == len(entry["label"]):
            paths, split_labels = entry["path"], entry["label"]
        else:
            raise SneError(f"{path}: '{split}' must hold equally long 'path' and 'label' lists (or, for the sine "
                           f"INRs, a list of paths in every split)")
        files += [locate(p, directory, str(path)) for p in paths]
        labels += split_labels
        split_names += [split] * len(paths)
    _refuse_duplicates(files, path)
    allowed = _numpy_globals() if regression else []
    records, rows = [], []
    for file, label in zip(files, labels):
        obj = load_pytorch_object(file, allowed)
        records.append(_siren_record(file, obj))
        row: dict[str, Any] = {"file": str(file.relative_to(directory)) if file.is_relative_to(directory) else str(file)}
        if regression:
            coef = obj.get("coef") if isinstance(obj, dict) else None
            values = np.asarray(coef, dtype=np.float64).ravel() if coef is not None else np.array([])
            if values.shape != (2,) or not np.isfinite(values).all():
                raise SneError(f"{file}: expected 'coef' = [amplitude, frequency] (two finite numbers) in a sine INR")
            row.update(amplitude=float(values[0]), frequency=float(values[1]))
        else:
            row["label"] = str(label)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if regression:
        target_columns, kinds = ["amplitude", "frequency"], {"amplitude": "regression", "frequency": "regression"}
    else:
        target_columns, kinds = ["label"], {"label": "class"}
    targets, frame = infer_targets(frame, target_columns, str(path), kinds=kinds)
    dataset = {"source": "DWSNets INR set (Navon et al. 2023)", "siren": DWSNET_SIREN,
               "directory": str(directory.resolve()), "splits_file": str(path.resolve())}
    options = {"source": str(directory.resolve()), "splits": str(path.resolve())}
    # The sine INRs' targets are inside their files, so every file is read here (and again on a resume).
    return ImportedZoo("dwsnet-import", options, records, frame.to_dict("records"), targets, dataset,
                       splits=split_names, files=[path, *files])


def parse_nfn_siren(directory: str | Path, *, prefix: str | None = None,
                    split_points: tuple[int, int] | str = NFN_SPLIT_POINTS) -> ImportedZoo:
    """The INRs of an NFN SIREN set in ``directory`` (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SneError(f"{directory} is not a directory")
    val_point, test_point = _split_points(split_points)
    folders: dict[str, list[tuple[int, Path]]] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        match = re.fullmatch(r"(.+)_(\d)s", folder.name)
        if match:
            folders.setdefault(match.group(1), []).append((int(match.group(2)), folder))
    if prefix is None:
        if len(folders) != 1:
            found = ", ".join(sorted(folders)) or "none"
            raise SneError(f"{directory}: expected folders <prefix>_<label>s of one prefix (found prefixes: {found}); "
                           f"choose one with -o prefix=NAME")
        prefix = next(iter(folders))
    if prefix not in folders:
        raise SneError(f"{directory}: no folders {prefix}_<label>s (prefixes: {', '.join(sorted(folders)) or 'none'})")
    entries: dict[int, tuple[Path, int]] = {}
    for label, folder in folders[prefix]:
        for file in sorted(folder.glob("*.pth")):
            match = re.fullmatch(r"net(\d+)\.pth", file.name)
            if not match:
                raise SneError(f"{file}: not named net<index>.pth")
            index = int(match.group(1))
            if index in entries:
                raise SneError(f"{file}: index {index} is also {entries[index][0]}")
            entries[index] = (file, label)
    if not entries:
        raise SneError(f"{directory}: no net<index>.pth files in the {prefix}_<label>s folders")
    indices = sorted(entries)
    files, rows, splits = [], [], []
    for index in indices:
        file, label = entries[index]
        files.append(file)
        rows.append({"file": str(file.relative_to(directory)), "index": index, "label": str(label)})
        splits.append("train" if index < val_point else "val" if index < test_point else "test")
    targets, frame = infer_targets(pd.DataFrame(rows), ["label"], str(directory), kinds={"label": "class"})
    dataset = {"source": "NFN SIREN INR set (Zhou et al. 2023)", "siren": NFN_SIREN, "prefix": prefix,
               "directory": str(directory.resolve()), "split_points": [val_point, test_point]}
    options = {"source": str(directory.resolve()), "prefix": prefix, "split_points": [val_point, test_point]}
    return ImportedZoo("nfn-siren-import", options, None, frame.to_dict("records"), targets, dataset,
                       splits=splits, load=lambda ids: [_siren_record(files[i], load_pytorch_object(files[i])) for i in ids],
                       files=files)


def _split_points(value: tuple[int, int] | str) -> tuple[int, int]:
    try:
        points = [int(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        points = []
    if len(points) != 2 or not 0 <= points[0] <= points[1]:
        raise SneError(f"split_points {value!r}: expected VAL,TEST indices with 0 <= VAL <= TEST (NFN: 45000,50000)")
    return points[0], points[1]


def _refuse_duplicates(files: list[Path], where: Path) -> None:
    seen: dict[Path, int] = {}
    for position, file in enumerate(files):
        key = file.resolve()
        if key in seen:
            raise SneError(f"{where}: lists {file} twice (entries {seen[key] + 1} and {position + 1})")
        seen[key] = position


def import_dwsnet(directory: str | Path, out: str | Path, *, splits: str | None = None, seed: int = 0,
                  command: str = "") -> Zoo:
    """Import a DWSNet INR set (see :func:`parse_dwsnet`) as a zoo at ``out``; its splits are the JSON's."""
    return write_imported(parse_dwsnet(directory, splits=splits), out, seed=seed, command=command)


def import_nfn_siren(directory: str | Path, out: str | Path, *, prefix: str | None = None,
                     split_points: tuple[int, int] | str = NFN_SPLIT_POINTS, seed: int = 0, command: str = "") -> Zoo:
    """Import an NFN SIREN set (see :func:`parse_nfn_siren`) as a zoo at ``out``."""
    return write_imported(parse_nfn_siren(directory, prefix=prefix, split_points=split_points), out, seed=seed,
                          command=command)
