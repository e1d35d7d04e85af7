"""StatNN baseline (Unterthiner et al. 2020): per-tensor weight statistics through an MLP.

For each parameter tensor, in record order, its mean, variance and quantiles 0, 25, 50, 75 and
100 % (7 numbers per tensor), concatenated. The tensors are every tensor of every operation but
operations of kind ``buffer`` and batch-norm step counters (``num_batches_tracked``): a chain's
weights and biases (the first release's features, unchanged), a normalisation's scale, shift and
running statistics, attention's fused and output projections, free parameters. Every statistic is
a symmetric function of a tensor's values, so the features, and the predictions, are exactly
invariant to permutations of hidden neurons. Features are standardised with the training
networks' statistics.

The feature vector's layout follows the list of tensors, so one encoder takes one architecture,
which it must be built with: ``architecture=record.signature`` (every tensor's name and shape;
the encoder compares the records' signatures with it, tensor by tensor, and refuses any other
architecture in one line naming the first layer that differs), or, as in the first release,
``architecture=record.architecture`` (each layer's kind, weight shape and whether it has a bias),
which describes a layer's weight and bias only: such an encoder reads records whose operations
hold nothing else, and refuses others in one line.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from sne.encoders.base import Architecture, Encoder, register_encoder
from sne.encoders.chunking import CHAIN_KINDS
from sne.encoders.common import (
    build_mlp,
    quantiles,
    check_fixed_architecture,
    check_positive_int,
    check_widths,
    fit_standardization,
    require_architecture,
    resolve_options,
)
from sne.errors import CannotRead, SneError
from sne.weights.record import Layer, NetworkRecord

DEFAULT_OPTIONS: dict[str, Any] = {"hidden": [256, 256], "out_dim": 32}

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
#: mean, variance, then the quantiles.
STATS_PER_TENSOR = 2 + len(QUANTILES)
#: Tensors that count steps rather than hold parameters; never read.
COUNTERS = ("num_batches_tracked",)


def tensor_statistics(values: torch.Tensor) -> torch.Tensor:
    """Mean, variance (population) and the :data:`QUANTILES` of all of ``values``, in float64."""
    values = values.reshape(-1).to(torch.float64)
    if not values.numel():
        return values.new_zeros(STATS_PER_TENSOR)
    found = quantiles(values, torch.tensor(QUANTILES, dtype=torch.float64))
    return torch.cat([values.mean().view(1), values.var(correction=0).view(1), found])


def _read(kind: str, name: str) -> bool:
    """Whether StatNN reads tensor ``name`` of an operation of kind ``kind``."""
    return kind != "buffer" and name not in COUNTERS


def layer_tensors(layer: Layer) -> list[torch.Tensor]:
    """The tensors of ``layer`` StatNN reads, in the layer's order."""
    return [tensor for name, tensor in layer.tensors.items() if _read(layer.kind, name)]


def record_statistics(record: NetworkRecord) -> torch.Tensor:
    """The StatNN feature vector of one network (float64)."""
    return torch.cat([tensor_statistics(t) for layer in record.layers for t in layer_tensors(layer)])


def _signature_entry(entry: Any) -> tuple | None:
    """``(kind, ((name, shape), ...), has_bias)`` from an entry of ``record.signature`` (or of this
    form, as a config round trip leaves it), or ``None`` for an entry of ``record.architecture``."""
    kind, tensors, *_ = entry
    tensors = tuple(tensors)
    if not tensors or not all(isinstance(t, (tuple, list)) and len(t) == 2 for t in tensors):
        return None
    tensors = tuple((str(name), tuple(int(s) for s in shape)) for name, shape in tensors)
    return kind, tensors, any(name == "bias" for name, _ in tensors)


def _describe_entry(index: int, name: str, entry: tuple) -> str:
    kind, tensors, _ = entry
    shapes = ", ".join(f"{n} {'x'.join(str(s) for s in shape) or 'scalar'}" for n, shape in tensors)
    return f"layer {index} '{name or '<root>'}' ({kind}: {shapes})"


@register_encoder("statnn")
class StatNNEncoder(Encoder):
    """Per-tensor statistics -> standardisation -> MLP -> z; fixed architecture (module docstring).

    Options: ``hidden`` widths of the MLP's hidden layers; ``out_dim`` size of z.
    """

    @classmethod
    def architecture_of(cls, record: NetworkRecord) -> Architecture:
        """A chain's layer signature (as in the first release), every tensor's for any other network."""
        return record.architecture if record.is_chain else record.signature

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        resolved = resolve_options("statnn", DEFAULT_OPTIONS, options)
        hidden = check_widths("statnn", "hidden", resolved["hidden"])
        self.out_dim = check_positive_int("statnn", "out_dim", resolved["out_dim"])
        architecture = require_architecture("statnn", architecture)
        entries = [_signature_entry(entry) for entry in architecture]
        if any(entries) and not all(entries):
            raise SneError("statnn: the architecture mixes record.signature and record.architecture entries")
        #: Built from record.signature: every tensor's name and shape, compared with each record's.
        self.signature = tuple(entries) if all(entries) else None
        if self.signature is not None:
            architecture = self.signature
            tensors = sum(1 for kind, names, _ in self.signature for name, _ in names if _read(kind, name))
        else:
            tensors = sum(1 + int(has_bias) for _, _, has_bias in architecture)
        super().__init__(architecture=architecture, **resolved)
        size = tensors * STATS_PER_TENSOR
        self.register_buffer("feature_mean", torch.zeros(size))
        self.register_buffer("feature_std", torch.ones(size))
        self.net = build_mlp(size, hidden, self.out_dim)

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        if self.signature is None:
            # Built from weight shapes: a chain's linear and convolution layers, each a weight and a bias.
            for record in records:
                for layer in record.layers:
                    extra = [n for n, t in layer.tensors.items()
                             if _read(layer.kind, n) and t is not layer.weight and t is not layer.bias]
                    grouped = layer.attrs.get("groups", 1) != 1
                    if extra or grouped or layer.kind not in CHAIN_KINDS:
                        what = f"also holds '{extra[0]}'" if extra else ("is grouped" if grouped else "is not a "
                                                                          "linear or convolution layer")
                        raise SneError(
                            f"{record.source}: encoder 'statnn' was built from weight shapes only "
                            f"(architecture=record.architecture), but layer '{layer.name or '<root>'}' of kind "
                            f"'{layer.kind}' {what}; build it with architecture=record.signature"
                        )
            check_fixed_architecture("statnn", self.architecture, records)
            return
        for record in records:
            got = [_signature_entry((l.kind, tuple((n, tuple(t.shape)) for n, t in l.tensors.items())))
                   for l in record.layers]
            if got == list(self.signature):
                continue
            index = next((i for i, (a, b) in enumerate(zip(got, self.signature)) if a != b), None)
            if index is None:
                difference = f"{len(got)} layers where it expects {len(self.signature)}"
            else:
                difference = (f"{_describe_entry(index, record.layers[index].name, got[index])} where it expects "
                              f"{self.signature[index][0]}: "
                              + ", ".join(f"{n} {'x'.join(str(s) for s in shape) or 'scalar'}"
                                          for n, shape in self.signature[index][1]))
            raise CannotRead(f"{record.source}: encoder 'statnn' takes only the architecture it was built for, "
                           f"but this network has {difference}; use an encoder that takes any architecture "
                           f"(e.g. sne, deepsets)")

    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        self.check_records(records)
        fit_standardization(self.feature_mean, self.feature_std, torch.stack([record_statistics(r) for r in records]))

    def prepare(self, records: Sequence[NetworkRecord]) -> torch.Tensor:
        self.check_records(records)
        if not records:
            raise SneError("cannot encode an empty batch of networks")
        return torch.stack([record_statistics(r) for r in records]).to(self.feature_mean.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.feature_mean) / self.feature_std)
