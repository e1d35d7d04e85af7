"""Small CNNs of the published zoos, as stacked parameters that many networks train with at once.

An architecture is a chain: convolutions (each followed by an optional 2x2 max-pool, the
activation and dropout), a readout (global average pool or flatten), then linear layers (each but
the last followed by the activation and dropout).

``M`` networks of one architecture and one activation run as one network: their parameters are
stacked along a leading model dimension, convolutions become grouped convolutions (``groups = M``,
input channels of model m at ``[m * C, (m + 1) * C)``) and linear layers batched matrix products.
Every network gets its own images in the same batch slot, so each can train on its own data.
:class:`ZooCnn` is one network of the same architecture as a plain ``nn.Module``; the tests and the
benchmark check the stacked code against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = ("relu", "tanh")
INIT_SCHEMES = ("normal_fan_in", "uniform_fan_in", "glorot_normal", "orthogonal")
READOUTS = ("global_avg_pool", "flatten")


@dataclass(frozen=True)
class ConvSpec:
    name: str
    out_channels: int
    kernel: int
    stride: int = 1
    max_pool: bool = False
    #: Zeros added on every side of the input (a kernel larger than the published one keeps its maps' sizes).
    padding: int = 0


@dataclass(frozen=True)
class CnnArchitecture:
    """A zoo CNN; ``linears`` are (name, out_features), the last one giving the class logits."""

    convs: tuple[ConvSpec, ...]
    readout: str
    linears: tuple[tuple[str, int], ...]
    in_channels: int = 1
    image_size: int = 28
    #: Run the stacked convolutions channels-last: measured on CPU, twice as fast for CNN-s (5x5
    #: grouped convolutions and max-pooling), slightly slower for the small CNN. Results are the same.
    channels_last: bool = False

    def conv_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, height, width) after each convolution block (pool included)."""
        shapes, channels, size = [], self.in_channels, self.image_size
        for conv in self.convs:
            size = (size + 2 * conv.padding - conv.kernel) // conv.stride + 1
            if conv.max_pool:
                size //= 2
            channels = conv.out_channels
            shapes.append((channels, size, size))
        return shapes

    def readout_features(self) -> int:
        channels, height, width = self.conv_shapes()[-1]
        return channels if self.readout == "global_avg_pool" else channels * height * width

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(<layer>.weight | <layer>.bias, shape)`` of one network, in computation order."""
        shapes, channels = [], self.in_channels
        for conv in self.convs:
            shapes.append((f"{conv.name}.weight", (conv.out_channels, channels, conv.kernel, conv.kernel)))
            shapes.append((f"{conv.name}.bias", (conv.out_channels,)))
            channels = conv.out_channels
        features = self.readout_features()
        for name, out in self.linears:
            shapes.append((f"{name}.weight", (out, features)))
            shapes.append((f"{name}.bias", (out,)))
            features = out
        return shapes

    def dropout_shapes(self) -> list[tuple[int, ...]]:
        """Per-image shape of each dropout mask: after every conv block and every hidden linear layer."""
        return [*self.conv_shapes(), *[(out,) for _, out in self.linears[:-1]]]

    def num_parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.parameter_shapes())


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    return torch.relu(x) if activation == "relu" else torch.tanh(x)


def stacked_forward(
    arch: CnnArchitecture,
    params: Sequence[torch.Tensor],
    images: torch.Tensor,
    activation: str,
    masks: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits ``(M, B, classes)`` of ``M`` stacked networks sharing one activation.

    ``params`` follow :meth:`CnnArchitecture.parameter_shapes` with a leading model dimension;
    ``images`` is ``(B, M * in_channels, H, W)``, model m's images in its own channels, or
    ``(B, in_channels, H, W)`` for images every model sees (then the first convolution is one
    ordinary convolution with all models' filters, much cheaper than a grouped one). ``masks``
    (dropout, already scaled by 1 / keep) are ``(B, M * C, H, W)`` after conv blocks and
    ``(M, B, features)`` after hidden linear layers.
    """
    models = params[0].shape[0]
    x = images.contiguous(memory_format=torch.channels_last) if arch.channels_last else images
    index = 0
    for i, conv in enumerate(arch.convs):
        weight, bias = params[2 * i], params[2 * i + 1]
        groups = 1 if x.shape[1] == weight.shape[2] else models  # shared input: every model's filters see it
        x = F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), stride=conv.stride,
                     padding=conv.padding, groups=groups)
        if conv.max_pool:
            x = F.max_pool2d(x, 2)
        x = _activate(x, activation)
        if masks is not None:
            x = x * masks[index]
        index += 1
    batch = x.shape[0]
    if arch.readout == "global_avg_pool":
        h = x.mean((2, 3)).view(batch, models, -1)
    else:  # nn.Flatten of each model's (C, H, W) block: channel-major, as in a single network
        h = x.reshape(batch, models, -1)
    h = h.transpose(0, 1)
    offset = 2 * len(arch.convs)
    for j in range(len(arch.linears)):
        weight, bias = params[offset + 2 * j], params[offset + 2 * j + 1]
        h = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))
        if j < len(arch.linears) - 1:
            h = _activate(h, activation)
            if masks is not None:
                h = h * masks[index]
            index += 1
    return h


class ZooCnn(nn.Module):
    """One network of ``arch`` as an ``nn.Module``; its state_dict keys are the zoo's layer names."""

    def __init__(self, arch: CnnArchitecture, activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.arch = arch
        self.activation = activation
        channels = arch.in_channels
        for conv in arch.convs:
            self.add_module(conv.name, nn.Conv2d(channels, conv.out_channels, conv.kernel, stride=conv.stride,
                                                 padding=conv.padding))
            channels = conv.out_channels
        features = arch.readout_features()
        for name, out in arch.linears:
            self.add_module(name, nn.Linear(features, out))
            features = out

    def forward(self, x: torch.Tensor, masks: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """``x`` (B, in_channels, H, W) -> logits (B, classes); ``masks`` are per-image dropout masks."""
        masks = masks or [None] * len(self.arch.dropout_shapes())
        index = 0
        for conv in self.arch.convs:
            x = getattr(self, conv.name)(x)
            if conv.max_pool:
                x = F.max_pool2d(x, 2)
            x = _activate(x, self.activation)
            if masks[index] is not None:
                x = x * masks[index]
            index += 1
        x = x.mean((2, 3)) if self.arch.readout == "global_avg_pool" else x.flatten(1)
        for j, (name, _) in enumerate(self.arch.linears):
            x = getattr(self, name)(x)
            if j < len(self.arch.linears) - 1:
                x = _activate(x, self.activation)
                if masks[index] is not None:
                    x = x * masks[index]
                index += 1
        return x


def initial_parameters(
    arch: CnnArchitecture, scheme: str, gain: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """One network's initial parameters (weights by ``scheme`` scaled by ``gain``, zero biases).

    ``normal_fan_in``: N(0, gain^2 / fan_in); ``uniform_fan_in``: the same variance, uniform;
    ``glorot_normal``: N(0, 2 gain^2 / (fan_in + fan_out)); ``orthogonal``: gain times a (semi-)
    orthogonal matrix over (out, in * kernel). Fan-in scaling keeps signals alive through the
    layers, so the gain, not the depth, sets how fast a network trains.
    """
    params = []
    for name, shape in arch.parameter_shapes():
        tensor = torch.zeros(shape)
        if name.endswith(".weight"):
            receptive = math.prod(shape[2:])
            fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            if scheme == "normal_fan_in":
                tensor.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)
            elif scheme == "uniform_fan_in":
                bound = gain * math.sqrt(3.0 / fan_in)
                tensor.uniform_(-bound, bound, generator=generator)
            elif scheme == "glorot_normal":
                tensor.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(tensor, gain=gain, generator=generator)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
        params.append(tensor)
    return params


#: Optimizer names and their fixed constants (PyTorch's defaults; SGD momentum 0.9).
OPTIMIZERS = ("sgd", "adam", "rmsprop")
SGD_MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
RMSPROP_ALPHA = 0.99
EPS = 1e-8


def reference_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer that :class:`StackedOptimizer` reproduces for one network."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=EPS, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, alpha=RMSPROP_ALPHA, eps=EPS, weight_decay=weight_decay)


class StackedOptimizer:
    """SGD with momentum, Adam and RMSProp with coupled L2, per model, over stacked parameters.

    Each model has its own optimizer, learning rate and weight decay. All three share one update
    (so no model's step depends on which others are in the group):

        g = grad + wd * p;  m = b1 * m + c1 * g;  v = b2 * v + (1 - b2) * g^2
        p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)   (the denominator is 1 for SGD)

    with (b1, c1) = (0.9, 1) for SGD, (0.9, 0.1) for Adam, (0, 1) for RMSProp; bc1, bc2 are
    Adam's bias corrections (1 otherwise). This is what ``torch.optim`` computes for each.
    Models at index >= ``active`` in :meth:`step` are left as they are.
    """

    def __init__(self, params: Sequence[torch.Tensor], optimizers: Sequence[str], lrs, weight_decays) -> None:
        self.params = list(params)
        device = self.params[0].device
        kinds = torch.tensor([OPTIMIZERS.index(o) for o in optimizers], device=device)
        self.is_adam = kinds == 1
        self.uses_v = kinds != 0
        self.lr = torch.as_tensor(lrs, dtype=torch.float32, device=device).clone()
        self.weight_decay = torch.as_tensor(weight_decays, dtype=torch.float32, device=device)
        self.b1 = torch.where(kinds == 0, SGD_MOMENTUM, torch.where(self.is_adam, ADAM_BETAS[0], 0.0))
        self.c1 = torch.where(self.is_adam, 1.0 - ADAM_BETAS[0], 1.0)
        self.b2 = torch.where(self.is_adam, ADAM_BETAS[1], RMSPROP_ALPHA)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def freeze(self, models: torch.Tensor) -> None:
        """Stop updating ``models`` (a boolean mask over all models): their learning rate becomes 0."""
        self.lr = torch.where(models, 0.0, self.lr)

    def reset(self, models: torch.Tensor) -> None:
        """Zero the parameters and state of ``models`` (diverged ones, so no NaN lingers)."""
        for tensors in (self.params, self.m, self.v):
            for t in tensors:
                t[models] = 0.0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], active: int) -> None:
        self.steps += 1
        t = self.steps
        k = active
        bc1 = torch.where(self.is_adam[:k], 1.0 - ADAM_BETAS[0] ** t, 1.0)
        bc2_sqrt = torch.where(self.is_adam[:k], math.sqrt(1.0 - ADAM_BETAS[1] ** t), 1.0)
        step_size = self.lr[:k] / bc1
        uses_v = self.uses_v[:k].float()
        for p, m, v, grad in zip(self.params, self.m, self.v, grads):
            view = (k,) + (1,) * (p.dim() - 1)
            p, m, v = p[:k], m[:k], v[:k]
            g = grad.add(p * self.weight_decay[:k].view(view))
            m.mul_(self.b1[:k].view(view)).add_(g * self.c1[:k].view(view))
            b2 = self.b2[:k].view(view)
            v.mul_(b2).addcmul_(g, g * (1.0 - b2))
            denom = (v.sqrt() / bc2_sqrt.view(view)).add_(EPS).mul_(uses_v.view(view)).add_(1.0 - uses_v.view(view))
            p.sub_(m / denom * step_size.view(view))
