"""The ``small-cnn`` and ``cnn-s`` recipes: zoos of small image classifiers with sampled hyper-parameters.

``small-cnn`` is the Unterthiner et al. (2020) architecture unchanged: three Conv2d(16, 3x3,
stride 2, no padding) + activation + dropout, global average pool, Linear(16 -> 10); 4970
parameters. Its option ``kernel`` (odd, 1 to 27; default 3) sets the kernel size of every
convolution, for zoos of kernels never seen in training: a k x k kernel (k >= 3) gets (k - 3) / 2
zeros of padding on every side, so the maps stay 13x13, 6x6 and 2x2 as in the 3x3 network and
the readout stays Linear(16 -> 10) (a 1x1 kernel, unpadded, gives 14x14, 7x7 and 4x4); the
manifest's layers record each convolution's padding. ``cnn-s`` is Schürholt et al.'s CNN-s:
Conv(1,8,5) -> MaxPool2 -> act -> Conv(8,6,5) -> MaxPool2 -> act -> Conv(6,4,2) -> act -> Flatten
-> Linear(36,20) -> act -> Linear(20,10); 2464 parameters. Both take 28x28 grayscale images
(:mod:`sne.data`).

Per network, drawn from (seed, id) alone: optimizer (SGD with momentum 0.9 / Adam / RMSProp),
learning rate (log-uniform; SGD's range 10x Adam's), L2 weight decay (log-uniform), dropout,
weight init scheme and gain (fan-in scaled), activation (relu / tanh), fraction of the training
set, and epochs. The activation is per network while the architecture is shared, so the manifest's
hidden layers say ``"activation": null, "activation_from": "activation"`` and records read each
network's activation from its ``activation`` class column (:meth:`sne.zoo.format.Zoo.records`).

Training. One *epoch* is ``ceil(len(train set) / batch_size)`` optimizer steps for every network,
whatever its data fraction: a network cycles through fresh permutations of its own subset, so
every step of every network has a full batch and the stacked computation never has holes. Each
network's subset, batches and dropout masks come from its own generator, so its training does
not depend on which networks share its group (it equals training it alone with ``torch.optim``,
up to float rounding; tested). A shard's networks are grouped by activation (one stacked forward
per group) and sorted by epochs, longest first; a network that has done its epochs stops being
updated and, once it is last in the group, stops being computed.

A network whose loss or weights become non-finite is *diverged*: it stops training, its stored
weights are NaN, its metrics NaN, and the zoo keeps it out of every split (and counts it).
"""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from sne.errors import SneError
from sne.zoo.cnn_nets import (
    ACTIVATIONS,
    INIT_SCHEMES,
    OPTIMIZERS,
    SGD_MOMENTUM,
    CnnArchitecture,
    ConvSpec,
    StackedOptimizer,
    ZooCnn,
    initial_parameters,
    reference_optimizer,
    stacked_forward,
)
from sne.zoo.recipes import FitProgress, Recipe, Shard, check_options, derive_seed, register_recipe

SMALL_CNN = CnnArchitecture(
    convs=(ConvSpec("conv1", 16, 3, 2), ConvSpec("conv2", 16, 3, 2), ConvSpec("conv3", 16, 3, 2)),
    readout="global_avg_pool",
    linears=(("fc", 10),),
)
#: small-cnn's default kernel size (the published architecture).
SMALL_CNN_KERNEL = 3


def small_cnn_architecture(kernel: int) -> CnnArchitecture:
    """The small CNN with k x k kernels, padded by (k - 3) / 2 so its maps keep the 3x3 network's sizes."""
    if kernel == SMALL_CNN_KERNEL:
        return SMALL_CNN
    padding = max(0, (kernel - SMALL_CNN_KERNEL) // 2)
    return CnnArchitecture(
        convs=tuple(ConvSpec(c.name, c.out_channels, kernel, c.stride, padding=padding) for c in SMALL_CNN.convs),
        readout=SMALL_CNN.readout,
        linears=SMALL_CNN.linears,
    )


CNN_S = CnnArchitecture(
    convs=(ConvSpec("conv1", 8, 5, max_pool=True), ConvSpec("conv2", 6, 5, max_pool=True), ConvSpec("conv3", 4, 2)),
    readout="flatten",
    linears=(("fc1", 20), ("fc2", 10)),
    channels_last=True,
)

#: Sampling ranges (recorded in every manifest under dataset.training). SGD's learning rates are
#: 10x the adaptive optimizers': with equal ranges most SGD networks stay at chance.
LR_RANGES = {"sgd": (1e-3, 1e-1), "adam": (1e-4, 1e-2), "rmsprop": (1e-4, 1e-2)}
WEIGHT_DECAY_RANGE = (1e-8, 1e-2)
INIT_GAIN_RANGE = (0.3, 3.0)
TRAIN_FRACTION_RANGE = (0.1, 1.0)
CLASS_TARGETS = {"optimizer": OPTIMIZERS, "activation": ACTIVATIONS, "init": INIT_SCHEMES}

DEFAULT_OPTIONS: dict[str, Any] = {
    "dataset": "digits",
    "epochs": 20,
    "epochs_min": 1,
    "dropout_max": 0.5,
    "batch_size": 32,
    "group_size": None,
    "device": "cpu",
}


def step_networks(logits: torch.Tensor, labels: torch.Tensor, leaves: Sequence[torch.Tensor],
                  diverged: torch.Tensor, optimizer: StackedOptimizer) -> None:
    """One optimizer step of the first ``active`` networks of a group from their ``logits``
    ``(active, batch, classes)``: a network whose loss is not finite is marked ``diverged``, frozen,
    and not updated."""
    active, batch = labels.shape
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             reduction="none").view(active, batch).mean(1)
    # The sum keeps each network's gradient its own.
    losses.sum().backward()
    bad = ~torch.isfinite(losses.detach())
    grads = [leaf.grad for leaf in leaves]
    if bool(bad.any()):
        newly = torch.zeros_like(diverged)
        newly[:active] = bad
        diverged |= newly
        optimizer.freeze(newly)
        optimizer.reset(newly)
        for grad in grads:
            grad[bad] = 0.0
    optimizer.step(grads, active)


def training_description(n_train: int, batch_size: int, lr_ranges: Mapping[str, tuple[float, float]],
                         weight_decay_range: tuple[float, float]) -> dict[str, Any]:
    """How the batched CNN trainers train each network, for a zoo manifest's dataset entry."""
    return {
        "epoch": f"ceil({n_train} / batch_size) = {math.ceil(n_train / batch_size)} steps for every network; "
                 f"each draws full batches from its own subset",
        "loss": "cross-entropy, mean over the batch",
        "optimizers": {"sgd": f"momentum {SGD_MOMENTUM}", "adam": "betas (0.9, 0.999), eps 1e-8",
                       "rmsprop": "alpha 0.99, eps 1e-8, no momentum"},
        "lr_log_uniform": {k: list(v) for k, v in lr_ranges.items()},
        "weight_decay_log_uniform": list(weight_decay_range),
        "weight_decay": "coupled L2 (added to the gradient) on every parameter, as torch.optim's weight_decay",
        "train_fraction_uniform": list(TRAIN_FRACTION_RANGE),
        "batch_size": batch_size,
    }


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _positive_int(recipe: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SneError(f"{recipe} option '{name}' must be a positive integer, got {value!r}")
    return int(value)


def _device(recipe: str, value: Any) -> str:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise SneError(f"{recipe} option 'device' must be 'cpu' or 'cuda[:index]', got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise SneError(f"{recipe} option 'device' must be 'cpu' or 'cuda[:index]', got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SneError(f"{recipe} option 'device' is 'cuda' but PyTorch sees no CUDA device here")
    return str(value)


class TrainingStream:
    """One network's randomness while training: its data subset, its mini-batches, its dropout masks.

    Batches cycle through fresh permutations of the subset, so they are always full. Calls must
    come in training order (per step: :meth:`next_batch`, then :meth:`dropout_masks`).
    """

    def __init__(self, seed: int, n_train: int, fraction: float, batch_size: int, dropout: float) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        size = max(1, round(fraction * n_train))
        self.subset = torch.randperm(n_train, generator=self.generator)[:size].sort().values
        self.batch_size = batch_size
        self.dropout = dropout
        self._queue = torch.empty(0, dtype=torch.int64)

    def next_batch(self) -> torch.Tensor:
        while len(self._queue) < self.batch_size:
            order = torch.randperm(len(self.subset), generator=self.generator)
            self._queue = torch.cat([self._queue, self.subset[order]])
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        return batch

    def dropout_masks(self, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor] | None:
        """Inverted-dropout masks (0 or 1 / keep) of shape (batch, *shape) each; None without dropout."""
        if self.dropout <= 0:
            return None
        keep = 1.0 - self.dropout
        return [
            (torch.rand((self.batch_size, *shape), generator=self.generator) < keep).float().div_(keep)
            for shape in shapes
        ]


class CnnRecipe(Recipe):
    """Shared code of the CNN recipes; subclasses set ``name``, ``summary`` and ``arch`` (and, for
    options that change the architecture, ``architecture_options`` and :meth:`architecture_of`)."""

    arch: CnnArchitecture
    #: Options that change the architecture, with their defaults (those of ``arch``).
    architecture_options: ClassVar[dict[str, Any]] = {}

    def architecture_of(self, options: Mapping[str, Any]) -> CnnArchitecture:
        """The network that resolved ``options`` describe."""
        return self.arch

    def for_options(self, options: Mapping[str, Any]) -> "CnnRecipe":
        """This recipe, its ``arch`` the one ``options`` describe (methods without options read ``arch``)."""
        arch = self.architecture_of(options)
        if arch is self.arch:
            return self
        variant = copy.copy(self)
        variant.arch = arch
        return variant

    def resolve_architecture_options(self, o: Mapping[str, Any]) -> dict[str, Any]:
        """The checked architecture options of ``o`` (all options, defaults filled in) that differ from
        their defaults: a default one is left out, so such a zoo has the options (and resumes) as
        before the option existed."""
        return {}

    # -- options, description -------------------------------------------------------------------

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        from sne.data import dataset_names

        known = {**DEFAULT_OPTIONS, **self.architecture_options}
        check_options(self.name, options, known)
        o = {**known, **options}
        if o["dataset"] not in dataset_names():
            raise SneError(
                f"{self.name} option 'dataset': unknown dataset {o['dataset']!r} "
                f"(available: {', '.join(dataset_names())})"
            )
        device = _device(self.name, o["device"])
        if o["group_size"] is None:
            group_size = 1024 if torch.device(device).type == "cuda" else 256
        else:
            group_size = _positive_int(self.name, "group_size", o["group_size"])
        dropout_max = o["dropout_max"]
        if isinstance(dropout_max, bool) or not isinstance(dropout_max, (int, float)) or not 0 <= dropout_max < 1:
            raise SneError(f"{self.name} option 'dropout_max' must be a number in [0, 1), got {dropout_max!r}")
        resolved = {
            "dataset": o["dataset"],
            "epochs": _positive_int(self.name, "epochs", o["epochs"]),
            "epochs_min": _positive_int(self.name, "epochs_min", o["epochs_min"]),
            "dropout_max": float(dropout_max),
            "batch_size": _positive_int(self.name, "batch_size", o["batch_size"]),
            "group_size": group_size,
            "device": device,
        }
        if resolved["epochs_min"] > resolved["epochs"]:
            raise SneError(
                f"{self.name} needs epochs_min <= epochs, got {resolved['epochs_min']} and {resolved['epochs']}"
            )
        return {**resolved, **self.resolve_architecture_options(o)}

    def architecture(self, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        arch = self.architecture_of(options)
        layers: list[dict[str, Any]] = []
        shapes = dict(arch.parameter_shapes())
        per_network = {"activation": None, "activation_from": "activation", "dropout": "per network"}
        for conv, (channels, height, width) in zip(arch.convs, arch.conv_shapes()):
            layers.append({
                "name": conv.name, "kind": "conv2d", "level": len(layers),
                "weight_shape": list(shapes[f"{conv.name}.weight"]), "has_bias": True,
                "stride": conv.stride, "padding": conv.padding, "max_pool": 2 if conv.max_pool else None,
                "output_shape": [channels, height, width], **per_network,
            })
        layers[-1]["then"] = arch.readout
        for j, (name, _) in enumerate(arch.linears):
            last = j == len(arch.linears) - 1
            layers.append({
                "name": name, "kind": "linear", "level": len(layers),
                "weight_shape": list(shapes[f"{name}.weight"]), "has_bias": True,
                **({"activation": "identity"} if last else per_network),
            })
        return layers

    def targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        targets: dict[str, dict[str, Any]] = {
            "test_accuracy": {"kind": "unit_interval", "description": "accuracy on the dataset's test part"},
            "generalization_gap": {"kind": "regression", "description": "train accuracy (own subset) - test accuracy"},
        }
        for name, classes in CLASS_TARGETS.items():
            targets[name] = {"kind": "class", "num_classes": len(classes), "classes": list(classes),
                             "description": f"{name}, stored as the index into classes"}
        targets.update({
            "log10_lr": {"kind": "regression", "description": "log10 of the learning rate"},
            "log10_weight_decay": {"kind": "regression", "description": "log10 of the L2 coefficient"},
            "dropout": {"kind": "regression", "description": "dropout rate after every hidden layer"},
            "init_gain": {"kind": "regression", "description": "gain of the weight initialisation"},
            "train_fraction": {"kind": "regression", "description": "fraction of the training set used"},
            "epochs": {"kind": "regression", "description": "training epochs"},
        })
        return targets

    def dataset(self, options: Mapping[str, Any]) -> dict[str, Any]:
        from sne.data import load_dataset

        data = load_dataset(options["dataset"])
        n_train = len(data.train_y)
        return {
            **data.summary(),
            "training": {
                **training_description(n_train, options["batch_size"], LR_RANGES, WEIGHT_DECAY_RANGE),
                "dropout_uniform": [0.0, options["dropout_max"]],
                "init_schemes": list(INIT_SCHEMES),
                "init_gain_log_uniform": list(INIT_GAIN_RANGE),
                "biases": "zero at init",
                "activations": list(ACTIVATIONS),
                "epochs_uniform_integer": [options["epochs_min"], options["epochs"]],
            },
        }

    def default_shard_size(self, options: Mapping[str, Any]) -> int:
        return 2 * options["group_size"]

    # -- per-network randomness ---------------------------------------------------------------

    def hyperparameters(self, seed: int, network_id: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """The sampled hyper-parameters of network ``network_id``, from (seed, id) alone."""
        rng = np.random.default_rng(derive_seed(seed, f"{self.name}/hyperparameters", network_id))
        optimizer = OPTIMIZERS[rng.integers(len(OPTIMIZERS))]
        return {
            "optimizer": optimizer,
            "activation": ACTIVATIONS[rng.integers(len(ACTIVATIONS))],
            "init": INIT_SCHEMES[rng.integers(len(INIT_SCHEMES))],
            "lr": _log_uniform(rng, *LR_RANGES[optimizer]),
            "weight_decay": _log_uniform(rng, *WEIGHT_DECAY_RANGE),
            "dropout": float(rng.uniform(0.0, options["dropout_max"])),
            "init_gain": _log_uniform(rng, *INIT_GAIN_RANGE),
            "train_fraction": float(rng.uniform(*TRAIN_FRACTION_RANGE)),
            "epochs": int(rng.integers(options["epochs_min"], options["epochs"] + 1)),
        }

    def initial_parameters(self, seed: int, network_id: int, hp: Mapping[str, Any]) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(derive_seed(seed, f"{self.name}/init", network_id))
        return initial_parameters(self.arch, hp["init"], hp["init_gain"], generator)

    def training_stream(
        self, seed: int, network_id: int, hp: Mapping[str, Any], n_train: int, options: Mapping[str, Any]
    ) -> TrainingStream:
        return TrainingStream(
            derive_seed(seed, f"{self.name}/train", network_id), n_train, hp["train_fraction"],
            options["batch_size"], hp["dropout"],
        )

    # -- training ------------------------------------------------------------------------------

    def generate_shard(
        self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress
    ) -> Shard:
        from sne.data import load_dataset

        recipe = self.for_options(options)
        data = load_dataset(options["dataset"])
        device = torch.device(options["device"])
        ids = [int(i) for i in ids]
        hps = {i: recipe.hyperparameters(seed, i, options) for i in ids}
        # One stacked forward per activation; longest training first, so finished networks drop off the end.
        order = sorted(ids, key=lambda i: (ACTIVATIONS.index(hps[i]["activation"]), -hps[i]["epochs"], i))
        results: dict[int, dict[str, Any]] = {}
        group_size = options["group_size"]
        start = 0
        while start < len(order):
            activation = hps[order[start]]["activation"]
            stop = start
            while stop < len(order) and stop - start < group_size and hps[order[stop]]["activation"] == activation:
                stop += 1
            group = order[start:stop]
            results.update(recipe.train_group(group, [hps[i] for i in group], seed, data, options, device, progress))
            start = stop
        tensors = {
            name: torch.stack([results[i]["params"][k] for i in ids])
            for k, (name, _) in enumerate(recipe.arch.parameter_shapes())
        }
        rows = [recipe._row(i, hps[i], results[i]) for i in ids]
        return Shard(tensors, rows)

    def _row(self, network_id: int, hp: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"id": network_id}
        for name, classes in CLASS_TARGETS.items():
            row[name] = classes.index(hp[name])
        row.update({
            "lr": hp["lr"], "log10_lr": math.log10(hp["lr"]),
            "weight_decay": hp["weight_decay"], "log10_weight_decay": math.log10(hp["weight_decay"]),
            "dropout": hp["dropout"], "init_gain": hp["init_gain"],
            "train_fraction": hp["train_fraction"], "train_size": result["train_size"], "epochs": hp["epochs"],
        })
        metrics = {key: result[key] for key in ("train_accuracy", "train_loss", "test_accuracy", "test_loss")}
        row.update(metrics)
        row["generalization_gap"] = metrics["train_accuracy"] - metrics["test_accuracy"]
        row["diverged"] = result["diverged"]
        return row

    def train_group(
        self,
        ids: Sequence[int],
        hps: Sequence[Mapping[str, Any]],
        seed: int,
        data,
        options: Mapping[str, Any],
        device: torch.device,
        progress: FitProgress,
    ) -> dict[int, dict[str, Any]]:
        """Train networks ``ids`` (one activation, sorted by epochs, longest first) stacked together."""
        arch = self.arch
        activation = hps[0]["activation"]
        n_models = len(ids)
        train_x = data.train_x.to(device)
        train_y = data.train_y.to(device)
        n_train = len(train_y)
        batch = options["batch_size"]
        steps_per_epoch = math.ceil(n_train / batch)
        epochs = [hp["epochs"] for hp in hps]
        per_model = [self.initial_parameters(seed, i, hp) for i, hp in zip(ids, hps)]
        params = [torch.stack(parts).to(device) for parts in zip(*per_model)]
        streams = [self.training_stream(seed, i, hp, n_train, options) for i, hp in zip(ids, hps)]
        optimizer = StackedOptimizer(
            params, [hp["optimizer"] for hp in hps], [hp["lr"] for hp in hps], [hp["weight_decay"] for hp in hps]
        )
        diverged = torch.zeros(n_models, dtype=torch.bool, device=device)
        dropout_shapes = arch.dropout_shapes()
        flat_x = train_x.reshape(n_train, -1)
        image_shape = train_x.shape[1:]

        progress.group_started(n_models, epochs[0] * steps_per_epoch)
        for epoch in range(epochs[0]):
            active = sum(e > epoch for e in epochs)  # sorted: networks [0, active) still train
            for _ in range(steps_per_epoch):
                indices = torch.stack([s.next_batch() for s in streams[:active]]).to(device)
                # (active, B, C, H, W) -> (B, active * C, H, W): model m's images in its own channels.
                images = flat_x[indices].view(active, batch, *image_shape).transpose(0, 1)
                images = images.reshape(batch, active * image_shape[0], *image_shape[1:])
                masks = _stack_masks([s.dropout_masks(dropout_shapes) for s in streams[:active]],
                                     dropout_shapes, arch, batch, device)
                leaves = [p[:active].detach().requires_grad_() for p in params]
                logits = stacked_forward(arch, leaves, images, activation, masks)
                step_networks(logits, train_y[indices], leaves, diverged, optimizer)
                progress.step_done()
            # Networks that are done stop changing (their rows may still be computed until they are last).
            finished = torch.tensor([e == epoch + 1 for e in epochs], device=device)
            optimizer.freeze(finished)

        finite = torch.stack([p.flatten(1).isfinite().all(1) for p in params]).all(0)
        diverged |= ~finite
        train_loss, train_correct = evaluate(arch, params, activation, train_x, train_y)
        test_loss, test_correct = evaluate(arch, params, activation, data.test_x.to(device), data.test_y.to(device))
        progress.group_done(n_models)
        results = {}
        for m, network_id in enumerate(ids):
            subset = streams[m].subset.to(device)
            finite_losses = torch.isfinite(train_loss[m, subset]).all() & torch.isfinite(test_loss[m]).all()
            failed = bool(diverged[m]) or not bool(finite_losses)
            nan = float("nan")
            results[network_id] = {
                "params": [torch.full_like(p[m], nan).cpu() if failed else p[m].cpu() for p in params],
                "train_size": len(subset),
                "train_accuracy": nan if failed else float(train_correct[m, subset].float().mean()),
                "train_loss": nan if failed else float(train_loss[m, subset].mean()),
                "test_accuracy": nan if failed else float(test_correct[m].float().mean()),
                "test_loss": nan if failed else float(test_loss[m].mean()),
                "diverged": failed,
            }
        return results


def _stack_masks(
    per_model: Sequence[list[torch.Tensor] | None],
    shapes: Sequence[tuple[int, ...]],
    arch: CnnArchitecture,
    batch: int,
    device: torch.device,
) -> list[torch.Tensor] | None:
    """Per-network masks -> the stacked layouts of :func:`stacked_forward` (ones where a network has none)."""
    if all(m is None for m in per_model):
        return None
    models = len(per_model)
    stacked = []
    n_conv = len(arch.convs)
    for k, shape in enumerate(shapes):
        parts = [torch.ones(batch, *shape) if m is None else m[k] for m in per_model]
        if k < n_conv:
            stacked.append(torch.stack(parts, 1).reshape(batch, models * shape[0], *shape[1:]).to(device))
        else:
            stacked.append(torch.stack(parts, 0).to(device))
    return stacked


@torch.no_grad()
def evaluate(
    arch: CnnArchitecture,
    params: Sequence[torch.Tensor],
    activation: str,
    x: torch.Tensor,
    y: torch.Tensor,
    max_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network, per-image cross-entropy and correctness, each ``(M, len(y))``, without dropout."""
    models = params[0].shape[0]
    first = arch.convs[0]
    first_outputs = first.out_channels * ((arch.image_size + 2 * first.padding - first.kernel) // first.stride + 1) ** 2
    chunk = max(1, max_elements // (models * first_outputs))  # bounds the largest activation tensor
    losses, correct = [], []
    for start in range(0, len(y), chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        # Every network sees the same images: one shared first convolution is cheaper than a grouped
        # one on repeated images, except channels-last (measured: 1.6x slower there for CNN-s).
        images = xs.repeat(1, models, 1, 1) if arch.channels_last else xs
        logits = stacked_forward(arch, params, images, activation)
        target = ys.expand(models, -1)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
                      .view(models, -1))
        correct.append(logits.argmax(-1) == target)
    return torch.cat(losses, 1), torch.cat(correct, 1)


def train_alone(
    recipe: CnnRecipe, network_id: int, seed: int, options: Mapping[str, Any], epochs: int | None = None
) -> tuple[ZooCnn, list[float]]:
    """Train one network of ``recipe`` the plain way: an ``nn.Module`` and its ``torch.optim`` optimizer.

    Same initial weights, batches and dropout masks as the stacked training, so the result is the
    same network up to float rounding: the reference the stacked code is tested against, and the
    one-model-at-a-time baseline of ``benchmarks/bench_cnn_zoo.py``. ``epochs`` overrides the
    sampled number. Returns the model and its per-step losses; it stops at a non-finite loss.
    """
    from sne.data import load_dataset

    data = load_dataset(options["dataset"])
    recipe = recipe.for_options(options)
    hp = recipe.hyperparameters(seed, network_id, options)
    model = ZooCnn(recipe.arch, hp["activation"])
    with torch.no_grad():
        for param, value in zip(model.parameters(), recipe.initial_parameters(seed, network_id, hp)):
            param.copy_(value)
    n_train = len(data.train_y)
    stream = recipe.training_stream(seed, network_id, hp, n_train, options)
    optimizer = reference_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["weight_decay"])
    shapes = recipe.arch.dropout_shapes()
    losses = []
    for _ in range((hp["epochs"] if epochs is None else epochs) * math.ceil(n_train / options["batch_size"])):
        indices = stream.next_batch()
        loss = F.cross_entropy(model(data.train_x[indices], stream.dropout_masks(shapes)), data.train_y[indices])
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, losses


@register_recipe
class SmallCnn(CnnRecipe):
    name = "small-cnn"
    summary = ("Unterthiner et al. small CNN (4970 parameters; -o kernel=5|7 for larger, padded kernels) with "
               "sampled hyper-parameters; target: test_accuracy")
    arch = SMALL_CNN
    architecture_options = {"kernel": SMALL_CNN_KERNEL}

    def architecture_of(self, options: Mapping[str, Any]) -> CnnArchitecture:
        return small_cnn_architecture(options.get("kernel", SMALL_CNN_KERNEL))

    def resolve_architecture_options(self, o: Mapping[str, Any]) -> dict[str, Any]:
        kernel, largest = o["kernel"], self.arch.image_size - 1
        if (isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or not 1 <= kernel <= largest
                or kernel % 2 == 0):
            raise SneError(f"small-cnn option 'kernel' must be an odd integer from 1 to {largest} (the kernel size of "
                           f"every convolution, no larger than the {self.arch.image_size}x{self.arch.image_size} "
                           f"images), got {kernel!r}")
        return {"kernel": int(kernel)} if kernel != SMALL_CNN_KERNEL else {}


@register_recipe
class CnnS(CnnRecipe):
    name = "cnn-s"
    summary = "Schürholt et al. CNN-s (2464 parameters) with sampled hyper-parameters; target: test_accuracy"
    arch = CNN_S
