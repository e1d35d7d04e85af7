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
