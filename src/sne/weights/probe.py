"""Probe values: what every neuron of a network computes at a few fixed inputs (a forward pass
without data). Encoders read them beside the weights as *probe features* (Neural Graphs' probe
features; SNE's option ``probe_points``); they move with their neurons under any permutation, so
they keep an encoder exactly as invariant as it was.

Only a chain of linear layers whose activations are known can be run from its record: the record
of a bare state_dict names no activations, and one of a convolutional network no strides.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from sne.errors import SneError
from sne.weights.record import NetworkRecord

#: SIREN's factor in sin(w0 x): what a "sine" layer that does not state its ``w0`` computes.
SIREN_W0 = 30.0

#: The activations a probe can evaluate; "sine" is SIREN's sin(w0 x).
PROBE_ACTIVATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "identity": lambda x, w0: x,
    "relu": lambda x, w0: torch.relu(x),
    "tanh": lambda x, w0: torch.tanh(x),
    "sigmoid": lambda x, w0: torch.sigmoid(x),
    "gelu": lambda x, w0: nn.functional.gelu(x),
    "silu": lambda x, w0: nn.functional.silu(x),
    "leaky_relu": lambda x, w0: nn.functional.leaky_relu(x),
    "elu": lambda x, w0: nn.functional.elu(x),
    "sine": lambda x, w0: torch.sin(w0 * x),
}


def layer_probe_problem(record: NetworkRecord) -> str | None:
    """Why some layer of ``record`` cannot be run on probe inputs (a phrase naming it), or None."""
    for layer in record.layers:
        if layer.kind != "linear":
            return f"probe features need an all-linear network, but layer '{layer.name}' is {layer.kind}"
        if layer.activation is None:
            return (f"probe features cannot run layer '{layer.name}': its activation is unknown (a bare "
                    f"state_dict does not name it; give the network's module with --arch)")
        if layer.activation not in PROBE_ACTIVATIONS:
            return f"probe features cannot run layer '{layer.name}' with activation {layer.activation!r}"
    return None


def probe_problem(record: NetworkRecord) -> str | None:
    """Why ``record`` cannot be run by :func:`probe_values` (a phrase), or None."""
    problem = layer_probe_problem(record)
    if problem is not None:
        return problem
    if not record.is_chain or any(layer.skip_from for layer in record.layers):
        return "probe features need a chain of linear layers, but its layers add or concatenate outputs"
    for previous, layer in zip(record.layers, record.layers[1:]):
        if previous.out_features != layer.in_features:
            return f"layer '{layer.name}' reads {layer.in_features} inputs, not the {previous.out_features} before it"
    return None


def check_probeable(record: NetworkRecord) -> None:
    """Raise :class:`SneError` naming ``record`` and what :func:`probe_problem` finds, if anything."""
    problem = probe_problem(record)
    if problem is not None:
        raise SneError(f"{record.source}: {problem} (option probe_points)")


def probe_inputs(dimension: int, count: int) -> torch.Tensor:
    """``count`` fixed points of ``[-1, 1]^dimension`` (a scrambled Sobol sequence of seed 0), float64:
    spread evenly in any dimension, and the same in every call, so a network's values are too."""
    return _sobol_points(dimension, count).clone()


@functools.lru_cache(maxsize=64)
def _sobol_points(dimension: int, count: int) -> torch.Tensor:
    # Every record of every batch reads the same points: drawn once (a draw costs ~0.1 ms, the network's run less).
    return torch.quasirandom.SobolEngine(dimension, scramble=True, seed=0).draw(count, dtype=torch.float64) * 2 - 1


def probe_values(record: NetworkRecord, count: int, sine_w0: float = SIREN_W0) -> list[torch.Tensor]:
    """Values at :func:`probe_inputs`: the network's inputs, then every layer's outputs after its
    activation, each ``(features, count)`` in float64. A layer's ``w0`` attribute, where the record
    has one, is its sine's factor. Raises :class:`SneError` (:func:`check_probeable`) for a record that
    :func:`probe_problem` refuses."""
    check_probeable(record)
    values = probe_inputs(record.layers[0].in_features, count)
    out = [values.T]
    for layer in record.layers:
        pre = values @ layer.weight.double().T
        if layer.bias is not None:
            pre = pre + layer.bias.double()
        values = PROBE_ACTIVATIONS[layer.activation](pre, float(layer.attrs.get("w0", sine_w0)))
        out.append(values.T)
    return out


__all__ = [
    "PROBE_ACTIVATIONS", "SIREN_W0", "check_probeable", "layer_probe_problem", "probe_inputs", "probe_problem",
    "probe_values",
]
