"""The invariance regulariser on network codes instead of outputs (TrainConfig.invariance_on)."""

from __future__ import annotations

import json

import torch

from conftest import run_cli
from sne.train.run import code_distance

TINY = ["-o", "hidden=16", "-o", "heads=2", "-o", "num_sab=1", "-o", "out_dim=8"]


def test_code_distance_is_relative_to_the_spread_of_the_codes():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(16, 8, generator=g, dtype=torch.float64)
    other = codes + 0.1 * torch.randn(16, 8, generator=g, dtype=torch.float64)
    assert code_distance(codes, codes) == 0
    distance = code_distance(codes, other)
    expected = (codes - other).square().sum(1).mean() / codes.var(0, unbiased=False).sum()
    torch.testing.assert_close(distance, expected, rtol=1e-12, atol=0)
    # Shrinking (or moving) every code changes nothing: the head could undo it.
    torch.testing.assert_close(code_distance(1e-3 * codes + 5, 1e-3 * other + 5), distance, rtol=1e-9, atol=0)


def test_training_on_codes_acts_where_the_copies_differ_and_bad_targets_get_one_line(shared_sine_zoo, tmp_path, capsys):
    """Default SNE is invariant to neuron permutations by construction: the codes of a network and
    its permuted copy agree, and differ only when the copy is sign-flipped too."""
    common = ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--epochs", "1", "--max-train",
              "40", "--device", "cpu", "--invariance-weight", "1", "--invariance-on", "codes", *TINY]
    losses = {}
    for name, flag in (("flips", "--augment-sign-flips"), ("plain", "--no-augment-sign-flips")):
        code, _, err = run_cli([*common, flag, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        assert json.loads((tmp_path / name / "config.json").read_text())["invariance_on"] == "codes"
        losses[name] = json.loads((tmp_path / name / "history.json").read_text())[0]["invariance_loss"]
    assert losses["plain"] < 1e-8 < 1e-4 < losses["flips"]
    bad = [*common, "--invariance-on", "logits", "--out", str(tmp_path / "bad")]
    code, _, err = run_cli(bad, capsys)
    assert code == 2 and "unknown --invariance-on 'logits' (use outputs or codes)" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
