"""Zoo format 2: networks of any and of several architectures in one zoo, stacked per architecture
within each shard; format-1 zoos still read as before; manifests validated as strictly as before."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from network_families import gpt, resnet
from sne.errors import SneError
from sne.weights.record import NetworkRecord, make_layer, record_structure
from sne.weights.trace import record_from_module
from sne.zoo import Zoo, write_records_zoo, write_zoo
from test_record_structure import assert_same_record

TARGETS = {"accuracy": {"kind": "unit_interval"}, "size": {"kind": "regression"}}


def mlp(seed: int, hidden: int = 8) -> NetworkRecord:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    return record_from_module(module, torch.randn(2, 4), source=f"mlp{seed}")


def traced(factory, seed: int) -> NetworkRecord:
    module, example = factory(seed=seed)
    return record_from_module(module, example, source=f"{factory.__name__}{seed}")


@pytest.fixture(scope="module")
def mixed_records() -> list[NetworkRecord]:
    """Interleaved MLPs, ResNets with BatchNorm, and GPT-style transformers, 11 networks."""
    makers = [lambda s: mlp(s), lambda s: traced(resnet, s), lambda s: traced(gpt, s)]
    return [makers[i % 3](i) for i in range(11)]


def rows_for(records, diverged=()):
    return [{"accuracy": 0.1 * (i % 10), "size": float(r.num_parameters), "name": f"net{i}",
             **({"diverged": True} if i in diverged else {})} for i, r in enumerate(records)]


def write_mixed(out: Path, records, **kwargs) -> Zoo:
    kwargs.setdefault("rows", rows_for(records))
    return write_records_zoo(out, recipe="mixed", options={"note": "test"}, records=records, targets=TARGETS,
                             dataset={"name": "none"}, seed=5, command="test", shard_size=4, **kwargs)


def test_mixed_zoo_round_trip(tmp_path, mixed_records):
    zoo = write_mixed(tmp_path / "zoo", mixed_records)
    assert len(zoo) == 11 and zoo.manifest["format_version"] == 2 and zoo.manifest["split_method"] == "seeded"
    assert [a["name"] for a in zoo.architectures] == ["mixed-0", "mixed-1", "mixed-2"]
    assert zoo.architecture_of(range(11)).tolist() == [i % 3 for i in range(11)]
    assert zoo.metadata["architecture"].tolist() == [i % 3 for i in range(11)]
    for k, entry in enumerate(zoo.architectures):
        assert entry["structure"] == record_structure(mixed_records[k])
    # Within shard 1 (ids 4..7: archs 1, 2, 0, 1) each architecture stacks its networks in id order.
    shard = load_file(str(tmp_path / "zoo" / "shards" / "shard-00001.safetensors"))
    assert shard["a1/conv1.weight"].shape[0] == 2 and shard["a0/0.weight"].shape[0] == 1
    assert torch.equal(shard["a1/conv1.weight"][1], mixed_records[7].to_state_dict()["conv1.weight"])
    assert zoo.metadata["position"].tolist()[4:8] == [0, 0, 0, 1]
    ids = [10, 3, 0, 5, 7]
    for network_id, record in zip(ids, zoo.records(ids)):
        assert_same_record(record, mixed_records[network_id])
        assert record.source == f"{zoo.path}#{network_id}" and record.meta == {"id": network_id}
    assert sorted(np.concatenate([zoo.split_ids(s) for s in ("train", "val", "test")]).tolist()) == list(range(11))
    with pytest.raises(SneError, match=r"holds 3 architectures \(mixed-0, mixed-1, mixed-2\), not one chain"):
        zoo.architecture
    assert not list(tmp_path.glob(".*partial"))


def test_given_splits_names_and_diverged_rows(tmp_path, mixed_records):
    records = mixed_records[:6]
    splits = ["test", "train", "val", "train", "train", "test"]
    names = ["mlp", "resnet", "gpt", "mlp", "resnet-wide", "gpt"]
    zoo = write_mixed(tmp_path / "zoo", records, rows=rows_for(records, diverged={2}), splits=splits,
                      architecture_names=names)
    assert zoo.manifest["split_method"] == "given"
    assert zoo.metadata["split"].tolist() == ["test", "train", "excluded", "train", "train", "test"]
    assert zoo.manifest["splits"] == {"train": 3, "val": 0, "test": 2} and zoo.manifest["diverged"] == 1
    # One name per network: an architecture takes its first network's name.
    assert [a["name"] for a in zoo.architectures] == ["mlp", "resnet", "gpt"]
    zoo = write_mixed(tmp_path / "zoo2", records, architecture_names=["a", "a", "b"])
    assert [a["name"] for a in zoo.architectures] == ["a", "a-2", "b"]
    with pytest.raises(SneError, match="2 architecture names for 6 networks of 3 architectures"):
        write_mixed(tmp_path / "zoo3", records, architecture_names=["a", "b"])


def test_one_chain_architecture_still_has_a_layer_list(tmp_path):
    records = [mlp(s) for s in range(3)]
    zoo = write_mixed(tmp_path / "zoo", records)
    assert [a["name"] for a in zoo.architectures] == ["mixed"]
    assert zoo.architecture == [
        {"name": "0", "kind": "linear", "level": 0, "weight_shape": [8, 4], "has_bias": True, "activation": "relu"},
        {"name": "2", "kind": "linear", "level": 1, "weight_shape": [3, 8], "has_bias": True, "activation": "identity"},
    ]


def test_per_network_activation_is_data_not_architecture(tmp_path):
    def chain(seed, activation):
        g = torch.Generator().manual_seed(seed)
        return NetworkRecord((make_layer("fc1", 0, torch.randn(5, 2, generator=g), torch.randn(5, generator=g), activation),
                              make_layer("fc2", 1, torch.randn(1, 5, generator=g), None, "identity")), source=f"n{seed}")
    activations = ["relu", "tanh", "relu", None]
    records = [chain(s, a) for s, a in enumerate(activations)]
    targets = {"act": {"kind": "class", "classes": ["relu", "tanh"]}}
    rows = [{"act": [0, 1, 0, 1][i]} for i in range(4)]
    zoo = write_records_zoo(tmp_path / "zoo", recipe="r", options={}, records=records, rows=rows, targets=targets,
                            dataset={}, activation_from={"fc1": "act"})
    assert len(zoo.architectures) == 1 and zoo.architectures[0]["activation_from"] == {"fc1": "act"}
    assert [r.layers[0].activation for r in zoo.records(range(4))] == ["relu", "tanh", "relu", "tanh"]
    rows[0] = {"act": 1}
    with pytest.raises(SneError, match=r"^n0: layer 'fc1' has activation 'relu' but its row's 'act' says 'tanh'$"):
        write_records_zoo(tmp_path / "bad", recipe="r", options={}, records=records, rows=rows, targets=targets,
                          dataset={}, activation_from={"fc1": "act"})
    assert not (tmp_path / "bad").exists()


def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, mixed_records):
    records = mixed_records[:4]
    broken = records[1].to_state_dict()
    key = next(k for k, t in broken.items() if t.is_floating_point())
    layers = list(records[1].layers)
    first = layers[0]
    layers[0] = first.with_tensors(**{first.weight_name: torch.full_like(first.weight, float("nan"))})
    nan_records = [records[0], records[1].with_layers(layers), *records[2:]]
    with pytest.raises(SneError, match=r"^shard 0: non-finite values in 'a1/.*'; nothing was written"):
        write_mixed(tmp_path / "zoo", nan_records)
    assert not (tmp_path / "zoo").exists() and not list(tmp_path.iterdir())
    # The same network flagged diverged is kept out of every split instead.
    zoo = write_mixed(tmp_path / "zoo", nan_records, rows=rows_for(nan_records, diverged={1}))
    with pytest.raises(SneError, match="diverged"):
        zoo.records([1])
    for bad, message in [
        ({"rows": rows_for(records)[:3]}, "4 networks but 3 rows"),
        ({"rows": [{**r, "split": "train"} for r in rows_for(records)]}, "row 0 sets 'split'"),
        ({"splits": ["train", "val", "test", "holdout"]}, "split 'holdout' is not one of"),
        ({"splits": ["train"]}, "4 networks but 1 splits"),
    ]:
        with pytest.raises(SneError, match=message):
            write_mixed(tmp_path / "other", records, **bad)
        assert not (tmp_path / "other").exists()
    with pytest.raises(SneError, match="already exists and is not an empty directory"):
        write_mixed(tmp_path / "zoo", records[:3])


# ------------------------------------------------------------------------------ format 1
def write_v1_zoo(root: Path, architecture, tensors, rows, shard_size: int, targets) -> None:
    """A format-1 zoo exactly as the first format's writer laid it out (no layout columns,
    tensors under their state_dict keys)."""
    n = len(rows)
    (root / "shards").mkdir(parents=True)
    splits = ["train", "val", "test"]
    frames = []
    for index in range(math.ceil(n / shard_size)):
        part = slice(index * shard_size, min(n, (index + 1) * shard_size))
        save_file({k: t[part].contiguous() for k, t in tensors.items()},
                  str(root / "shards" / f"shard-{index:05d}.safetensors"))
        frame = pd.DataFrame([{"id": i, **rows[i]} for i in range(part.start, part.stop)])
        frame.insert(1, "split", [splits[i % 3] for i in range(part.start, part.stop)])
        frame.to_parquet(root / "shards" / f"shard-{index:05d}.parquet", index=False)
        frames.append(frame)
    pd.concat(frames, ignore_index=True).to_parquet(root / "metadata.parquet", index=False)
    manifest = {
        "format_version": 1, "recipe": "old", "options": {}, "n": n, "seed": 0, "shard_size": shard_size,
        "split_fractions": [0.6, 0.2, 0.2], "architecture": architecture, "targets": targets, "dataset": {},
        "splits": {"train": 3, "val": 2, "test": 2}, "command": "", "complete": True, "diverged": 0,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


V1_ARCHITECTURE = [
    {"name": "conv", "kind": "conv2d", "level": 0, "weight_shape": [4, 1, 3, 3], "has_bias": True,
     "activation": None, "activation_from": "act", "stride": 2},
    {"name": "fc", "kind": "linear", "level": 1, "weight_shape": [2, 4], "has_bias": False, "activation": "identity"},
]
V1_TARGETS = {"acc": {"kind": "unit_interval"}, "act": {"kind": "class", "classes": ["relu", "tanh"]}}


def v1_zoo(root: Path) -> tuple[dict, list]:
    g = torch.Generator().manual_seed(0)
    tensors = {"conv.weight": torch.randn(7, 4, 1, 3, 3, generator=g), "conv.bias": torch.randn(7, 4, generator=g),
               "fc.weight": torch.randn(7, 2, 4, generator=g)}
    rows = [{"acc": i / 10, "act": i % 2, "lr": 0.1 * i} for i in range(7)]
    write_v1_zoo(root, V1_ARCHITECTURE, tensors, rows, 3, V1_TARGETS)
    return tensors, rows


def test_format_1_zoo_reads_as_before(tmp_path):
    tensors, rows = v1_zoo(tmp_path / "old")
    zoo = Zoo.open(tmp_path / "old")
    assert zoo.architecture == V1_ARCHITECTURE
    assert list(zoo.metadata.columns) == ["id", "split", "acc", "act", "lr"]
    assert [a["name"] for a in zoo.architectures] == ["old"] and zoo.architecture_of([6]).tolist() == [0]
    for network_id, record in zip([6, 0, 4], zoo.records([6, 0, 4])):
        assert [l.name for l in record.layers] == ["conv", "fc"] and record.symmetries is None
        assert [l.kind for l in record.layers] == ["conv2d", "linear"]
        assert [l.activation for l in record.layers] == [["relu", "tanh"][network_id % 2], "identity"]
        assert torch.equal(record.layers[0].weight, tensors["conv.weight"][network_id])
        assert torch.equal(record.layers[0].bias, tensors["conv.bias"][network_id])
        assert record.layers[1].bias is None
    assert zoo.split_ids("val").tolist() == [1, 4]
    np.testing.assert_array_equal(zoo.target_values("acc", [5, 1]), [0.5, 0.1])


def test_write_zoo_keeps_the_recipe_layer_list_and_reads_like_format_1(tmp_path):
    tensors, rows = v1_zoo(tmp_path / "old")
    new = write_zoo(tmp_path / "new", recipe="old", options={}, architecture=V1_ARCHITECTURE, targets=V1_TARGETS,
                    dataset={}, tensors=tensors, rows=rows, shard_size=3)
    old = Zoo.open(tmp_path / "old")
    assert new.architecture == old.architecture and new.architectures == old.architectures
    assert new.architectures[0]["activation_from"] == {"conv": "act"}
    for a, b in zip(new.records(range(7)), old.records(range(7))):
        assert_same_record(a, b)


# ------------------------------------------------------------------------------ manifest validation
def corrupt(zoo: Path, change) -> None:
    manifest = json.loads((zoo / "manifest.json").read_text())
    change(manifest)
    (zoo / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("architectures"), "missing architectures"),
    (lambda m: m.update(architectures=[]), "architectures must be a non-empty list"),
    (lambda m: m["architectures"][0].pop("structure"), "architecture 0 needs a name and a structure"),
    (lambda m: m["architectures"][1].update(name="mixed-0"), "name 'mixed-0' appears twice"),
    (lambda m: m["architectures"][1]["structure"]["layers"][0].update(kind="lstm"), "'mixed-1': layer 0 needs a name, a kind"),
    (lambda m: m["architectures"][0]["structure"]["layers"][0]["tensors"][0].update(shape=[8, "4"]), "without a name, shape"),
    (lambda m: m["architectures"][2]["structure"]["symmetries"][0]["members"][0].update(offset=10**6), "reaches past"),
    (lambda m: m["architectures"][0].update(activation_from={"0": "accuracy"}), "not a layer without activation"),
    (lambda m: m["architectures"][0].update(layers=[]), "architecture must be a non-empty list"),
    (lambda m: m.update(split_method="random"), "split_method must be one of seeded, given"),
    (lambda m: m.update(part={"index": 2, "count": 2}), "part must be an object with an index below its count"),
    (lambda m: m.update(format_version=3), "has zoo format version 3; this sne"),
])
def test_corrupt_manifest_is_one_line_naming_the_file(tmp_path, mixed_records, change, message):
    zoo = write_mixed(tmp_path / "zoo", mixed_records[:3])
    corrupt(zoo.path, change)
    with pytest.raises(SneError, match=message) as error:
        Zoo.open(zoo.path)
    assert str(error.value).startswith(str(zoo.path / "manifest.json")) and "\n" not in str(error.value)


def test_corrupt_layout_columns_are_refused(tmp_path, mixed_records):
    zoo = write_mixed(tmp_path / "zoo", mixed_records[:3])
    metadata = zoo.metadata.copy()
    metadata.loc[1, "architecture"] = 7
    metadata.to_parquet(zoo.path / "metadata.parquet", index=False)
    with pytest.raises(SneError, match="metadata.parquet is corrupt: an architecture index or position out of range"):
        Zoo.open(zoo.path)
    metadata.loc[1, "architecture"] = 0  # in range, but network 0 holds position 0 of architecture 0
    metadata.to_parquet(zoo.path / "metadata.parquet", index=False)
    with pytest.raises(SneError, match="metadata.parquet is corrupt: architectures and positions do not fit the shards"):
        Zoo.open(zoo.path)
    zoo.metadata.to_parquet(zoo.path / "metadata.parquet", index=False)
    shard = zoo.path / "shards" / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    save_file({k: v for k, v in tensors.items() if k != "a0/0.weight"}, str(shard))
    with pytest.raises(SneError, match=r"shard-00000.safetensors does not match the manifest: no tensor 'a0/0.weight'$"):
        Zoo.open(zoo.path).records([0])
    save_file({**tensors, "a1/conv1.weight": tensors["a1/conv1.weight"][:0]}, str(shard))
    with pytest.raises(SneError, match=r"does not match the manifest: no row 0 in 'a1/conv1.weight'$"):
        Zoo.open(zoo.path).records([1])
    metadata.drop(columns="position").to_parquet(zoo.path / "metadata.parquet", index=False)
    with pytest.raises(SneError, match="no column 'position'"):
        Zoo.open(zoo.path)


# ------------------------------------------------------------------------------ property
POOL_SIZE = 4


@pytest.fixture(scope="module")
def pool() -> list[list[NetworkRecord]]:
    """POOL_SIZE different networks of each of three architectures."""
    return [[mlp(s) for s in range(POOL_SIZE)], [mlp(s, hidden=5) for s in range(POOL_SIZE)],
            [traced(gpt, s) for s in range(POOL_SIZE)]]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(choices=st.lists(st.tuples(st.integers(0, 2), st.integers(0, POOL_SIZE - 1)), min_size=1, max_size=9),
       shard_size=st.integers(1, 4), given_splits=st.booleans(), data=st.data())
def test_any_mix_of_architectures_reads_back_exactly(pool, choices, shard_size, given_splits, data):
    records = [pool[k][s] for k, s in choices]
    splits = data.draw(st.lists(st.sampled_from(["train", "val", "test"]), min_size=len(records),
                                max_size=len(records))) if given_splits else None
    with tempfile.TemporaryDirectory() as tmp:
        zoo = write_records_zoo(Path(tmp) / "zoo", recipe="p", options={}, records=records, rows=rows_for(records),
                                targets=TARGETS, dataset={}, shard_size=shard_size, splits=splits)
        zoo = Zoo.open(zoo.path)
        order = data.draw(st.permutations(range(len(records))))
        for network_id, record in zip(order, zoo.records(order)):
            assert_same_record(record, records[network_id])
        # Architectures are numbered by first appearance, one per distinct structure.
        firsts = list(dict.fromkeys(k for k, _ in choices))
        assert zoo.architecture_of(range(len(records))).tolist() == [firsts.index(k) for k, _ in choices]
        if splits is not None:
            assert zoo.metadata["split"].tolist() == splits
