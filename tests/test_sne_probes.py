"""SNE's probe features: a network's values at fixed inputs, beside its weights (option probe_points)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from sne.encoders.chunking import pad_chunk
from sne.encoders.sne import SNEEncoder
from sne.errors import SneError
from sne.weights import permute_hidden, random_permutations, record_from_module, shuffle_incoming
from sne.weights.probe import probe_inputs, probe_values
from sne.weights.record import NetworkRecord, make_layer

SMALL = {"hidden": 16, "heads": 2, "num_sab": 1, "out_dim": 8}


class Sine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(30.0 * x)


def siren_module(generator: torch.Generator, inputs: int = 1, width: int = 8) -> nn.Module:
    """A SIREN-shaped module at PyTorch's default initialisation, in float64."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    return nn.Sequential(nn.Linear(inputs, width), Sine(), nn.Linear(width, width), Sine(),
                         nn.Linear(width, 1)).double()


def chain(widths: list[int], generator: torch.Generator, activation: str = "sine") -> NetworkRecord:
    layers = tuple(
        make_layer(f"fc{i}", i, torch.randn(n_out, n_in, generator=generator, dtype=torch.float64) / math.sqrt(n_in),
                   torch.randn(n_out, generator=generator, dtype=torch.float64),
                   activation=activation if i < len(widths) - 2 else "identity")
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
    )
    return NetworkRecord(layers, source=f"chain{widths}")


def encode(encoder: SNEEncoder, records: list[NetworkRecord]) -> torch.Tensor:
    return encoder.eval()(encoder.prepare(records))


def test_probe_inputs_are_fixed_and_spread_over_the_cube():
    points = probe_inputs(3, 64)
    assert points.shape == (64, 3) and points.dtype == torch.float64
    assert torch.equal(points, probe_inputs(3, 64))
    assert points.min() >= -1 and points.max() <= 1
    # Stratified: every eighth of [-1, 1] on each axis holds 8 of the 64 points.
    counts = torch.stack([torch.histc(points[:, axis], bins=8, min=-1, max=1) for axis in range(3)])
    assert (counts == 8).all()


def test_probe_values_are_what_the_traced_module_computes():
    g = torch.Generator().manual_seed(0)
    module = siren_module(g, inputs=2)
    record = record_from_module(module, torch.zeros(1, 2, dtype=torch.float64))
    values = probe_values(record, 16)
    points = probe_inputs(2, 16)
    assert [v.shape for v in values] == [(2, 16), (8, 16), (8, 16), (1, 16)]
    torch.testing.assert_close(values[0], points.T)
    with torch.no_grad():
        torch.testing.assert_close(values[1], torch.sin(30 * module[0](points)).T)
        torch.testing.assert_close(values[-1], module(points).T)


def test_a_layers_w0_is_its_sines_factor():
    g = torch.Generator().manual_seed(1)
    record = chain([1, 4, 1], g)
    first = record.layers[0]
    slow = record.with_layers([replace(first, attrs={"w0": 2.0}), record.layers[1]])
    pre = probe_inputs(1, 8) @ first.weight.T + first.bias
    torch.testing.assert_close(probe_values(slow, 8)[1], torch.sin(2.0 * pre).T)
    torch.testing.assert_close(probe_values(record, 8)[1], torch.sin(30.0 * pre).T)


def test_each_element_carries_its_neurons_values_and_its_sources():
    g = torch.Generator().manual_seed(2)
    record = chain([2, 3, 1], g)
    count = 4
    batch = pad_chunk([record], chunk_size=32, dtype=torch.float64, probe_points=count)
    values = [torch.asinh(v) for v in probe_values(record, count)]
    features = torch.cat(batch.probe_features)
    taps = torch.cat(batch.tap_values).squeeze(1)
    # Element order: layer 0's weight (3 rows of 2), its bias, layer 1's weight (1 row of 3), its bias.
    expected = []
    for index, layer in enumerate(record.layers):
        own, read = values[index + 1], values[index]
        expected += [torch.cat([own[row], read[column]]) for row in range(layer.out_features)
                     for column in range(layer.in_features)]
        expected += [torch.cat([own[row], torch.zeros(count, dtype=torch.float64)]) for row in range(layer.out_features)]
    weights = torch.cat([torch.cat([layer.weight.reshape(-1), layer.bias]) for layer in record.layers])
    order = torch.argsort(taps)  # kernel groups may reorder parts: match elements by their (distinct) values
    torch.testing.assert_close(taps[order], weights[torch.argsort(weights)])
    torch.testing.assert_close(features[order], torch.stack(expected)[torch.argsort(weights)])


def test_sne_with_probes_stays_exactly_invariant_to_hidden_permutations():
    g = torch.Generator().manual_seed(3)
    records = [record_from_module(siren_module(g, width=32), torch.zeros(1, 1, dtype=torch.float64)) for _ in range(3)]
    permuted = [permute_hidden(r, random_permutations(r, g)) for r in records]
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, probe_points=8).double()
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, records), atol=1e-9, rtol=0)


def test_probes_see_a_rewiring_that_the_weights_alone_do_not():
    """Shuffling each neuron's incoming weights among its inputs changes the function; SNE without
    neuron features codes it as before, and with probe values alone it does not."""
    g = torch.Generator().manual_seed(4)
    records = [chain([1, 16, 16, 1], g) for _ in range(3)]
    shuffled = [shuffle_incoming(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)]
    blind = dict(SMALL, use_source_features=False, use_own_neuron_features=False)
    torch.manual_seed(0)
    plain = SNEEncoder(**blind).double()
    torch.testing.assert_close(encode(plain, shuffled), encode(plain, records), atol=1e-9, rtol=0)
    probing = SNEEncoder(**blind, probe_points=8).double()
    assert not torch.allclose(encode(probing, shuffled), encode(probing, records), atol=1e-6, rtol=0)


def test_gradients_reach_the_probe_embedding():
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, probe_points=4)
    encoder(encoder.prepare([chain([2, 8, 8, 1], g) for _ in range(2)])).square().sum().backward()
    assert encoder.element_embedding.probe.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("what", ["conv", "unknown activation", "skip"])
def test_records_that_cannot_run_are_refused_with_one_line(what):
    g = torch.Generator().manual_seed(6)
    record = chain([2, 4, 1], g)
    if what == "conv":
        record = NetworkRecord((make_layer("conv", 0, torch.randn(2, 1, 3, 3), activation="relu"),), source="c.pt")
        phrase = "all-linear network, but layer 'conv' is conv2d"
    elif what == "unknown activation":
        first = record.layers[0]
        record = record.with_layers([make_layer(first.name, 0, first.weight, first.bias), record.layers[1]])
        phrase = "cannot run layer 'fc0': its activation is unknown"
    else:
        record = record.with_layers([record.layers[0], make_layer("fc1", 1, torch.randn(1, 4, dtype=torch.float64),
                                                                  activation="identity", skip_from=(0,))])
        phrase = "need a chain of linear layers"
    encoder = SNEEncoder(**SMALL, probe_points=4)
    with pytest.raises(SneError) as error:
        encoder.prepare([record])
    message = str(error.value)
    assert phrase in message and "option probe_points" in message and "\n" not in message
    assert record.source in message
    SNEEncoder(**SMALL).prepare([record])  # the same record without probes is read as ever


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_probe_points_must_be_a_count(bad):
    with pytest.raises(SneError, match="probe_points must be a non-negative integer"):
        SNEEncoder(**SMALL, probe_points=bad)


SCRIPT = Path(sys.executable).parent / "sne"


def test_installed_predict_runs_probes_through_the_module_and_names_what_a_bare_state_dict_lacks(
        shared_sine_zoo, tmp_path):
    """A run trained with probes predicts a bare state_dict once ``--arch`` says what its module computes,
    and without it reports each file on one line and exits 2."""
    from conftest import sine_run_and_bare_files
    from sne.train import load_run

    run, records, files = sine_run_and_bare_files(shared_sine_zoo, tmp_path, {**SMALL, "probe_points": 4}, 2)
    factory = tmp_path / "siren_factory.py"
    factory.write_text("import torch\nfrom sne.zoo.siren import Siren\n\n\n"
                       "def architecture():\n    return Siren(1), torch.zeros(1, 1)\n")

    bare = subprocess.run([str(SCRIPT), "predict", str(run), *map(str, files), "--device", "cpu"],
                          capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stdout == ""
    problems = [line for line in bare.stderr.splitlines() if "activation is unknown" in line]
    assert [line.split(": ")[1] for line in problems] == [str(f) for f in files]
    assert all("--arch" in line for line in problems) and "Traceback" not in bare.stderr

    known = subprocess.run([str(SCRIPT), "predict", str(run), *map(str, files), "--device", "cpu",
                            "--arch", f"{factory}:architecture"], capture_output=True, text=True)
    assert known.returncode == 0, known.stderr
    expected = load_run(run, device="cpu").predictor.predict(records)
    for line, value in zip(known.stdout.strip().splitlines(), expected):
        assert float(line.split("\t")[2]) == pytest.approx(float(value), rel=1e-4, abs=1e-5)
