"""The on-disk zoo format: round trip, splits, determinism, resume (in-process and after SIGKILL), errors."""

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

import sne
from sne.errors import SneError
from sne.zoo import Zoo, generate_zoo, split_assignment, split_sizes
from sne.zoo.sine_inr import SineInr

# Tiny fits: the format does not care how good they are.
FAST = {"steps": 3, "points": 64, "group_size": 4}


def make(out: Path, n: int = 11, seed: int = 3, shard_size: int = 4, **options) -> Zoo:
    return generate_zoo(
        "sine-inr", out, n=n, seed=seed, options={**FAST, **options}, command="test", progress=False,
        shard_size=shard_size,
    )


def shard_tensors(root: Path) -> dict[str, torch.Tensor]:
    """All shards' tensors concatenated in id order, under state_dict keys (a one-architecture zoo
    stores every network under ``a0/<key>``, in id order within each shard)."""
    files = sorted((root / "shards").glob("shard-*.safetensors"))
    loaded = [load_file(str(f)) for f in files]
    assert all(key.startswith("a0/") for part in loaded for key in part)
    return {key.removeprefix("a0/"): torch.cat([part[key] for part in loaded]) for key in loaded[0]}


def assert_same_zoo(a: Path, b: Path) -> None:
    ta, tb = shard_tensors(a), shard_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    pd.testing.assert_frame_equal(Zoo.open(a).metadata, Zoo.open(b).metadata)


def test_round_trip(tmp_path):
    zoo = make(tmp_path / "zoo")
    assert len(zoo) == 11 and zoo.path == tmp_path / "zoo"
    manifest = json.loads((zoo.path / "manifest.json").read_text())
    assert manifest == zoo.manifest
    assert manifest["complete"] is True and manifest["n"] == 11 and manifest["shard_size"] == 4
    assert manifest["options"] == SineInr().resolve_options(FAST)  # every default recorded
    assert manifest["sne_version"] == sne.__version__ and manifest["torch_version"] == torch.__version__
    assert manifest["splits"] == {"train": 7, "val": 2, "test": 2}
    assert manifest["dataset"]["grid"]["points"] == 64
    assert zoo.targets == {"frequency": {"kind": "regression", "description": "a in the fitted f(x) = sin(a x)"}}
    assert [layer["name"] for layer in zoo.architecture] == ["layers.0", "layers.1", "layers.2"]
    assert sorted(p.name for p in (zoo.path / "shards").iterdir()) == [
        f"shard-{i:05d}.{ext}" for i in range(3) for ext in ("parquet", "safetensors")
    ]

    meta = zoo.metadata
    assert meta["id"].tolist() == list(range(11))
    assert {"id", "split", "frequency", "init_seed", "fit_mse"} <= set(meta.columns)
    assert meta.equals(pd.read_parquet(zoo.path / "metadata.parquet").sort_values("id", ignore_index=True))

    ids = [10, 0, 5]
    records = zoo.records(ids)
    tensors = shard_tensors(zoo.path)
    for network_id, record in zip(ids, records):
        assert record.source == f"{zoo.path}#{network_id}"
        assert [layer.name for layer in record.layers] == ["layers.0", "layers.1", "layers.2"]
        assert [layer.activation for layer in record.layers] == ["sine", "sine", "identity"]
        assert [tuple(layer.weight.shape) for layer in record.layers] == [(32, 1), (32, 32), (1, 32)]
        for layer in record.layers:
            assert layer.weight.dtype == torch.float32
            assert torch.equal(layer.weight, tensors[f"{layer.name}.weight"][network_id])
            assert torch.equal(layer.bias, tensors[f"{layer.name}.bias"][network_id])
    np.testing.assert_array_equal(zoo.target_values("frequency", ids), meta["frequency"].to_numpy()[ids])
    assert zoo.target_values("frequency", ids).dtype == np.float64

    splits = {name: zoo.split_ids(name) for name in ("train", "val", "test")}
    assert {name: len(v) for name, v in splits.items()} == manifest["splits"]
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(11))
    for name, split_ids in splits.items():
        assert (meta.loc[split_ids, "split"] == name).all()


def test_split_sizes_and_seeded_assignment():
    assert split_sizes(5000, (0.6, 0.2, 0.2)) == {"train": 3000, "val": 1000, "test": 1000}
    assert split_sizes(7, (0.6, 0.2, 0.2)) == {"train": 4, "val": 1, "test": 2}
    first = split_assignment(5000, 0, (0.6, 0.2, 0.2))
    assert {s: int((first == s).sum()) for s in ("train", "val", "test")} == {"train": 3000, "val": 1000, "test": 1000}
    assert np.array_equal(first, split_assignment(5000, 0, (0.6, 0.2, 0.2)))
    assert not np.array_equal(first, split_assignment(5000, 1, (0.6, 0.2, 0.2)))


def test_same_seed_same_zoo_other_seed_other_zoo(tmp_path):
    make(tmp_path / "a")
    make(tmp_path / "b")
    assert_same_zoo(tmp_path / "a", tmp_path / "b")
    other = make(tmp_path / "c", seed=4)
    weights = shard_tensors(tmp_path / "a")["layers.1.weight"]
    assert not torch.equal(weights, shard_tensors(other.path)["layers.1.weight"])
    assert not np.array_equal(Zoo.open(tmp_path / "a").metadata["frequency"], other.metadata["frequency"])


def test_resume_after_failure_is_identical(tmp_path, monkeypatch):
    reference = make(tmp_path / "reference")
    out = tmp_path / "zoo"
    real = SineInr.generate_shard
    calls: list[int] = []

    def fail_on_third(self, ids, *args):
        calls.append(int(ids[0]))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(self, ids, *args)

    monkeypatch.setattr(SineInr, "generate_shard", fail_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make(out)
    with pytest.raises(SneError, match="run the same generate command again to resume"):
        Zoo.open(out)
    # What a crash can leave behind: a temporary, and a shard whose parquet never came.
    (out / "shards" / ".shard-00002.parquet.abc.tmp").write_bytes(b"partial")
    (out / "shards" / "shard-00001.parquet").unlink()
    calls.clear()

    zoo = make(out)
    assert calls == [4, 8]  # shard 0 kept; shard 1 (incomplete) and shard 2 (missing) regenerated
    assert not list(out.rglob("*.tmp"))
    assert zoo.metadata["id"].tolist() == list(range(11))
    assert_same_zoo(out, reference.path)
    calls.clear()
    make(out)  # complete already: nothing to do
    assert calls == []


def test_corrupt_shard_is_regenerated(tmp_path):
    out = tmp_path / "zoo"
    make(out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    (out / "shards" / "shard-00001.safetensors").write_bytes(b"not safetensors")
    make(out)
    assert_same_zoo(out, make(tmp_path / "reference").path)


def test_mismatched_settings_are_refused(tmp_path):
    out = tmp_path / "zoo"
    make(out)
    before = (out / "manifest.json").read_text()
    for change, message in [
        ({"steps": 4}, "option steps: zoo has 3, requested 4"),
        ({"seed": 9}, "seed: zoo has 3, requested 9"),
        ({"n": 12}, "n: zoo has 11, requested 12"),
        ({"shard_size": 5}, "shard_size"),
        ({"init": "shared"}, "option init"),
    ]:
        with pytest.raises(SneError, match=message):
            make(out, **change)
    assert (out / "manifest.json").read_text() == before


def test_refuses_non_empty_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SneError, match="not empty and holds no zoo"):
        make(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_arguments(tmp_path):
    with pytest.raises(SneError, match="unknown zoo recipe 'cnn'.*sine-inr"):
        generate_zoo("cnn", tmp_path / "z", n=2, seed=0, options={}, command="", progress=False)
    with pytest.raises(SneError, match="positive integer"):
        make(tmp_path / "z", n=0)
    with pytest.raises(SneError, match="non-negative"):
        make(tmp_path / "z", seed=-1)
    with pytest.raises(SneError, match="init"):
        make(tmp_path / "z", init="random")
    assert not (tmp_path / "z").exists()


def test_open_errors(tmp_path):
    with pytest.raises(SneError, match="does not exist"):
        Zoo.open(tmp_path / "missing")
    with pytest.raises(SneError, match="no manifest.json"):
        Zoo.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SneError, match="corrupt"):
        Zoo.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(SneError, match="corrupt: missing"):
        Zoo.open(tmp_path)

    zoo = make(tmp_path / "zoo")
    with pytest.raises(SneError, match="unknown target 'accuracy'.*frequency"):
        zoo.target_values("accuracy", [0])
    with pytest.raises(SneError, match="unknown split 'validation'"):
        zoo.split_ids("validation")
    with pytest.raises(SneError, match="id 11 is not in the zoo"):
        zoo.records([11])
    (zoo.path / "metadata.parquet").unlink()
    with pytest.raises(SneError, match="metadata.parquet is missing or corrupt"):
        Zoo.open(zoo.path)


def test_killed_cli_generation_resumes_to_the_same_zoo(tmp_path):
    """A real `sne zoo generate` process is SIGKILLed after its first shard, then run again."""
    n, steps, shard_size = 9, 300, 3
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "sne", "zoo", "generate", "sine-inr", "--n", str(n), "--out", str(out),
        "--steps", str(steps), "--seed", "5", "--shard-size", str(shard_size),
    ]
    # One thread in the child and here: a precaution, so thread scheduling cannot reorder float sums.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_shard = out / "shards" / "shard-00000.parquet"
    deadline = time.monotonic() + 60
    while not first_shard.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_shard.exists(), process.stderr.read().decode()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False  # killed before the end
    assert not (out / "shards" / "shard-00002.parquet").exists()

    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    zoo = Zoo.open(out)
    assert len(zoo) == n and zoo.metadata["id"].tolist() == list(range(n))

    torch.set_num_threads(1)
    reference = generate_zoo(
        "sine-inr", tmp_path / "reference", n=n, seed=5, options={"steps": steps}, command="", progress=False,
        shard_size=shard_size,
    )
    assert_same_zoo(out, reference.path)
