"""The recipes of networks of any architecture (wild-park, resnet, vit) and digit-inr with views:
tiny zoos made through the installed ``sne`` script hold the trained weights (each record loads into
its module strictly and gives the recorded test accuracy), a killed generation resumes to the
uninterrupted zoo bit for bit, splits are drawn per network (per image for views), and SNE trains
one epoch on each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from sne.zoo import Zoo, generate_zoo, get_recipe
from sne.zoo.module_recipes import _resized

SCRIPT = Path(sys.executable).parent / "sne"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the console script is not installed")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

# Tiny settings: 4 networks (2 shards of 2), 8x8 images, 1-2 epochs, two architecture blocks.
SMALL = {"image_size": 8, "arch_block": 2}
ZOOS = {
    "wild-park": {**SMALL, "checkpoints": [1, 2]},
    "resnet": {**SMALL, "epochs": 1},
    "vit": {**SMALL, "epochs": 1, "epochs_min": 1, "patches": [2, 4]},
    "digit-inr": {"views": 2, "steps": 20},
}
SEED = 4


def command(recipe: str, out: Path) -> list[str]:
    options = [arg for key, value in ZOOS[recipe].items() for arg in ("-o", f"{key}={json.dumps(value)}")]
    return [str(SCRIPT), "zoo", "generate", recipe, "--n", "4", "--seed", str(SEED), "--shard-size", "2",
            "--out", str(out), *options]


@pytest.fixture(scope="module")
def zoos(tmp_path_factory) -> dict[str, Zoo]:
    root = tmp_path_factory.mktemp("any-network-recipes")
    made = {}
    for recipe in ZOOS:
        done = subprocess.run(command(recipe, root / recipe), capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stderr
        made[recipe] = Zoo.open(root / recipe)
    return made


def assert_same_zoo(a: Path, b: Path) -> None:
    for shard in sorted((a / "shards").glob("*.safetensors")):
        x, y = load_file(str(shard)), load_file(str(b / "shards" / shard.name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), shard.name
    pd.testing.assert_frame_equal(pd.read_parquet(a / "metadata.parquet"), pd.read_parquet(b / "metadata.parquet"))


@pytest.mark.parametrize("recipe", ["wild-park", "resnet", "vit"])
def test_records_load_strictly_and_reproduce_the_recorded_accuracy(zoos, recipe):
    zoo, maker = zoos[recipe], get_recipe(recipe)
    options = zoo.manifest["options"]
    data = _resized(options["dataset"], options["image_size"])
    sampled = zoo.manifest["sampled_architectures"]
    valid = zoo.metadata.index[zoo.metadata["split"] != "excluded"]
    assert len(valid) >= 3
    for i in valid:
        module = maker.build(sampled[zoo.architecture_of([i])[0]]["architecture"], options)
        module.load_state_dict(zoo.records([i])[0].to_state_dict(), strict=True)
        module.eval()
        with torch.no_grad():
            correct = int((module(data.test_x).argmax(1) == data.test_y).sum())
        # Up to one image: the zoo evaluated the same weights batched over networks (other float rounding).
        assert abs(correct - zoo.metadata.at[i, "test_accuracy"] * len(data.test_y)) <= 1.0, i
    row = zoo.metadata.iloc[0]
    for column in ("train_accuracy", "generalization_gap", "epoch", "log10_lr", "log10_weight_decay", "optimizer",
                   "train_fraction", "width", "depth" if recipe != "resnet" else "blocks"):
        assert column in zoo.targets and np.isfinite(row[column]), column
    assert zoo.metadata["test_accuracy"].nunique() > 1


def test_wild_park_mixes_architectures_and_splits_per_network(zoos):
    zoo = zoos["wild-park"]
    meta = zoo.metadata
    assert len(zoo.architectures) > 1 and len(zoo) == 4 * 2
    assert zoo.architecture_of(range(len(zoo))).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # blocks of 2 networks
    for network, rows in meta.groupby("network"):
        assert rows["id"].tolist() == [2 * network, 2 * network + 1] and rows["epoch"].tolist() == [1, 2]
        assert rows["split"].nunique() == 1
        assert rows["lr"].nunique() == 1
    assert zoo.manifest["split_method"] == "given" and zoo.manifest["networks"] == 4
    # Later checkpoints hold other weights than earlier ones of the same network.
    first, second = zoo.records([0, 1])
    assert not torch.equal(first.layers[0].weight, second.layers[0].weight)


def test_digit_inr_views_share_their_image_and_split(zoos):
    zoo = zoos["digit-inr"]
    meta = zoo.metadata
    assert len(zoo) == 8 and meta["view"].tolist() == [0, 1] * 4
    for slot, rows in meta.groupby("image_slot"):
        assert rows["split"].nunique() == 1 and rows["image_index"].nunique() == 1 and rows["label"].nunique() == 1
        assert rows["init_seed"].nunique() == 2
    a, b = zoo.records([0, 1])
    assert not torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert (meta["psnr"] > 15).all()


def test_killed_wild_park_generation_resumes_to_the_uninterrupted_zoo(zoos, tmp_path):
    """A real `sne zoo generate wild-park` is SIGKILLed after its first shard, then run again."""
    out = tmp_path / "killed"
    process = subprocess.Popen(command("wild-park", out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_shard = out / "shards" / "shard-00000.parquet"
    deadline = time.monotonic() + 120
    while not first_shard.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_shard.exists(), process.stderr.read().decode()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    finished = subprocess.run(command("wild-park", out), env=ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert_same_zoo(out, zoos["wild-park"].path)


@pytest.mark.parametrize("recipe", ["vit", "digit-inr"])
def test_failed_generation_resumes_to_the_uninterrupted_zoo(zoos, tmp_path, monkeypatch, recipe):
    maker = type(get_recipe(recipe))
    real = maker.generate_rows
    calls = []

    def crash_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(self, *args, **kwargs)

    out = tmp_path / "zoo"
    monkeypatch.setattr(maker, "generate_rows", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_zoo(recipe, out, n=4, seed=SEED, options=ZOOS[recipe], shard_size=2, progress=False)
    monkeypatch.setattr(maker, "generate_rows", real)
    generate_zoo(recipe, out, n=4, seed=SEED, options=ZOOS[recipe], shard_size=2, progress=False)
    assert_same_zoo(out, zoos[recipe].path)


@pytest.mark.parametrize("recipe", list(ZOOS))
def test_sne_trains_one_epoch_on_each_zoo(zoos, tmp_path, capsys, recipe):
    target = "label" if recipe == "digit-inr" else "test_accuracy"
    code, _, err = run_cli(["train", "--zoo", str(zoos[recipe].path), "--target", target, "--out", str(tmp_path / "run"),
                            "--encoder", "sne", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                            "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8"], capsys)
    assert code == 0, err
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


@pytest.mark.parametrize("recipe, args, message", [
    ("wild-park", ["-o", "checkpoints=[2,1]"], "wild-park option 'checkpoints' must be ascending"),
    ("vit", ["-o", "patches=[5]"], "vit option 'patches' must be a list of patch sizes that divide image_size 28"),
    ("resnet", ["-o", "epochs_min=3", "-o", "epochs=2"], "resnet needs epochs_min <= epochs"),
    ("resnet", ["-o", "image_size=2"], "resnet option 'image_size' must be between 4 and 64"),
    ("digit-inr", ["-o", "views=0"], "digit-inr option 'views' must be a positive integer"),
])
def test_bad_options_give_one_line_errors(tmp_path, capsys, recipe, args, message):
    code, _, err = run_cli(["zoo", "generate", recipe, "--n", "2", "--out", str(tmp_path / "z"), *args], capsys)
    assert code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z").exists()
