"""Training and evaluation on a zoo of two architectures (MLP chains and ResNets with BatchNorm),
end to end through the installed ``sne`` script: encoders for any network train; a
fixed-architecture encoder is refused in one line naming the zoo and its architectures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from network_families import resnet
from sne.weights.trace import record_from_module
from sne.zoo import Zoo, write_records_zoo
from project_scripts import load_script

SCRIPT = Path(sys.executable).parent / "sne"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")


def sne(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory) -> Path:
    records, rows = [], []
    for i in range(16):
        torch.manual_seed(i)
        if i % 2:
            module, example = resnet(depth_per_stage=(1,), widths=(4,), in_channels=1, num_classes=3, image=8, seed=i)
        else:
            module, example = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(2, 6)
        record = record_from_module(module, example, source=f"net{i}")
        records.append(record)
        rows.append({"score": float(record.layers[0].weight.abs().mean())})
    out = tmp_path_factory.mktemp("mixed") / "zoo"
    zoo = write_records_zoo(out, recipe="mixed", options={}, records=records, rows=rows,
                            targets={"score": {"kind": "regression"}}, dataset={}, seed=1,
                            architecture_names=["mlp" if i % 2 == 0 else "resnet" for i in range(16)])
    for split in ("train", "test"):  # both architectures in the splits trained and evaluated on
        assert set(zoo.architecture_of(zoo.split_ids(split)).tolist()) == {0, 1}
    return out


@pytest.mark.parametrize("encoder, options", [
    ("sne", ["-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8"]),
    ("deepsets", []),
])
def test_any_network_encoders_train_and_evaluate_on_a_mixed_zoo(mixed_zoo, tmp_path, encoder, options):
    run = tmp_path / encoder
    done = sne("train", "--zoo", str(mixed_zoo), "--target", "score", "--out", str(run), "--encoder", encoder,
               "--epochs", "2", "--batch-size", "4", "--device", "cpu", *options)
    assert done.returncode == 0, done.stderr
    history = json.loads((run / "history.json").read_text())
    assert len(history["epochs"] if isinstance(history, dict) else history) == 2
    done = sne("evaluate", str(run), "--json", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    zoo = Zoo.open(mixed_zoo)
    assert result["metrics"]["n"] == len(zoo.split_ids("test")) and result["zoo"] == str(mixed_zoo)


def test_a_fixed_architecture_encoder_is_refused_in_one_line(mixed_zoo, tmp_path):
    done = sne("train", "--zoo", str(mixed_zoo), "--target", "score", "--out", str(tmp_path / "run"),
               "--encoder", "mlp", "--epochs", "1", "--device", "cpu")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert f"the zoo at {mixed_zoo} holds 2 architectures (mlp, resnet); encoder 'mlp' takes one fixed architecture" \
        in lines[0]


def test_a_benchmark_on_a_mixed_zoo_records_the_encoders_that_cannot_train_and_goes_on(mixed_zoo, tmp_path,
                                                                                       monkeypatch):
    done = sne("bench", "cross-dataset", "--zoos", str(mixed_zoo), "--target", "score", "--encoders",
               "statnn,deepsets,nfn_np", "--name", "mixed", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
               "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    path = tmp_path / "results" / "mixed.json"
    result = json.loads(path.read_text())
    rows = {e["encoder"]: e for e in result["entries"]}
    assert set(rows) == {"statnn", "deepsets", "nfn_np"}
    for name in ("statnn", "nfn_np"):
        assert "one fixed architecture" in rows[name]["cannot_train"]
        assert all("error" in cell for cell in rows[name]["evaluations"].values())
    assert "cannot_train" not in rows["deepsets"]
    assert -1 <= next(iter(rows["deepsets"]["evaluations"].values()))["kendall_tau"] <= 1
    # The results page shows both kinds of row.
    page = load_script("scripts/make_results_md.py")
    monkeypatch.setattr(page, "ROOT", tmp_path)
    text = "\n".join(page.transfer_section(path, result))
    # Rows name the batch size, which differs from the encoders' defaults, refused rows too.
    assert "| statnn (batch_size=4) | cannot train | n/a |" in text
    assert "Cannot train: statnn (batch_size=4): the zoo at" in text
    assert "| deepsets (batch_size=4) | " in text and "cannot read" not in text
