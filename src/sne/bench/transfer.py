"""Accuracy prediction across zoos: the paper's cross-dataset and cross-architecture benchmarks.

Every (encoder, seed, training zoo) is trained once with the shared training code and then
evaluated on the test split of every test zoo; Kendall's tau between predicted and true targets is
the score. Cross-dataset: the training zoos are the test zoos (the paper's 4x4 table). Cross-
architecture: train on small-cnn zoos, test on zoos of an architecture never seen in training.
Runs live under ``runs_dir/<target>/<encoder>_seed<seed>/<training zoo>`` and resume when the
command is repeated, so the two benchmarks share runs trained on the same zoo with the same
settings; evaluations are recomputed every time. Rows go to ``results/<name>.json``, the
benchmark's own name unless the caller names a transfer study of its own (say ``vit`` for small
CNNs -> ViTs), so one study never takes over another's file.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sne.bench.paper import published_tau
from sne.errors import CannotRead, SneError
from sne.io_utils import bounded_path
from sne.bench.results import check_mergeable, targets_digest, write_merged, zoo_identity, zoo_label, zoo_summary
from sne.bench.runs import TUNED_TRAINING, BenchRuns, configuration_name, options_key
from sne.plots import scatter_grid, embedding_map
from sne.train.evaluate import evaluate_run
from sne.train.run import fit, hardware_description, load_run, resolve_device
from sne.zoo import Zoo

BENCHMARKS = ("cross_dataset", "cross_arch")


def check_results_name(name: str) -> str:
    """``name`` if it can be a results file's stem (``results/<name>.json``), else :class:`SneError`."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or ""):
        raise SneError(f"results name {name!r} must be a plain file stem: letters, digits, '_' and '-', "
                       f"starting with a letter or digit (it names results/<name>.json)")
    if name.startswith("zoo_"):  # results/zoo_*.json are zoo summaries (scripts/make_results_md.py)
        raise SneError(f"results name {name!r} must not start with 'zoo_', which names zoo summaries")
    return name


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _each_zoo_once(*groups: Sequence[Zoo]) -> list[Zoo]:
    """The zoos of ``groups``, each label once (a cross-dataset table's training zoos are its test zoos)."""
    return list({zoo_label(z): z for group in groups for z in group}.values())


def _open_unique(paths: Sequence[str | Path]) -> list[Zoo]:
    zoos = [Zoo.open(p) for p in paths]
    labels = [zoo_label(z) for z in zoos]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise SneError(f"two zoos share the label {duplicated[0]} (same recipe and dataset); pass each zoo once")
    return zoos


def _evaluate_everywhere(run_dir: Path, test_zoos: list[Zoo], device: str, test_time_flips: int | None) -> dict:
    """Kendall's tau and friends of one trained run on the test split of every test zoo, predicted
    with ``test_time_flips`` sign-flipped copies per network (None: the run's setting)."""
    evaluations = {}
    for zoo in test_zoos:
        label = zoo_label(zoo)
        try:
            # Transfer tables report ranking and error only: the sensitivities took 85% of the time (ViT zoo).
            result = evaluate_run(run_dir, zoo.path, device=device, out=run_dir / f"eval_{_safe(label)}.json", plot=False,
                                  test_time_flips=test_time_flips, sensitivity=False)
        except SneError as error:
            # A fixed-architecture encoder cannot read another architecture: a real limitation, so record it.
            evaluations[label] = {"error": str(error)}
            continue
        metrics = result["metrics"]
        evaluations[label] = {
            "kendall_tau": metrics.get("kendall_tau"),
            "mse": metrics.get("mse"),
            "normalized_mse": metrics.get("normalized_mse"),
            "n": metrics.get("n"),
        }
    return evaluations


def _plots(run_dir: Path, train_label: str, test_zoos: list[Zoo], device: str, stem: Path, caption: str,
           test_time_flips: int | None, max_per_zoo: int = 300) -> dict:
    """One predicted-vs-true panel per test zoo (predicted as :func:`_evaluate_everywhere` does) and a
    2-D map of the encodings coloured by zoo."""
    run = load_run(run_dir, device=device, test_time_flips=test_time_flips)
    panels, codes, groups = [], [], []
    for zoo in test_zoos:
        ids = zoo.split_ids("test")
        records = zoo.records(ids)
        try:
            predicted = run.predictor.predict(records)
        except SneError:
            continue
        true = zoo.target_values(run.config.target, ids)
        panels.append((zoo_label(zoo), predicted, true))
        chosen = np.random.default_rng(0).permutation(len(records))[:max_per_zoo]
        codes.append(run.predictor.embed([records[i] for i in chosen]))
        groups += [zoo_label(zoo)] * len(chosen)
    out = {}
    if panels:
        title = f"{run.config.encoder} trained on {train_label}: predicted vs true {run.config.target} (test splits)"
        out["scatter"] = str(scatter_grid(panels, stem.with_name(stem.name + "_scatter.png"), title, caption))
        title = f"{run.config.encoder} trained on {train_label}: encodings of test networks (t-SNE)"
        out["embedding"] = str(embedding_map(np.concatenate(codes), groups, stem.with_name(stem.name + "_tsne.png"),
                                             title, caption))
    return out


#: Training-free statistics of a network's weights that a table sets beside the encoders: how far one
#: number read off the weights ranks the test networks (their sign can be checked on every zoo alike).
REFERENCE_STATISTICS = {
    "output_weight_norm": "norm of the output layer's weights (the deepest level's layers)",
    "largest_weight": "largest absolute weight or bias",
}


def _reference_values(record) -> dict[str, float]:
    deepest = max(layer.level for layer in record.layers)
    output = [layer.weight for layer in record.layers if layer.level == deepest]
    tensors = [t for layer in record.layers for t in (layer.weight, layer.bias) if t is not None]
    return {"output_weight_norm": float(sum(w.double().square().sum() for w in output) ** 0.5),
            "largest_weight": float(max(t.abs().max() for t in tensors))}


def statistic_references(zoos: Sequence[Zoo], target: str, batch: int = 100) -> dict[str, dict[str, float | None]]:
    """Per zoo label, per :data:`REFERENCE_STATISTICS` name: Kendall's tau between the statistic and
    ``target`` over the zoo's test split (``None`` where either is constant)."""
    from scipy.stats import kendalltau

    references = {}
    for zoo in zoos:
        ids = zoo.split_ids("test")
        values: dict[str, list[float]] = {name: [] for name in REFERENCE_STATISTICS}
        for first in range(0, len(ids), batch):  # a batch of records at a time: large zoos stay in bounds
            for record in zoo.records(ids[first:first + batch]):
                for name, value in _reference_values(record).items():
                    values[name].append(value)
        truth = zoo.metadata.set_index("id").loc[ids, target].to_numpy(dtype=np.float64)
        taus = {name: kendalltau(v, truth).statistic for name, v in values.items()}
        references[zoo_label(zoo)] = {name: None if not np.isfinite(t) else float(t) for name, t in taus.items()}
    return references


def run_transfer_benchmark(
    benchmark: str,
    train_zoos: Sequence[str | Path],
    test_zoos: Sequence[str | Path],
    runs: BenchRuns,
    target: str = "test_accuracy",
    name: str | None = None,
) -> Path:
    """Train on each training zoo, score on every test zoo; write ``results/<name>.json`` (``name``
    defaults to ``benchmark``), merged with the rows it holds on the same zoos and target."""
    if benchmark not in BENCHMARKS:
        raise SneError(f"unknown benchmark '{benchmark}' (expected one of {', '.join(BENCHMARKS)})")
    name = check_results_name(benchmark if name is None else name)
    trains, tests = _open_unique(train_zoos), _open_unique(test_zoos)
    for zoo in trains + tests:
        if target not in zoo.targets:
            raise SneError(f"the zoo at {zoo.path} has no target '{target}' (it has: {', '.join(sorted(zoo.targets))})")
    device, command, epochs = runs.device, runs.command, runs.epochs
    path = runs.results_dir / f"{name}.json"
    described = {
        "benchmark": benchmark,
        "name": name,
        "command": command,
        "target": target,
        "target_kind": trains[0].targets[target].get("kind"),
        "epochs": epochs,
        "seeds": list(runs.seeds),
        "encoders": list(runs.encoders),
        "train_zoos": [zoo_summary(z) for z in trains],
        "test_zoos": [zoo_summary(z) for z in tests],
        "references": statistic_references(_each_zoo_once(trains, tests), target),
    }
    # Refused before any training, not after hours of it (write_merged checks again under its lock).
    check_mergeable(path, described, _same_data)
    entries = []
    for encoder in runs.encoders:
        for seed in runs.seeds:
            for train_zoo in trains:
                train_label = zoo_label(train_zoo)
                # Keyed by what is trained, not by benchmark: cross-arch reuses cross-dataset's runs.
                run_dir = bounded_path(runs.runs_dir / _safe(target) / f"{runs.run_name(encoder)}_seed{seed}") / _safe(train_label)
                config = runs.train_config(encoder, train_zoo.path, target, seed)
                started = time.perf_counter()
                try:
                    summary = fit(config, run_dir)
                except CannotRead as error:
                    # The encoder cannot take the training zoo (a mixed zoo, a layer kind it does not
                    # read): that is a result of the table, not a reason to stop the others.
                    entries.append(_cannot_train(encoder, runs, config, seed, train_label, str(error),
                                                 [train_zoo, *tests]))
                    continue
                # What the run asks of its test networks: none where "auto" chose no sign flips.
                flips = summary["test_time_flips"]
                entry = {
                    **runs.trained_run_fields(encoder, run_dir, summary),
                    **_training_settings(config),
                    "test_time_flips": flips,
                    "seed": seed,
                    "train_zoo": train_label,
                    "evaluations": _evaluate_everywhere(run_dir, tests, device, flips),
                    "zoo_digests": {zoo_label(z): targets_digest(z) for z in [train_zoo, *tests]},
                }
                if runs.plots:
                    stem = runs.results_dir / "plots" / f"{name}_{runs.plot_name(encoder, seed, summary)}_{_safe(train_label)}"
                    caption = (f"train zoo {train_label} ({train_zoo.command}); test splits of "
                               f"{', '.join(zoo_label(z) for z in tests)}; {encoder}, seed {seed}, {epochs} epochs; "
                               f"{entry['hardware']['device']}, {entry['hardware']['threads']} thread(s); "
                               f"command: {command}")
                    entry["plots"] = _plots(run_dir, train_label, tests, device, stem, caption, flips)
                entry["wall_seconds_this_invocation"] = time.perf_counter() - started
                entries.append(entry)
    result = {
        **described,
        "entries": entries,
        "paper": published_tau(benchmark, name),
    }
    return write_merged(path, result, _same_data,
                        lambda e: (e["encoder"], options_key(e), e["seed"], e["train_zoo"]),
                        finish=lambda merged: {**merged, "summary": summarize(merged["entries"])})


def reevaluate_transfer(path: str | Path, encoders: Sequence[str], device: str, command: str,
                        plots: bool = True) -> tuple[Path, list[str]]:
    """Evaluate again, from their saved runs, the rows of ``encoders`` in the transfer results file
    ``path`` on its test zoos, after a change to inference that leaves training as it was (each row
    then names ``command`` in ``reevaluated_by``), and compute its :func:`statistic_references` again;
    return the path and the runs that are gone, whose rows are left as they were."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        header = {k: v for k, v in data.items() if k not in ("entries", "commands", "summary")}
        trains = _open_unique([zoo["path"] for zoo in data["train_zoos"]])
        tests = _open_unique([zoo["path"] for zoo in data["test_zoos"]])
        header["references"] = statistic_references(_each_zoo_once(trains, tests), data["target"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SneError(f"{path}: not a transfer benchmark's results ({type(error).__name__}: {error})") from None
    redone, gone = [], []
    for entry in data["entries"]:
        if entry["encoder"] not in encoders or "cannot_train" in entry:
            continue
        run_dir = Path(entry["run"])
        if not (run_dir / "best.pt").exists():
            gone.append(str(run_dir))
            continue
        fresh = {**entry, "evaluations": _evaluate_everywhere(run_dir, tests, device, entry.get("test_time_flips")),
                 "reevaluated_by": command,
                 "zoo_digests": {**entry.get("zoo_digests", {}), **{zoo_label(z): targets_digest(z) for z in tests}}}
        if plots and entry.get("plots", {}).get("scatter"):
            stem = Path(entry["plots"]["scatter"].removesuffix("_scatter.png"))
            caption = (f"train zoo {entry['train_zoo']}; test splits of {', '.join(zoo_label(z) for z in tests)}; "
                       f"{entry['encoder']}, seed {entry['seed']}, {entry['epochs']} epochs; re-evaluated by: {command}")
            fresh["plots"] = _plots(run_dir, entry["train_zoo"], tests, device, stem, caption,
                                    entry.get("test_time_flips"))
        redone.append(fresh)
    path = write_merged(path, {**header, "command": command, "entries": redone}, _same_data,
                        lambda e: (e["encoder"], options_key(e), e["seed"], e["train_zoo"]),
                        finish=lambda merged: {**merged, "summary": summarize(merged["entries"])})
    return path, gone


def _training_settings(config) -> dict:
    """The training settings a row records, trained or not, so that both are labelled alike
    (:func:`~sne.bench.runs.training_switches` reads them back)."""
    return {"permutation_augment": config.permutation_augment, "max_train": config.max_train,
            **{name: getattr(config, name) for name in TUNED_TRAINING}}


def _cannot_train(encoder: str, runs: BenchRuns, config, seed: int, train_label: str, reason: str,
                  zoos: list[Zoo]) -> dict:
    """The row of an encoder that refused its training zoo: every cell says why."""
    return {
        "encoder": encoder,
        "encoder_options_given": runs.options_for(encoder),
        **_training_settings(config),
        "seed": seed,
        "train_zoo": train_label,
        "cannot_train": reason,
        "encoder_parameters": None,
        "epochs": config.epochs,
        "train_seconds": None,
        "hardware": hardware_description(resolve_device(runs.device)),
        "evaluations": {zoo_label(z): {"error": reason} for z in zoos[1:]},
        "zoo_digests": {zoo_label(z): targets_digest(z) for z in zoos},
    }


def _same_data(result: dict) -> tuple:
    return (result["target"], [zoo_identity(z) for z in result["train_zoos"]],
            [zoo_identity(z) for z in result["test_zoos"]])


def summarize(entries: Sequence[dict]) -> dict:
    """Per configuration (:func:`~sne.bench.runs.configuration_name`): tau[train][test] averaged over seeds (with std), and each row's mean over test zoos."""
    summary: dict = {}
    for entry in entries:
        cell = summary.setdefault(configuration_name(entry), {}).setdefault(entry["train_zoo"], {})
        for test_label, evaluation in entry["evaluations"].items():
            cell.setdefault(test_label, []).append(evaluation.get("kendall_tau"))
    out = {}
    for encoder, rows in summary.items():
        table = {}
        for train_label, cells in rows.items():
            row = {}
            for test_label, taus in cells.items():
                values = [t for t in taus if t is not None]
                row[test_label] = ({"mean": float(np.mean(values)), "std": float(np.std(values)), "seeds": len(values)}
                                   if values else None)
            scored = [v["mean"] for v in row.values() if v is not None]
            table[train_label] = {"tau": row, "average": float(np.mean(scored)) if scored else None}
        out[encoder] = table
    return out
