"""The ``digit-inr`` recipe: one 2-D SIREN per digit image, the INR classification benchmark.

An offline stand-in for the MNIST-INR set of DWSNets / NFN / Neural Graphs. Each network is a SIREN
2 -> 32 -> 32 -> 1 (:mod:`sne.zoo.siren`, which also fits them) mapping a pixel's (row, column)
coordinates, each on ``linspace(-1, 1, 28)``, to its intensity in [0, 1]; the target is the image's
class ``label``.

Network ``i`` fits image ``i mod m`` of the dataset's ``m`` images, counted over its train part and
then its test part (``image_split`` and ``image_index`` in the metadata say which). With ``n > m``
images repeat, fitted from other initial parameters (under ``init=shared``, each pass over the
dataset has its own shared init, so no two networks are identical). The zoo's own train/val/test
split is a seeded permutation of network ids, not the dataset's split: an INR classifier predicts
labels, and with ``n <= m`` each image is in exactly one zoo split, so no image leaks between them.

With ``views`` K > 1, ``n`` counts images and the zoo holds ``n * K`` INRs: row ``i * K + v`` is view
``v`` of image slot ``i`` (image ``i mod m``), fitted from its own initial parameters (under
``init=shared``, view v of every image shares one init), and the split is drawn per image slot, so
the K views of an image share a split (a grouped recipe of :func:`sne.zoo.format.generate_zoo`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from sne.data import ImageDataset, dataset_names, load_dataset
from sne.data.images import IMAGE_SIZE
from sne.errors import SneError
from sne.zoo.recipes import FitProgress, Recipe, RowsToUnits, Shard, check_options, derive_seed, register_recipe
from sne.zoo.siren import FIT_OPTIONS, fit_groups, gain_columns, hidden_gains, resolve_fit_options, siren_architecture

# 200 Adam steps at lr 2e-3 fit all 1797 digits images to PSNR > 38 dB (median 50) in ~5 s per 100
# INRs on one idle CPU thread; lr 3e-3 leaves occasional outliers near 33 dB.
DEFAULT_OPTIONS: dict[str, Any] = {**FIT_OPTIONS, "steps": 200, "lr": 2e-3, "dataset": "digits", "views": 1}


def pixel_grid() -> torch.Tensor:
    """The network inputs: (row, column) coordinates of the 28x28 pixels in row-major order, (784, 2)."""
    axis = torch.linspace(-1.0, 1.0, IMAGE_SIZE)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of intensities in [0, 1]."""
    return -10.0 * torch.log10(mse)


def source_images(dataset: ImageDataset, ids: np.ndarray) -> dict[str, Any]:
    """What networks ``ids`` fit: ``images`` (len(ids), 784) float32, ``labels``, ``image_split``,
    ``image_index`` (within that split) and ``repeat`` (how many full passes over the dataset came first)."""
    ids = np.asarray(ids, dtype=np.int64)
    n_train, n_test = len(dataset.train_y), len(dataset.test_y)
    position = ids % (n_train + n_test)
    in_test = position >= n_train
    index = np.where(in_test, position - n_train, position)
    images = torch.empty(len(ids), IMAGE_SIZE * IMAGE_SIZE)
    labels = np.empty(len(ids), dtype=np.int64)
    for mask, x, y in ((~in_test, dataset.train_x, dataset.train_y), (in_test, dataset.test_x, dataset.test_y)):
        images[torch.as_tensor(mask)] = x.reshape(len(x), -1)[torch.as_tensor(index[mask])]
        labels[mask] = y.numpy()[index[mask]]
    return {
        "images": images,
        "labels": labels,
        "image_split": np.where(in_test, "test", "train"),
        "image_index": index,
        "repeat": ids // (n_train + n_test),
    }


@register_recipe
class DigitInr(Recipe):
    name = "digit-inr"
    summary = "SIRENs 2-32-32-1 fitted to 28x28 digit images (one per image); target: label"

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, DEFAULT_OPTIONS)
        o = {**DEFAULT_OPTIONS, **options}
        if o["dataset"] not in dataset_names():
            raise SneError(
                f"digit-inr option 'dataset' must be one of {', '.join(dataset_names())}, got {o['dataset']!r}"
            )
        views = o["views"]
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise SneError(f"digit-inr option 'views' must be a positive integer, got {views!r}")
        # views=1 is left out, so such a zoo has the options (and resumes) as before views existed.
        return {**resolve_fit_options(self.name, o), "dataset": o["dataset"], **({"views": views} if views > 1 else {})}

    def architecture(self, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        return siren_architecture(2)

    def targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        dataset = load_dataset(options["dataset"])
        return {
            "label": {"kind": "class", "num_classes": dataset.num_classes, "description": "class of the fitted image"}
        }

    def dataset(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **load_dataset(options["dataset"]).summary(),
            "images": "network i fits image i mod (train + test), train part first; with more networks than "
                      "images they repeat with other initial parameters",
            "splits": "the zoo's splits permute network ids; the dataset's own split is in column image_split",
            "grid": {"start": -1.0, "stop": 1.0, "points_per_axis": IMAGE_SIZE, "endpoint": True},
            "network_input": "(row, column) coordinates of a pixel, in [-1, 1]^2; output: its intensity in [0, 1]",
            "fit": {"optimizer": "adam", "lr": options["lr"], "steps": options["steps"], "loss": "mse, all pixels"},
        }

    def default_shard_size(self, options: Mapping[str, Any]) -> int:
        return 500

    def init_seed(self, seed: int, network_id: int, repeat: int, options: Mapping[str, Any], view: int = 0) -> int:
        """The seed of a network's initial parameters; under shared init, one per pass over the dataset
        (and per view)."""
        if options["init"] == "shared":
            return derive_seed(seed, "digit-inr/shared-init", repeat, *([view] if view else []))
        return derive_seed(seed, "digit-inr/init", network_id)

    # -- several views per image (a grouped recipe of format.generate_zoo) ---------------------------------

    def rows_per_network(self, options: Mapping[str, Any]) -> int:
        return options.get("views", 1)

    def zoo_manifest(self, seed: int, n: int, options: Mapping[str, Any]) -> dict[str, Any]:
        from sne.zoo.format import _chain_architectures

        return {"architectures": _chain_architectures(self.name, self.architecture(options))}

    def generate_rows(self, slots: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress,
                      manifest: Mapping[str, Any]):
        """All views of image slots ``slots``."""
        from sne.zoo.module_recipes import ModuleShard

        views = options.get("views", 1)
        ids = (np.asarray(slots, dtype=np.int64)[:, None] * views + np.arange(views)).reshape(-1)
        # The zoo's bar counts images (--n); the fit reports INRs.
        shard = self.generate_shard(ids, seed, options, RowsToUnits(progress, views))
        return ModuleShard(shard.rows, {0: shard.tensors}, np.zeros(len(ids), dtype=np.int64))

    def generate_shard(
        self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress
    ) -> Shard:
        views = options.get("views", 1)
        source = source_images(load_dataset(options["dataset"]), np.asarray(ids) // views)
        init_seeds = [self.init_seed(seed, int(i), int(r), options, int(i) % views)
                      for i, r in zip(ids, source["repeat"])]
        images = source["images"]
        gains = hidden_gains(self.name, seed, ids, options)
        tensors, fit_mse = fit_groups(
            self.name, ids, init_seeds, pixel_grid(), lambda start, stop: images[start:stop], options, progress, gains
        )
        rows = [
            {
                "id": int(i), "label": int(label), "image_split": str(split), "image_index": int(index),
                "init_seed": s, "fit_mse": float(e), "psnr": float(p),
                **({"image_slot": int(i) // views, "view": int(i) % views} if views > 1 else {}), **g,
            }
            for i, label, split, index, s, e, p, g in zip(
                ids, source["labels"], source["image_split"], source["image_index"], init_seeds,
                fit_mse.tolist(), psnr(fit_mse).tolist(), gain_columns(gains, options),
            )
        ]
        return Shard(tensors, rows)
