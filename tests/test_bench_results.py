"""Results-file helpers: which zoos count as the same data, and the paper-ordering check."""

from __future__ import annotations

import pytest

from sne.bench.paper import compare_ordering
from sne.bench.results import zoo_identity


def _summary(**options) -> dict:
    return {"recipe": "sine-inr", "n": 5000, "seed": 0, "options": {"init": "independent", "steps": 500, **options}}


def test_zoos_made_on_other_hardware_are_the_same_data():
    gpu = _summary(device="cuda", compile=True, group_size=500)
    cpu = _summary(device="cpu", compile=False, group_size=50)
    assert zoo_identity(gpu) == zoo_identity(cpu)


@pytest.mark.parametrize("change", [{"steps": 250}, {"init": "shared"}])
def test_zoos_with_other_recipe_options_are_other_data(change):
    assert zoo_identity(_summary()) != zoo_identity({**_summary(), "options": {**_summary()["options"], **change}})
    assert zoo_identity(_summary()) != zoo_identity({**_summary(), "seed": 1})


def test_a_zoo_imported_from_another_directory_is_the_same_data_and_other_files_are_not():
    def imported(directory: str, digest: str) -> dict:
        return {"recipe": "folder-import", "n": 200, "seed": 0, "targets_digest": digest,
                "options": {"source": f"{directory}/foreign", "targets": f"{directory}/foreign/targets.csv", "arch": None}}

    assert zoo_identity(imported("/work/main/runs/s4", "e96a")) == zoo_identity(imported("/home/u/data", "e96a"))
    assert zoo_identity(imported("/work/main/runs/s4", "e96a")) != zoo_identity(imported("/work/main/runs/s4", "0cf6"))
    # A generated zoo is told apart by its recipe's options, not by its targets (see the test below).
    assert zoo_identity({**_summary(), "targets_digest": "a"}) == zoo_identity({**_summary(), "targets_digest": "b"})


def test_same_ranking_has_tau_one_and_no_discordant_pairs():
    paper = {"a": 0.1, "b": 0.5, "c": 0.9}
    check = compare_ordering({"a": 1.0, "b": 2.0, "c": 3.0, "extra": 0.0}, paper)
    assert check["encoders"] == ["a", "b", "c"]
    assert check["kendall_tau"] == pytest.approx(1.0)
    assert check["discordant"] == []


def test_swapped_pair_is_reported():
    check = compare_ordering({"a": 2.0, "b": 1.0, "c": 3.0}, {"a": 0.1, "b": 0.5, "c": 0.9})
    assert check["discordant"] == [("a", "b")]
    assert check["kendall_tau"] == pytest.approx(1 / 3)


def test_fewer_than_two_shared_encoders_gives_no_tau():
    assert compare_ordering({"a": 1.0}, {"a": 0.1, "b": 0.2})["kendall_tau"] is None


def test_rows_keep_naming_the_encoder_they_measured_when_a_default_changes(monkeypatch):
    from sne.bench.runs import configuration_name, options_key
    from sne.encoders import sne as sne_module

    # Then: the chunk stage at full width by default, no default changed yet; rows trained as SNE
    # trains by default (training switches are tests/test_training_defaults.py's).
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", None)
    monkeypatch.setattr(sne_module.SNEEncoder, "defaults_of_older_configs", {})
    monkeypatch.setattr(sne_module.SNEEncoder, "default_train_options", {})
    old_row = {"encoder": "sne", "encoder_options_given": {}}  # written before rows recorded every option
    narrow = {"encoder": "sne", "encoder_options_given": {"chunk_hidden": 32},
              "encoder_options_resolved": {**sne_module.DEFAULT_OPTIONS, "chunk_hidden": 32}}
    assert [configuration_name(r) for r in (old_row, narrow)] == ["sne", "sne_chunk_hidden-32"]
    # Now: a release narrows the chunk stage by default.
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", 32)
    monkeypatch.setattr(sne_module.SNEEncoder, "defaults_of_older_configs", {"chunk_hidden": None})
    new_row = {"encoder": "sne", "encoder_options_given": {},
               "encoder_options_resolved": dict(sne_module.DEFAULT_OPTIONS)}
    assert [configuration_name(r) for r in (old_row, narrow, new_row)] == ["sne_chunk_hidden-null", "sne", "sne"]
    assert options_key(narrow) == options_key(new_row) != options_key(old_row)


def test_targets_digest_tells_zoo_generations_apart(shared_sine_zoo):
    import copy

    from sne.bench.results import targets_digest, zoo_identity, zoo_summary

    again = copy.copy(shared_sine_zoo)
    again.metadata = shared_sine_zoo.metadata.copy()
    assert targets_digest(again) == targets_digest(shared_sine_zoo)
    again.metadata.loc[0, "frequency"] += 1e-6  # one network fitted with other rounding
    assert targets_digest(again) != targets_digest(shared_sine_zoo)
    assert zoo_identity(zoo_summary(again)) == zoo_identity(zoo_summary(shared_sine_zoo))


def test_an_encoding_map_of_a_handful_of_networks_is_drawn(tmp_path):
    """t-SNE needs more points than its perplexity; a tiny test split must not end a benchmark."""
    import numpy as np

    from sne.plots import embedding_map

    for n in (1, 2, 3, 6):
        codes = np.random.default_rng(n).normal(size=(n, 8))
        assert embedding_map(codes, ["a"] * n, tmp_path / f"map{n}.png", "codes").stat().st_size > 0


def test_zoos_of_one_recipe_and_dataset_made_with_other_options_have_other_labels(tmp_path):
    from types import SimpleNamespace

    from sne.bench.results import zoo_label

    def zoo(**options):
        return SimpleNamespace(manifest={"recipe": "small-cnn", "options": {"dataset": "digits", **options}},
                               path=tmp_path / "z")

    assert zoo_label(zoo()) == "small-cnn/digits"
    assert zoo_label(zoo(kernel=7)) == "small-cnn/digits kernel=7"
    assert zoo_label(zoo(views=10, epochs=8)) == "small-cnn/digits views=10"


def test_a_preset_that_became_the_defaults_names_no_option_and_one_that_did_not_still_does(monkeypatch):
    from sne.bench.runs import configuration_name
    from sne.encoders import sne as sne_module

    recorded = {"encoder": "sne", "encoder_options_given": {"preset": "fast", "pool_statistics": False},
                "encoder_options_resolved": {**sne_module.DEFAULT_OPTIONS, **sne_module.PRESETS["fast"],
                                             "pool_statistics": False}}
    unrecorded = {"encoder": "sne", "encoder_options_given": {"preset": "fast"}}  # before rows recorded options
    wide = {"encoder": "sne", "encoder_options_given": {"preset": "wide"}}
    monkeypatch.setattr(sne_module.SNEEncoder, "defaults_of_older_configs", {"chunk_hidden": None, "chunk_sab": None})
    monkeypatch.setattr(sne_module.SNEEncoder, "default_train_options", {})
    # Today fast is the defaults' chunk stage: its rows are the defaults', also those that recorded nothing.
    assert [configuration_name(r) for r in (recorded, unrecorded)] == ["sne_pool_statistics-false", "sne"]
    assert configuration_name(wide) == "sne_preset-wide"
    # Were the defaults wide again, fast would name itself.
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_hidden", None)
    monkeypatch.setitem(sne_module.DEFAULT_OPTIONS, "chunk_sab", None)
    assert configuration_name(unrecorded) == "sne_preset-fast"
