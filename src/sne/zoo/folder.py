"""Your own zoo: a folder of checkpoints plus a CSV table, in and out.

    DIR/<any path>.safetensors | .pt | .pth | .bin | .ckpt    one network per file (a state_dict)
    DIR/<any path>/      or one per model directory, as Hugging Face's ``save_pretrained`` writes
                         it: model.safetensors (or shards and their model.safetensors.index.json),
                         with its config.json
    TABLE.csv     file (path relative to DIR), target columns, optional split (train / val / test)
    TABLE.json    optional, beside TABLE.csv: {"targets": {name: {"kind": ..., "classes": [...]}}}
                  names the target columns and their kinds exactly (``sne zoo export`` writes it);
                  the other columns are then kept as hyper-parameters

``sne zoo import folder DIR --targets TABLE.csv`` reads every file or model directory the table lists: through
``--arch``, a Hugging Face ``config.json`` beside it, its own kept structure (files that ``sne zoo
export`` wrote) or, where names and shapes leave no doubt, its bare state_dict. Architectures may
differ between files. Without TABLE.json every column but ``file`` and ``split`` is a target; its
kind is inferred (numbers in [0, 1]: unit_interval; other numbers: regression; anything else: class)
unless ``--target-kind name=kind`` says otherwise. A checkpoint under DIR that the table does not
list, a listed file that is missing or unreadable, a file listed twice, a missing target value or
non-finite weights: one error naming the file or row, and nothing written. An import killed midway
and run again with the same command reads only the checkpoints of the shards it still lacks.

``sne zoo export ZOO DIR`` writes DIR/networks/<id>.safetensors (each keeps its record's structure
in its metadata, so importing it back gives the same records; any safetensors reader sees a plain
state_dict), DIR/targets.csv (file, split, targets with class names, hyper-parameters) and
DIR/targets.json; ``sne zoo import folder DIR --targets DIR/targets.csv`` gives back the same zoo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sne.errors import SneError, one_line
from sne.io_utils import atomic_path, staged_directory, write_json_atomic
from sne.weights.arch import network_reader
from sne.weights.io import MODEL_DIRECTORY_WEIGHTS, save_record_file
from sne.zoo.format import DIVERGED, EXCLUDED, Zoo
from sne.zoo.importing import ImportedZoo, check_split_names, infer_targets, read_table, write_imported

RECIPE = "folder-import"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
FILE, SPLIT = "file", "split"
NETWORKS = "networks"
TABLE = "targets.csv"


def parse_folder(directory: str | Path, targets: str | Path, *, arch: str | None = None,
                 target_kinds: Mapping[str, str] | None = None) -> ImportedZoo:
    """The networks of ``directory`` listed in the table ``targets`` (see the module docstring); the
    checkpoints are read when the zoo is written, a shard at a time."""
    directory, table_path = Path(directory), Path(targets)
    if not directory.is_dir():
        raise SneError(f"{directory}: not a directory")
    table = read_table(table_path, keep_default_na=False, na_values=[""], dtype={FILE: str, SPLIT: str})
    if FILE not in table.columns:
        raise SneError(f"{table_path}: no '{FILE}' column (it names each checkpoint, relative to {directory})")
    if table.empty:
        raise SneError(f"{table_path}: lists no networks")
    specs = _sidecar_targets(table_path.with_suffix(".json"))
    columns = [c for c in table.columns if c not in (FILE, SPLIT)]
    if specs is not None:
        absent = [name for name in specs if name not in columns]
        if absent:
            raise SneError(f"{table_path}: no column for target '{absent[0]}' that {table_path.with_suffix('.json')} names")
        columns = list(specs)
    if not columns:
        raise SneError(f"{table_path}: no target columns besides '{FILE}'" + (f" and '{SPLIT}'" if SPLIT in table else ""))

    files = [_listed_file(directory, value, table_path, row) for row, value in enumerate(table[FILE])]
    seen: dict[Path, int] = {}
    for row, path in enumerate(files):
        if path in seen:
            raise SneError(f"{table_path}: rows {seen[path] + 1} and {row + 1} both list {path}")
        seen[path] = row
    listed = {f.resolve() for f in files}
    model_directories = [f.resolve() for f in files if f.is_dir()]
    unlisted = sorted(p for p in directory.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()
                      and p.resolve() not in listed
                      and not any(p.resolve().is_relative_to(d) for d in model_directories))
    if unlisted:
        raise SneError(f"{unlisted[0]}: a checkpoint under {directory} that {table_path} does not list "
                       f"({len(unlisted)} such files); list it or move it out")

    where = str(table_path)
    target_specs, coded = infer_targets(table, columns, where, kinds=target_kinds, specs=specs)
    splits = check_split_names(table[SPLIT].tolist(), where) if SPLIT in table.columns else None
    read = network_reader(arch)
    rows = []
    for row, relative in zip(coded.drop(columns=[SPLIT], errors="ignore").to_dict("records"), table[FILE]):
        row[FILE] = str(relative)
        rows.append(row)
    dataset = {"source": "a folder of checkpoints and a table", "directory": str(directory.resolve()),
               "table": str(table_path.resolve())}
    options = {"source": str(directory.resolve()), "targets": str(table_path.resolve()), "arch": arch}
    sidecar = table_path.with_suffix(".json")
    return ImportedZoo(RECIPE, options, None, rows, target_specs, dataset, splits=splits,
                       load=lambda ids: [read(files[i]) for i in ids],
                       files=[*(part for path in files for part in _source_files(path)), table_path,
                              *([sidecar] if sidecar.is_file() else [])])


def _listed_file(directory: Path, value: Any, table: Path, row: int) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise SneError(f"{table}: row {row + 1} has no file name")
    path = directory / value.strip()
    if path.is_dir():
        if not any((path / name).is_file() for name in MODEL_DIRECTORY_WEIGHTS):
            raise SneError(f"{path}: listed in row {row + 1} of {table}, a directory without "
                           f"{' or '.join(MODEL_DIRECTORY_WEIGHTS)} (list checkpoint files, or model directories)")
        return path
    if not path.is_file():
        raise SneError(f"{path}: listed in row {row + 1} of {table}, but there is no such file")
    return path


def _source_files(path: Path) -> list[Path]:
    """The files whose stats identify a listed checkpoint: itself, or everything in its model
    directory (weights rewritten in place change their own modification time, not the directory's)."""
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def _sidecar_targets(path: Path) -> dict[str, dict] | None:
    """The target specs in TABLE.json, if there is one."""
    if not path.is_file():
        return None
    try:
        specs = json.loads(path.read_text())["targets"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise SneError(f"{path}: not a targets file ({one_line(error)}); expected {{\"targets\": {{name: spec}}}}") from None
    if not isinstance(specs, dict) or not all(isinstance(s, dict) for s in specs.values()):
        raise SneError(f"{path}: 'targets' must map each target name to an object with its kind")
    return specs


def import_folder(directory: str | Path, out: str | Path, *, targets: str | Path | None = None,
                  arch: str | None = None, target_kinds: Mapping[str, str] | None = None, seed: int = 0,
                  command: str = "", shard_size: int = 1000) -> Zoo:
    """Import the checkpoints of ``directory`` listed in the table ``targets`` as a zoo at ``out``
    (resumable: see :func:`sne.zoo.importing.write_imported`)."""
    if targets is None:
        raise SneError("zoo import folder needs --targets TABLE.csv (a 'file' column and target columns)")
    imported = parse_folder(directory, targets, arch=arch, target_kinds=target_kinds)
    return write_imported(imported, out, seed=seed, command=command, shard_size=shard_size)


def export_zoo(zoo: str | Path | Zoo, directory: str | Path) -> Path:
    """Write the networks of ``zoo`` that are in a split as DIR/networks/<id>.safetensors plus
    DIR/targets.csv and DIR/targets.json (see the module docstring); ``directory`` must be new or
    empty, and is complete or absent afterwards. Returns the table's path."""
    zoo = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
    root = Path(directory)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise SneError(f"{root} already exists and is not an empty directory; choose a new export directory")
    metadata = zoo.metadata
    kept = metadata[metadata["split"] != EXCLUDED]
    if kept.empty:
        raise SneError(f"{zoo.path}: no network is in a split; nothing to export")
    with staged_directory(root) as staging:
        (staging / NETWORKS).mkdir()
        width = max(6, len(str(len(zoo) - 1)))
        files = []
        ids = kept["id"].to_numpy(dtype=np.int64)
        for start in range(0, len(ids), 256):  # a few shards' records at a time
            for network_id, record in zip(ids[start:start + 256], zoo.records(ids[start:start + 256])):
                name = f"{NETWORKS}/{int(network_id):0{width}d}.safetensors"
                save_record_file(record, staging / name)
                files.append(name)
        table = _export_table(zoo, kept, files)
        with atomic_path(staging / TABLE) as tmp:
            table.to_csv(tmp, index=False)
        write_json_atomic(staging / "targets.json", {
            "targets": zoo.targets,
            "exported_from": {"zoo": str(zoo.path.resolve()), "recipe": zoo.manifest["recipe"],
                              "dataset": zoo.manifest.get("dataset")},
        })
    return root / TABLE


def _export_table(zoo: Zoo, kept: pd.DataFrame, files: Sequence[str]) -> pd.DataFrame:
    """file, split, targets (class targets by name), then the other metadata columns."""
    table = pd.DataFrame({FILE: files, SPLIT: kept["split"].to_numpy()})
    for name, spec in zoo.targets.items():
        values = kept[name].to_numpy()
        if spec["kind"] == "class" and spec.get("classes"):
            values = [spec["classes"][int(v)] for v in values]
        table[name] = values
    rest = [c for c in kept.columns if c not in ("id", SPLIT, FILE, DIVERGED, *zoo.targets)]
    for column in rest:
        table[column] = kept[column].to_numpy()
    return table

