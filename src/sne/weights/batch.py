"""Networks of one architecture stacked layer by layer: the batched view fixed-architecture encoders prepare from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from sne.errors import SneError
from sne.weights.record import NetworkRecord


@dataclass
class StackedWeights:
    """A batch of networks of one architecture: ``weights[i]`` of shape ``(batch, *weight shape)``
    and ``biases[i]`` of shape ``(batch, out)`` per layer (zeros where ``has_bias[i]`` is false)."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    has_bias: tuple[bool, ...]

    @classmethod
    def from_records(cls, records: Sequence[NetworkRecord], dtype: torch.dtype) -> "StackedWeights":
        """Stack the layers of ``records``, which share one architecture, in ``dtype``."""
        if not records:
            raise SneError("cannot encode an empty batch of networks")
        weights, biases = [], []
        for i, layer in enumerate(records[0].layers):
            weights.append(torch.stack([r.layers[i].weight for r in records]).to(dtype))
            biases.append(
                torch.stack([r.layers[i].bias if r.layers[i].bias is not None
                             else r.layers[i].weight.new_zeros(layer.out_features) for r in records]).to(dtype)
            )
        return cls(tuple(weights), tuple(biases), tuple(layer.bias is not None for layer in records[0].layers))

    @classmethod
    def from_flat(cls, flat: torch.Tensor, architecture: Sequence) -> "StackedWeights":
        """The inverse of :meth:`flat`: rows ``(batch, parameters)`` cut into ``architecture``'s layers."""
        weights, biases, start = [], [], 0
        for _, shape, has_bias in architecture:
            size = int(torch.Size(shape).numel())
            weights.append(flat[:, start : start + size].reshape(len(flat), *shape))
            start += size
            biases.append(flat[:, start : start + shape[0]] if has_bias else flat.new_zeros(len(flat), shape[0]))
            start += shape[0] if has_bias else 0
        return cls(tuple(weights), tuple(biases), tuple(bool(has_bias) for _, _, has_bias in architecture))

    def flat(self) -> torch.Tensor:
        """``(batch, parameters)``: per network each layer's weight (flattened in PyTorch order),
        then its bias when it has one, in record order."""
        parts = []
        for weight, bias, has_bias in zip(self.weights, self.biases, self.has_bias):
            parts.append(weight.reshape(len(weight), -1))
            if has_bias:
                parts.append(bias)
        return torch.cat(parts, dim=1)

    def to_records(self, records: Sequence[NetworkRecord]) -> list[NetworkRecord]:
        """``records`` (one per network of the batch) with these values as every layer's weight and
        bias (:func:`with_parameter_values`)."""
        return [with_parameter_values(record, [(w[n], b[n]) for w, b in zip(self.weights, self.biases)])
                for n, record in enumerate(records)]


def with_parameter_values(
    record: NetworkRecord, values: Sequence[tuple[torch.Tensor, torch.Tensor | None]]
) -> NetworkRecord:
    """``record`` with each layer's weight and bias replaced by ``values`` (one ``(weight, bias)``
    per layer); a layer without a bias keeps none, whatever its value."""
    return record.with_layers(
        layer.with_tensors(weight=weight, **({"bias": bias} if layer.bias is not None else {}))
        for layer, (weight, bias) in zip(record.layers, values)
    )
