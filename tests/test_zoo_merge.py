"""`sne zoo merge`: the N parts of a sharded generation join into exactly the zoo one process makes;
complete zoos of any architectures join with their splits, provenance and the union of targets;
bad input is one line and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sne.errors import SneError
from sne.zoo import Zoo, generate_zoo, write_records_zoo
from sne.zoo.merge import merge_zoos
from sne.zoo.summary import zoo_summary
from sne.zoo.sine_inr import SineInr
from conftest import run_cli
from test_record_structure import assert_same_record
from test_zoo_v2 import TARGETS, mlp, rows_for, traced
from network_families import resnet

FAST = {"steps": 3, "points": 64, "group_size": 4}
N, SHARD = 11, 2  # 6 shards


def make(out: Path, part=None, seed: int = 3) -> Zoo | None:
    return generate_zoo("sine-inr", out, n=N, seed=seed, options=FAST, command="test", progress=False,
                        shard_size=SHARD, part=part)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Zoo:
    return make(tmp_path_factory.mktemp("whole") / "zoo")


def assert_identical_zoos(a: Zoo, b: Zoo) -> None:
    """Same shard files (tensors bit for bit, rows), metadata and manifest but for how each was made."""
    names = sorted(p.name for p in (a.path / "shards").iterdir())
    assert names == sorted(p.name for p in (b.path / "shards").iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            ta, tb = load_file(str(a.path / "shards" / name)), load_file(str(b.path / "shards" / name))
            assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(a.path / "shards" / name), pd.read_parquet(b.path / "shards" / name))
    pd.testing.assert_frame_equal(a.metadata, b.metadata)
    how = {"command", "created", "completed", "merged_from", "part_commands"}
    assert {k: v for k, v in a.manifest.items() if k not in how} == {k: v for k, v in b.manifest.items() if k not in how}


def test_parts_merge_into_the_zoo_one_process_makes(whole, tmp_path, capsys):
    parts = [tmp_path / f"part{k}" for k in range(3)]
    assert make(parts[0], part=(0, 3)) is None
    code, _, err = run_cli(["zoo", "generate", "sine-inr", "--out", str(parts[1]), "--n", str(N), "--seed", "3",
                            "--steps", "3", "--group-size", "4", "-o", "points=64", "--shard-size", str(SHARD),
                            "--shard", "2/3"], capsys)
    assert code == 0, err
    make(parts[2], part=(2, 3))
    # Contiguous blocks of shards: part 2 holds shards 2 and 3, networks 4..7.
    assert sorted(p.name for p in (parts[1] / "shards").glob("*.safetensors")) == ["shard-00002.safetensors",
                                                                                   "shard-00003.safetensors"]
    part_manifest = json.loads((parts[1] / "manifest.json").read_text())
    assert part_manifest["part"] == {"index": 1, "count": 3} and part_manifest["complete"] is True
    code, _, err = run_cli(["zoo", "merge", str(parts[2]), str(parts[0]), str(parts[1]), "--out",
                            str(tmp_path / "joined")], capsys)
    assert code == 0, err
    joined = Zoo.open(tmp_path / "joined")
    assert_identical_zoos(joined, whole)
    assert joined.manifest["merged_from"] == [str(p) for p in parts] and "part" not in joined.manifest
    # how the zoo was made: each part's generate command (in part order), then the merge
    commands = joined.manifest["part_commands"]
    assert commands[0] == "test" and "--shard 2/3" in commands[1] and commands[2] == "test"
    made_by = zoo_summary(joined)["command"].split(" && ")
    assert made_by[:3] == commands and made_by[3].startswith("sne zoo merge")
    for a, b in zip(joined.records(range(N)), whole.records(range(N))):
        assert_same_record(a, b)


def test_a_part_is_resumable_and_is_no_zoo_until_merged(whole, tmp_path, monkeypatch, capsys):
    calls = []
    original = SineInr.generate_shard

    def fail_on_second(self, ids, *args):
        calls.append(ids.tolist())
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(self, ids, *args)

    monkeypatch.setattr(SineInr, "generate_shard", fail_on_second)
    with pytest.raises(RuntimeError):
        make(tmp_path / "p0", part=(0, 2))
    shards = tmp_path / "p0" / "shards"
    assert (shards / "shard-00000.parquet").exists() and not (shards / "shard-00001.parquet").exists()
    monkeypatch.setattr(SineInr, "generate_shard", original)
    make(tmp_path / "p0", part=(0, 2))  # resumes: only the shard that failed is made
    make(tmp_path / "p1", part=(1, 2))
    with pytest.raises(SneError, match=r"p0 is part 1 of 2 of a zoo generated with --shard; join all 2 parts with"):
        Zoo.open(tmp_path / "p0")
    code, _, err = run_cli(["train", "--zoo", str(tmp_path / "p1"), "--target", "frequency", "--out",
                            str(tmp_path / "run"), "--epochs", "1"], capsys)
    assert code == 2 and "is part 2 of 2 of a zoo generated with --shard" in err and len(err.strip().splitlines()) == 1
    assert_identical_zoos(merge_zoos([tmp_path / "p0", tmp_path / "p1"], tmp_path / "joined"), whole)
    with pytest.raises(SneError, match=r"already holds a different zoo \(part: zoo has \{'index': 0, 'count': 2\}, "
                                       r"requested \{'index': 0, 'count': 3\}\)"):
        make(tmp_path / "p0", part=(0, 3))


def test_bad_parts_are_refused_and_leave_nothing(tmp_path):
    parts = [tmp_path / f"p{k}" for k in range(3)]
    for k, path in enumerate(parts):
        make(path, part=(k, 3))
    out = tmp_path / "out"
    cases = [
        ([parts[0], parts[2]], r"^part 2 of 3 is missing \(2 of 3 parts given\)"),
        ([parts[0], parts[1], parts[1]], r"p1 is given twice"),
    ]
    other = tmp_path / "other"
    make(other, part=(1, 3), seed=4)
    cases.append(([parts[0], other, parts[2]], r"other is a part of another generation than .*p0 \(its seed differs\)"))
    whole = make(tmp_path / "whole")
    cases.append(([parts[0], whole.path], r"p0 is one part of a sharded generation but .*whole is not"))
    for sources, message in cases:
        with pytest.raises(SneError, match=message):
            merge_zoos(sources, out)
        assert not out.exists() and not list(tmp_path.glob(".out.*"))
    (parts[1] / "shards" / "shard-00003.safetensors").write_bytes(b"torn")
    with pytest.raises(SneError, match=r"p1/shards/shard-00003.safetensors \(or its parquet\) is missing or corrupt; "
                                       r"generate part 2 of 3 again"):
        merge_zoos(parts, out)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(SneError, match="make only 6 shards, so at most 6 parts"):
        make(tmp_path / "many", part=(0, 7))


# ------------------------------------------------------------------------------ complete zoos
@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Zoo:
    records = [mlp(i) if i % 2 == 0 else traced(resnet, i) for i in range(5)]
    return write_records_zoo(tmp_path_factory.mktemp("mixed") / "zoo", recipe="mixed", options={}, records=records,
                             rows=rows_for(records, diverged={3}), targets=TARGETS, dataset={"name": "none"},
                             splits=["train", "test", "val", "train", "test"], shard_size=2)


def test_merging_zoos_keeps_networks_splits_and_provenance(whole, mixed, tmp_path):
    other_sine = make(tmp_path / "sine4", seed=4)
    merged = merge_zoos([whole.path, mixed.path, other_sine.path], tmp_path / "merged", command="sne zoo merge ...",
                        shard_size=4)
    sources = [whole, mixed, other_sine]
    assert len(merged) == 2 * N + 5
    # The two sine zoos share one architecture; the mixed zoo brings two.
    assert [a["name"] for a in merged.architectures] == ["sine-inr", "mixed-0", "mixed-1"]
    assert merged.manifest["split_method"] == "given" and merged.manifest["recipe"] == "merge"
    offsets = [0, N, N + 5]
    assert [p["ids"] for p in merged.manifest["merged_from"]] == [[0, N], [N, N + 5], [N + 5, 2 * N + 5]]
    assert [p["path"] for p in merged.manifest["merged_from"]] == [str(z.path) for z in sources]
    meta = merged.metadata
    for s, (zoo, offset) in enumerate(zip(sources, offsets)):
        ids = np.arange(offset, offset + len(zoo))
        assert (meta.loc[ids, "source_zoo"] == s).all()
        assert meta.loc[ids, "source_id"].tolist() == list(range(len(zoo)))
        assert meta.loc[ids, "split"].tolist() == zoo.metadata["split"].tolist()
        kept = [i for i in range(len(zoo)) if zoo.metadata.at[i, "split"] != "excluded"]
        for a, b in zip(merged.records(offset + np.array(kept)), zoo.records(kept)):
            assert_same_record(a, b)
    assert merged.manifest["diverged"] == 1 and merged.metadata.at[N + 3, "split"] == "excluded"
    # The union of targets: each is NaN where its source zoo lacked it, and refused there.
    assert merged.targets["frequency"]["missing"] == 5 and merged.targets["accuracy"]["missing"] == 2 * N
    np.testing.assert_array_equal(merged.target_values("frequency", [0, N + 5]),
                                  [whole.target_values("frequency", [0])[0], other_sine.target_values("frequency", [0])[0]])
    with pytest.raises(SneError, match=r"target 'frequency' is missing for 1 of the 2 networks asked for"):
        merged.target_values("frequency", [0, N])
    # Merging a merged zoo again keeps going: provenance points at the zoo it came from.
    again = merge_zoos([merged.path, mixed.path], tmp_path / "again")
    assert again.metadata["source_id"].tolist()[: len(merged)] == list(range(len(merged)))
    assert len(again.architectures) == 3


def test_conflicting_targets_and_bad_merges_are_refused(whole, mixed, tmp_path):
    records = [mlp(i) for i in range(3)]
    conflicting = write_records_zoo(tmp_path / "conflict", recipe="c", options={}, records=records,
                                    rows=[{"frequency": i % 2} for i in range(3)],
                                    targets={"frequency": {"kind": "class", "classes": ["low", "high"]}}, dataset={})
    out = tmp_path / "out"
    with pytest.raises(SneError, match=r"^target 'frequency' has kind 'regression' in .*zoo but 'class' in .*conflict; "
                                       r"merge zoos whose targets agree$"):
        merge_zoos([whole.path, conflicting.path], out)
    with pytest.raises(SneError, match=r"--out .*zoo is one of the zoos to merge"):
        merge_zoos([whole.path, mixed.path], mixed.path)
    with pytest.raises(SneError, match=r"no zoo at .*missing: the directory does not exist"):
        merge_zoos([whole.path, tmp_path / "missing"], out)
    with pytest.raises(SneError, match="given twice"):
        merge_zoos([whole.path, whole.path], out)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
