"""Import CNN Wild Park (Kofinas et al. 2024, "Graph Neural Networks for Learning Equivariant
Representations of Neural Networks"; Zenodo doi:10.5281/zenodo.12797219, see
github.com/mkofinas/neural-graphs ``experiments/cnn_generalization``).

The archive is a Ray Tune experiment, one folder per CNN and one per saved epoch::

    DIR/<run>/checkpoint_<n>/checkpoint.pt   torch.save({"model": state_dict, "optimizer": ...,
                                             "config": <the CNN's OmegaConf config>, "iteration": epoch,
                                             "last_result": {"test/acc": ..., "test/loss": ..., ...}})

The config (n_layers, n_classes, channels, kernel_size, stride, padding, residual, activation) is a
pickled OmegaConf ``DictConfig`` that refers to the authors' own config class. It is read with
``weights_only=True`` plus exactly OmegaConf's container and node types, the plain types they
annotate with, ``pathlib`` paths, and an inert local stand-in under the authors' class name (no
code of theirs is imported or run); anything else in a file is refused in one line. This needs the
optional extra ``pip install 'sne[wildpark]'`` (omegaconf).

Each CNN is rebuilt from its config (convolutions with padding, a residual addition on the channels
two layers share, its activation per layer, global average pooling, a linear classifier) and traced
into a record, so its data flow and symmetries are exact; a config this builder cannot follow is
refused in one line. Targets: ``test_accuracy`` (``last_result['test/acc']``) and ``epoch``;
splits are seeded per run (every checkpoint of a run in one split), or taken from the Neural
Graphs splits JSON (``{"train"|"val"|"test": {"path": [...], ...}}``) given as ``splits``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sne.errors import SneError, one_line
from sne.weights.arch import Arch
from sne.weights.io import load_pytorch_object
from sne.zoo.format import DIVERGED, SPLITS, Zoo
from sne.zoo.importing import (
    ImportedZoo, infer_targets, is_finite_state, locate, plain_value, seeded_group_splits, write_imported,
    zeroed_non_finite,
)

RECIPE = "wildpark-import"
CONFIG_CLASS = "experiments.cnn_generalization.dataset.cnn_sampler.CNNConfig"
CONFIG_FIELDS = ("channels", "kernel_size", "stride", "padding", "residual", "activation", "n_classes")
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                "leaky_relu": F.leaky_relu, "none": lambda x: x}


class _ConfigStandIn:
    """Stands in for the authors' config class when a checkpoint's config is unpickled: the pickle
    may name it and fill its fields, and nothing of theirs runs."""


def _allowed_globals() -> list[Any]:
    try:
        from omegaconf import base, dictconfig, listconfig, nodes  # noqa: PLC0415 - optional extra
    except ImportError:
        raise SneError("reading CNN Wild Park checkpoints needs the optional extra: pip install 'sne[wildpark]'") from None
    import collections  # noqa: PLC0415
    import pathlib  # noqa: PLC0415
    import typing  # noqa: PLC0415

    omegaconf_types = [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata,
                       nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
                       nodes.PathNode, nodes.BytesNode]
    # The types OmegaConf annotates its nodes with, and the paths Ray Tune's config holds.
    plain = [int, float, str, bool, bytes, dict, list, tuple, collections.defaultdict, typing.Any, typing.List,
             typing.Dict, typing.Tuple, typing.Optional, typing.Union, pathlib.PosixPath, pathlib.PurePosixPath]
    return [*omegaconf_types, *plain, (_ConfigStandIn, CONFIG_CLASS)]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Wild Park checkpoint.pt as a dict, unpickled with only the types :func:`_allowed_globals` lists."""
    try:
        obj = load_pytorch_object(path, _allowed_globals())
    except SneError as error:
        refused = re.search(r"refused to unpickle (\S+?);", str(error))
        if refused:
            raise SneError(f"{path}: refused to unpickle {refused.group(1)} (a CNN Wild Park checkpoint holds "
                           f"tensors, plain values and OmegaConf configs only)") from None
        raise
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise SneError(f"{path}: not a CNN Wild Park checkpoint (no 'model' state_dict entry)")
    return obj


def cnn_config(raw: Any, path: Path) -> dict[str, Any]:
    """The CNN's config as plain values; :class:`SneError` naming ``path`` if a field is missing."""
    try:
        from omegaconf import OmegaConf  # noqa: PLC0415 - optional extra

        config = OmegaConf.to_container(raw, resolve=False) if OmegaConf.is_config(raw) else raw
    except Exception as error:  # noqa: BLE001 - a damaged config: one line
        raise SneError(f"{path}: unreadable config ({one_line(error)})") from None
    if not isinstance(config, dict) or any(k not in config for k in CONFIG_FIELDS):
        absent = [k for k in CONFIG_FIELDS if not isinstance(config, dict) or k not in config]
        raise SneError(f"{path}: the config lacks {', '.join(absent)}")
    return config


class WildParkCnn(nn.Module):
    """The Wild Park CNN of a config: conv layers with padding, a residual from an earlier layer's
    activated output added to the channels both have, an activation per layer, global average
    pooling and a linear classifier."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.channels = [int(c) for c in config["channels"]]
        layers = len(self.channels) - 1
        fields = {k: list(config[k]) for k in ("kernel_size", "stride", "padding", "residual", "activation")}
        if layers < 1 or any(len(v) != layers for v in fields.values()):
            raise ValueError(f"{layers} layers but per-layer fields of lengths {[len(v) for v in fields.values()]}")
        self.residual = [int(r) for r in fields["residual"]]
        if any(r >= i - 1 and r >= 0 for i, r in enumerate(self.residual)):
            raise ValueError(f"residual {self.residual} names a layer that is not at least two layers earlier")
        unknown = [a for a in fields["activation"] if a not in _ACTIVATIONS]
        if unknown:
            raise ValueError(f"unknown activation {unknown[0]!r} (known: {', '.join(_ACTIVATIONS)})")
        self.activations = list(fields["activation"])
        self.layers = nn.ModuleList(
            nn.Conv2d(self.channels[i], self.channels[i + 1], int(fields["kernel_size"][i]),
                      stride=int(fields["stride"][i]), padding=int(fields["padding"][i]))
            for i in range(layers)
        )
        self.fc = nn.Linear(self.channels[-1], int(config["n_classes"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            source = self.residual[i]
            if source >= 0:
                shared = min(self.channels[source + 1], self.channels[i + 1])
                x = torch.cat([x[:, :shared] + kept[source][:, :shared], x[:, shared:]], dim=1)
            x = _ACTIVATIONS[self.activations[i]](x)
            if i in self.residual:
                kept[i] = x
        return self.fc(x.mean((2, 3)))


def _architecture(config: dict[str, Any], cache: dict[str, Arch | SneError], path: Path) -> Arch:
    key = json.dumps({k: config[k] for k in CONFIG_FIELDS}, sort_keys=True)
    if key not in cache:
        try:
            module = WildParkCnn(config)
            cache[key] = Arch(module.eval(), torch.zeros(1, module.channels[0], 32, 32), name=f"wild-park CNN {key}")
        except SneError as error:
            cache[key] = SneError(f"{path}: cannot build its CNN ({one_line(error)})")
        except Exception as error:  # noqa: BLE001 - a config the builder cannot follow: one line
            cache[key] = SneError(f"{path}: cannot build its CNN from the config ({one_line(error)})")
    built = cache[key]
    if isinstance(built, SneError):
        raise built
    return built


def parse_wildpark(directory: str | Path, *, epoch: int | str = "all", splits: str | None = None,
                   seed: int = 0) -> ImportedZoo:
    """The checkpoints of CNN Wild Park in ``directory`` at ``epoch`` (a number, ``"last"`` per run, or
    ``"all"``); see the module docstring."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SneError(f"{directory} is not a directory")
    if not (epoch in ("last", "all") or (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0)):
        raise SneError(f"--epoch {epoch!r}: expected an epoch number, 'last' or 'all'")
    found = sorted(directory.rglob("checkpoint.pt"))
    found = [p for p in found if re.fullmatch(r"checkpoint_\d+", p.parent.name)]
    if not found:
        raise SneError(f"{directory}: no <run>/checkpoint_<n>/checkpoint.pt files")
    by_run: dict[Path, list[Path]] = {}
    for path in found:
        by_run.setdefault(path.parent.parent, []).append(path)
    chosen = []
    for run, paths in by_run.items():
        paths = sorted(paths, key=lambda p: int(p.parent.name.split("_")[1]))
        if isinstance(epoch, int):
            paths = [p for p in paths if int(p.parent.name.split("_")[1]) == epoch]
            if not paths:
                raise SneError(f"{run}: no checkpoint_{epoch}/checkpoint.pt")
        elif epoch == "last":
            paths = paths[-1:]
        chosen += paths
    fixed = _splits_from_json(Path(splits), directory) if splits else None
    if fixed is not None:
        missing = [p for p in chosen if p.resolve() not in fixed]
        if missing:
            raise SneError(f"{missing[0]}: not listed in {splits}")

    cache: dict[str, Arch | SneError] = {}
    records, rows, groups = [], [], []
    for path in chosen:
        checkpoint = read_checkpoint(path)
        config = cnn_config(checkpoint.get("config"), path)
        state = {k: v for k, v in checkpoint["model"].items() if isinstance(v, torch.Tensor)}
        finite = is_finite_state(state)
        record = _architecture(config, cache, path).record(state if finite else zeroed_non_finite(state), str(path))
        result = checkpoint.get("last_result") if isinstance(checkpoint.get("last_result"), dict) else {}
        accuracy = result.get("test/acc")
        accuracy = float(accuracy) if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) else math.nan
        if not math.isfinite(accuracy) and finite:
            raise SneError(f"{path}: no finite last_result['test/acc']")
        iteration = checkpoint.get("iteration")
        step = int(iteration) if isinstance(iteration, int) else int(path.parent.name.split("_")[1])
        rows.append({"run": path.parent.parent.name, "file": str(path.relative_to(directory)),
                     "test_accuracy": accuracy if finite else 0.0, "epoch": step, DIVERGED: not finite,
                     **{f"config.{k}": plain_value(config[k]) for k in CONFIG_FIELDS}})
        records.append(record)
        groups.append(str(path.parent.parent))
    frame = pd.DataFrame(rows)
    targets, frame = infer_targets(frame, ["test_accuracy", "epoch"], str(directory),
                                   kinds={"test_accuracy": "unit_interval", "epoch": "regression"})
    split_names = [fixed[p.resolve()] for p in chosen] if fixed is not None else seeded_group_splits(groups, seed)
    dataset = {"source": "CNN Wild Park (Kofinas et al. 2024)", "directory": str(directory.resolve()),
               "epoch": epoch, "runs": len(by_run), "splits": splits or "seeded per run"}
    options = {"source": str(directory.resolve()), "epoch": epoch, "splits": splits}
    # Targets and configs live inside the checkpoints, so all are read here (and on a resume).
    return ImportedZoo(RECIPE, options, records, frame.to_dict("records"), targets, dataset, splits=split_names,
                       files=list(chosen))


def _splits_from_json(path: Path, directory: Path) -> dict[Path, str]:
    """Neural Graphs' cnn_park_splits.json: each listed checkpoint's split."""
    try:
        table = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SneError(f"{path}: not a readable JSON splits file ({one_line(error)})") from None
    splits: dict[Path, str] = {}
    for split in SPLITS:
        entry = table.get(split) if isinstance(table, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), list):
            raise SneError(f"{path}: '{split}' must hold a 'path' list")
        for listed in entry["path"]:
            splits[locate(listed, directory, str(path)).resolve()] = split
    return splits


def import_wildpark(directory: str | Path, out: str | Path, *, epoch: int | str = "all", splits: str | None = None,
                    seed: int = 0, command: str = "") -> Zoo:
    """Import CNN Wild Park (see :func:`parse_wildpark`) as a zoo at ``out``."""
    return write_imported(parse_wildpark(directory, epoch=epoch, splits=splits, seed=seed), out, seed=seed,
                          command=command)


