"""The on-disk zoo: a directory of stacked-weight shards, per-network metadata and a manifest.

    <zoo>/manifest.json                  recipe, resolved options, n, seed, architecture, targets, ...
    <zoo>/shards/shard-00000.safetensors <layer>.weight of shape (networks in shard, *weight_shape), ...
    <zoo>/shards/shard-00000.parquet     one row per network: id, split, hyper-parameters, targets, metrics
    <zoo>/metadata.parquet               all rows, written when the zoo is complete

Shard k holds networks [k * shard_size, (k + 1) * shard_size). Each file is written atomically,
the safetensors before its parquet, so a shard counts only when both exist and parse; generation
resumes by writing the missing shards. Every network depends only on (seed, id), and the split
only on (seed, n), so an interrupted and resumed zoo equals an uninterrupted one bit for bit.

A recipe may flag a row ``diverged: True`` (training blew up; its weights may be non-finite): the
row keeps its id but gets split ``excluded``, so :meth:`Zoo.split_ids` never returns it, and the
finished manifest counts it under ``diverged`` beside the actual ``splits`` sizes.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sne
from sne.errors import SneError, one_line
from sne.io_utils import atomic_path, remove_stale_temporaries, write_json_atomic
from sne.progress import Progress
from sne.weights.record import NetworkRecord, make_layer
from sne.zoo.recipes import FitProgress, Recipe, Shard, derive_seed, get_recipe

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
METADATA = "metadata.parquet"
SHARDS = "shards"
SPLITS = ("train", "val", "test")
#: The split of networks a recipe flagged with ``diverged: True`` in their row: kept out of every split.
EXCLUDED = "excluded"
DIVERGED = "diverged"
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
TARGET_KINDS = ("regression", "unit_interval", "class")

# Manifest entries that must match for a re-run to resume a zoo instead of making a different one.
_IDENTITY_KEYS = ("format_version", "recipe", "options", "n", "seed", "shard_size", "split_fractions")
_CACHED_SHARDS = 8


def split_sizes(n: int, fractions: Sequence[float]) -> dict[str, int]:
    """Networks per split: rounded fractions of ``n``, the last split taking the remainder."""
    sizes = [round(f * n) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    if sizes[-1] < 0:
        raise SneError(f"split fractions {list(fractions)} do not fit {n} networks")
    return dict(zip(SPLITS, sizes))


def split_assignment(n: int, seed: int, fractions: Sequence[float]) -> np.ndarray:
    """The split name of every id 0..n-1: a permutation seeded by (seed, n) cut by :func:`split_sizes`."""
    order = np.random.default_rng(derive_seed(seed, "zoo/split", n)).permutation(n)
    names = np.empty(n, dtype=object)
    start = 0
    for split, size in split_sizes(n, fractions).items():
        names[order[start : start + size]] = split
        start += size
    return names


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    valid = len(fractions) == len(SPLITS) and all(0 <= f <= 1 for f in fractions)
    if not valid or not math.isclose(sum(fractions), 1.0):
        raise SneError(f"split fractions must be {len(SPLITS)} numbers in [0, 1] summing to 1, got {list(fractions)}")
    return fractions


def _shard_paths(root: Path, index: int) -> tuple[Path, Path]:
    stem = root / SHARDS / f"shard-{index:05d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".parquet")


def _shard_ids(index: int, n: int, shard_size: int) -> np.ndarray:
    return np.arange(index * shard_size, min(n, (index + 1) * shard_size), dtype=np.int64)


def _expected_shapes(architecture: Sequence[Mapping[str, Any]], count: int) -> dict[str, list[int]]:
    shapes = {}
    for layer in architecture:
        shapes[f"{layer['name']}.weight"] = [count, *layer["weight_shape"]]
        if layer["has_bias"]:
            shapes[f"{layer['name']}.bias"] = [count, layer["weight_shape"][0]]
    return shapes


def _shard_is_complete(root: Path, index: int, ids: np.ndarray, architecture: Sequence[Mapping[str, Any]]) -> bool:
    """Both files of shard ``index`` exist, parse, and hold exactly networks ``ids``."""
    weights_path, rows_path = _shard_paths(root, index)
    if not (weights_path.is_file() and rows_path.is_file()):
        return False
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
        rows = pd.read_parquet(rows_path, columns=["id"])
    except Exception:  # any parse failure means the shard must be written again
        return False
    return shapes == _expected_shapes(architecture, len(ids)) and np.array_equal(rows["id"].to_numpy(), ids)


def _write_shard(
    root: Path, index: int, ids: np.ndarray, shard: Shard, architecture: Sequence[Mapping[str, Any]], splits: np.ndarray
) -> None:
    weights_path, rows_path = _shard_paths(root, index)
    shapes = {key: list(t.shape) for key, t in shard.tensors.items()}
    if shapes != _expected_shapes(architecture, len(ids)) or [row["id"] for row in shard.rows] != ids.tolist():
        raise ValueError(f"shard {index}: the recipe's tensors {shapes} or rows do not fit ids {ids.tolist()}")
    diverged = np.array([bool(row.get(DIVERGED, False)) for row in shard.rows])
    for key, tensor in shard.tensors.items():
        if not bool(torch.isfinite(tensor[torch.from_numpy(~diverged)]).all()):
            raise SneError(f"shard {index}: non-finite values in '{key}'; nothing was written for this shard")
    rows = pd.DataFrame(shard.rows)
    # Diverged networks keep their id (so the other splits stay as assigned) but join no split.
    rows.insert(1, "split", np.where(diverged, EXCLUDED, splits[rows["id"].to_numpy()]))
    tensors = {key: t.detach().to("cpu", torch.float32).contiguous() for key, t in shard.tensors.items()}
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(rows_path) as tmp:
        rows.to_parquet(tmp, index=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise SneError(f"{root} is not a zoo: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SneError(f"{path} is corrupt ({error}); generate the zoo again into a new directory") from None
    if not isinstance(manifest, dict):
        raise SneError(f"{path} is corrupt: not a JSON object")
    missing = [key for key in (*_IDENTITY_KEYS, "architecture", "targets", "complete") if key not in manifest]
    if missing:
        raise SneError(f"{path} is corrupt: missing {', '.join(missing)}")
    if not isinstance(manifest["format_version"], int) or manifest["format_version"] > FORMAT_VERSION:
        raise SneError(
            f"{path} has zoo format version {manifest['format_version']!r}; this sne "
            f"({sne.__version__}) reads up to version {FORMAT_VERSION}"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise SneError(f"{path} is corrupt: {problem}")
    return manifest


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the values a zoo is read by (``None``: nothing), for a one-line error."""
    if not _is_int(manifest["n"], 0) or not _is_int(manifest["shard_size"], 1) or not _is_int(manifest["seed"], 0):
        return "n, shard_size and seed must be non-negative integers (shard_size at least 1)"
    if not isinstance(manifest["complete"], bool):
        return "complete must be true or false"
    fractions = manifest["split_fractions"]
    if not (isinstance(fractions, list) and len(fractions) == len(SPLITS)
            and all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fractions)):
        return f"split_fractions must be {len(SPLITS)} numbers"
    architecture = manifest["architecture"]
    if not isinstance(architecture, list) or not architecture:
        return "architecture must be a non-empty list of layers"
    for layer in architecture:
        if not (isinstance(layer, dict) and isinstance(layer.get("name"), str) and _is_int(layer.get("level"), 0)
                and isinstance(layer.get("has_bias"), bool)
                and (layer.get("activation") is None or isinstance(layer.get("activation"), str))
                and (layer.get("activation_from") is None or isinstance(layer.get("activation_from"), str))):
            return f"architecture entry {json.dumps(layer)[:60]} needs a name, a level, has_bias and an activation"
    targets = manifest["targets"]
    if not isinstance(targets, dict):
        return "targets must be an object"
    for name, target in targets.items():
        if not isinstance(target, dict) or target.get("kind") not in TARGET_KINDS:
            return f"target {name!r} needs a kind of {', '.join(TARGET_KINDS)}"
        classes = target.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            return f"target {name!r} has classes that are not a list of names"
    for layer in architecture:
        source = layer.get("activation_from")
        if source is not None and not isinstance((targets.get(source) or {}).get("classes"), list):
            return f"layer {layer['name']!r} takes its activation from {source!r}, a target without class names"
    return None


def _mismatches(existing: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    differences = []
    for key in _IDENTITY_KEYS:
        old, new = existing.get(key), requested[key]
        if key == "options" and isinstance(old, dict):
            for option in sorted(set(old) | set(new)):
                if old.get(option) != new.get(option):
                    differences.append(f"option {option}: zoo has {old.get(option)!r}, requested {new.get(option)!r}")
        elif old != new:
            differences.append(f"{key}: zoo has {old!r}, requested {new!r}")
    return differences


class _RichFitProgress(FitProgress):
    """Networks fitted over the whole zoo, and optimisation steps of the group being fitted."""

    def __init__(self, progress: Progress, networks_task: int) -> None:
        self.progress = progress
        self.networks_task = networks_task
        self.steps_task = progress.add_task("fit steps", total=None, visible=False)

    def group_started(self, networks: int, steps: int) -> None:
        self.progress.reset(self.steps_task, total=steps, visible=True, description=f"fitting a group of {networks}")

    def step_done(self) -> None:
        self.progress.advance(self.steps_task)

    def group_done(self, networks: int) -> None:
        self.progress.advance(self.networks_task, networks)


def generate_zoo(
    recipe: str,
    out: str | Path,
    n: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
    command: str = "",
    progress: bool = True,
    *,
    shard_size: int | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> "Zoo":
    """Make (or resume making) a zoo of ``n`` networks with ``recipe`` in directory ``out``.

    Re-running with the same arguments on an interrupted zoo writes only the missing shards;
    different arguments on an existing zoo raise :class:`SneError` instead of overwriting it.
    """
    maker = get_recipe(recipe)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SneError(f"the number of networks must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SneError(f"the seed must be a non-negative integer, got {seed!r}")
    resolved = json.loads(json.dumps(maker.resolve_options(dict(options or {}))))
    shard_size = maker.default_shard_size(resolved) if shard_size is None else shard_size
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise SneError(f"the shard size must be a positive integer, got {shard_size!r}")
    fractions = _check_fractions(split_fractions)
    root = Path(out)
    requested = {
        "format_version": FORMAT_VERSION,
        "recipe": maker.name,
        "options": resolved,
        "n": int(n),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "split_fractions": list(fractions),
    }
    manifest = _start_or_resume(root, maker, requested, command)
    if manifest["complete"]:
        return Zoo.open(root)

    splits = split_assignment(n, seed, fractions)
    shard_count = math.ceil(n / shard_size)
    todo = []
    for index in range(shard_count):
        ids = _shard_ids(index, n, shard_size)
        if not _shard_is_complete(root, index, ids, manifest["architecture"]):
            for path in _shard_paths(root, index):
                path.unlink(missing_ok=True)
            todo.append(index)
    done = n - sum(len(_shard_ids(i, n, shard_size)) for i in todo)

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    ) as bar:
        networks_task = bar.add_task(f"{maker.name} zoo", total=n, completed=done)
        reporter = _RichFitProgress(bar, networks_task)
        for index in todo:
            ids = _shard_ids(index, n, shard_size)
            shard = maker.generate_shard(ids, int(seed), resolved, reporter)
            _write_shard(root, index, ids, shard, manifest["architecture"], splits)

    _consolidate(root, manifest, shard_count)
    return Zoo.open(root)


def _start_or_resume(root: Path, maker: Recipe, requested: dict[str, Any], command: str) -> dict[str, Any]:
    """The manifest of the zoo at ``root``: the existing one if it matches ``requested``, else a new one."""
    if root.exists() and not root.is_dir():
        raise SneError(f"{root} exists and is not a directory")
    if root.is_dir() and (root / MANIFEST).exists():
        manifest = _read_manifest(root)
        differences = _mismatches(manifest, requested)
        if differences:
            raise SneError(
                f"{root} already holds a different zoo ({'; '.join(differences)}); "
                f"use a new --out directory, or the zoo's own settings to resume it"
            )
        remove_stale_temporaries(root)
        if (root / SHARDS).is_dir():
            remove_stale_temporaries(root / SHARDS)
        return manifest
    if root.is_dir():
        # Only a temporary of the first manifest write may be there (an interrupted first run).
        remove_stale_temporaries(root)
        if any(root.iterdir()):
            raise SneError(f"{root} is not empty and holds no zoo; choose a new or empty directory")
    options = requested["options"]
    manifest = _new_manifest(
        requested, maker.architecture(options), maker.targets(options), maker.dataset(options), command
    )
    # The manifest goes first: a directory with shards but no manifest is never ours.
    write_json_atomic(root / MANIFEST, manifest)
    (root / SHARDS).mkdir(exist_ok=True)
    return manifest


def _new_manifest(
    requested: Mapping[str, Any],
    architecture: list[dict[str, Any]],
    targets: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    command: str,
) -> dict[str, Any]:
    """The manifest of a zoo about to be written: ``requested`` identity plus what describes it."""
    for name, spec in targets.items():
        if spec.get("kind") not in TARGET_KINDS:
            raise ValueError(f"zoo {requested['recipe']}: target '{name}' has kind {spec.get('kind')!r}")
    return {
        **requested,
        "architecture": architecture,
        "targets": targets,
        "dataset": dataset,
        "splits": split_sizes(requested["n"], requested["split_fractions"]),
        "command": command,
        "sne_version": sne.__version__,
        "torch_version": torch.__version__,
        "created": _now(),
        "completed": None,
        "complete": False,
    }


def write_zoo(
    out: str | Path,
    *,
    recipe: str,
    options: Mapping[str, Any],
    architecture: list[dict[str, Any]],
    targets: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    tensors: Mapping[str, torch.Tensor],
    rows: Sequence[Mapping[str, Any]],
    seed: int = 0,
    command: str = "",
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    shard_size: int = 1000,
) -> "Zoo":
    """Write given networks (an imported zoo) as a complete zoo into the new directory ``out``.

    ``tensors`` are stacked as in a recipe's :class:`Shard` (``<layer>.weight`` of shape
    ``(n, *weight_shape)``, finite except in rows flagged ``diverged``); ``rows`` hold each
    network's metadata in the same order (ids 0..n-1 are assigned here). The zoo is written into a
    temporary sibling directory that is renamed to ``out`` only when complete: an error leaves nothing.
    """
    n = len(rows)
    if n < 1:
        raise SneError(f"no networks to write to {out}")
    fractions = _check_fractions(split_fractions)
    root = Path(out)
    requested = {
        "format_version": FORMAT_VERSION,
        "recipe": recipe,
        "options": json.loads(json.dumps(dict(options))),
        "n": n,
        "seed": int(seed),
        "shard_size": int(shard_size),
        "split_fractions": list(fractions),
    }
    if (root / MANIFEST).is_file():
        existing = _read_manifest(root)
        if existing["complete"] and not _mismatches(existing, requested):
            # This very zoo, renamed into place by a run interrupted before it could exit: done.
            return Zoo.open(root)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise SneError(f"{root} already exists and is not an empty directory; choose a new --out directory")
    manifest = _new_manifest(requested, architecture, targets, dataset, command)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Staging directories of earlier runs that were killed (no rename took them into place).
    for stale in root.parent.glob(f".{glob.escape(root.name)}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    # Not ".tmp": remove_stale_temporaries() unlinks those as files.
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        write_json_atomic(staging / MANIFEST, manifest)
        (staging / SHARDS).mkdir()
        splits = split_assignment(n, seed, fractions)
        shard_count = math.ceil(n / shard_size)
        for index in range(shard_count):
            ids = _shard_ids(index, n, shard_size)
            part = slice(int(ids[0]), int(ids[-1]) + 1)
            shard = Shard(
                tensors={key: torch.as_tensor(t[part]) for key, t in tensors.items()},
                rows=[{"id": int(i), **rows[i]} for i in ids],
            )
            _write_shard(staging, index, ids, shard, architecture, splits)
        _consolidate(staging, manifest, shard_count)
        if root.is_dir():
            root.rmdir()
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return Zoo.open(root)


def _consolidate(root: Path, manifest: dict[str, Any], shard_count: int) -> None:
    """Write metadata.parquet from all shards' rows, then mark the manifest complete."""
    rows = pd.concat([pd.read_parquet(_shard_paths(root, i)[1]) for i in range(shard_count)], ignore_index=True)
    if not np.array_equal(rows["id"].to_numpy(), np.arange(manifest["n"])):
        raise SneError(f"{root}: shard rows do not hold ids 0..{manifest['n'] - 1} exactly once")
    with atomic_path(root / METADATA) as tmp:
        rows.to_parquet(tmp, index=False)
    # Actual split sizes: a diverged network leaves the split it was assigned to.
    counts = rows["split"].value_counts()
    splits = {split: int(counts.get(split, 0)) for split in SPLITS}
    diverged = int(counts.get(EXCLUDED, 0))
    write_json_atomic(
        root / MANIFEST, {**manifest, "splits": splits, "diverged": diverged, "completed": _now(), "complete": True}
    )


class Zoo:
    """A complete zoo on disk: its manifest, per-network metadata, and weight records on demand."""

    def __init__(self, path: Path, manifest: dict[str, Any], metadata: pd.DataFrame) -> None:
        self.path = path
        self.manifest = manifest
        self.metadata = metadata
        self._shards: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()

    @classmethod
    def open(cls, path: str | Path) -> "Zoo":
        """Open the complete zoo at ``path``; :class:`SneError` if it is missing, corrupt or unfinished."""
        root = Path(path)
        if not root.is_dir():
            raise SneError(f"no zoo at {root}: the directory does not exist")
        manifest = _read_manifest(root)
        if not manifest["complete"]:
            shard_count = math.ceil(manifest["n"] / manifest["shard_size"])
            written = sum(all(p.is_file() for p in _shard_paths(root, i)) for i in range(shard_count))
            raise SneError(
                f"the zoo at {root} is incomplete ({written} of {shard_count} shards written); "
                f"run the same generate command again to resume: {manifest.get('command') or 'sne zoo generate ...'}"
            )
        try:
            metadata = pd.read_parquet(root / METADATA)
        except Exception as error:  # pyarrow raises several types for missing or damaged files
            raise SneError(f"{root / METADATA} is missing or corrupt ({one_line(error)})") from None
        columns = ["id", "split", *manifest["targets"]]
        absent = [c for c in columns if c not in metadata.columns]
        if absent:
            raise SneError(f"{root / METADATA} is corrupt: no column '{absent[0]}'")
        kinds = {c: metadata[c].dtype.kind for c in columns}
        if kinds["id"] not in "iu" or any(kinds[t] not in "iuf" for t in manifest["targets"]):
            raise SneError(f"{root / METADATA} is corrupt: ids and targets must be numbers")
        if not metadata["split"].isin([*SPLITS, EXCLUDED]).all():
            raise SneError(f"{root / METADATA} is corrupt: a split other than {', '.join((*SPLITS, EXCLUDED))}")
        metadata = metadata.sort_values("id", ignore_index=True)
        # Lengths first: a corrupt n must not allocate a range of its own size.
        if len(metadata) != manifest["n"] or not np.array_equal(metadata["id"].to_numpy(), np.arange(len(metadata))):
            raise SneError(f"{root / METADATA} does not list ids 0..{manifest['n'] - 1} exactly once")
        return cls(root, manifest, metadata)

    def __len__(self) -> int:
        return int(self.manifest["n"])

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, recipe={self.manifest['recipe']!r}, n={len(self)})"

    @property
    def architecture(self) -> list[dict[str, Any]]:
        return self.manifest["architecture"]

    @property
    def targets(self) -> dict[str, dict[str, Any]]:
        return self.manifest["targets"]

    def split_ids(self, split: str) -> np.ndarray:
        """Ids of ``split`` ("train", "val" or "test"), ascending."""
        if split not in SPLITS:
            raise SneError(f"unknown split '{split}' (available: {', '.join(SPLITS)})")
        return self.metadata.loc[self.metadata["split"] == split, "id"].to_numpy(dtype=np.int64)

    def _ids(self, ids: Iterable[int]) -> np.ndarray:
        array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).reshape(-1)
        outside = array[(array < 0) | (array >= len(self))]
        if len(outside):
            raise SneError(f"network id {int(outside[0])} is not in the zoo at {self.path} (ids 0..{len(self) - 1})")
        return array

    def target_values(self, name: str, ids: Iterable[int]) -> np.ndarray:
        """Values of target ``name`` for ``ids``, in that order, as float64."""
        if name not in self.targets:
            raise SneError(f"unknown target '{name}' in the zoo at {self.path} "
                           f"(it has: {', '.join(sorted(self.targets))})")
        return self.metadata[name].to_numpy(dtype=np.float64)[self._ids(ids)]

    def _class_name(self, column: str, network_id: int) -> str:
        """The class name of network ``network_id`` in class target ``column`` (stored as a code)."""
        classes, code = self.targets[column]["classes"], self.metadata.at[network_id, column]
        if not (0 <= code < len(classes)) or code != int(code):
            raise SneError(f"{self.path / METADATA} is corrupt: class code {code} of network {network_id} "
                           f"in '{column}' names none of {len(classes)} classes")
        return classes[int(code)]

    def _shard(self, index: int) -> dict[str, torch.Tensor]:
        if index in self._shards:
            self._shards.move_to_end(index)
            return self._shards[index]
        weights_path = _shard_paths(self.path, index)[0]
        try:
            tensors = load_file(str(weights_path))
        except Exception as error:  # safetensors raises several types for missing or damaged files
            raise SneError(f"{weights_path} is missing or corrupt ({one_line(error)})") from None
        self._shards[index] = tensors
        if len(self._shards) > _CACHED_SHARDS:
            self._shards.popitem(last=False)
        return tensors

    def records(self, ids: Iterable[int]) -> list[NetworkRecord]:
        """Weight records of networks ``ids``, in that order; layer names and activations from the manifest."""
        shard_size = self.manifest["shard_size"]
        records = []
        for network_id in self._ids(ids).tolist():
            tensors = self._shard(network_id // shard_size)
            row = network_id % shard_size
            source = f"{self.path}#{network_id}"
            if self.metadata.at[network_id, "split"] == EXCLUDED:
                raise SneError(f"{source} diverged during training: it has no valid weights and is in no split")
            layers = []
            for layer in self.architecture:
                name = layer["name"]
                missing = [k for k in (f"{name}.weight", f"{name}.bias")[: 1 + layer["has_bias"]] if k not in tensors]
                if missing or row >= len(tensors[f"{name}.weight"]):
                    what = f"no tensor {missing[0]!r}" if missing else f"no row {row} in {name + '.weight'!r}"
                    raise SneError(f"{_shard_paths(self.path, network_id // shard_size)[0]} does not match the "
                                   f"manifest: {what}")
                # Copies, so a record does not pin its whole shard in memory after the cache drops it.
                weight = tensors[f"{name}.weight"][row].clone()
                bias = tensors[f"{name}.bias"][row].clone() if layer["has_bias"] else None
                activation = layer["activation"]
                if layer.get("activation_from"):
                    activation = self._class_name(layer["activation_from"], network_id)
                layers.append(make_layer(name, layer["level"], weight, bias, activation, source=source))
            records.append(NetworkRecord(tuple(layers), source=source, meta={"id": network_id}))
        return records
