"""Test-time sign flips: a run trained on sign flips predicts the mean over each network and random
sign-flipped copies of it; the invariance regulariser's copies are flipped too."""

from __future__ import annotations

import json

import torch
from torch import nn

from conftest import run_cli
from sne.encoders import build_encoder
from sne.train.predictor import TEST_TIME_FLIP_SEED, Predictor
from sne.train.run import TrainConfig
from sne.train.targets import Target, build_head
from sne.weights import record_from_module
from sne.weights.permute import random_sign_flips, supports_sign_flips

TINY = ["-o", "sne.hidden=16", "-o", "sne.heads=2", "-o", "sne.num_sab=1", "-o", "sne.out_dim=8"]


def _predictor(copies: int) -> Predictor:
    torch.manual_seed(0)
    encoder = build_encoder("sne", hidden=16, heads=2, num_sab=1, out_dim=8)
    target = Target(name="frequency", kind="regression", mean=5.0, std=2.0)
    # Float64 inside, so that batches of other sizes agree far below the float32 outputs' resolution.
    return Predictor(encoder, build_head(8, [16], 1), target, test_time_flips=copies).double().eval()


def test_predictions_average_each_network_and_its_flipped_copies_whatever_its_batch(shared_sine_zoo):
    records = shared_sine_zoo.records(shared_sine_zoo.split_ids("test")[:3])
    relu = record_from_module(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    assert all(supports_sign_flips(r) for r in records) and not supports_sign_flips(relu)
    predictor = _predictor(copies=3)
    single = predictor.outputs([*records, relu], test_time_flips=0).double()
    expected = []
    for record, alone in zip(records, single):
        generator = torch.Generator().manual_seed(TEST_TIME_FLIP_SEED)
        copies = [random_sign_flips(record, generator) for _ in range(3)]
        flipped = predictor.outputs(copies, test_time_flips=0).double()
        assert not torch.allclose(flipped, alone.expand_as(flipped))  # the copies are other inputs to the model
        expected.append((alone + flipped.sum(0)) / 4)
    averaged = predictor.outputs([*records, relu]).double()
    assert torch.allclose(averaged[:3], torch.stack(expected), rtol=0, atol=1e-7)
    assert torch.equal(averaged[3], single[3])  # nothing to flip: predicted once
    # A network's prediction does not depend on what is predicted beside it.
    assert torch.allclose(predictor.outputs(records[1:2]).double(), averaged[1:2], rtol=0, atol=1e-7)
    assert torch.allclose(torch.as_tensor(predictor.predict(records)).double(),
                          predictor.target.decode(averaged[:3]).double(), rtol=0, atol=1e-6)


def test_averaging_follows_training_on_flips_and_is_an_evaluation_setting_only():
    config = TrainConfig.for_encoder
    assert config("sne", zoo="z", target="t").test_time_flips == 16
    assert config("sne", zoo="z", target="t", sign_flip_augment=False).test_time_flips == 0
    assert config("sne", zoo="z", target="t", encoder_options={"preset": "paper"}).test_time_flips == 0
    assert config("deepsets", zoo="z", target="t", sign_flip_augment=True).test_time_flips == 0
    assert config("sne", zoo="z", target="t", test_time_flips=4).test_time_flips == 4


def test_the_regulariser_asks_for_invariance_to_flips_where_the_run_flips(shared_sine_zoo, tmp_path, capsys):
    """Default SNE is invariant to neuron permutations by construction: its regulariser has nothing
    to act on unless the copies are sign-flipped too."""
    common = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--epochs", "1", "--max-train",
              "40", "--device", "cpu", "--invariance-weight", "1", *[a.removeprefix("sne.") for a in TINY]]
    losses = {}
    for name, flag in (("flips", "--augment-sign-flips"), ("plain", "--no-augment-sign-flips")):
        code, _, err = run_cli([*common, flag, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        losses[name] = json.loads((tmp_path / name / "history.json").read_text())[0]["invariance_loss"]
    assert losses["plain"] < 1e-8 < 1e-4 < losses["flips"]


def test_bad_test_time_flips_get_one_line_and_exit_2(shared_sine_zoo, tiny_sne_run, tmp_path, capsys):
    train = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--epochs", "1", "--max-train",
             "20", "--device", "cpu", "--out", str(tmp_path / "run"), *[a.removeprefix("sne.") for a in TINY]]
    for args, message in (
        ([*train, "--no-augment-sign-flips", "--test-time-flips", "4"], "does not train on sign flips"),
        ([*train, "--test-time-flips", "-1"], "--test-time-flips"),
        (["evaluate", str(tiny_sne_run), "--test-time-flips", "2"], "does not train on sign flips"),
        (["predict", str(tiny_sne_run), "nothing.safetensors", "--test-time-flips", "-3"], "--test-time-flips"),
    ):
        code, out, err = run_cli(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    # SNE trained on flips averages over 16 copies by default; evaluation records what it used. (Flips
    # are given: on this zoo of one shared initialisation the default trains without them.)
    code, _, err = run_cli([*train, "--augment-sign-flips", "--test-time-flips", "2"], capsys)
    assert code == 0 and json.loads((tmp_path / "run" / "config.json").read_text())["test_time_flips"] == 2, err
    code, out, err = run_cli(["evaluate", str(tmp_path / "run"), "--json", "--test-time-flips", "0"], capsys)
    result = json.loads(out)
    assert code == 0 and result["test_time_flips"] == 0, err
    assert result["sign_flip_sensitivity"]["mean_abs_change"] > 0 and result["sign_flip_sensitivity"]["flips"] == 5
    code, out, err = run_cli(["evaluate", str(tmp_path / "run")], capsys)
    assert code == 0 and "averaged over flipped copies" in out and "1 + 2" in out and "under sign flips" in out, err
