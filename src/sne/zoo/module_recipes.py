"""Recipes whose networks are ``nn.Module`` s of several architectures, trained many at once with vmap.

A *module recipe* (``wild-park``, ``resnet``, ``vit``) samples per network an architecture (a
JSON dict that :meth:`ModuleRecipe.build` turns into a module) and training hyper-parameters, and
records each network at one or more epochs (*checkpoints*). Row ``network * C + c`` of the zoo is
checkpoint ``c`` of ``network`` (``C`` checkpoints per network), so ``--n`` counts networks and
the zoo holds ``n * C`` rows; a shard holds whole networks, and the train/val/test split is drawn
per network (seeded by (seed, n)), so no network's checkpoints straddle two splits.

Architectures are drawn per *block* of ``arch_block`` consecutive network ids (from (seed, block)),
so that networks sharing an architecture can train together; everything else (optimizer, learning
rate, weight decay, data subset, batches, dropout masks, initial weights) is drawn from (seed, id).
The manifest lists every architecture of the zoo (in order of first appearance) with the record
structure :func:`sne.weights.record_from_module` traces, symmetries included.

Training. The networks of a shard are grouped by architecture; a group's parameters and buffers
are stacked and one ``torch.func.functional_call`` of the architecture's module runs under
``torch.vmap`` over them (batch norm updates its stacked running statistics in place, network by
network). The loss is the sum over networks of each one's mean cross-entropy, so each gradient is
its network's own; :class:`sne.zoo.cnn_nets.StackedOptimizer` applies per-network optimizers,
learning rates and weight decays. Each network draws batches and dropout masks from its own
:class:`sne.zoo.cnn.TrainingStream` (an epoch is ``ceil(train set / batch_size)`` steps for every
network). Networks are sorted by their last checkpoint, longest first, and stop being computed once
done. A network whose loss or weights become non-finite is *diverged* from then on: its later
checkpoints are NaN and kept out of every split.

:func:`sne.zoo.format.generate_zoo` writes these recipes as *grouped* ones (:attr:`ModuleRecipe.always_grouped`):
several architectures, several rows (checkpoints) per network, splits drawn per network.
"""

from __future__ import annotations

import functools
import json
import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn import functional as F

from sne.errors import SneError
from sne.zoo.cnn import (
    TRAIN_FRACTION_RANGE, TrainingStream, _device, _log_uniform, _positive_int, step_networks,
    training_description,
)
from sne.zoo.cnn_nets import OPTIMIZERS, StackedOptimizer
from sne.zoo.recipes import FitProgress, Recipe, check_options, derive_seed

#: Options of every module recipe, with defaults (recipes add their own).
COMMON_OPTIONS: dict[str, Any] = {
    "dataset": "digits",
    "image_size": 28,
    "batch_size": 32,
    "arch_block": 8,
    "group_size": None,
    "device": "cpu",
}


@dataclass(frozen=True)
class ModuleShard:
    """The rows of one shard (ids ascending) and their tensors: ``groups[k]`` maps each state_dict
    key of architecture ``k`` to the stacked tensors of the shard's rows of that architecture, in
    row order; ``architecture`` gives each row's architecture index."""

    rows: list[dict[str, Any]]
    groups: dict[int, dict[str, torch.Tensor]]
    architecture: np.ndarray


class ModuleRecipe(Recipe):
    """Shared code of the module recipes; subclasses sample and build architectures."""

    #: sne.zoo.format.generate_zoo writes these zoos grouped (architectures per network) even with one row each.
    always_grouped: ClassVar[bool] = True

    #: The recipe's own options and defaults (beside :data:`COMMON_OPTIONS`).
    options: ClassVar[dict[str, Any]] = {}
    #: Learning rates (log-uniform) per optimizer, and the weight decay range (log-uniform).
    lr_ranges: ClassVar[dict[str, tuple[float, float]]] = {}
    weight_decay_range: ClassVar[tuple[float, float]] = (1e-6, 1e-2)
    #: Class-valued columns (architecture or training choices) and their classes.
    class_columns: ClassVar[dict[str, tuple[str, ...]]] = {"optimizer": OPTIMIZERS}

    # -- what subclasses define --------------------------------------------------------------------

    @abstractmethod
    def resolve_own(self, o: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
        """The recipe's own options, resolved (``o`` has every option with defaults filled in)."""

    @abstractmethod
    def sample_architecture(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        """One architecture: a JSON dict of ints and strings that :meth:`build` takes."""

    @abstractmethod
    def build(self, arch: Mapping[str, Any], options: Mapping[str, Any]) -> nn.Module:
        """A freshly initialised module of ``arch`` (from torch's global generator) taking
        ``(x, masks=None)``: images ``(B, 1, S, S)`` and optional dropout masks."""

    @abstractmethod
    def architecture_name(self, arch: Mapping[str, Any]) -> str:
        """A short readable name of ``arch``, e.g. ``resnet-d2-w8``."""

    def checkpoints(self, hp: Mapping[str, Any], options: Mapping[str, Any]) -> list[int]:
        """The epochs (ascending) at which a network of hyper-parameters ``hp`` is recorded; the
        same number for every network (:meth:`rows_per_network`). By default its last epoch only."""
        return [hp["epochs"]]

    def rows_per_network(self, options: Mapping[str, Any]) -> int:
        """Rows per network: its checkpoints (one by default)."""
        return 1

    @abstractmethod
    def own_targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Regression targets of the recipe's sampled values (class targets come from
        :attr:`class_columns`)."""

    def sample_training(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        """Training hyper-parameters beyond optimizer, learning rate, weight decay and data fraction."""
        return {}

    def dropout_shapes(self, arch: Mapping[str, Any], options: Mapping[str, Any]) -> list[tuple[int, ...]]:
        """Per-image shape of each dropout mask the module's forward takes (none by default)."""
        return []

    def describe_training(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Recipe-specific lines of the manifest's ``dataset.training``."""
        return {}

    # -- options and description ---------------------------------------------------------------

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        from sne.data import dataset_names

        known = {**COMMON_OPTIONS, **self.options}
        check_options(self.name, options, known)
        o = {**known, **options}
        if o["dataset"] not in dataset_names():
            raise SneError(f"{self.name} option 'dataset': unknown dataset {o['dataset']!r} "
                           f"(available: {', '.join(dataset_names())})")
        device = _device(self.name, o["device"])
        if o["group_size"] is None:
            group_size = 256 if torch.device(device).type == "cuda" else 64
        else:
            group_size = _positive_int(self.name, "group_size", o["group_size"])
        common = {
            "dataset": o["dataset"],
            "image_size": _positive_int(self.name, "image_size", o["image_size"]),
            "batch_size": _positive_int(self.name, "batch_size", o["batch_size"]),
            "arch_block": _positive_int(self.name, "arch_block", o["arch_block"]),
            "group_size": group_size,
            "device": device,
        }
        if not 4 <= common["image_size"] <= 64:
            raise SneError(f"{self.name} option 'image_size' must be between 4 and 64, got {common['image_size']}")
        return {**common, **self.resolve_own(o, common)}

    def architecture(self, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        raise SneError(f"recipe '{self.name}' makes networks of several architectures: generate it with "
                       f"sne.zoo.generate_zoo (or 'sne zoo generate'), not sne.zoo.format.generate_zoo")

    def targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        targets: dict[str, dict[str, Any]] = {
            "test_accuracy": {"kind": "unit_interval", "description": "accuracy on the dataset's test part"},
            "train_accuracy": {"kind": "unit_interval", "description": "accuracy on the network's own training subset"},
            "generalization_gap": {"kind": "regression", "description": "train_accuracy - test_accuracy"},
            "epoch": {"kind": "regression", "description": "epochs trained at this checkpoint"},
            "log10_lr": {"kind": "regression", "description": "log10 of the learning rate"},
            "log10_weight_decay": {"kind": "regression", "description": "log10 of the L2 coefficient"},
            "train_fraction": {"kind": "regression", "description": "fraction of the training set used"},
        }
        for name, classes in self.class_columns.items():
            targets[name] = {"kind": "class", "num_classes": len(classes), "classes": list(classes),
                             "description": f"{name}, stored as the index into classes"}
        targets.update(self.own_targets(options))
        return targets

    def dataset(self, options: Mapping[str, Any]) -> dict[str, Any]:
        data = self.data(options)
        n_train = len(data.train_y)
        size = options["image_size"]
        return {
            **data.summary(),
            **({} if size == data.train_x.shape[-1] else {"resized": f"bilinear to {size}x{size} for training"}),
            "training": {
                **training_description(n_train, options["batch_size"], self.lr_ranges, self.weight_decay_range),
                "init": "PyTorch's default initialisation of each module, seeded per network",
                "architecture": f"drawn per block of {options['arch_block']} consecutive network ids",
                **self.describe_training(options),
            },
        }

    def default_shard_size(self, options: Mapping[str, Any]) -> int:
        """Networks per shard."""
        return 2 * options["group_size"]

    def data(self, options: Mapping[str, Any]):
        """The dataset at the recipe's image size."""
        return _resized(options["dataset"], options["image_size"])

    # -- per-network randomness -------------------------------------------------------------------

    def architecture_of(self, seed: int, network_id: int, options: Mapping[str, Any]) -> dict[str, Any]:
        block = network_id // options["arch_block"]
        return self.sample_architecture(
            np.random.default_rng(derive_seed(seed, f"{self.name}/architecture", block)), options)

    def hyperparameters(self, seed: int, network_id: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Architecture and training hyper-parameters of ``network_id``, from (seed, id) alone."""
        rng = np.random.default_rng(derive_seed(seed, f"{self.name}/hyperparameters", network_id))
        optimizer = OPTIMIZERS[rng.integers(len(OPTIMIZERS))]
        return {
            "arch": self.architecture_of(seed, network_id, options),
            "optimizer": optimizer,
            "lr": _log_uniform(rng, *self.lr_ranges[optimizer]),
            "weight_decay": _log_uniform(rng, *self.weight_decay_range),
            "train_fraction": float(rng.uniform(*TRAIN_FRACTION_RANGE)),
            **self.sample_training(rng, options),
        }

    def initial_module(self, seed: int, network_id: int, hp: Mapping[str, Any], options: Mapping[str, Any]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, f"{self.name}/init", network_id))
            return self.build(hp["arch"], options)

    def training_stream(self, seed: int, network_id: int, hp: Mapping[str, Any], n_train: int,
                        options: Mapping[str, Any]) -> TrainingStream:
        return TrainingStream(derive_seed(seed, f"{self.name}/train", network_id), n_train, hp["train_fraction"],
                              options["batch_size"], hp.get("dropout", 0.0))

    # -- the zoo's architectures ------------------------------------------------------------------

    def zoo_manifest(self, seed: int, n: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's ``architectures`` of a zoo of ``n`` networks (``{"name", "structure"}`` in
        order of first appearance) and ``sampled_architectures`` (``{"name", "architecture"}``, the
        sampled dict of each)."""
        keys: list[str] = []
        for block in range(math.ceil(n / options["arch_block"])):
            key = arch_key(self.architecture_of(seed, block * options["arch_block"], options))
            if key not in keys:
                keys.append(key)
        names = [self.architecture_name(json.loads(key)) for key in keys]
        options_json = json.dumps(dict(options), sort_keys=True)
        return {
            "architectures": [{"name": name, "structure": self.structure(key, options_json)}
                              for name, key in zip(names, keys)],
            "sampled_architectures": [{"name": name, "architecture": json.loads(key)} for name, key in zip(names, keys)],
        }

    @functools.lru_cache(maxsize=512)
    def structure(self, key: str, options_json: str) -> dict[str, Any]:
        """The record structure of architecture ``key`` (traced once per process)."""
        from sne.weights import record_from_module
        from sne.weights.record import record_structure

        options = json.loads(options_json)
        module = self.build(json.loads(key), options)
        size = options["image_size"]
        return record_structure(record_from_module(module, torch.zeros(1, 1, size, size), source=self.name))

    # -- training -------------------------------------------------------------------------------------

    def generate_shard(self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress):
        raise SneError(f"recipe '{self.name}' makes networks of several architectures: generate it with "
                       f"sne.zoo.generate_zoo (or 'sne zoo generate')")

    def generate_rows(self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress,
                      manifest: Mapping[str, Any]) -> ModuleShard:
        """Train networks ``ids`` (ascending) of the zoo whose manifest is ``manifest``."""
        arch_keys = [arch_key(entry["architecture"]) for entry in manifest["sampled_architectures"]]
        data = self.data(options)
        device = torch.device(options["device"])
        ids = [int(i) for i in ids]
        hps = {i: self.hyperparameters(seed, i, options) for i in ids}
        keys = {i: arch_key(hps[i]["arch"]) for i in ids}
        stops = {i: self.checkpoints(hps[i], options)[-1] for i in ids}
        # Groups of one architecture, longest training first (finished networks drop off the end).
        order = sorted(ids, key=lambda i: (keys[i], -stops[i], i))
        results: dict[int, list[dict[str, Any]]] = {}
        start = 0
        while start < len(order):
            stop = start
            while stop < len(order) and stop - start < options["group_size"] and keys[order[stop]] == keys[order[start]]:
                stop += 1
            group = order[start:stop]
            results.update(self.train_group(group, [hps[i] for i in group], seed, data, options, device, progress))
            start = stop

        per = self.rows_per_network(options)
        rows, architecture, members = [], [], {}
        for i in ids:
            k = arch_keys.index(keys[i])
            for c, result in enumerate(results[i]):
                rows.append(self._row(i * per + c, i, hps[i], result))
                architecture.append(k)
                members.setdefault(k, []).append(result["state"])
        groups = {k: {key: torch.stack([s[key] for s in states]) for key in states[0]} for k, states in members.items()}
        return ModuleShard(rows, groups, np.asarray(architecture, dtype=np.int64))

    def _row(self, row_id: int, network_id: int, hp: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"id": row_id, "network": network_id, "epoch": result["epoch"]}
        values = {**hp["arch"], **{k: v for k, v in hp.items() if k != "arch"}}
        for name, value in values.items():
            if name in self.class_columns:
                row[name] = self.class_columns[name].index(value)
            else:
                row[name] = value
        row["log10_lr"] = math.log10(hp["lr"])
        row["log10_weight_decay"] = math.log10(hp["weight_decay"])
        for key in ("train_size", "train_accuracy", "train_loss", "test_accuracy", "test_loss", "diverged"):
            row[key] = result[key]
        row["generalization_gap"] = result["train_accuracy"] - result["test_accuracy"]
        return row

    def train_group(self, ids: Sequence[int], hps: Sequence[Mapping[str, Any]], seed: int, data,
                    options: Mapping[str, Any], device: torch.device,
                    progress: FitProgress) -> dict[int, list[dict[str, Any]]]:
        """Train networks ``ids`` of one architecture (sorted by last checkpoint, longest first)
        together; per network, one result (metrics and state_dict) per checkpoint."""
        arch = hps[0]["arch"]
        modules = [self.initial_module(seed, i, hp, options).to(device) for i, hp in zip(ids, hps)]
        base = self.build(arch, options).to("meta")  # only its code runs: functional_call brings the tensors
        params = _stack([dict(m.named_parameters()) for m in modules])
        buffers = _stack([dict(m.named_buffers()) for m in modules])
        state_keys = list(modules[0].state_dict())
        del modules
        train_x, train_y = data.train_x.to(device), data.train_y.to(device)
        test_x, test_y = data.test_x.to(device), data.test_y.to(device)
        n_train, batch = len(train_y), options["batch_size"]
        steps_per_epoch = math.ceil(n_train / batch)
        checkpoints = [self.checkpoints(hp, options) for hp in hps]
        stops = [c[-1] for c in checkpoints]
        streams = [self.training_stream(seed, i, hp, n_train, options) for i, hp in zip(ids, hps)]
        optimizer = StackedOptimizer(list(params.values()), [hp["optimizer"] for hp in hps],
                                     [hp["lr"] for hp in hps], [hp["weight_decay"] for hp in hps])
        shapes = self.dropout_shapes(arch, options)
        n_models = len(ids)
        diverged = torch.zeros(n_models, dtype=torch.bool, device=device)
        results: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}

        def forward(p, b, x, masks):
            # vmap has no batching rule for the fused attention kernels (it would loop over networks);
            # the math kernel is made of batched matrix products.
            with sdpa_kernel(SDPBackend.MATH):
                return functional_call(base, (p, b), (x,), {"masks": masks})

        batched = torch.vmap(forward, in_dims=(0, 0, 0, 0 if shapes else None))
        evaluated = torch.vmap(forward, in_dims=(0, 0, None, None))

        def record(epoch: int) -> None:
            due = [m for m in range(n_models) if epoch in checkpoints[m]]
            if not due:
                return
            index = torch.tensor(due, device=device)
            sub_params = {k: v[index] for k, v in params.items()}
            sub_buffers = {k: v[index] for k, v in buffers.items()}
            base.eval()
            train_loss, train_correct = _evaluate(evaluated, sub_params, sub_buffers, train_x, train_y)
            test_loss, test_correct = _evaluate(evaluated, sub_params, sub_buffers, test_x, test_y)
            base.train()
            for j, m in enumerate(due):
                state = {**{k: v[m] for k, v in params.items()}, **{k: v[m] for k, v in buffers.items()}}
                finite = all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())
                subset = streams[m].subset.to(device)
                failed = bool(diverged[m]) or not finite or not bool(
                    torch.isfinite(train_loss[j, subset]).all() & torch.isfinite(test_loss[j]).all())
                nan = float("nan")
                results[ids[m]].append({
                    "epoch": epoch,
                    "state": {k: (torch.full_like(state[k], nan) if failed and state[k].is_floating_point()
                                  else state[k]).detach().cpu().clone() for k in state_keys},
                    "train_size": len(subset),
                    "train_accuracy": nan if failed else float(train_correct[j, subset].float().mean()),
                    "train_loss": nan if failed else float(train_loss[j, subset].mean()),
                    "test_accuracy": nan if failed else float(test_correct[j].float().mean()),
                    "test_loss": nan if failed else float(test_loss[j].mean()),
                    "diverged": failed,
                })

        progress.group_started(n_models, stops[0] * steps_per_epoch)
        base.train()
        record(0)
        image_shape = train_x.shape[1:]
        for epoch in range(stops[0]):
            active = sum(s > epoch for s in stops)  # sorted: networks [0, active) still train
            for _ in range(steps_per_epoch):
                indices = torch.stack([s.next_batch() for s in streams[:active]]).to(device)
                images = train_x[indices.reshape(-1)].view(active, batch, *image_shape)
                masks = _stack_masks([s.dropout_masks(shapes) for s in streams[:active]], shapes, batch, device)
                leaves = {k: v[:active].detach().requires_grad_() for k, v in params.items()}
                # Buffers are views: batch norm updates the running statistics of networks [0, active) in place.
                logits = batched(leaves, {k: v[:active] for k, v in buffers.items()}, images, masks)
                step_networks(logits, train_y[indices], list(leaves.values()), diverged, optimizer)
                progress.step_done()
            record(epoch + 1)
        progress.group_done(n_models)
        return results


def resolve_epochs(recipe: str, o: Mapping[str, Any]) -> dict[str, int]:
    """Options ``epochs`` and ``epochs_min`` (epochs are drawn uniformly between them), checked."""
    epochs, epochs_min = _positive_int(recipe, "epochs", o["epochs"]), _positive_int(recipe, "epochs_min", o["epochs_min"])
    if epochs_min > epochs:
        raise SneError(f"{recipe} needs epochs_min <= epochs, got {epochs_min} and {epochs}")
    return {"epochs": epochs, "epochs_min": epochs_min}


def arch_key(arch: Mapping[str, Any]) -> str:
    """An architecture as a canonical JSON string (what networks are grouped and stored by)."""
    return json.dumps(dict(arch), sort_keys=True)


def _stack(per_module: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([t[name].detach() for t in per_module]) for name in per_module[0]}


def _stack_masks(per_model: Sequence[list[torch.Tensor] | None], shapes: Sequence[tuple[int, ...]], batch: int,
                 device: torch.device) -> list[torch.Tensor] | None:
    """Per-network dropout masks -> one ``(M, B, *shape)`` tensor per site (ones where a network has none)."""
    if not shapes:
        return None
    return [torch.stack([torch.ones(batch, *shape) if m is None else m[k] for m in per_model]).to(device)
            for k, shape in enumerate(shapes)]


@torch.no_grad()
def _evaluate(evaluated, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
              x: torch.Tensor, y: torch.Tensor, max_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network, per-image cross-entropy and correctness ``(M, len(y))`` in eval mode."""
    models = next(iter(params.values())).shape[0]
    chunk = max(1, max_rows // models)  # bounds the activations held at once
    losses, correct = [], []
    for start in range(0, len(y), chunk):
        logits = evaluated(params, buffers, x[start:start + chunk], None)
        target = y[start:start + chunk].expand(models, -1)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
                      .view(models, -1))
        correct.append(logits.argmax(-1) == target)
    return torch.cat(losses, 1), torch.cat(correct, 1)


@functools.lru_cache(maxsize=8)
def _resized(name: str, size: int):
    """Dataset ``name`` with images bilinearly resized to ``size`` x ``size`` (as is at its own size)."""
    from dataclasses import replace

    from sne.data import load_dataset

    data = load_dataset(name)
    if data.train_x.shape[-1] == size:
        return data

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0).contiguous()

    return replace(data, train_x=resize(data.train_x), test_x=resize(data.test_x))


# ------------------------------------------------------------------------------ generation
