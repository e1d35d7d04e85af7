"""Prediction targets: their kind decides the head's output, the loss and how outputs map back."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sne.errors import SneError

TARGET_KINDS = ("regression", "unit_interval", "class")


@dataclass(frozen=True)
class Target:
    """A target column and how to learn it.

    Regression targets are standardised with the training split's mean and standard deviation so
    the head sees unit-scale values; ``unit_interval`` targets (accuracies) use a sigmoid and BCE
    as in the paper; ``class`` targets use cross-entropy over ``num_classes`` logits.
    """

    name: str
    kind: str
    mean: float = 0.0
    std: float = 1.0
    num_classes: int = 0

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.kind == "class" else 1

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Target values -> what the head is trained to output."""
        if self.kind == "regression":
            return (values - self.mean) / self.std
        if self.kind == "class":
            return values.long()
        return values

    def loss(self, outputs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(values)
        if self.kind == "regression":
            return F.mse_loss(outputs.squeeze(-1), encoded)
        if self.kind == "unit_interval":
            return F.binary_cross_entropy_with_logits(outputs.squeeze(-1), encoded)
        return F.cross_entropy(outputs, encoded)

    def constant_outputs(self, train_values: torch.Tensor) -> torch.Tensor:
        """The head output ``(output_dim,)`` of the trivial predictor, one constant for every network,
        that a trained head must beat: the training mean (0 standardised), the logit of the training
        mean for ``unit_interval``, and for classes the log training frequencies with one pseudo-count
        per class, so that a class unseen in training costs a finite loss."""
        if self.kind == "regression":
            return torch.zeros(1)
        if self.kind == "unit_interval":
            return torch.logit(train_values.float().mean().clamp(1e-6, 1 - 1e-6)).reshape(1)
        counts = torch.bincount(train_values.long(), minlength=self.num_classes)[: self.num_classes].float()
        return ((counts + 1) / (counts.sum() + self.num_classes)).log()

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Head outputs -> predictions in the target's own units (class index for classes)."""
        if self.kind == "regression":
            return outputs.squeeze(-1) * self.std + self.mean
        if self.kind == "unit_interval":
            return torch.sigmoid(outputs.squeeze(-1))
        return outputs.argmax(-1)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_target(name: str, zoo_targets: dict, train_values: torch.Tensor) -> Target:
    """Build the :class:`Target` for column ``name`` from a zoo's declared targets and train values."""
    if name not in zoo_targets:
        raise SneError(f"unknown target '{name}' (this zoo has: {', '.join(sorted(zoo_targets)) or 'none'})")
    spec = zoo_targets[name]
    kind = spec.get("kind", "regression")
    if kind not in TARGET_KINDS:
        raise SneError(f"target '{name}' has unknown kind '{kind}' (expected one of {', '.join(TARGET_KINDS)})")
    if kind == "regression":
        std = float(train_values.std()) if len(train_values) > 1 else 1.0
        return Target(name, kind, mean=float(train_values.mean()), std=std if std > 0 else 1.0)
    if kind == "class":
        num_classes = int(spec.get("num_classes") or int(train_values.max()) + 1)
        return Target(name, kind, num_classes=num_classes)
    return Target(name, kind)


def build_head(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    """An MLP head: ``len(hidden)`` ReLU layers, then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
