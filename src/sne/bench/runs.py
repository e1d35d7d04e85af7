"""What every benchmark takes besides its data: the runs to train, their settings, and where they go.

One :class:`BenchRuns` is built by each ``sne bench`` command and handed to its runner, so the
inr, digit-inr, style-edit, cross-dataset and cross-arch benchmarks name, configure and key their
runs the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sne.encoders import get_encoder_class, options_for_encoder
from sne.errors import SneError
from sne.train.run import (
    EVALUATION_FIELDS,
    SIGN_FLIPS_AUTO,
    TRAIN_DEFAULTS,
    TUNED_TRAINING,
    TrainConfig,
    check_train_config,
    hardware_description,
    resolve_device,
)


@dataclass(frozen=True)
class BenchRuns:
    """Encoders x seeds to train for ``epochs`` each, runs under ``runs_dir`` (resumable), results
    (``*.json``, and plots unless ``plots`` is off) under ``results_dir``.

    ``encoder_options`` are ``key=value`` for every encoder or ``name.key=value`` for one;
    ``train_options`` are :class:`~sne.train.run.TrainConfig` fields (``None`` values mean the
    encoder's or the shared default); ``command`` is the command line, recorded in every result.
    """

    encoders: Sequence[str]
    seeds: Sequence[int]
    epochs: int
    runs_dir: Path
    results_dir: Path
    device: str = "auto"
    encoder_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    plots: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs_dir", Path(self.runs_dir))
        object.__setattr__(self, "results_dir", Path(self.results_dir))
        object.__setattr__(self, "train_options", {k: v for k, v in self.train_options.items() if v is not None})
        for encoder in self.encoders:  # a bad setting fails before any zoo is read, not in the first run
            check_train_config(self.train_config(encoder, "", "", 0))

    def options_for(self, encoder: str) -> dict[str, Any]:
        """The encoder options given for ``encoder`` (empty: its defaults)."""
        return options_for_encoder(encoder, self.encoder_options)

    def run_name(self, encoder: str) -> str:
        """``encoder`` plus the options and training switches given for it: runs of other options never
        share a directory. (Augmentation is named where on, the batch size where not 64, the schedule
        where not multistep and weight averaging where on, whatever the encoder's defaults, as run
        directories always named them: a default that changes never gives an old run's directory a new
        meaning.)"""
        defaults = {**get_encoder_class(encoder).train_defaults(self.options_for(encoder)), "permutation_augment": False,
                    **{name: TRAIN_DEFAULTS[name] for name in ("batch_size", "schedule", "ema_epochs")}}
        switches = training_switches(self.resolved_train_options(encoder), defaults)
        switches = {k: v for k, v in switches.items() if k not in EVALUATION_FIELDS}
        return encoder + options_tag({**self.options_for(encoder), **switches})

    def plot_name(self, encoder: str, seed: int, summary: dict[str, Any]) -> str:
        """:meth:`run_name` and seed, then 8 hex digits of what the run was built with (its resolved
        encoder options, from its training ``summary``, and training settings): two configurations
        whose given options coincide because a default changed between them never overwrite each
        other's plots in results/."""
        built = {name: value for name, value in asdict(self.train_config(encoder, "", "", seed)).items()
                 if name not in _NOT_CONFIGURATION}
        built["encoder_options"] = summary["encoder_options_resolved"]
        digest = hashlib.sha256(json.dumps(built, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.run_name(encoder)}_seed{seed}_{digest}"

    def resolved_train_options(self, encoder: str) -> dict[str, Any]:
        """The training settings given, over ``encoder``'s training defaults for its options."""
        return {**get_encoder_class(encoder).train_defaults(self.options_for(encoder)), **self.train_options}

    def trained_run_fields(self, encoder: str, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """What every results entry says of one trained run: encoder, options, run directory, size,
        epochs, training networks, learning rate and batch size, training time (from its training ``summary``),
        and the hardware it ran on."""
        config = self.train_config(encoder, "", "", 0)
        return {
            "encoder": encoder,
            "encoder_options_given": self.options_for(encoder),
            "encoder_options_resolved": summary["encoder_options_resolved"],
            "run": str(run_dir),
            "encoder_parameters": summary["encoder_parameters"],
            "epochs": summary["epochs"],
            "train_networks": summary.get("train_networks"),
            **{name: getattr(config, name) for name in TUNED_TRAINING},
            "sign_flip_choice": summary.get("sign_flip_choice"),
            "best_epoch": summary["best_epoch"],
            "best_val_loss": summary["best_val_loss"],
            "constant_val_loss": summary.get("constant_val_loss"),
            "train_seconds": summary["train_seconds"],
            "hardware": hardware_description(resolve_device(self.device)),
        }

    def train_config(self, encoder: str, zoo: str | Path, target: str, seed: int, **fields: Any) -> TrainConfig:
        """The run's :class:`~sne.train.run.TrainConfig` (``fields`` are further config fields)."""
        return TrainConfig.for_encoder(
            encoder, zoo=str(zoo), target=target, encoder_options=self.options_for(encoder), epochs=self.epochs,
            seed=seed, device=self.device, command=self.command, **{**self.train_options, **fields},
        )


#: TrainConfig fields that say where or how a run was launched, or that a plot is named by already.
_NOT_CONFIGURATION = ("zoo", "target", "device", "num_workers", "command", "seed", "encoder_options")


def training_switches(fields: dict, defaults: dict | None = None) -> dict:
    """The training settings in ``fields`` (TrainConfig fields, or a results row) that make a
    configuration of its own: permutation augmentation where it differs from ``defaults`` (None:
    off, as run names spell it), a cap on the training networks (``max_train``) where one was
    set, and the settings of :data:`~sne.train.run.TUNED_TRAINING` (optimiser, schedule, batch,
    batch-norm recalibration, sign flips) where they differ from ``defaults``' (or, not there,
    TrainConfig's). A row written before a setting existed, or was recorded, had it off or at its
    default."""
    on = bool(fields.get("permutation_augment"))
    switches = {} if on == bool((defaults or {}).get("permutation_augment")) else {"augment_permutations": on}
    if fields.get("max_train") is not None:
        switches["max_train"] = fields["max_train"]
    for name in TUNED_TRAINING:
        default = (defaults or {}).get(name, TRAIN_DEFAULTS[name])
        value = fields.get(name, BEFORE_IT_EXISTED.get(name))
        if name == "test_time_flips" and not fields.get("sign_flip_augment", BEFORE_IT_EXISTED["sign_flip_augment"]):
            continue  # averaging over flips follows training on them (TrainConfig.for_encoder): no flips says it
        if value is not None and value != default:
            switches[name] = value
    return switches


#: What a results row or run written before a training field existed (or was recorded) was trained
#: with, the field's default having changed since: every row that does not record its batch size was
#: trained at 64 unless its command said otherwise.
BEFORE_IT_EXISTED = {"bn_recalibration": 0, "sign_flip_augment": False, "test_time_flips": 0, "batch_size": 64,
                     "schedule": "multistep", "ema_epochs": 0.0}


def _row_train_defaults(entry: dict) -> dict:
    """The training defaults of a results row's encoder for the options it was given, as of this
    release (none for an encoder it no longer has)."""
    try:
        return get_encoder_class(entry["encoder"]).train_defaults(dict(entry.get("encoder_options_given") or {}))
    except (KeyError, SneError):
        return {}


def options_tag(options: dict) -> str:
    """A run-directory suffix naming the encoder options given ('' for the encoder's defaults)."""
    text = "".join(f"_{key}-{json.dumps(value, sort_keys=True)}" for key, value in sorted(options.items()))
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", text)


def options_apart_from_defaults(entry: dict) -> dict:
    """A results row's encoder options that differ from the encoder's current defaults
    (``Encoder.options_baseline``): those given, and those it resolved to (``encoder_options_resolved``)
    or, for an option it did not record (a row written before rows recorded them, or before the
    option existed), the default of that time where it has changed since
    (``Encoder.defaults_of_older_configs``). So a row keeps meaning the encoder it measured when a
    default changes."""
    given = dict(entry.get("encoder_options_given") or {})
    try:
        cls = get_encoder_class(entry["encoder"])
    except (KeyError, SneError):  # a row naming no encoder, or one this release no longer has: as given
        return given
    defaults = cls.options_baseline({})
    preset = given.get("preset")
    if preset in cls.presets:
        # A preset stands for its options (also in rows that recorded no resolved ones); one of today's
        # defaults (SNE's fast, since it became them) is not named at all.
        given = {**cls.presets[preset], **given}
        if cls.options_baseline({"preset": preset}) == defaults:
            del given["preset"]
    resolved = {k: v for k, v in (entry.get("encoder_options_resolved") or {}).items() if k in defaults}
    built = {**cls.defaults_of_older_configs, **given, **resolved}
    # Defaults that follow other options (SNE's chunk width follows a smaller hidden) follow the
    # values the row was built with.
    baseline = cls.options_baseline(built)
    return {k: v for k, v in built.items() if k not in baseline or baseline[k] != v}


def configuration_name(entry: dict) -> str:
    """A results row's encoder, options apart from the defaults and training switches, as its run
    directory names them (``sne``, ``sne_use_source_features-true``): the key of per-configuration summaries."""
    return entry["encoder"] + options_tag(configuration_options(entry))


def built_otherwise(entry: dict, given: dict) -> dict:
    """Options a results row's encoder was built with where today's code, given the options ``given``,
    builds another value: {option: the row's value}. Empty when a default has not changed under it, and
    for a row that did not record the options it resolved to (it cannot be told)."""
    if not entry.get("encoder_options_resolved"):
        return {}
    try:
        cls = get_encoder_class(entry["encoder"])
    except (KeyError, SneError):
        return {}
    now = options_apart_from_defaults({"encoder": entry["encoder"], "encoder_options_given": given,
                                       "encoder_options_resolved": cls.resolved_options(given)})
    then = options_apart_from_defaults({**entry, "encoder_options_given": given})
    baseline = cls.options_baseline({})
    return {k: then.get(k, baseline.get(k)) for k in sorted(then.keys() | now.keys()) if then.get(k) != now.get(k)}


def configuration_label(encoder: str, options: dict | None) -> str:
    """An encoder with the options given, for people: ``sne (use_source_features=true)``."""
    given = ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted((options or {}).items()))
    return f"{encoder} ({given})" if given else encoder


def configuration_options(entry: dict) -> dict:
    """A results row's encoder options apart from the defaults (:func:`options_apart_from_defaults`)
    and its training switches apart from its encoder's training defaults (:func:`training_switches`):
    what makes its configuration."""
    defaults = _row_train_defaults(entry)
    if defaults.get("sign_flip_augment") == SIGN_FLIPS_AUTO:
        # Rows are named by what "auto" does on their own training networks.
        defaults["sign_flip_augment"] = auto_sign_flips_of(entry)
        if entry.get("sign_flip_augment") == SIGN_FLIPS_AUTO:
            entry = {**entry, "sign_flip_augment": defaults["sign_flip_augment"]}
    return {**options_apart_from_defaults(entry), **training_switches(entry, defaults)}


def auto_sign_flips_of(entry: dict) -> bool:
    """Whether ``sign_flip_augment="auto"`` flips signs on a results row's training networks: what
    its run recorded choosing (:func:`~sne.train.run.choose_sign_flips`) or, for a row from before
    the choice existed, whether its zoo was made from one shared initialisation (where "auto" measured off)."""
    choice = entry.get("sign_flip_choice")
    if choice:
        return bool(choice["sign_flip_augment"])
    return (entry.get("zoo_options") or {}).get("init") != "shared"


def options_key(entry: dict) -> str:
    """A results row's configuration (:func:`configuration_options`), as a key."""
    return json.dumps(configuration_options(entry), sort_keys=True)
