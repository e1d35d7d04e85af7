"""A record's structure (everything but its tensor values) survives JSON, and with the tensors
gives back the same record; malformed structures and mismatched tensors are one-line errors."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from network_families import FAMILIES, HELD_OUT_VARIANTS, MORE_WIRINGS
from sne.errors import SneError
from sne.weights.record import (
    Layer, NetworkRecord, make_layer, record_from_structure, record_structure, structure_problem,
)
from sne.weights.trace import record_from_module

ALL_FAMILIES = {**FAMILIES, **dict(HELD_OUT_VARIANTS), **dict(MORE_WIRINGS)}


@lru_cache(maxsize=None)
def traced(name: str) -> NetworkRecord:
    module, example = ALL_FAMILIES[name]()
    return record_from_module(module, example, source=name)


def assert_same_record(a: NetworkRecord, b: NetworkRecord) -> None:
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert (x.name, x.kind, x.level, x.activation, x.skip_from, x.inputs) == \
            (y.name, y.kind, y.level, y.activation, y.skip_from, y.inputs)
        assert dict(x.attrs) == dict(y.attrs)
        assert list(x.tensors) == list(y.tensors)
        for name in x.tensors:
            assert x.tensors[name].dtype == y.tensors[name].dtype
            assert torch.equal(x.tensors[name], y.tensors[name])
    assert a.symmetries == b.symmetries


@pytest.mark.parametrize("name", sorted(ALL_FAMILIES))
def test_round_trip_through_json_gives_back_the_record(name):
    record = traced(name)
    structure = record_structure(record)
    assert json.loads(json.dumps(structure)) == structure
    assert structure_problem(structure) is None
    rebuilt = record_from_structure(json.loads(json.dumps(structure)), record.to_state_dict(), source="x#1")
    assert_same_record(rebuilt, record)
    assert rebuilt.source == "x#1" and rebuilt.symmetries  # traced networks carry their symmetries
    assert record_structure(rebuilt) == structure


def test_chain_record_round_trips_and_tuple_attrs_become_lists():
    layers = [make_layer("fc1", 0, torch.randn(4, 3), torch.randn(4), "relu"),
              make_layer("fc2", 1, torch.randn(2, 4), None, "identity")]
    layers[0] = Layer(**{**layers[0].__dict__, "attrs": {"stride": (1, 2), "nested": {"k": (3,)}}})
    record = NetworkRecord(tuple(layers))
    structure = record_structure(record)
    assert structure["symmetries"] is None
    assert structure["layers"][0]["attrs"] == {"stride": [1, 2], "nested": {"k": [3]}}
    rebuilt = record_from_structure(structure, record.to_state_dict(), source="s")
    assert rebuilt.symmetries is None and rebuilt.layers[1].bias is None
    assert dict(rebuilt.layers[0].attrs) == {"stride": [1, 2], "nested": {"k": [3]}}
    assert record_structure(rebuilt) == structure


def test_integer_buffers_keep_their_dtype_and_floats_are_cast():
    record = traced("resnet")
    state = record.to_state_dict()
    assert any(t.dtype == torch.int64 for t in state.values())
    rebuilt = record_from_structure(record_structure(record), {k: t.double() if t.is_floating_point() else t
                                                               for k, t in state.items()}, source="s")
    assert_same_record(rebuilt, record)
    wrong = {k: t.float() for k, t in state.items()}
    with pytest.raises(SneError, match=r"^s: tensor '.*num_batches_tracked' is float32 where the structure says int64$"):
        record_from_structure(record_structure(record), wrong, source="s")


def test_mismatched_tensors_are_one_line_errors_naming_the_source():
    record = traced("vit")
    structure, state = record_structure(record), record.to_state_dict()
    key = next(iter(state))
    with pytest.raises(SneError, match=rf"^zoo#3: tensor '{key}' has shape \(.*\) where the structure says"):
        record_from_structure(structure, {**state, key: state[key][..., :1]}, source="zoo#3")
    with pytest.raises(SneError, match=rf"^zoo#3: no tensor '{key}'"):
        record_from_structure(structure, {k: v for k, v in state.items() if k != key}, source="zoo#3")
    with pytest.raises(SneError, match=r"^zoo#3: tensor 'stray' is not in the network's structure$"):
        record_from_structure(structure, {**state, "stray": torch.zeros(1)}, source="zoo#3")
    nan = state[key].clone()
    nan.view(-1)[0] = float("nan")
    with pytest.raises(SneError, match="non-finite"):
        record_from_structure(structure, {**state, key: nan}, source="zoo#3")


def test_attrs_that_are_not_json_are_refused():
    layer = Layer("fc", "linear", 0, {"weight": torch.randn(2, 2)}, attrs={"dtype": torch.float32})
    with pytest.raises(SneError, match=r"layer 'fc' attribute 'dtype' is a dtype"):
        record_structure(NetworkRecord((layer,), source="m"))
    layer = Layer("fc", "linear", 0, {"weight": torch.randn(2, 2)}, attrs={"eps": float("nan")})
    with pytest.raises(SneError, match="not finite"):
        record_structure(NetworkRecord((layer,), source="m"))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False) | st.sampled_from(["weight", "x", "linear"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "size", "layer"]), inner, max_size=3),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(["gpt", "resnet", "cross-attention"]))
def test_any_corrupted_structure_is_read_or_refused_in_one_line(data, name):
    """Replace one node of a valid structure with arbitrary JSON: reading either works or is a SneError."""
    record = traced(name)
    structure = record_structure(record)
    paths = list(_paths(structure))[1:]
    path = data.draw(st.sampled_from(paths))
    node = structure
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(JSON)
    try:
        rebuilt = record_from_structure(structure, record.to_state_dict(), source="fuzz")
    except SneError as error:
        assert "\n" not in str(error) and str(error).startswith("fuzz: ")
    else:
        assert isinstance(rebuilt, NetworkRecord)
