"""The trivial predictor a trained head must beat, and the warning for a run that never beat it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import run_cli
from project_scripts import load_script
from sne.train import TrainConfig, fit
from sne.train.evaluate import evaluate_run
from sne.train.run import LEARNED_MARGIN, learned_nothing
from sne.train.targets import Target, resolve_target


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=2, max_size=40), st.floats(-1, 1).filter(lambda d: abs(d) > 1e-3))
def test_a_regression_constant_is_the_training_mean_and_no_other_constant_does_better(values, shift):
    train = torch.tensor(values, dtype=torch.float64)
    target = resolve_target("y", {"y": {"kind": "regression"}}, train)
    constant = target.constant_outputs(train)
    loss = target.loss(constant.double().expand(len(train), -1), train)
    moved = target.loss((constant + shift).double().expand(len(train), -1), train)
    assert torch.equal(constant, torch.zeros(1))
    assert loss < moved


def test_a_unit_interval_constant_is_the_logit_of_the_training_mean():
    train = torch.tensor([0.2, 0.4, 0.9])
    target = Target("acc", "unit_interval")
    assert torch.sigmoid(target.constant_outputs(train)).item() == pytest.approx(0.5)
    assert torch.isfinite(Target("acc", "unit_interval").constant_outputs(torch.ones(4))).all()


def test_class_constants_are_smoothed_log_frequencies_so_an_unseen_class_costs_a_finite_loss():
    target = Target("label", "class", num_classes=4)
    constant = target.constant_outputs(torch.tensor([0, 0, 0, 1, 1, 2]))
    assert torch.allclose(constant.exp(), torch.tensor([4, 3, 2, 1]) / 10)
    loss = target.loss(constant.expand(2, -1), torch.tensor([3, 3]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-torch.log(torch.tensor(0.1)).item())


@pytest.mark.parametrize("best, constant, warned", [
    (1.01, 1.0, True), (0.96, 1.0, True), ((1 - LEARNED_MARGIN) * 1.0, 1.0, True), (0.94, 1.0, False),
    (0.1, 2.3, False), (2.2, 2.3, True), (0.0, 0.0, False),
])
def test_the_warning_names_the_run_and_both_losses_only_when_the_constant_was_not_beaten(best, constant, warned):
    line = learned_nothing({"run": "runs/x", "best_val_loss": best, "constant_val_loss": constant})
    assert (line is not None) == warned
    if warned:
        assert "runs/x" in line and f"{best:.4g}" in line and f"{constant:.4g}" in line and "\n" not in line


def test_a_summary_without_the_constant_is_not_warned_about():
    assert learned_nothing({"run": "runs/x", "best_val_loss": 5.0}) is None


def test_the_cli_warns_of_a_run_that_never_moved(shared_sine_zoo, tmp_path, capsys):
    out = tmp_path / "still"
    # A learning rate of 1e-12 leaves the encoder and head at their random start.
    code, _, err = run_cli(["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--device", "cpu",
                            "-o", "hidden=16", "-o", "heads=2", "-o", "out_dim=8", "--batch-size", "32", "--epochs", "1",
                            "--lr", "1e-12", "--out", str(out)], capsys)
    assert code == 0 and "Traceback" not in err
    assert "learned nothing" in err and str(out) in err
    assert (out / "best.pt").exists()
    # Its results row says so on the results page.
    row = evaluate_run(out, device="cpu", plot=False)
    assert row["best_val_loss"] >= (1 - LEARNED_MARGIN) * row["constant_val_loss"] > 0
    assert "**learned nothing**" in load_script("scripts/make_results_md.py")._epochs_cell(row)


def test_a_run_that_learned_is_not_warned_about(shared_sine_zoo, tmp_path):
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder="sne",
                         encoder_options={"hidden": 32, "heads": 4, "out_dim": 16}, epochs=8, batch_size=16, lr=2e-3,
                         milestones=[0.8], head_hidden=[64], seed=0, device="cpu")
    summary = fit(config, tmp_path / "run", progress=False)
    assert summary["best_val_loss"] < 0.5 * summary["constant_val_loss"]
    assert learned_nothing(summary) is None
    row = evaluate_run(tmp_path / "run", device="cpu", plot=False)
    assert row["best_val_loss"] == pytest.approx(summary["best_val_loss"])
    assert row["constant_val_loss"] == pytest.approx(summary["constant_val_loss"])
    assert load_script("scripts/make_results_md.py")._epochs_cell(row) == f"8 ({summary['best_epoch']})"
