"""The ``sine-inr`` recipe: SIRENs fitted to f(x) = sin(a x), the INR frequency benchmark.

Each network is a SIREN 1 -> 32 -> 32 -> 1 (:mod:`sne.zoo.siren`, which also fits them). It is
fitted to sin(a x) on a regular grid of [-pi, pi), fed as x * r / pi in [-r, r) with r the option
``input_range`` (default 1: x / pi in [-1, 1)); a ~ U(freq_min, freq_max) is the target column
``frequency``. Another r is another fitting recipe for the same functions (same initial weights,
other fitted ones): test zoos for encoders trained on INRs made the default way. With ``phase_max``
(default 0) each network fits sin(a x + phi) instead, phi ~ U(0, phase_max) drawn from (seed, id)
alone and kept in column ``phase``: a sine fitted on another domain, [0, 2 pi) say, is one of these.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sne.errors import SneError
from sne.zoo.recipes import FitProgress, Recipe, Shard, check_options, derive_seed, register_recipe
from sne.zoo.siren import (
    FIT_OPTIONS,
    finite_float,
    fit_groups,
    gain_columns,
    hidden_gains,
    positive_int,
    resolve_fit_options,
    siren_architecture,
)
# The sine-INR fitting benchmark imports the fitter's names from here.
from sne.zoo.siren import PARAMETER_NAMES, Siren, fit_sirens, initial_parameters  # noqa: F401

DEFAULT_OPTIONS: dict[str, Any] = {
    **FIT_OPTIONS,
    "points": 1000,
    "freq_min": 0.5,
    "freq_max": 10.0,
    "input_range": 1.0,
    "phase_max": 0.0,
}


def grid(points: int) -> torch.Tensor:
    """``points`` equally spaced x in [-pi, pi), float64."""
    return torch.arange(points, dtype=torch.float64) * (2 * math.pi / points) - math.pi


def sine_targets(frequencies: Sequence[float], x: torch.Tensor, phases: Sequence[float] | None = None) -> torch.Tensor:
    """sin(a x + phi) for each frequency a (and phase phi, 0 if not given), shape (len(frequencies), len(x)), float32."""
    a = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    phi = torch.zeros_like(a) if phases is None else torch.as_tensor(np.asarray(phases, dtype=np.float64))
    return torch.sin(a[:, None] * x.to(torch.float64)[None, :] + phi[:, None]).float()


def _network_input(input_range: float) -> str:
    """The dataset description's network input (the default's words are those zoos had before the option)."""
    if input_range == 1.0:
        return "x / pi, in [-1, 1)"
    return f"x * {input_range:g} / pi, in [-{input_range:g}, {input_range:g}) (option input_range)"


@register_recipe
class SineInr(Recipe):
    name = "sine-inr"
    summary = "SIRENs 1-32-32-1 fitted to sin(a x), a ~ U(0.5, 10); target: frequency"

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        check_options(self.name, options, DEFAULT_OPTIONS)
        o = {**DEFAULT_OPTIONS, **options}
        resolved = {
            **resolve_fit_options(self.name, o),
            "points": positive_int(self.name, "points", o["points"]),
            "freq_min": finite_float(self.name, "freq_min", o["freq_min"]),
            "freq_max": finite_float(self.name, "freq_max", o["freq_max"]),
        }
        if not resolved["freq_min"] < resolved["freq_max"]:
            raise SneError(
                f"sine-inr needs freq_min < freq_max, got {resolved['freq_min']} and {resolved['freq_max']}"
            )
        input_range = finite_float(self.name, "input_range", o["input_range"], positive=True)
        phase_max = finite_float(self.name, "phase_max", o["phase_max"], non_negative=True)
        # Options at their defaults are left out, so such a zoo has the options (and resumes) as before they existed.
        return {**resolved, **({"input_range": input_range} if input_range != 1.0 else {}),
                **({"phase_max": phase_max} if phase_max else {})}

    def architecture(self, options: Mapping[str, Any]) -> list[dict[str, Any]]:
        return siren_architecture(1)

    def targets(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"frequency": {"kind": "regression", "description": "a in the fitted f(x) = sin(a x)"}}

    def dataset(self, options: Mapping[str, Any]) -> dict[str, Any]:
        phase = {"phase": {"name": "phi", "distribution": "uniform", "low": 0.0, "high": options["phase_max"]}} \
            if options.get("phase_max") else {}
        return {
            "function": "f(x) = sin(a x + phi)" if phase else "f(x) = sin(a x)",
            **phase,
            "frequency": {
                "name": "a", "distribution": "uniform", "low": options["freq_min"], "high": options["freq_max"]
            },
            "grid": {"start": -math.pi, "stop": math.pi, "points": options["points"], "endpoint": False},
            "network_input": _network_input(options.get("input_range", 1.0)),
            "fit": {"optimizer": "adam", "lr": options["lr"], "steps": options["steps"], "loss": "mse, full grid"},
        }

    def default_shard_size(self, options: Mapping[str, Any]) -> int:
        return 500

    def frequency(self, seed: int, network_id: int, options: Mapping[str, Any]) -> float:
        """The frequency a of network ``network_id``, drawn from (seed, id) alone."""
        u = np.random.default_rng(derive_seed(seed, "sine-inr/frequency", network_id)).random()
        return options["freq_min"] + (options["freq_max"] - options["freq_min"]) * float(u)

    def phase(self, seed: int, network_id: int, options: Mapping[str, Any]) -> float:
        """The phase phi of network ``network_id`` (0 without ``phase_max``), drawn from (seed, id) alone."""
        if not options.get("phase_max"):
            return 0.0
        u = np.random.default_rng(derive_seed(seed, "sine-inr/phase", network_id)).random()
        return options["phase_max"] * float(u)

    def init_seed(self, seed: int, network_id: int, options: Mapping[str, Any]) -> int:
        """The seed of network ``network_id``'s initial parameters; one seed for all under shared init."""
        if options["init"] == "shared":
            return derive_seed(seed, "sine-inr/init")
        return derive_seed(seed, "sine-inr/init", network_id)

    def generate_shard(
        self, ids: np.ndarray, seed: int, options: Mapping[str, Any], progress: FitProgress
    ) -> Shard:
        x = grid(options["points"])
        frequencies = [self.frequency(seed, int(i), options) for i in ids]
        phases = [self.phase(seed, int(i), options) for i in ids]
        init_seeds = [self.init_seed(seed, int(i), options) for i in ids]
        inputs = x * options.get("input_range", 1.0) / math.pi  # x * 1.0 is x: default zoos are unchanged
        gains = hidden_gains(self.name, seed, ids, options)
        tensors, fit_mse = fit_groups(
            self.name, ids, init_seeds, inputs.float(),
            lambda start, stop: sine_targets(frequencies[start:stop], x, phases[start:stop]), options, progress, gains,
        )
        rows = [
            {"id": int(i), "frequency": a, "init_seed": s, "fit_mse": float(e), **g,
             **({"phase": p} if options.get("phase_max") else {})}
            for i, a, s, e, g, p in zip(ids, frequencies, init_seeds, fit_mse.tolist(), gain_columns(gains, options),
                                        phases)
        ]
        return Shard(tensors, rows)
