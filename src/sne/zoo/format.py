"""The on-disk zoo: a directory of stacked-weight shards, per-network metadata and a manifest.

    <zoo>/manifest.json                  recipe, resolved options, n, seed, architectures, targets, ...
    <zoo>/shards/shard-00000.safetensors a<k>/<state_dict key> of shape (networks of architecture k
                                         in this shard, *tensor shape), for each architecture k present
    <zoo>/shards/shard-00000.parquet     one row per network: id, split, architecture (k), position
                                         (its index along the first axis of a<k>/...), hyper-parameters,
                                         targets, metrics
    <zoo>/metadata.parquet               all rows, written when the zoo is complete

The manifest's ``architectures`` lists ``{"name", "structure"}`` entries: ``structure`` is
:func:`sne.weights.record.record_structure` of the networks of that architecture (every tensor's
name, shape and dtype, kinds, data flow, attrs, symmetries), so any network a record can express
is stored, and networks of one architecture stack even in a zoo of several. A chain made by a recipe
also keeps the recipe's layer list under ``layers`` (name, level, weight_shape, has_bias,
activation, and ``activation_from``: a class target whose value is the layer's activation, per
network; such a layer's structure says activation ``null``).

Shard k holds networks [k * shard_size, (k + 1) * shard_size). Each file is written atomically,
the safetensors before its parquet, so a shard counts only when both exist and parse; generation
resumes by writing the missing shards. Every network depends only on (seed, id), and the split
only on (seed, n), so an interrupted and resumed zoo equals an uninterrupted one bit for bit.
An import (:func:`write_listed_zoo`) resumes alike, loading only the missing shards' networks; its
manifest's ``listing`` digest of the source files joins the identity a re-run must match, and its
``architectures`` grow, in order of first appearance, before each shard that brings a new one.
``split_method`` says whether splits were so seeded or ``given`` (an importer's published split,
a merge keeping its sources' splits). ``generate_zoo(..., part=(k, count))`` writes only the k-th
of ``count`` contiguous blocks of shards; such a zoo says ``part`` in its manifest, is not opened
as a zoo, and :mod:`sne.zoo.merge` joins all parts into the zoo one process would have made.

A recipe may flag a row ``diverged: True`` (training blew up; its weights may be non-finite): the
row keeps its id but gets split ``excluded``, so :meth:`Zoo.split_ids` never returns it, and the
finished manifest counts it under ``diverged`` beside the actual ``splits`` sizes.

Format 1 (still read): one chain ``architecture`` list instead of ``architectures``, tensors stored
as ``<state_dict key>``, no ``architecture``/``position`` columns (network i sits at row
``i % shard_size`` of its shard).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import shutil
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

import sne
from sne.errors import SneError, one_line
from sne.io_utils import atomic_path, remove_stale_temporaries, staged_directory, write_bytes_atomic, write_json_atomic
from sne.progress import Progress
from sne.weights.record import KIND_BY_WEIGHT_NDIM, NetworkRecord, record_from_structure, record_structure, structure_problem
from sne.zoo.recipes import FitProgress, Recipe, Shard, derive_seed, get_recipe

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
METADATA = "metadata.parquet"
SHARDS = "shards"
SPLITS = ("train", "val", "test")
#: The split of networks a recipe flagged with ``diverged: True`` in their row: kept out of every split.
EXCLUDED = "excluded"
DIVERGED = "diverged"
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
TARGET_KINDS = ("regression", "unit_interval", "class")
#: Columns the writer assigns to every row (callers' rows must not set id or split; the layout
#: columns of rows read back from a zoo are replaced).
LAYOUT_COLUMNS = ("architecture", "position")
SPLIT_METHODS = ("seeded", "given")

# Manifest entries that must match for a re-run to resume a zoo instead of making a different one.
_IDENTITY_KEYS = ("format_version", "recipe", "options", "n", "seed", "shard_size", "split_fractions")
#: Manifest entry of an imported zoo: a digest of its source listing, also part of its identity
#: (see :func:`_listing_digest`); absent from generated zoos.
LISTING = "listing"
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


def part_shards(n: int, shard_size: int, index: int, count: int) -> range:
    """The shards of part ``index`` of ``count`` of a zoo of ``n`` networks: a contiguous block, so a
    part's networks have contiguous ids and the blocks of all parts cover every shard once."""
    shard_count = math.ceil(n / shard_size)
    return range(index * shard_count // count, (index + 1) * shard_count // count)


# ------------------------------------------------------------------------------ architectures
def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _chain_problem(layers: Any) -> str | None:
    """What is wrong with a recipe's chain layer list (``None``: nothing), for a one-line error."""
    if not isinstance(layers, list) or not layers:
        return "architecture must be a non-empty list of layers"
    for layer in layers:
        shape = layer.get("weight_shape") if isinstance(layer, dict) else None
        if not (isinstance(layer, dict) and isinstance(layer.get("name"), str) and _is_int(layer.get("level"), 0)
                and isinstance(layer.get("has_bias"), bool)
                and isinstance(shape, list) and len(shape) in KIND_BY_WEIGHT_NDIM and all(_is_int(s, 1) for s in shape)
                and (layer.get("activation") is None or isinstance(layer.get("activation"), str))
                and (layer.get("activation_from") is None or isinstance(layer.get("activation_from"), str))):
            return (f"architecture entry {json.dumps(layer)[:60]} needs a name, a level, a weight_shape of 2 to 5 "
                    f"sizes, has_bias and an activation")
    return None


def chain_structure(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The record structure of a recipe's chain layer list (float32 weights and biases, no symmetries:
    a chain's follow from the chain); a layer with ``activation_from`` gets activation ``None``."""
    structure = []
    for layer in layers:
        shape = [int(s) for s in layer["weight_shape"]]
        tensors = [{"name": "weight", "shape": shape, "dtype": "float32"}]
        if layer["has_bias"]:
            tensors.append({"name": "bias", "shape": shape[:1], "dtype": "float32"})
        structure.append({
            "name": layer["name"], "kind": KIND_BY_WEIGHT_NDIM[len(shape)], "level": layer["level"],
            "tensors": tensors, "activation": None if layer.get("activation_from") else layer.get("activation"),
            "skip_from": [], "attrs": {}, "inputs": None,
        })
    return {"layers": structure, "symmetries": None}


def _chain_of_structure(structure: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The chain layer list of a structure that is a plain chain (dense layers of weight and
    optional bias, no data flow beyond the chain); ``None`` for any other."""
    chain = []
    for i, layer in enumerate(structure["layers"]):
        tensors = {t["name"]: t["shape"] for t in layer["tensors"]}
        if (layer["kind"] not in KIND_BY_WEIGHT_NDIM.values() or set(tensors) - {"weight", "bias"}
                or "weight" not in tensors or layer["skip_from"] or layer["attrs"].get("groups", 1) != 1
                or layer["attrs"].get("stored_in_out") or any(s["sources"] != [i - 1] for s in layer["inputs"] or ())):
            return None
        chain.append({"name": layer["name"], "kind": layer["kind"], "level": layer["level"],
                      "weight_shape": tensors["weight"], "has_bias": "bias" in tensors,
                      "activation": layer["activation"]})
    return chain


def _architectures_problem(architectures: Any, targets: Mapping[str, Any]) -> str | None:
    if not isinstance(architectures, list) or not architectures:
        return "architectures must be a non-empty list"
    names = set()
    for k, entry in enumerate(architectures):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and "structure" in entry):
            return f"architecture {k} needs a name and a structure"
        if entry["name"] in names:
            return f"architecture name {entry['name']!r} appears twice"
        names.add(entry["name"])
        problem = structure_problem(entry["structure"])
        if problem:
            return f"architecture {entry['name']!r}: {problem}"
        sources = entry.get("activation_from", {})
        layers = {layer["name"]: layer for layer in entry["structure"]["layers"]}
        if not (isinstance(sources, dict) and all(isinstance(v, str) for v in sources.values())):
            return f"architecture {entry['name']!r}: activation_from must map layer names to class targets"
        for name, source in sources.items():
            if name not in layers or layers[name]["activation"] is not None:
                return f"architecture {entry['name']!r}: activation_from names {name!r}, not a layer without activation"
            if not isinstance((targets.get(source) or {}).get("classes"), list):
                return f"layer {name!r} takes its activation from {source!r}, a target without class names"
        if "layers" in entry:
            problem = _chain_problem(entry["layers"])
            if problem:
                return f"architecture {entry['name']!r}: {problem}"
            if chain_structure(entry["layers"]) != entry["structure"] or _chain_activation_from(entry["layers"]) != sources:
                return f"architecture {entry['name']!r}: its layers and its structure disagree"
    return None


def _chain_activation_from(layers: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    return {layer["name"]: layer["activation_from"] for layer in layers if layer.get("activation_from")}


def _activation_sources_problem(layers: Sequence[Mapping[str, Any]], targets: Mapping[str, Any]) -> str | None:
    for layer in layers:
        source = layer.get("activation_from")
        if source is not None and not isinstance((targets.get(source) or {}).get("classes"), list):
            return f"layer {layer['name']!r} takes its activation from {source!r}, a target without class names"
    return None


def _stored_keys(structure: Mapping[str, Any]) -> list[tuple[str, list[int], str]]:
    """(state_dict key, shape, dtype) of every tensor of ``structure``, in order."""
    return [(f"{layer['name']}.{t['name']}" if layer["name"] else t["name"], t["shape"], t["dtype"])
            for layer in structure["layers"] for t in layer["tensors"]]


def _positions(architecture: np.ndarray) -> np.ndarray:
    """Each row's index among the earlier rows of its architecture (its place in ``a<k>/...``)."""
    positions = np.zeros(len(architecture), dtype=np.int64)
    for k in np.unique(architecture):
        where = architecture == k
        positions[where] = np.arange(int(where.sum()))
    return positions


def _expected_shapes(architectures: Sequence[Mapping[str, Any]], architecture: np.ndarray) -> dict[str, list[int]]:
    shapes = {}
    for k in np.unique(architecture).tolist():
        count = int((architecture == k).sum())
        for key, shape, _ in _stored_keys(architectures[k]["structure"]):
            shapes[f"a{k}/{key}"] = [count, *shape]
    return shapes


# ------------------------------------------------------------------------------ shards
def _shard_is_complete(root: Path, index: int, ids: np.ndarray, architectures: Sequence[Mapping[str, Any]]) -> bool:
    """Both files of shard ``index`` exist, parse, and hold exactly networks ``ids``."""
    weights_path, rows_path = _shard_paths(root, index)
    if not (weights_path.is_file() and rows_path.is_file()):
        return False
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
        rows = pd.read_parquet(rows_path, columns=["id", *LAYOUT_COLUMNS])
        architecture = rows["architecture"].to_numpy()
        if len(architecture) and not (architecture.dtype.kind in "iu" and 0 <= architecture.min()
                                      and architecture.max() < len(architectures)):
            return False
    except Exception:  # any parse failure means the shard must be written again
        return False
    return (np.array_equal(rows["id"].to_numpy(), ids)
            and np.array_equal(rows["position"].to_numpy(), _positions(architecture))
            and shapes == _expected_shapes(architectures, architecture))


def _write_shard(
    root: Path,
    index: int,
    rows: Sequence[Mapping[str, Any]],
    groups: Mapping[int, Mapping[str, torch.Tensor]],
    architecture: np.ndarray,
    splits: np.ndarray,
    architectures: Sequence[Mapping[str, Any]],
) -> None:
    """Write shard ``index``: ``rows`` (each with its ``id``) of networks whose architecture indices
    are ``architecture`` and splits ``splits``; ``groups[k]`` stacks the tensors (state_dict keys) of
    the shard's networks of architecture k in row order. Non-finite values outside diverged rows
    are a :class:`SneError` and nothing is written (excluded networks are the diverged ones, whose
    values may be anything)."""
    weights_path, rows_path = _shard_paths(root, index)
    architecture = np.asarray(architecture, dtype=np.int64)
    expected = _expected_shapes(architectures, architecture)
    tensors = {f"a{k}/{key}": t for k, group in groups.items() for key, t in group.items()}
    shapes = {key: list(t.shape) for key, t in tensors.items()}
    if shapes != expected:
        raise ValueError(f"shard {index}: the tensors {shapes} do not fit the architectures {expected}")
    diverged = np.asarray(splits) == EXCLUDED
    dtypes = {f"a{k}/{key}": dtype for k in np.unique(architecture).tolist()
              for key, _, dtype in _stored_keys(architectures[k]["structure"])}
    stored = {}
    for key, tensor in tensors.items():
        k = int(key[1:key.index("/")])
        tensor = tensor.detach().to("cpu", getattr(torch, dtypes[key])).contiguous()
        finite = torch.from_numpy(~diverged[architecture == k])
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor[finite]).all()):
            raise SneError(f"shard {index}: non-finite values in '{key}'; nothing was written for this shard")
        stored[key] = tensor
    table = pd.DataFrame(list(rows))
    table = table.drop(columns=[c for c in (*LAYOUT_COLUMNS, "split") if c in table.columns])
    table.insert(1, "split", splits)
    table.insert(2, "architecture", architecture)
    table.insert(3, "position", _positions(architecture))
    # Serialised in memory: save_file reports a full disk as an opaque SafetensorError.
    write_bytes_atomic(weights_path, safetensors_bytes(stored))
    with atomic_path(rows_path) as tmp:
        table.to_parquet(tmp, index=False)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ manifest
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
    version = manifest.get("format_version")
    layout = "architecture" if version == 1 else "architectures"
    missing = [key for key in (*_IDENTITY_KEYS, layout, "targets", "complete") if key not in manifest]
    if missing:
        raise SneError(f"{path} is corrupt: missing {', '.join(missing)}")
    if not _is_int(version, 1) or version > FORMAT_VERSION:
        raise SneError(
            f"{path} has zoo format version {version!r}; this sne ({sne.__version__}) reads up to version {FORMAT_VERSION}"
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise SneError(f"{path} is corrupt: {problem}")
    return manifest


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
    targets = manifest["targets"]
    if not isinstance(targets, dict):
        return "targets must be an object"
    for name, target in targets.items():
        if not isinstance(target, dict) or target.get("kind") not in TARGET_KINDS:
            return f"target {name!r} needs a kind of {', '.join(TARGET_KINDS)}"
        classes = target.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            return f"target {name!r} has classes that are not a list of names"
    if manifest["format_version"] == 1:
        return _chain_problem(manifest["architecture"]) or _activation_sources_problem(manifest["architecture"], targets)
    if manifest.get("split_method", "seeded") not in SPLIT_METHODS:
        return f"split_method must be one of {', '.join(SPLIT_METHODS)}"
    part = manifest.get("part")
    if part is not None and not (isinstance(part, dict) and _is_int(part.get("count"), 1)
                                 and _is_int(part.get("index"), 0) and part["index"] < part["count"]):
        return "part must be an object with an index below its count"
    return _architectures_problem(manifest["architectures"], targets)


def _mismatches(existing: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    differences = []
    for key in (*_IDENTITY_KEYS, "part", LISTING):
        old, new = existing.get(key), requested.get(key)
        if key == LISTING and old != new:
            differences.append("the source files or their listing differ from those it was made from")
        elif key == "options" and isinstance(old, dict):
            for option in sorted(set(old) | set(new)):
                if old.get(option) != new.get(option):
                    differences.append(f"option {option}: zoo has {old.get(option)!r}, requested {new.get(option)!r}")
        elif old != new:
            differences.append(f"{key}: zoo has {old!r}, requested {new!r}")
    return differences


def _new_manifest(
    requested: Mapping[str, Any],
    architectures: list[dict[str, Any]],
    targets: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    command: str,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest of a zoo about to be written: ``requested`` identity plus what describes it."""
    manifest = {
        **requested,
        "split_method": "seeded",
        "architectures": architectures,
        "targets": targets,
        "dataset": dataset,
        "splits": split_sizes(requested["n"], requested["split_fractions"]),
        "command": command,
        "sne_version": sne.__version__,
        "torch_version": torch.__version__,
        "created": _now(),
        "completed": None,
        "complete": False,
        **extra,
    }
    # Checked as Zoo.open will check it, so that a zoo is never written that cannot be read.
    problem = _manifest_problem(json.loads(json.dumps(manifest)))
    if problem:
        raise SneError(f"zoo {requested['recipe']}: {problem}")
    return manifest


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


def _chain_architectures(name: str, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``architectures`` of a zoo of one recipe-made chain."""
    problem = _chain_problem(layers)
    if problem:
        raise SneError(f"zoo {name}: {problem}")
    sources = _chain_activation_from(layers)
    return [{"name": name, "structure": chain_structure(layers), **({"activation_from": sources} if sources else {}),
             "layers": layers}]


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
    split_fractions: Sequence[float] | None = None,
    part: tuple[int, int] | None = None,
) -> "Zoo | None":
    """Make (or resume making) a zoo of ``n`` networks with ``recipe`` in directory ``out``.

    Re-running with the same arguments on an interrupted zoo writes only the missing shards;
    different arguments on an existing zoo raise :class:`SneError` instead of overwriting it.
    With ``part=(index, count)`` only that part's block of shards (:func:`part_shards`) is written,
    as a part zoo for :func:`sne.zoo.merge.merge_zoos`; ``None`` is returned then.

    A *grouped* recipe (one with ``generate_rows``, ``rows_per_network`` and ``zoo_manifest``, as
    :class:`sne.zoo.module_recipes.ModuleRecipe`: networks of several architectures, or several
    checkpoints or views per network) writes ``rows_per_network`` rows for each network, draws the
    split per network (all rows of a network share it) and counts ``shard_size`` in networks.
    """
    maker = get_recipe(recipe)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SneError(f"the number of networks must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SneError(f"the seed must be a non-negative integer, got {seed!r}")
    resolved = json.loads(json.dumps(maker.resolve_options(dict(options or {}))))
    per = maker.rows_per_network(resolved) if hasattr(maker, "generate_rows") else 1
    grouped = hasattr(maker, "generate_rows") and (getattr(maker, "always_grouped", False) or per > 1)
    networks_per_shard = maker.default_shard_size(resolved) if shard_size is None else shard_size
    if not _is_int(networks_per_shard, 1):
        raise SneError(f"the shard size must be a positive integer, got {networks_per_shard!r}")
    fractions = _check_fractions(DEFAULT_SPLIT_FRACTIONS if split_fractions is None else split_fractions)
    rows, rows_per_shard = int(n) * per, int(networks_per_shard) * per
    shard_count = math.ceil(rows / rows_per_shard)
    shards = range(shard_count)
    if part is not None:
        index, count = part
        if not (_is_int(count, 1) and _is_int(index, 0) and index < count):
            raise SneError(f"--shard {index + 1}/{count}: the part must be between 1 and the number of parts")
        if count > shard_count:
            raise SneError(f"--shard {index + 1}/{count}: {n} networks in shards of {networks_per_shard} make only "
                           f"{shard_count} shards, so at most {shard_count} parts")
        shards = part_shards(rows, rows_per_shard, index, count)
    root = Path(out)
    requested = {
        "format_version": FORMAT_VERSION,
        "recipe": maker.name,
        "options": resolved,
        "n": rows,
        "seed": int(seed),
        "shard_size": rows_per_shard,
        "split_fractions": list(fractions),
        **({} if part is None else {"part": {"index": int(part[0]), "count": int(part[1])}}),
    }
    manifest = _start_or_resume(root, requested,
                                lambda: _recipe_manifest(maker, requested, command, int(n) if grouped else None))
    if not manifest["complete"]:
        architectures = manifest["architectures"]
        splits = split_assignment(int(n), int(seed), fractions)  # per network
        todo = []
        for index in shards:
            ids = _shard_ids(index, rows, rows_per_shard)
            if not _shard_is_complete(root, index, ids, architectures):
                for path in _shard_paths(root, index):
                    path.unlink(missing_ok=True)
                todo.append(index)
        total = sum(len(_shard_ids(i, rows, rows_per_shard)) for i in shards) // per
        done = total - sum(len(_shard_ids(i, rows, rows_per_shard)) for i in todo) // per
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=Console(stderr=True, emoji=False), disable=not progress) as bar:
            reporter = _RichFitProgress(bar, bar.add_task(f"{maker.name} zoo", total=total, completed=done))
            for index in todo:
                ids = _shard_ids(index, rows, rows_per_shard)
                if grouped:
                    shard = maker.generate_rows(np.unique(ids // per), int(seed), resolved, reporter, manifest)
                    groups, architecture = shard.groups, shard.architecture
                else:
                    shard = maker.generate_shard(ids, int(seed), resolved, reporter)
                    groups, architecture = {0: shard.tensors}, np.zeros(len(ids), dtype=np.int64)
                if [row["id"] for row in shard.rows] != ids.tolist():
                    raise ValueError(f"shard {index}: the recipe's rows do not hold ids {ids.tolist()}")
                diverged = np.array([bool(row.get(DIVERGED, False)) for row in shard.rows])
                _write_shard(root, index, shard.rows, groups, architecture,
                             np.where(diverged, EXCLUDED, splits[ids // per]), architectures)
        _consolidate(root, manifest, list(shards))
    return None if part is not None else Zoo.open(root)


def _start_or_resume(root: Path, requested: dict[str, Any], new_manifest: Callable[[], dict[str, Any]],
                     different: str = "already holds a different zoo",
                     hint: str = "use a new --out directory, or the zoo's own settings to resume it") -> dict[str, Any]:
    """The manifest of the zoo at ``root``: the existing one if it matches ``requested``, else
    ``new_manifest()``, written first (``different`` and ``hint`` word the refusal of another zoo)."""
    if root.exists() and not root.is_dir():
        raise SneError(f"{root} exists and is not a directory")
    if root.is_dir() and (root / MANIFEST).exists():
        manifest = _read_manifest(root)
        differences = _mismatches(manifest, requested)
        if differences:
            raise SneError(f"{root} {different} ({'; '.join(differences)}); {hint}")
        remove_stale_temporaries(root)
        if (root / SHARDS).is_dir():
            remove_stale_temporaries(root / SHARDS)
        return manifest
    if root.is_dir():
        # Only a temporary of the first manifest write may be there (an interrupted first run).
        remove_stale_temporaries(root)
        if any(root.iterdir()):
            raise SneError(f"{root} is not empty and holds no zoo; choose a new or empty directory")
    manifest = new_manifest()
    # The manifest goes first: a directory with shards but no manifest is never ours.
    write_json_atomic(root / MANIFEST, manifest)
    (root / SHARDS).mkdir(exist_ok=True)
    return manifest


def _recipe_manifest(maker: Recipe, requested: dict[str, Any], command: str, networks: int | None) -> dict[str, Any]:
    """The new manifest of a zoo made by ``maker`` (``networks``: of a grouped recipe, which
    describes its own architectures)."""
    options = requested["options"]
    if networks is None:
        return _new_manifest(
            requested, _chain_architectures(maker.name, maker.architecture(options)), maker.targets(options),
            maker.dataset(options), command,
        )
    described = maker.zoo_manifest(requested["seed"], networks, options)
    manifest = _new_manifest(
        requested, described.pop("architectures"), maker.targets(options), maker.dataset(options), command,
        split_method="given", networks=networks, rows_per_network=maker.rows_per_network(options), **described,
    )
    # Splits are drawn per network, so the row counts per split are known only when complete.
    manifest["splits"] = {}
    return manifest


def _consolidate(root: Path, manifest: dict[str, Any], shards: Sequence[int],
                 describe: Callable[[pd.DataFrame], Mapping[str, Any]] | None = None) -> None:
    """Write metadata.parquet from the rows of ``shards`` (all of the zoo's, or a part's), then
    mark the manifest complete; ``describe(rows)`` gives manifest entries known only from all rows."""
    n, shard_size = manifest["n"], manifest["shard_size"]
    rows = pd.concat([pd.read_parquet(_shard_paths(root, i)[1]) for i in shards], ignore_index=True)
    ids = np.concatenate([_shard_ids(i, n, shard_size) for i in shards])
    if not np.array_equal(rows["id"].to_numpy(), ids):
        raise SneError(f"{root}: shard rows do not hold ids {ids[0]}..{ids[-1]} exactly once")
    if describe is not None:
        manifest = {**manifest, **describe(rows)}
    with atomic_path(root / METADATA) as tmp:
        rows.to_parquet(tmp, index=False)
    # Actual split sizes: a diverged network leaves the split it was assigned to.
    counts = rows["split"].value_counts()
    splits = {split: int(counts.get(split, 0)) for split in SPLITS}
    diverged = int(counts.get(EXCLUDED, 0))
    write_json_atomic(
        root / MANIFEST, {**manifest, "splits": splits, "diverged": diverged, "completed": _now(), "complete": True}
    )


# ------------------------------------------------------------------------------ writing given networks
def _stage(root: Path, manifest: dict[str, Any], fill: Callable[[Path], None]) -> "Zoo":
    """Write a complete zoo into the new directory ``root``: ``fill(staging)`` writes every shard
    into a temporary sibling directory that is renamed to ``root`` only when complete, so an error
    (or a kill) leaves nothing at ``root``. A complete zoo of the same identity already at ``root``
    (a run killed after its rename) is returned as it is."""
    problem = _manifest_problem(json.loads(json.dumps(manifest)))
    if problem:
        raise SneError(f"zoo {manifest['recipe']}: {problem}")

    def write(staging: Path) -> None:
        write_json_atomic(staging / MANIFEST, manifest)
        (staging / SHARDS).mkdir()
        fill(staging)
        _consolidate(staging, manifest, range(math.ceil(manifest["n"] / manifest["shard_size"])))

    return _staged(root, manifest, write)


def _staged(root: Path, identity: Mapping[str, Any], write: Callable[[Path], None]) -> "Zoo":
    """``write(staging)`` a whole zoo of ``identity`` into a temporary sibling of ``root`` renamed to
    ``root`` when complete (see :func:`_stage`)."""
    if (root / MANIFEST).is_file():
        existing = _read_manifest(root)
        if existing["complete"] and not _mismatches(existing, identity):
            # This very zoo, renamed into place by a run interrupted before it could exit: done.
            return Zoo.open(root)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise SneError(f"{root} already exists and is not an empty directory; choose a new --out directory")
    with staged_directory(root) as staging:
        write(staging)
    return Zoo.open(root)


def _check_rows(rows: Sequence[Mapping[str, Any]], n: int, out: Path) -> None:
    if len(rows) != n:
        raise SneError(f"{out}: {n} networks but {len(rows)} rows of metadata")
    for i, row in enumerate(rows):
        taken = [c for c in ("id", "split") if c in row]
        if taken:
            raise SneError(f"{out}: row {i} sets '{taken[0]}', which the zoo assigns (give splits separately)")


def _split_names(rows: Sequence[Mapping[str, Any]], seeded: np.ndarray, given: Sequence[str] | None,
                 out: Path) -> np.ndarray:
    """Each network's split: ``given`` (or the seeded one), ``excluded`` for diverged rows."""
    names = np.asarray(seeded, dtype=object)
    if given is not None:
        if len(given) != len(rows):
            raise SneError(f"{out}: {len(rows)} networks but {len(given)} splits")
        bad = [s for s in given if s not in SPLITS]
        if bad:
            raise SneError(f"{out}: split {bad[0]!r} is not one of {', '.join(SPLITS)}")
        names = np.asarray(list(given), dtype=object)
    diverged = np.array([bool(row.get(DIVERGED, False)) for row in rows], dtype=bool)
    return np.where(diverged, EXCLUDED, names)


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
    """Write given networks of one chain ``architecture`` (a recipe's layer list) as a complete zoo
    into the new directory ``out``.

    ``tensors`` are stacked as in a recipe's :class:`Shard` (``<layer>.weight`` of shape
    ``(n, *weight_shape)``, finite except in rows flagged ``diverged``); ``rows`` hold each
    network's metadata in the same order (ids 0..n-1 are assigned here). Nothing is left at ``out``
    on error (see :func:`write_records_zoo` for networks of any architecture).
    """
    n = len(rows)
    if n < 1:
        raise SneError(f"no networks to write to {out}")
    root = Path(out)
    _check_rows(rows, n, root)
    fractions = _check_fractions(split_fractions)
    requested = _requested(recipe, options, n, seed, shard_size, fractions)
    architectures = _chain_architectures(recipe, architecture)
    manifest = _new_manifest(requested, architectures, targets, dataset, command)
    splits = _split_names(rows, split_assignment(n, seed, fractions), None, root)

    def fill(staging: Path) -> None:
        for index in range(math.ceil(n / shard_size)):
            ids = _shard_ids(index, n, shard_size)
            part = slice(int(ids[0]), int(ids[-1]) + 1)
            _write_shard(staging, index, [{"id": int(i), **rows[i]} for i in ids],
                         {0: {key: torch.as_tensor(t[part]) for key, t in tensors.items()}},
                         np.zeros(len(ids), dtype=np.int64), splits[part], architectures)

    return _stage(root, manifest, fill)


def _requested(recipe: str, options: Mapping[str, Any], n: int, seed: int, shard_size: int,
               fractions: Sequence[float]) -> dict[str, Any]:
    if not _is_int(shard_size, 1) or not _is_int(seed, 0):
        raise SneError(f"shard size must be a positive integer and seed a non-negative one, got {shard_size!r}, {seed!r}")
    return {
        "format_version": FORMAT_VERSION,
        "recipe": recipe,
        "options": json.loads(json.dumps(dict(options))),
        "n": n,
        "seed": int(seed),
        "shard_size": int(shard_size),
        "split_fractions": list(fractions),
    }


def _architecture_names(names: Sequence[str] | None, first_of: list[int], n: int, recipe: str) -> list[str]:
    """Unique names of the architectures first seen at records ``first_of``; ``names`` gives one
    per record or one per architecture."""
    count = len(first_of)
    if names is None:
        chosen = [recipe] if count == 1 else [f"{recipe}-{k}" for k in range(count)]
    elif len(names) == n:
        chosen = [str(names[i]) for i in first_of]
    elif len(names) == count:
        chosen = [str(name) for name in names]
    else:
        raise SneError(f"{len(names)} architecture names for {n} networks of {count} architectures; "
                       f"give one per network or one per architecture")
    unique: list[str] = []
    for name in chosen:
        candidate, suffix = name, 2
        while candidate in unique:  # one name for several shapes (say, widths): number them
            candidate, suffix = f"{name}-{suffix}", suffix + 1
        unique.append(candidate)
    return unique


def write_records_zoo(
    out: str | Path,
    *,
    recipe: str,
    options: Mapping[str, Any],
    records: Sequence[NetworkRecord],
    rows: Sequence[Mapping[str, Any]],
    targets: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    seed: int = 0,
    command: str = "",
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    shard_size: int = 1000,
    splits: Sequence[str] | None = None,
    architecture_names: Sequence[str] | None = None,
    activation_from: Mapping[str, str] | None = None,
) -> "Zoo":
    """Write networks of any architectures (``records``, with one metadata row each, in id order) as
    a complete zoo into the new directory ``out``.

    Records of equal :func:`record_structure` form one architecture (floating-point tensors are
    stored as float32). ``splits`` (one of train/val/test per network) replaces the split seeded by
    ``(seed, n)``; rows flagged ``diverged: True`` are excluded either way. ``architecture_names``
    names the architectures: one per network (an architecture takes its first network's) or one per
    architecture in order of first appearance. ``activation_from`` maps layer names to class
    targets whose per-network value is that layer's activation (say, relu or tanh sampled per
    network): such activations are data, not architecture, so those networks still stack; each
    record's activation must be its row's class or ``None``. Nothing is left at ``out`` on error
    (the zoo is written into a staging directory renamed into place when complete; see
    :func:`write_listed_zoo` for networks loaded shard by shard into a resumable zoo).
    """
    if len(records) < 1:
        raise SneError(f"no networks to write to {out}")
    if len(records) != len(rows):
        raise SneError(f"{out}: {len(records)} networks but {len(rows)} rows of metadata")
    return write_listed_zoo(
        out, recipe=recipe, options=options, rows=rows, load=lambda ids: [records[i] for i in ids], targets=targets,
        dataset=dataset, seed=seed, command=command, split_fractions=split_fractions, shard_size=shard_size,
        splits=splits, architecture_names=architecture_names, activation_from=activation_from, resumable=False,
    )


def write_listed_zoo(
    out: str | Path,
    *,
    recipe: str,
    options: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    load: Callable[[np.ndarray], Sequence[NetworkRecord]],
    targets: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    seed: int = 0,
    command: str = "",
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    shard_size: int = 1000,
    splits: Sequence[str] | None = None,
    architecture_names: Sequence[str] | None = None,
    activation_from: Mapping[str, str] | None = None,
    files: Sequence[str | Path] = (),
    source: str | None = None,
    resumable: bool = True,
) -> "Zoo":
    """Write the networks listed by ``rows`` (one per network, in id order) as a zoo at ``out``,
    loading their records one shard at a time: ``load(ids)`` gives the records of networks ``ids``
    (indices into ``rows``) and may set ``diverged: True`` in their rows (a fault only the weights
    show). The other arguments are those of :func:`write_records_zoo`.

    ``resumable`` (an import): the manifest and then shard after shard are written into ``out``
    itself, so a run killed at any moment and run again with the same arguments writes only the
    missing shards (``load`` is not called for the others) and ends with the zoo an uninterrupted
    run makes. Its identity adds :data:`LISTING`, a digest of the rows, targets, splits, names and
    the stats of ``files`` (the source files), so a re-run on changed sources, or with other
    arguments, is refused in one line instead of mixing two imports. A :class:`SneError` from the
    source (``load``, a record that does not fit) removes what was written; one while writing (a full
    disk) keeps the finished shards for a re-run. ``source`` names the files in messages: given, a
    zoo in which every network diverged is refused. Not ``resumable``: written as by
    :func:`write_records_zoo`.
    """
    n = len(rows)
    if n < 1:
        raise SneError(f"no networks to write to {out}")
    root = Path(out)
    _check_rows(rows, n, root)
    fractions = _check_fractions(split_fractions)
    requested = _requested(recipe, options, n, seed, shard_size, fractions)
    writer = _ListedShards(root, requested, rows, load, targets, dataset, command, splits, architecture_names,
                           activation_from, source)
    if not resumable:
        return _staged(root, requested, writer.write_all)
    requested[LISTING] = _listing_digest(files, rows, targets, dataset, splits, architecture_names, activation_from)
    return writer.resume()


def _listing_digest(files: Sequence[str | Path], *described: Any) -> str:
    """A digest of the source of an import: the path, size and modification time of each of
    ``files``, and the ``described`` listing parsed from them (rows, targets, splits, ...).

    Stats, not contents: hashing the checkpoints would read every file on every re-run, which is
    what resuming avoids; a file rewritten in place changes its modification time (the assumption
    make and rsync rely on too), and the parsed listing catches any change of the tables read anyway."""
    stats = []
    for path in files:
        path = Path(path)
        try:
            info = path.stat()
        except OSError as error:
            raise SneError(f"{path}: cannot read it ({error.strerror or one_line(error)})") from None
        stats.append([str(path.resolve()), info.st_size, info.st_mtime_ns])
    text = json.dumps([stats, *described], sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


class _ListedShards:
    """The shards of a zoo of listed networks: each shard's records loaded on demand and numbered
    into architectures in order of first appearance, which the manifest lists before any shard that
    uses them is written, so a resumed run numbers them as an uninterrupted one does. Architecture
    names are given when the zoo is complete (``recipe`` alone for a zoo of one architecture)."""

    def __init__(self, root: Path, requested: dict[str, Any], rows: Sequence[Mapping[str, Any]],
                 load: Callable[[np.ndarray], Sequence[NetworkRecord]], targets: dict[str, dict[str, Any]],
                 dataset: dict[str, Any], command: str, splits: Sequence[str] | None,
                 architecture_names: Sequence[str] | None, activation_from: Mapping[str, str] | None,
                 source: str | None) -> None:
        self.root, self.requested, self.rows, self.load = root, requested, rows, load
        self.targets, self.dataset, self.command, self.source = targets, dataset, command, source
        self.given, self.names = splits, architecture_names
        self.sources = dict(activation_from or {})
        for name, target in self.sources.items():
            if not isinstance((targets.get(target) or {}).get("classes"), list):
                raise SneError(f"{root}: layer {name!r} takes its activation from {target!r}, "
                               f"not a class target with class names")
        n = requested["n"]
        self.seeded = split_assignment(n, requested["seed"], requested["split_fractions"])
        _split_names(rows, self.seeded, splits, root)  # checks the given splits before anything is written
        self.shard_count = math.ceil(n / requested["shard_size"])
        self.architectures: list[dict[str, Any]] = []
        self.index_of: dict[str, int] = {}
        self.discard: Callable[[], None] | None = None  # set by resume()

    def adopt(self, architectures: Sequence[Mapping[str, Any]]) -> None:
        """Continue the numbering of an unfinished zoo's ``architectures``."""
        self.architectures = [dict(entry) for entry in architectures]
        self.index_of = {json.dumps(entry["structure"], sort_keys=True): k for k, entry in enumerate(architectures)}

    def manifest(self) -> dict[str, Any]:
        return _new_manifest(self.requested, [dict(entry) for entry in self.architectures], self.targets,
                             self.dataset, self.command, split_method="seeded" if self.given is None else "given")

    def _architecture(self, record: NetworkRecord, row: Mapping[str, Any]) -> int:
        structure = record_structure(record)
        for layer in structure["layers"]:
            if layer["name"] in self.sources:
                target = self.sources[layer["name"]]
                code = row.get(target)
                classes = self.targets[target]["classes"]
                valid = (isinstance(code, (int, float, np.integer, np.floating)) and not isinstance(code, bool)
                         and float(code).is_integer() and 0 <= code < len(classes))
                if not valid:
                    raise SneError(f"{record.source}: its row has no class code of {target!r} for its activation")
                if layer["activation"] not in (None, classes[int(code)]):
                    raise SneError(f"{record.source}: layer {layer['name']!r} has activation {layer['activation']!r} "
                                   f"but its row's {target!r} says {classes[int(code)]!r}")
                layer["activation"] = None
        key = json.dumps(structure, sort_keys=True)
        if key not in self.index_of:
            used = {layer["name"]: self.sources[layer["name"]] for layer in structure["layers"]
                    if layer["name"] in self.sources}
            # A placeholder name, unique until describe() names the architectures.
            self.index_of[key] = len(self.architectures)
            self.architectures.append({"name": f"{self.requested['recipe']}-{len(self.architectures)}",
                                       "structure": structure, **({"activation_from": used} if used else {})})
        return self.index_of[key]

    def prepare(self, index: int) -> tuple:
        """The arguments of :func:`_write_shard` for shard ``index`` after its architectures: its
        records loaded, numbered and stacked."""
        ids = _shard_ids(index, self.requested["n"], self.requested["shard_size"])
        records = [record.to(torch.float32) for record in self.load(ids)]
        if len(records) != len(ids):
            raise ValueError(f"shard {index}: {len(records)} records loaded for {len(ids)} networks")
        architecture = np.array([self._architecture(record, self.rows[i]) for i, record in zip(ids, records)],
                                dtype=np.int64)
        groups: dict[int, dict[str, torch.Tensor]] = {}
        for k in np.unique(architecture).tolist():
            members = [record.to_state_dict() for record, a in zip(records, architecture) if a == k]
            groups[k] = {key: torch.stack([m[key] for m in members]) for key in members[0]}
        rows = [{"id": int(i), **self.rows[i]} for i in ids]
        splits = _split_names(rows, self.seeded[ids], None if self.given is None else [self.given[i] for i in ids],
                              self.root)
        return rows, groups, architecture, splits

    def describe(self, rows: pd.DataFrame) -> dict[str, Any]:
        """The finished manifest's architectures, named (see :func:`write_records_zoo`)."""
        unused = sorted(set(self.sources) - {name for entry in self.architectures
                                             for name in entry.get("activation_from", {})})
        if unused:
            raise SneError(f"{self.root}: activation_from names layer {unused[0]!r}, which no network has")
        if self.source is not None and (rows["split"] == EXCLUDED).all():
            raise SneError(f"{self.source}: all {len(rows)} networks have non-finite weights or metrics; nothing to import")
        architecture = rows["architecture"].to_numpy()
        ids = rows["id"].to_numpy()
        first_of = [int(ids[architecture == k].min()) for k in range(len(self.architectures))]
        names = _architecture_names(self.names, first_of, len(rows), self.requested["recipe"])
        return {"architectures": [{**entry, "name": name} for entry, name in zip(self.architectures, names)]}

    def _source(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)``, a step that reads the source: its :class:`SneError` (bad input) also removes
        what this import wrote, since no re-run can finish it."""
        try:
            return call(*args)
        except SneError:
            if self.discard is not None:
                self.discard()
            raise

    def _fill(self, root: Path, manifest: dict[str, Any], pending: dict[int, tuple]) -> None:
        """Write the shards missing at ``root`` (``pending``: those already prepared), then consolidate."""
        for index in range(self.shard_count):
            ids = _shard_ids(index, self.requested["n"], self.requested["shard_size"])
            if index not in pending and _shard_is_complete(root, index, ids, manifest["architectures"]):
                continue
            for path in _shard_paths(root, index):
                path.unlink(missing_ok=True)
            prepared = pending.pop(index) if index in pending else self._source(self.prepare, index)
            if len(self.architectures) > len(manifest["architectures"]):
                # New architectures are listed before the first shard that stores them.
                manifest = {**manifest, "architectures": [dict(entry) for entry in self.architectures]}
                write_json_atomic(root / MANIFEST, manifest)
            _write_shard(root, index, *prepared, manifest["architectures"])
        _consolidate(root, manifest, range(self.shard_count), lambda rows: self._source(self.describe, rows))

    def write_all(self, root: Path) -> None:
        """Write the whole zoo into the new directory ``root`` (a staging directory)."""
        pending = {0: self.prepare(0)}  # the manifest needs the first shard's architectures
        manifest = self.manifest()
        write_json_atomic(root / MANIFEST, manifest)
        (root / SHARDS).mkdir()
        self._fill(root, manifest, pending)

    def resume(self) -> "Zoo":
        """Write (or finish writing) the zoo in place at ``root`` (see :func:`write_listed_zoo`)."""
        root = self.root
        if root.parent.is_dir():
            # Staging directories of imports killed before imports were resumable.
            for stale in root.parent.glob(f".{glob.escape(root.name)}.*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        # A directory the user made (empty, no manifest yet) stays; one an import made goes with it.
        theirs = root.is_dir() and not (root / MANIFEST).exists()
        self.discard = lambda: _discard_unfinished(root, keep=theirs)
        pending: dict[int, tuple] = {}

        def first_manifest() -> dict[str, Any]:
            pending[0] = self._source(self.prepare, 0)
            return self.manifest()

        manifest = _start_or_resume(
            root, self.requested, first_manifest, different="already exists and is not an empty directory: it holds "
            "a different zoo", hint="choose a new --out directory, or run the command that made it again to finish it")
        if not manifest["complete"]:
            self.adopt(manifest["architectures"])
            self._fill(root, manifest, pending)
        return Zoo.open(root)


def _discard_unfinished(root: Path, keep: bool) -> None:
    """Remove an unfinished import's files from ``root``, and then ``root`` itself unless ``keep``."""
    shutil.rmtree(root / SHARDS, ignore_errors=True)
    for name in (MANIFEST, METADATA):
        (root / name).unlink(missing_ok=True)
    if root.is_dir():
        remove_stale_temporaries(root)
        if not keep and not any(root.iterdir()):
            root.rmdir()


# ------------------------------------------------------------------------------ reading
class Zoo:
    """A complete zoo on disk: its manifest, per-network metadata, and weight records on demand."""

    def __init__(self, path: Path, manifest: dict[str, Any], metadata: pd.DataFrame) -> None:
        self.path = path
        self.manifest = manifest
        self.metadata = metadata
        self._shards: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        if manifest["format_version"] == 1:
            self._architectures = _chain_architectures(manifest["recipe"], manifest["architecture"])
            self._prefixes = [""]
            self._arch = np.zeros(len(metadata), dtype=np.int64)
            self._position = metadata["id"].to_numpy(dtype=np.int64) % manifest["shard_size"]
        else:
            self._architectures = manifest["architectures"]
            self._prefixes = [f"a{k}/" for k in range(len(self._architectures))]
            self._arch = metadata["architecture"].to_numpy(dtype=np.int64)
            self._position = metadata["position"].to_numpy(dtype=np.int64)
        # Per architecture: (index of a layer, class target naming its activation) for each such layer.
        self._activation_from = [
            [(i, entry["activation_from"][layer["name"]]) for i, layer in enumerate(entry["structure"]["layers"])
             if layer["name"] in entry.get("activation_from", {})]
            for entry in self._architectures
        ]

    @classmethod
    def open(cls, path: str | Path) -> "Zoo":
        """Open the complete zoo at ``path``; :class:`SneError` if it is missing, corrupt, unfinished,
        or one part of a zoo generated in parts."""
        root = Path(path)
        if not root.is_dir():
            raise SneError(f"no zoo at {root}: the directory does not exist")
        manifest = _read_manifest(root)
        part = manifest.get("part")
        if part is not None:
            raise SneError(
                f"{root} is part {part['index'] + 1} of {part['count']} of a zoo generated with --shard; "
                f"join all {part['count']} parts with 'sne zoo merge PART... --out ZOO' and use that zoo"
            )
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
        layout = [] if manifest["format_version"] == 1 else list(LAYOUT_COLUMNS)
        columns = ["id", "split", *layout, *manifest["targets"]]
        absent = [c for c in columns if c not in metadata.columns]
        if absent:
            raise SneError(f"{root / METADATA} is corrupt: no column '{absent[0]}'")
        kinds = {c: metadata[c].dtype.kind for c in columns}
        if any(kinds[c] not in "iu" for c in ["id", *layout]) or any(kinds[t] not in "iuf" for t in manifest["targets"]):
            raise SneError(f"{root / METADATA} is corrupt: ids, architectures, positions and targets must be numbers")
        if not metadata["split"].isin([*SPLITS, EXCLUDED]).all():
            raise SneError(f"{root / METADATA} is corrupt: a split other than {', '.join((*SPLITS, EXCLUDED))}")
        if layout and len(metadata) and not (
            metadata["architecture"].between(0, len(manifest["architectures"]) - 1).all()
            and (metadata["position"] >= 0).all()
        ):
            raise SneError(f"{root / METADATA} is corrupt: an architecture index or position out of range")
        metadata = metadata.sort_values("id", ignore_index=True)
        # Lengths first: a corrupt n must not allocate a range of its own size.
        if len(metadata) != manifest["n"] or not np.array_equal(metadata["id"].to_numpy(), np.arange(len(metadata))):
            raise SneError(f"{root / METADATA} does not list ids 0..{manifest['n'] - 1} exactly once")
        if layout:
            # A network's position is its rank among its shard's networks of its architecture: a
            # disagreement would silently read another network's weights.
            shard = metadata["id"] // manifest["shard_size"]
            if not (metadata.groupby([shard, metadata["architecture"]]).cumcount() == metadata["position"]).all():
                raise SneError(f"{root / METADATA} is corrupt: architectures and positions do not fit the shards")
        return cls(root, manifest, metadata)

    def __len__(self) -> int:
        return int(self.manifest["n"])

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, recipe={self.manifest['recipe']!r}, n={len(self)})"

    @property
    def architectures(self) -> list[dict[str, Any]]:
        """``{"name", "structure"[, "layers"]}`` of every architecture, indexed as :meth:`architecture_of`
        gives (a format-1 zoo has one, named after its recipe)."""
        return self._architectures

    def architecture_of(self, ids: Iterable[int]) -> np.ndarray:
        """Index into :attr:`architectures` of each of networks ``ids``."""
        return self._arch[self._ids(ids)]

    @property
    def architecture(self) -> list[dict[str, Any]]:
        """The chain layer list (name, kind, level, weight_shape, has_bias, activation, ...) of a zoo of
        one chain architecture; :class:`SneError` for a zoo of several or of another kind of network."""
        if len(self._architectures) == 1:
            entry = self._architectures[0]
            chain = entry.get("layers") or _chain_of_structure(entry["structure"])
            if chain is not None:
                return chain
        raise SneError(f"the zoo at {self.path} holds {self.describe_architectures()}, not one chain of "
                       f"linear and convolution layers")

    def describe_architectures(self) -> str:
        """'N architectures (name, name, ...)' or 'architecture name', for messages."""
        names = [entry["name"] for entry in self._architectures]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f"architecture {names[0]}" if len(names) == 1 else f"{len(names)} architectures ({shown})"

    @property
    def targets(self) -> dict[str, dict[str, Any]]:
        return self.manifest["targets"]

    @property
    def command(self) -> str | None:
        """The command(s) that made the zoo: for one joined from ``--shard`` parts, the parts' generate
        commands, then the merge."""
        return " && ".join(c for c in [*self.manifest.get("part_commands", []), self.manifest.get("command")] if c) or None

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
        """Values of target ``name`` for ``ids``, in that order, as float64. A target that some
        networks lack (a merge of zoos of which only some have it) is a :class:`SneError` when any
        of ``ids`` lacks it."""
        if name not in self.targets:
            raise SneError(f"unknown target '{name}' in the zoo at {self.path} "
                           f"(it has: {', '.join(sorted(self.targets))})")
        values = self.metadata[name].to_numpy(dtype=np.float64)[self._ids(ids)]
        if self.targets[name].get("missing") and np.isnan(values).any():
            raise SneError(f"target '{name}' is missing for {int(np.isnan(values).sum())} of the {len(values)} "
                           f"networks asked for in the zoo at {self.path} (some of the zoos merged into it lack it)")
        return values

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

    def state_dict(self, network_id: int) -> dict[str, torch.Tensor]:
        """Network ``network_id``'s tensors as stored, under their state_dict keys (copies; also for an
        excluded network, whose values may be non-finite)."""
        network_id = int(self._ids([network_id])[0])
        index = network_id // self.manifest["shard_size"]
        tensors = self._shard(index)
        k, position = int(self._arch[network_id]), int(self._position[network_id])
        state = {}
        for key, _, _ in _stored_keys(self._architectures[k]["structure"]):
            stored = self._prefixes[k] + key
            if stored not in tensors or position >= len(tensors[stored]):
                what = f"no tensor {stored!r}" if stored not in tensors else f"no row {position} in {stored!r}"
                raise SneError(f"{_shard_paths(self.path, index)[0]} does not match the manifest: {what}")
            # Copies, so a record does not pin its whole shard in memory after the cache drops it.
            state[key] = tensors[stored][position].clone()
        return state

    def records(self, ids: Iterable[int]) -> list[NetworkRecord]:
        """Weight records of networks ``ids``, in that order, as their architecture's structure
        describes them (symmetries included); per-network activations from their class column."""
        records = []
        for network_id in self._ids(ids).tolist():
            source = f"{self.path}#{network_id}"
            if self.metadata.at[network_id, "split"] == EXCLUDED:
                raise SneError(f"{source} diverged during training: it has no valid weights and is in no split")
            k = int(self._arch[network_id])
            record = record_from_structure(self._architectures[k]["structure"], self.state_dict(network_id), source,
                                           meta={"id": network_id})
            if self._activation_from[k]:
                layers = list(record.layers)
                for i, column in self._activation_from[k]:
                    layers[i] = replace(layers[i], activation=self._class_name(column, network_id))
                record = record.with_layers(layers)
            records.append(record)
        return records
