#!/usr/bin/env python
"""What the networks of sine-INR zoos compute, against what their weights show (issue 15's recipe shift):
for each zoo's test split, Kendall's tau between the frequency label and (1) the peak of the
spectrum of each network's output over its input domain, a function-space reference that runs the
network (weight-space encoders never do), and (2) one training-free weight statistic, each
first-layer neuron's frequency weighted by its path to the output linearised at the biases.

    python scripts/inr_function_reference.py zoos/sine-independent zoos/sine-foreign

Writes results/inr_function_reference.json. Where (1) is high, the networks do encode their label
and an encoder that ranks them poorly has not learned to read it. The hidden pre-activation scale
(w0 times the root-mean-square hidden weight times the square root of the fan-in) says in which
regime the weights are: far above 1, the network is far from linear in its hidden weights.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from sne.bench.results import targets_digest, zoo_label
from sne.errors import SneError
from sne.io_utils import write_json_atomic
from sne.weights import NetworkRecord
from sne.zoo import Zoo
from sne.zoo.siren import W0

#: Grid points over the input domain; the labels (at most a few tens of cycles) sit far below its Nyquist.
POINTS = 4096


def sine_chain(record: NetworkRecord, where: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each layer of a one-input chain of linear layers with sine hidden activations."""
    layers = record.layers
    problem = None
    if not record.is_chain or any(layer.kind != "linear" or layer.bias is None for layer in layers):
        problem = "not a chain of linear layers with biases"
    elif layers[0].in_features != 1 or layers[-1].out_features != 1:
        problem = f"{layers[0].in_features} inputs and {layers[-1].out_features} outputs, not 1 and 1"
    elif any(layer.activation != "sine" for layer in layers[:-1]) or layers[-1].activation not in ("identity", None):
        problem = "hidden activations " + ", ".join(str(layer.activation) for layer in layers[:-1]) + ", not sine"
    if problem:
        raise SneError(f"{where} is not a sine INR: {problem}")
    return [(layer.weight.double(), layer.bias.double()) for layer in layers]


def output(chain: list[tuple[torch.Tensor, torch.Tensor]], u: torch.Tensor, w0: float) -> torch.Tensor:
    h = u[:, None]
    for weight, bias in chain[:-1]:
        h = torch.sin(w0 * (h @ weight.T + bias))
    weight, bias = chain[-1]
    return (h @ weight.T + bias)[:, 0]


def spectral_peak(chain, input_range: float, w0: float) -> float:
    """Cycles of the output's strongest non-constant frequency over the input domain [-r, r)."""
    u = (torch.arange(POINTS, dtype=torch.float64) * (2 / POINTS) - 1) * input_range
    values = output(chain, u, w0).numpy()
    spectrum = np.abs(np.fft.rfft(values - values.mean()))
    return float(np.argmax(spectrum[1:]) + 1)


def linearised_frequency(chain, w0: float) -> float:
    """First-layer neurons' frequencies weighted by |d output / d neuron| with every later pre-activation at its bias."""
    path = chain[-1][0][0]
    for weight, bias in reversed(chain[1:-1]):
        path = (path * w0 * torch.cos(w0 * bias)) @ weight
    first = chain[0][0][:, 0].abs()
    return float((path.abs() * first).sum() / path.abs().sum().clamp_min(1e-30))


def hidden_scale(chain, w0: float) -> float:
    """w0 x RMS hidden weight x sqrt(fan-in), over the hidden-to-hidden layers."""
    weights = torch.cat([weight.flatten() for weight, _ in chain[1:-1]])
    return float(w0 * weights.square().mean().sqrt() * math.sqrt(chain[1][0].shape[1]))


def reference(zoo: Zoo, target: str, w0: float) -> dict:
    if target not in zoo.targets:
        raise SneError(f"the zoo at {zoo.path} has no target '{target}' (it has: {', '.join(sorted(zoo.targets))})")
    ids = zoo.split_ids("test")
    if len(ids) < 2:
        raise SneError(f"the zoo at {zoo.path} has {len(ids)} test networks; a rank correlation needs 2")
    # The sine-inr recipe's option; zoos imported from elsewhere feed [-1, 1), as the default recipe does.
    input_range = float((zoo.manifest.get("options") or {}).get("input_range", 1.0))
    labels = zoo.target_values(target, ids)
    peaks, linearised, scales = [], [], []
    for network_id, record in zip(ids, zoo.records(ids)):
        chain = sine_chain(record, f"{zoo.path}#{network_id}")
        peaks.append(spectral_peak(chain, input_range, w0))
        linearised.append(linearised_frequency(chain, w0))
        scales.append(hidden_scale(chain, w0) if len(chain) > 2 else float("nan"))
    return {
        "label": zoo_label(zoo), "path": str(zoo.path), "command": zoo.command, "targets_digest": targets_digest(zoo),
        "test_networks": len(ids), "input_range": input_range,
        "spectral_peak_tau": float(kendalltau(peaks, labels)[0]),
        "spectral_peak_median_abs_error": float(np.median(np.abs(np.asarray(peaks) - labels))),
        "linearised_weights_tau": float(kendalltau(linearised, labels)[0]),
        "hidden_scale_median": float(np.nanmedian(scales)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoos", nargs="+", type=Path)
    parser.add_argument("--target", default="frequency")
    parser.add_argument("--w0", type=float, default=W0, help="the sine activations' frequency factor (default: SIREN's)")
    parser.add_argument("--out", type=Path, default=Path("results/inr_function_reference.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        rows = [reference(Zoo.open(path), args.target, args.w0) for path in args.zoos]
    except SneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, {
        "benchmark": "inr_function_reference",
        "command": "python " + shlex.join(["scripts/inr_function_reference.py", *sys.argv[1:]]),
        "target": args.target, "w0": args.w0, "points": POINTS, "method": " ".join(__doc__.split("\n\n")[0].split()),
        "zoos": rows,
    })
    for row in rows:
        print(f"{row['label']}: spectral peak tau {row['spectral_peak_tau']:.3f}, "
              f"linearised weights tau {row['linearised_weights_tau']:.3f}, hidden scale {row['hidden_scale_median']:.2f}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
