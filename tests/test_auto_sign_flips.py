"""Sign flips chosen per zoo (``sign_flip_augment="auto"``, SNE's default): networks fitted from one
shared initialisation share their signs, and train without flips; independently initialised ones
train with them. The alignment that decides, the choice a run saves and reports, and result rows
named by what "auto" does on their own zoo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sne.bench.runs import configuration_options
from sne.encoders import get_encoder_class
from sne.train.run import (
    SHARED_SIGNS_ALIGNMENT,
    SIGN_FLIPS_AUTO,
    TrainConfig,
    choose_sign_flips,
    fit,
    train_epochs,
)
from sne.weights import record_from_module
from sne.weights.permute import flip_signs, random_sign_flips, sign_alignment, sign_flip_groups
from sne.zoo import generate_zoo

TINY = {"hidden": 16, "heads": 2, "num_sab": 1, "out_dim": 8}


def _siren(generator: torch.Generator, widths=(1, 8, 8, 1)) -> nn.Sequential:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        linear = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator))
            linear.bias.copy_(torch.randn(fan_out, generator=generator))
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _records(modules):
    return [record_from_module(m) for m in modules]


def _shared(count: int, noise: float, seed: int = 0, widths=(1, 8, 8, 1)):
    """``count`` networks: one start plus ``noise`` times fresh Gaussian noise each."""
    generator = torch.Generator().manual_seed(seed)
    start = _siren(generator, widths)
    networks = []
    for _ in range(count):
        copy = _siren(generator, widths)
        with torch.no_grad():
            for mine, common in zip(copy.parameters(), start.parameters()):
                mine.copy_(common + noise * torch.randn(mine.shape, generator=generator))
        networks.append(copy)
    return _records(networks)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), count=st.integers(8, 40))
def test_independent_networks_do_not_align_and_shared_ones_do_whatever_their_flips(seed, count):
    generator = torch.Generator().manual_seed(seed)
    independent = _records(_siren(generator) for _ in range(count))
    assert sign_alignment(independent) < 0.1
    shared = _shared(count, noise=0.1, seed=seed)
    assert sign_alignment(shared) > 0.9
    # One flip pattern applied to all keeps what they share; a pattern of their own each is what
    # flip augmentation shows a model, and it shares nothing.
    pattern = [torch.randint(0, 2, (g.size,), generator=generator) * 2 - 1 for g in sign_flip_groups(shared[0])]
    assert sign_alignment([flip_signs(r, pattern) for r in shared]) == pytest.approx(sign_alignment(shared), abs=1e-9)
    assert sign_alignment([random_sign_flips(r, generator) for r in shared]) < 0.3


def test_alignment_is_per_architecture_and_none_without_neurons_to_flip():
    shared = _shared(10, noise=0.05)
    other = _records(_siren(torch.Generator().manual_seed(i), widths=(1, 4, 1)) for i in range(10))
    mixed = sign_alignment([*shared, *other])
    # Half the networks align fully, the other half not at all.
    assert mixed == pytest.approx((sign_alignment(shared) + sign_alignment(other)) / 2, abs=1e-9)
    relu = _records(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(5))
    assert sign_alignment(relu) is None
    assert sign_alignment(shared[:1]) is None  # one network of its architecture: nothing to compare


def test_auto_trains_without_flips_where_networks_share_their_signs():
    config = TrainConfig.for_encoder("sne", zoo="z", target="t")
    assert config.sign_flip_augment == SIGN_FLIPS_AUTO and config.test_time_flips == 16
    chosen, choice = choose_sign_flips(config, _shared(12, noise=0.1))
    assert (chosen.sign_flip_augment, chosen.test_time_flips) == (False, 0)
    assert choice["sign_flip_augment"] is False and choice["sign_alignment"] >= SHARED_SIGNS_ALIGNMENT
    generator = torch.Generator().manual_seed(0)
    chosen, choice = choose_sign_flips(config, _records(_siren(generator) for _ in range(12)))
    assert (chosen.sign_flip_augment, chosen.test_time_flips) == (True, 16) and choice["sign_alignment"] < 0.1
    # Nothing to flip: on, as before (a no-op in training).
    relu = _records(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(3))
    assert choose_sign_flips(config, relu)[0].sign_flip_augment is True
    # Given either way, the choice is the user's.
    for given_value in (True, False):
        explicit = TrainConfig.for_encoder("sne", zoo="z", target="t", sign_flip_augment=given_value)
        assert choose_sign_flips(explicit, _shared(12, noise=0.1)) == (explicit, None)


def test_the_training_loop_refuses_an_undecided_auto(tmp_path):
    config = TrainConfig.for_encoder("sne", zoo="z", target="t")
    with pytest.raises(ValueError, match="choose_sign_flips"):
        train_epochs(config, tmp_path, None, None, [], None, None, None, {}, torch.device("cpu"))


@pytest.fixture(scope="module")
def independent_sine_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "independent"
    return generate_zoo("sine-inr", out, n=40, seed=1, options={"init": "independent", "steps": 20}, command="test",
                        progress=False)


def test_a_run_saves_and_reports_what_auto_chose(shared_sine_zoo, independent_sine_zoo, tmp_path, capsys):
    for zoo, flips in ((shared_sine_zoo, False), (independent_sine_zoo, True)):
        config = TrainConfig.for_encoder("sne", zoo=str(zoo.path), target="frequency", encoder_options=TINY, epochs=1,
                                         batch_size=32, device="cpu", max_train=40)
        summary = fit(config, tmp_path / zoo.path.name, progress=True)
        saved = json.loads((tmp_path / zoo.path.name / "config.json").read_text())
        assert saved["sign_flip_augment"] is flips and saved["test_time_flips"] == (16 if flips else 0)
        assert summary["sign_flip_choice"]["sign_flip_augment"] is flips
        assert summary["test_time_flips"] == saved["test_time_flips"]
        assert summary["sign_flipped_networks"] == (summary["train_networks"] if flips else None)
        err = capsys.readouterr().err
        assert ("sign flips (auto): off" in err) is not flips and ("sign flips (auto): on" in err) is flips
        # Resumed with "auto" again: the same choice, so the same run.
        fit(config, tmp_path / zoo.path.name, progress=False)


SCRIPT = Path(sys.executable).parent / "sne"


@pytest.mark.skipif(not SCRIPT.exists(), reason="the sne console script is not installed")
def test_the_installed_command_says_what_auto_chose_and_evaluates_accordingly(shared_sine_zoo, tmp_path):
    out = tmp_path / "run"
    options = [arg for key, value in TINY.items() for arg in ("-o", f"{key}={value}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def sne(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env)

    done = sne("train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--epochs", "1",
               "--max-train", "40", "--device", "cpu", "--out", str(out), *options)
    assert done.returncode == 0, done.stderr
    assert "sign flips (auto): off" in done.stderr and "share their signs" in done.stderr
    done = sne("evaluate", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["test_time_flips"] == 0 and evaluation["sign_flip_augment"] is False
    assert evaluation["sign_flip_choice"]["sign_flip_augment"] is False
    done = sne("evaluate", str(out), "--device", "cpu", "--test-time-flips", "4")
    assert done.returncode == 2 and "does not train on sign flips" in done.stderr and "Traceback" not in done.stderr


def test_rows_are_named_by_what_auto_does_on_their_own_zoo():
    sne = {"encoder": "sne", "encoder_options_given": {},
           "encoder_options_resolved": get_encoder_class("sne").options_baseline({})}
    sne.update({name: value for name, value in TrainConfig.for_encoder("sne", zoo="z", target="t").__dict__.items()
                if name in ("batch_size", "schedule", "ema_epochs", "bn_recalibration", "permutation_augment")})
    shared = {**sne, "zoo_options": {"init": "shared"}, "test_time_flips": 16}
    independent = {**sne, "zoo_options": {"init": "independent"}, "test_time_flips": 16}
    chose_off = {"sign_flip_choice": {"sign_flip_augment": False}}
    # Rows from before "auto": flips were the default, and are a switch only where "auto" does not flip.
    assert configuration_options({**independent, "sign_flip_augment": True}) == {}
    assert configuration_options({**shared, "sign_flip_augment": True}) == {"sign_flip_augment": True}
    assert configuration_options({**shared, "sign_flip_augment": False, "test_time_flips": 0}) == {}
    assert configuration_options({**independent, "sign_flip_augment": False, "test_time_flips": 0}) == \
        {"sign_flip_augment": False}
    # Rows of runs that chose: what they chose is the default.
    assert configuration_options({**shared, **chose_off, "sign_flip_augment": False, "test_time_flips": 0}) == {}
    assert configuration_options({**sne, **chose_off, "sign_flip_augment": SIGN_FLIPS_AUTO, "test_time_flips": 0}) == {}
    assert configuration_options({**sne, "sign_flip_augment": SIGN_FLIPS_AUTO, "test_time_flips": 16,
                                  "sign_flip_choice": {"sign_flip_augment": True}}) == {}
