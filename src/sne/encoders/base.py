"""The interface every encoder implements, and the registry that names them."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from sne.errors import SneError
from sne.weights.batch import with_parameter_values
from sne.weights.record import NetworkRecord

#: A record's architecture signature, as given by ``NetworkRecord.architecture``.
Architecture = tuple


@dataclass
class WeightBatch:
    """A batch prepared for :meth:`Encoder.forward_weights`: the encoder's own input and the
    records, whose weights and biases the outputs replace."""

    inputs: Any
    records: tuple[NetworkRecord, ...]


class Encoder(nn.Module):
    """Maps a batch of networks to codes ``z`` of shape ``(batch, out_dim)``.

    Subclasses take only keyword arguments (their *options*, JSON-serialisable) plus
    ``architecture`` (the signature of the networks they will see; fixed-architecture encoders
    need it, others may ignore it). ``prepare`` turns records into the encoder's input on the CPU
    (it may run in data-loader workers); ``forward`` takes that input, moved to the model's device.

    Encoders with ``weight_outputs`` can also give one value per input parameter (weight-space
    outputs): :meth:`make_weight_head` once, then :meth:`forward_weights` on :meth:`prepare_weights`.
    """

    name: ClassVar[str] = ""
    #: Whether the encoder can output one value per input parameter (weight-space outputs, e.g.
    #: an edit of the network's weights) through :meth:`make_weight_head` and :meth:`forward_weights`.
    weight_outputs: ClassVar[bool] = False
    #: Training settings (TrainConfig fields, e.g. ``lr``) this encoder needs instead of the shared
    #: defaults; ``sne train`` and the benchmarks use them unless the user sets the field.
    default_train_options: ClassVar[dict[str, Any]] = {}
    #: Options whose default changed: their value before, for saved configs that predate the option
    #: (configs record every option since, so only those lack it).
    defaults_of_older_configs: ClassVar[dict[str, Any]] = {}
    #: Named sets of options (``preset=NAME``), for encoders that have them.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: The options' defaults, where the encoder keeps them in one place (results rows name only
    #: the options that differ from these).
    default_options: ClassVar[dict[str, Any]] = {}
    out_dim: int

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        super().__init__()
        self.architecture = architecture
        self.options = dict(options)

    @classmethod
    def train_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The training settings (TrainConfig fields) this encoder, built with ``options``, takes
        unless the user sets them: :attr:`default_train_options`, unless a subclass says otherwise."""
        return dict(cls.default_train_options)

    @classmethod
    def options_baseline(cls, options: dict[str, Any]) -> dict[str, Any]:
        """What an encoder built with ``options`` is described against (only options that differ
        from it are named): :attr:`default_options`, unless a subclass says otherwise."""
        return dict(cls.default_options)

    @classmethod
    def resolved_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options given, over the baseline they are described against."""
        return {**cls.options_baseline(options), **options}

    @classmethod
    def architecture_of(cls, record: NetworkRecord) -> Architecture:
        """The ``architecture`` to build this encoder with for networks like ``record``."""
        return record.architecture

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        """Raise :class:`SneError` naming the first record this encoder cannot take."""

    def caveat(self, record: NetworkRecord) -> str | None:
        """A one-line warning about how this trained encoder reads ``record``, which it takes but
        reads with less than it was trained on; None where there is none (the default)."""
        return None

    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        """Fit input normalisation on training networks (buffers in the state_dict); default: none.

        The training loop calls it once, on the training split, before the first epoch.
        """

    def pretrain(self, records: Sequence[NetworkRecord], train_config: dict, progress: bool) -> dict | None:
        """Self-supervised training on the training networks, without labels; default: none.

        The training loop calls it once, right after :meth:`fit_input_statistics` and before the
        first epoch, with the module already on its device; what it learns is saved in every
        checkpoint, so a resumed run does not repeat it. ``train_config`` is the run's
        configuration (seed, batch size, ...). Returns a JSON-serialisable log (losses per
        epoch), which the loop keeps in the run, or ``None``.
        """
        return None

    def prepare(self, records: Sequence[NetworkRecord]) -> Any:
        raise NotImplementedError

    def prepare_inference(self, records: Sequence[NetworkRecord]) -> Any:
        """The input of inference (no gradients): :meth:`prepare`'s unless an encoder streams large networks."""
        return self.prepare(records)

    def forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # --- weight-space outputs -------------------------------------------------------------------

    def make_weight_head(self) -> None:
        """Add the output layers of :meth:`forward_weights` as submodule ``weight_head``.

        Their last layers start at zero, so an untrained head outputs 0 for every parameter (an
        untrained editor is the identity edit). Encoders without per-parameter features raise
        :class:`SneError`. Separate from ``__init__`` so that encoders trained for a code ``z``
        carry no unused parameters; :meth:`config` records it, so a rebuilt encoder has it too.
        """
        if not self.weight_outputs:
            raise SneError(f"encoder '{self.name}' cannot output one value per parameter (no weight-space "
                           f"outputs); encoders that can: {', '.join(weight_output_encoder_names())}")
        if not hasattr(self, "weight_head"):
            head = self.build_weight_head()
            reference = next(self.parameters(), None)
            if reference is not None:  # the encoder may already be on a device or in float64
                head = head.to(device=reference.device, dtype=reference.dtype)
            self.weight_head = head

    def prepare_weights(self, records: Sequence[NetworkRecord]) -> WeightBatch:
        """:meth:`prepare` plus the records: the input of :meth:`forward_weights`."""
        return WeightBatch(self.prepare(records), tuple(records))

    def forward_weights(self, batch: WeightBatch) -> list[NetworkRecord]:
        """One value per parameter of every network in ``batch``: each input record with every
        layer's weight and bias replaced by the encoder's values (layers without a bias keep none)."""
        if not hasattr(self, "weight_head"):
            raise SneError(f"encoder '{self.name}' has no weight head: call make_weight_head() first")
        return self.weight_values(batch.inputs, batch.records)

    def build_weight_head(self) -> nn.Module:  # pragma: no cover - interface
        """The output layers of :meth:`weight_values`, their last layers zero (encoders with weight outputs)."""
        raise NotImplementedError

    def weight_values(  # pragma: no cover - interface
        self, inputs: Any, records: Sequence[NetworkRecord]
    ) -> list[NetworkRecord]:
        """:meth:`forward_weights` on a prepared input (encoders with weight outputs)."""
        raise NotImplementedError

    def config(self) -> dict:
        """Everything needed to rebuild this encoder with :func:`build_encoder_from_config`."""
        config = {"name": self.name, "options": self.options, "architecture": self.architecture}
        if hasattr(self, "weight_head"):
            config["weight_head"] = True
        return config


_REGISTRY: dict[str, type[Encoder]] = {}


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    def decorate(cls: type[Encoder]) -> type[Encoder]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"encoder name '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def encoder_names() -> list[str]:
    return sorted(_REGISTRY)


def weight_output_encoder_names() -> list[str]:
    """Registered encoders that can output one value per parameter (see :meth:`Encoder.make_weight_head`)."""
    return [name for name in encoder_names() if _REGISTRY[name].weight_outputs]


def get_encoder_class(name: str) -> type[Encoder]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SneError(f"unknown encoder '{name}' (available: {', '.join(encoder_names())})") from None


def build_encoder(name: str, architecture: Architecture | None = None, **options: Any) -> Encoder:
    return get_encoder_class(name)(architecture=architecture, **options)


def build_encoder_from_config(config: dict) -> Encoder:
    architecture = config.get("architecture")
    if architecture is not None:
        architecture = _as_architecture(architecture)
    cls = get_encoder_class(config["name"])
    options = {**cls.defaults_of_older_configs, **config.get("options", {})}
    encoder = build_encoder(config["name"], architecture=architecture, **options)
    if config.get("weight_head"):
        encoder.make_weight_head()
    return encoder


def _as_architecture(value) -> Architecture:
    """Turn a JSON round-tripped architecture (lists) back into the hashable tuple form."""
    return tuple((kind, tuple(shape), bool(has_bias)) for kind, shape, has_bias in value)


def options_for_encoder(name: str, options: dict) -> dict:
    """The options meant for encoder ``name`` when one set is given for several encoders:
    ``key`` applies to every encoder, ``name.key`` only to ``name`` (and wins over ``key``)."""
    chosen = {k: v for k, v in options.items() if "." not in k}
    chosen.update({k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(f"{name}.")})
    return chosen


def batch_to(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside a (nested) prepared batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, NetworkRecord):  # the records of a WeightBatch: their values are replaced, not read
        return batch
    moved_to = getattr(batch, "moved_to", None)
    if callable(moved_to):  # a batch that knows what of it to move (sne.encoders.chunking.ChunkPlan)
        return moved_to(device)
    if is_dataclass(batch) and not isinstance(batch, type):
        return type(batch)(**{f.name: batch_to(getattr(batch, f.name), device) for f in fields(batch)})
    if isinstance(batch, dict):
        return {k: batch_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to(v, device) for v in batch)
    return batch


def records_from_flat_values(
    weights: torch.Tensor, biases: torch.Tensor, records: Sequence[NetworkRecord]
) -> list[NetworkRecord]:
    """``records`` with flat values in place of their parameters: ``weights`` holds every weight of
    every network (networks, then layers, in record order; each weight flattened in PyTorch order),
    ``biases`` one value per output neuron of every layer, in the same order, those of layers
    without a bias included and dropped here."""
    shapes = [tuple(layer.weight.shape) for record in records for layer in record.layers]
    weight_parts = iter(weights.split([int(torch.Size(shape).numel()) for shape in shapes]))
    bias_parts = iter(biases.split([shape[0] for shape in shapes]))
    return [with_parameter_values(record, [(next(weight_parts).reshape(layer.weight.shape), next(bias_parts))
                                           for layer in record.layers]) for record in records]
