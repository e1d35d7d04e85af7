"""Import a transformer zoo in the Hugging Face hub layout (e.g. the Small Transformer Zoo of
Schürholt et al.: ``huggingface.co`` dataset repositories cloned with ``git lfs``)::

    DIR/metadata/<name>.csv   one row per checkpoint: ckpt_file (path relative to DIR), ckpt_epoch,
                              accuracy and other metrics (numbers), hyper-parameters
    DIR/<ckpt_file>           a safetensors state_dict (keys such as embedding.*,
                              encoder.<i>.{queries,keys,values,out_projection,fc1,fc2}, classifier.*)

Transformers cannot be read from names and shapes alone: pass ``--arch FILE.py:FACTORY`` building the
zoo's module (or put a Hugging Face ``config.json`` beside the files). With several metadata CSVs,
``-o metadata=<name>`` picks one. Every numeric column but the file's becomes a target (kinds
inferred as ``sne zoo import folder`` does; ``--target-kind`` overrides), ``ckpt_epoch`` included as
``epoch``; other columns are kept as hyper-parameters. Checkpoints that share a folder are one
training run and share a split (seeded by ``--seed``); files side by side are one network each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from sne.errors import SneError
from sne.weights.arch import network_reader
from sne.zoo.format import Zoo
from sne.zoo.importing import ImportedZoo, infer_targets, one_file, read_table, seeded_group_splits, write_imported

RECIPE = "hf-transformer-zoo-import"
FILE_COLUMNS = ("ckpt_file", "file", "path")
EPOCH_COLUMNS = ("ckpt_epoch", "epoch")


def parse_hf_zoo(directory: str | Path, *, arch: str | None = None, metadata: str | None = None,
                 target_kinds: Mapping[str, str] | None = None, seed: int = 0) -> ImportedZoo:
    """The checkpoints the metadata CSV of ``directory`` lists (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SneError(f"{directory} is not a directory")
    folder = directory / "metadata"
    if metadata:
        table_path = folder / (metadata if metadata.endswith(".csv") else f"{metadata}.csv")
    else:
        table_path = one_file(folder, "*.csv", "metadata table", "choose one with -o metadata=NAME")
    table = read_table(table_path)
    file_column = next((c for c in FILE_COLUMNS if c in table.columns), None)
    if file_column is None:
        raise SneError(f"{table_path}: no file column ({' or '.join(FILE_COLUMNS)})")
    if table.empty:
        raise SneError(f"{table_path}: lists no checkpoints")
    epoch_column = next((c for c in EPOCH_COLUMNS if c in table.columns), None)
    if epoch_column and epoch_column != "epoch":
        table = table.rename(columns={epoch_column: "epoch"})
    files = []
    for row, value in enumerate(table[file_column]):
        path = directory / str(value)
        if not path.is_file():
            raise SneError(f"{path}: listed in row {row + 1} of {table_path}, but there is no such file")
        files.append(path)
    if len(set(files)) != len(files):
        raise SneError(f"{table_path}: a checkpoint is listed twice")
    numeric = [c for c in table.columns if c != file_column and pd.to_numeric(table[c], errors="coerce").notna().all()]
    columns = list(dict.fromkeys([*numeric, *(target_kinds or {})]))
    if not columns:
        raise SneError(f"{table_path}: no numeric column to predict (accuracy, epoch, ...)")
    targets, coded = infer_targets(table, columns, str(table_path), kinds=target_kinds)
    read = network_reader(arch)
    rows = coded.rename(columns={file_column: "file"}).to_dict("records")
    parents = [str(p.parent) for p in files]
    groups = parents if len(set(parents)) > 1 else [str(p) for p in files]
    dataset = {"source": "transformer zoo, Hugging Face layout", "directory": str(directory.resolve()),
               "metadata": str(table_path.relative_to(directory))}
    options = {"source": str(directory.resolve()), "metadata": table_path.stem, "arch": arch}
    return ImportedZoo(RECIPE, options, None, rows, targets, dataset, splits=seeded_group_splits(groups, seed),
                       load=lambda ids: [read(files[i]) for i in ids], files=[table_path, *files])


def import_hf_zoo(directory: str | Path, out: str | Path, *, arch: str | None = None, metadata: str | None = None,
                  target_kinds: Mapping[str, str] | None = None, seed: int = 0, command: str = "") -> Zoo:
    """Import a Hugging Face layout transformer zoo (see :func:`parse_hf_zoo`) as a zoo at ``out``."""
    imported = parse_hf_zoo(directory, arch=arch, metadata=metadata, target_kinds=target_kinds, seed=seed)
    return write_imported(imported, out, seed=seed, command=command)
