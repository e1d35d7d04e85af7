"""The SNE encoder: chunking, masks, invariance to padding and batch composition, ablations, training."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from sne.encoders import batch_to, build_encoder, build_encoder_from_config
from sne.encoders.chunking import kernel_coordinates, pad_chunk, row_chunk_layout
from sne.bench.runs import options_apart_from_defaults
from sne.encoders.sne import DEFAULT_OPTIONS, PRESETS, SNEEncoder
from sne.errors import SneError
from sne.weights.record import Layer, NetworkRecord, make_layer

SMALL = {"hidden": 16, "heads": 2, "num_sab": 1, "out_dim": 8}
SWITCHES = [name for name in DEFAULT_OPTIONS if name.startswith("use_")]
#: SNE given no features of the neurons a weight links (what the paper's row-as-set chunks see).
NO_NEURON_FEATURES = {"use_source_features": False, "use_own_neuron_features": False}


def mlp(widths: list[int], generator: torch.Generator, scale: float = 1.0, dtype=torch.float32) -> NetworkRecord:
    layers = [
        make_layer(
            f"fc{i}",
            i,
            scale * torch.randn(n_out, n_in, generator=generator, dtype=dtype),
            scale * torch.randn(n_out, generator=generator, dtype=dtype),
        )
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))
    ]
    return NetworkRecord(tuple(layers), source=f"mlp{widths}")


def convnet(shapes: list[tuple[int, ...]], generator: torch.Generator, dtype=torch.float32) -> NetworkRecord:
    """Layers with the given weight shapes (any kind), biased on every other layer."""
    layers = [
        make_layer(
            f"layer{i}",
            i,
            torch.randn(*shape, generator=generator, dtype=dtype),
            torch.randn(shape[0], generator=generator, dtype=dtype) if i % 2 == 0 else None,
        )
        for i, shape in enumerate(shapes)
    ]
    return NetworkRecord(tuple(layers), source=f"net{shapes}")


def siren(generator: torch.Generator, widths=(1, 32, 32, 1), dtype=torch.float64, w0: dict | None = None
          ) -> NetworkRecord:
    """A SIREN-like MLP whose record names its sine activations (``w0``: {layer: factor} attributes)."""
    layers = [make_layer(f"fc{i}", i, torch.randn(o, n, generator=generator, dtype=dtype) / n,
                         torch.randn(o, generator=generator, dtype=dtype), "sine" if i < len(widths) - 2 else "identity")
              for i, (n, o) in enumerate(zip(widths[:-1], widths[1:]))]
    layers = [replace(layer, attrs={"w0": (w0 or {})[i]}) if i in (w0 or {}) else layer for i, layer in enumerate(layers)]
    return NetworkRecord(tuple(layers), source="siren")


def mixed_records(dtype=torch.float32) -> list[NetworkRecord]:
    g = torch.Generator().manual_seed(0)
    return [
        mlp([1, 32, 32, 1], g, dtype=dtype),
        mlp([3, 7, 5, 9, 2], g, dtype=dtype),
        convnet([(8, 1, 3, 3), (6, 8, 5, 5), (4, 6, 3, 3), (10, 4)], g, dtype=dtype),
        convnet([(5, 2, 4), (3, 5, 1), (2, 3)], g, dtype=dtype),  # conv1d
        convnet([(4, 3, 7, 7), (2, 4, 1, 1)], g, dtype=dtype),  # 7x7 and 1x1
        convnet([(3, 2, 3, 3, 3), (2, 3)], g, dtype=dtype),  # conv3d
    ]


def sirens_and_their_permutations(g: torch.Generator, n: int) -> tuple[list[NetworkRecord], list[NetworkRecord]]:
    """``n`` float64 MLPs 1 -> 32 -> 32 -> 1 and a random hidden-neuron permutation of each."""
    from sne.weights import permute_hidden

    records = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(n)]
    return records, [permute_hidden(r, [torch.randperm(32, generator=g), torch.randperm(32, generator=g), None])
                     for r in records]


def encode(encoder: SNEEncoder, records: list[NetworkRecord]) -> torch.Tensor:
    """Codes in eval mode: batch normalisation then uses running statistics, so a network's code
    does not depend on the rest of its batch."""
    return encoder.eval()(encoder.prepare(records))


@torch.no_grad()
def weight_outputs(encoder: SNEEncoder, generator: torch.Generator, *batches: list[NetworkRecord]) -> list:
    """``encoder``'s weight-space outputs for each list of records, its weight head given random
    float64 values (it starts at zero, the identity edit, which would compare nothing)."""
    encoder.make_weight_head()
    for parameter in encoder.weight_head.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return [encoder.forward_weights(encoder.prepare_weights(records)) for records in batches]


def single_layer(weight: torch.Tensor, bias: torch.Tensor | None = None) -> NetworkRecord:
    return NetworkRecord((make_layer("layer", 0, weight, bias),))


# --- chunking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out_features", "in_features", "chunks", "elements_per_chunk"),
    [
        (32, 1, 1, [32]),
        (32, 32, 32, [32] * 32),
        (10, 100, 40, [32, 32, 32, 4] * 10),
        (16, 3, 2, [30, 18]),  # 10 whole rows of 3 per chunk
        (33, 1, 2, [32, 1]),
    ],
)
def test_weight_chunk_counts_and_masks(out_features, in_features, chunks, elements_per_chunk):
    batch = pad_chunk([single_layer(torch.randn(out_features, in_features))], chunk_size=32)
    assert batch.element_mask.shape == (chunks, 32)
    assert batch.element_mask.sum(dim=1).tolist() == elements_per_chunk
    # Real elements fill each chunk from the front.
    assert all(row[: n].all() and not row[n:].any() for row, n in zip(batch.element_mask, elements_per_chunk))
    assert batch.part_mask.shape == (1, chunks) and batch.part_mask.all()


def test_bias_of_33_takes_two_chunks():
    batch = pad_chunk([single_layer(torch.randn(33, 4), torch.randn(33))], chunk_size=32)
    bias_chunks = batch.chunk_type == 1  # linear (kind 0), bias part
    assert bias_chunks.sum() == 2
    assert batch.element_mask[bias_chunks].sum(dim=1).tolist() == [32, 1]
    assert batch.layer_mask.tolist() == [[True, True]]


def test_row_split_keeps_values_in_order():
    weight = torch.arange(1000.0).reshape(10, 100)
    batch = pad_chunk([single_layer(weight)], chunk_size=32)
    dense = torch.zeros(40 * 32).index_copy(0, batch.element_slot[0], batch.tap_values[0][:, 0]).view(40, 32)
    assert torch.equal(dense[1, :32], weight[0, 32:64])
    assert torch.equal(dense[3, :4], weight[0, 96:])
    assert torch.equal(dense[4, :32], weight[1, :32])
    assert not batch.row_slot.any()  # one row per chunk


def test_rows_packed_whole_with_row_slots():
    layout = row_chunk_layout(rows=5, row_length=3, chunk_size=8)  # 2 rows per chunk
    assert layout.num_chunks == 3
    assert layout.slot.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18]
    assert layout.row_slot.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]


def test_conv_elements_are_kernels_grouped_by_shape():
    g = torch.Generator().manual_seed(0)
    record = convnet([(16, 1, 3, 3), (16, 16, 3, 3), (4, 16, 5, 5), (10, 4)], g)
    batch = pad_chunk([record], chunk_size=32)
    shapes = sorted(tuple(v.shape) for v in batch.tap_values)
    # 3x3: 16 + 256 elements; 5x5: 64; one tap: biases (16 + 4) and the linear weight (40).
    assert shapes == [(60, 1), (64, 25), (272, 9)]
    assert kernel_coordinates((3, 3))[0].tolist() == [-1.0, -1.0]
    assert kernel_coordinates((1, 5))[:, 0].eq(0).all()
    assert int(batch.element_mask.sum()) == 16 + 256 + 64 + 40 + 16 + 4


def test_batch_index_bookkeeping():
    g = torch.Generator().manual_seed(0)
    batch = pad_chunk([mlp([2, 3], g), mlp([1, 40, 40, 1], g)], chunk_size=32)
    assert batch.network_mask.tolist() == [[True, False, False], [True, True, True]]
    assert batch.layer_level.tolist() == [0, 0, 1, 2]
    # Parts: weight, bias of each layer. 40x40: rows of 40 > 32 split in 2 chunks each -> 80 chunks.
    assert batch.part_mask.sum(dim=1).tolist() == [1, 1, 2, 2, 80, 2, 2, 1]
    assert batch.chunk_network_slot[:3].tolist() == [0, 1, 89]  # rows of a (2, 89) padded tensor
    assert batch.network_chunk_mask.sum(dim=1).tolist() == [2, 89]
    assert batch.part_layer_slot.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert batch.layer_network_slot.tolist() == [0, 3, 4, 5]


# --- the encoder --------------------------------------------------------------------------------


def test_output_shape_for_mixed_architectures():
    torch.manual_seed(0)
    encoder = SNEEncoder()
    records = mixed_records()
    z = encode(encoder, records)
    assert z.shape == (len(records), DEFAULT_OPTIONS["out_dim"])
    assert torch.isfinite(z).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"use_hierarchy": False}, {"use_set_functions": False}, {"chunk_micro_batch": 3}, {"layer_norm": True},
     {"layer_norm": "pre"}, {"source_code_rounds": 2, "chunk_micro_batch": 3}, {"level_origin": "output"},
     {"level_origin": "output", "use_hierarchy": False}, {"qk_norm": True},
     {"chunk_link_passes": 2, "source_code_rounds": 1, "chunk_micro_batch": 3}],
    ids=["default", "flat", "no-sets", "micro-batch", "layer-norm", "pre-layer-norm", "source-codes", "levels-from-output",
         "levels-from-output-flat", "qk-norm", "chunk-links"],
)
def test_code_does_not_depend_on_batch_composition(options):
    """A network's code is the same alone and beside a larger network of another architecture."""
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, chunk_size=8, **options).double()
    records = mixed_records(torch.float64)
    g = torch.Generator().manual_seed(1)
    large = mlp([5, 70, 70, 3], g, dtype=torch.float64)
    together = encode(encoder, [large, *records[::-1]])
    for i, record in enumerate(records[::-1]):
        alone = encode(encoder, [record])
        torch.testing.assert_close(together[i + 1], alone[0], atol=1e-9, rtol=0)


def test_incoming_order_is_not_encoded_but_neuron_grouping_is():
    """The order decision of sne.encoders.chunking: see its module docstring."""
    torch.manual_seed(0)
    weight = torch.randn(4, 3, dtype=torch.float64)
    columns_permuted = weight[:, [2, 0, 1]]
    regrouped = weight.clone()
    regrouped[0, 0], regrouped[1, 0] = weight[1, 0], weight[0, 0]  # same chunk, other neuron
    for use_row_slot in (True, False):
        encoder = SNEEncoder(**SMALL, use_row_slot_encoding=use_row_slot).double()
        codes = encode(encoder, [single_layer(w) for w in (weight, columns_permuted, regrouped)])
        torch.testing.assert_close(codes[0], codes[1], atol=1e-9, rtol=0)
        assert torch.allclose(codes[0], codes[2], atol=1e-9, rtol=0) != use_row_slot


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_ablation_builds_and_runs(switch):
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **{switch: False})
    z = encode(encoder, mixed_records())
    assert z.shape == (6, SMALL["out_dim"]) and torch.isfinite(z).all()
    z.sum().backward()


@pytest.mark.parametrize(
    "options",
    [{}, {"use_hierarchy": False}, {"use_set_functions": False}, {"use_source_features": True},
     {"use_input_positions": True}, {"use_own_neuron_features": True}, {"source_code_rounds": 2},
     {"pool_seeds": 3}, {"pool_statistics": False}, {"qk_norm": True}, {"chunk_link_passes": 2}],
)
def test_gradients_reach_every_parameter(options):
    """Every parameter but the merge tokens, which chains do not use (tests/test_encoders_any_network.py)."""
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, **options)
    for link in encoder.chunk_links or ():  # they start at zero, where the earlier passes get no gradient
        torch.nn.init.normal_(link.weight, std=0.1)
    records = mixed_records() + [siren(torch.Generator().manual_seed(0), dtype=torch.float32)]  # sine: phases
    encode(encoder, records).square().sum().backward()
    for name, parameter in encoder.named_parameters():
        if name != "merge_tokens":
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("options", [{}, {"use_source_features": True, "use_input_positions": True,
                                          "use_own_neuron_features": True}, {"source_code_rounds": 2},
                                     {"level_origin": "output"}, {"chunk_link_passes": 1, "source_code_rounds": 1}])
def test_micro_batching_gives_the_same_codes_and_gradients(options):
    torch.manual_seed(0)
    # float64: summation order differs between the two paths, and float32 gradients differ by more
    # than default tolerances once codes are well spread.
    plain = SNEEncoder(**SMALL, **options).double()
    micro = SNEEncoder(**SMALL, **options, chunk_micro_batch=5).double()
    micro.load_state_dict(plain.state_dict())
    records = mixed_records()
    outputs = []
    for encoder in (plain, micro):
        z = encode(encoder, records)
        z.square().sum().backward()
        outputs.append(z)
    torch.testing.assert_close(outputs[0], outputs[1])
    for (name, a), b in zip(plain.named_parameters(), micro.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_config_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    encoder = build_encoder("sne", **SMALL, use_level_encoding=False)
    config = json.loads(json.dumps(encoder.config()))
    rebuilt = build_encoder_from_config(config)
    rebuilt.load_state_dict(encoder.state_dict())
    assert rebuilt.options == encoder.options and rebuilt.out_dim == SMALL["out_dim"]
    records = mixed_records()
    torch.testing.assert_close(encode(rebuilt, records), encode(encoder, records), atol=0, rtol=0)


def test_prepared_batch_moves_with_batch_to():
    encoder = SNEEncoder(**SMALL)
    batch = batch_to(encoder.prepare(mixed_records()), "cpu")
    assert encoder(batch).shape == (6, SMALL["out_dim"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL)
    records = mixed_records()
    expected = encode(encoder, records)
    encoder.cuda()
    z = encoder(batch_to(encoder.prepare(records), "cuda"))
    torch.testing.assert_close(z.cpu(), expected, atol=1e-4, rtol=1e-4)


def test_bad_options_and_inputs_are_user_errors():
    with pytest.raises(SneError, match="unknown SNE option"):
        SNEEncoder(chunk=3)
    with pytest.raises(SneError, match="divisible"):
        SNEEncoder(hidden=10, heads=4)
    with pytest.raises(SneError, match="true or false"):
        SNEEncoder(use_hierarchy="no")
    with pytest.raises(SneError, match="level_origin must be one of input, output, got 'top'"):
        SNEEncoder(level_origin="top")
    encoder = SNEEncoder(**SMALL)
    with pytest.raises(SneError, match="empty batch"):
        encoder.prepare([])
    odd = NetworkRecord((Layer("x", "conv2d", 0, {"weight": torch.randn(3, 3)}),), source="odd.pt")
    with pytest.raises(SneError, match="odd.pt"):
        encoder.prepare([odd])


def test_learns_the_weight_scale_of_random_mlps():
    """SNE + a linear head regresses log(weight scale) of unseen MLPs far better than the mean."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def zoo(n: int) -> tuple[list[NetworkRecord], torch.Tensor]:
        log_scales = torch.empty(n).uniform_(-2.0, 1.0, generator=g)
        widths = [[2, 8, 1], [3, 12, 6, 1], [2, 16, 16, 1]]
        records = [mlp(widths[i % 3], g, scale=float(s.exp())) for i, s in enumerate(log_scales)]
        return records, log_scales

    train_records, train_y = zoo(64)
    test_records, test_y = zoo(64)
    encoder = SNEEncoder(**SMALL)
    head = torch.nn.Linear(SMALL["out_dim"], 1)
    train_batch, test_batch = encoder.prepare(train_records), encoder.prepare(test_records)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(80):
        loss = (head(encoder(train_batch)).squeeze(1) - train_y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        test_mse = (head(encoder(test_batch)).squeeze(1) - test_y).square().mean()
    mean_predictor_mse = (test_y - train_y.mean()).square().mean()
    assert test_mse < 0.2 * mean_predictor_mse


def test_blind_to_which_neuron_a_weight_comes_from():
    """What SNE's row-as-set encoding costs: shuffling each neuron's incoming weights among its inputs
    (a different function, see sne.weights.shuffle_incoming) leaves its code of a SIREN unchanged
    when no neuron features are given."""
    from sne.weights import shuffle_incoming

    g = torch.Generator().manual_seed(2)
    records = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(3)]
    shuffled = [shuffle_incoming(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)]
    assert all(not torch.equal(a.layers[1].weight, b.layers[1].weight) for a, b in zip(records, shuffled))
    encoder = SNEEncoder(**SMALL, **NO_NEURON_FEATURES).double()
    torch.testing.assert_close(encode(encoder, shuffled), encode(encoder, records), atol=1e-9, rtol=0)



def test_source_features_see_which_neuron_a_weight_comes_from():
    from sne.weights import shuffle_incoming

    g = torch.Generator().manual_seed(2)
    records = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(3)]
    shuffled = [shuffle_incoming(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)]
    torch.manual_seed(0)
    # Own-neuron features see the shuffle too (it changes how the next layer reads each neuron): off.
    encoder = SNEEncoder(**SMALL, use_source_features=True, use_own_neuron_features=False).double()
    # Untrained, eval-mode codes differ little between networks (see SetPool), hence the small bound.
    assert not torch.allclose(encode(encoder, shuffled), encode(encoder, records), atol=1e-9, rtol=0)


def test_source_features_move_with_their_weights_under_permutation():
    """Permuting a hidden layer permutes the next layer's inputs and their source features alike,
    so every (weight, source feature) pair survives: the link is kept, the neuron order is not."""
    from sne.encoders.chunking import SOURCE_FEATURES, source_neuron_features
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(3)
    net = convnet([(8, 2, 3, 3), (6, 8, 3, 3), (10, 6 * 4)], g, dtype=torch.float64)  # conv, conv, flatten -> linear
    features = source_neuron_features(net)
    assert features[0] is None
    assert features[1].shape == (8, SOURCE_FEATURES) and features[2].shape == (24, SOURCE_FEATURES)
    assert torch.equal(features[2][0], features[2][3]) and (features[1][:, 2] == 1).all()
    perms = [torch.randperm(8, generator=g), torch.randperm(6, generator=g), None]
    permuted = source_neuron_features(permute_hidden(net, perms))
    torch.testing.assert_close(permuted[1], features[1][perms[0]], atol=1e-12, rtol=0)
    flat_inputs = (perms[1].unsqueeze(1) * 4 + torch.arange(4)).reshape(-1)
    torch.testing.assert_close(permuted[2], features[2][flat_inputs], atol=1e-12, rtol=0)
    skipping = net.with_layers([*net.layers[:2], replace(net.layers[2], skip_from=(0,))])
    assert source_neuron_features(skipping)[2] is None


def test_own_neuron_features_say_how_much_the_next_layer_reads_a_neuron_and_move_with_it():
    from sne.encoders.chunking import OWN_FEATURES, own_neuron_features
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(5)
    net = convnet([(8, 2, 3, 3), (6, 8, 3, 3), (10, 6 * 4)], g, dtype=torch.float64)  # conv, conv, flatten -> linear
    features = own_neuron_features(net)
    assert [f.shape for f in features] == [(8, OWN_FEATURES), (6, OWN_FEATURES), (10, OWN_FEATURES)]
    # Conv 1's neuron 3 is read by conv 2's input channel 3 (all rows, all taps), standardised as chunked.
    reader = net.layers[1].weight
    standardised = (reader - reader.mean()) / reader.std(unbiased=False)
    torch.testing.assert_close(features[0][3, 1], standardised[:, 3].square().mean().sqrt())
    # Conv 2's neuron 1 feeds the linear layer's flattened inputs 4..7.
    linear = net.layers[2].weight
    standardised = (linear - linear.mean()) / linear.std(unbiased=False)
    torch.testing.assert_close(features[1][1, 1], standardised[:, 4:8].square().mean().sqrt())
    assert (features[0][:, 2] == 1).all() and (features[2][:, 1:] == 0).all()  # the output layer has no reader
    perms = [torch.randperm(8, generator=g), torch.randperm(6, generator=g), None]
    permuted = own_neuron_features(permute_hidden(net, perms))
    torch.testing.assert_close(permuted[0], features[0][perms[0]], atol=1e-12, rtol=0)
    torch.testing.assert_close(permuted[1], features[1][perms[1]], atol=1e-12, rtol=0)
    torch.testing.assert_close(permuted[2], features[2], atol=1e-12, rtol=0)
    # A layer feeding a skip connection has two readers: unknown.
    skipping = net.with_layers([*net.layers[:2], replace(net.layers[2], skip_from=(0,))])
    assert (own_neuron_features(skipping)[1][:, 1:] == 0).all()


def test_own_neuron_features_keep_sne_invariant_to_hidden_permutations():
    g = torch.Generator().manual_seed(6)
    records, permuted = sirens_and_their_permutations(g, 3)
    unordered = dict(use_chunk_index_encoding=False, use_row_slot_encoding=False)
    torch.manual_seed(0)
    # Source features see the rewiring below too (they move with the inputs read): off.
    encoder = SNEEncoder(**SMALL, **unordered, use_own_neuron_features=True,
                         use_source_features=False).double().eval()
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, records), atol=1e-9, rtol=0)
    # The last layer reading its inputs in another order (another function): plain SNE sees the same
    # sets of values, SNE with own-neuron features sees which neurons are read how strongly.
    rewired = [r.with_layers([*r.layers[:2], r.layers[2].with_tensors(weight=r.layers[2].weight.flip(1))])
               for r in records]
    plain = SNEEncoder(**SMALL, **unordered, **NO_NEURON_FEATURES).double().eval()
    torch.testing.assert_close(encode(plain, rewired), encode(plain, records), atol=1e-9, rtol=0)
    assert not torch.allclose(encode(encoder, rewired), encode(encoder, records), atol=1e-9, rtol=0)


def test_neuron_gains_are_log_norms_of_raw_weights_and_keep_sne_invariant():
    """The gain column: a SIREN first-layer neuron's |w| as the next layer's source feature, and the
    norm of the raw weights reading a neuron as its own feature; SNE reading them stays exactly
    invariant to hidden permutations."""
    from sne.encoders.chunking import GAIN_FLOOR, own_neuron_features, source_neuron_features
    g = torch.Generator().manual_seed(12)
    net = mlp([1, 32, 32, 1], g, dtype=torch.float64)
    first, hidden, last = (layer.weight for layer in net.layers)
    sources, owners = source_neuron_features(net), own_neuron_features(net)
    torch.testing.assert_close(sources[1][:, 3], first[:, 0].abs().clamp_min(GAIN_FLOOR).log())
    torch.testing.assert_close(sources[2][:, 3], hidden.norm(dim=1).log())
    torch.testing.assert_close(owners[1][:, 3], last[0].abs().clamp_min(GAIN_FLOOR).log())
    torch.testing.assert_close(owners[0][:, 3], hidden.norm(dim=0).log())
    assert (owners[2][:, 3] == 0).all()  # the output layer has no reader

    records, permuted = sirens_and_their_permutations(g, 3)
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, use_neuron_gains=True).double().eval()
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, records), atol=1e-9, rtol=0)
    with pytest.raises(SneError, match="use_neuron_gains"):
        SNEEncoder(use_neuron_gains=True, use_source_features=False, use_own_neuron_features=False)
    # On by default wherever a neuron feature is; off, without an error, where both are.
    assert SNEEncoder().options["use_neuron_gains"] and SNEEncoder(use_source_features=False).options["use_neuron_gains"]
    assert not SNEEncoder(use_source_features=False, use_own_neuron_features=False).options["use_neuron_gains"]
    assert not SNEEncoder(preset="paper").options["use_neuron_gains"]


def test_neuron_means_are_signed_means_of_standardised_weights_and_keep_sne_invariant():
    """The mean column: a SIREN first-layer neuron's standardised w, with its sign, as the next
    layer's source feature, and the mean of the standardised weights reading a neuron as its own
    feature; it flips with the neuron under the odd-activation symmetry; SNE reading it stays exactly
    invariant to hidden permutations."""
    from sne.encoders.chunking import MEAN_COLUMN, own_neuron_features, source_neuron_features
    g = torch.Generator().manual_seed(13)
    net = mlp([1, 32, 32, 1], g, dtype=torch.float64)
    first, hidden, last = (layer.weight for layer in net.layers)

    def standardised(w):
        return (w - w.mean()) / w.std(unbiased=False)

    sources, owners = source_neuron_features(net), own_neuron_features(net)
    torch.testing.assert_close(sources[1][:, MEAN_COLUMN], standardised(first)[:, 0])
    torch.testing.assert_close(sources[2][:, MEAN_COLUMN], standardised(hidden).mean(1))
    torch.testing.assert_close(owners[1][:, MEAN_COLUMN], standardised(last)[0])
    torch.testing.assert_close(owners[0][:, MEAN_COLUMN], standardised(hidden).mean(0))
    assert (owners[2][:, MEAN_COLUMN] == 0).all()  # the output layer has no reader

    records, permuted = sirens_and_their_permutations(g, 3)
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, use_neuron_means=True).double().eval()
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, records), atol=1e-9, rtol=0)
    # Without gains the mean column is read alone beside the first three.
    torch.manual_seed(0)
    gainless = SNEEncoder(**SMALL, use_neuron_means=True, use_neuron_gains=False).double().eval()
    assert gainless.element_embedding.source.in_features == 4
    torch.testing.assert_close(encode(gainless, permuted), encode(gainless, records), atol=1e-9, rtol=0)
    with pytest.raises(SneError, match="use_neuron_means"):
        SNEEncoder(use_neuron_means=True, use_source_features=False, use_own_neuron_features=False)
    assert not SNEEncoder(preset="paper").options["use_neuron_means"]


def test_neuron_phases_are_the_sines_phase_and_flip_with_it_and_keep_sne_invariant():
    """The phase columns: sin and cos of w0 * bias for neurons of a sine layer (w0 30 unless the
    layer's attrs say), zeros for other activations and the unknown; a sign flip negates the sine
    column and keeps the cosine; SNE reading them stays exactly invariant to hidden permutations."""
    from sne.encoders.chunking import PHASE_COLUMNS, own_neuron_features, source_neuron_features
    from sne.weights import permute_hidden
    from sne.weights.permute import flip_signs

    g = torch.Generator().manual_seed(17)
    net = siren(g, w0={1: 5.0})
    sine, cosine = PHASE_COLUMNS
    sources, owners = source_neuron_features(net), own_neuron_features(net)
    first_bias, hidden_bias = net.layers[0].bias, net.layers[1].bias
    torch.testing.assert_close(owners[0][:, sine], torch.sin(30 * first_bias))
    torch.testing.assert_close(sources[1][:, cosine], torch.cos(30 * first_bias))
    torch.testing.assert_close(owners[1][:, sine], torch.sin(5 * hidden_bias))  # the layer's own w0
    torch.testing.assert_close(sources[2][:, cosine], torch.cos(5 * hidden_bias))
    assert (owners[2][:, list(PHASE_COLUMNS)] == 0).all()  # identity: no phase
    unknown = mlp([1, 8, 1], g, dtype=torch.float64)  # activations unknown
    assert (own_neuron_features(unknown)[0][:, list(PHASE_COLUMNS)] == 0).all()

    signs = [torch.where(torch.rand(32, generator=g) < 0.5, -1.0, 1.0).double() for _ in range(2)]
    flipped = own_neuron_features(flip_signs(net, signs))
    for layer in range(2):
        torch.testing.assert_close(flipped[layer][:, sine], signs[layer] * owners[layer][:, sine])
        torch.testing.assert_close(flipped[layer][:, cosine], owners[layer][:, cosine])

    records = [siren(g) for _ in range(3)]
    permuted = [permute_hidden(r, [torch.randperm(32, generator=g), torch.randperm(32, generator=g), None])
                for r in records]
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, use_neuron_phases=True).double().eval()
    assert encoder.element_embedding.phase.in_features == 4  # two phase columns of each neuron feature
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, records), atol=1e-9, rtol=0)
    # The phase columns reach the codes of sine networks; without them (zeros) an encoder reading phases
    # initialises and encodes as one that does not.
    torch.manual_seed(0)
    without = SNEEncoder(**SMALL, use_neuron_phases=False).double().eval()
    assert (encode(encoder, records) - encode(without, records)).abs().max() > 1e-3
    cnns = [convnet([(8, 1, 3, 3), (6, 8, 3, 3), (10, 6)], g, dtype=torch.float64), unknown]
    torch.testing.assert_close(encode(encoder, cnns), encode(without, cnns), atol=0, rtol=0)
    with pytest.raises(SneError, match="use_neuron_phases"):
        SNEEncoder(use_neuron_phases=True, use_source_features=False, use_own_neuron_features=False)
    assert SNEEncoder().options["use_neuron_phases"] and not SNEEncoder(preset="paper").options["use_neuron_phases"]
    assert not SNEEncoder(use_source_features=False, use_own_neuron_features=False).options["use_neuron_phases"]


def test_default_sne_is_exactly_invariant_to_hidden_permutations_and_the_paper_preset_is_not():
    """Default SNE encodes no neuron order (no chunk-index or row-slot encoding): a SIREN and a
    CNN encode alike under any permutation of their hidden neurons and channels, with every default
    feature on (source and own-neuron features move with their neurons), where every chunk holds
    one neuron's incoming elements or a whole layer part (here: widths of one chunk, 32)."""
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(9)
    sirens = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(2)]
    cnns = [convnet([(32, 1, 3, 3), (32, 32, 3, 3), (32, 32, 3, 3), (10, 32)], g, dtype=torch.float64)
            for _ in range(2)]
    records = sirens + cnns

    def permuted(record: NetworkRecord) -> NetworkRecord:
        hidden = [len(layer.weight) for layer in record.layers[:-1]]
        return permute_hidden(record, [*(torch.randperm(n, generator=g) for n in hidden), None])

    others = [permuted(r) for r in records]
    torch.manual_seed(0)
    default = SNEEncoder(**SMALL, chunk_size=32).double().eval()
    torch.testing.assert_close(encode(default, others), encode(default, records), atol=1e-9, rtol=0)
    paper = SNEEncoder(**SMALL, chunk_size=32, preset="paper").double().eval()
    # Untrained, the order encodings move codes by ~1e-7; float64 rounding is ~1e-16.
    assert (encode(paper, others) - encode(paper, records)).abs().max() > 1e-9


@pytest.mark.parametrize("options", [{"pool_seeds": 3}, {"pool_seeds": 2, "pool_statistics": False}])
def test_richer_pooling_keeps_default_sne_exactly_invariant(options):
    """Several PMA seeds, with or without set statistics (default), pool sets: equivalent
    permutations still encode alike."""
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(21)
    records = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(3)]
    others = [permute_hidden(r, [torch.randperm(32, generator=g), torch.randperm(32, generator=g), None])
              for r in records]
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, chunk_size=32, **options).double().eval()
    codes = encode(encoder, records)
    torch.testing.assert_close(encode(encoder, others), codes, atol=1e-9, rtol=0)
    torch.manual_seed(0)
    plain = SNEEncoder(**SMALL, chunk_size=32, pool_seeds=1, pool_statistics=False).double().eval()
    assert not torch.allclose(encode(plain, records), codes)
    assert plain.network_pool.merge is None and SNEEncoder(preset="paper").network_pool.merge is None
    with pytest.raises(SneError, match="pool_seeds"):
        SNEEncoder(pool_seeds=0)
    with pytest.raises(SneError, match="pool_statistics"):
        SNEEncoder(pool_statistics="yes")


def test_set_statistics_ignore_padding_whatever_it_holds():
    from sne.encoders.set_blocks import set_statistics

    g = torch.Generator().manual_seed(2)
    sets = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (1, 4, 7)]
    padded = torch.full((3, 7, 3), float("nan"), dtype=torch.float64)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, x in enumerate(sets):
        padded[i, : len(x)], mask[i, : len(x)] = x, True
    expected = torch.stack([torch.cat([x.mean(0), x.amax(0), x.amin(0), x.std(0, unbiased=False)]) for x in sets])
    torch.testing.assert_close(set_statistics(padded, mask), expected, atol=1e-6, rtol=0)


def swap_first_layer_inputs(record: NetworkRecord) -> NetworkRecord:
    """A 2-input network with its inputs swapped in the first layer (a different function)."""
    first = record.layers[0]
    return record.with_layers([first.with_tensors(weight=first.weight.flip(1)), *record.layers[1:]])


def test_default_sne_is_blind_to_the_order_of_a_first_layers_inputs_and_input_positions_are_not():
    g = torch.Generator().manual_seed(4)
    records = [mlp([2, 32, 32, 1], g, dtype=torch.float64) for _ in range(3)]
    swapped = [swap_first_layer_inputs(r) for r in records]
    torch.manual_seed(0)
    blind = SNEEncoder(**SMALL).double()
    torch.testing.assert_close(encode(blind, swapped), encode(blind, records), atol=1e-9, rtol=0)
    seeing = SNEEncoder(**SMALL, use_input_positions=True).double()
    assert not torch.allclose(encode(seeing, swapped), encode(seeing, records), atol=1e-9, rtol=0)


def test_input_positions_mark_first_layer_weights_only_and_ignore_hidden_permutations():
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(5)
    inr = mlp([2, 6, 4, 1], g, dtype=torch.float64)
    cnn = convnet([(8, 1, 3, 3), (4, 8, 3, 3), (10, 4)], g, dtype=torch.float64)
    batch = pad_chunk([inr, cnn], chunk_size=8, input_positions=True, dtype=torch.float64)
    by_kernel = dict(zip([tuple(c.shape) for c in batch.tap_coordinates], batch.input_positions))
    linear = by_kernel[(1, 0)]  # linear weights and all biases, in record order
    # inr: 12 first-layer weights alternate x (-1) and y (+1); then its 6 biases and later layers: zeros.
    torch.testing.assert_close(linear[:12, 0], torch.tensor([-1.0, 1.0], dtype=torch.float64).repeat(6))
    assert (linear[:12, 1] == 1).all() and (linear[12:] == 0).all()
    conv = by_kernel[(9, 2)]  # the CNN's first layer has one input channel: coordinate 0, flagged
    assert (conv[:8, 0] == 0).all() and (conv[:8, 1] == 1).all() and (conv[8:] == 0).all()
    perms = [torch.randperm(6, generator=g), torch.randperm(4, generator=g), None]
    permuted = pad_chunk([permute_hidden(inr, perms)], chunk_size=8, input_positions=True, dtype=torch.float64)
    plain = pad_chunk([inr], chunk_size=8, input_positions=True, dtype=torch.float64)
    torch.testing.assert_close(permuted.input_positions, plain.input_positions, atol=0, rtol=0)


def test_canonical_order_gives_every_equivalent_permutation_of_a_chain_the_same_code():
    """Functional equivalence checked on the real computation (float64), then the codes compared."""
    from sne.weights import random_equivalent_permutation

    g = torch.Generator().manual_seed(4)
    records = [mlp([2, 12, 9, 3], g, dtype=torch.float64), convnet([(6, 1, 3, 3), (5, 6, 3, 3), (4, 5)], g,
                                                                   dtype=torch.float64)]
    permuted = [random_equivalent_permutation(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)]
    x = torch.randn(7, 2, dtype=torch.float64)

    def mlp_forward(record: NetworkRecord) -> torch.Tensor:
        h = x
        for layer in record.layers[:-1]:
            h = torch.tanh(torch.nn.functional.linear(h, layer.weight, layer.bias))
        last = record.layers[-1]
        return torch.nn.functional.linear(h, last.weight, last.bias)

    torch.testing.assert_close(mlp_forward(permuted[0]), mlp_forward(records[0]), rtol=1e-12, atol=1e-12)
    torch.manual_seed(0)
    canonical = SNEEncoder(**SMALL, canonical_order=True).double().eval()
    torch.testing.assert_close(encode(canonical, permuted), encode(canonical, records), rtol=0, atol=0)
    torch.manual_seed(0)
    plain = SNEEncoder(**SMALL).double().eval()
    assert not torch.allclose(encode(plain, permuted), encode(plain, records), rtol=0, atol=1e-9)
    with pytest.raises(SneError, match="canonical_order must be true or false"):
        SNEEncoder(canonical_order=1)


def test_canonical_order_gives_weight_outputs_in_each_networks_own_order():
    """Outputs are computed in canonical order and put back: a permuted network's outputs are the
    original's outputs permuted the same way (equivariance), for chains; other records as they are."""
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(11)
    records = [mlp([2, 12, 9, 3], g, dtype=torch.float64),
               convnet([(6, 1, 3, 3), (5, 6, 3, 3), (4, 5)], g, dtype=torch.float64)]
    perms = [[torch.randperm(12, generator=g), torch.randperm(9, generator=g), None],
             [torch.randperm(6, generator=g), torch.randperm(5, generator=g), None]]
    permuted = [permute_hidden(r, p) for r, p in zip(records, perms)]
    torch.manual_seed(0)
    canonical = SNEEncoder(**SMALL, canonical_order=True).double().eval()
    outputs, outputs_of_permuted = weight_outputs(canonical, g, records, permuted)
    for out, out_permuted, perm in zip(outputs, outputs_of_permuted, perms):
        expected = permute_hidden(out, perm)
        for layer, other in zip(out_permuted.layers, expected.layers):
            torch.testing.assert_close(layer.weight, other.weight, rtol=0, atol=1e-12)
            torch.testing.assert_close(layer.bias, other.bias, rtol=0, atol=1e-12)
    assert any(not torch.equal(a.weight, b.weight) for a, b in zip(outputs[0].layers, outputs_of_permuted[0].layers))


@pytest.mark.parametrize("order", [False, True])
def test_canonical_signs_give_every_flipped_copy_the_same_code_and_weight_outputs_in_its_own_signs(order):
    """Sign-flipped (and, with canonical order, permuted) copies of a SIREN and a tanh MLP: the same
    functions (test_permute), the same codes; weight outputs come back flipped (and permuted) alike."""
    from torch import nn

    from sne.weights import flip_signs, permute_hidden, random_permutations, record_from_module, sign_flip_groups
    from sne.zoo.siren import Siren

    torch.manual_seed(3)
    inputs = torch.linspace(-1, 1, 20, dtype=torch.float64).unsqueeze(1)
    records = [record_from_module(Siren().double(), inputs),
               record_from_module(nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 7), nn.Tanh(),
                                                nn.Linear(7, 2)).double())]
    g = torch.Generator().manual_seed(5)
    signs = [[torch.randint(0, 2, (group.size,), generator=g) * 2 - 1 for group in sign_flip_groups(r)]
             for r in records]
    perms = [random_permutations(r, g) if order else [None] * len(r.layers) for r in records]

    def moved(record: NetworkRecord, sign: list[torch.Tensor], perm: list) -> NetworkRecord:
        return permute_hidden(flip_signs(record, sign), perm)

    copies = [moved(r, s, p) for r, s, p in zip(records, signs, perms)]
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, canonical_signs=True, canonical_order=order).double().eval()
    torch.testing.assert_close(encode(encoder, copies), encode(encoder, records), rtol=0, atol=0)
    torch.manual_seed(0)
    plain = SNEEncoder(**SMALL).double().eval()
    assert not torch.allclose(encode(plain, copies), encode(plain, records), rtol=0, atol=1e-9)
    outputs, outputs_of_copies = weight_outputs(encoder, g, records, copies)
    for out, out_copy, sign, perm in zip(outputs, outputs_of_copies, signs, perms):
        for layer, other in zip(out_copy.layers, moved(out, sign, perm).layers):
            torch.testing.assert_close(layer.weight, other.weight, rtol=0, atol=1e-12)
            torch.testing.assert_close(layer.bias, other.bias, rtol=0, atol=1e-12)
    assert any(not torch.equal(a.weight, b.weight) for a, b in zip(outputs[0].layers, outputs_of_copies[0].layers))
    with pytest.raises(SneError, match="canonical_signs must be true or false"):
        SNEEncoder(canonical_signs="yes")


def test_the_paper_preset_is_the_papers_configuration_and_options_beside_it_win():
    from sne.encoders.sne import PRESETS

    paper = SNEEncoder(**SMALL, preset="paper")
    assert {k: paper.options[k] for k in PRESETS["paper"]} == PRESETS["paper"]
    assert "preset" not in paper.options and paper.part_scale is None
    assert SNEEncoder(**SMALL, preset="paper", batch_norm=True).options["batch_norm"] is True
    rebuilt = build_encoder_from_config(json.loads(json.dumps(paper.config())))
    assert rebuilt.options == paper.options
    with pytest.raises(SneError, match="unknown SNE preset 'nope'"):
        SNEEncoder(preset="nope")


def test_neuron_links_number_each_layers_neurons_and_point_weights_at_their_sources():
    from sne.encoders.chunking import pad_chunk

    g = torch.Generator().manual_seed(0)
    record = mlp([3, 5, 4, 2], g)
    batch = pad_chunk([record, record], chunk_size=4, neuron_links=True)
    assert batch.neuron_count == 2 * (5 + 4 + 2)
    own, source = torch.cat(batch.own_neuron), torch.cat(batch.source_neuron)
    slots = torch.cat(batch.element_slot)
    values = torch.cat(batch.tap_values).squeeze(1)
    for network in range(2):
        offset = 11 * network
        for index, layer in enumerate(record.layers):
            first = offset + (0, 5, 9)[index]
            for row in range(layer.out_features):
                for column in range(layer.in_features):
                    hit = (values == layer.weight[row, column]) & (own == first + row)
                    assert int(hit.sum()) >= 1
                    expected = -1 if index == 0 else offset + (0, 5, 9)[index - 1] + column
                    assert set(source[hit].tolist()) == {expected}
    assert len(slots) == len(own) == len(source)


def _chunk_codes(encoder: SNEEncoder, records: list[NetworkRecord]) -> torch.Tensor:
    with torch.no_grad():
        return encoder._chunk_codes(encoder.prepare(records), torch.float64)[0]


def test_source_codes_see_which_neuron_a_weight_comes_from_and_move_with_it():
    """With neuron order unencoded (one SIREN row per chunk, no chunk-index or row-slot encoding) and
    no neuron features, SNE is exactly invariant to neuron permutations and blind to shuffled
    incoming weights; learned source codes and chunk links keep the invariance and see the shuffle."""
    from sne.weights import random_equivalent_permutation, shuffle_incoming

    g = torch.Generator().manual_seed(2)
    records = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(4)]
    shuffled = [shuffle_incoming(r, torch.Generator().manual_seed(i)) for i, r in enumerate(records)]
    permuted = [random_equivalent_permutation(r, torch.Generator().manual_seed(10 + i)) for i, r in enumerate(records)]
    for rounds, passes in ((0, 0), (1, 0), (2, 0), (0, 1), (1, 2)):
        torch.manual_seed(0)
        encoder = SNEEncoder(**SMALL, chunk_size=32, source_code_rounds=rounds, chunk_link_passes=passes,
                             use_chunk_index_encoding=False, use_row_slot_encoding=False,
                             **NO_NEURON_FEATURES).double().eval()
        for link in encoder.chunk_links or ():
            torch.nn.init.normal_(link.weight, std=0.5)
        codes = _chunk_codes(encoder, records)
        moved = _chunk_codes(encoder, permuted)
        torch.testing.assert_close(moved.sort(0).values, codes.sort(0).values, rtol=0, atol=1e-12)
        seen = (_chunk_codes(encoder, shuffled) - codes).abs().max()
        assert (seen > 1e-5) if rounds or passes else (seen < 1e-12), (rounds, passes, seen)
        with torch.no_grad():
            torch.testing.assert_close(encoder(encoder.plan(records)), encoder(encoder.prepare(records)),
                                       rtol=0, atol=1e-12)


def test_chunk_links_start_at_zero_and_add_a_chunk_stage_per_pass():
    """An untrained encoder with chunk links encodes as one without; each pass runs the chunk stage once more."""
    g = torch.Generator().manual_seed(3)
    records = [mlp([1, 16, 16, 1], g, dtype=torch.float64) for _ in range(3)]
    torch.manual_seed(0)
    plain = SNEEncoder(**SMALL).double().eval()
    linked = SNEEncoder(**SMALL, chunk_link_passes=2).double().eval()
    missing, unexpected = linked.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("chunk_links.") for name in missing) and missing
    torch.testing.assert_close(encode(linked, records), encode(plain, records), rtol=0, atol=0)
    calls = []
    linked.chunk_stack_2.register_forward_hook(lambda *_: calls.append(1))
    encode(linked, records)
    assert len(calls) == 3  # one run of chunks per pass, two link passes and the last


# --- layer statistics of levels no training network had ------------------------------------------


def test_unseen_levels_take_the_nearest_fitted_levels_statistics_per_type():
    from sne.encoders.sne import fill_unseen_levels

    mean, std = torch.zeros(8, 3, 2), torch.ones(8, 3, 2)
    for level, value in ((1, 1.0), (3, 3.0), (4, 4.0)):  # type 0 fitted at levels 1, 3, 4
        mean[level, 0], std[level, 0] = value, 10 * value
    mean[0, 1], std[0, 1] = -1.0, 0.5  # type 1 at level 0 only; type 2 never
    filled_mean, filled_std = fill_unseen_levels(mean, std)
    # Level 0 -> 1; 2 is as near to 1 as to 3 and takes the deeper; 5..7 -> 4.
    assert filled_mean[:, 0, 0].tolist() == [1.0, 1.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0]
    assert filled_std[:, 0, 1].tolist() == [10.0, 10.0, 30.0, 30.0, 40.0, 40.0, 40.0, 40.0]
    assert filled_mean[:, 1, 0].tolist() == [-1.0] * 8 and filled_std[:, 1, 0].tolist() == [0.5] * 8
    assert filled_mean[:, 2].eq(0).all() and filled_std[:, 2].eq(1).all()  # never seen: read raw
    again = fill_unseen_levels(filled_mean, filled_std)
    assert again[0].equal(filled_mean) and again[1].equal(filled_std)  # idempotent: loading a filled table


def test_a_network_deeper_than_the_training_networks_reads_its_extra_layers_like_their_nearest():
    g = torch.Generator().manual_seed(4)
    encoder = SNEEncoder(**SMALL).double()
    encoder.fit_input_statistics([mlp([4, 8, 8, 3], g, dtype=torch.float64) for _ in range(6)])
    deep = mlp([4, 8, 8, 8, 8, 3], g, dtype=torch.float64)
    batch = encoder.prepare([deep])
    normalized = encoder._normalized_part_stats(batch, 0, batch.chunk_type.shape[0])
    raw = batch.part_stats[batch.chunk_part]
    for level in (3, 4):  # the training networks' last level is 2
        at, last = batch.chunk_level == level, batch.chunk_level == 2
        for kind in batch.chunk_type[at].unique():
            reference = encoder.stats_mean[2, kind], encoder.stats_std[2, kind]
            rows = at & (batch.chunk_type == kind)
            assert (last & (batch.chunk_type == kind)).any()
            torch.testing.assert_close(normalized[rows], (raw[rows] - reference[0]) / reference[1], rtol=0, atol=0)
    # A checkpoint written before the fill (unseen levels still the identity) loads filled.
    state = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    state["stats_mean"][3:], state["stats_std"][3:] = 0.0, 1.0
    fresh = SNEEncoder(**SMALL).double()
    fresh.load_state_dict(state)
    assert fresh.stats_mean.equal(encoder.stats_mean) and fresh.stats_std.equal(encoder.stats_std)


@pytest.mark.parametrize("layer_norm,qk_norm", [(False, False), ("pre", False), (False, True)])
def test_self_attention_with_one_fused_projection_equals_attention_to_a_copy(layer_norm, qk_norm):
    """A SAB projects queries, keys and values in one matmul; attending to an equal copy of the set
    takes the separate projections: both must give the same outputs on real elements, and gradients."""
    from sne.encoders.set_blocks import SAB

    torch.manual_seed(0)
    block = SAB(16, 4, layer_norm, qk_norm).double()
    x = torch.randn(5, 7, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    fused = block(x, mask)
    separate = block.mab(x, x.clone(), mask)
    assert torch.allclose(fused[mask], separate[mask], rtol=0, atol=1e-12)
    grads = [torch.autograd.grad(out[mask].sum(), [x, block.mab.k.weight]) for out in (fused, separate)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_pre_layer_norm_normalises_branch_inputs_and_leaves_the_residual_stream_alone():
    """``layer_norm="pre"``: a block adds to its input what its branches make of normalised inputs, so
    (for one-element sets, where attention returns the value itself) scaling the input by c changes
    the first branch's output not at all; ``post`` and ``true`` normalise the output itself."""
    from sne.encoders.set_blocks import SAB

    torch.manual_seed(0)
    x = torch.randn(6, 1, 16, dtype=torch.float64)
    pre, post = SAB(16, 4, "pre").double(), SAB(16, 4, True).double()
    mab = pre.mab
    mab.norm_attention.eps = 0.0  # LayerNorm's eps is the one thing that sees the scale
    first_branch = [mab.o(mab.v(mab.norm_attention(c * x))) for c in (1.0, 10.0)]
    torch.testing.assert_close(first_branch[0], first_branch[1], atol=1e-10, rtol=0)
    h = x + first_branch[0]
    torch.testing.assert_close(pre(x), h + mab.ff(mab.norm_ff(h)), atol=1e-12, rtol=0)
    assert pre(10 * x).abs().mean() > 3 * pre(x).abs().mean()  # the residual stream keeps its scale
    out = post(10 * x)
    torch.testing.assert_close(out.mean(-1), torch.zeros_like(out.mean(-1)), atol=1e-10, rtol=0)


@pytest.mark.parametrize("cls", ["SAB", "PMA"])
def test_qk_norm_keeps_attention_logits_from_growing_with_the_query_and_key_projections(cls):
    """With ``qk_norm`` a block's output is the same when its query and key projections grow 50x
    (what an unbounded logit scale lets training do); without it attention sharpens and the output moves.
    Padded elements still change nothing."""
    from sne.encoders import set_blocks

    torch.manual_seed(0)
    x = torch.randn(5, 7, 16, dtype=torch.float64)
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    for qk_norm in (True, False):
        block = getattr(set_blocks, cls)(16, 4, qk_norm=qk_norm).double()
        if qk_norm:
            block.mab.q_norm.eps = block.mab.k_norm.eps = 0.0  # eps is the one thing that sees the scale
        before = block(x, mask)
        garbage = x.masked_fill(~mask.unsqueeze(-1), 1e6)
        torch.testing.assert_close(block(garbage, mask)[mask] if cls == "SAB" else block(garbage, mask),
                                   before[mask] if cls == "SAB" else before, atol=1e-9, rtol=0)
        with torch.no_grad():
            for projection in (block.mab.q, block.mab.k):
                projection.weight.mul_(50)
                projection.bias.mul_(50)
        moved = (block(x, mask) - before)[mask if cls == "SAB" else slice(None)].abs().max()
        assert (moved < 1e-9) if qk_norm else (moved > 1e-2), (qk_norm, moved)


def test_qk_norm_is_an_sne_option_off_in_the_paper_preset():
    assert SNEEncoder(**SMALL, qk_norm=True).network_pool.pma.mab.q_norm.normalized_shape == (SMALL["hidden"] // 2,)
    assert isinstance(SNEEncoder(preset="paper").network_pool.pma.mab.q_norm, torch.nn.Identity)
    with pytest.raises(SneError, match="qk_norm must be true or false"):
        SNEEncoder(**SMALL, qk_norm="yes")


@pytest.mark.parametrize("value", ["middle", 1, None])
def test_unknown_layer_norm_placement_is_refused_in_one_line(value):
    with pytest.raises(SneError, match=r"layer_norm must be true, false, 'post' or 'pre'"):
        SNEEncoder(**SMALL, layer_norm=value)


def test_levels_counted_from_the_output_align_networks_of_different_depths():
    g = torch.Generator().manual_seed(5)
    shallow = [mlp([4, 8, 3], g, dtype=torch.float64) for _ in range(6)]
    deep = mlp([4, 8, 8, 8, 3], g, dtype=torch.float64)
    from_input = SNEEncoder(**SMALL).double()
    encoder = SNEEncoder(**SMALL, level_origin="output").double()
    encoder.fit_input_statistics(shallow)
    batch = encoder.prepare([shallow[0], deep])
    chunks, layers, _ = encoder._levels(batch)
    assert batch.layer_level.tolist() == [0, 1, 0, 1, 2, 3] and layers.tolist() == [1, 0, 3, 2, 1, 0]
    assert all(a.equal(b) for a, b in zip(from_input._levels(batch), (batch.chunk_level, batch.layer_level,
                                                                       batch.token_level)))
    network = batch.chunk_network_slot // batch.network_chunk_mask.shape[1]
    torch.testing.assert_close(chunks, torch.tensor([1, 3])[network] - batch.chunk_level, rtol=0, atol=0)
    # The deep network's output layer is standardised with the statistics of the shallow networks'
    # output layers, its first layer with those of their first layers (the nearest fitted level).
    normalized = encoder._normalized_part_stats(batch, 0, batch.chunk_type.shape[0])
    raw = batch.part_stats[batch.chunk_part]
    for deep_level, fitted_level in ((3, 0), (0, 1)):
        rows = (network == 1) & (batch.chunk_level == deep_level)
        kinds = batch.chunk_type[rows]
        reference = encoder.stats_mean[fitted_level, kinds], encoder.stats_std[fitted_level, kinds]
        torch.testing.assert_close(normalized[rows], (raw[rows] - reference[0]) / reference[1], rtol=0, atol=0)
        assert reference[1].ne(1).all()  # fitted, not the identity


def test_activation_encoding_tells_activations_apart_and_keeps_invariance():
    from dataclasses import replace as replaced

    from sne.weights import permute_hidden
    from sne.weights.record import ACTIVATION_INDEX

    g = torch.Generator().manual_seed(11)
    relu = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(2)]
    relu = [r.with_layers([replaced(layer, activation=a) for layer, a in zip(r.layers, ("relu", "relu", "identity"))])
            for r in relu]
    tanh = [r.with_layers([replaced(layer, activation=a) for layer, a in zip(r.layers, ("tanh", "tanh", "identity"))])
            for r in relu]
    # Unknown (None) and unlisted names have indices of their own.
    odd = relu[0].with_layers([replaced(relu[0].layers[0], activation=None),
                               replaced(relu[0].layers[1], activation="swish_7"), relu[0].layers[2]])
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL, use_activation_encoding=True).double().eval()
    batch = encoder.prepare([odd])
    chunk_layer = batch.chunk_level
    assert batch.chunk_activation[chunk_layer == 0].eq(ACTIVATION_INDEX["unknown"]).all()
    assert batch.chunk_activation[chunk_layer == 1].eq(ACTIVATION_INDEX["other"]).all()
    assert batch.chunk_activation[chunk_layer == 2].eq(ACTIVATION_INDEX["identity"]).all()
    # Blind without the option; with it, the same weights under another activation encode apart.
    torch.manual_seed(0)
    blind = SNEEncoder(**SMALL).double().eval()
    torch.testing.assert_close(encode(blind, tanh), encode(blind, relu), atol=1e-12, rtol=0)
    assert (encode(encoder, tanh) - encode(encoder, relu)).abs().amax(1).gt(1e-6).all()
    # Still exactly invariant to permutations of hidden neurons (activations move with nothing).
    permuted = [permute_hidden(r, [torch.randperm(32, generator=g), torch.randperm(32, generator=g), None])
                for r in relu]
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, relu), atol=1e-9, rtol=0)


def test_shape_features_count_what_attention_pooling_cannot():
    from sne.weights import permute_hidden

    g = torch.Generator().manual_seed(3)
    # A layer of 8 neurons of 4 inputs is one chunk; the same 8 neurons twice over are two chunks
    # equal to it, and a bias set holding every value twice: pooled, the two layers read alike.
    narrow = mlp([4, 8], g, dtype=torch.float64)
    layer = narrow.layers[0]
    twice = layer.tensors["weight"].repeat(2, 1), layer.tensors["bias"].repeat(2)
    wide = narrow.with_layers([make_layer("fc0", 0, *twice)])
    conv = convnet([(6, 3, 5, 5), (2, 6)], g, dtype=torch.float64)
    batch = SNEEncoder(**SMALL).double().prepare([conv])
    # Per part: (log fan-in, log rows); the conv weight's 3 inputs of 25 taps, its bias one value per row.
    torch.testing.assert_close(batch.part_shape.exp(), torch.tensor([[75.0, 6], [1, 6], [6, 2]], dtype=torch.float64))
    torch.manual_seed(0)
    blind = SNEEncoder(**SMALL).double().eval()
    torch.testing.assert_close(encode(blind, [wide]), encode(blind, [narrow]), atol=1e-12, rtol=0)
    torch.manual_seed(0)
    counting = SNEEncoder(**SMALL, use_shape_features=True).double().eval()
    # Untrained codes of different networks differ little (SetPool's docstring), but far above float64 noise.
    assert (encode(counting, [wide]) - encode(counting, [narrow])).abs().amax().gt(1e-9)
    # Sizes do not move under a permutation of hidden neurons: still exactly invariant.
    siren = [mlp([1, 32, 32, 1], g, dtype=torch.float64) for _ in range(2)]
    permuted = [permute_hidden(r, [torch.randperm(32, generator=g), torch.randperm(32, generator=g), None])
                for r in siren]
    torch.testing.assert_close(encode(counting, permuted), encode(counting, siren), atol=1e-9, rtol=0)


def test_the_chunk_stage_is_never_wider_than_a_smaller_hidden_by_default():
    narrow = DEFAULT_OPTIONS["chunk_hidden"]
    assert SNEEncoder().chunk_width == narrow < DEFAULT_OPTIONS["hidden"]  # the default: narrower
    assert SNEEncoder(hidden=128, heads=4).chunk_width == narrow
    assert SNEEncoder(hidden=16, heads=2).chunk_width == 16  # cut to a smaller hidden
    assert SNEEncoder(hidden=8, heads=2, chunk_hidden=32).chunk_width == 32  # given: as given
    assert PRESETS["fast"]["chunk_hidden"] == narrow
    assert SNEEncoder(preset="fast", hidden=16, heads=2).chunk_width == 16
    for preset in ("wide", "paper"):  # the paper's width: hidden
        assert SNEEncoder(preset=preset, hidden=16, heads=2).chunk_width == 16
        assert SNEEncoder(preset=preset, hidden=128, heads=4).chunk_width == 128
    # A row at a small hidden names only the hidden it was given (and a preset other than the defaults).
    for preset, named in (({"preset": "fast"}, {}), ({"preset": "wide"}, {"preset": "wide"}), ({}, {})):
        row = {"encoder": "sne", "encoder_options_given": {"hidden": 16, **preset},
               "encoder_options_resolved": dict(SNEEncoder(hidden=16, **preset).options)}
        assert options_apart_from_defaults(row) == {"hidden": 16, **named}
    # Also where the options given are not recorded (the defaults follow what the row was built with).
    assert options_apart_from_defaults({**row, "encoder_options_given": {}}) == {"hidden": 16}


def test_chunk_sab_sets_the_chunk_stage_depth_alone():
    deeper = {**SMALL, "num_sab": 2}
    encoder = SNEEncoder(**deeper, chunk_sab=1)
    assert len(encoder.chunk_stack_1.blocks) == len(encoder.chunk_stack_2.blocks) == 1
    assert len(encoder.network_stack.blocks) == len(encoder.part_stack.blocks) == 2
    assert len(SNEEncoder(**deeper, chunk_sab=None).chunk_stack_1.blocks) == 2  # None: num_sab
    assert len(SNEEncoder(**deeper, preset="wide").chunk_stack_1.blocks) == 2
    assert len(SNEEncoder(**deeper).chunk_stack_1.blocks) == DEFAULT_OPTIONS["chunk_sab"] == 1
    g = torch.Generator().manual_seed(14)
    records, permuted = sirens_and_their_permutations(g, 2)
    encoder = encoder.double().eval()
    torch.testing.assert_close(encode(encoder, permuted), encode(encoder, records), atol=1e-9, rtol=0)
    for bad in (-1, 1.5, True):
        with pytest.raises(SneError, match="chunk_sab"):
            SNEEncoder(chunk_sab=bad)


def test_preserve_chunk_scale_projects_a_narrow_chunk_stage_to_hidden_without_shrinking_its_codes():
    torch.manual_seed(3)
    scaled = SNEEncoder(chunk_hidden=32, hidden=64, preserve_chunk_scale=True)
    torch.manual_seed(3)
    plain = SNEEncoder(chunk_hidden=32, hidden=64)
    # Rescaled, not redrawn: every other parameter starts as it would without the option.
    for (name, a), (_, b) in zip(scaled.named_parameters(), plain.named_parameters()):
        if not name.startswith("chunk_out."):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(scaled.chunk_out.weight, plain.chunk_out.weight * 3**0.5)
    assert not scaled.chunk_out.bias.any()
    # Batch-normalised chunk codes (unit variance) leave the projection with unit variance, not a third.
    codes = torch.randn(20000, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert 0.8 < scaled.chunk_out(codes).var(0).mean() < 1.25
        assert 0.2 < plain.chunk_out(codes).var(0).mean() < 0.45
    # Rows name it at width 32, and not at full width, where there is no projection to initialise.
    for width, expected in ((32, [True]), (None, [])):
        options = {"chunk_hidden": width, "preserve_chunk_scale": True}
        row = {"encoder": "sne", "encoder_options_given": options,
               "encoder_options_resolved": dict(SNEEncoder(**options).options)}
        assert [v for k, v in options_apart_from_defaults(row).items() if k == "preserve_chunk_scale"] == expected
    assert SNEEncoder(chunk_hidden=None, preserve_chunk_scale=True).chunk_out is None
    with pytest.raises(SneError, match="preserve_chunk_scale"):
        SNEEncoder(preserve_chunk_scale=1)


def test_installed_predict_notes_once_that_bare_state_dicts_lack_the_phases_a_run_learned(shared_sine_zoo, tmp_path):
    """A run trained on sine INRs reads their phases; bare state_dicts name no activations, so they
    are predicted without phases, and one note says so, naming the first file and --arch. With
    ``--arch`` (a factory, or ``run``: the training zoo's architecture) they predict as their records
    and nothing is noted; a file of another architecture is refused in one line. An encoder that
    reads no phases, or learned none, has nothing to say."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import sine_run_and_bare_files
    from sne.train import load_run

    run, records, files = sine_run_and_bare_files(shared_sine_zoo, tmp_path, SMALL, 3)
    script = Path(sys.executable).parent / "sne"

    bare = subprocess.run([str(script), "predict", str(run), *map(str, files), "--device", "cpu"],
                          capture_output=True, text=True)
    assert bare.returncode == 0, bare.stderr
    assert len(bare.stdout.strip().splitlines()) == 3
    notes = [line for line in bare.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"{files[0]} (and 2 more files)" in notes[0] and "--arch" in notes[0]

    factory = tmp_path / "siren_factory.py"
    factory.write_text("import torch\nfrom sne.zoo.siren import Siren\n\n\n"
                       "def architecture():\n    return Siren(1), torch.zeros(1, 1)\n")
    known = subprocess.run([str(script), "predict", str(run), *map(str, files), "--device", "cpu",
                            "--arch", f"{factory}:architecture"], capture_output=True, text=True)
    assert known.returncode == 0 and "note:" not in known.stderr, known.stderr
    # --arch run: the files read as the training zoo's architecture, activations and all, as the records.
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 3)}, other)
    as_trained = subprocess.run([str(script), "predict", str(run), *map(str, files), str(other), "--device", "cpu",
                                 "--arch", "run"], capture_output=True, text=True)
    assert as_trained.returncode == 2 and "note:" not in as_trained.stderr
    expected = load_run(run, device="cpu").predictor.predict(records)
    lines = as_trained.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    assert [float(line.split("\t")[2]) for line in lines] == pytest.approx(expected.tolist(), rel=1e-4, abs=1e-5)
    refused = [line for line in as_trained.stderr.splitlines() if str(other) in line]
    assert len(refused) == 1 and "fits none of the 1 architecture" in refused[0] and "Traceback" not in as_trained.stderr
    assert [float(line.split("\t")[2]) for line in known.stdout.strip().splitlines()] == pytest.approx(
        expected.tolist(), rel=1e-4, abs=1e-5)

    trained = load_run(run, device="cpu").predictor.encoder
    bare_record = records[0].with_layers([make_layer(layer.name, layer.level, layer.weight, layer.bias)
                                          for layer in records[0].layers])
    assert bool(trained.trained_on_sines) and trained.caveat(bare_record) and trained.caveat(records[0]) is None
    blind = SNEEncoder(**SMALL, use_neuron_phases=False)
    blind.trained_on_sines.fill_(True)
    assert blind.caveat(bare_record) is None
    fresh = SNEEncoder(**SMALL)
    fresh.fit_input_statistics([mlp([1, 8, 1], torch.Generator().manual_seed(0))])  # no sine layer
    assert fresh.caveat(bare_record) is None
    from sne.weights.arch import network_reader
    with pytest.raises(SneError, match="expected FILE.py:FACTORY"):
        network_reader("run", None)  # outside predict and embed no run is there to name architectures
    from sne.cli import _network_reader
    with pytest.raises(SneError, match="this run does not record the architectures it was trained on"):
        _network_reader("run", trained, trained=None)  # a run from before runs recorded them


def test_phases_leave_training_on_networks_without_sine_layers_bit_for_bit_as_it_was(tmp_path):
    """On a CNN zoo (no sine layers), SNE reading phases trains and predicts exactly as SNE that does
    not: its phase map reads zeros, gets zero gradients (so Adam never moves it), and is drawn aside
    from the random stream; so CNN results of SNE without phases are default SNE's."""
    from sne.train import TrainConfig, fit, load_run
    from sne.zoo import generate_zoo

    zoo = generate_zoo("small-cnn", tmp_path / "zoo", n=12, seed=0, options={"epochs": 1, "batch_size": 256},
                       command="test", progress=False)
    states, predictions = [], []
    for phases in (True, False):
        config = TrainConfig(zoo=str(zoo.path), target="test_accuracy", encoder="sne",
                             encoder_options={**SMALL, "use_neuron_phases": phases}, epochs=2, batch_size=4,
                             head_hidden=[16], seed=0, device="cpu")
        fit(config, tmp_path / f"run-{phases}", progress=False)
        trained = load_run(tmp_path / f"run-{phases}", device="cpu")
        states.append({k: v for k, v in trained.predictor.state_dict().items() if ".phase." not in k})
        predictions.append(trained.predictor.predict(zoo.records(zoo.split_ids("test"))))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert (predictions[0] == predictions[1]).all()
