"""The ``sine-inr`` recipe: SIRENs fitted to f(x) = sin(a x), the INR frequency benchmark.

Each network is a SIREN 1 -> 32 -> 32 -> 1 (Sitzmann et al. 2020) with hidden activations
sin(w0 (W h + b)), w0 = 30, and a linear output. It is fitted to sin(a x) on a regular grid of
[-pi, pi), fed as x / pi in [-1, 1); a ~ U(freq_min, freq_max) is the target column ``frequency``.

A group of networks is fitted at once: parameters are stacked along a leading model dimension, the
forward pass is a batched matrix product, and the gradient of the sum of per-model mean squared
errors is computed in closed form (two sine layers are simple enough, and skipping autograd halves
the time on a CPU). Adam is elementwise, so one Adam over the stacked tensors is exactly one Adam
per model.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sne.errors import SneError
from sne.zoo.recipes import FitProgress, Recipe, Shard, check_options, derive_seed, register_recipe

#: Hidden width and the sine frequency factor of the hidden layers.
HIDDEN = 32
W0 = 30.0
LAYER_NAMES = ("layers.0", "layers.1", "layers.2")
#: State-dict keys in the order of the stacked parameter lists used throughout this module.
PARAMETER_NAMES = tuple(f"{layer}.{part}" for layer in LAYER_NAMES for part in ("weight", "bias"))
INIT_MODES = ("independent", "shared")

# group_size None resolves per device: on one CPU thread throughput is flat from 25 to 100 models
# per group; a GPU needs wide batches (measured on an H100: 106 INRs/s at 100, 222 at 500).
DEFAULT_OPTIONS: dict[str, Any] = {
    "init": "independent",
    "steps": 500,
    "lr": 1e-3,
    "points": 1000,
    "group_size": None,
    "freq_min": 0.5,
    "freq_max": 10.0,
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
    """One network of this recipe as an ``nn.Module``; its state_dict keys match the zoo's layers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(1, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 1)])
        self.sine = Sine()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of shape (points, 1) in [-1, 1] -> (points, 1)."""
        for layer in self.layers[:-1]:
            x = self.sine(layer(x))
        return self.layers[-1](x)


def siren_parameters(generator: torch.Generator) -> list[torch.Tensor]:
    """One SIREN's initial ``[W0, b0, W1, b1, W2, b2]``, drawn in that order from ``generator``.

    Weights follow the SIREN scheme: U(-1/in, 1/in) for the first layer and
    U(-sqrt(6/in)/w0, sqrt(6/in)/w0) after it. Biases keep PyTorch's ``nn.Linear`` default
    U(-1/sqrt(in), 1/sqrt(in)), as the SIREN reference code does.
    """
    params = []
    for level, (fan_in, fan_out) in enumerate([(1, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 1)]):
        bound = 1.0 / fan_in if level == 0 else math.sqrt(6.0 / fan_in) / W0
        params.append(torch.empty(fan_out, fan_in).uniform_(-bound, bound, generator=generator))
        bias_bound = 1.0 / math.sqrt(fan_in)
        params.append(torch.empty(fan_out).uniform_(-bias_bound, bias_bound, generator=generator))
    return params


def initial_parameters(init_seeds: Sequence[int]) -> list[torch.Tensor]:
    """Stacked initial parameters, network ``i`` drawn from a generator seeded with ``init_seeds[i]``."""
    per_network = [siren_parameters(torch.Generator().manual_seed(int(s))) for s in init_seeds]
    return [torch.stack(parts) for parts in zip(*per_network)]


def grid(points: int) -> torch.Tensor:
    """``points`` equally spaced x in [-pi, pi), float64."""
    return torch.arange(points, dtype=torch.float64) * (2 * math.pi / points) - math.pi


def sine_targets(frequencies: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """sin(a x) for each frequency a, shape (len(frequencies), len(x)), float32."""
    a = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    return torch.sin(a[:, None] * x.to(torch.float64)[None, :]).float()


def _forward_parts(params: Sequence[torch.Tensor], inputs: torch.Tensor):
    """Pre-activations, activations and outputs of stacked SIRENs on ``inputs`` of shape (P,)."""
    weight0, bias0, weight1, bias1, weight2, bias2 = params
    # W0 multiplies the small weight matrices, not the (models, points, 32) activations: fewer passes.
    a0 = torch.addcmul((W0 * bias0)[:, None, :], inputs[None, :, None], (W0 * weight0)[:, None, :, 0])
    h0 = torch.sin(a0)
    a1 = torch.baddbmm((W0 * bias1)[:, None, :], h0, (W0 * weight1).transpose(1, 2))
    h1 = torch.sin(a1)
    y = torch.baddbmm(bias2[:, None, :], h1, weight2.transpose(1, 2)).squeeze(2)
    return a0, h0, a1, h1, y


def siren_forward(params: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """Outputs (models, P) of stacked SIRENs ``[W0, b0, W1, b1, W2, b2]`` on ``inputs`` of shape (P,)."""
    return _forward_parts(params, inputs)[-1]


def loss_and_grads(
    params: Sequence[torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-model MSE and the gradient of their sum with respect to each stacked parameter.

    Closed form of backpropagation through the two sine layers (checked against autograd in the
    tests); ``inputs`` (P,), ``targets`` (models, P).
    """
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
    x_and_one = torch.stack([inputs, torch.ones_like(inputs)], 1).expand(len(d0), -1, -1)
    grad_0 = torch.bmm(d0.transpose(1, 2), x_and_one).mul_(W0)
    # Contiguous copies: fused Adam on the CPU ignores a gradient's strides (torch 2.13).
    return mse, [grad_0[:, :, :1].contiguous(), grad_0[:, :, 1].contiguous(), grad_w1, grad_b1, grad_w2, grad_b2]


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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SneError(f"sine-inr option '{name}' must be a positive integer, got {value!r}")
    return int(value)


def _finite_float(name: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise SneError(f"sine-inr option '{name}' must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SneError(f"sine-inr option '{name}' must be positive, got {value!r}")
    return float(value)


def _device(value: Any) -> str:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise SneError(f"sine-inr option 'device' must be 'cpu' or 'cuda[:index]', got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise SneError(f"sine-inr option 'device' must be 'cpu' or 'cuda[:index]', got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SneError("sine-inr option 'device' is 'cuda' but PyTorch sees no CUDA device here")
    return str(value)


@register_recipe
class SineInr(Recipe):
    name = "sine-inr"
    summary = "SIRENs 1-32-32-1 fitted to sin(a x), a ~ U(0.5, 10); target: frequency"

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, DEFAULT_OPTIONS)
        o = {**DEFAULT_OPTIONS, **options}
        if o["init"] not in INIT_MODES:
            raise SneError(f"sine-inr option 'init' must be one of {', '.join(INIT_MODES)}, got {o['init']!r}")
        device = _device(o["device"])
        if o["group_size"] is None:
            group_size = 500 if torch.device(device).type == "cuda" else 50
        else:
            group_size = _positive_int("group_size", o["group_size"])
        resolved = {
            "init": o["init"],
            "steps": _positive_int("steps", o["steps"]),
            "lr": _finite_float("lr", o["lr"], positive=True),
            "points": _positive_int("points", o["points"]),
            "group_size": group_size,
            "freq_min": _finite_float("freq_min", o["freq_min"]),
            "freq_max": _finite_float("freq_max", o["freq_max"]),
            "device": device,
            "compile": o["compile"],
        }
        if not resolved["freq_min"] < resolved["freq_max"]:
            raise SneError(
                f"sine-inr needs freq_min < freq_max, got {resolved['freq_min']} and {resolved['freq_max']}"
            )
        if not isinstance(resolved["compile"], bool):
            raise SneError(f"sine-inr option 'compile' must be true or false, got {resolved['compile']!r}")
        return resolved

    def architecture(self, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        shapes = [[HIDDEN, 1], [HIDDEN, HIDDEN], [1, HIDDEN]]
        activations = ["sine", "sine", "identity"]
        return [
            {
                "name": name,
                "kind": "linear",
                "level": level,
                "weight_shape": shape,
                "has_bias": True,
                "activation": activation,
                **({"w0": W0} if activation == "sine" else {}),
            }
            for level, (name, shape, activation) in enumerate(zip(LAYER_NAMES, shapes, activations))
        ]

    def targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"frequency": {"kind": "regression", "description": "a in the fitted f(x) = sin(a x)"}}

    def dataset(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "function": "f(x) = sin(a x)",
            "frequency": {
                "name": "a", "distribution": "uniform", "low": options["freq_min"], "high": options["freq_max"]
            },
            "grid": {"start": -math.pi, "stop": math.pi, "points": options["points"], "endpoint": False},
            "network_input": "x / pi, in [-1, 1)",
            "fit": {"optimizer": "adam", "lr": options["lr"], "steps": options["steps"], "loss": "mse, full grid"},
        }

    def default_shard_size(self, options: Mapping[str, Any]) -> int:
        return 500

    def frequency(self, seed: int, network_id: int, options: Mapping[str, Any]) -> float:
        """The frequency a of network ``network_id``, drawn from (seed, id) alone."""
        u = np.random.default_rng(derive_seed(seed, "sine-inr/frequency", network_id)).random()
        return options["freq_min"] + (options["freq_max"] - options["freq_min"]) * float(u)

    def init_seed(self, seed: int, network_id: int, options: Mapping[str, Any]) -> int:
        """The seed of network ``network_id``'s initial parameters; one seed for all under shared init."""
        if options["init"] == "shared":
            return derive_seed(seed, "sine-inr/init")
        return derive_seed(seed, "sine-inr/init", network_id)

    def generate_shard(
        self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress
    ) -> Shard:
        device = torch.device(options["device"])
        x = grid(options["points"])
        inputs = (x / math.pi).float().to(device)
        frequencies = [self.frequency(seed, int(i), options) for i in ids]
        init_seeds = [self.init_seed(seed, int(i), options) for i in ids]
        parts: list[list[torch.Tensor]] = []
        errors: list[torch.Tensor] = []
        group = options["group_size"]
        for start in range(0, len(ids), group):
            stop = min(start + group, len(ids))
            params = [p.to(device) for p in initial_parameters(init_seeds[start:stop])]
            targets = sine_targets(frequencies[start:stop], x).to(device)
            progress.group_started(stop - start, options["steps"])
            mse = fit_sirens(
                params, inputs, targets, options["steps"], options["lr"], options["compile"], progress.step_done
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
                f"sine-inr: fitting diverged (non-finite weights or error) for networks {bad[:10]}; "
                f"try a smaller lr (now {options['lr']})"
            )
        tensors = {name: param.contiguous() for name, param in zip(PARAMETER_NAMES, stacked)}
        rows = [
            {"id": int(i), "frequency": a, "init_seed": s, "fit_mse": float(e)}
            for i, a, s, e in zip(ids, frequencies, init_seeds, fit_mse.tolist())
        ]
        return Shard(tensors, rows)
