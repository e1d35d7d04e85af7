"""Dilation style editing on a digit-INR zoo (NFN, Zhou et al. 2023; Neural Graphs, Kofinas et al. 2024).

An *editor* — an encoder with weight-space outputs (:meth:`sne.encoders.base.Encoder.make_weight_head`)
— reads a digit INR's parameters theta and outputs a change delta of every parameter, such that the
edited INR theta + delta, rendered on the 28x28 pixel grid, shows the *dilated* digit:

    loss = metric = MSE over the 784 pixels of render(theta + delta) and dilate(image)

``render`` runs the SIREN on :func:`sne.zoo.digit_inr.pixel_grid` (differentiably, batched:
:func:`sne.zoo.siren.siren_forward`); ``image`` is the dataset image the INR was fitted to (its
metadata's ``image_split`` and ``image_index``); ``dilate`` is grey-scale morphological dilation,
``scipy.ndimage.grey_dilation(image, size=(3, 3))``: each pixel becomes the maximum of its 3x3
neighbourhood (a flat 3x3 structuring element; borders reflected, scipy's default).

Editors start as the identity edit (their output layers are zero), so training starts from the
"no edit" reference, render(theta) against the dilated image, which the results report beside
every editor. Training is the shared loop of :func:`sne.train.run.train_epochs` (Adam, schedule,
seeded batches, resume, best epoch on the val split); results on the test split merge into
``results/style_edit_<init>.json``, with a plot of a few test digits per run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from sne import __version__
from sne.bench.results import write_merged, zoo_identity, zoo_summary
from sne.bench.runs import BenchRuns, options_key
from sne.data import load_dataset
from sne.data.images import IMAGE_SIZE
from sne.encoders import batch_to, build_encoder, build_encoder_from_config, get_encoder_class
from sne.encoders.base import Encoder, WeightBatch, weight_output_encoder_names
from sne.errors import SneError
from sne.io_utils import bounded_path
from sne.train.run import (
    TrainConfig,
    check_train_config,
    choose_sign_flips,
    load_checkpoint,
    report_sign_flips,
    resolve_device,
    train_epochs,
    zoo_manifest_summary,
)
from sne.weights.record import NetworkRecord
from sne.zoo import Zoo
from sne.zoo.digit_inr import pixel_grid
from sne.zoo.digit_inr import source_images as recipe_source_images
from sne.zoo.siren import siren_forward

BENCHMARK = "style_edit"
#: Side of the flat structuring element of the grey-scale dilation.
DILATION_SIZE = (3, 3)
#: ``TrainConfig.target`` of an editing run: what the edit is trained to produce.
EDIT_TARGET = "dilate_3x3"
#: What the results file says about the task.
TASK = {
    "edit": "grey-scale morphological dilation, scipy.ndimage.grey_dilation(image, size=(3, 3)) "
            "(flat 3x3 structuring element, mode 'reflect') of the 28x28 image the INR was fitted to",
    "metric": "MSE over the 784 pixels between render(theta + delta) and the dilated image, averaged over networks",
    "render": "the SIREN on the 28x28 pixel grid of the digit-inr recipe ((row, column) in [-1, 1]^2)",
    "reference": "no edit: render(theta) against the dilated image (the untrained editor, whose outputs are 0)",
}
#: Test digits shown in each run's plot.
PLOTTED_DIGITS = 6


def dilate(images: torch.Tensor) -> torch.Tensor:
    """Grey-scale dilation (:data:`DILATION_SIZE`, see the module docstring) of images ``(n, 784)``
    or ``(n, 28, 28)``; same shape and dtype."""
    from scipy.ndimage import grey_dilation

    squares = images.detach().cpu().double().numpy().reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    dilated = grey_dilation(squares, size=(1, *DILATION_SIZE))  # size 1 along the image axis: one by one
    return torch.from_numpy(dilated).reshape(images.shape).to(images.dtype)


def source_images(zoo: Zoo, ids: np.ndarray) -> torch.Tensor:
    """The images (len(ids), 784) that networks ``ids`` of a digit-INR zoo were fitted to (the
    recipe's own id -> image mapping)."""
    dataset = load_dataset(zoo.manifest["options"]["dataset"])
    return recipe_source_images(dataset, np.asarray(ids, dtype=np.int64))["images"]


def open_digit_inr_zoo(path: str | Path) -> Zoo:
    """The zoo at ``path``; :class:`SneError` unless the digit-inr recipe made it."""
    zoo = Zoo.open(path)
    if zoo.manifest.get("recipe") != "digit-inr":
        raise SneError(f"the zoo at {zoo.path} was made by recipe '{zoo.manifest.get('recipe')}'; style editing "
                       f"needs a digit-inr zoo (sne zoo generate digit-inr ...)")
    return zoo


def stack_parameters(records: Sequence[NetworkRecord]) -> list[torch.Tensor]:
    """Parameters of records of one architecture, stacked: ``[W0, b0, W1, b1, ...]``, each ``(n, *shape)``."""
    return [torch.stack([getattr(r.layers[i], part) for r in records])
            for i in range(len(records[0].layers)) for part in ("weight", "bias")]


def render(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """Images (n, 784) of stacked SIREN parameters ``[W0, b0, W1, b1, W2, b2]`` on the pixel grid; differentiable."""
    grid = pixel_grid().to(device=parameters[0].device, dtype=parameters[0].dtype)
    return siren_forward(parameters, grid)


@dataclass
class EditSplit:
    """One split of a digit-INR zoo as the task sees it: the networks, their stacked parameters,
    the images they were fitted to and the dilated targets (all on the CPU)."""

    ids: np.ndarray
    records: list[NetworkRecord]
    parameters: list[torch.Tensor]
    images: torch.Tensor
    targets: torch.Tensor


def load_split(zoo: Zoo, split: str, limit: int | None = None) -> EditSplit:
    """Split ``split`` of ``zoo`` (its first ``limit`` networks when given), targets computed once here."""
    ids = zoo.split_ids(split)[:limit]
    if len(ids) == 0:
        raise SneError(f"the {split} split of the zoo at {zoo.path} is empty")
    records = zoo.records(ids)
    images = source_images(zoo, ids)
    return EditSplit(ids, records, stack_parameters(records), images, dilate(images))


def render_edited(editor: Encoder, batch: WeightBatch) -> torch.Tensor:
    """Renders (n, 784) of the networks of ``batch`` after the editor's edit, each edit added to the
    parameters of the network the editor read: in training that is a permuted, sign-flipped copy
    (augmentation), whose own coordinates the edit is in; its render is the original's."""
    deltas = stack_parameters(editor.forward_weights(batch))
    return render([p.to(d) + d for p, d in zip(stack_parameters(batch.records), deltas)])


@torch.no_grad()
def edited_renders(editor: Encoder, data: EditSplit, batch_size: int = 64) -> torch.Tensor:
    """Renders (n, 784) of every network of ``data`` after the editor's edit, in eval mode, on the CPU."""
    was_training = editor.training
    editor.eval()
    device = next(editor.parameters()).device
    renders = []
    try:
        for start in range(0, len(data.records), batch_size):
            batch = batch_to(editor.prepare_weights(data.records[start : start + batch_size]), device)
            renders.append(render_edited(editor, batch).float().cpu())
    finally:
        editor.train(was_training)
    return torch.cat(renders)


def mse_per_network(renders: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (renders.double() - targets.double()).square().mean(1)


def build_editor(config: TrainConfig, architecture) -> Encoder:
    """The encoder ``config`` names, with its weight head; :class:`SneError` if it has no weight outputs."""
    encoder = build_encoder(config.encoder, architecture=architecture, **config.encoder_options)
    encoder.make_weight_head()
    return encoder


def train_editor(
    config: TrainConfig, run_dir: str | Path, progress: bool = True, splits: dict[str, EditSplit] | None = None
) -> dict:
    """Train (or resume) an editor on the train split, selecting on val; return the run's summary.

    ``splits`` ("train", "val"), when given, are used instead of loading them from ``config.zoo``
    (a benchmark loads them once for all its runs).
    """
    check_train_config(config)
    if config.invariance_weight:
        raise SneError("style editing trains without the invariance regulariser (set it to 0)")
    if config.target != EDIT_TARGET:
        raise SneError(f"a style-edit run's target is '{EDIT_TARGET}', got '{config.target}'")
    zoo = open_digit_inr_zoo(config.zoo)
    if splits is None:
        splits = {"train": load_split(zoo, "train", config.max_train), "val": load_split(zoo, "val")}
    train, val = splits["train"], splits["val"]
    config, sign_flip_choice = choose_sign_flips(config, train.records)

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    editor = build_editor(config, train.records[0].architecture).to(device)
    editor.check_records(train.records)
    report_sign_flips(sign_flip_choice, progress)
    meta = {
        "config": asdict(config),
        "encoder": editor.config(),
        "task": {"benchmark": BENCHMARK, **TASK},
        "sne_version": __version__,
        "zoo_manifest": zoo_manifest_summary(zoo),
        "sign_flip_choice": sign_flip_choice,
    }

    def batch_loss(model, indices: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        loss = F.mse_loss(render_edited(editor, batch), train.targets[indices].to(device))
        return loss, torch.zeros((), device=device)

    def validation_loss() -> float:
        return float(mse_per_network(edited_renders(editor, val, config.batch_size), val.targets).mean())

    summary = train_epochs(config, Path(run_dir), editor, editor, train.records, editor.prepare_weights, batch_loss,
                           validation_loss, meta, device, progress)
    return {**summary, "sign_flip_choice": sign_flip_choice}


def load_editor(run_dir: str | Path, device: str = "auto", which: str = "best") -> tuple[Encoder, dict]:
    """A trained editor (eval mode) and its checkpoint's metadata."""
    path = Path(run_dir) / f"{which}.pt"
    if not path.exists():
        raise SneError(f"{run_dir}: no {which}.pt here — is this a style-edit run directory?")
    checkpoint = load_checkpoint(path)
    editor = build_encoder_from_config(checkpoint["encoder"])
    editor.load_state_dict(checkpoint["model"])
    editor.to(resolve_device(device)).eval()
    return editor, {k: v for k, v in checkpoint.items() if k not in ("model", "optimizer", "scheduler")}


def plot_edits(originals: torch.Tensor, edited: torch.Tensor, targets: torch.Tensor, path: Path, title: str,
               caption: str) -> Path:
    """A grid of digits: rows original render, edited render, dilated target; one column per network."""
    from sne.plots import add_caption, save_figure  # sets the headless backend before pyplot loads

    import matplotlib.pyplot as plt

    columns = len(originals)
    fig, axes = plt.subplots(3, columns, figsize=(1.5 * columns, 5.6), squeeze=False)
    errors = mse_per_network(edited, targets)
    rows = (("original render", originals), ("edited render", edited), ("dilated target", targets))
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(IMAGE_SIZE, IMAGE_SIZE).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(f"edit MSE {float(errors[c]):.4f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    add_caption(fig, caption)
    fig.tight_layout(rect=(0, 0.1 if caption else 0, 1, 0.95))
    return save_figure(fig, path)


def _check_encoders(encoders: Sequence[str]) -> None:
    for name in encoders:
        if not get_encoder_class(name).weight_outputs:
            raise SneError(f"encoder '{name}' cannot output one value per parameter, so it cannot edit weights; "
                           f"encoders that can: {', '.join(weight_output_encoder_names())}")


def run_style_edit_benchmark(zoo_path: str | Path, runs: BenchRuns) -> Path:
    """Train an editor per (encoder, seed), score it on the test split; return the results file's path."""
    _check_encoders(runs.encoders)
    zoo = open_digit_inr_zoo(zoo_path)
    init = zoo.manifest.get("options", {}).get("init", "unknown")
    splits = {split: load_split(zoo, split, runs.train_options.get("max_train") if split == "train" else None)
              for split in ("train", "val", "test")}
    test = splits["test"]
    originals = render(test.parameters)
    no_edit = mse_per_network(originals, test.targets)
    device, command, epochs = runs.device, runs.command, runs.epochs
    entries = []
    for encoder in runs.encoders:
        for seed in runs.seeds:
            run_dir = bounded_path(runs.runs_dir / f"{runs.run_name(encoder)}_seed{seed}")
            config = runs.train_config(encoder, zoo.path, EDIT_TARGET, seed)
            started = time.perf_counter()
            summary = train_editor(config, run_dir, splits=splits)
            editor, _ = load_editor(run_dir, device=device)
            edited = edited_renders(editor, test, config.batch_size)
            errors = mse_per_network(edited, test.targets)
            entry = {
                **runs.trained_run_fields(encoder, run_dir, summary),
                "train_seed": seed,
                "metrics": {
                    "test_mse": float(errors.mean()),
                    "test_mse_std": float(errors.std()),
                    "no_edit_test_mse": float(no_edit.mean()),
                    "relative_to_no_edit": float(errors.mean() / no_edit.mean()),
                    "best_val_mse": summary["best_val_loss"],
                    "n": len(errors),
                },
                "train_config": asdict(config),
            }
            if runs.plots:
                shown = slice(0, PLOTTED_DIGITS)
                caption = (f"test networks {test.ids[shown].tolist()} of zoo {zoo.path.name} (digit-inr, n={len(zoo)}, "
                           f"seed {zoo.manifest.get('seed')}, init {init}); {encoder}, seed {seed}, {epochs} epochs "
                           f"(best {summary['best_epoch']}); {entry['hardware']['device']}, "
                           f"{entry['hardware']['threads']} thread(s); command: {command}")
                title = (f"dilation edit by {encoder}: test MSE {entry['metrics']['test_mse']:.4f} "
                         f"(no edit {entry['metrics']['no_edit_test_mse']:.4f})")
                path = runs.results_dir / "plots" / f"{BENCHMARK}_{init}_{runs.plot_name(encoder, seed, summary)}.png"
                entry["plot"] = str(plot_edits(originals[shown], edited[shown], test.targets[shown], path, title,
                                               caption))
            entry["wall_seconds_this_invocation"] = time.perf_counter() - started
            entries.append(entry)
    result = {
        "benchmark": BENCHMARK,
        "command": command,
        "zoo": zoo_summary(zoo),
        "init": init,
        "task": TASK,
        "no_edit": {"test_mse": float(no_edit.mean()), "test_mse_std": float(no_edit.std()), "n": len(no_edit)},
        "entries": entries,
    }
    return write_merged(runs.results_dir / f"{BENCHMARK}_{init}.json", result, lambda r: zoo_identity(r["zoo"]),
                        lambda e: (e["encoder"], options_key(e), e["train_seed"]))
