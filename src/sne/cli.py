"""The ``sne`` command line."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sne.allocator import keep_large_blocks_in_heap
from sne.errors import SneError, one_line
from sne.io_utils import json_text

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learn properties of neural networks from their weights.")
zoo_app = typer.Typer(no_args_is_help=True, help="Build and inspect model zoos.")
app.add_typer(zoo_app, name="zoo")
# soft_wrap: a path in a message stays on one line in a log (a wrapped path cannot be copied).
console = Console(stderr=True, soft_wrap=True, emoji=False)


def _command_line() -> str:
    return "sne " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@zoo_app.command("generate")
def zoo_generate(
    recipe: str = typer.Argument(..., help="Recipe name, e.g. sine-inr."),
    out: Path = typer.Option(..., "--out", help="Zoo directory (created; re-run the same command to resume)."),
    n: int = typer.Option(..., "--n", help="Number of networks."),
    seed: int = typer.Option(0, "--seed"),
    init: Optional[str] = typer.Option(None, "--init", help="INR initialisation: independent (default) | shared."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fitting steps per network (recipe default if unset)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (recipe default if unset)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Networks fitted together in one batch."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the fitting step: faster after a one-off compile."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Image dataset of CNN recipes (default digits)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Recipe option key=value (repeatable), e.g. -o epochs=10."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", hidden=True, help="Networks per shard file."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N", help="Write only part K of N (1 <= K <= N; "
                                        "each part resumable, on any machine); join all N with 'sne zoo merge'."),
) -> None:
    """Train a zoo of networks with a recipe and record their weights and metrics."""
    from sne.zoo import generate_zoo

    # Only options given on the command line: the recipe fills (and records) its own defaults.
    given = {
        "init": init, "steps": steps, "lr": lr, "group_size": group_size, "device": device, "compile": compile_,
        "dataset": dataset,
    }
    options = {key: value for key, value in given.items() if value is not None}
    for key, value in parse_options(option).items():
        if key in options and options[key] != value:
            raise SneError(f"option '{key}' is given twice with different values ({options[key]!r} and {value!r})")
        options[key] = value
    part = parse_part(shard) if shard is not None else None
    zoo = generate_zoo(
        recipe, out, n=n, seed=seed, options=options, command=_command_line(), shard_size=shard_size, part=part
    )
    if zoo is None:
        console.print(f"part {part[0] + 1} of {part[1]} written to [bold]{escape(str(out))}[/bold]; when all "
                      f"{part[1]} parts are done: sne zoo merge PART1 ... PART{part[1]} --out ZOO", highlight=False)
        return
    diverged = zoo.manifest.get("diverged") or 0
    note = f" ({diverged} diverged, kept out of every split)" if diverged else ""
    console.print(f"zoo with {len(zoo)} networks written to [bold]{escape(str(zoo.path))}[/bold]{note}", highlight=False)


@zoo_app.command("import")
def zoo_import(
    source_format: str = typer.Argument(..., metavar="FORMAT", help="folder, unterthiner, dwsnet, nfn-siren, "
                                        "schurholt, wildpark or hf-transformer."),
    directory: Path = typer.Argument(..., metavar="DIR", help="Directory of the zoo's files."),
    out: Path = typer.Option(..., "--out", help="New zoo directory (must not exist, or be empty)."),
    targets: Optional[Path] = typer.Option(None, "--targets", help="folder: CSV with a 'file' column (relative "
                                           "to DIR), target columns and an optional 'split' column."),
    arch: Optional[str] = typer.Option(None, "--arch", help="folder, schurholt, hf-transformer: architecture of "
                                       "the files, FILE.py:FACTORY or package.module:FACTORY (as for 'sne predict')."),
    target_kind: List[str] = typer.Option([], "--target-kind", help="folder, hf-transformer: NAME=KIND "
                                          "(regression, unit_interval or class) instead of the inferred kind."),
    step: Optional[str] = typer.Option(None, "--step", help="unterthiner: keep checkpoints at this training step "
                                       "(default 86, the final one), or 'all'."),
    epoch: Optional[str] = typer.Option(None, "--epoch", help="schurholt, wildpark: an epoch, 'last' or 'all' "
                                        "(defaults: last, all)."),
    splits: Optional[str] = typer.Option(None, "--splits", help="unterthiner: 'nfn' (the canonical split of "
                                         "NFN / Neural Graphs / ScaleGMN) or NFN's split CSV; dwsnet, wildpark: "
                                         "the splits JSON."),
    option: List[str] = typer.Option([], "--option", "-o", help="Format option key=value (nfn-siren: prefix, "
                                     "split_points; hf-transformer: metadata)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val/test split where the format fixes none."),
) -> None:
    """Convert a folder of checkpoints or a published model zoo into a zoo directory that 'sne train' reads."""
    import inspect

    from sne.zoo import IMPORTERS
    from sne.zoo.importing import parse_target_kinds

    if source_format not in IMPORTERS:
        raise SneError(f"unknown zoo format '{source_format}' (available: {', '.join(sorted(IMPORTERS))})")
    given = {"targets": targets, "arch": arch, "target_kinds": parse_target_kinds(target_kind) or None,
             "step": _step_value(step), "epoch": _step_value(epoch), "splits": splits,
             **parse_options(option)}
    given = {key: value for key, value in given.items() if value is not None}
    importer = IMPORTERS[source_format]
    accepted = [name for name in inspect.signature(importer).parameters if name not in ("directory", "out", "seed", "command")]
    extra = [key for key in given if key not in accepted]
    if extra:
        flags = {"targets": "--targets", "arch": "--arch", "target_kinds": "--target-kind", "step": "--step",
                 "epoch": "--epoch", "splits": "--splits"}
        flag = flags.get(extra[0], f"-o {extra[0]}")
        raise SneError(f"zoo import {source_format} takes no {flag} (it takes: "
                       f"{', '.join(accepted) or 'no options'})")
    zoo = importer(directory, out, seed=seed, command=_command_line(), **given)
    diverged = zoo.manifest.get("diverged") or 0
    note = f" ({diverged} diverged: non-finite weights or accuracies; kept out of every split)" if diverged else ""
    console.print(f"zoo with {len(zoo)} networks written to [bold]{escape(str(zoo.path))}[/bold]{note}", highlight=False)


def _step_value(value: Optional[str]):
    """A step/epoch option: a whole number, or a word ('all', 'last') the importer checks."""
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.lstrip("-").isdigit() else text


@zoo_app.command("export")
def zoo_export(
    zoo: Path = typer.Argument(..., help="Zoo directory."),
    directory: Path = typer.Argument(..., metavar="DIR", help="New directory (must not exist, or be empty)."),
) -> None:
    """Write a zoo as DIR/networks/<id>.safetensors plus DIR/targets.csv (file, split, targets,
    hyper-parameters): 'sne zoo import folder DIR --targets DIR/targets.csv' gives the zoo back."""
    from sne.zoo import export_zoo

    table = export_zoo(zoo, directory)
    console.print(f"networks and [bold]{escape(str(table))}[/bold] written to [bold]{escape(str(directory))}[/bold]",
                  highlight=False)


def parse_part(value: str) -> tuple[int, int]:
    """``"K/N"`` (1-based) -> ``(K - 1, N)``."""
    k, sep, count = value.partition("/")
    if not (sep and k.strip().isdigit() and count.strip().isdigit() and 1 <= int(k) <= int(count)):
        raise SneError(f"--shard must be K/N with 1 <= K <= N (part K of N), got {value!r}")
    return int(k) - 1, int(count)


@zoo_app.command("merge")
def zoo_merge(
    zoos: List[Path] = typer.Argument(..., metavar="ZOO...", help="Zoo directories, or all parts of one --shard run."),
    out: Path = typer.Option(..., "--out", help="New zoo directory (must not exist, or be empty)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", hidden=True, help="Networks per shard file."),
) -> None:
    """Join zoos into one (ids renumbered in the order given, splits kept, sources recorded), or the
    N parts of 'sne zoo generate ... --shard K/N' into the zoo one process would have made."""
    from sne.zoo.merge import merge_zoos

    zoo = merge_zoos(zoos, out, command=_command_line(), shard_size=shard_size)
    console.print(f"zoo with {len(zoo)} networks of {zoo.describe_architectures()} from {len(zoos)} "
                  f"{'parts' if zoo.manifest['recipe'] != 'merge' else 'zoos'} written to "
                  f"[bold]{escape(str(zoo.path))}[/bold]", highlight=False)


@zoo_app.command("derive")
def zoo_derive(
    source: Path = typer.Argument(..., help="Zoo directory to derive from."),
    transform: str = typer.Option(..., "--transform", help="Weight transform: shuffle-incoming."),
    out: Path = typer.Option(..., "--out", help="New zoo directory (must not exist, or be empty)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the transform's randomness."),
) -> None:
    """Write a zoo's networks through a seeded weight transform, keeping splits and targets (input ablations).

    shuffle-incoming: each neuron's incoming weights are shuffled among its inputs, which keeps every
    neuron's set of weights and destroys which neuron of the previous layer each one comes from.
    """
    from sne.zoo.derive import derive_zoo

    zoo = derive_zoo(source, out, transform, seed=seed, command=_command_line())
    console.print(f"zoo with {len(zoo)} networks ({transform}) written to [bold]{escape(str(zoo.path))}[/bold]", highlight=False)


@zoo_app.command("info")
def zoo_info(
    zoo: Path = typer.Argument(..., help="Zoo directory."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a test-accuracy histogram PNG here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Counts per split, diverged networks, and a summary of every target."""
    from sne.zoo import Zoo
    from sne.zoo.summary import accuracy_histogram, print_summary, zoo_summary

    opened = Zoo.open(zoo)
    summary = zoo_summary(opened)
    if as_json:
        print(json_text(summary, indent=2))
    else:
        print_summary(summary)
    if plot is not None:
        console.print(f"histogram written to [bold]{escape(str(accuracy_histogram(opened, plot)))}[/bold]", highlight=False)


def parse_options(pairs: List[str]) -> dict:
    """``key=value`` strings -> dict; values are read as JSON when they parse (numbers, booleans)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SneError(f"option '{pair}' is not of the form key=value")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def format_options(options: dict) -> list[str]:
    """The ``key=value`` strings that :func:`parse_options` reads back as ``options``."""
    return [f"{key}={json.dumps(value)}" for key, value in options.items()]


#: --batch-size of the commands that train: unset, each encoder trains at its own (see 'sne encoders').
_TRAIN_BATCH_SIZE = typer.Option(None, "--batch-size", min=1,
                                 help="Networks per Adam step (default: the encoder's, else 64).")
_TRAIN_LR = typer.Option(None, "--lr", help="Adam learning rate (default: the encoder's, else 1e-3).")
_TRAIN_SCHEDULE = typer.Option(None, "--schedule", help="Learning-rate schedule: multistep (x0.1 at 60% and 85% of "
                               "the epochs), cosine, or constant (default: the encoder's, else multistep).")
_TRAIN_WARMUP = typer.Option(None, "--warmup-epochs", help="Raise the learning rate linearly over this many epochs "
                             "(default: the encoder's, else 0).")
_TRAIN_EMA = typer.Option(None, "--ema-epochs", help="Validate, keep and predict with an exponential moving average of "
                          "the weights over about this many epochs (default: the encoder's, else 0: off).")


@app.command()
def train(
    zoo: Path = typer.Option(..., "--zoo", help="Zoo directory made by 'sne zoo generate'."),
    target: str = typer.Option(..., "--target", help="Target column, e.g. frequency."),
    out: Path = typer.Option(..., "--out", help="Run directory (re-run the same command to resume)."),
    encoder: str = typer.Option("sne", "--encoder", help="Encoder name (see 'sne encoders')."),
    epochs: int = typer.Option(100, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: Optional[int] = _TRAIN_BATCH_SIZE,
    lr: Optional[float] = _TRAIN_LR,
    schedule: Optional[str] = _TRAIN_SCHEDULE,
    warmup_epochs: Optional[float] = _TRAIN_WARMUP,
    ema_epochs: Optional[float] = _TRAIN_EMA,
    invariance_weight: float = typer.Option(0.0, "--invariance-weight", help="Lambda of the logit-invariance regulariser."),
    invariance_on: str = typer.Option("outputs", "--invariance-on", help="What the regulariser compares for a network "
                                      "and its equivalent copy: outputs (the paper's) or codes (the network codes, "
                                      "relative to their spread over the batch)."),
    augment_permutations: Optional[bool] = typer.Option(
        None, "--augment-permutations/--no-augment-permutations",
        help="Train on a fresh random functionally-equivalent permutation of every network each epoch "
             "(default: the encoder's; see 'sne encoders')."),
    augment_sign_flips: Optional[bool] = typer.Option(
        None, "--augment-sign-flips/--no-augment-sign-flips",
        help="Also flip the signs of random hidden neurons whose activation is odd (sine, tanh) each epoch, "
             "another functional equivalence (default: the encoder's; see 'sne encoders'; SNE's is auto: on unless "
             "the training networks share their signs, as networks fitted from one initialisation do)."),
    test_time_flips: Optional[int] = typer.Option(
        None, "--test-time-flips", min=0,
        help="When the run evaluates and predicts, average each prediction over the network and this many random "
             "sign-flipped copies of it (needs sign flips in training; default: the encoder's, 0 without them, "
             "also where auto chooses no flips)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Encoder option key=value (repeatable)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="SNE only: a named set of options, e.g. paper "
                                         "(the paper's configuration); -o options win over it."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="Use only this many training networks."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    workers: int = typer.Option(0, "--workers", help="Data-loader worker processes."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Also write TensorBoard scalars (losses, learning rate per epoch) here; needs pip install 'sne[tb]'."),
    precision: str = typer.Option("float32", "--precision", help="float32, or bfloat16 autocast (GPU only)."),
    bn_recalibration: Optional[int] = typer.Option(
        None, "--bn-recalibration", min=0, help="After every epoch, re-estimate batch-norm statistics over this "
        "many training batches (0: off; default: the encoder's, see 'sne encoders')."),
) -> None:
    """Train an encoder and head to predict a target from weights; select on the val split."""
    from sne.train import TrainConfig, distributed, fit
    from sne.train.scalars import require_tensorboard

    if log_dir is not None:
        require_tensorboard()  # before minutes of loading and training, not after

    options = parse_options(option)
    if preset is not None:
        if encoder != "sne":
            raise SneError(f"--preset names a set of SNE options; encoder '{encoder}' has none")
        options = {"preset": preset, **options}
    config = TrainConfig.for_encoder(
        encoder, zoo=str(zoo), target=target, encoder_options=options, epochs=epochs,
        batch_size=batch_size, lr=lr, schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs,
        invariance_weight=invariance_weight, invariance_on=invariance_on, permutation_augment=augment_permutations,
        sign_flip_augment=augment_sign_flips, test_time_flips=test_time_flips, seed=seed, device=device,
        num_workers=workers, max_train=max_train,
        precision=precision, bn_recalibration=bn_recalibration, command=_command_line(),
    )
    summary = fit(config, out, log_dir=log_dir)
    if not distributed.is_main():
        return
    console.print(
        f"trained {summary['epochs']} epochs ({summary['epochs'] * summary['steps_per_epoch']} Adam steps, "
        f"{summary['steps_per_epoch']} an epoch) in {summary['train_seconds']:.0f} s; best val loss "
        f"{summary['best_val_loss']:.4g} at epoch {summary['best_epoch']}; run in [bold]{escape(str(out))}[/bold]"
        + (f", TensorBoard scalars in [bold]{escape(str(log_dir))}[/bold]" if log_dir is not None else "")
    )
    augmented, networks = summary.get("augmented_networks"), summary.get("train_networks")
    if augmented is not None and augmented < networks:
        console.print(f"permutation augmentation permuted {augmented} of {networks} training networks; the others' "
                      "neuron symmetries are unknown (bare state_dicts of networks that are not plain chains), so "
                      "they trained as they are")
    flipped = summary.get("sign_flipped_networks")
    if augment_sign_flips and flipped is not None and flipped < networks:
        console.print(f"sign-flip augmentation flipped {flipped} of {networks} training networks; signs are flipped "
                      "only in chains of linear layers whose hidden activations are recorded and odd (sine, tanh)")


#: ``--test-time-flips`` of the commands that load a trained run.
_TEST_TIME_FLIPS = typer.Option(None, "--test-time-flips", min=0, help="Average each prediction over the network and "
                                "this many random sign-flipped copies of it (default: the run's setting; only for "
                                "runs trained on sign flips).")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory made by 'sne train'."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help="Evaluate on this zoo instead of the training zoo."),
    split: str = typer.Option("test", "--split"),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON output (default RUN/eval.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    device: str = typer.Option("auto", "--device"),
    test_time_flips: Optional[int] = _TEST_TIME_FLIPS,
    by: Optional[str] = typer.Option(None, "--by", help="Also give the metrics for each group of networks by this "
                                     "column of the zoo's table, e.g. a hyper-parameter or the target: where the "
                                     "error comes from."),
    bins: int = typer.Option(5, "--bins", min=2, help="Quantile bins of a numeric --by column (a column of this "
                             "many values or fewer is grouped by value)."),
) -> None:
    """Test-split metrics (MSE, normalised MSE, R^2, Kendall's tau) and a predicted-vs-true plot."""
    from sne.train.evaluate import evaluate_run

    result = evaluate_run(run, zoo, split=split, device=device, out=out, test_time_flips=test_time_flips,
                          by=by, bins=bins)
    if as_json:
        print(json_text(result, indent=2))
        return
    _print_evaluation(result)


def _grouped_table(grouped: dict):
    from rich.table import Table

    shown = [k for k in ("kendall_tau", "normalized_mse", "mse", "accuracy") if k in grouped["groups"][0]]
    table = Table(title=f"by {grouped['column']}")
    for name in ("group", "n", *shown):
        table.add_column(escape(name), justify="left" if name == "group" else "right")
    for group in grouped["groups"]:
        table.add_row(escape(group["group"]), str(group["n"]), *(f"{group[k]:.4g}" for k in shown))
    return table


def _print_evaluation(result: dict) -> None:
    from rich.table import Table

    from sne.bench.paper import PAPER_INR_FREQUENCY_MSE

    metrics = result["metrics"]
    init = (result.get("zoo_options") or {}).get("init")
    protocol = f", {init} init" if init else ""
    table = Table(title=f"{result['encoder']} on {result['target']} ({result['split']} split, n={metrics['n']}{protocol})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    sensitivity = result.get("permutation_sensitivity")
    if sensitivity:
        draws = sensitivity.get("permutations", 1)
        table.add_row(f"mean |change| under permutation ({draws} per network)", f"{sensitivity['mean_abs_change']:.4g}")
        if "invariance_loss" in sensitivity:
            table.add_row("logit-invariance loss", f"{sensitivity['invariance_loss']:.4g}")
    flips = result.get("sign_flip_sensitivity")
    if flips:
        table.add_row(f"mean |change| under sign flips ({flips['flips']} per network, one pass)",
                      f"{flips['mean_abs_change']:.4g}")
    if result.get("test_time_flips"):
        table.add_row("predictions averaged over flipped copies", f"1 + {result['test_time_flips']}")
    out = Console(emoji=False)
    out.print(table)
    if result.get("by") and result["by"]["groups"]:
        out.print(_grouped_table(result["by"]))
    if result["target"] == "frequency" and "normalized_mse" in metrics:
        paper = Table(title="INR frequency MSE: the SNE paper's table (likely standardised targets) vs this run")
        paper.add_column("encoder")
        paper.add_column("paper MSE", justify="right")
        for name, value in PAPER_INR_FREQUENCY_MSE.items():
            paper.add_row(name, f"{value:.3f}")
        paper.add_row(f"[bold]this run: {result['encoder']}[/bold]",
                      f"[bold]{metrics['normalized_mse']:.3f} normalised / {metrics['mse']:.3f} raw[/bold]")
        paper.add_row("this run: mean predictor", f"{metrics['mean_predictor_mse'] / metrics['target_variance']:.3f} normalised / {metrics['mean_predictor_mse']:.3f} raw")
        out.print(paper)
    if result.get("plot"):
        out.print(f"plot: [bold]{escape(str(result['plot']))}[/bold]")
    out.print(f"results: [bold]{escape(str(result['path']))}[/bold]")


_ARCH_HELP = ("Architecture of the files: FILE.py:FACTORY or package.module:FACTORY, a function returning "
              "a module or (module, example_input); or 'run': the architectures the run was trained on, "
              "matched by keys and shapes. Without it, a config.json beside a file (Hugging Face) "
              "or the file's own unambiguous structure is used.")


def _network_reader(arch: str | None, encoder, caveats: list | None = None, trained=None):
    """A function ``read(path) -> record`` for files of ``--arch`` (or a Hugging Face config.json
    beside them, or their own structure: :func:`sne.weights.arch.network_reader`) that ``encoder``
    can take; it raises a one-line :class:`SneError` naming the file. A wrong ``--arch`` fails here,
    before any file is read. ``caveats`` collects ``(path, warning)`` for records the encoder reads
    with less than it was trained on (:meth:`~sne.encoders.base.Encoder.caveat`)."""
    from sne.weights.arch import RUN_ARCH, network_reader

    if arch == RUN_ARCH and trained is None:
        raise SneError(f"--arch {RUN_ARCH}: this run does not record the architectures it was trained on (runs "
                       "record them since 2026-12-05); give --arch FILE.py:FACTORY")
    read_file = network_reader(arch, trained)

    def read(path: Path):
        try:
            record = read_file(path)
            encoder.check_records([record])
            caveat = encoder.caveat(record)
            if caveat is not None and caveats is not None:
                caveats.append((path, caveat))
            if trained is not None and caveats is not None and not trained.include(record):
                caveats.append((path, f"its architecture is none of the {len(trained.structures)} the run was trained "
                                      "on: a prediction across architectures, which the tables of docs/RESULTS.md "
                                      "measure (cross-architecture), not one the run has seen"))
            return record
        except SneError as error:
            raise SneError(_naming(path, one_line(error))) from None
        except Exception as error:  # noqa: BLE001 - one unreadable file must not stop the others
            raise SneError(f"{path}: cannot be read ({type(error).__name__}: {one_line(error)})") from None

    return read


def _each_file(files: List[Path], arch: str | None, encoder, batch_size: int, compute,
               failures: list, trained=None) -> Iterator[tuple[Path, Any]]:
    """``(path, compute's row)`` for every file that can be read, in the order given, ``batch_size``
    files at a time (so output starts early and memory stays bounded); each file that cannot be read,
    or that the model refuses, is reported on its own line as it is met and added to ``failures``.
    Each warning the encoder has about the files read is said once at the end, naming the first.
    ``trained``: the run's training architectures, for ``--arch run``."""
    caveats: list = []
    read = _network_reader(arch, encoder, caveats, trained)
    yield from _read_in_batches(files, read, batch_size, compute, failures)
    failed = {path for path, _ in failures}
    _say_caveats([(path, warning) for path, warning in caveats if path not in failed])


def _read_in_batches(files: List[Path], read, batch_size: int, compute, failures: list) -> Iterator[tuple[Path, Any]]:
    for start in range(0, len(files), batch_size):
        good = []
        for path in files[start : start + batch_size]:
            try:
                good.append((path, read(path)))
            except SneError as error:
                _fail(failures, path, str(error))
        yield from _in_batches(good, batch_size, compute, failures)


def _say_caveats(caveats: list) -> None:
    by_warning: dict[str, list[Path]] = {}
    for path, warning in caveats:
        by_warning.setdefault(warning, []).append(path)
    for warning, paths in by_warning.items():
        more = f" (and {len(paths) - 1} more files)" if len(paths) > 1 else ""
        console.print(f"[yellow]note:[/yellow] {escape(str(paths[0]))}{more}: {escape(warning)}", highlight=False,
                      soft_wrap=True)


def _fail(failures: list, path: Path, message: str) -> None:
    failures.append((path, _naming(path, one_line(message))))
    _say_error(failures[-1][1])


def _naming(path: Path, message: str) -> str:
    """``message``, starting with the file it is about."""
    return message if str(path) in message else f"{path}: {message}"


def _say_error(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def _in_batches(good: list, batch_size: int, compute, failures: list) -> Iterator[tuple[Path, Any]]:
    """``compute(records)`` over ``good`` in batches, yielding ``(path, row)`` in order; a batch the
    model refuses is redone file by file, so that only the files at fault are reported and left out."""
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        try:
            rows = compute([record for _, record in chunk])
        except SneError as error:
            if len(chunk) > 1:
                yield from _in_batches(chunk, 1, compute, failures)
            else:
                _fail(failures, chunk[0][0], str(error))
            continue
        for (path, record), row in zip(chunk, rows):
            if _finite(row):
                yield path, row
            else:
                _fail(failures, path, f"its encoding is not finite (NaN or inf): weights as large as "
                                      f"{_largest_magnitude(record):.3g} overflow the encoder's float32 arithmetic")


def _finite(row) -> bool:
    """Whether every value of one network's output (a tensor or an array) is finite."""
    if hasattr(row, "isfinite"):
        return bool(row.isfinite().all())
    import numpy as np

    return bool(np.isfinite(np.asarray(row, dtype=np.float64)).all())


def _largest_magnitude(record) -> float:
    return max((float(t.detach().abs().max()) for layer in record.layers for t in layer.tensors.values()
                if t.is_floating_point() and t.numel()), default=0.0)


def _finish(files: List[Path], failures: list, done: str) -> None:
    """Exit 2 when any file failed; with several files, one closing line says what was done."""
    if not failures:
        return
    if len(files) > 1:
        _say_error(f"{len(failures)} of {len(files)} files failed (listed above); {done}")
    raise typer.Exit(2)


def _set_micro_batch(encoder, micro_batch: int | None) -> None:
    if micro_batch is None:
        return
    if "chunk_micro_batch" not in encoder.options:
        raise SneError(f"--micro-batch: encoder '{encoder.name}' encodes a network at once (SNE has micro-batches)")
    encoder.options["chunk_micro_batch"] = micro_batch


def _class_names(trained) -> list[str] | None:
    """Names of a class target's classes, from the zoo the run was trained on (if it is still there)."""
    from sne.zoo import Zoo

    try:
        classes = Zoo.open(trained.zoo_path).targets[trained.target.name].get("classes")
    except Exception:  # noqa: BLE001 - the zoo is gone or changed: classes are shown as numbers
        return None
    if isinstance(classes, list) and len(classes) == trained.target.num_classes:
        return [str(c) for c in classes]
    return None


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory made by 'sne train'."),
    files: List[Path] = typer.Argument(..., help="Checkpoint files: safetensors or PyTorch state_dicts."),
    arch: Optional[str] = typer.Option(None, "--arch", help=_ARCH_HELP),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list on stdout: per file its "
                                 "prediction (class targets: class, probability, all probabilities) or its error."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Networks per forward pass."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", min=1, help="SNE: chunks (of 32 parameters) "
                                              "encoded at a time; memory grows with it (default 128)."),
    test_time_flips: Optional[int] = _TEST_TIME_FLIPS,
) -> None:
    """Print the predicted target for each checkpoint file, one line per file (tab-separated: file,
    target, value; class targets: file, target, class, probability).

    Every file that can be read is predicted; each one that cannot is reported on its own line
    (stderr), and the command then exits with code 2.
    """
    import torch

    from sne.train import load_run

    trained = load_run(run, device=device, test_time_flips=test_time_flips)
    _set_micro_batch(trained.predictor.encoder, micro_batch)
    predictor, target = trained.predictor, trained.target
    failures: list = []
    classes = None
    if target.kind == "class":
        classes = _class_names(trained) or [str(c) for c in range(target.num_classes)]
    results: dict[Path, dict] = {}
    outputs = _each_file(files, arch, predictor.encoder, batch_size,
                         lambda records: predictor.outputs(records, len(records)), failures,
                         trained.training_architectures)
    for path, output in outputs:
        entry: dict[str, Any] = {"file": str(path), "target": target.name}
        if classes is not None:
            probabilities = torch.softmax(output.double(), -1).tolist()
            best = max(range(len(probabilities)), key=probabilities.__getitem__)
            entry.update(prediction=classes[best], probability=probabilities[best],
                         probabilities=dict(zip(classes, probabilities)))
            line = f"{path}\t{target.name}\t{classes[best]}\t{probabilities[best]:.4f}"
        else:
            entry["prediction"] = float(target.decode(output[None])[0])
            line = f"{path}\t{target.name}\t{entry['prediction']:.6g}"
        results[path] = entry
        if not as_json:
            print(line, flush=True)
    if as_json:
        errors = dict(failures)
        print(json_text([results[path] if path in results else {"file": str(path), "error": errors[path]}
                          for path in files], indent=2))
    _finish(files, failures, f"predictions for the other {len(results)} printed")


@app.command()
def embed(
    run: Path = typer.Argument(..., help="Run directory made by 'sne train'."),
    files: List[Path] = typer.Argument(..., help="Checkpoint files (safetensors or PyTorch state_dicts) or "
                                        "Hugging Face model directories."),
    out: Path = typer.Option(..., "--out", help="Output file: .npy, an array of shape (files, encoding size); "
                             ".csv, a table with a 'file' column and one column z0, z1, ... per dimension."),
    arch: Optional[str] = typer.Option(None, "--arch", help=_ARCH_HELP),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Networks per forward pass."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", min=1, help="SNE: chunks (of 32 parameters) "
                                              "encoded at a time; memory grows with it (default 128)."),
) -> None:
    """Write the encoder's code z for each checkpoint file to a .npy array or a .csv table, one row
    per file in the order given.

    A file that cannot be read is reported on its own line (stderr) and gets no row: the output then
    holds the codes of the other files, still in the order given (a .csv names each row's file), and
    the command exits with code 2. Nothing is written when no file can be read.
    """
    import numpy as np

    from sne.io_utils import atomic_path
    from sne.train import load_run

    if out.suffix not in (".npy", ".csv"):
        raise SneError(f"--out {out}: name a .npy or a .csv file")
    trained = load_run(run, device=device)
    _set_micro_batch(trained.predictor.encoder, micro_batch)
    predictor = trained.predictor
    failures: list = []
    read = list(_each_file(files, arch, predictor.encoder, batch_size,
                           lambda records: predictor.embed(records, len(records)), failures,
                           trained.training_architectures))
    rows = [row for _, row in read]
    if rows:
        codes = np.stack(rows)
        with atomic_path(out) as tmp:
            if out.suffix == ".csv":
                import pandas as pd

                table = pd.DataFrame(codes, columns=[f"z{i}" for i in range(codes.shape[1])])
                table.insert(0, "file", [str(path) for path, _ in read])
                table.to_csv(tmp, index=False, float_format="%.9g")
            else:
                with open(tmp, "wb") as handle:
                    np.save(handle, codes)
        console.print(f"{codes.shape[0]} encodings of size {codes.shape[1]} written to [bold]{escape(str(out))}[/bold]",
                      highlight=False)
    _finish(files, failures, f"{out} holds the codes of the other {len(rows)}, in the order given"
            if rows else "nothing written")


def _encoder_defaults(cls) -> dict:
    """An encoder's options and their defaults, found where the encoders keep them: a class's
    ``defaults``, its module's ``DEFAULT_OPTIONS``, or ``COMMON_OPTIONS`` plus ``extra_options``."""
    for klass in cls.__mro__:
        if isinstance(klass.__dict__.get("defaults"), dict):
            return dict(klass.__dict__["defaults"])
        module = sys.modules.get(klass.__module__)
        if isinstance(getattr(module, "DEFAULT_OPTIONS", None), dict):
            return dict(module.DEFAULT_OPTIONS)
        if isinstance(getattr(module, "COMMON_OPTIONS", None), dict):
            return {**module.COMMON_OPTIONS, **getattr(cls, "extra_options", {})}
    return {}


def encoder_descriptions() -> list[dict]:
    """Per registered encoder: what it reads, a one-line summary, its options with their defaults,
    its own training defaults, and whether it has weight-space outputs."""
    from sne.encoders import encoder_names, get_encoder_class
    from sne.encoders.common import ANY_NETWORK_ENCODERS

    any_network = {name.strip() for name in ANY_NETWORK_ENCODERS.split(",")}
    described = []
    for name in encoder_names():
        cls = get_encoder_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        described.append({
            "name": name,
            "reads": "any network" if name in any_network else "one fixed architecture (that of its training zoo)",
            "summary": _plain(doc[0].strip()) if doc else "",
            "options": _encoder_defaults(cls),
            "train_defaults": dict(cls.default_train_options),
            "weight_outputs": bool(cls.weight_outputs),
        })
    return described


def _plain(text: str) -> str:
    """A docstring line without reStructuredText roles and literals."""
    return re.sub(r"``([^`]*)``", r"\1", re.sub(r":\w+:`~?([^`]*)`", r"\1", text))


def _option_text(value: Any) -> str:
    """An option value as ``-o key=VALUE`` reads it back (strings plain, the rest compact JSON)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


@app.command()
def encoders(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the registered encoders: what each reads, its options (-o key=value) with their defaults."""
    from sne.train.run import train_flag

    described = encoder_descriptions()
    if as_json:
        print(json_text(described, indent=2))
        return
    for entry in described:
        print(f"{entry['name']}: reads {entry['reads']}. {entry['summary']}")
        options = " ".join(f"{key}={_option_text(value)}" for key, value in entry["options"].items())
        print(f"  options: {options or '(none)'}")
        if entry["train_defaults"]:
            print("  training defaults: " + " ".join(train_flag(k, v) for k, v in entry["train_defaults"].items()))


bench_app = typer.Typer(no_args_is_help=True, help="Run the paper's benchmarks; results go to results/*.json.")
app.add_typer(bench_app, name="bench")


_ENCODER_OPTION_HELP = "Encoder option key=value, or NAME.key=value for encoder NAME only (repeatable)."


def _csv(value: str, kind=str, required: str | None = None) -> list:
    """``value``'s comma-separated items as ``kind``; with ``required`` (the option's name), at least one."""
    try:
        items = [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SneError(f"cannot read '{value}' as a comma-separated list of {kind.__name__}") from None
    if required and not items:
        raise SneError(f"{required} is empty: give at least one value")
    return items


def _encoder_list(value: str) -> list[str]:
    """Comma-separated encoder names, or ``all`` registered encoders; unknown names fail before any work."""
    from sne.encoders import encoder_names, get_encoder_class

    names = encoder_names() if value.strip() == "all" else _csv(value, required="--encoders")
    for name in names:
        get_encoder_class(name)
    return names


#: Options shared by the one-zoo benchmark commands (inr, digit-inr).
_ONE_ZOO = {
    "encoders": typer.Option("sne", "--encoders", help="Comma-separated encoder names, or all."),
    "invariance_weights": typer.Option("0", "--invariance-weights", help="Comma-separated lambdas."),
    "seeds": typer.Option("0", "--seeds"),
    "epochs": typer.Option(100, "--epochs"),
    "results": typer.Option(Path("results"), "--results"),
    "option": typer.Option([], "--option", "-o", help=_ENCODER_OPTION_HELP),
    "device": typer.Option("auto", "--device"),
    "augment": typer.Option(None, "--augment-permutations/--no-augment-permutations",
                            help="Train on fresh functionally-equivalent permutations of the networks (default: "
                                 "each encoder's; rows and runs are named by it)."),
    "sign_flips": typer.Option(None, "--augment-sign-flips/--no-augment-sign-flips",
                               help="Also flip the signs of random hidden neurons whose activation is odd (sine, "
                                    "tanh) every epoch (default: each encoder's, SNE's auto: on unless the training "
                                    "networks share their signs; rows and runs are named by it)."),
    "test_time_flips": typer.Option(None, "--test-time-flips", min=0, help="Average each prediction over the "
                                    "network and this many random sign-flipped copies of it, for runs trained on "
                                    "sign flips (default: the encoder's; runs are shared, rows named by it)."),
    "batch_size": _TRAIN_BATCH_SIZE,
    "lr": _TRAIN_LR,
    "schedule": _TRAIN_SCHEDULE,
    "warmup_epochs": _TRAIN_WARMUP,
    "ema_epochs": _TRAIN_EMA,
    "bn_recalibration": typer.Option(None, "--bn-recalibration", min=0, help="After every epoch, re-estimate batch-norm statistics over "
                                     "this many training batches (default: the encoder's, else 0: off; rows and runs "
                                     "are named by it)."),
}


def _training(*, augment: Optional[bool] = None, sign_flips: Optional[bool] = None,
              test_time_flips: Optional[int] = None, **same_name: Any) -> dict[str, Any]:
    """A bench command's training flags as :class:`~sne.train.run.TrainConfig` fields (``None``: the
    encoder's default); flags named as their field (``lr``, ``batch_size``, ...) pass as they are."""
    return {"permutation_augment": augment, "sign_flip_augment": sign_flips, "test_time_flips": test_time_flips,
            **same_name}


def _bench_runs(encoders: list[str], seeds: str, epochs: int, runs: Path, results: Path, option: List[str],
                device: str, training: dict[str, Any]) -> "BenchRuns":
    from sne.bench.runs import BenchRuns

    return BenchRuns(
        encoders=encoders, seeds=_csv(seeds, int, "--seeds"), epochs=epochs, runs_dir=runs, results_dir=results, device=device,
        encoder_options=parse_options(option), train_options=training, command=_command_line(),
    )


def _one_zoo(benchmark: str, zoo: Path, encoders: str, invariance_weights: str, seeds: str, epochs: int, runs: Path,
             results: Path, option: List[str], device: str, training: dict[str, Any]) -> None:
    from sne.bench.inr import run_inr_benchmark

    bench_runs = _bench_runs(_encoder_list(encoders), seeds, epochs, runs, results, option, device, training)
    path = run_inr_benchmark(zoo, bench_runs, _csv(invariance_weights, float, "--invariance-weights"),
                             benchmark=benchmark)
    console.print(f"results written to [bold]{escape(str(path))}[/bold]; regenerate docs with 'make results'")


@bench_app.command("inr")
def bench_inr(
    zoo: Path = typer.Option(..., "--zoo", help="A sine-INR zoo."),
    encoders: str = _ONE_ZOO["encoders"],
    invariance_weights: str = _ONE_ZOO["invariance_weights"],
    seeds: str = _ONE_ZOO["seeds"],
    epochs: int = _ONE_ZOO["epochs"],
    runs: Path = typer.Option(Path("runs/inr"), "--runs", help="Where the runs are kept (resumable)."),
    results: Path = _ONE_ZOO["results"],
    option: List[str] = _ONE_ZOO["option"],
    device: str = _ONE_ZOO["device"],
    augment: Optional[bool] = _ONE_ZOO["augment"],
    batch_size: Optional[int] = _ONE_ZOO["batch_size"],
    lr: Optional[float] = _ONE_ZOO["lr"],
    schedule: Optional[str] = _ONE_ZOO["schedule"],
    warmup_epochs: Optional[float] = _ONE_ZOO["warmup_epochs"],
    ema_epochs: Optional[float] = _ONE_ZOO["ema_epochs"],
    sign_flips: Optional[bool] = _ONE_ZOO["sign_flips"],
    test_time_flips: Optional[int] = _ONE_ZOO["test_time_flips"],
    bn_recalibration: Optional[int] = _ONE_ZOO["bn_recalibration"],
) -> None:
    """INR frequency regression: train and evaluate each encoder; write results/inr_frequency_<init>.json."""
    _one_zoo("inr_frequency", zoo, encoders, invariance_weights, seeds, epochs, runs, results, option, device,
             _training(augment=augment, sign_flips=sign_flips, test_time_flips=test_time_flips, lr=lr,
                       schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs, batch_size=batch_size,
                       bn_recalibration=bn_recalibration))


@bench_app.command("digit-inr")
def bench_digit_inr(
    zoo: Path = typer.Option(..., "--zoo", help="A digit-INR zoo."),
    encoders: str = _ONE_ZOO["encoders"],
    invariance_weights: str = _ONE_ZOO["invariance_weights"],
    seeds: str = _ONE_ZOO["seeds"],
    epochs: int = _ONE_ZOO["epochs"],
    runs: Path = typer.Option(Path("runs/digit-inr"), "--runs", help="Where the runs are kept (resumable)."),
    results: Path = _ONE_ZOO["results"],
    option: List[str] = _ONE_ZOO["option"],
    device: str = _ONE_ZOO["device"],
    augment: Optional[bool] = _ONE_ZOO["augment"],
    batch_size: Optional[int] = _ONE_ZOO["batch_size"],
    lr: Optional[float] = _ONE_ZOO["lr"],
    schedule: Optional[str] = _ONE_ZOO["schedule"],
    warmup_epochs: Optional[float] = _ONE_ZOO["warmup_epochs"],
    ema_epochs: Optional[float] = _ONE_ZOO["ema_epochs"],
    sign_flips: Optional[bool] = _ONE_ZOO["sign_flips"],
    test_time_flips: Optional[int] = _ONE_ZOO["test_time_flips"],
    bn_recalibration: Optional[int] = _ONE_ZOO["bn_recalibration"],
) -> None:
    """Digit-INR classification: predict each INR's digit; write results/digit_inr_label_<init>.json."""
    _one_zoo("digit_inr_label", zoo, encoders, invariance_weights, seeds, epochs, runs, results, option, device,
             _training(augment=augment, sign_flips=sign_flips, test_time_flips=test_time_flips, lr=lr,
                       schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs, batch_size=batch_size,
                       bn_recalibration=bn_recalibration))


@bench_app.command("ablation")
def bench_ablation(
    zoo: Path = typer.Option(..., "--zoo", help="An INR zoo (the paper's ablations use sine INRs)."),
    study: str = typer.Option(..., "--study", help="components, chunk-size, invariance, training or data-fraction."),
    rows: str = typer.Option("", "--rows", help="Comma-separated rows of the study to run (default: all)."),
    encoders: str = typer.Option("", "--encoders", help="data-fraction only: comma-separated encoders "
                                 "(default sne,dwsnet,nft,ng_gnn)."),
    fractions: str = typer.Option("", "--fractions", help="data-fraction only: comma-separated fractions of the "
                                  "training networks (default 0.1,0.25,0.5,1)."),
    invariance_weight: float = typer.Option(0.0, "--invariance-weight", help="Base lambda of every row that does not set its own."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="Use only this many training networks (subset sweeps)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target column (default: frequency, else label)."),
    seeds: str = _ONE_ZOO["seeds"],
    epochs: int = _ONE_ZOO["epochs"],
    runs: Path = typer.Option(Path("runs/ablation"), "--runs", help="Where the runs are kept (resumable)."),
    results: Path = _ONE_ZOO["results"],
    option: List[str] = typer.Option([], "--option", "-o", help="Base encoder option key=value, or NAME.key=value "
                                     "(repeatable); each row changes this base."),
    device: str = _ONE_ZOO["device"],
    augment: Optional[bool] = _ONE_ZOO["augment"],
    batch_size: Optional[int] = _ONE_ZOO["batch_size"],
    lr: Optional[float] = _ONE_ZOO["lr"],
    schedule: Optional[str] = _ONE_ZOO["schedule"],
    warmup_epochs: Optional[float] = _ONE_ZOO["warmup_epochs"],
    ema_epochs: Optional[float] = _ONE_ZOO["ema_epochs"],
    sign_flips: Optional[bool] = _ONE_ZOO["sign_flips"],
    test_time_flips: Optional[int] = _ONE_ZOO["test_time_flips"],
    bn_recalibration: Optional[int] = _ONE_ZOO["bn_recalibration"],
) -> None:
    """SNE's ablations (paper Tables 6-7, Figure 3; lambda sweep): train every row of a study at the
    same epochs and seeds; write results/ablation_<study>_<init>.json."""
    from sne.bench.ablation import run_ablation, study_rows

    chosen = study_rows(study, _csv(rows), _encoder_list(encoders) if encoders.strip() else (),
                        _csv(fractions, float))
    training = _training(augment=augment, sign_flips=sign_flips, test_time_flips=test_time_flips, lr=lr,
                         schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs, batch_size=batch_size,
                         bn_recalibration=bn_recalibration)
    bench_runs = _bench_runs(sorted({row.encoder for row in chosen}), seeds, epochs, runs, results, option, device,
                             training)
    path = run_ablation(zoo, bench_runs, study, chosen, target=target, base_invariance_weight=invariance_weight,
                        max_train=max_train)
    console.print(f"results written to [bold]{escape(str(path))}[/bold]; regenerate docs with 'make results'")


@bench_app.command("style-edit")
def bench_style_edit(
    zoo: Path = typer.Option(..., "--zoo", help="A digit-INR zoo."),
    encoders: str = typer.Option("sne", "--encoders",
                                 help="Comma-separated encoder names, or all (every encoder with weight-space outputs)."),
    seeds: str = _ONE_ZOO["seeds"],
    epochs: int = _ONE_ZOO["epochs"],
    lr: Optional[float] = _TRAIN_LR,
    batch_size: Optional[int] = _TRAIN_BATCH_SIZE,
    schedule: Optional[str] = _TRAIN_SCHEDULE,
    warmup_epochs: Optional[float] = _TRAIN_WARMUP,
    ema_epochs: Optional[float] = _TRAIN_EMA,
    runs: Path = typer.Option(Path("runs/style-edit"), "--runs", help="Where the runs are kept (resumable)."),
    results: Path = _ONE_ZOO["results"],
    option: List[str] = _ONE_ZOO["option"],
    device: str = _ONE_ZOO["device"],
) -> None:
    """Dilation style editing: each encoder learns a weight edit that dilates a digit INR's image;
    write results/style_edit_<init>.json and a plot per run."""
    from sne.bench.style_edit import run_style_edit_benchmark
    from sne.encoders.base import weight_output_encoder_names

    names = weight_output_encoder_names() if encoders.strip() == "all" else _encoder_list(encoders)
    training = _training(lr=lr, batch_size=batch_size, schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs)
    path = run_style_edit_benchmark(zoo, _bench_runs(names, seeds, epochs, runs, results, option, device, training))
    console.print(f"results written to [bold]{escape(str(path))}[/bold]; regenerate docs with 'make results'")


def _zoo_list(values: List[str]) -> list[str]:
    """``--zoos a,b --zoos c`` -> [a, b, c]: repeated and comma-separated forms both work."""
    zoos = [z.strip() for value in values for z in value.split(",") if z.strip()]
    if not zoos:
        raise SneError("no zoos given")
    return zoos


def _transfer(benchmark: str, train_zoos: list[str], test_zoos: list[str], target: str, encoders: str, seeds: str,
              epochs: int, runs: Path, results: Path, option: List[str], device: str, name: Optional[str],
              training: dict[str, Any]) -> None:
    from sne.bench.transfer import check_results_name, run_transfer_benchmark

    if name is not None:
        check_results_name(name)  # before the encoders are checked and any zoo is opened
    bench_runs = _bench_runs(_encoder_list(encoders), seeds, epochs, runs, results, option, device, training)
    path = run_transfer_benchmark(benchmark, train_zoos, test_zoos, bench_runs, target=target, name=name)
    console.print(f"results written to [bold]{escape(str(path))}[/bold]; regenerate docs with 'make results'")


#: Options shared by the cross-zoo benchmark commands.
_TRANSFER = {
    "target": typer.Option("test_accuracy", "--target", help="Target column every zoo has."),
    "encoders": typer.Option("sne", "--encoders", help="Comma-separated encoder names, or all."),
    "seeds": typer.Option("0", "--seeds"),
    "epochs": typer.Option(30, "--epochs"),
    "lr": _TRAIN_LR,
    "batch_size": _TRAIN_BATCH_SIZE,
    "schedule": _TRAIN_SCHEDULE,
    "warmup_epochs": _TRAIN_WARMUP,
    "ema_epochs": _TRAIN_EMA,
    "runs": typer.Option(Path("runs"), "--runs", help="Where the runs are kept (resumable)."),
    "results": typer.Option(Path("results"), "--results"),
    "option": typer.Option([], "--option", "-o", help=_ENCODER_OPTION_HELP),
    "device": typer.Option("auto", "--device"),
    "name": typer.Option(None, "--name", help="Write the rows to <results>/NAME.json, a transfer study of its own "
                         "(default: the benchmark's file)."),
    "augment": _ONE_ZOO["augment"],
    "sign_flips": _ONE_ZOO["sign_flips"],
    "test_time_flips": _ONE_ZOO["test_time_flips"],
    "bn_recalibration": _ONE_ZOO["bn_recalibration"],
    "max_train": typer.Option(None, "--max-train", help="Train on only the first N networks of each training zoo's "
                              "train split (rows and runs are named by it); validation and test splits stay whole."),
}


@bench_app.command("cross-dataset")
def bench_cross_dataset(
    zoos: List[str] = typer.Option(..., "--zoos", help="Zoos of one architecture on different datasets (comma-separated or repeated)."),
    target: str = _TRANSFER["target"],
    encoders: str = _TRANSFER["encoders"],
    seeds: str = _TRANSFER["seeds"],
    epochs: int = _TRANSFER["epochs"],
    lr: Optional[float] = _TRANSFER["lr"],
    schedule: Optional[str] = _TRANSFER["schedule"],
    warmup_epochs: Optional[float] = _TRANSFER["warmup_epochs"],
    ema_epochs: Optional[float] = _TRANSFER["ema_epochs"],
    batch_size: Optional[int] = _TRANSFER["batch_size"],
    runs: Path = _TRANSFER["runs"],
    results: Path = _TRANSFER["results"],
    option: List[str] = _TRANSFER["option"],
    device: str = _TRANSFER["device"],
    name: Optional[str] = _TRANSFER["name"],
    augment: Optional[bool] = _TRANSFER["augment"],
    sign_flips: Optional[bool] = _TRANSFER["sign_flips"],
    test_time_flips: Optional[int] = _TRANSFER["test_time_flips"],
    max_train: Optional[int] = _TRANSFER["max_train"],
    bn_recalibration: Optional[int] = _TRANSFER["bn_recalibration"],
) -> None:
    """Train on each zoo, report Kendall's tau of test accuracy on every zoo's test split (results/cross_dataset.json,
    or results/NAME.json with --name)."""
    zoo_paths = _zoo_list(zoos)
    _transfer("cross_dataset", zoo_paths, zoo_paths, target, encoders, seeds, epochs, runs, results, option, device, name,
              _training(augment=augment, sign_flips=sign_flips, test_time_flips=test_time_flips, lr=lr,
                        schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs, batch_size=batch_size,
                        bn_recalibration=bn_recalibration, max_train=max_train))


@bench_app.command("cross-arch")
def bench_cross_arch(
    train: List[str] = typer.Option(..., "--train", help="Training zoos, e.g. small-cnn zoos (comma-separated or repeated)."),
    test: List[str] = typer.Option(..., "--test", help="Test zoos of an unseen architecture, e.g. cnn-s zoos."),
    target: str = _TRANSFER["target"],
    encoders: str = _TRANSFER["encoders"],
    seeds: str = _TRANSFER["seeds"],
    epochs: int = _TRANSFER["epochs"],
    lr: Optional[float] = _TRANSFER["lr"],
    schedule: Optional[str] = _TRANSFER["schedule"],
    warmup_epochs: Optional[float] = _TRANSFER["warmup_epochs"],
    ema_epochs: Optional[float] = _TRANSFER["ema_epochs"],
    batch_size: Optional[int] = _TRANSFER["batch_size"],
    runs: Path = _TRANSFER["runs"],
    results: Path = _TRANSFER["results"],
    option: List[str] = _TRANSFER["option"],
    device: str = _TRANSFER["device"],
    name: Optional[str] = _TRANSFER["name"],
    augment: Optional[bool] = _TRANSFER["augment"],
    sign_flips: Optional[bool] = _TRANSFER["sign_flips"],
    test_time_flips: Optional[int] = _TRANSFER["test_time_flips"],
    max_train: Optional[int] = _TRANSFER["max_train"],
    bn_recalibration: Optional[int] = _TRANSFER["bn_recalibration"],
) -> None:
    """Train on each --train zoo, report Kendall's tau on every --test zoo (results/cross_arch.json, or
    results/NAME.json with --name, e.g. --name vit for a small-cnn -> ViT study)."""
    _transfer("cross_arch", _zoo_list(train), _zoo_list(test), target, encoders, seeds, epochs, runs, results, option,
              device, name, _training(augment=augment, sign_flips=sign_flips, test_time_flips=test_time_flips, lr=lr,
                                      schedule=schedule, warmup_epochs=warmup_epochs, ema_epochs=ema_epochs, batch_size=batch_size,
                                      bn_recalibration=bn_recalibration, max_train=max_train))


@bench_app.command("breakdown")
def bench_breakdown(
    runs: List[Path] = typer.Argument(..., help="Run directories made by 'sne train' or 'sne bench'."),
    by: str = typer.Option(..., "--by", help="Column of the zoos' tables to group the networks by, e.g. a "
                           "hyper-parameter or the target."),
    name: str = typer.Option(..., "--name", help="Write results/NAME.json (more runs are added to it)."),
    zoo: List[str] = typer.Option([], "--zoo", help="Test zoos (comma-separated or repeated; default: each run's "
                                  "own)."),
    bins: int = typer.Option(5, "--bins", min=2, help="Quantile bins of a numeric column (a column of this many "
                             "values or fewer is grouped by value)."),
    results: Path = typer.Option(Path("results"), "--results"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Each run's test metrics on each zoo, group by group of a column: where its error comes from."""
    from sne.bench.breakdown import grouped_evaluation

    path = grouped_evaluation(name, [str(r) for r in runs], _zoo_list(zoo) if zoo else [], by, bins, device,
                              _command_line(), results)
    console.print(f"results written to {escape(str(path))}; regenerate docs with 'make results'")


def main() -> None:
    keep_large_blocks_in_heap()
    try:
        # Outside standalone mode click returns (not raises) the code of a typer.Exit.
        code = app(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            sys.exit(code)
    except SneError as error:
        _say_error(str(error))
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except BrokenPipeError:  # the reader of stdout went away (sne encoders | head -1): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as error:  # a full disk, a read-only or vanished directory: the OS's reason, one line
        _say_error(str(error))
        sys.exit(2)
    except Exception as error:
        # Usage errors are click's ClickException, which newer typer releases vendor as
        # typer._click: recognised by what they do, so no click import is needed.
        if callable(getattr(error, "show", None)) and isinstance(getattr(error, "exit_code", None), int):
            _show_usage_error(error)
            sys.exit(2)
        if os.environ.get("SNE_DEBUG"):
            raise
        # Not a usage error nor one sne foresaw (a bug, or a damaged file that slipped past a check):
        # one line, exit code 1; SNE_DEBUG=1 shows the traceback.
        _say_error(f"unexpected {type(error).__name__}: {one_line(error)} (a bug, or a damaged input; "
                   f"SNE_DEBUG=1 shows the traceback)")
        sys.exit(1)


def _show_usage_error(error: Exception) -> None:
    """A usage error in two lines: the command's usage, then what is wrong and where help is."""
    ctx = getattr(error, "ctx", None)
    format_message = getattr(error, "format_message", None)
    if type(error).__name__ == "NoArgsIsHelpError" or not callable(format_message):
        error.show()  # a bare group or command: its help
        return
    try:
        message = one_line(format_message())
        usage, command = (one_line(ctx.get_usage()), ctx.command_path) if ctx is not None else (None, None)
    except Exception:  # noqa: BLE001 - an unexpected error object: click's own rendering
        error.show()
        return
    if usage:
        console.print(escape(usage), highlight=False, soft_wrap=True)
    _say_error(f"{message} (see '{command} --help')" if command else message)
