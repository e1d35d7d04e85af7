"""scripts/inr_function_reference.py: what sine INRs compute against their label, and the weight statistic beside it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sne.errors import SneError
from sne.weights import record_from_module
from sne.zoo.format import write_records_zoo
from sne.zoo.siren import Siren
from project_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "inr_function_reference.py"
TARGETS = {"frequency": {"kind": "regression"}}


def _script():
    return load_script("scripts/inr_function_reference.py")


def _siren_of(cycles: float, generator: torch.Generator, input_range: float) -> Siren:
    """A SIREN computing nearly sin(pi * cycles * u / input_range): every first-layer neuron at that
    frequency, later layers small enough to stay linear, and noise elsewhere that changes neither."""
    siren = Siren().double()
    first, hidden, last = siren.layers
    with torch.no_grad():
        first.weight.fill_(math.pi * cycles / input_range / 30)
        first.bias.zero_()
        hidden.weight.copy_(1e-4 * torch.rand(hidden.weight.shape, generator=generator, dtype=torch.float64))
        hidden.bias.zero_()
        last.weight.copy_(torch.rand(last.weight.shape, generator=generator, dtype=torch.float64) + 0.5)
        last.bias.fill_(0.3)
    return siren


def _zoo(path: Path, cycles: list[float], input_range: float = 1.0, module=None):
    generator = torch.Generator().manual_seed(0)
    modules = [module or _siren_of(c, generator, input_range) for c in cycles]
    records = [record_from_module(m, torch.zeros(2, 1, dtype=torch.float64)) for m in modules]
    return write_records_zoo(path, recipe="sine-inr", options={"input_range": input_range}, records=records,
                             rows=[{"frequency": c} for c in cycles], targets=TARGETS, dataset={"name": "none"},
                             splits=["test"] * len(cycles))


@pytest.mark.parametrize("input_range", [1.0, 2.0])
def test_a_network_that_computes_its_label_is_ranked_exactly_in_function_and_weight_space(tmp_path, input_range):
    cycles = [5.0, 1.0, 7.0, 3.0, 2.0, 6.0]
    row = _script().reference(_zoo(tmp_path / "zoo", cycles, input_range), "frequency", 30.0)
    assert row["test_networks"] == 6 and row["input_range"] == input_range
    assert row["spectral_peak_tau"] == pytest.approx(1.0) and row["spectral_peak_median_abs_error"] == 0.0
    assert row["linearised_weights_tau"] == pytest.approx(1.0)
    assert row["hidden_scale_median"] < 0.1  # the hidden layer stays in its linear regime here


def test_the_weight_statistic_follows_the_path_to_the_output_not_every_first_layer_neuron(tmp_path):
    script = _script()
    siren = _siren_of(2.0, torch.Generator().manual_seed(1), 1.0).layers
    chain = [(layer.weight.detach().clone(), layer.bias.detach().clone()) for layer in siren]
    chain[0][0][:16] = 10.0 * math.pi / 30  # half the neurons at another frequency...
    chain[1][0][:, :16] = 0.0  # ...that nothing downstream reads
    assert script.linearised_frequency(chain, 30.0) == pytest.approx(2.0 * math.pi / 30)
    assert script.spectral_peak(chain, 1.0, 30.0) == 2.0


def test_a_zoo_of_other_networks_is_refused_in_one_line(tmp_path):
    relu = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    zoo = _zoo(tmp_path / "relu", [1.0, 2.0], module=relu)
    with pytest.raises(SneError, match=r"relu#0 is not a sine INR: hidden activations relu, not sine$"):
        _script().reference(zoo, "frequency", 30.0)
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(zoo.path), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a sine INR" in done.stderr
    assert not out.exists()


def test_the_script_writes_one_row_per_zoo_with_its_command(tmp_path):
    zoo = _zoo(tmp_path / "zoo", [1.0, 4.0, 2.0])
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(zoo.path), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert [row["path"] for row in data["zoos"]] == [str(zoo.path)]
    assert data["command"].startswith("python scripts/inr_function_reference.py ") and data["w0"] == 30.0
