"""The ``wild-park`` recipe: CNNs of mixed architectures, as in Neural Graphs' CNN Wild Park.

Per block of ``arch_block`` network ids (:mod:`sne.zoo.module_recipes`): 2-8 convolution layers
(``depth``), one width of 4, 8, 16, 32 or 64 channels (``width``), kernels 3, 5 or 7 (``kernel``),
with or without residual connections (``residual``), and an activation of relu, gelu, tanh or
leaky_relu. Per network: optimizer, learning rate, weight decay, fraction of the training
data. Every network is recorded at each epoch of ``checkpoints`` (a row per checkpoint, all in one
split).

The network (:class:`WildParkCnn`), for S x S images: conv(1 -> width, stride 2, padding k // 2),
activation, 2x2 max-pool (to S/4: a CPU budget; the published zoo trains on 32x32 CIFAR-10 at full
resolution), then ``depth - 1`` convolutions width -> width (padding k // 2) each followed by the
activation and, in residual networks, added to its input; global average pool; linear to 10 classes.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from torch import nn

from sne.errors import SneError
from sne.zoo.cnn_nets import OPTIMIZERS
from sne.zoo.module_recipes import ModuleRecipe
from sne.zoo.recipes import register_recipe

# Sigmoid is left out: measured here, every 6-layer sigmoid network stayed at chance for 4 epochs.
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}
DEPTHS = (2, 8)
WIDTHS = (4, 8, 16, 32, 64)
KERNELS = (3, 5, 7)
CONNECTIONS = ("plain", "residual")


class WildParkCnn(nn.Module):
    """One Wild Park CNN (see the module docstring)."""

    def __init__(self, depth: int, width: int, kernel: int, residual: str, activation: str, classes: int = 10) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(1, width, kernel, stride=2, padding=kernel // 2)]
            + [nn.Conv2d(width, width, kernel, padding=kernel // 2) for _ in range(depth - 1)]
        )
        self.act = ACTIVATIONS[activation]()
        self.residual = residual == "residual"
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width, classes)

    def forward(self, x, masks=None):
        x = self.pool(self.act(self.convs[0](x)))
        for conv in self.convs[1:]:
            y = self.act(conv(x))
            x = x + y if self.residual else y
        return self.head(x.mean((2, 3)))


@register_recipe
class WildPark(ModuleRecipe):
    name = "wild-park"
    summary = ("CNNs of mixed architectures (2-8 convs, 4-64 channels, kernels 3/5/7, residual or not, 4 "
               "activations), checkpoints at several epochs; target: test_accuracy")
    options = {"checkpoints": [1, 2, 4, 8]}
    lr_ranges = {"sgd": (1e-3, 1e-1), "adam": (1e-4, 1e-2), "rmsprop": (1e-4, 1e-2)}
    weight_decay_range = (1e-6, 1e-2)
    class_columns = {"optimizer": OPTIMIZERS, "activation": tuple(ACTIVATIONS), "residual": CONNECTIONS}

    def resolve_own(self, o: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
        checkpoints = o["checkpoints"]
        valid = (isinstance(checkpoints, list) and checkpoints
                 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in checkpoints)
                 and checkpoints == sorted(set(checkpoints)) and checkpoints[-1] >= 1)
        if not valid:
            raise SneError(f"wild-park option 'checkpoints' must be ascending distinct epochs >= 0 ending at 1 or "
                           f"more, e.g. [1,2,4,8]; got {checkpoints!r}")
        return {"checkpoints": list(checkpoints)}

    def sample_architecture(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "depth": int(rng.integers(DEPTHS[0], DEPTHS[1] + 1)),
            "width": int(WIDTHS[rng.integers(len(WIDTHS))]),
            "kernel": int(KERNELS[rng.integers(len(KERNELS))]),
            "residual": CONNECTIONS[rng.integers(len(CONNECTIONS))],
            "activation": list(ACTIVATIONS)[rng.integers(len(ACTIVATIONS))],
        }

    def build(self, arch: Mapping[str, Any], options: Mapping[str, Any]) -> nn.Module:
        module = WildParkCnn(arch["depth"], arch["width"], arch["kernel"], arch["residual"], arch["activation"])
        # He-style init with the activation's gain: PyTorch's default (gain 1/sqrt(3)) fades the
        # signal through deep plain stacks, leaving most 6-8 layer networks at chance.
        gain = nn.init.calculate_gain("leaky_relu" if arch["activation"] == "leaky_relu" else
                                      {"gelu": "relu"}.get(arch["activation"], arch["activation"]))
        for conv in module.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            conv.weight.data.mul_(gain)
            nn.init.zeros_(conv.bias)
        return module

    def architecture_name(self, arch: Mapping[str, Any]) -> str:
        return (f"wild-park-d{arch['depth']}-w{arch['width']}-k{arch['kernel']}"
                f"{'-res' if arch['residual'] == 'residual' else ''}-{arch['activation']}")

    def checkpoints(self, hp: Mapping[str, Any], options: Mapping[str, Any]) -> list[int]:
        return list(options["checkpoints"])

    def rows_per_network(self, options: Mapping[str, Any]) -> int:
        return len(options["checkpoints"])

    def own_targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "depth": {"kind": "regression", "description": "convolution layers"},
            "width": {"kind": "regression", "description": "channels of every convolution"},
            "kernel": {"kind": "regression", "description": "kernel size of every convolution"},
        }

    def describe_training(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"checkpoints": list(options["checkpoints"]),
                "architecture_choices": {"depth": list(DEPTHS), "width": list(WIDTHS), "kernel": list(KERNELS),
                                         "residual": list(CONNECTIONS), "activation": list(ACTIVATIONS)}}
