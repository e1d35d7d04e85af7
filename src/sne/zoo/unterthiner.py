"""Import the published small-CNN zoo of Unterthiner et al. (2020) into our zoo format.

The published directory holds:

    weights.npy      float array (checkpoints, 4970): one flattened network per row
    metrics.csv.gz   one row per checkpoint: config.* hyper-parameters, modeldir, step,
                     test_accuracy, train_accuracy, test_loss, train_loss
    layout.csv       varname, start_idx, end_idx (exclusive), shape: where each variable lies in a row;
                     TensorFlow layouts, HWIO for convolution kernels and (in, out) for dense kernels

Download: https://storage.cloud.google.com/gresearch/smallcnnzoo-dataset/<dataset>.tar.xz (mnist,
fashion_mnist, cifar10, svhn_cropped; from google-research/dnn_predict_accuracy), extracted.

Only checkpoints at one step are kept (86, the end of training, by default), or every checkpoint
(``step="all"``, with the step as a target; all checkpoints of one network share its split). The
canonical split of NFN, Neural Graphs and ScaleGMN (``splits="nfn"``) needs NFN's per-dataset index
CSV (``experiments/predict_gen_data_splits/<dataset>_split.csv`` in AllanYangZhou/nfn) copied into
the directory: networks are then numbered in its order (see :func:`nfn_split`). Kernels are
transposed to PyTorch's (out, in, h, w) and (out, in) and named conv1, conv2, ... and fc, as the
``small-cnn`` recipe (:mod:`sne.zoo.cnn`) names them. Networks with non-finite weights or accuracies
(diverged runs) are kept with ``diverged: True``, which keeps them out of every split and counts
them in the manifest (see :mod:`sne.zoo.format`). As in ``small-cnn``
zoos, each network's hidden activation is the class column ``activation`` (an index into
``("relu", "tanh")``, read from ``config.activation``) when the metadata names only those two.
"""

from __future__ import annotations

import gzip
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sne.errors import SneError, one_line
from sne.weights.record import NetworkRecord, make_layer
from sne.zoo.cnn_nets import ACTIVATIONS
from sne.zoo.format import DIVERGED, Zoo
from sne.zoo.importing import ImportedZoo, read_table, seeded_group_splits, write_imported

RECIPE = "unterthiner-import"
FINAL_STEP = 86
WEIGHTS, METRICS, LAYOUT = "weights.npy", "metrics.csv.gz", "layout.csv"
METRIC_COLUMNS = ("modeldir", "step", "test_accuracy", "train_accuracy", "test_loss", "train_loss")


@dataclass(frozen=True)
class LayerSlice:
    """One layer in a flat weight row: its kernel and bias ranges and TensorFlow shapes."""

    name: str
    kernel: tuple[int, int, tuple[int, ...]]
    bias: tuple[int, int, tuple[int, ...]]

    @property
    def is_conv(self) -> bool:
        return len(self.kernel[2]) == 4

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = self.kernel[2]
        return (shape[3], shape[2], shape[0], shape[1]) if self.is_conv else (shape[1], shape[0])

    def weight(self, flat: np.ndarray) -> torch.Tensor:
        """Kernels of rows ``flat`` (n, width) in PyTorch layout (n, *torch_shape)."""
        start, end, shape = self.kernel
        kernel = torch.from_numpy(np.ascontiguousarray(flat[:, start:end])).reshape(len(flat), *shape)
        order = (0, 4, 3, 1, 2) if self.is_conv else (0, 2, 1)  # HWIO -> OIHW, (in, out) -> (out, in)
        return kernel.permute(order).contiguous()

    def bias_values(self, flat: np.ndarray) -> torch.Tensor:
        start, end, _ = self.bias
        return torch.from_numpy(np.ascontiguousarray(flat[:, start:end]))


def read_layout(path: Path, width: int) -> list[LayerSlice]:
    """Layers of ``layout.csv`` in weight-row order; :class:`SneError` naming the file if inconsistent."""
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise SneError(f"{path} is missing") from None
    except Exception as error:  # pandas raises several types for unreadable CSV
        raise SneError(f"{path} is unreadable ({one_line(error)})") from None
    missing = [c for c in ("varname", "start_idx", "end_idx", "shape") if c not in table.columns]
    if missing:
        raise SneError(f"{path} lacks column(s) {', '.join(missing)}")
    bounds = table[["start_idx", "end_idx"]].apply(pd.to_numeric, errors="coerce")
    if not table.shape[0] or bounds.isna().any().any() or (bounds % 1 != 0).any().any():
        raise SneError(f"{path}: start_idx and end_idx must be whole numbers on every row")
    entries = []
    for row in table.itertuples(index=False):
        shape = tuple(int(d) for d in re.findall(r"\d+", str(row.shape)))
        start, end = int(row.start_idx), int(row.end_idx)
        if end - start != int(np.prod(shape)) or not shape:
            raise SneError(f"{path}: {row.varname} spans {start}..{end} but its shape {shape} has {int(np.prod(shape))} values")
        layer, _, variable = str(row.varname).rpartition("/")
        entries.append((start, end, layer, variable.split(":")[0], shape, row.varname))
    entries.sort()
    position = 0
    for start, end, *_, varname in entries:
        if start != position:
            problem = "overlaps the previous variable" if start < position else f"leaves a gap at {position}"
            raise SneError(f"{path}: {varname} starts at {start} and {problem}")
        position = end
    if position != width:
        raise SneError(f"{path}: the variables cover {position} values but rows of {WEIGHTS} have {width}")

    parts: dict[str, dict[str, tuple]] = {}
    for start, end, layer, variable, shape, varname in entries:
        if variable not in ("kernel", "bias") or variable in parts.setdefault(layer, {}):
            raise SneError(f"{path}: unexpected variable {varname} (each layer needs one kernel:0 and one bias:0)")
        parts[layer][variable] = (start, end, shape)
    layers, convs, denses = [], 0, 0
    for layer, variables in parts.items():  # insertion order = weight-row order
        if set(variables) != {"kernel", "bias"}:
            raise SneError(f"{path}: layer {layer} lacks a {'kernel' if 'bias' in variables else 'bias'}")
        kernel, bias = variables["kernel"], variables["bias"]
        if len(kernel[2]) not in (2, 4) or bias[2] != (kernel[2][-1],):
            raise SneError(f"{path}: layer {layer} has kernel shape {kernel[2]} and bias shape {bias[2]}")
        if len(kernel[2]) == 4:
            if denses:
                raise SneError(f"{path}: convolution {layer} comes after a dense layer")
            convs += 1
            name = f"conv{convs}"
        else:
            denses += 1
            name = f"fc{denses}"
        layers.append(LayerSlice(name, kernel, bias))
    if denses == 1:  # the published architecture: one dense layer, named as the small-cnn recipe does
        layers[-1] = LayerSlice("fc", layers[-1].kernel, layers[-1].bias)
    return layers


def read_weights(path: Path) -> np.ndarray:
    """``weights.npy`` memory-mapped (rows are read only when selected)."""
    if not path.is_file():
        raise SneError(f"{path} is missing")
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise SneError(f"{path} is not a .npy file")
    try:
        weights = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # numpy raises ValueError, OSError, ... for damaged files
        raise SneError(f"{path} is unreadable as a .npy array ({one_line(error)})") from None
    if weights.ndim != 2 or weights.dtype.kind != "f":
        raise SneError(f"{path} holds a {weights.dtype} array of shape {weights.shape}, not float rows")
    return weights


def read_metrics(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SneError(f"{path} is missing")
    try:
        metrics = pd.read_csv(path, compression="gzip")
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as error:
        raise SneError(f"{path} is unreadable ({one_line(error)})") from None
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise SneError(f"{path} lacks column(s) {', '.join(missing)}")
    return metrics


def _activation_classes(metrics: pd.DataFrame) -> np.ndarray | None:
    """Indices into :data:`ACTIVATIONS` of ``config.activation``; ``None`` if absent or another name appears."""
    if "config.activation" not in metrics.columns:
        return None
    names = metrics["config.activation"].astype(str).str.lower()
    if not names.isin(ACTIVATIONS).all():
        return None
    return names.map(ACTIVATIONS.index).to_numpy(dtype=np.int64)


def parse_unterthiner(directory: str | Path, *, step: int | str = FINAL_STEP, splits: str | None = None,
                      seed: int = 0) -> ImportedZoo:
    """The networks at ``step`` (a step number, or ``"all"``: every checkpoint) of the published zoo
    in ``directory``. ``splits``: ``None`` for a split seeded by ``seed`` (per network: all checkpoints
    of one network share it), ``"nfn"`` for the canonical split of NFN / Neural Graphs / ScaleGMN from
    the one ``*_split.csv`` in ``directory``, or the path of such a CSV (see :func:`nfn_split`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SneError(f"{directory} is not a directory")
    weights_path, metrics_path = directory / WEIGHTS, directory / METRICS
    weights = read_weights(weights_path)
    metrics = read_metrics(metrics_path)
    if len(metrics) != len(weights):
        raise SneError(f"{metrics_path} has {len(metrics)} rows but {weights_path} has {len(weights)}")
    layers = read_layout(directory / LAYOUT, weights.shape[1])
    steps = pd.to_numeric(metrics["step"], errors="coerce").to_numpy()

    canonical = None
    if splits is not None:
        order, by_row = nfn_split(_split_csv(directory, splits), steps, FINAL_STEP)
        modeldirs = metrics["modeldir"].astype(str).to_numpy()
        canonical = {modeldirs[row]: name for row, name in by_row.items()}
    else:
        order = np.arange(len(metrics))
    if step == "all":
        selected = order[np.isfinite(steps[order])]
    else:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise SneError(f"--step {step!r}: expected a training step (a whole number) or 'all'")
        selected = order[steps[order] == step]
        if not len(selected):
            found = sorted(set(int(s) for s in steps[np.isfinite(steps)]))
            raise SneError(f"{metrics_path} has no checkpoints at step {step} (steps present: {found})")
    chosen = metrics.iloc[selected].reset_index(drop=True)
    accuracies = chosen[["test_accuracy", "train_accuracy"]].apply(pd.to_numeric, errors="coerce").to_numpy()
    # Non-finite weights show only when a shard's rows are read (load below), which flags them too.
    finite = np.isfinite(accuracies).all(axis=1)
    if not finite.any():
        raise SneError(f"{weights_path}: all {len(selected)} networks at step {step} have non-finite weights or accuracies")

    chosen.insert(0, "source_row", selected)
    chosen[DIVERGED] = ~finite
    chosen["generalization_gap"] = chosen["train_accuracy"].astype(float) - chosen["test_accuracy"].astype(float)
    activation = _activation_classes(chosen)
    if activation is not None:
        chosen["activation"] = activation
    rows = chosen.to_dict("records")

    networks = chosen["modeldir"].astype(str).to_numpy()
    if canonical is not None:
        missing = sorted(set(networks) - set(canonical))
        if missing:
            raise SneError(f"{metrics_path}: network {missing[0]} has no step-{FINAL_STEP} checkpoint, which the "
                           f"canonical split places")
        split_names = [canonical[network] for network in networks]
    elif step == "all":
        # Every checkpoint of a network goes where the network goes: no network straddles splits.
        split_names = seeded_group_splits(networks.tolist(), seed)
    else:
        split_names = None

    names = [ACTIVATIONS[int(a)] for a in activation] if activation is not None else [None] * len(rows)

    def load(ids: np.ndarray) -> list[NetworkRecord]:
        """Records of networks ``ids``: their rows of the memory-mapped weights, a shard at a time."""
        flat = np.asarray(weights[selected[ids]], dtype=np.float32)
        records = []
        for values, i in zip(flat, ids.tolist()):
            values = values[None]
            if not np.isfinite(values).all():
                rows[i][DIVERGED] = True
            if rows[i][DIVERGED]:
                values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            source = f"{weights_path}#{int(selected[i])}"
            record_layers = [
                make_layer(layer.name, level, layer.weight(values)[0], layer.bias_values(values)[0],
                           names[i] if level < len(layers) - 1 else "identity", source=source)
                for level, layer in enumerate(layers)
            ]
            records.append(NetworkRecord(tuple(record_layers), source=source))
        return records

    targets = {
        "test_accuracy": {"kind": "unit_interval", "description": "accuracy on the dataset's test split"},
        "generalization_gap": {"kind": "regression", "description": "train_accuracy - test_accuracy"},
    }
    if step == "all":
        targets["step"] = {"kind": "regression", "description": "training step (epoch) of the checkpoint"}
        for row in rows:
            row["step"] = float(row["step"])
    if activation is not None:
        targets["activation"] = {"kind": "class", "num_classes": len(ACTIVATIONS), "classes": list(ACTIVATIONS),
                                 "description": "activation, stored as the index into classes"}
    dataset = {
        "source": "Unterthiner et al. 2020, 'Predicting Neural Network Accuracy from Weights', small CNN zoo",
        "directory": str(directory.resolve()),
        "step": step if step == "all" else int(step),
        "splits": "seeded" if splits is None else f"canonical NFN split ({_split_csv(directory, splits)})",
    }
    if "config.dataset" in chosen.columns:
        dataset["datasets"] = sorted(chosen["config.dataset"].astype(str).unique().tolist())
    options = {"source": str(directory.resolve()), "step": dataset["step"], "splits": splits or "seeded"}
    hidden = {layer.name: "activation" for layer in layers[:-1]} if activation is not None else {}
    files = [weights_path, metrics_path, directory / LAYOUT, *([_split_csv(directory, splits)] if splits else [])]
    return ImportedZoo(RECIPE, options, None, rows, targets, dataset, splits=split_names, activation_from=hidden,
                       load=load, files=files, source=str(weights_path))


def _split_csv(directory: Path, splits: str) -> Path:
    """The NFN split CSV that ``--splits`` names: ``nfn`` (the one ``*_split.csv`` in ``directory``) or a path."""
    if splits != "nfn":
        path = Path(splits)
        if not path.is_file():
            raise SneError(f"--splits {splits}: no such file (expected 'nfn' or the path of NFN's <dataset>_split.csv)")
        return path
    found = sorted(directory.glob("*_split.csv"))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise SneError(f"{directory}: --splits nfn needs exactly one NFN split file *_split.csv there (found {what}); "
                       f"copy NFN's experiments/predict_gen_data_splits/<dataset>_split.csv, or pass its path")
    return found[0]


def nfn_split(path: Path, steps: np.ndarray, final_step: int = FINAL_STEP) -> tuple[np.ndarray, dict[int, str]]:
    """The canonical split of NFN (Zhou et al. 2023), used by Neural Graphs and ScaleGMN: the rows of
    ``weights.npy`` in the order of the headerless index CSV at ``path``, of which the ``final_step``
    ones are numbered 0..n-1; the last half (from ``int(n / 2)``) is test, the first half is shuffled
    by ``random.Random(0)`` and cut at ``int(0.8 * len)`` into train and val. Returns the row order
    and the split of each ``final_step`` row (by row index of ``weights.npy``)."""
    table = read_table(path, header=None)
    values = pd.to_numeric(table.iloc[:, 0], errors="coerce") if table.shape[1] == 1 else None
    if values is None or values.isna().any() or (values % 1 != 0).any():
        raise SneError(f"{path}: expected one whole row index of weights.npy per line (NFN's split CSV)")
    order = values.to_numpy(dtype=np.int64)
    if order.min() < 0 or order.max() >= len(steps):
        raise SneError(f"{path}: index {int(order.max() if order.max() >= len(steps) else order.min())} is outside "
                       f"weights.npy's {len(steps)} rows")
    if len(np.unique(order)) != len(order):
        raise SneError(f"{path}: an index is listed twice")
    final = order[steps[order] == final_step]
    half = int(0.5 * len(final))
    trainval = list(range(half))
    cut = int(0.8 * len(trainval))
    random.Random(0).shuffle(trainval)
    names = {position: "test" for position in range(half, len(final))}
    names.update({position: "train" for position in trainval[:cut]})
    names.update({position: "val" for position in trainval[cut:]})
    return order, {int(row): names[position] for position, row in enumerate(final)}


def import_unterthiner(
    directory: str | Path,
    out: str | Path,
    *,
    step: int | str = FINAL_STEP,
    splits: str | None = None,
    seed: int = 0,
    command: str = "",
    shard_size: int = 1000,
) -> Zoo:
    """Import the networks at ``step`` of the published zoo in ``directory`` as a zoo at ``out``
    (see :func:`parse_unterthiner`)."""
    imported = parse_unterthiner(directory, step=step, splits=splits, seed=seed)
    return write_imported(imported, out, seed=seed, command=command, shard_size=shard_size)
