"""Derived zoos (sne zoo derive): same splits and targets, transformed weights, results kept apart."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from sne.errors import SneError
from sne.weights import shuffle_incoming
from sne.zoo import Zoo, derive_seed
from sne.zoo.derive import derive_zoo


@pytest.fixture(scope="module")
def derived(shared_sine_zoo, tmp_path_factory):
    return derive_zoo(shared_sine_zoo.path, tmp_path_factory.mktemp("derived") / "shuffled", "shuffle-incoming", seed=4)


def test_keeps_splits_targets_and_metadata(shared_sine_zoo, derived):
    assert derived.metadata.equals(shared_sine_zoo.metadata)
    assert derived.targets == shared_sine_zoo.targets and derived.architecture == shared_sine_zoo.architecture
    assert derived.manifest["options"] == {**shared_sine_zoo.manifest["options"], "variant": "shuffle-incoming",
                                           "variant_seed": 4}
    assert derived.manifest["dataset"]["derived_from"]["path"] == str(shared_sine_zoo.path)


def test_each_network_is_its_source_through_the_seeded_transform(shared_sine_zoo, derived):
    for network_id in (0, 57, 199):
        source = shared_sine_zoo.records([network_id])[0]
        expected = shuffle_incoming(source, torch.Generator().manual_seed(derive_seed(4, "shuffle-incoming", network_id)))
        for a, b in zip(derived.records([network_id])[0].layers, expected.layers):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_refusals_leave_nothing_behind(shared_sine_zoo, derived, tmp_path):
    with pytest.raises(SneError, match="unknown zoo transform 'nope'"):
        derive_zoo(shared_sine_zoo.path, tmp_path / "a", "nope")
    with pytest.raises(SneError, match="already derived"):
        derive_zoo(derived.path, tmp_path / "b", "shuffle-incoming")
    with pytest.raises(SneError, match="already exists"):
        derive_zoo(shared_sine_zoo.path, derived.path, "shuffle-incoming")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert Zoo.open(derived.path).metadata.equals(shared_sine_zoo.metadata)


def test_cli_derives_and_benchmark_results_go_to_their_own_file(shared_sine_zoo, tmp_path, capsys):
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "derive", str(shared_sine_zoo.path), "--transform", "shuffle-incoming",
                               "--out", str(out)], capsys)
    assert code == 0 and "zoo with 200 networks (shuffle-incoming)" in " ".join(err.split()), err
    code, _, _ = run_cli(["bench", "inr", "--zoo", str(out), "--encoders", "statnn", "--epochs", "1",
                          "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu"],
                         capsys)
    assert code == 0
    written = json.loads((tmp_path / "results" / "inr_frequency_shared_shuffle-incoming.json").read_text())
    assert written["variant"] == "shuffle-incoming" and written["init"] == "shared"
    assert [p.name for p in (tmp_path / "results").glob("*.json")] == ["inr_frequency_shared_shuffle-incoming.json"]


def test_encoder_options_make_their_own_run_and_row(shared_sine_zoo, tmp_path, capsys):
    common = ["bench", "inr", "--zoo", str(shared_sine_zoo.path), "--encoders", "statnn", "--epochs", "1",
              "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--device", "cpu"]
    assert run_cli(common, capsys)[0] == 0
    assert run_cli([*common, "-o", "statnn.hidden=[16]"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["statnn_hidden-16_lambda0_seed0",
                                                                      "statnn_lambda0_seed0"]
    rows = json.loads((tmp_path / "results" / "inr_frequency_shared.json").read_text())["entries"]
    assert sorted(json.dumps(r["encoder_options_given"]) for r in rows) == ['{"hidden": [16]}', "{}"]


def test_a_longer_run_of_a_configuration_is_a_row_beside_the_shorter_one(shared_sine_zoo, tmp_path, capsys):
    def bench(epochs: int, runs: str) -> list[dict]:
        args = ["bench", "inr", "--zoo", str(shared_sine_zoo.path), "--encoders", "statnn", "--epochs", str(epochs),
                "--runs", str(tmp_path / runs), "--results", str(tmp_path / "results"), "--device", "cpu"]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        return json.loads((tmp_path / "results" / "inr_frequency_shared.json").read_text())["entries"]

    bench(1, "runs-1")
    before = (tmp_path / "results" / "inr_frequency_shared.json").read_bytes()
    # Other epochs in the same run directory: refused, saying which flag takes another, nothing written.
    args = ["bench", "inr", "--zoo", str(shared_sine_zoo.path), "--encoders", "statnn", "--epochs", "2",
            "--runs", str(tmp_path / "runs-1"), "--results", str(tmp_path / "results"), "--device", "cpu"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "epochs: 1 -> 2" in err and "sne bench --runs" in err and "Traceback" not in err
    assert (tmp_path / "results" / "inr_frequency_shared.json").read_bytes() == before
    assert sorted(r["epochs"] for r in bench(2, "runs-2")) == [1, 2]
    # Measuring the same epochs again replaces that row only.
    assert sorted(r["epochs"] for r in bench(1, "runs-1")) == [1, 2]
