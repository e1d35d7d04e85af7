"""Joining zoos (``sne zoo merge``).

Two cases, told apart by the sources' manifests:

- **Parts** of one ``sne zoo generate ... --shard K/N`` run (every source says ``part``): all N
  parts, of identical settings, are joined into exactly the zoo one process would have made: the
  same shard files, ids, splits and manifest, but for ``command``, timestamps, ``merged_from``
  (the parts' paths) and ``part_commands`` (the commands that generated them).
- **Complete zoos**, of any recipes and architectures: networks are renumbered in the order the
  zoos are given (source k's network i gets id ``offset_k + i``), each keeps its split (the merged
  zoo's ``split_method`` is ``given``), and rows gain ``source_zoo`` (index into the manifest's
  ``merged_from``: path, recipe, options, seed, command and id range of every source) and
  ``source_id`` (its id there). Equal architectures are stored as one. Targets are the union of the
  sources' targets: a target two sources define differently (kind, classes) is an error; a target
  only some sources have is NaN for the networks of the others, its manifest entry says how many
  under ``missing``, and :meth:`sne.zoo.format.Zoo.target_values` refuses those networks rather
  than train on NaN. Recipe, options and dataset of the merged zoo describe its sources
  (``recipe: "merge"``), so results on it never mix with results on any one source.

Either way the zoo is written into a staging directory renamed into place when complete: an error
(a missing part, disagreeing targets or settings) leaves nothing at ``--out``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from sne.errors import SneError
from sne.zoo.format import (
    LAYOUT_COLUMNS, _IDENTITY_KEYS, Zoo, _check_fractions, _new_manifest, _requested,
    _read_manifest, _shard_ids, _shard_is_complete, _shard_paths, _stage, _write_shard, part_shards,
)

#: Columns a merge assigns to every row.
SOURCE_COLUMNS = ("source_zoo", "source_id")
# What must agree between two sources' specs of one target (descriptions may differ).
_TARGET_IDENTITY = ("kind", "classes", "num_classes")


def merge_zoos(sources: Sequence[str | Path], out: str | Path, *, command: str = "",
               shard_size: int | None = None) -> Zoo:
    """Join the zoos (or all parts of one sharded generation) at ``sources`` into a new zoo at ``out``."""
    paths = [Path(p) for p in sources]
    if not paths:
        raise SneError("no zoos to merge: give at least one zoo directory")
    seen: dict[Path, Path] = {}
    for path in paths:
        if not path.is_dir():
            raise SneError(f"no zoo at {path}: the directory does not exist")
        if path.resolve() in seen:
            raise SneError(f"{path} is given twice (also as {seen[path.resolve()]})")
        seen[path.resolve()] = path
    if Path(out).resolve() in seen:
        raise SneError(f"--out {out} is one of the zoos to merge; choose a new directory")
    manifests = [_read_manifest(path) for path in paths]
    parts = [m.get("part") is not None for m in manifests]
    if all(parts):
        return _join_parts(paths, manifests, Path(out), command)
    if any(parts):
        part = paths[parts.index(True)]
        whole = paths[parts.index(False)]
        raise SneError(f"{part} is one part of a sharded generation but {whole} is not; "
                       f"merge the parts of a generation by themselves first")
    return _merge_complete([Zoo.open(path) for path in paths], Path(out), command, shard_size)


# ------------------------------------------------------------------------------ parts
def _join_parts(paths: list[Path], manifests: list[dict[str, Any]], out: Path, command: str) -> Zoo:
    first = manifests[0]
    count = first["part"]["count"]
    by_index: dict[int, tuple[Path, dict[str, Any]]] = {}
    for path, manifest in zip(paths, manifests):
        for key in (*_IDENTITY_KEYS, "architectures", "targets"):
            if manifest.get(key) != first.get(key):
                raise SneError(f"{path} is a part of another generation than {paths[0]} (its {key} differs)")
        part = manifest["part"]
        if part["count"] != count:
            raise SneError(f"{path} is part {part['index'] + 1} of {part['count']}, {paths[0]} one of {count}")
        if part["index"] in by_index:
            raise SneError(f"part {part['index'] + 1} of {count} is given twice: {by_index[part['index']][0]} and {path}")
        if not manifest["complete"]:
            raise SneError(f"{path} (part {part['index'] + 1} of {count}) is incomplete; run its generate command "
                           f"again to finish it: {manifest.get('command') or 'sne zoo generate ... --shard'}")
        by_index[part["index"]] = path, manifest
    missing = [i + 1 for i in range(count) if i not in by_index]
    if missing:
        raise SneError(f"part {missing[0]} of {count} is missing ({len(by_index)} of {count} parts given); "
                       f"all parts are needed to make the zoo")
    n, shard_size = first["n"], first["shard_size"]
    manifest = {key: value for key, value in first.items() if key != "part"}
    manifest.update(
        command=command, created=min(str(m.get("created")) for m in manifests), completed=None, complete=False,
        merged_from=[str(by_index[i][0]) for i in range(count)],
        part_commands=[by_index[i][1].get("command", "") for i in range(count)],
    )

    def fill(staging: Path) -> None:
        for index in range(count):
            root = by_index[index][0]
            for shard in part_shards(n, shard_size, index, count):
                if not _shard_is_complete(root, shard, _shard_ids(shard, n, shard_size), first["architectures"]):
                    raise SneError(f"{_shard_paths(root, shard)[0]} (or its parquet) is missing or corrupt; "
                                   f"generate part {index + 1} of {count} again")
                for source, target in zip(_shard_paths(root, shard), _shard_paths(staging, shard)):
                    shutil.copyfile(source, target)

    return _stage(out, manifest, fill)


# ------------------------------------------------------------------------------ complete zoos
def _merged_targets(zoos: list[Zoo]) -> dict[str, dict[str, Any]]:
    targets: dict[str, dict[str, Any]] = {}
    defined_in: dict[str, Zoo] = {}
    for zoo in zoos:
        for name, spec in zoo.targets.items():
            if name not in targets:
                targets[name] = {k: v for k, v in spec.items() if k != "missing"}
                defined_in[name] = zoo
                continue
            mine = {k: spec.get(k) for k in _TARGET_IDENTITY}
            theirs = {k: targets[name].get(k) for k in _TARGET_IDENTITY}
            if mine != theirs:
                key = next(k for k in _TARGET_IDENTITY if mine[k] != theirs[k])
                raise SneError(f"target {name!r} has {key} {theirs[key]!r} in {defined_in[name].path} but "
                               f"{mine[key]!r} in {zoo.path}; merge zoos whose targets agree")
    for name in targets:
        missing = sum(len(zoo) for zoo in zoos if name not in zoo.targets)
        if missing:
            targets[name]["missing"] = missing
    return targets


def _merged_architectures(zoos: list[Zoo]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """One entry per distinct architecture (names made unique) and, per zoo, the new index of each
    of its architectures."""
    entries: list[dict[str, Any]] = []
    index_of: dict[str, int] = {}
    mappings = []
    for zoo in zoos:
        mapping = []
        for entry in zoo.architectures:
            key = json.dumps({k: v for k, v in entry.items() if k != "name"}, sort_keys=True)
            if key not in index_of:
                index_of[key] = len(entries)
                name, suffix = entry["name"], 2
                while any(e["name"] == name for e in entries):
                    name, suffix = f"{entry['name']}-{suffix}", suffix + 1
                entries.append({**entry, "name": name})
            mapping.append(index_of[key])
        mappings.append(np.asarray(mapping, dtype=np.int64))
    return entries, mappings


def _merge_complete(zoos: list[Zoo], out: Path, command: str, shard_size: int | None) -> Zoo:
    targets = _merged_targets(zoos)
    architectures, mappings = _merged_architectures(zoos)
    shard_size = max(zoo.manifest["shard_size"] for zoo in zoos) if shard_size is None else shard_size
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise SneError(f"the shard size must be a positive integer, got {shard_size!r}")
    frames, provenance, offset = [], [], 0
    for s, zoo in enumerate(zoos):
        frame = zoo.metadata.drop(columns=[c for c in (*LAYOUT_COLUMNS, *SOURCE_COLUMNS) if c in zoo.metadata])
        frame = frame.assign(source_zoo=s, source_id=frame["id"], architecture=mappings[s][zoo.architecture_of(frame["id"])])
        frames.append(frame)
        manifest = zoo.manifest
        provenance.append({"path": str(zoo.path), "recipe": manifest["recipe"], "options": manifest["options"],
                           "seed": manifest["seed"], "n": len(zoo), "command": manifest.get("command", ""),
                           "ids": [offset, offset + len(zoo)]})
        offset += len(zoo)
    metadata = pd.concat(frames, ignore_index=True)
    n = len(metadata)
    splits = metadata.pop("split").to_numpy(dtype=object)
    architecture = metadata.pop("architecture").to_numpy(dtype=np.int64)
    sources = metadata["source_zoo"].to_numpy()
    source_ids = metadata["source_id"].to_numpy()
    rows = metadata.drop(columns="id").to_dict("records")
    requested = _requested("merge", {"sources": [{k: p[k] for k in ("recipe", "options", "seed", "n")}
                                               for p in provenance]},
                           n, 0, shard_size, _check_fractions(zoos[0].manifest["split_fractions"]))
    manifest = _new_manifest(requested, architectures, targets, {"merged": [zoo.manifest.get("dataset") for zoo in zoos]},
                             command, split_method="given", merged_from=provenance, splits={})
    def fill(staging: Path) -> None:
        for index in range(math.ceil(n / shard_size)):
            ids = _shard_ids(index, n, shard_size)
            groups: dict[int, dict[str, torch.Tensor]] = {}
            for k in np.unique(architecture[ids]).tolist():
                members = [zoos[sources[i]].state_dict(int(source_ids[i])) for i in ids if architecture[i] == k]
                groups[k] = {key: torch.stack([m[key] for m in members]) for key in members[0]}
            _write_shard(staging, index, [{"id": int(i), **rows[i]} for i in ids], groups, architecture[ids],
                         splits[ids], architectures)

    return _stage(out, manifest, fill)
