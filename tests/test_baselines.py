"""Baseline encoders mlp, deepsets, statnn, hyperrep: shapes, invariance, refusals, learning, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import run_cli
from sne.encoders import build_encoder, build_encoder_from_config, encoder_names, get_encoder_class
from sne.errors import SneError
from sne.train import TrainConfig, fit
from sne.train.evaluate import evaluate_run
from sne.weights import record_from_module
from sne.weights.permute import random_equivalent_permutation
from sne.weights.record import NetworkRecord, make_layer

BASELINES = ["mlp", "mlp_canonical", "deepsets", "statnn", "hyperrep"]
FIXED_ARCHITECTURE = ["mlp", "mlp_canonical", "statnn", "hyperrep"]
SMALL_OPTIONS = {
    "mlp": {"hidden": [64], "out_dim": 8},
    "mlp_canonical": {"hidden": [64], "out_dim": 8},
    "deepsets": {"phi_hidden": [16], "rho_hidden": [16], "width": 16, "out_dim": 8},
    "statnn": {"hidden": [32], "out_dim": 8},
    "hyperrep": {"hidden": 16, "heads": 2, "layers": 1, "out_dim": 8, "pretrain_epochs": 2, "pretrain_batch_size": 4},
}
#: Settings under which each baseline learns the shared-init test zoo (a few seconds each).
LEARNING = {
    "mlp": ({}, 15),
    "mlp_canonical": ({}, 15),
    # At 20 epochs the selected model sat at the mean predictor on a fresh install (test 1.08, val 0.49
    # normalised MSE): too close to the edge for a test; 30 epochs reach 0.32.
    "deepsets": ({}, 30),
    "statnn": ({}, 15),
    "hyperrep": ({"hidden": 32, "heads": 2, "layers": 1, "pretrain_epochs": 30, "pretrain_batch_size": 32,
                  "pretrain_lr": 3e-3}, 15),
}


def siren(widths: list[int], generator: torch.Generator, dtype=torch.float32) -> NetworkRecord:
    layers = [
        make_layer(f"layers.{i}", i, torch.randn(n_out, n_in, generator=generator, dtype=dtype) / n_in**0.5,
                   0.1 * torch.randn(n_out, generator=generator, dtype=dtype))
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
    ]
    return NetworkRecord(tuple(layers), source=f"siren{widths}")


def small_cnn(seed: int, dtype=torch.float32) -> NetworkRecord:
    """The small-CNN-zoo architecture (GUIDE section 6) with random weights."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).to(dtype)
    return record_from_module(module, source=f"cnn{seed}")


def inr_records(count: int, seed: int = 0, dtype=torch.float32) -> list[NetworkRecord]:
    generator = torch.Generator().manual_seed(seed)
    return [siren([1, 32, 32, 1], generator, dtype) for _ in range(count)]


def fitted(name: str, records: list[NetworkRecord], dtype=torch.float32, **options):
    torch.manual_seed(0)
    encoder = build_encoder(name, architecture=records[0].architecture, **{**SMALL_OPTIONS[name], **options}).to(dtype)
    encoder.fit_input_statistics(records)
    return encoder.eval()


# --- shapes, round trips, options ----------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("kind", ["inr", "cnn"])
def test_codes_have_out_dim_and_gradients_flow(name, kind):
    records = inr_records(5) if kind == "inr" else [small_cnn(s) for s in range(5)]
    encoder = fitted(name, records, freeze=False) if name == "hyperrep" else fitted(name, records)
    z = encoder.train()(encoder.prepare(records))
    assert z.shape == (5, encoder.out_dim) == (5, 8)
    assert torch.isfinite(z).all()
    z.square().sum().backward()
    if name == "hyperrep":  # the decoder and projection head learn only in pretraining
        assert encoder.embed.weight.grad.abs().sum() > 0
    else:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_deepsets_takes_mixed_architectures_in_one_batch():
    records = [*inr_records(2), small_cnn(0), siren([3, 7, 2], torch.Generator().manual_seed(1))]
    encoder = fitted("deepsets", records)
    together = encoder(encoder.prepare(records))
    alone = torch.cat([encoder(encoder.prepare([r])) for r in records])
    assert together.shape == (4, 8)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_deepsets_in_element_blocks_gives_the_codes_and_gradients_of_one_block(monkeypatch):
    import sne.encoders.deepsets as deepsets

    records = [*inr_records(3, dtype=torch.float64), siren([3, 7, 2], torch.Generator().manual_seed(1), torch.float64)]
    encoder = fitted("deepsets", records, dtype=torch.float64).train()

    def codes_and_gradients(block: int):
        monkeypatch.setattr(deepsets, "ELEMENT_BLOCK", block)
        encoder.zero_grad()
        torch.manual_seed(0)
        z = encoder(encoder.prepare(records))
        (z * torch.linspace(-1, 1, z.numel(), dtype=z.dtype).view_as(z)).sum().backward()
        return z.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()}

    whole, whole_grads = codes_and_gradients(2**30)
    blocked, blocked_grads = codes_and_gradients(97)  # cuts networks and positions mid-tensor
    torch.testing.assert_close(blocked, whole, rtol=1e-10, atol=1e-12)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(blocked_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", BASELINES)
def test_config_round_trip_gives_identical_codes(name):
    records = inr_records(6)
    encoder = fitted(name, records)
    rebuilt = build_encoder_from_config(json.loads(json.dumps(encoder.config())))
    rebuilt.load_state_dict(encoder.state_dict())
    assert type(rebuilt) is type(encoder) and rebuilt.options == encoder.options and rebuilt.out_dim == encoder.out_dim
    expected = encoder(encoder.prepare(records))
    torch.testing.assert_close(rebuilt.eval()(rebuilt.prepare(records)), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", BASELINES)
def test_unknown_option_is_a_user_error(name):
    with pytest.raises(SneError, match=f"unknown {name} option"):
        build_encoder(name, architecture=inr_records(1)[0].architecture, nope=1)


# --- permutation invariance ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deepsets", "statnn", "mlp_canonical"])
@pytest.mark.parametrize("kind", ["inr", "cnn"])
def test_invariant_to_hidden_neuron_permutations(name, kind):
    if kind == "inr":
        records = inr_records(6, dtype=torch.float64)
    else:
        records = [small_cnn(s, torch.float64) for s in range(6)]
    encoder = fitted(name, records, torch.float64)
    generator = torch.Generator().manual_seed(5)
    permuted = [random_equivalent_permutation(r, generator) for r in records]
    before = encoder(encoder.prepare(records))
    after = encoder(encoder.prepare(permuted))
    torch.testing.assert_close(after, before, atol=1e-12, rtol=1e-10)
    # The permutation is not trivial: the order-dependent mlp baseline sees the change.
    mlp = fitted("mlp", records, torch.float64)
    assert (mlp(mlp.prepare(permuted)) - mlp(mlp.prepare(records))).abs().max() > 1e-3


# --- fixed architectures --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXED_ARCHITECTURE)
def test_fixed_architecture_encoders_refuse_other_networks(name):
    encoder = fitted(name, inr_records(4))
    other = siren([1, 16, 16, 1], torch.Generator().manual_seed(0))
    with pytest.raises(SneError) as error:
        encoder.prepare([other])
    message = str(error.value)
    assert "\n" not in message and f"'{name}'" in message
    assert "linear 32x1+b" in message and "linear 16x1+b" in message and other.source in message
    with pytest.raises(SneError, match=f"'{name}' takes one fixed architecture"):
        build_encoder(name)


# --- learning on the shared-init sine zoo ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained_runs(shared_sine_zoo, tmp_path_factory) -> dict[str, dict]:
    """Train and evaluate every baseline once with the real fit / evaluate_run; reused by the tests below."""
    root = tmp_path_factory.mktemp("baseline_runs")
    results = {}
    for name in BASELINES:
        options, epochs = LEARNING[name]
        config = TrainConfig(
            zoo=str(shared_sine_zoo.path), target="frequency", encoder=name, encoder_options=options, epochs=epochs,
            batch_size=16, milestones=[0.8], head_hidden=[64], seed=0, device="cpu",
            **get_encoder_class(name).default_train_options,
        )
        fit(config, root / name, progress=False)
        results[name] = evaluate_run(root / name, device="cpu", plot=False)
    return results


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_beats_the_mean_predictor(trained_runs, name):
    metrics = trained_runs[name]["metrics"]
    assert metrics["mse"] < 0.8 * metrics["mean_predictor_mse"], metrics


def test_deepsets_and_statnn_runs_are_permutation_invariant(trained_runs):
    # float32 runs: invariant up to summation order (the mlp baseline moves by ~1 unit of frequency).
    for name in ("deepsets", "statnn"):
        assert trained_runs[name]["permutation_sensitivity"]["max_abs_change"] < 1e-3


def test_hyperrep_pretraining_lowers_reconstruction_and_is_logged(trained_runs):
    run = Path(trained_runs["hyperrep"]["run"])
    log = json.loads((run / "pretraining.json").read_text())
    assert len(log["epochs"]) == LEARNING["hyperrep"][0]["pretrain_epochs"]
    assert log["reconstruction_after"] < 0.7 * log["reconstruction_before"]
    assert log["epochs"][-1]["reconstruction"] < log["epochs"][0]["reconstruction"]
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["state"]["pretraining"] == log


def test_frozen_hyperrep_gets_no_gradient_from_the_task():
    records = inr_records(8)
    encoder = fitted("hyperrep", records).train()
    encoder.pretrain(records, {"seed": 0}, progress=False)
    pretrained = {k: v.clone() for k, v in encoder.state_dict().items()}
    head = nn.Linear(encoder.out_dim, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.1)
    head(encoder(encoder.prepare(records))).square().sum().backward()
    optimizer.step()
    assert all(p.grad is None for p in encoder.parameters())
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, pretrained[key]), key


@pytest.mark.parametrize("name", FIXED_ARCHITECTURE)
def test_cli_refuses_a_network_of_another_architecture(trained_runs, name, tmp_path, capsys):
    """A zoo holds one architecture, so 'sne train' never shows another; 'sne predict' on a trained run can."""
    other = siren([1, 16, 16, 1], torch.Generator().manual_seed(0))
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in other.to_state_dict().items()}, path)
    code, out, err = run_cli(["predict", trained_runs[name]["run"], str(path), "--device", "cpu"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"'{name}'" in err and "built for" in err and "Traceback" not in err


def test_sne_train_uses_the_encoders_own_training_defaults(shared_sine_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--encoder", "deepsets",
            "--epochs", "1", "--max-train", "32", "--device", "cpu", "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["lr"] == get_encoder_class("deepsets").default_train_options["lr"]
    code, _, err = run_cli([*args[:-1], str(tmp_path / "explicit"), "--lr", "0.0005"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "explicit" / "config.json").read_text())["lr"] == 0.0005


def test_bench_inr_all_expands_to_every_registered_encoder(monkeypatch, tmp_path, capsys):
    import sne.bench.inr

    seen = {}

    def record_names(zoo, runs, *args, **kwargs):
        seen["encoders"] = list(runs.encoders)
        return tmp_path / "results.json"

    monkeypatch.setattr(sne.bench.inr, "run_inr_benchmark", record_names)
    code, _, _ = run_cli(["bench", "inr", "--zoo", str(tmp_path), "--encoders", "all"], capsys)
    assert code == 0
    assert seen["encoders"] == encoder_names() and set(BASELINES) <= set(seen["encoders"])
