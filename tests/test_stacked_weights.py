"""StackedWeights, the batched view of records of one architecture: stacking, the flat layout that
fitted statistics and trained checkpoints rely on, and the way back to records."""

from __future__ import annotations

import pytest
import torch

from sne.errors import SneError
from sne.weights import StackedWeights, with_parameter_values
from sne.weights.record import NetworkRecord, make_layer


def conv_net(seed: int) -> NetworkRecord:
    """conv2d 3x2x2x2 with bias -> linear 4x3 without -> linear 1x4 with bias."""
    g = torch.Generator().manual_seed(seed)
    shapes_and_bias = [((3, 2, 2, 2), True), ((4, 3), False), ((1, 4), True)]
    layers = [make_layer(f"l{i}", i, torch.randn(*shape, generator=g),
                         torch.randn(shape[0], generator=g) if has_bias else None)
              for i, (shape, has_bias) in enumerate(shapes_and_bias)]
    return NetworkRecord(tuple(layers), source=f"conv{seed}")


def test_flat_view_is_each_layers_weight_then_its_bias_in_record_order():
    records = [conv_net(0), conv_net(1)]
    flat = StackedWeights.from_records(records, torch.float64).flat()
    by_hand = torch.stack([
        torch.cat([r.layers[0].weight.reshape(-1), r.layers[0].bias,
                   r.layers[1].weight.reshape(-1),  # no bias: nothing after it
                   r.layers[2].weight.reshape(-1), r.layers[2].bias]).double()
        for r in records
    ])
    assert flat.dtype == torch.float64 and flat.shape == (2, 24 + 3 + 12 + 4 + 1)
    assert torch.equal(flat, by_hand)


def test_layers_stack_with_zero_biases_where_a_layer_has_none():
    records = [conv_net(0), conv_net(1)]
    stacked = StackedWeights.from_records(records, torch.float32)
    assert stacked.has_bias == (True, False, True)
    assert [tuple(w.shape) for w in stacked.weights] == [(2, 3, 2, 2, 2), (2, 4, 3), (2, 1, 4)]
    assert [tuple(b.shape) for b in stacked.biases] == [(2, 3), (2, 4), (2, 1)]
    assert not stacked.biases[1].any()
    assert torch.equal(stacked.weights[0][1], records[1].layers[0].weight)
    with pytest.raises(SneError, match="empty batch"):
        StackedWeights.from_records([], torch.float32)


def test_flat_values_and_stacked_values_go_back_into_the_records():
    records = [conv_net(0), conv_net(1)]
    stacked = StackedWeights.from_records(records, torch.float32)
    again = StackedWeights.from_flat(stacked.flat(), records[0].architecture)
    assert again.has_bias == stacked.has_bias
    for view in (stacked, again):
        for out, record in zip(view.to_records(records), records):
            assert out.source == record.source and out.architecture == record.architecture
            for a, b in zip(out.layers, record.layers):
                assert a.name == b.name and torch.equal(a.weight, b.weight)
                assert (a.bias is None) == (b.bias is None) and (a.bias is None or torch.equal(a.bias, b.bias))
    # A value given for a layer without a bias is dropped: the record's layout stays.
    values = [(torch.zeros_like(l.weight), torch.ones(l.out_features)) for l in records[0].layers]
    replaced = with_parameter_values(records[0], values)
    assert [l.bias is None for l in replaced.layers] == [False, True, False]
    assert not replaced.layers[1].weight.any() and replaced.layers[2].bias.eq(1).all()
