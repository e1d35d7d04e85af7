"""Evaluate a trained run on a zoo split: metrics, permutation sensitivity, scatter plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sne.errors import SneError
from sne.io_utils import write_json_atomic
from sne.plots import scatter_predictions
from sne.train.metrics import classification_metrics, regression_metrics
from sne.train.run import TUNED_TRAINING, check_zoo_architectures, hardware_description, load_run
from sne.weights.permute import (
    random_equivalent_permutation,
    random_sign_flips,
    supports_permutation,
    supports_sign_flips,
)
from sne.zoo import Zoo


#: Groups of a numeric column in :func:`grouped_metrics` unless asked otherwise.
DEFAULT_BINS = 5
#: The zoo's bookkeeping columns, which no breakdown is asked of.
BOOKKEEPING_COLUMNS = ("id", "split", "architecture", "position")

#: Random equivalent permutations per network in :func:`permutation_sensitivity` (the SNE paper's appendix E.3).
SENSITIVITY_PERMUTATIONS = 5


def _sensitivity(predictor, records, copy, seed: int, batch_size: int, copies: int) -> dict:
    """How much the model's own outputs (one pass, no test-time averaging) change when every network
    is replaced by ``copy(network, generator)``, over ``copies`` draws per network: the mean and
    largest absolute change in the target's units, and ``invariance_loss``, the logit-invariance
    regulariser's distance (mean squared difference of the raw head outputs)."""
    generator = torch.Generator().manual_seed(seed)
    outputs = predictor.outputs(records, batch_size, test_time_flips=0)
    before = predictor.target.decode(outputs).numpy().astype(np.float64)
    changes, squared = [], []
    for _ in range(copies):
        changed = predictor.outputs([copy(r, generator) for r in records], batch_size, test_time_flips=0)
        after = predictor.target.decode(changed).numpy().astype(np.float64)
        changes.append(np.abs(after - before))
        squared.append(float(((changed.double() - outputs.double()) ** 2).mean()))
    change = np.stack(changes)
    return {"mean_abs_change": float(change.mean()), "max_abs_change": float(change.max()),
            "invariance_loss": float(np.mean(squared)), "seed": seed}


def permutation_sensitivity(predictor, records, seed: int = 0, batch_size: int = 64,
                            permutations: int = SENSITIVITY_PERMUTATIONS) -> dict | None:
    """How much the model's outputs change when every network is replaced by random
    functionally-equivalent permutations of itself (all 0 for an exactly invariant encoder), over
    ``permutations`` draws per network (:func:`_sensitivity`). ``None`` where the records'
    symmetries are unknown."""
    if not all(supports_permutation(r) for r in records):
        return None
    return {**_sensitivity(predictor, records, random_equivalent_permutation, seed, batch_size, permutations),
            "permutations": permutations}


def sign_flip_sensitivity(predictor, records, seed: int = 0, batch_size: int = 64,
                          flips: int = SENSITIVITY_PERMUTATIONS) -> dict | None:
    """As :func:`permutation_sensitivity`, for random sign flips of neurons whose activation is odd;
    ``None`` unless every network has such neurons."""
    if not records or not all(supports_sign_flips(r) for r in records):
        return None
    return {**_sensitivity(predictor, records, random_sign_flips, seed, batch_size, flips), "flips": flips}


def metric_groups(values: pd.Series, bins: int = DEFAULT_BINS) -> list[dict]:
    """The networks of ``values`` (one per network) in groups: a numeric column with more than ``bins``
    distinct values in ``bins`` quantile bins (each ``[low, high)``, the last closed), any other column
    by value; networks without a value form a last group. Each group: ``group`` (its label), ``low``
    and ``high`` (a bin's edges, else None) and ``members``, a boolean mask over the networks."""
    missing = values.isna().to_numpy()
    present = values[~missing]
    groups = []
    if pd.api.types.is_numeric_dtype(values) and present.nunique() > bins:
        numbers = present.to_numpy(dtype=np.float64)
        edges = np.quantile(numbers, np.linspace(0, 1, bins + 1))
        which = np.full(len(values), -1)
        which[~missing] = np.clip(np.searchsorted(edges[1:-1], numbers, side="right"), 0, bins - 1)
        for b in range(bins):
            if (which == b).any():
                low, high = float(edges[b]), float(edges[b + 1])
                closing = "]" if b == bins - 1 else ")"
                groups.append({"group": f"[{low:.4g}, {high:.4g}{closing}", "low": low, "high": high,
                               "members": which == b})
    else:
        for value in sorted(present.unique(), key=lambda v: (str(type(v)), v)):
            value = value.item() if hasattr(value, "item") else value
            groups.append({"group": str(value), "low": None, "high": None,
                           "members": (values == value).to_numpy() & ~missing})
    if missing.any():
        groups.append({"group": "missing", "low": None, "high": None, "members": missing})
    return groups


def check_grouping(zoo: Zoo, column: str, bins: int) -> None:
    """:class:`SneError` unless the zoo's table has ``column`` to group by and ``bins`` is at least 2."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise SneError(f"--bins must be an integer of at least 2, got {bins!r}")
    usable = [c for c in zoo.metadata.columns if c not in BOOKKEEPING_COLUMNS]
    if column not in usable:
        raise SneError(f"{zoo.path}: no column {column!r} to group by (columns: {', '.join(usable) or 'none'})")


def grouped_metrics(zoo: Zoo, ids: np.ndarray, column: str, predicted: np.ndarray, true: np.ndarray,
                    metrics_of, bins: int = DEFAULT_BINS) -> dict:
    """``metrics_of(predicted, true)`` for each group of networks ``ids`` by the zoo's metadata
    ``column`` (:func:`metric_groups`): where an encoder's error comes from, e.g. which
    hyper-parameters or which range of the target."""
    check_grouping(zoo, column, bins)
    values = zoo.metadata.set_index("id").loc[ids, column].reset_index(drop=True)
    return {"column": column, "bins": bins,
            "groups": [{"group": g["group"], "low": g["low"], "high": g["high"],
                        **metrics_of(predicted[g["members"]], true[g["members"]])} for g in metric_groups(values, bins)]}


def _training_record(run_dir: Path) -> dict:
    """The run's training time and best validation loss, from its history (None each without one)."""
    path = run_dir / "history.json"
    if not path.exists():
        return {"train_seconds": None, "best_val_loss": None}
    history = json.loads(path.read_text())
    return {"train_seconds": sum(e["seconds"] for e in history),
            "best_val_loss": min((e["val_loss"] for e in history), default=None)}


def evaluate_run(
    run_dir: str | Path,
    zoo_path: str | Path | None = None,
    split: str = "test",
    device: str = "auto",
    out: str | Path | None = None,
    plot: bool = True,
    test_time_flips: int | None = None,
    sensitivity: bool = True,
    by: str | None = None,
    bins: int = DEFAULT_BINS,
) -> dict:
    """Evaluate ``run_dir`` on ``split`` of its own zoo (or ``zoo_path``), with ``test_time_flips``
    sign-flipped copies per network (None: the run's setting); write JSON and a plot. Without
    ``sensitivity``, the permutation and sign-flip sensitivities (six more passes over the
    networks each, most of the time an evaluation takes) are not measured: recorded as None.
    With ``by``, a metadata column of the zoo, the metrics are also given for each group of
    networks by that column (``bins`` quantile bins of a numeric one: :func:`grouped_metrics`)."""
    run = load_run(run_dir, device=device, test_time_flips=test_time_flips)
    config = run.config
    zoo = Zoo.open(zoo_path or run.zoo_path)
    ids = zoo.split_ids(split)
    target = run.target

    def metrics_of(predicted: np.ndarray, true: np.ndarray) -> dict:
        if target.kind == "class":
            return classification_metrics(predicted, true)
        return regression_metrics(predicted, true, train_mean=target.mean if target.kind == "regression" else None)

    if by is not None:  # a wrong column fails before the networks are encoded
        check_grouping(zoo, by, bins)
    records = zoo.records(ids)
    check_zoo_architectures(zoo, config.encoder, records)
    true = zoo.target_values(config.target, ids)
    predicted = run.predictor.predict(records)
    metrics = metrics_of(predicted, true)
    result = {
        "run": str(run.path),
        "zoo": str(zoo.path),
        "zoo_recipe": zoo.manifest.get("recipe"),
        "zoo_options": zoo.manifest.get("options"),
        "zoo_seed": zoo.manifest.get("seed"),
        "split": split,
        "target": config.target,
        "encoder": config.encoder,
        "encoder_parameters": sum(p.numel() for p in run.predictor.encoder.parameters()),
        # Every option the encoder was built with, defaults included: defaults may change between releases.
        "encoder_options_resolved": run.predictor.encoder.options,
        "invariance_weight": config.invariance_weight,
        "permutation_augment": config.permutation_augment,
        **{name: getattr(config, name) for name in TUNED_TRAINING},
        "test_time_flips": run.predictor.test_time_flips,
        "sign_flip_choice": run.meta.get("sign_flip_choice"),
        "train_seed": config.seed,
        "epochs": config.epochs,
        "best_epoch": run.meta.get("epoch"),
        # The best validation loss beside the trivial predictor's: a row that learned nothing says so
        # on the results page.
        **_training_record(run.path),
        "constant_val_loss": run.meta.get("constant_val_loss"),
        "metrics": metrics,
        **({"by": grouped_metrics(zoo, ids, by, np.asarray(predicted), np.asarray(true), metrics_of, bins)}
           if by is not None else {}),
        "permutation_sensitivity": permutation_sensitivity(run.predictor, records) if sensitivity else None,
        "sign_flip_sensitivity": sign_flip_sensitivity(run.predictor, records) if sensitivity else None,
        "hardware": hardware_description(run.predictor.device),
        "train_command": config.command,
    }
    out_path = Path(out) if out else run.path / "eval.json"
    if plot and target.kind != "class":
        options = zoo.manifest.get("options", {})
        caption = (
            f"{zoo.manifest.get('recipe')} zoo {zoo.path.name} (n={len(zoo)}, seed {zoo.manifest.get('seed')}, "
            f"init {options.get('init', 'n/a')}), {split} split; {config.encoder}, train seed {config.seed}, "
            f"lambda {config.invariance_weight}; {result['hardware']['device']}, {result['hardware']['threads']} "
            f"thread(s); command: {config.command}"
        )
        title = (f"{config.encoder} on {config.target}: MSE {metrics['mse']:.3g}, "
                 f"normalized {metrics['normalized_mse']:.3g}, tau {metrics['kendall_tau']:.3f}")
        plot_path = scatter_predictions(predicted, true, out_path.with_name(out_path.stem + "_scatter.png"), title, caption)
        result["plot"] = str(plot_path)
    write_json_atomic(out_path, result)
    result["path"] = str(out_path)
    return result
