"""Neuron permutations must leave real networks' outputs unchanged."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sne.errors import SneError
from sne.weights.record import NetworkRecord, make_layer
from sne.weights import (
    canonical_signs,
    canonicalize_hidden,
    canonicalize_signs,
    flip_signs,
    permute_hidden,
    random_equivalent_permutation,
    random_permutations,
    random_sign_flips,
    record_from_module,
    record_from_state_dict,
    shuffle_incoming,
    sign_flip_groups,
    supports_permutation,
    supports_sign_flips,
)
from sne.zoo.siren import Siren


def assert_equivalent(model: nn.Module, inputs: torch.Tensor, seed: int = 0) -> None:
    """Permute ``model`` through its record and check it computes the same function with new weights."""
    model = model.double().eval()
    record = record_from_module(model, inputs.double())
    permuted = random_equivalent_permutation(record, torch.Generator().manual_seed(seed))
    twin = copy.deepcopy(model)
    twin.load_state_dict(permuted.to_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(twin(inputs.double()), model(inputs.double()), rtol=1e-10, atol=1e-10)
    assert any(not torch.equal(a.weight, b.weight) for a, b in zip(record.layers[:-1], permuted.layers[:-1]))
    assert permuted.architecture == record.architecture
    assert [l.activation for l in permuted.layers] == [l.activation for l in record.layers]
    assert permuted.source == record.source


def test_mlp_equivalence():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    assert_equivalent(model, torch.randn(32, 3))


def test_cnn_global_pool_equivalence():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    assert_equivalent(model, torch.randn(4, 1, 9, 9))


def test_cnn_flatten_equivalence():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(72, 10), nn.ReLU(), nn.Linear(10, 3),
    )  # fmt: skip
    assert_equivalent(model, torch.randn(4, 1, 9, 9))  # 9x9 -> 7x7 -> 3x3 map of 8 channels


def test_conv1d_and_conv3d_equivalence():
    torch.manual_seed(3)
    conv1d = nn.Sequential(
        nn.Conv1d(2, 6, 5), nn.ReLU(), nn.Conv1d(6, 4, 1), nn.Tanh(), nn.Conv1d(4, 4, 3),
        nn.Flatten(), nn.Linear(4 * 10, 3),
    )  # fmt: skip
    assert_equivalent(conv1d, torch.randn(5, 2, 16))
    conv3d = nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8, 2)
    )  # fmt: skip
    assert_equivalent(conv3d, torch.randn(2, 1, 5, 5, 5))


RANDOM_MLPS = given(
    widths=st.lists(st.integers(2, 9), min_size=2, max_size=5),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)


def random_tanh_mlp(widths: list[int], bias: bool, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        modules += [nn.Linear(fan_in, fan_out, bias=bias), nn.Tanh()]
    modules.append(nn.Linear(widths[-1], 2))
    return nn.Sequential(*modules).double()


def assert_same_function(model: nn.Module, weights: NetworkRecord, inputs: torch.Tensor) -> None:
    """``model`` loaded with ``weights`` computes what ``model`` computes."""
    twin = copy.deepcopy(model)
    twin.load_state_dict(weights.to_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(twin(inputs), model(inputs), rtol=1e-10, atol=1e-10)


@settings(max_examples=15, deadline=None)
@RANDOM_MLPS
def test_random_mlp_equivalence(widths, bias, seed):
    model = random_tanh_mlp(widths, bias, seed)
    permuted = random_equivalent_permutation(record_from_module(model), torch.Generator().manual_seed(seed))
    assert_same_function(model, permuted, torch.randn(8, widths[0], dtype=torch.float64))


def test_explicit_permutation_moves_rows_and_columns():
    record = record_from_state_dict(
        {"a.weight": torch.arange(6.0).reshape(3, 2), "a.bias": torch.tensor([0.0, 1.0, 2.0]),
         "b.weight": torch.arange(3.0).reshape(1, 3)}
    )  # fmt: skip
    perm = torch.tensor([2, 0, 1])
    out = permute_hidden(record, [perm])
    assert torch.equal(out.layers[0].weight, torch.tensor([[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(out.layers[0].bias, torch.tensor([2.0, 0.0, 1.0]))
    assert torch.equal(out.layers[1].weight, torch.tensor([[2.0, 0.0, 1.0]]))
    # The input record is untouched, and None / identity leaves the weights as they are.
    assert torch.equal(record.layers[0].bias, torch.tensor([0.0, 1.0, 2.0]))
    assert permute_hidden(record, [None, None]).to_state_dict().keys() == record.to_state_dict().keys()
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(permute_hidden(record, [None]).layers, record.layers))


def test_random_permutations_shape():
    record = record_from_module(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Linear(4, 2)))
    perms = random_permutations(record, torch.Generator().manual_seed(0))
    assert [None if p is None else sorted(p.tolist()) for p in perms] == [list(range(5)), list(range(4)), None]
    single = record_from_module(nn.Sequential(nn.Linear(3, 2)))
    assert random_permutations(single, torch.Generator()) == [None]
    unchanged = random_equivalent_permutation(single, torch.Generator())
    assert torch.equal(unchanged.layers[0].weight, single.layers[0].weight)


def test_meta_kept():
    record = record_from_module(nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)))
    record = replace(record, meta={"zoo": "x"})
    assert random_equivalent_permutation(record, torch.Generator().manual_seed(0)).meta == {"zoo": "x"}


def _chain(*shapes: tuple[int, ...]):
    """Layers taken as a chain whatever their shapes (a bare state_dict would refuse mismatches)."""
    return NetworkRecord(tuple(make_layer(f"l{i}", i, torch.ones(shape)) for i, shape in enumerate(shapes)), "net")


def test_refusals():
    record = _chain((4, 3), (2, 4))
    with pytest.raises(SneError, match="outputs of the last layer 'l1' cannot be permuted"):
        permute_hidden(record, [None, torch.tensor([1, 0])])
    with pytest.raises(SneError, match="not a permutation of 4 indices"):
        permute_hidden(record, [torch.tensor([0, 0, 1, 2])])
    with pytest.raises(SneError, match="not a permutation of 4 indices"):
        permute_hidden(record, [torch.tensor([0, 1, 2])])
    with pytest.raises(SneError, match="3 permutations given for 2 layers"):
        permute_hidden(record, [None, None, None])

    skip = record.with_layers([record.layers[0], replace(record.layers[1], skip_from=(0,))])
    assert not supports_permutation(skip)
    with pytest.raises(SneError, match="^net: cannot permute a network with skip connections"):
        random_equivalent_permutation(skip, torch.Generator())

    for broken in [_chain((4, 3), (2, 5)), _chain((4, 3), (2, 8)), _chain((4, 3, 3, 3), (2, 6, 3, 3))]:
        assert not supports_permutation(broken)
        with pytest.raises(SneError, match="do not chain"):
            random_permutations(broken, torch.Generator())
    assert supports_permutation(_chain((4, 3, 3, 3), (2, 36)))
    assert supports_permutation(record)


@settings(max_examples=15, deadline=None)
@RANDOM_MLPS
def test_canonical_form_is_shared_by_all_equivalent_permutations(widths, bias, seed):
    model = random_tanh_mlp(widths, bias, seed)
    record = record_from_module(model)
    canonical = canonicalize_hidden(record)
    permuted = random_equivalent_permutation(record, torch.Generator().manual_seed(seed))
    for a, b in zip(canonicalize_hidden(permuted).layers, canonical.layers):
        assert torch.equal(a.weight, b.weight)
    # The canonical network is the same function, with its hidden neurons in ascending norm.
    assert_same_function(model, canonical, torch.randn(8, widths[0], dtype=torch.float64))
    for layer in canonical.layers[:-1]:
        key = layer.weight.square().sum(1) + (layer.bias.square() if layer.bias is not None else 0)
        assert (key.diff() >= 0).all()


def test_canonical_form_of_a_cnn_keeps_its_function():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.Tanh(),
        nn.Flatten(), nn.Linear(72, 10), nn.ReLU(), nn.Linear(10, 3),
    ).double().eval()  # fmt: skip
    inputs = torch.randn(4, 1, 9, 9, dtype=torch.float64)
    assert_same_function(model, canonicalize_hidden(record_from_module(model, inputs)), inputs)


def test_shuffle_incoming_keeps_each_neurons_weights_and_changes_the_function():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3),
    ).double().eval()  # fmt: skip
    record = record_from_module(model, torch.randn(1, 2, 9, 9, dtype=torch.float64))
    shuffled = shuffle_incoming(record, torch.Generator().manual_seed(0))
    again = shuffle_incoming(record, torch.Generator().manual_seed(0))
    for before, after, repeat in zip(record.layers, shuffled.layers, again.layers):
        assert torch.equal(after.weight, repeat.weight) and torch.equal(after.bias, before.bias)
        rows = before.weight.shape[0]
        # Kernels move whole: every neuron keeps its multiset of incoming kernels.
        for row in range(rows):
            kept = sorted(map(tuple, before.weight[row].reshape(before.weight.shape[1], -1).tolist()))
            assert sorted(map(tuple, after.weight[row].reshape(after.weight.shape[1], -1).tolist())) == kept
        # 2 inputs: all six rows keep their order with probability 1/64 (and do for this seed).
        assert before.in_features == 2 or not torch.equal(after.weight, before.weight)
    twin = copy.deepcopy(model)
    twin.load_state_dict(shuffled.to_state_dict(), strict=True)
    inputs = torch.randn(4, 2, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert (twin(inputs) - model(inputs)).abs().max() > 1e-3


@settings(max_examples=15, deadline=None)
@RANDOM_MLPS
def test_random_sign_flips_keep_the_function(widths, bias, seed):
    model = random_tanh_mlp(widths, bias, seed)
    record = record_from_module(model)
    assert len(sign_flip_groups(record)) == len(widths) - 1  # every hidden layer of a tanh MLP
    flipped = random_sign_flips(record, torch.Generator().manual_seed(seed))
    assert_same_function(model, flipped, torch.randn(8, widths[0], dtype=torch.float64))
    both = random_sign_flips(random_equivalent_permutation(record, torch.Generator().manual_seed(seed)),
                             torch.Generator().manual_seed(seed + 1))
    assert_same_function(model, both, torch.randn(8, widths[0], dtype=torch.float64))


def test_sign_flips_of_a_siren_keep_its_function_and_change_its_weights():
    torch.manual_seed(0)
    model = Siren().double()
    inputs = torch.linspace(-1, 1, 50, dtype=torch.float64).unsqueeze(1)
    record = record_from_module(model, inputs)
    assert [l.activation for l in record.layers] == ["sine", "sine", "identity"]
    flipped = random_sign_flips(record, torch.Generator().manual_seed(0))
    assert_same_function(model, flipped, inputs)
    assert not torch.equal(flipped.layers[0].weight, record.layers[0].weight)
    torch.testing.assert_close(flipped.layers[0].weight.abs(), record.layers[0].weight.abs(), rtol=0, atol=0)
    assert torch.equal(flipped.layers[2].bias, record.layers[2].bias)  # the output is never flipped


@settings(max_examples=15, deadline=None)
@RANDOM_MLPS
def test_canonical_signs_are_shared_by_every_flipped_and_permuted_copy(widths, bias, seed):
    model = random_tanh_mlp(widths, bias, seed)
    record = record_from_module(model)
    canonical = canonicalize_signs(record)
    inputs = torch.randn(8, widths[0], dtype=torch.float64)
    assert_same_function(model, canonical, inputs)
    for layer in canonical.layers[:-1]:  # every hidden neuron's incoming weights: non-negative sum of cubes
        assert (layer.weight.pow(3).sum(1) >= 0).all()
    generator = torch.Generator().manual_seed(seed)
    flipped = random_sign_flips(record, generator)
    for a, b in zip(canonicalize_signs(flipped).layers, canonical.layers):
        assert torch.equal(a.weight, b.weight) and (a.bias is None or torch.equal(a.bias, b.bias))
    # Signs settle per neuron, so permuting first and canonicalising commute.
    perms = random_permutations(record, generator)
    for a, b in zip(canonicalize_signs(permute_hidden(flipped, perms)).layers,
                    permute_hidden(canonical, perms).layers):
        assert torch.equal(a.weight, b.weight)


def test_canonical_signs_leave_networks_without_odd_activations_alone():
    relu = record_from_module(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))
    assert canonical_signs(relu) == [] and canonicalize_signs(relu) is relu


def test_explicit_sign_flip_negates_a_row_its_bias_and_the_next_column():
    record = record_from_module(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double())
    flipped = flip_signs(record, [torch.tensor([1, -1, 1])])
    assert torch.equal(flipped.layers[0].weight[1], -record.layers[0].weight[1])
    assert torch.equal(flipped.layers[0].bias[1], -record.layers[0].bias[1])
    assert torch.equal(flipped.layers[1].weight[:, 1], -record.layers[1].weight[:, 1])
    assert torch.equal(flipped.layers[0].weight[[0, 2]], record.layers[0].weight[[0, 2]])
    with pytest.raises(SneError, match="signs for outputs of '0' are not 3 values of \\+1 or -1"):
        flip_signs(record, [torch.tensor([1, 0, 1])])
    with pytest.raises(SneError, match="2 sign vectors given for 1 flippable layers"):
        flip_signs(record, [torch.ones(3), torch.ones(3)])


def test_only_odd_activations_of_linear_chains_flip():
    relu = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    record = record_from_module(relu)
    assert [g.size for g in sign_flip_groups(record)] == [4] and "'2'" in sign_flip_groups(record)[0].name
    assert supports_sign_flips(record)
    # Max pooling between convolutions is not odd, and a record may not say it is there.
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 25, 2))
    assert not supports_sign_flips(record_from_module(conv, torch.randn(1, 1, 7, 7)))
    bare = record_from_state_dict(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).state_dict())
    assert not supports_sign_flips(bare)  # activations unknown
    assert random_sign_flips(bare, torch.Generator()) is bare
