"""Fit an encoder + head on a zoo, with checkpoints every epoch, resume, and model selection on val.

A run directory holds ``config.json`` (everything the run needs), ``last.pt`` (full training state,
rewritten atomically each epoch), ``best.pt`` (the weights with the lowest validation loss) and
``history.json``. Re-running the same command on a run directory continues where it stopped.

:func:`fit` trains an encoder + head for a target; the loop itself (:func:`train_epochs`: optimizer,
schedule, seeded batch order, resume, checkpoints, model selection) is shared with tasks that train
other models on a zoo's networks, such as weight-space editing (:mod:`sne.bench.style_edit`).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.nn import functional as F

from sne import __version__
from sne.bench.environment import cpu_model
from sne.encoders import Encoder, batch_to, build_encoder, build_encoder_from_config, get_encoder_class
from sne.errors import CannotRead, SneError, one_line
from sne.io_utils import write_bytes_atomic, write_json_atomic
from sne.progress import Progress
from sne.train import distributed
from sne.train.predictor import Predictor
from sne.train.scalars import ScalarLog
from sne.train.targets import Target, build_head, resolve_target
from sne.weights.arch import TrainedArchitectures
from sne.weights.permute import (
    random_equivalent_permutation,
    random_sign_flips,
    sign_alignment,
    supports_permutation,
    supports_sign_flips,
)
from sne.weights.record import NetworkRecord
from sne.zoo import Zoo
from sne.zoo.recipes import derive_seed

#: Head hidden widths by target kind (GUIDE section 3: INR head 2 layers of 512, accuracy head a
#: 3-layer MLP of width 1000; "layers" counts linear layers, the last being the output layer).
DEFAULT_HEAD_HIDDEN = {"regression": [512], "unit_interval": [1000, 1000], "class": [512]}

#: Training precisions (TrainConfig.precision).
PRECISIONS = ("float32", "bfloat16")
#: Learning-rate schedules (TrainConfig.schedule).
SCHEDULES = ("multistep", "cosine", "constant")
#: What the invariance regulariser may compare (TrainConfig.invariance_on).
INVARIANCE_TARGETS = ("outputs", "codes")
#: Config fields that change how a trained run is evaluated, not how it trains: runs that differ only
#: there are one run (resumed, named and stored alike), evaluated each way asked.
EVALUATION_FIELDS = frozenset({"test_time_flips"})
#: TrainConfig fields, beyond the encoder and its options, that make a configuration of its own where
#: they differ from the encoder's training defaults: evaluations record them, and result tables name
#: rows apart by them (:func:`sne.bench.runs.training_switches`).
TUNED_TRAINING = ("lr", "batch_size", "bn_recalibration", "sign_flip_augment", "test_time_flips", "weight_decay",
                  "schedule", "milestones", "gamma", "warmup_epochs", "grad_clip", "ema_epochs")
#: Where each command takes the directory of its runs (named in refusals to resume a run).
RUN_DIRECTORY_FLAGS = "sne train --out, sne bench --runs"
#: Config fields that may change between a run and its resumption without changing its result.
_RESUMABLE_FIELDS = {"device", "num_workers", *EVALUATION_FIELDS}


@dataclass
class TrainConfig:
    zoo: str
    target: str
    encoder: str = "sne"
    encoder_options: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: "multistep": lr times ``gamma`` at each of ``milestones``; "cosine": lr decays along a half
    #: cosine to 0 over the epochs after the warm-up; "constant": lr throughout (after the warm-up), as
    #: for weight averaging (``ema_epochs``) in place of a decay.
    schedule: str = "multistep"
    #: MultiStepLR milestones as fractions of ``epochs``.
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])
    gamma: float = 0.1
    #: Raise the lr linearly from 0 over this many epochs (fractions allowed), step by step.
    warmup_epochs: float = 0.0
    #: Clip the gradient norm to this value (None: no clipping); guards against loss spikes.
    grad_clip: float | None = 1.0
    #: Select, evaluate and predict with an exponential moving average of the weights (batch-norm
    #: statistics included) over about this many epochs, not the weights of the last step (0: off).
    #: The optimizer still steps the weights themselves; only what is validated and kept changes.
    ema_epochs: float = 0.0
    #: lambda of the logit-invariance regulariser (0 disables it): the distance between the outputs
    #: for a network and for a random functionally-equivalent copy of it (its neurons permuted, and
    #: signs flipped as well where ``sign_flip_augment`` flips them).
    invariance_weight: float = 0.0
    #: What the regulariser compares: "outputs" (the head's raw outputs, the paper's logit
    #: invariance) or "codes" (the network codes z, their mean squared difference divided by the
    #: codes' variance over the batch, so that shrinking every code does not lower it).
    invariance_on: str = "outputs"
    #: Train every epoch on a fresh random functionally-equivalent permutation of each network
    #: (permutation augmentation), so that the encoder learns the symmetry from the data.
    permutation_augment: bool = False
    #: Also flip, every epoch, the sign of each hidden neuron with probability 1/2 where its
    #: activation is odd (sine, tanh: :func:`~sne.weights.permute.random_sign_flips`), a symmetry
    #: that neuron permutations do not cover. ``"auto"``: flip unless the training networks share
    #: their signs (:func:`choose_sign_flips`); a run saves what was chosen.
    sign_flip_augment: bool | str = False
    #: At evaluation and prediction (not validation), average each network's outputs with those of
    #: this many random sign-flipped copies of it (:func:`~sne.weights.permute.random_sign_flips`;
    #: raw outputs, logits for classes): what a model trained on flips was taught about a network,
    #: asked 1 + N ways. Networks without flippable neurons are predicted once. Only with
    #: ``sign_flip_augment``: a model never shown flipped networks is not asked about them (where
    #: ``"auto"`` chooses no flips, none are asked).
    test_time_flips: int = 0
    head_hidden: list[int] | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    #: Use only the first ``max_train`` training networks (None: all).
    max_train: int | None = None
    #: After every epoch, before validation, re-estimate every batch norm's running statistics as
    #: the plain average over this many training batches (forward in training mode, no gradients):
    #: running averages lag a model that moves fast, and the lag is worst where batch norms are
    #: stacked (SNE has one per stage). 0: keep the running averages.
    bn_recalibration: int = 0
    #: "float32", or "bfloat16": forward and backward under bfloat16 autocast (GPUs only: on the CPUs
    #: we measured, bfloat16 matmuls ran 7x slower than float32).
    precision: str = "float32"
    command: str = ""

    @classmethod
    def for_encoder(cls, encoder: str, **fields: Any) -> "TrainConfig":
        """A config where fields given as ``None`` take the encoder's training defaults
        (:meth:`~sne.encoders.base.Encoder.train_defaults` for its options), then the shared
        defaults; :class:`SneError` for an unknown encoder."""
        from sne.encoders import get_encoder_class

        defaults = get_encoder_class(encoder).train_defaults(fields.get("encoder_options") or {})
        chosen = {k: v for k, v in defaults.items() if fields.get(k) is None}
        chosen.update({k: v for k, v in fields.items() if v is not None})
        if fields.get("test_time_flips") is None and not chosen.get("sign_flip_augment"):
            chosen["test_time_flips"] = 0  # averaging over flips follows training on them
        return cls(encoder=encoder, **chosen)


#: TrainConfig's shared defaults, field by field (before any encoder's training defaults).
TRAIN_DEFAULTS: Mapping[str, Any] = MappingProxyType(asdict(TrainConfig(zoo="", target="")))

#: TrainConfig fields whose command-line flag is not the field's name.
TRAIN_FLAG_NAMES = {"permutation_augment": "augment-permutations", "sign_flip_augment": "augment-sign-flips"}


def train_flag(field: str, value: Any) -> str:
    """A training default as the flag that sets it: ``--lr 0.003``, ``--augment-permutations``."""
    flag = TRAIN_FLAG_NAMES.get(field, field.replace("_", "-"))
    if value == SIGN_FLIPS_AUTO:
        return f"--{flag} unless the training networks share their signs (auto)"
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise SneError(f"unknown device '{device}' (use cpu, cuda, cuda:N or auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SneError(f"device '{device}' requested but CUDA is not available on this machine")
    return resolved


def hardware_description(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": cpu_model(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _build_predictor(config: TrainConfig, target: Target, encoder_config: dict | None, architecture) -> Predictor:
    if encoder_config is None:
        encoder = build_encoder(config.encoder, architecture=architecture, **config.encoder_options)
    else:
        encoder = build_encoder_from_config(encoder_config)
    hidden = config.head_hidden if config.head_hidden is not None else DEFAULT_HEAD_HIDDEN[target.kind]
    head = build_head(encoder.out_dim, list(hidden), target.output_dim)
    return Predictor(encoder, head, target, test_time_flips=config.test_time_flips)


@dataclass(frozen=True)
class _Augmentation:
    """Which training networks are replaced, every epoch, by a random functionally-equivalent copy
    of themselves: one with its neurons permuted (``permutable``) and one with signs flipped
    (``flippable``), one flag per network (None: none is)."""

    permutable: Sequence[bool] | None = None
    flippable: Sequence[bool] | None = None

    @classmethod
    def of(cls, config: TrainConfig, records: Sequence) -> "_Augmentation":
        # Networks whose symmetries are unknown (a bare state_dict of a non-chain) train as they are.
        return cls([supports_permutation(r) for r in records] if config.permutation_augment else None,
                   [supports_sign_flips(r) for r in records] if config.sign_flip_augment else None)

    def __call__(self, members: list, chosen: Sequence[int], seed: int) -> list:
        # Streams of their own: the regulariser's copies are drawn as without augmentation, and
        # the permutations as without sign flips.
        if self.permutable is not None:
            generator = torch.Generator().manual_seed(derive_seed(seed, "train/augment"))
            members = [random_equivalent_permutation(r, generator) if self.permutable[i] else r
                       for i, r in zip(chosen, members)]
        return self.flip(members, chosen, seed, "train/sign-flips")

    def flip(self, members: list, chosen: Sequence[int], seed: int, stream: str) -> list:
        """``members`` (the networks ``chosen``) with random sign flips where flippable, drawn from
        ``stream`` of ``seed``; as they are when this run does not flip signs."""
        if self.flippable is None:
            return members
        generator = torch.Generator().manual_seed(derive_seed(seed, stream))
        return [random_sign_flips(r, generator) if self.flippable[i] else r for i, r in zip(chosen, members)]


class _EpochBatches(torch.utils.data.Dataset):
    """One epoch's batches; each item is prepared (and augmented) on its own, so workers can do it.
    ``permute``: a functionally-equivalent copy of each network is appended (the invariance
    regulariser's pairs): a random permutation, with random sign flips where ``augment`` flips signs.
    With ``world`` processes, process ``rank`` takes every ``world``-th network of each batch."""

    def __init__(self, prepare, records, batches: list[torch.Tensor], seeds: list[int], permute: bool,
                 rank: int = 0, world: int = 1, augment: _Augmentation = _Augmentation()):
        self.prepare, self.records, self.batches, self.seeds, self.permute = prepare, records, batches, seeds, permute
        self.rank, self.world, self.augment = rank, world, augment

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        chosen = self.batches[index].tolist()
        members = self.augment([self.records[i] for i in chosen], chosen, self.seeds[index])
        mine = slice(self.rank, None, self.world)
        permuted = []
        if self.permute:
            # Functionally-equivalent copies go in the same batch: one forward pass serves both.
            # Drawn for the whole batch on every process, so each network gets the copy it gets alone.
            generator = torch.Generator().manual_seed(self.seeds[index])
            permuted = [random_equivalent_permutation(r, generator) for r in members]
            # A run that flips signs asks its encoder to be invariant to flips too, and for an
            # encoder invariant to permutations by construction (default SNE) that is all the
            # regulariser can act on. A stream of its own: the permutations are drawn as without.
            permuted = self.augment.flip(permuted, chosen, self.seeds[index], "train/regulariser-flips")
        return self.batches[index], self.batches[index][mine], self.prepare(members[mine] + permuted[mine])


def _save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict:
    """A checkpoint this package wrote (tensors and plain data only); :class:`SneError` if unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a checkpoint we wrote is unreadable: say which file
        raise SneError(f"{path}: cannot read checkpoint ({type(error).__name__}: {one_line(error)})") from None


def _check_resume(run_dir: Path, config: TrainConfig, trained_zoo: str | None = None) -> None:
    """Refuse to resume ``run_dir`` with another configuration; the zoo may be spelled otherwise (a
    relative path from another directory) where it resolves to ``trained_zoo``, where training found it."""
    saved = json.loads((run_dir / "config.json").read_text())
    mine = json.loads(json.dumps(asdict(config)))
    # A field newer than the run's config.json has its default there.
    defaults = json.loads(json.dumps(asdict(TrainConfig(zoo=config.zoo, target=config.target))))
    here = Path(config.zoo).resolve()
    if here in {Path(saved.get("zoo", "")).resolve(), Path(trained_zoo) if trained_zoo else None}:
        mine["zoo"] = saved.get("zoo")
    changed = [k for k in mine if k not in _RESUMABLE_FIELDS | {"command"} and saved.get(k, defaults[k]) != mine[k]]
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in changed)
        raise SneError(f"{run_dir} holds a run with a different configuration ({details}); "
                       f"train into another directory ({RUN_DIRECTORY_FLAGS})")


def _check_resumed_encoder(run_dir: Path, saved: dict | None, mine: dict | None) -> None:
    """Refuse to resume a run whose encoder was built with other options, such as defaults that
    changed between releases while the options given stayed the same."""
    if saved is None or mine is None:
        return
    # The saved encoder as a load would rebuild it: options added since take the values they had
    # before they existed, so a run made before a new option resumes.
    with torch.random.fork_rng(devices=[]):
        saved = build_encoder_from_config(saved).config()
    saved, mine = (json.loads(json.dumps(c, sort_keys=True)) for c in (saved, mine))
    if saved != mine:
        old, new = saved.get("options", {}), mine.get("options", {})
        changed = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                            if old.get(k) != new.get(k)) or "architecture"
        raise SneError(f"{run_dir} holds a run whose encoder was built otherwise ({changed}); resume it with "
                       f"those options given (-o), or train into another directory ({RUN_DIRECTORY_FLAGS})")


#: ``TrainConfig.sign_flip_augment`` that decides from the training networks (:func:`choose_sign_flips`).
SIGN_FLIPS_AUTO = "auto"
#: At this :func:`~sne.weights.permute.sign_alignment` of the training networks or above, ``"auto"``
#: trains without sign flips. Measured: 0.00 on every independently initialised sine-INR zoo, 0.96 on
#: the digit INRs fitted from one initialisation, where flips cost SNE half its accuracy (0.42 against
#: 0.79, three seeds, docs/RESULTS.md); between the two nothing has been measured.
SHARED_SIGNS_ALIGNMENT = 0.2


def choose_sign_flips(config: TrainConfig, records: Sequence[NetworkRecord]) -> tuple[TrainConfig, dict | None]:
    """``config`` with ``sign_flip_augment="auto"`` decided for the training networks ``records``
    (and test-time flips off where flips are), and what the choice rests on (None where ``config``
    gave no ``"auto"``; :func:`report_sign_flips` says it). Flips teach a symmetry networks of
    independent initialisations show; networks fitted from one shared initialisation share their
    signs (:data:`SHARED_SIGNS_ALIGNMENT`), a flipped copy looks like none of them, and training on
    flips drowned what tells them apart."""
    if config.sign_flip_augment != SIGN_FLIPS_AUTO:
        return config, None
    alignment = sign_alignment(records)
    flips = alignment is None or alignment < SHARED_SIGNS_ALIGNMENT
    chosen = replace(config, sign_flip_augment=flips, test_time_flips=config.test_time_flips if flips else 0)
    return chosen, {"choice": SIGN_FLIPS_AUTO, "sign_flip_augment": flips, "sign_alignment": alignment,
                    "threshold": SHARED_SIGNS_ALIGNMENT}


def report_sign_flips(choice: dict | None, progress: bool) -> None:
    """One line on stderr on what ``"auto"`` chose (:func:`choose_sign_flips`), where it chose."""
    if choice is not None:
        _say(sign_flip_note(choice), progress)


def _say(line: str, progress: bool) -> None:
    """``line`` on stderr, as it is, where ``progress`` is on, from the process that speaks for all."""
    if progress and distributed.is_main():
        Console(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(line, markup=False)


def sign_flip_note(choice: dict) -> str:
    """One line on what ``"auto"`` chose (:func:`choose_sign_flips`)."""
    alignment = choice["sign_alignment"]
    if alignment is None:
        return "sign flips (auto): on; no two training networks of one architecture have neurons to flip"
    if choice["sign_flip_augment"]:
        return (f"sign flips (auto): on; the training networks' signs are independent (alignment {alignment:.2f} "
                f"< {choice['threshold']:g})")
    return (f"sign flips (auto): off, and test-time flips with them; the training networks share their signs "
            f"(alignment {alignment:.2f} >= {choice['threshold']:g}: one initialisation), so a flipped copy looks "
            "like none of them (--augment-sign-flips to flip anyway)")


def check_max_train(max_train: int | None) -> None:
    """:class:`SneError` unless ``max_train`` is None (all networks) or at least 2: targets are standardised
    over the training networks, and one network has no spread."""
    if max_train is not None and max_train < 2:
        raise SneError(f"--max-train must be at least 2, got {max_train}")


def check_train_config(config: TrainConfig) -> None:
    """:class:`SneError` for settings no training can run with."""
    check_max_train(config.max_train)

    def number(value: Any, name: str, positive: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0 or (positive and value == 0):
            raise SneError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")

    number(config.lr, "--lr", positive=True)
    number(config.invariance_weight, "--invariance-weight")
    number(config.weight_decay, "weight decay")
    number(config.gamma, "the multistep schedule's gamma", positive=True)
    if config.grad_clip is not None:
        number(config.grad_clip, "gradient clipping", positive=True)
    if isinstance(config.num_workers, bool) or not isinstance(config.num_workers, int) or config.num_workers < 0:
        raise SneError(f"--workers must be a non-negative integer (0: load in the main process), got {config.num_workers!r}")
    if config.invariance_on not in INVARIANCE_TARGETS:
        raise SneError(f"unknown --invariance-on '{config.invariance_on}' (use {' or '.join(INVARIANCE_TARGETS)})")
    for value, name in ((config.epochs, "--epochs"), (config.batch_size, "--batch-size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SneError(f"{name} must be an integer of at least 1, got {value!r}")
    if config.schedule not in SCHEDULES:
        raise SneError(f"unknown schedule '{config.schedule}' (use {' or '.join(SCHEDULES)})")
    if isinstance(config.ema_epochs, bool) or not isinstance(config.ema_epochs, (int, float)) \
            or not 0 <= config.ema_epochs < math.inf:
        raise SneError(f"--ema-epochs must be a number of epochs >= 0 (0: off), got {config.ema_epochs!r}")
    if not 0 <= config.warmup_epochs < config.epochs:
        raise SneError(f"warm-up must be at least 0 and shorter than the {config.epochs} epochs, got {config.warmup_epochs:g}")
    batches = config.bn_recalibration
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise SneError(f"bn_recalibration (batches) must be a non-negative integer, got {batches!r}")
    if config.sign_flip_augment not in (True, False, SIGN_FLIPS_AUTO):
        raise SneError(f"sign-flip augmentation is on, off or {SIGN_FLIPS_AUTO!r}, got {config.sign_flip_augment!r}")
    check_test_time_flips(config.test_time_flips, config.sign_flip_augment)
    if config.precision not in PRECISIONS:
        raise SneError(f"unknown precision '{config.precision}' (use {' or '.join(PRECISIONS)})")
    if config.precision == "bfloat16" and resolve_device(config.device).type != "cuda":
        raise SneError("--precision bfloat16 runs on a GPU (--device cuda); on CPUs bfloat16 matmuls measured 7x "
                       "slower than float32 here, so CPU training stays float32")


def check_test_time_flips(copies: int, sign_flip_augment: bool | str) -> None:
    """:class:`SneError` unless ``copies`` is a count of sign-flipped copies a run trained with
    ``sign_flip_augment`` (or not) can be asked about (:attr:`TrainConfig.test_time_flips`)."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise SneError(f"test-time flips must be a non-negative integer, got {copies!r}")
    if copies and not sign_flip_augment:
        raise SneError(f"--test-time-flips {copies} averages over sign-flipped copies of each network, but this run "
                       "does not train on sign flips: give --augment-sign-flips, or --test-time-flips 0")


def fit(config: TrainConfig, out_dir: str | Path, progress: bool = True, log_dir: str | Path | None = None) -> dict:
    """Train (or resume) a run; return its summary (best epoch, validation loss, wall time).
    ``log_dir``: also write TensorBoard scalars there (:mod:`sne.train.scalars`)."""
    run_dir = Path(out_dir)
    check_train_config(config)
    zoo = Zoo.open(config.zoo)
    train_ids = zoo.split_ids("train")
    if config.max_train is not None:
        train_ids = train_ids[: config.max_train]
    val_ids = zoo.split_ids("val")
    # Targets are standardised over the training networks; the epoch kept is the one of best validation loss.
    for split, ids, least in (("train", train_ids, 2), ("val", val_ids, 1)):
        if len(ids) < least:
            raise SneError(f"{zoo.path} has {len(ids)} {split} network(s); training needs at least {least}: give "
                           "the zoo's networks other splits (e.g. a 'split' column on import)")
    train_values = torch.as_tensor(zoo.target_values(config.target, train_ids), dtype=torch.float32)
    val_values = torch.as_tensor(zoo.target_values(config.target, val_ids), dtype=torch.float32)
    target = resolve_target(config.target, zoo.targets, train_values)
    train_records = zoo.records(train_ids)
    val_records = zoo.records(val_ids)
    check_zoo_architectures(zoo, config.encoder, [*train_records, *val_records])
    config, sign_flip_choice = choose_sign_flips(config, train_records)
    if config.invariance_weight > 0:
        check_permutable(zoo, train_records)

    device = distributed.local_device(resolve_device(config.device))
    torch.manual_seed(config.seed)
    architecture = get_encoder_class(config.encoder).architecture_of(train_records[0])
    predictor = _build_predictor(config, target, None, architecture).to(device)
    predictor.encoder.check_records(train_records)
    report_sign_flips(sign_flip_choice, progress)
    meta = {
        "config": asdict(config),
        "encoder": predictor.encoder.config(),
        "target": target.to_dict(),
        "sne_version": __version__,
        "zoo_manifest": zoo_manifest_summary(zoo),
        "sign_flip_choice": sign_flip_choice,
    }

    def batch_loss(model: torch.nn.Module, indices: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, codes = model(batch, with_codes=True)
        if config.invariance_weight > 0:
            outputs, permuted_outputs = outputs.chunk(2)
            if config.invariance_on == "codes":
                reg = code_distance(*codes.chunk(2))
            else:
                # Logit invariance (Moskalev et al. 2023): equivalent networks should get equal outputs.
                reg = F.mse_loss(permuted_outputs, outputs)
        else:
            reg = torch.zeros((), device=device)
        return predictor.target.loss(outputs, train_values[indices].to(device)), reg

    constant = target.constant_outputs(train_values).expand(len(val_values), -1)
    meta["constant_val_loss"] = float(target.loss(constant, val_values))
    try:
        summary = train_epochs(
            config, run_dir, predictor, predictor.encoder, train_records, predictor.encoder.prepare, batch_loss,
            lambda: _validation(predictor, val_records, val_values, config.batch_size)[1], meta, device, progress,
            log_dir=log_dir, processes=True,
        )
    finally:
        distributed.stop()
    summary["constant_val_loss"] = meta["constant_val_loss"]
    summary["sign_flip_choice"] = sign_flip_choice
    summary["test_time_flips"] = config.test_time_flips
    warning = learned_nothing(summary)
    if warning is not None:
        _say(warning, progress)
    return summary


#: A run whose best validation loss is not at least this fraction below the trivial predictor's
#: (:meth:`~sne.train.targets.Target.constant_outputs`) is reported as having learned nothing.
LEARNED_MARGIN = 0.05


def sat_at_constant(best_val_loss: float | None, constant_val_loss: float | None) -> bool:
    """Whether a run's best validation loss is not :data:`LEARNED_MARGIN` below the trivial
    predictor's (False where either is unknown)."""
    if best_val_loss is None or constant_val_loss is None or constant_val_loss <= 0:
        return False
    return best_val_loss >= (1 - LEARNED_MARGIN) * constant_val_loss


def learned_nothing(summary: dict) -> str | None:
    """One line saying that a run's best validation loss did not beat the trivial predictor's by
    :data:`LEARNED_MARGIN` (``summary`` of :func:`fit`), or None where it did: a run that sat at
    the mean predictor for all its epochs otherwise looks like any other finished run."""
    if not sat_at_constant(summary["best_val_loss"], summary.get("constant_val_loss")):
        return None
    best, constant = summary["best_val_loss"], summary["constant_val_loss"]
    return (f"warning: {summary['run']}: the best validation loss, {best:.4g}, is not {LEARNED_MARGIN:.0%} below "
            f"{constant:.4g}, the loss of one constant prediction for every network (the training targets' mean or "
            "class frequencies): this run learned nothing that carries to networks it did not train on. Try "
            "another --seed, or a larger --batch-size (on sine INRs of mixed initial scales, SNE runs that sat "
            "there at batch 16 learned at 64); where every run stays there, the weights may not show this encoder "
            "the target (docs/RESULTS.md, recipe-shift studies)")


def code_distance(codes: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between paired rows of ``codes`` and ``other`` (B, d), divided by the
    codes' variance over the batch (summed over dimensions): scale-free, so an encoder cannot lower
    it by shrinking every code, which the head would undo."""
    spread = codes.var(dim=0, unbiased=False).sum()
    return (codes - other).square().sum(dim=1).mean() / spread.clamp_min(1e-12)


def check_zoo_architectures(zoo: Zoo, encoder: str, records: Sequence[NetworkRecord]) -> None:
    """Refuse, in one line naming the zoo and its architectures, an encoder of one fixed
    architecture on ``records`` of several (as that encoder tells architectures apart)."""
    from sne.encoders.common import ANY_NETWORK_ENCODERS

    if len(zoo.architectures) < 2 or encoder in {name.strip() for name in ANY_NETWORK_ENCODERS.split(",")}:
        return
    architecture_of = get_encoder_class(encoder).architecture_of
    if len({repr(architecture_of(record)) for record in records}) > 1:
        raise CannotRead(f"the zoo at {zoo.path} holds {zoo.describe_architectures()}; encoder '{encoder}' takes "
                       f"one fixed architecture (encoders for any network: {ANY_NETWORK_ENCODERS})")


def check_permutable(zoo: Zoo, records: Sequence[NetworkRecord]) -> None:
    """Refuse, in one line, the invariance regulariser on networks whose symmetries are unknown
    (augmentation trains those as they are)."""
    unknown = next((r for r in records if not supports_permutation(r)), None)
    if unknown is not None:
        raise SneError(f"the zoo at {zoo.path} holds networks whose neuron symmetries are unknown ({unknown.source}): "
                       "the invariance regulariser cannot permute them")


def zoo_manifest_summary(zoo: Zoo) -> dict:
    """What a checkpoint says about the zoo it was trained on, its architectures' structures included
    (``sne predict --arch run`` reads bare state_dicts as them)."""
    return {**{k: zoo.manifest.get(k) for k in ("recipe", "options", "n", "seed", "command", "architectures")},
            "path": str(Path(zoo.path).resolve())}


class _RunLock:
    """One process at a time trains a run directory: two would interleave their checkpoints. The lock
    lives in the directory, taken once it exists (at resume, or when a new run writes its config)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.file = None

    def hold(self) -> None:
        if self.file is not None:
            return
        file = open(self.run_dir / ".training.lock", "w")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise SneError(f"{self.run_dir} is being trained by another process: wait for it, or train into "
                           f"another directory ({RUN_DIRECTORY_FLAGS})") from None
        self.file = file

    def __enter__(self) -> "_RunLock":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def train_epochs(
    config: TrainConfig,
    run_dir: Path,
    model: torch.nn.Module,
    encoder: Encoder,
    train_records: Sequence[NetworkRecord],
    prepare: Callable[[Sequence[NetworkRecord]], Any],
    batch_loss: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]],
    validation_loss: Callable[[], float],
    meta: dict,
    device: torch.device,
    progress: bool = True,
    log_dir: str | Path | None = None,
    processes: bool = False,
) -> dict:
    """The training loop every task shares: train ``model`` (which holds ``encoder``) for
    ``config.epochs`` epochs, or resume it from ``run_dir``; return the run's summary.

    Adam and the learning-rate schedule of ``config``; batches in a seeded order per epoch, prepared
    by ``prepare`` (with random functionally-equivalent copies appended when ``config.invariance_weight``
    > 0); ``batch_loss(model, indices, batch on device)`` gives (task loss, regulariser), means over
    the batch, computed by calling ``model`` (under torchrun, its DistributedDataParallel wrapper:
    pass ``processes=True`` where ``batch_loss`` does so; :mod:`sne.train.distributed`), and the step
    minimises task loss + invariance_weight * regulariser. After each epoch ``validation_loss()``
    selects the model: ``best.pt`` holds the lowest, ``last.pt`` the full state (resume), both
    with ``meta``; with ``config.ema_epochs`` what is validated and kept is the weights' moving
    average. The encoder's input statistics and pre-training run once, before epoch 1.
    """
    if config.sign_flip_augment == SIGN_FLIPS_AUTO:
        raise ValueError("decide sign_flip_augment='auto' for the training networks first (choose_sign_flips)")
    with _RunLock(run_dir) as lock:
        rank, world = distributed.start(device)
        if world > 1 and not processes:
            raise SneError("this training runs in one process; start it without torchrun")
        main = rank == 0
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = len(_epoch_batches(torch.arange(len(train_records)), config, world))
        scheduler, per_step = _lr_schedule(optimizer, config, steps_per_epoch)

        state: dict[str, Any] = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": -1, "history": [],
                                 "train_seconds": 0.0}
        last_path = run_dir / "last.pt"
        if main and run_dir.is_dir():
            lock.hold()  # before reading a checkpoint another process may be writing
        if (run_dir / "config.json").exists():
            checkpoint = load_checkpoint(last_path) if last_path.exists() else None
            _check_resume(run_dir, config, ((checkpoint or {}).get("zoo_manifest") or {}).get("path"))
            if checkpoint is not None:
                _check_resumed_encoder(run_dir, checkpoint.get("encoder"), meta.get("encoder"))
                model.load_state_dict(checkpoint.get("training_model", checkpoint["model"]))
                optimizer.load_state_dict(checkpoint["optimizer"])
                scheduler.load_state_dict(checkpoint["scheduler"])
                state = checkpoint["state"]
        pretraining = None
        if state["epoch"] == 0:
            encoder.fit_input_statistics(train_records)
            started = time.perf_counter()
            # Self-supervised encoders learn here; the result is in every checkpoint, so resume skips it.
            pretraining = encoder.pretrain(train_records, asdict(config), progress)
            if pretraining is not None:
                state["pretraining"] = pretraining
                state["train_seconds"] += time.perf_counter() - started
        # Started from the weights training starts from: after input statistics and pre-training.
        average = _WeightAverage(model, config.ema_epochs * steps_per_epoch) if config.ema_epochs else None
        if average is not None and state["epoch"] > 0:
            average.resume(checkpoint["average"])
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.hold()
            write_json_atomic(run_dir / "config.json", asdict(config))
            if pretraining is not None:
                write_json_atomic(run_dir / "pretraining.json", pretraining)
        forward = model
        if world > 1:
            distributed.sync_batch_norms(model)
            # Unused parameters are normal here (merge tokens in chains, frozen pretrained encoders).
            forward = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

        n_params = sum(p.numel() for p in encoder.parameters())
        augment = _Augmentation.of(config, train_records)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        scalars = ScalarLog(log_dir, first_epoch=state["epoch"] + 1) if log_dir is not None and main else None
        with Progress(*columns, disable=not (progress and main), transient=False) as bar:
            epochs_task = bar.add_task(f"training {config.encoder} ({n_params:,} params)", total=config.epochs,
                                       completed=state["epoch"])
            for epoch in range(state["epoch"], config.epochs):
                started = time.perf_counter()
                train_loss, train_reg = _train_epoch(
                    forward, optimizer, scheduler if per_step else None, config, epoch, train_records, prepare, batch_loss,
                    device, bar, rank, world, augment, average,
                )
                if not per_step:
                    scheduler.step()
                # What is validated and kept: the weights, or their average (the weights train on after).
                with average.swapped_in() if average is not None else contextlib.nullcontext():
                    if config.bn_recalibration:
                        _recalibrate_batch_norms(model, config, epoch, train_records, prepare, batch_loss, device, rank,
                                                 world, augment)
                    val_loss = validation_loss()
                    kept = model.state_dict() if average is None else \
                        {k: v.detach().clone() for k, v in model.state_dict().items()}
                state["train_seconds"] += time.perf_counter() - started
                entry = {"epoch": epoch + 1, "train_loss": train_loss, "invariance_loss": train_reg, "val_loss": val_loss,
                         "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
                state["history"].append(entry)
                if scalars is not None:
                    scalars.write(entry)
                state["epoch"] = epoch + 1
                improved = val_loss < state["best_val_loss"]
                if improved:
                    state["best_val_loss"], state["best_epoch"] = val_loss, epoch + 1
                if main:
                    if improved:
                        _save_checkpoint(run_dir / "best.pt", {**meta, "model": kept, "epoch": epoch + 1})
                    # last.pt commits the epoch, so it goes last: a kill before it redoes (and rewrites) all of the above.
                    write_json_atomic(run_dir / "history.json", state["history"])
                    averaging = {} if average is None else {"training_model": model.state_dict(), "average": average.state}
                    _save_checkpoint(last_path, {**meta, "model": kept, **averaging, "optimizer": optimizer.state_dict(),
                                                 "scheduler": scheduler.state_dict(), "state": state})
                bar.update(epochs_task, advance=1,
                           description=f"epoch {epoch + 1}/{config.epochs} train {train_loss:.4f} val {val_loss:.4f}")
        if scalars is not None:
            scalars.close()
        return {
            "run": str(run_dir),
            "epochs": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_val_loss"],
            "train_seconds": state["train_seconds"],
            "encoder_parameters": n_params,
            "encoder_options_resolved": dict(encoder.options),
            "train_networks": len(train_records),
            # An epoch of 600 networks is 10 steps at batch 64, of 3000 is 47: epochs of different zoos
            # are different amounts of training, and the step count says how much.
            "steps_per_epoch": steps_per_epoch,
            "augmented_networks": None if augment.permutable is None else sum(augment.permutable),
            "sign_flipped_networks": None if augment.flippable is None else sum(augment.flippable),
            "hardware": hardware_description(device),
            "processes": world,
        }


def _lr_schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """``config``'s learning-rate schedule, and whether it steps after every batch (else every epoch)."""
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.milestones})
    if config.schedule == "multistep" and not config.warmup_epochs:
        # Stepped per epoch, as before warm-up and cosine existed, so that those runs resume.
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma), False
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    milestone_steps = [m * steps_per_epoch for m in milestones]

    def factor(step: int) -> float:
        scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if config.schedule == "cosine":
            progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
            return scale * 0.5 * (1 + math.cos(math.pi * progress))
        if config.schedule == "constant":
            return scale
        return scale * config.gamma ** sum(step >= m for m in milestone_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


def _epoch_batches(order: torch.Tensor, config: TrainConfig, world: int) -> list[torch.Tensor]:
    """``order`` cut into the epoch's batches."""
    batches = list(order.split(config.batch_size))
    if len(batches) > 1 and len(batches[-1]) < max(2, world):
        # A batch of one network cannot be batch-normalised (and every process needs one network);
        # it trains in another epoch's order.
        batches.pop()
    return batches


def _train_epoch(model, optimizer, scheduler, config, epoch, records, prepare, batch_loss, device, bar, rank=0, world=1,
                 augment=_Augmentation(), average: "_WeightAverage | None" = None) -> tuple[float, float]:
    model.train()
    # Dropout draws from torch's global generator: seeded per epoch, so a resumed run draws what an
    # uninterrupted one did (the state it had after the previous epoch is in no checkpoint).
    torch.manual_seed(derive_seed(config.seed, "train/global", epoch))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
    batches = _epoch_batches(order, config, world)
    seeds = [int(np.random.SeedSequence([config.seed, epoch, i]).generate_state(1)[0]) for i in range(len(batches))]
    permute = config.invariance_weight > 0
    loader = torch.utils.data.DataLoader(
        _EpochBatches(prepare, records, batches, seeds, permute, rank, world, augment),
        batch_size=None, shuffle=False, num_workers=config.num_workers,
    )
    task = bar.add_task("  batches", total=len(batches))
    total_loss = total_reg = 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")
    for whole, indices, batch in loader:
        with autocast:
            task_loss, reg = batch_loss(model, indices, batch_to(batch, device))
        # Means over this process's share, weighted so that DDP's average over processes is the
        # mean over the whole batch (weight 1 in one process).
        loss = (task_loss + config.invariance_weight * reg) * (len(indices) * world / len(whole))
        if not torch.isfinite(loss):
            raise SneError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if average is not None:
            average.update()
        if scheduler is not None:
            scheduler.step()
        total_loss += task_loss.item() * len(indices)
        total_reg += reg.item() * len(indices)
        bar.advance(task)
    bar.remove_task(task)
    seen = sum(len(b) for b in batches)
    total_loss, total_reg = distributed.sum_over_processes([total_loss, total_reg])
    return total_loss / seen, total_reg / seen


class _WeightAverage:
    """An exponential moving average of ``model``'s floating-point state (parameters and buffers),
    over about ``steps`` optimizer steps; other entries (batch counts) are copied."""

    def __init__(self, model: torch.nn.Module, steps: float) -> None:
        self.model = model
        self.decay = 1 - 1 / max(1.0, steps)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def resume(self, saved: dict[str, torch.Tensor]) -> None:
        """Continue from a checkpoint's average (read onto the CPU) where the model lives."""
        for key, value in saved.items():
            self.state[key].copy_(value)

    @torch.no_grad()
    def update(self) -> None:
        for key, value in self.model.state_dict().items():
            mine = self.state[key]
            if mine.is_floating_point():
                mine.lerp_(value, 1 - self.decay)
            else:
                mine.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the average inside the block, and its own state again after it."""
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.state)
        try:
            yield
        finally:
            self.model.load_state_dict(own)


@torch.no_grad()
def _recalibrate_batch_norms(model, config, epoch, records, prepare, batch_loss, device, rank=0, world=1,
                             augment=_Augmentation()) -> None:
    """Running statistics of ``model``'s batch norms := the plain average of their statistics over
    ``config.bn_recalibration`` training batches of a seeded order (``TrainConfig.bn_recalibration``),
    made as training makes them (augmented; with the regulariser's permuted copies, which
    ``batch_loss`` expects). Under torchrun every process runs its share of the same batches
    (synchronised batch norms)."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(
        derive_seed(config.seed, "train/recalibrate", epoch)))
    batches = _epoch_batches(order, config, world)[: config.bn_recalibration]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    try:
        seeds = [derive_seed(config.seed, "train/recalibrate", epoch, i) for i in range(len(batches))]
        for _, indices, batch in _EpochBatches(prepare, records, batches, seeds, config.invariance_weight > 0, rank,
                                               world, augment):
            batch_loss(model, indices, batch_to(batch, device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@torch.no_grad()
def _validation(predictor: Predictor, records, values, batch_size) -> tuple[np.ndarray, float]:
    predictor.eval()
    # Model selection reads the model itself: averaging over flipped copies would cost 1 + N passes.
    outputs = predictor.outputs(records, batch_size, test_time_flips=0)
    loss = float(predictor.target.loss(outputs, values))
    return predictor.target.decode(outputs).numpy(), loss


@dataclass
class TrainedRun:
    """A trained run loaded for inference."""

    path: Path
    predictor: Predictor
    meta: dict

    @property
    def target(self) -> Target:
        return self.predictor.target

    @property
    def config(self) -> TrainConfig:
        return TrainConfig(**self.meta["config"])

    @property
    def zoo_path(self) -> str:
        """The training zoo: its path as given to training where that finds it from here (a relative
        path given elsewhere may not), else where training found it (:func:`zoo_manifest_summary`)."""
        given = self.config.zoo
        found = (self.meta.get("zoo_manifest") or {}).get("path")
        return found if not Path(given).is_dir() and found and Path(found).is_dir() else given

    @property
    def training_architectures(self) -> TrainedArchitectures | None:
        """The architectures of the zoo this run was trained on (None for a run from before runs
        recorded them): ``sne predict --arch run`` reads bare state_dicts as them."""
        listed = (self.meta.get("zoo_manifest") or {}).get("architectures")
        return TrainedArchitectures([a["structure"] for a in listed], f"the run {self.path}") if listed else None

    def predict(self, networks: Sequence) -> np.ndarray:
        """Predictions for networks given as records, ``nn.Module``s, state_dicts or file paths."""
        return self.predictor.predict([as_record(n) for n in networks])

    def embed(self, networks: Sequence) -> np.ndarray:
        return self.predictor.embed([as_record(n) for n in networks])


def as_record(network) -> NetworkRecord:
    """Accept a record, an ``nn.Module`` (or a tuple ``(module, example_input)``), a state_dict or a
    checkpoint path."""
    from sne.weights import load_record, record_from_module, record_from_state_dict

    if isinstance(network, NetworkRecord):
        return network
    if isinstance(network, torch.nn.Module):
        return record_from_module(network)
    if isinstance(network, tuple) and len(network) == 2 and isinstance(network[0], torch.nn.Module):
        return record_from_module(*network)
    if isinstance(network, dict):
        return record_from_state_dict(network)
    if isinstance(network, (str, Path)):
        return load_record(network)
    raise SneError(f"cannot read a network from a {type(network).__name__}")


def load_run(run_dir: str | Path, device: str = "auto", which: str = "best",
             test_time_flips: int | None = None) -> TrainedRun:
    """Load a run's selected (``best``) or latest (``last``) weights for inference, predicting with
    ``test_time_flips`` sign-flipped copies per network (None: the run's own setting)."""
    run_dir = Path(run_dir)
    path = run_dir / f"{which}.pt"
    if not path.exists():
        raise SneError(f"{run_dir}: no {which}.pt here — is this a run directory made by 'sne train'?")
    checkpoint = load_checkpoint(path)
    config = TrainConfig(**checkpoint["config"])
    target = Target(**checkpoint["target"])
    encoder_config = checkpoint["encoder"]
    predictor = _build_predictor(config, target, encoder_config, encoder_config.get("architecture"))
    predictor.load_state_dict(checkpoint["model"])
    predictor.to(resolve_device(device)).eval()
    if test_time_flips is not None:
        check_test_time_flips(test_time_flips, config.sign_flip_augment)
        predictor.test_time_flips = test_time_flips
    meta = {k: v for k, v in checkpoint.items() if k not in ("model", "training_model", "average", "optimizer", "scheduler")}
    return TrainedRun(run_dir, predictor, meta)
