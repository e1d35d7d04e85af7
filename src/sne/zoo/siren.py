"""The batched SIREN fitter shared by the INR recipes (``sine-inr``, ``digit-inr``).

Each network is a SIREN ``in_features -> 32 -> 32 -> 1`` (Sitzmann et al. 2020) with hidden
activations sin(w0 (W h + b)), w0 = 30, and a linear output.

A group of networks is fitted at once: parameters are stacked along a leading model dimension, the
forward pass is a batched matrix product, and the gradient of the sum of per-model mean squared
errors is computed in closed form (two sine layers are simple enough, and skipping autograd halves
the time on a CPU). Adam is elementwise, so one Adam over the stacked tensors is exactly one Adam
per model. The networks of a group share the input points; each has its own targets.

Options ``hidden_gain`` and ``hidden_gain_max`` scale the initial weights after the first layer
(hidden and output), the part where SIREN's initialisation and PyTorch's ``nn.Linear`` default differ
most (the default's are ~12 times larger at width 32): one gain for all, or each network's own,
log-uniform between the two and drawn from (zoo seed, network id), so one zoo holds networks
started both ways and in between.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sne.errors import SneError
from sne.zoo.recipes import FitProgress, derive_seed

#: Hidden width and the sine frequency factor of the hidden layers.
HIDDEN = 32
W0 = 30.0
LAYER_NAMES = ("layers.0", "layers.1", "layers.2")
#: State-dict keys in the order of the stacked parameter lists used throughout this module.
PARAMETER_NAMES = tuple(f"{layer}.{part}" for layer in LAYER_NAMES for part in ("weight", "bias"))
INIT_MODES = ("independent", "shared")

#: Options every SIREN recipe takes, with their defaults; recipes add their own and may override these.
# group_size None resolves per device: on one CPU thread throughput is flat from 25 to 100 models
# per group; a GPU needs wide batches (measured on an H100: 106 INRs/s at 100, 222 at 500).
FIT_OPTIONS: dict[str, Any] = {
    "init": "independent",
    "init_gain": 1.0,
    "hidden_gain": 1.0,
    "hidden_gain_max": None,
    "steps": 500,
    "lr": 1e-3,
    "group_size": None,
    "device": "cpu",
    "compile": False,
}


class Sine(nn.Module):
    """sin(w0 * x), the SIREN activation (named ``Sine`` so record builders recognise it)."""

    def __init__(self, w0: float = W0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


class Siren(nn.Module):
    """One fitted network as an ``nn.Module``; its state_dict keys match the zoo's layers."""

    def __init__(self, in_features: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(in_features, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 1)]
        )
        self.sine = Sine()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of shape (points, in_features) in [-1, 1] -> (points, 1)."""
        for layer in self.layers[:-1]:
            x = self.sine(layer(x))
        return self.layers[-1](x)


def _layer_sizes(in_features: int) -> list[tuple[int, int]]:
    return [(in_features, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 1)]


def siren_architecture(in_features: int) -> list[dict[str, Any]]:
    """The zoo-manifest architecture of a SIREN with ``in_features`` inputs."""
    activations = ["sine", "sine", "identity"]
    return [
        {
            "name": name,
            "kind": "linear",
            "level": level,
            "weight_shape": [fan_out, fan_in],
            "has_bias": True,
            "activation": activation,
            **({"w0": W0} if activation == "sine" else {}),
        }
        for level, (name, (fan_in, fan_out), activation) in enumerate(
            zip(LAYER_NAMES, _layer_sizes(in_features), activations)
        )
    ]


def siren_parameters(generator: torch.Generator, in_features: int = 1, gain: float = 1.0,
                     hidden_gain: float = 1.0) -> list[torch.Tensor]:
    """One SIREN's initial ``[W0, b0, W1, b1, W2, b2]``, drawn in that order from ``generator``.

    Weights follow the SIREN scheme: U(-1/in, 1/in) for the first layer and
    U(-sqrt(6/in)/w0, sqrt(6/in)/w0) after it. Biases keep PyTorch's ``nn.Linear`` default
    U(-1/sqrt(in), 1/sqrt(in)), as the SIREN reference code does. ``gain`` scales every bound
    (another initialisation than the published one, for recipe-shift test zoos); ``hidden_gain``
    further scales the weights after the first layer.
    """
    params = []
    for level, (fan_in, fan_out) in enumerate(_layer_sizes(in_features)):
        bound = gain * (1.0 / fan_in if level == 0 else hidden_gain * math.sqrt(6.0 / fan_in) / W0)
        params.append(torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator))
        bias_bound = gain / math.sqrt(fan_in)
        params.append(torch.empty(fan_out).uniform_(-bias_bound, bias_bound, generator=generator))
    return params


def initial_parameters(init_seeds: Sequence[int], in_features: int = 1, gain: float = 1.0,
                       hidden_gains: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Stacked initial parameters, network ``i`` drawn from a generator seeded with ``init_seeds[i]``
    (with hidden gain ``hidden_gains[i]``, 1 when not given)."""
    hidden_gains = [1.0] * len(init_seeds) if hidden_gains is None else hidden_gains
    per_network = [siren_parameters(torch.Generator().manual_seed(int(s)), in_features, gain, float(h))
                   for s, h in zip(init_seeds, hidden_gains, strict=True)]
    return [torch.stack(parts) for parts in zip(*per_network)]


def hidden_gains(recipe: str, seed: int, ids: Sequence[int], options: Mapping[str, Any]) -> np.ndarray:
    """The hidden gain of each network ``ids`` of a zoo with ``seed`` and resolved ``options``: the
    option's one value, or, with ``hidden_gain_max``, log-uniform per network from (seed, id) alone."""
    low = options.get("hidden_gain", 1.0)
    if options.get("hidden_gain_max") is None:
        return np.full(len(ids), low)
    high = options["hidden_gain_max"]
    draws = [np.random.default_rng(derive_seed(seed, f"{recipe}/hidden-gain", int(i))).random() for i in ids]
    return np.exp(np.log(low) + (np.log(high) - np.log(low)) * np.asarray(draws, dtype=np.float64))


def gain_columns(gains: np.ndarray, options: Mapping[str, Any]) -> list[dict[str, float]]:
    """Per-network table columns for ``gains``: ``hidden_gain`` where networks have their own."""
    return [{"hidden_gain": float(g)} if options.get("hidden_gain_max") is not None else {} for g in gains]


def _as_points(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` as (P, in_features); a 1-D tensor is P points of one feature."""
    return inputs[:, None] if inputs.dim() == 1 else inputs


def _forward_parts(params: Sequence[torch.Tensor], inputs: torch.Tensor):
    """Pre-activations, activations and outputs of stacked SIRENs on ``inputs`` (P, in_features)."""
    weight0, bias0, weight1, bias1, weight2, bias2 = params
    # W0 multiplies the small weight matrices, not the (models, points, 32) activations: fewer passes.
    # The first layer has only one or two inputs: a multiply-add per input beats a matrix product.
    scaled0 = W0 * weight0
    a0 = torch.addcmul((W0 * bias0)[:, None, :], inputs[None, :, 0, None], scaled0[:, None, :, 0])
    for k in range(1, inputs.shape[1]):
        a0.addcmul_(inputs[None, :, k, None], scaled0[:, None, :, k])
    h0 = torch.sin(a0)
    a1 = torch.baddbmm((W0 * bias1)[:, None, :], h0, (W0 * weight1).transpose(1, 2))
    h1 = torch.sin(a1)
    y = torch.baddbmm(bias2[:, None, :], h1, weight2.transpose(1, 2)).squeeze(2)
    return a0, h0, a1, h1, y


def siren_forward(params: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """Outputs (models, P) of stacked SIRENs ``[W0, b0, W1, b1, W2, b2]`` on ``inputs`` (P, in_features) or (P,)."""
    return _forward_parts(params, _as_points(inputs))[-1]


def loss_and_grads(
    params: Sequence[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-model MSE and the gradient of their sum with respect to each stacked parameter.

    Closed form of backpropagation through the two sine layers (checked against autograd in the
    tests); ``inputs`` (P, in_features) or (P,), ``targets`` (models, P).
    """
    inputs = _as_points(inputs)
    _, _, weight1, _, weight2, _ = params
    a0, h0, a1, h1, y = _forward_parts(params, inputs)
    residual = y - targets
    mse = residual.square().mean(1)
    dy = residual * (2.0 / targets.shape[1])
    grad_w2 = torch.bmm(dy[:, None, :], h1)
    grad_b2 = dy.sum(1, keepdim=True)
    # dL/da1 = c * W2 (broadcast over points) with c = cos(a1) * dy; W2 is folded into the small
    # matrices below instead of being multiplied into the large activation tensor.
    c = torch.cos_(a1).mul_(dy[:, :, None])
    w2_column = W0 * weight2.transpose(1, 2)
    grad_w1 = torch.bmm(c.transpose(1, 2), h0).mul_(w2_column)
    grad_b1 = c.sum(1).mul_(w2_column[:, :, 0])
    d0 = torch.bmm(c, w2_column * weight1).mul_(torch.cos_(a0))
    # One product gives both first-layer gradients: sum over points of d0 * [x, 1].
    features = inputs.shape[1]
    x_and_one = torch.cat([inputs, torch.ones_like(inputs[:, :1])], 1).expand(len(d0), -1, -1)
    grad_0 = torch.bmm(d0.transpose(1, 2), x_and_one).mul_(W0)
    # Contiguous copies: fused Adam on the CPU ignores a gradient's strides (torch 2.13).
    return mse, [
        grad_0[:, :, :features].contiguous(), grad_0[:, :, features].contiguous(), grad_w1, grad_b1, grad_w2, grad_b2
    ]


@functools.cache
def _compiled_loss_and_grads() -> Callable:
    return torch.compile(loss_and_grads, dynamic=False)


def fit_sirens(
    params: list[torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    lr: float,
    compile: bool = False,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Fit stacked SIRENs in place with Adam on the summed per-model MSE; return the final MSEs."""
    inputs = _as_points(inputs)
    step_fn = _compiled_loss_and_grads() if compile else loss_and_grads
    optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    with torch.no_grad():
        for _ in range(steps):
            _, grads = step_fn(params, inputs, targets)
            for param, grad in zip(params, grads):
                param.grad = grad
            optimizer.step()
            if on_step is not None:
                on_step()
        return (siren_forward(params, inputs) - targets).square().mean(1)


def fit_groups(
    recipe: str,
    ids: np.ndarray,
    init_seeds: Sequence[int],
    inputs: torch.Tensor,
    targets: Callable[[int, int], torch.Tensor],
    options: Mapping[str, Any],
    progress: FitProgress,
    gains: Sequence[float],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit the SIRENs of one shard, ``group_size`` at a time; return stacked CPU parameters by
    state-dict key and the final per-network MSEs (float64).

    ``targets(start, stop)`` gives the (stop - start, P) targets of networks ``start:stop`` of the
    shard; ``inputs`` (P, in_features) are shared by all; ``gains`` are the networks' hidden gains
    (:func:`hidden_gains`). Non-finite results raise :class:`SneError`.
    """
    device = torch.device(options["device"])
    inputs = _as_points(inputs).to(device)
    parts: list[list[torch.Tensor]] = []
    errors: list[torch.Tensor] = []
    group = options["group_size"]
    for start in range(0, len(ids), group):
        stop = min(start + group, len(ids))
        params = [p.to(device) for p in initial_parameters(init_seeds[start:stop], inputs.shape[1],
                                                           options.get("init_gain", 1.0), gains[start:stop])]
        progress.group_started(stop - start, options["steps"])
        mse = fit_sirens(
            params, inputs, targets(start, stop).to(device), options["steps"], options["lr"], options["compile"],
            progress.step_done,
        )
        progress.group_done(stop - start)
        parts.append([p.cpu() for p in params])
        errors.append(mse.cpu())
    stacked = [torch.cat(ps) for ps in zip(*parts)]
    fit_mse = torch.cat(errors).double()
    finite = torch.stack([p.flatten(1).isfinite().all(1) for p in stacked]).all(0) & fit_mse.isfinite()
    if not bool(finite.all()):
        bad = [int(i) for i in np.asarray(ids)[~finite.numpy()]]
        raise SneError(
            f"{recipe}: fitting diverged (non-finite weights or error) for networks {bad[:10]}; "
            f"try a smaller lr (now {options['lr']})"
        )
    return {name: param.contiguous() for name, param in zip(PARAMETER_NAMES, stacked)}, fit_mse


def positive_int(recipe: str, name: str, value: Any) -> int:
    """``value`` as an int; :class:`SneError` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SneError(f"{recipe} option '{name}' must be a positive integer, got {value!r}")
    return int(value)


def finite_float(recipe: str, name: str, value: Any, positive: bool = False, non_negative: bool = False) -> float:
    """``value`` as a float; :class:`SneError` unless it is a finite (and, if asked, positive or
    non-negative) number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise SneError(f"{recipe} option '{name}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SneError(f"{recipe} option '{name}' must be positive, got {value!r}")
    if non_negative and value < 0:
        raise SneError(f"{recipe} option '{name}' must not be negative, got {value!r}")
    return float(value)


def _device(recipe: str, value: Any) -> str:
    message = f"{recipe} option 'device' must be 'cpu' or 'cuda[:index]', got {value!r}"
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise SneError(message) from None
    if device.type not in ("cpu", "cuda"):
        raise SneError(message)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SneError(f"{recipe} option 'device' is 'cuda' but PyTorch sees no CUDA device here")
    return str(value)


def resolve_fit_options(recipe: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`FIT_OPTIONS` entries of ``options`` (defaults already merged in), checked and resolved."""
    if options["init"] not in INIT_MODES:
        raise SneError(f"{recipe} option 'init' must be one of {', '.join(INIT_MODES)}, got {options['init']!r}")
    device = _device(recipe, options["device"])
    if options["group_size"] is None:
        group_size = 500 if torch.device(device).type == "cuda" else 50
    else:
        group_size = positive_int(recipe, "group_size", options["group_size"])
    if not isinstance(options["compile"], bool):
        raise SneError(f"{recipe} option 'compile' must be true or false, got {options['compile']!r}")
    gain = finite_float(recipe, "init_gain", options["init_gain"], positive=True)
    hidden_gain = finite_float(recipe, "hidden_gain", options["hidden_gain"], positive=True)
    gain_max = options["hidden_gain_max"]
    if gain_max is not None:
        gain_max = finite_float(recipe, "hidden_gain_max", gain_max, positive=True)
        if not gain_max > hidden_gain:
            raise SneError(f"{recipe} option 'hidden_gain_max' ({gain_max:g}) must exceed 'hidden_gain' ({hidden_gain:g})")
        if options["init"] == "shared":
            raise SneError(f"{recipe}: networks of a shared initialisation cannot each draw their own 'hidden_gain'")
    return {
        "init": options["init"],
        # Gains of 1 are left out, so such a zoo has the options (and resumes) as before the options existed.
        **({"init_gain": gain} if gain != 1.0 else {}),
        **({"hidden_gain": hidden_gain} if hidden_gain != 1.0 else {}),
        **({"hidden_gain_max": gain_max} if gain_max is not None else {}),
        "steps": positive_int(recipe, "steps", options["steps"]),
        "lr": finite_float(recipe, "lr", options["lr"], positive=True),
        "group_size": group_size,
        "device": device,
        "compile": options["compile"],
    }
