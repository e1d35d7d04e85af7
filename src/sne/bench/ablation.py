"""SNE's ablations on one zoo (the SNE paper's Tables 6 and 7 and Figure 3, and our additions).

A *study* is a list of rows; each row is SNE (or, for data efficiency, a peer) with some options
changed from a base configuration: the encoder options given with ``-o``, the base invariance
weight and the number of training networks (``max_train``, for subset sweeps). Every row is
trained for the same epochs and seeds with the shared training code, evaluated on the test split
(including the permutation sensitivity and the held-out logit-invariance loss), and merged into
``results/ablation_<study>_<init>.json``. Runs resume when the command is repeated.

Studies (:data:`STUDIES`):

- ``components``: full SNE, then one part removed per row (the paper's Table 6), then the parts we
  added switched off or on (layer standardisation, batch norm after pooling, chunk-index and
  row-slot encodings, source and own-neuron features, input positions, the chunk stage's width,
  canonical order, learned source codes, neuron gains, batch-norm statistics re-estimated after
  every epoch); a row equal to the base is listed, not trained again.
- ``chunk-size``: chunk sizes 4, 8, 16, 32 and 64 (Table 7).
- ``invariance``: the logit-invariance weight lambda at 0, 0.3, 1, 3 and 10 (and 1 on the network
  codes instead of the outputs), permutation
  augmentation alone and with lambda 1, and with sign flips of neurons whose activation is odd
  (alone, and with lambda 1, whose copies are then flipped too), each evaluated as it is and with
  predictions averaged over sign-flipped copies (rows that share their runs), and with those flips
  removed by canonical signs instead (the SNE option ``canonical_signs``).
- ``data-fraction``: test error against the fraction of training networks used, for SNE and its
  peers (Figure 3), with a plot.
- ``training``: how SNE is trained: learning rate, schedule (multi-step with early or late cuts, or
  cosine, with and without warm-up), batch size (more steps in the same epochs).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from sne.bench.paper import PAPER_SNE_ABLATION_MSE, PAPER_SNE_CHUNK_SIZE_MSE
from sne.bench.results import check_mergeable, write_merged, zoo_identity, zoo_summary
from sne.bench.runs import BEFORE_IT_EXISTED, BenchRuns, built_otherwise, options_tag
from sne.encoders import get_encoder_class
from sne.encoders.sne import DEFAULT_OPTIONS as SNE_DEFAULT_OPTIONS, PRESETS as SNE_PRESETS
from sne.errors import SneError
from sne.plots import error_curves
from sne.train.evaluate import evaluate_run
from sne.train.run import (
    EVALUATION_FIELDS,
    SIGN_FLIPS_AUTO,
    TRAIN_DEFAULTS,
    TrainConfig,
    check_max_train,
    choose_sign_flips,
    fit,
    train_flag,
)
from sne.zoo import Zoo


@dataclass(frozen=True)
class AblationRow:
    """One configuration of a study: ``options`` and ``train`` (TrainConfig fields) change the base;
    ``fraction`` of the base's training networks (None: all); ``paper`` is the paper's number."""

    name: str
    label: str
    encoder: str = "sne"
    options: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    fraction: float | None = None
    paper: float | None = None


_POSITIONAL = {"use_type_encoding": False, "use_level_encoding": False, "use_chunk_index_encoding": False,
               "use_row_slot_encoding": False, "use_hierarchy": False}

#: The fractions of training networks in the data-fraction study (the paper's Figure 3).
DATA_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
#: The encoders of the data-fraction study by default (the paper's Figure 3).
DATA_FRACTION_ENCODERS = ("sne", "dwsnet", "nft", "ng_gnn")


#: Preset fast's options as its rows' labels spell them.
_FAST_LABEL = ", ".join(f"{k}={v}" for k, v in SNE_PRESETS["fast"].items())


def _components() -> list[AblationRow]:
    paper = PAPER_SNE_ABLATION_MSE
    return [
        AblationRow("full", "full SNE", paper=paper["full"]),
        AblationRow("no-invariance", "without invariance regularisation or augmentation",
                    train={"invariance_weight": 0.0, "permutation_augment": False, "sign_flip_augment": False},
                    paper=paper["no-invariance"]),
        AblationRow("no-type-encoding", "without layer-type encoding", options={"use_type_encoding": False},
                    paper=paper["no-type-encoding"]),
        AblationRow("no-level-encoding", "without layer-level encoding", options={"use_level_encoding": False},
                    paper=paper["no-level-encoding"]),
        AblationRow("no-set-functions", "without set functions (MLPs and mean pooling)",
                    options={"use_set_functions": False}, paper=paper["no-set-functions"]),
        AblationRow("no-positional-hierarchy", "without positional and hierarchical encoding", options=_POSITIONAL,
                    paper=paper["no-positional-hierarchy"]),
        AblationRow("no-layer-standardisation", "ours: without layer standardisation",
                    options={"standardize_layers": False}),
        AblationRow("no-batch-norm", "ours: without batch norm after pooling", options={"batch_norm": False}),
        AblationRow("no-chunk-index-encoding", "ours: without chunk-index encoding",
                    options={"use_chunk_index_encoding": False}),
        AblationRow("no-row-slot-encoding", "ours: without row-slot encoding", options={"use_row_slot_encoding": False}),
        AblationRow("no-order-encodings", "ours: without chunk-index and row-slot encodings (no neuron order read)",
                    options={"use_chunk_index_encoding": False, "use_row_slot_encoding": False}),
        AblationRow("source-features", "ours: with source features", options={"use_source_features": True}),
        AblationRow("input-positions", "ours: with input positions", options={"use_input_positions": True}),
        AblationRow("own-neuron-features", "ours: with own-neuron features", options={"use_own_neuron_features": True}),
        AblationRow("neuron-features", "ours: with source and own-neuron features",
                    options={"use_source_features": True, "use_own_neuron_features": True}),
        AblationRow("no-source-features", "ours: without source features", options={"use_source_features": False}),
        AblationRow("no-own-neuron-features", "ours: without own-neuron features",
                    options={"use_own_neuron_features": False}),
        AblationRow("full-width-chunks", "ours: chunk stage at the full width (chunk_hidden=null)",
                    options={"chunk_hidden": None}),
        AblationRow("narrow-chunks", "ours: chunk stage at half the width (chunk_hidden=32)", options={"chunk_hidden": 32}),
        AblationRow("fast", "ours: as preset fast, the chunk stage at half the width and depth ("
                    + _FAST_LABEL + ")",
                    options=dict(SNE_PRESETS["fast"])),
        AblationRow("full-width-chunk-sab-1", "ours: chunk stage at the full width with one SAB in each set-to-set step "
                    "(chunk_hidden=null, chunk_sab=1)", options={"chunk_hidden": None, "chunk_sab": 1}),
        AblationRow("post-layer-norm", "ours: LayerNorm after each residual sum of the set blocks (layer_norm=post, "
                    "the Set Transformer's)", options={"layer_norm": "post"}),
        AblationRow("pre-layer-norm", "ours: LayerNorm on the inputs of each set block's branches (layer_norm=pre)",
                    options={"layer_norm": "pre"}),
        AblationRow("full-width-pre-layer-norm", "ours: chunk stage at the full width, LayerNorm on the inputs of "
                    "each set block's branches (chunk_hidden=null, layer_norm=pre)",
                    options={"chunk_hidden": None, "layer_norm": "pre"}),
        AblationRow("fast-pre-layer-norm", "ours: as preset fast, LayerNorm on the inputs of each set block's "
                    "branches (" + _FAST_LABEL + ", layer_norm=pre)",
                    options={**SNE_PRESETS["fast"], "layer_norm": "pre"}),
        AblationRow("canonical-order", "ours: with canonical neuron order", options={"canonical_order": True}),
        AblationRow("source-codes", "ours: with learned source codes (2 rounds)", options={"source_code_rounds": 2}),
        AblationRow("unordered-source-codes", "ours: with learned source codes (2 rounds), without chunk-index and "
                    "row-slot encodings", options={"source_code_rounds": 2, "use_chunk_index_encoding": False,
                                                   "use_row_slot_encoding": False}),
        AblationRow("no-neuron-gains", "ours: without neuron gains", options={"use_neuron_gains": False}),
        AblationRow("preserved-chunk-scale", "ours: narrow chunk stage's codes projected to hidden by a "
                    "variance-preserving initialisation (preserve_chunk_scale=true)", options={"preserve_chunk_scale": True}),
        AblationRow("chunk-sab-1", "ours: one SAB in each chunk set-to-set step (chunk_sab=1; half the chunk stage)",
                    options={"chunk_sab": 1}),
        AblationRow("pool-seeds-4", "ours: four PMA seeds in every pooling stage, merged by a linear map (pool_seeds=4)",
                    options={"pool_seeds": 4}),
        AblationRow("pool-statistics", "ours: every pooling stage also takes its set's mean, max, min and standard "
                    "deviation (pool_statistics=true)", options={"pool_statistics": True}),
        AblationRow("no-pool-statistics", "ours: pooling by attention alone, without the set's mean, max, min and "
                    "standard deviation (pool_statistics=false)", options={"pool_statistics": False}),
        AblationRow("neuron-means", "ours: with neuron means (signed means of standardised weights)",
                    options={"use_neuron_means": True}),
        AblationRow("unordered-neuron-gains", "ours: with neuron gains (log norms of raw weights), without "
                    "chunk-index and row-slot encodings", options={"use_neuron_gains": True,
                                                                   "use_chunk_index_encoding": False,
                                                                   "use_row_slot_encoding": False}),
        AblationRow("unordered-recalibrated", "ours: without chunk-index and row-slot encodings, batch-norm statistics "
                    "re-estimated after every epoch (16 training batches)",
                    options={"use_chunk_index_encoding": False, "use_row_slot_encoding": False},
                    train={"bn_recalibration": 16}),
        AblationRow("unordered-neuron-gains-recalibrated", "ours: with neuron gains, without chunk-index and row-slot "
                    "encodings, batch-norm statistics re-estimated after every epoch (16 training batches)",
                    options={"use_neuron_gains": True, "use_chunk_index_encoding": False,
                             "use_row_slot_encoding": False}, train={"bn_recalibration": 16}),
    ]


def _chunk_sizes() -> list[AblationRow]:
    return [AblationRow(f"chunk-{c}", f"chunk size {c}", options={"chunk_size": c},
                        paper=PAPER_SNE_CHUNK_SIZE_MSE.get(c)) for c in (4, 8, 16, 32, 64)]


def _invariance() -> list[AblationRow]:
    # The regulariser alone: without augmentation, whatever the encoder's training defaults.
    plain = {"permutation_augment": False, "sign_flip_augment": False}
    rows = [AblationRow(f"lambda-{w:g}", f"lambda {w:g}", train={"invariance_weight": w, **plain})
            for w in (0, 0.3, 1, 3, 10)]
    return rows + [
        AblationRow("augment", "permutation augmentation, lambda 0",
                    train={**plain, "invariance_weight": 0.0, "permutation_augment": True}),
        AblationRow("augment-lambda-1", "permutation augmentation, lambda 1",
                    train={**plain, "invariance_weight": 1.0, "permutation_augment": True}),
        AblationRow("lambda-1-codes", "lambda 1 on the network codes (their squared distance over their spread "
                    "in the batch), not the outputs", train={**plain, "invariance_weight": 1.0, "invariance_on": "codes"}),
    ] + [row for name, label, weight, copies in (
        ("augment-sign-flips", "permutation augmentation and sign flips of neurons with odd activations, lambda 0",
         0.0, (16, 4, 64)),
        ("augment-sign-flips-lambda-1", "permutation augmentation and sign flips, lambda 1 (the regulariser's copies "
         "flipped too)", 1.0, (16,)),
    ) for row in _predicted_both_ways(AblationRow(name, label, train={
        "invariance_weight": weight, "permutation_augment": True, "sign_flip_augment": True}), copies)] + [
        # Flips change nothing a canonical-signs encoder sees: neither trained on nor averaged over.
        AblationRow("canonical-signs", "permutation augmentation, every network in the canonical signs of its "
                    "neurons with odd activations (exactly invariant to sign flips), lambda 0",
                    options={"canonical_signs": True},
                    train={"invariance_weight": 0.0, "permutation_augment": True, "sign_flip_augment": False,
                           "test_time_flips": 0}),
    ]


def _predicted_both_ways(row: AblationRow, copies: Sequence[int] = (16,)) -> list[AblationRow]:
    """``row`` predicting each network once, and (the same runs) predicting the mean over it and N
    random sign-flipped copies (TrainConfig.test_time_flips) for each N of ``copies``: row
    ``NAME-averaged`` for the first N (the default's), ``NAME-averaged-N`` for the others."""
    return [replace(row, train={**row.train, "test_time_flips": 0})] + [
        replace(row, name=f"{row.name}-averaged" + (f"-{n}" if i else ""),
                label=f"as {row.name} (the same runs), predictions averaged over {n} sign-flipped copies of each network",
                train={**row.train, "test_time_flips": n})
        for i, n in enumerate(copies)]


def _training() -> list[AblationRow]:
    # Rows name everything they set, so that each means the same whatever the encoder's defaults.
    multistep = {"schedule": "multistep", "warmup_epochs": 0.0, "batch_size": 64, "ema_epochs": 0.0}
    cosine = {"schedule": "cosine", "warmup_epochs": 1.0, "batch_size": 64, "ema_epochs": 0.0}
    return [
        AblationRow("multistep", "lr 1e-3, x0.1 at 60% and 85% of the epochs", train={**multistep, "lr": 1e-3}),
        AblationRow("multistep-lr-3e-4", "lr 3e-4, x0.1 at 60% and 85%", train={**multistep, "lr": 3e-4}),
        AblationRow("multistep-warmup", "lr 1e-3, 1 warm-up epoch, x0.1 at 60% and 85%",
                    train={**multistep, "lr": 1e-3, "warmup_epochs": 1.0}),
        AblationRow("cosine", "lr 1e-3, 1 warm-up epoch, cosine decay", train={**cosine, "lr": 1e-3}),
        AblationRow("cosine-lr-3e-3", "lr 3e-3, 1 warm-up epoch, cosine decay", train={**cosine, "lr": 3e-3}),
        AblationRow("cosine-lr-3e-4", "lr 3e-4, 1 warm-up epoch, cosine decay", train={**cosine, "lr": 3e-4}),
        # Same epochs, more Adam steps: an epoch at batch B is one step per B networks.
        *(AblationRow(f"multistep-batch-{size}", f"lr 1e-3, x0.1 at 60% and 85%, batch {size} ({64 // size}x the "
                      "steps of batch 64)", train={**multistep, "lr": 1e-3, "batch_size": size}) for size in (32, 16)),
        # At SNE's default batch, 16, where its 30-epoch runs still improve at the last epoch: a
        # higher rate, the rate kept high for longer, cosine decay.
        AblationRow("multistep-batch-16-lr-2e-3", "lr 2e-3, x0.1 at 60% and 85%, batch 16",
                    train={**multistep, "lr": 2e-3, "batch_size": 16}),
        AblationRow("multistep-batch-16-late-cuts", "lr 1e-3, x0.1 at 80% and 95%, batch 16",
                    train={**multistep, "lr": 1e-3, "batch_size": 16, "milestones": [0.8, 0.95]}),
        AblationRow("cosine-batch-16", "lr 1e-3, 1 warm-up epoch, cosine decay, batch 16",
                    train={**cosine, "lr": 1e-3, "batch_size": 16}),
        AblationRow("cosine-batch-16-lr-2e-3", "lr 2e-3, 1 warm-up epoch, cosine decay, batch 16",
                    train={**cosine, "lr": 2e-3, "batch_size": 16}),
        # Averaged weights: selected and evaluated as an exponential moving average over about an
        # epoch or two, with the schedule's decay, or instead of it (the rate kept at 1e-3 throughout).
        AblationRow("multistep-batch-16-ema-1", "lr 1e-3, x0.1 at 60% and 85%, batch 16, weights averaged over ~1 epoch",
                    train={**multistep, "lr": 1e-3, "batch_size": 16, "ema_epochs": 1.0}),
        AblationRow("cosine-batch-16-ema-1", "lr 1e-3, 1 warm-up epoch, cosine decay, batch 16, weights averaged over "
                    "~1 epoch", train={**cosine, "lr": 1e-3, "batch_size": 16, "ema_epochs": 1.0}),
        AblationRow("constant-batch-16-ema-2", "lr 1e-3 throughout, batch 16, weights averaged over ~2 epochs",
                    train={"schedule": "constant", "warmup_epochs": 0.0, "lr": 1e-3, "batch_size": 16, "ema_epochs": 2.0}),
    ]


def _data_fraction(encoders: Sequence[str], fractions: Sequence[float]) -> list[AblationRow]:
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise SneError(f"a fraction of the training networks must be in (0, 1], got {fraction:g}")
    return [AblationRow(f"{encoder}-fraction-{fraction:g}", f"{encoder}, {fraction:.0%} of training networks",
                        encoder=encoder, fraction=fraction) for encoder in encoders for fraction in fractions]


#: Study name -> its rows.
STUDIES = {
    "components": _components,
    "chunk-size": _chunk_sizes,
    "invariance": _invariance,
    "training": _training,
    "data-fraction": lambda: _data_fraction(DATA_FRACTION_ENCODERS, DATA_FRACTIONS),
}


def study_rows(study: str, rows: Sequence[str] = (), encoders: Sequence[str] = (),
               fractions: Sequence[float] = ()) -> list[AblationRow]:
    """The rows of ``study`` (only those named in ``rows``, if given); for ``data-fraction``,
    ``encoders`` and ``fractions`` replace the defaults. :class:`SneError` for unknown names."""
    if study not in STUDIES:
        raise SneError(f"unknown study '{study}' (expected one of {', '.join(STUDIES)})")
    if study == "data-fraction":
        chosen = _data_fraction(encoders or DATA_FRACTION_ENCODERS, fractions or DATA_FRACTIONS)
    elif encoders or fractions:
        raise SneError(f"--encoders and --fractions belong to the data-fraction study, not '{study}'")
    else:
        chosen = STUDIES[study]()
    if rows:
        known = {row.name for row in chosen}
        unknown = [name for name in rows if name not in known]
        if unknown:
            raise SneError(f"unknown row(s) {', '.join(unknown)} of study '{study}' (rows: {', '.join(sorted(known))})")
        chosen = [row for row in chosen if row.name in rows]
    return chosen


def _setting(runs: BenchRuns, base_weight: float, max_train: int | None) -> dict:
    """What every row of one invocation shares: rows differ from this base and nothing else.
    ``--bn-recalibration 0`` is the setting without it, as every setting before it existed was, and
    ``--batch-size 64`` the setting that names none, as every setting before it could be named was."""
    train_options = {k: v for k, v in runs.train_options.items() if (k, v) not in _UNNAMED_IN_SETTINGS}
    return {"epochs": runs.epochs, "max_train": max_train, "invariance_weight": base_weight,
            "encoder_options": dict(runs.encoder_options), "train_options": train_options}


#: Training options a setting does not name: what every setting written before the option was had.
_UNNAMED_IN_SETTINGS = {("bn_recalibration", 0), ("batch_size", 64)}


def _check_same_training(path: Path, setting: dict, configs: list[tuple[AblationRow, dict, str]]) -> None:
    """Refuse, before any training, a row whose seeds in ``path`` (same setting) were trained with
    another batch size, batch-norm recalibration or sign-flip augmentation, or built with other encoder options,
    than this run's would be: an encoder's defaults may have changed since, and one row must not
    average runs made two ways. Seeds that did not record their resolved options are not compared."""
    if not path.is_file():
        return
    key = json.dumps(setting, sort_keys=True)
    stored: dict[tuple[str, str], set] = {}
    built: dict[str, list[dict]] = {}
    for entry in json.loads(path.read_text())["entries"]:
        if json.dumps(entry["setting"], sort_keys=True) == key:
            for name, before in BEFORE_IT_EXISTED.items():
                stored.setdefault((entry["row"], name), set()).add(entry.get(name, before))
            if entry.get("encoder_options_resolved"):
                built.setdefault(entry["row"], []).append(entry)
    for row, fields, _ in configs:
        config = TrainConfig.for_encoder(row.encoder, seed=0, **fields)
        for name in BEFORE_IT_EXISTED:
            trained = getattr(config, name)
            before = stored.get((row.name, name), {trained})
            if before != {trained}:
                earlier = ", ".join(map(str, sorted(before)))
                flags = " or ".join(train_flag(name, value) for value in sorted(before))
                raise SneError(f"{path}: row '{row.name}' of this setting was trained with {name}={earlier} and "
                               f"would be trained with {trained} now: give {flags} to add seeds to it, or "
                               f"{train_flag(name, trained)} for a setting of its own")
        given = fields["encoder_options"]
        resolved = get_encoder_class(row.encoder).resolved_options(given)
        for entry in built.get(row.name, []):
            otherwise = built_otherwise({**entry, "encoder": row.encoder}, entry.get("encoder_options_used") or {})
            if otherwise:
                differ = ", ".join(f"{k}: {json.dumps(v)} -> {json.dumps(resolved.get(k))}" for k, v in otherwise.items())
                raise SneError(f"{path}: row '{row.name}' of this setting was built with other {row.encoder} options "
                               f"than today's defaults give ({differ}), and one row must not average encoders built two "
                               f"ways: give -o {row.encoder}.OPTION=VALUE for a setting of its own")


def run_ablation(
    zoo_path: str | Path,
    runs: BenchRuns,
    study: str,
    rows: Sequence[AblationRow],
    target: str | None = None,
    base_invariance_weight: float = 0.0,
    max_train: int | None = None,
) -> Path:
    """Train and evaluate every row for every seed; return the results file's path."""
    zoo = Zoo.open(zoo_path)
    target = target or _default_target(zoo)
    if target not in zoo.targets:
        raise SneError(f"the zoo at {zoo.path} has no target '{target}' (targets: {', '.join(zoo.targets)})")
    available = len(zoo.split_ids("train"))
    check_max_train(max_train)
    if max_train is not None:
        available = min(available, max_train)
    init = zoo.manifest.get("options", {}).get("init", "unknown")
    path = runs.results_dir / f"ablation_{study}_{init}.json"
    # Refused now rather than after hours of training: the file holds results on another zoo.
    described = zoo_summary(zoo)
    check_mergeable(path, {"benchmark": f"ablation_{study}", "zoo": described}, lambda r: zoo_identity(r["zoo"]))
    setting = _setting(runs, base_invariance_weight, max_train)
    # Runs are named by what they change from the base, so studies share the runs they have in
    # common (the components study's full SNE is the invariance study's lambda 0).
    setting_dir = runs.runs_dir / ("base" + _setting_tag(setting))
    configs, skipped = _row_configs(rows, runs, zoo, target, base_invariance_weight, available)
    _check_same_training(path, setting, configs)
    entries = []
    for row, config_fields, run_name in configs:
        for seed in runs.seeds:
            run_dir = setting_dir / f"{run_name}_seed{seed}"
            config = TrainConfig.for_encoder(row.encoder, seed=seed, **config_fields)
            started = time.perf_counter()
            fit(config, run_dir)
            result = evaluate_run(run_dir, device=runs.device, plot=runs.plots, test_time_flips=config.test_time_flips)
            result.update({
                "wall_seconds_this_invocation": time.perf_counter() - started,
                "study": study, "row": row.name, "label": row.label, "paper": row.paper, "fraction": row.fraction,
                "train_networks": config.max_train if config.max_train is not None else available,
                "setting": setting, "encoder_options_used": config.encoder_options,
                "permutation_augment": config.permutation_augment,
                "sign_flip_augment": config.sign_flip_augment,
            })
            entries.append(result)
    summary = {
        "benchmark": f"ablation_{study}",
        "study": study,
        "command": runs.command,
        "zoo": described,
        "init": init,
        "target": target,
        "entries": entries,
        "same_as_full": skipped,
    }
    path = write_merged(path, summary, lambda r: zoo_identity(r["zoo"]), entry_identity, finish=_summarise)
    if study == "data-fraction" and runs.plots:
        plot_data_fraction(json.loads(path.read_text()), runs.results_dir / "plots")
    return path


def plot_data_fraction(results: dict, plots_dir: Path) -> list[Path]:
    """Test error against the fraction of training networks, one line per encoder, one plot per
    setting (the paper's Figure 3); each plot's path is recorded in its setting's summary."""
    paths = []
    zoo, init = results["zoo"], results["init"]
    for number, group in enumerate(results["summary"]):
        metric = "normalized_mse" if any("normalized_mse" in r for r in group["rows"]) else "accuracy"
        curves: dict[str, tuple[list, list, list]] = {}
        for row in sorted(group["rows"], key=lambda r: (r["encoder"], r["fraction"] or 1.0)):
            if metric in row:
                x, mean, std = curves.setdefault(row["encoder"], ([], [], []))
                x.append(row["train_networks"])
                mean.append(row[metric]["mean"])
                std.append(row[metric]["std"])
        setting = group["setting"]
        seeds = sorted({seed for row in group["rows"] for seed in row["seeds"]})
        # Rows of one plot are often trained by several invocations (one per encoder): name them all.
        commands = list(dict.fromkeys(e["train_command"] for e in results["entries"] if e.get("setting") == setting))
        caption = (f"{zoo['recipe']} zoo {zoo['label']} (n={zoo['n']}, seed {zoo['seed']}, init {init}), test split; "
                   f"{setting['epochs']} epochs, seeds {','.join(map(str, seeds))}; mean +- std over seeds; "
                   f"commands: {'; '.join(commands or [results['command']])}")
        path = error_curves(curves, plots_dir / f"ablation_data-fraction_{init}_{number}.png",
                            f"Test {metric.replace('_', ' ')} against training networks", "training networks",
                            f"test {metric.replace('_', ' ')}", caption)
        paths.append(path)
    return paths


def _default_target(zoo: Zoo) -> str:
    for name in ("frequency", "label", "test_accuracy"):
        if name in zoo.targets:
            return name
    raise SneError(f"the zoo at {zoo.path} has none of the targets frequency, label, test_accuracy: give --target")


def _setting_tag(setting: dict) -> str:
    """Run-directory suffix of a setting, so that runs of other base settings never share a directory."""
    parts = {"lambda": setting["invariance_weight"], "max-train": setting["max_train"], "epochs": setting["epochs"],
             **setting["encoder_options"], **setting["train_options"]}
    # Settings that differ only in how runs are evaluated share their runs.
    return options_tag({k: v for k, v in parts.items() if v is not None and k not in EVALUATION_FIELDS})


def _row_configs(rows: Sequence[AblationRow], runs: BenchRuns, zoo: Zoo, target: str, base_weight: float,
                 available: int) -> tuple[list[tuple[AblationRow, dict, str]], list[dict]]:
    """Each row's TrainConfig fields and run name (the encoder and what the row changes from the
    base); a row whose configuration is another's (a chunk size equal to the base's, a switch the
    base already sets) is not trained twice but listed as skipped."""
    configs, seen, skipped = [], {}, []
    networks: dict[int, list] = {}
    for row in rows:
        base_options = runs.options_for(row.encoder)
        options = {**base_options, **row.options}
        base_fields = {"invariance_weight": base_weight, "max_train": available, **runs.train_options}
        fields = {"zoo": str(zoo.path), "target": target, "encoder_options": options, "epochs": runs.epochs,
                  "device": runs.device, "command": runs.command, **base_fields, **row.train}
        if row.fraction is not None:
            fields["max_train"] = max(2, math.ceil(row.fraction * available))
        changed = {k: v for k, v in options.items() if base_options.get(k, SNE_DEFAULT_OPTIONS.get(k)) != v}
        # Training fields as the run will have them (the encoder's training defaults filled in),
        # named where they differ from the base's, or from the shared defaults where the base sets none.
        trained = asdict(TrainConfig.for_encoder(row.encoder, seed=0, **fields))
        if trained["sign_flip_augment"] == SIGN_FLIPS_AUTO:
            # Decided here, for this row's training networks, so rows and runs are named by what they do.
            count = fields["max_train"]
            if count not in networks:
                networks[count] = zoo.records(zoo.split_ids("train")[:count])
            chosen, _ = choose_sign_flips(TrainConfig(**trained), networks[count])
            fields = {**fields, "sign_flip_augment": chosen.sign_flip_augment, "test_time_flips": chosen.test_time_flips}
            trained = asdict(chosen)
        reference = {**TRAIN_DEFAULTS, **base_fields}
        # Rows that differ only in how the run is evaluated share a run.
        # Schedule and averaging always: runs made before SNE's defaults set them keep their names.
        named = sorted({*base_fields, *row.train, "permutation_augment", "sign_flip_augment", "schedule", "ema_epochs"}
                       - EVALUATION_FIELDS)
        changed.update({k: trained[k] for k in named if trained[k] != reference[k]})
        run_name = row.encoder + options_tag(changed)
        # As the encoder will resolve them (a preset's options included), so equal rows are found equal.
        resolved = {**get_encoder_class(row.encoder).options_baseline(options), **options}
        identity = json.dumps([row.encoder, resolved, trained], sort_keys=True, default=str)
        if identity in seen:
            skipped.append({"row": row.name, "label": row.label, "same_as": seen[identity]})
            continue
        seen[identity] = row.name
        configs.append((row, fields, run_name))
    return configs, skipped


def entry_identity(entry: dict) -> tuple:
    """Rows of one results file differ by row, setting and seed."""
    return entry["row"], json.dumps(entry["setting"], sort_keys=True), entry["train_seed"]


#: Metrics summarised over seeds (those a row's evaluation has).
SUMMARY_METRICS = ("normalized_mse", "mse", "kendall_tau", "accuracy")


def _summarise(merged: dict) -> dict:
    """Per setting, per row: mean and standard deviation over seeds of the test metrics, the
    permutation sensitivity and the held-out invariance loss."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for entry in merged["entries"]:
        groups.setdefault(json.dumps(entry["setting"], sort_keys=True), {}).setdefault(entry["row"], []).append(entry)
    settings = []
    for key, by_row in groups.items():
        rows = []
        for name, entries in by_row.items():
            first = entries[0]
            values: dict[str, list[float]] = {}
            for entry in entries:
                for metric in SUMMARY_METRICS:
                    if metric in entry["metrics"]:
                        values.setdefault(metric, []).append(entry["metrics"][metric])
                for symmetry in ("permutation", "sign_flip"):
                    sensitivity = entry.get(f"{symmetry}_sensitivity") or {}
                    for metric in ("mean_abs_change", "invariance_loss"):
                        if metric in sensitivity:
                            values.setdefault(f"{symmetry}_{metric}", []).append(sensitivity[metric])
                if entry.get("train_seconds") is not None:
                    values.setdefault("train_seconds", []).append(entry["train_seconds"])
            rows.append({
                "row": name, "label": first["label"], "encoder": first["encoder"], "fraction": first.get("fraction"),
                "train_networks": first.get("train_networks"), "paper": first.get("paper"),
                "seeds": sorted(e["train_seed"] for e in entries),
                "best_epochs": [e.get("best_epoch") for e in sorted(entries, key=lambda e: e["train_seed"])],
                **{metric: {"mean": float(np.mean(v)), "std": float(np.std(v))} for metric, v in values.items()},
            })
        settings.append({"setting": json.loads(key), "rows": rows})
    return {**merged, "summary": settings}
