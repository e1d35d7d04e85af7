"""MLP baseline: a network's flattened weight vector through a multi-layer perceptron.

The input is every layer's weight and bias, in record order (:meth:`sne.weights.StackedWeights.flat`),
standardised per coordinate with statistics of the training networks. The input size is the
parameter count, so one encoder takes exactly one architecture: the one it was built for.

Weight-space outputs (:meth:`~sne.encoders.base.Encoder.make_weight_head`): the MLP's hidden
layers, then a zero-initialised Linear to one value per input coordinate, scaled by the
coordinate's fitted standard deviation into weight units: the non-equivariant reference.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from sne.encoders.base import Architecture, Encoder, register_encoder
from sne.encoders.common import (
    build_mlp,
    check_fixed_architecture,
    check_positive_int,
    check_widths,
    fit_standardization,
    flat_size,
    require_architecture,
    resolve_options,
)
from sne.errors import CannotRead, SneError
from sne.weights.batch import StackedWeights
from sne.weights.permute import canonicalize_hidden, supports_permutation
from sne.weights.record import NetworkRecord

DEFAULT_OPTIONS: dict[str, Any] = {"hidden": [256, 256], "out_dim": 32, "dropout": 0.0, "standardize": True}


@register_encoder("mlp")
class MLPEncoder(Encoder):
    """Flattened weights -> MLP -> z; fixed architecture.

    Options: ``hidden`` widths of the MLP's hidden layers; ``out_dim`` size of z; ``dropout`` after
    each hidden layer; ``standardize`` each input coordinate with the training networks' mean and
    standard deviation (layers differ in scale by orders of magnitude, and Adam on raw inputs sees
    mostly the largest layer).
    """

    weight_outputs = True

    def __init__(self, *, architecture: Architecture | None = None, **options: Any) -> None:
        resolved = resolve_options(self.name, DEFAULT_OPTIONS, options)
        hidden = check_widths(self.name, "hidden", resolved["hidden"])
        self.out_dim = check_positive_int(self.name, "out_dim", resolved["out_dim"])
        dropout = resolved["dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise SneError(f"{self.name} option dropout must be in [0, 1), got {resolved['dropout']!r}")
        architecture = require_architecture(self.name, architecture)
        super().__init__(architecture=architecture, **resolved)
        size = flat_size(architecture)
        self.register_buffer("input_mean", torch.zeros(size))
        self.register_buffer("input_std", torch.ones(size))
        self.net = build_mlp(size, hidden, self.out_dim, resolved["dropout"])

    def check_records(self, records: Sequence[NetworkRecord]) -> None:
        check_fixed_architecture(self.name, self.architecture, records)

    def fit_input_statistics(self, records: Sequence[NetworkRecord]) -> None:
        if self.options["standardize"]:
            self.check_records(records)
            fit_standardization(self.input_mean, self.input_std, self.flat_inputs(records, torch.float64))

    def flat_inputs(self, records: Sequence[NetworkRecord], dtype: torch.dtype) -> torch.Tensor:
        """``(len(records), parameters)``: the vectors the MLP reads."""
        return StackedWeights.from_records(records, dtype).flat()

    def prepare(self, records: Sequence[NetworkRecord]) -> torch.Tensor:
        self.check_records(records)
        return self.flat_inputs(records, self.input_mean.dtype)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.net((flat - self.input_mean) / self.input_std)

    def build_weight_head(self) -> nn.Module:
        hidden = self.options["hidden"]
        head = nn.Linear(hidden[-1] if hidden else self.input_mean.numel(), self.input_mean.numel())
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    def weight_values(self, flat: torch.Tensor, records: Sequence[NetworkRecord]) -> list[NetworkRecord]:
        features = self.net[:-1]((flat - self.input_mean) / self.input_std)  # all but the code's output layer
        values = self.weight_head(features) * self.input_std
        return StackedWeights.from_flat(values, self.architecture).to_records(records)


@register_encoder("mlp_canonical")
class CanonicalMLPEncoder(MLPEncoder):
    """:class:`MLPEncoder` on weights in canonical neuron order (:func:`sne.weights.canonicalize_hidden`).

    Sorting each hidden layer's neurons by the norm of their parameters makes the flat vector, and
    so the prediction, the same for every functionally-equivalent permutation of a network: the
    MLP baseline with the permutation symmetry removed by hand instead of by architecture. Plain
    chains only (no skip connections). No weight-space outputs: they would come out in canonical order.
    """

    weight_outputs = False

    def flat_inputs(self, records: Sequence[NetworkRecord], dtype: torch.dtype) -> torch.Tensor:
        for record in records:
            if not supports_permutation(record):
                raise CannotRead(f"mlp_canonical: {record.source} is not a plain chain of layers, so its neurons "
                               "have no canonical order (skip connections are not supported)")
        return StackedWeights.from_records([canonicalize_hidden(r) for r in records], dtype).flat()
