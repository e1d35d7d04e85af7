"""The ``resnet`` recipe: small ResNets with batch norm and downsampling shortcuts.

Per block of ``arch_block`` network ids (:mod:`sne.zoo.module_recipes`): 2 or 3 stages
(``stages``), 1-3 basic blocks per stage (``blocks``), a base width of 4, 8 or 16 channels
(``width``). Per network: optimizer, learning rate, weight decay, fraction of the training data and
epochs (``epochs_min``..``epochs``); one row per network, at its last epoch.

The network (:class:`ZooResNet`): stem conv 3x3 (1 -> width, stride 2, padding 1) + BatchNorm +
ReLU; stage s has ``blocks`` basic blocks of ``width * 2**s`` channels (two conv 3x3 + BatchNorm,
ReLU after the first and after the addition), the first block of every stage after the first with
stride 2 and a conv 1x1 (stride 2) + BatchNorm shortcut; global average pool; linear to 10 classes.
Batch norm runs on batch statistics while training (running statistics updated per network, as a
lone ``nn.Module`` would) and on the running statistics when evaluated and in the stored record.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from torch import nn

from sne.zoo.cnn_nets import OPTIMIZERS
from sne.zoo.module_recipes import ModuleRecipe, resolve_epochs
from sne.zoo.recipes import register_recipe

STAGES = (2, 3)
BLOCKS = (1, 3)
WIDTHS = (4, 8, 16)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ZooResNet(nn.Module):
    """One ResNet of the zoo (see the module docstring)."""

    def __init__(self, stages: int, blocks: int, width: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, cin = [], width
        for s in range(stages):
            cout = width * 2 ** s
            layers += [BasicBlock(cin if b == 0 else cout, cout, 2 if s > 0 and b == 0 else 1) for b in range(blocks)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x, masks=None):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


@register_recipe
class ResNetRecipe(ModuleRecipe):
    name = "resnet"
    summary = "small ResNets (BatchNorm, downsampling shortcuts) of sampled depth and width; target: test_accuracy"
    options = {"epochs": 8, "epochs_min": 1}
    lr_ranges = {"sgd": (1e-3, 3e-1), "adam": (1e-4, 1e-2), "rmsprop": (1e-4, 1e-2)}
    weight_decay_range = (1e-6, 1e-2)
    class_columns = {"optimizer": OPTIMIZERS}

    def resolve_own(self, o: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
        return resolve_epochs(self.name, o)

    def sample_architecture(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "stages": int(rng.integers(STAGES[0], STAGES[1] + 1)),
            "blocks": int(rng.integers(BLOCKS[0], BLOCKS[1] + 1)),
            "width": int(WIDTHS[rng.integers(len(WIDTHS))]),
        }

    def sample_training(self, rng: np.random.Generator, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"epochs": int(rng.integers(options["epochs_min"], options["epochs"] + 1))}

    def build(self, arch: Mapping[str, Any], options: Mapping[str, Any]) -> nn.Module:
        return ZooResNet(arch["stages"], arch["blocks"], arch["width"])

    def architecture_name(self, arch: Mapping[str, Any]) -> str:
        return f"resnet-s{arch['stages']}-b{arch['blocks']}-w{arch['width']}"

    def own_targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "stages": {"kind": "regression", "description": "stages (each after the first halves the resolution)"},
            "blocks": {"kind": "regression", "description": "basic blocks per stage"},
            "width": {"kind": "regression", "description": "channels of the first stage (doubled per stage)"},
            "epochs": {"kind": "regression", "description": "training epochs"},
        }

    def describe_training(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"epochs_uniform_integer": [options["epochs_min"], options["epochs"]],
                "architecture_choices": {"stages": list(STAGES), "blocks": list(BLOCKS), "width": list(WIDTHS)}}
