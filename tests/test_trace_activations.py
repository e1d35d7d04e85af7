"""The activation a traced record gives each layer: the nonlinearity applied to its output when one
op says it, 'identity' when the output reaches the next layer unchanged but for linear maps, and
unknown (None) for a function written out of several ops, never the name of one of its steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sne.weights.trace import record_from_module


class _Two(nn.Module):
    """Linear -> ``act`` -> Linear."""

    def __init__(self, act) -> None:
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.second = nn.Linear(8, 3)
        self.act = act

    def forward(self, x):
        return self.second(self.act(self.first(x)))


class _RmsNormed(nn.Module):
    """A hand-written RMSNorm between two linear layers: a scale by a statistic, not an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 8)
        self.scale = nn.Parameter(torch.ones(8))
        self.second = nn.Linear(8, 3)

    def forward(self, x):
        h = self.first(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.second(self.scale * h)


class _Residual(nn.Module):
    """relu(bn(conv(x)) + x): the sum passes through the ReLU, so the norm's output does too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)) + x)
        return self.head(h.mean((2, 3)))


def _activations(module: nn.Module, example: torch.Tensor) -> dict[str, str | None]:
    return {layer.name: layer.activation for layer in record_from_module(module, example).layers}


@pytest.mark.parametrize("act, expected", [
    (nn.ReLU(), "relu"),
    (nn.GELU(), "gelu"),
    (lambda h: torch.sin(30.0 * h), "sine"),  # a scale before the nonlinearity (SIREN) keeps its name
    (lambda h: nn.functional.dropout(torch.tanh(h), 0.1, training=False), "tanh"),
    (lambda h: h, "identity"),
    (lambda h: 2.0 * h + 1.0, "identity"),
    (lambda h: h * torch.sigmoid(h), None),  # SiLU written out: not 'sigmoid'
    (lambda h: 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))), None),  # exact GELU written out: not 'identity'
    (lambda h: 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3)))), None),
])
def test_activation_of_a_hidden_layer(act, expected):
    assert _activations(_Two(act), torch.randn(2, 4)) == {"first": expected, "second": "identity"}


def test_a_norm_written_out_is_no_activation():
    assert _activations(_RmsNormed(), torch.randn(2, 4))["first"] == "identity"


def test_an_activation_after_a_residual_sum_is_each_summand_s():
    activations = _activations(_Residual().eval(), torch.randn(1, 3, 5, 5))
    assert activations["bn"] == "relu" and activations["head"] == "identity"


def test_gated_units_keep_their_own_activations():
    """SwiGLU (Llama's MLP): the gate's SiLU, the up projection's output multiplied in unchanged."""

    class SwiGlu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate, self.up, self.down = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.down(nn.functional.silu(self.gate(x)) * self.up(x))

    assert _activations(SwiGlu(), torch.randn(2, 4)) == {"gate": "silu", "up": "identity", "down": "identity"}
