"""SNE, DeepSets and StatNN on records of any architecture (ResNet, ViT, GPT, MobileNet, UNet and
held-out variants), and the first release's chain records read exactly as before."""

from __future__ import annotations

import json

import pytest
import torch

from network_families import FAMILIES, HELD_OUT_VARIANTS
from sne.encoders import build_encoder, build_encoder_from_config
from sne.encoders.chunking import (
    CHUNK_TYPES,
    CONCAT_TOKEN,
    FIRST_RELEASE_CHUNK_TYPES,
    LEVEL_POSITION_OFFSET,
    NUM_CHUNK_TYPES,
    RESIDUAL_TOKEN,
    layer_parts,
    merge_tokens,
    pad_chunk,
    type_positions,
)
from sne.encoders.deepsets import DeepSetsEncoder, tensor_positions
from sne.encoders.positional import sinusoidal_encoding
from sne.encoders.sne import SNEEncoder
from sne.errors import SneError
from sne.weights.permute import random_equivalent_permutation
from sne.weights.record import Layer, NetworkRecord, make_layer
from sne.weights.trace import record_from_module

ALL_FAMILIES = [*FAMILIES.items(), *HELD_OUT_VARIANTS]
NAMES = [name for name, _ in ALL_FAMILIES]
SMALL_SNE = {"hidden": 16}  # otherwise the default options
#: The first release's SNE where later defaults differ: one set per layer part, the chunk stage at
#: full width, no neuron features.
FIRST_RELEASE_SNE = {"part_window": None, "chunk_hidden": None, "use_source_features": False,
                     "use_own_neuron_features": False}


@pytest.fixture(scope="module")
def records() -> dict[str, NetworkRecord]:
    """float64 records of every family, traced once."""
    traced = {}
    for name, factory in ALL_FAMILIES:
        module, example = factory()
        traced[name] = record_from_module(module, example, source=name).to(torch.float64)
    return traced


def permuted(record: NetworkRecord) -> NetworkRecord:
    return random_equivalent_permutation(record, torch.Generator().manual_seed(0))


def chain_mlp(widths: list[int], seed: int = 0, activation: str | None = None) -> NetworkRecord:
    g = torch.Generator().manual_seed(seed)
    layers = [make_layer(f"fc{i}", i, torch.randn(o, n, generator=g, dtype=torch.float64),
                         torch.randn(o, generator=g, dtype=torch.float64), activation)
              for i, (n, o) in enumerate(zip(widths[:-1], widths[1:]))]
    return NetworkRecord(tuple(layers), source=f"mlp{widths}")


def chain_cnn(seed: int = 0) -> NetworkRecord:
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 1, 3, 3), (6, 4, 5, 5), (10, 6)]
    layers = [make_layer(f"layer{i}", i, torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(shape[0], generator=g, dtype=torch.float64) if i != 1 else None)
              for i, shape in enumerate(shapes)]
    return NetworkRecord(tuple(layers), source="cnn")


@pytest.fixture(scope="module")
def sne() -> SNEEncoder:
    torch.manual_seed(0)
    return SNEEncoder(**SMALL_SNE).double().eval()


@pytest.fixture(scope="module")
def deepsets() -> DeepSetsEncoder:
    torch.manual_seed(0)
    return DeepSetsEncoder().double().eval()


# --- every family ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sne_and_deepsets_encode_every_family_and_its_permutation(name, records, sne, deepsets):
    record = records[name]
    assert not record.is_chain
    pair = [record, permuted(record)]
    for encoder in (sne, deepsets):
        with torch.no_grad():
            z = encoder(encoder.prepare(pair))
        assert z.shape == (2, encoder.out_dim) and torch.isfinite(z).all(), encoder.name
    # DeepSets codes are exactly invariant to functionally-equivalent permutations.
    with torch.no_grad():
        z = deepsets(deepsets.prepare(pair))
    torch.testing.assert_close(z[0], z[1], atol=1e-9, rtol=0)


def test_a_batch_of_resnet_vit_and_chain_encodes_in_one_call_as_each_alone(records, sne, deepsets):
    batch = [records["resnet"], records["vit"], chain_mlp([2, 8, 1])]
    for encoder in (sne, deepsets):
        with torch.no_grad():
            together = encoder(encoder.prepare(batch))
            alone = torch.cat([encoder(encoder.prepare([r])) for r in batch])
        assert together.shape == (3, encoder.out_dim) and torch.isfinite(together).all()
        torch.testing.assert_close(together, alone, atol=1e-9, rtol=0)


@pytest.mark.parametrize("options", [{}, {"use_hierarchy": False}], ids=["default", "flat"])
def test_gradients_reach_every_sne_parameter_merge_tokens_included(records, options):
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL_SNE, **options).double()
    batch = [records["resnet"], records["unet"], records["vit"], records["gpt"], chain_mlp([2, 8, 1], activation="sine")]
    encoder(encoder.prepare(batch)).square().sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert (encoder.merge_tokens.grad.abs().sum(1) > 0).all()  # residual (resnet) and concatenation (unet)


def test_deepsets_gradients_flow(records):
    torch.manual_seed(0)
    encoder = DeepSetsEncoder().double()
    encoder(encoder.prepare([records["mobilenet"], records["gpt"]])).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_sne_options_for_chains_run_on_any_network(records):
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL_SNE, use_source_features=True, use_input_positions=True, chunk_micro_batch=64)
    z = encoder.double().eval()(encoder.prepare([records["resnet"], records["vit"]]))
    assert torch.isfinite(z).all()
    batch = pad_chunk([records["resnet"]], 32, torch.float64, input_positions=True)
    # The stem convolution reads the image (3 channels): its weights carry their channel's coordinate.
    stem = records["resnet"].layers[0]
    assert stem.inputs[0].sources == (-1,)
    flagged = torch.cat(batch.input_positions)[:, 1].sum()
    assert flagged == stem.weight.shape[0] * stem.weight.shape[1]


# --- parts, types and merge tokens ----------------------------------------------------------------


def test_type_table_keeps_the_first_release_and_positions_never_collide():
    assert CHUNK_TYPES[:FIRST_RELEASE_CHUNK_TYPES] == tuple(
        (kind, role) for kind in ("linear", "conv1d", "conv2d", "conv3d") for role in ("weight", "bias"))
    assert len(set(CHUNK_TYPES)) == NUM_CHUNK_TYPES
    positions = type_positions(torch.arange(NUM_CHUNK_TYPES))
    assert positions[:FIRST_RELEASE_CHUNK_TYPES].tolist() == list(range(FIRST_RELEASE_CHUNK_TYPES))
    # New types below 0, levels from LEVEL_POSITION_OFFSET on: three disjoint ranges.
    assert (positions[FIRST_RELEASE_CHUNK_TYPES:] < 0).all() and LEVEL_POSITION_OFFSET == FIRST_RELEASE_CHUNK_TYPES
    assert len(set(positions.tolist())) == NUM_CHUNK_TYPES


def parts_by_name(layer: Layer) -> dict[str, object]:
    return {part.name: part for part in layer_parts(layer, "test")}


def test_parts_of_normalisation_attention_embedding_and_free_parameters(records):
    vit, gpt, resnet = records["vit"], records["gpt"], records["resnet"]
    bn = parts_by_name(resnet.layers[1])
    assert list(bn) == ["weight", "bias", "running_mean", "running_var"]  # no num_batches_tracked
    assert [CHUNK_TYPES[p.type] for p in bn.values()] == [("batch_norm", r) for r in bn]
    assert all(p.rows == 8 and p.row_length == 1 for p in bn.values())

    attention = next(l for l in vit.layers if l.kind == "attention")
    parts = parts_by_name(attention)
    fused = attention.tensors["in_proj_weight"]
    assert [CHUNK_TYPES[p.type][1] for p in parts.values()] == [
        "q_weight", "k_weight", "v_weight", "q_bias", "k_bias", "v_bias", "out_weight", "out_bias"]
    for i, projection in enumerate("qkv"):
        part = parts[f"in_proj_weight[{projection}]"]
        assert (part.rows, part.row_length) == (16, 16)
        torch.testing.assert_close(part.taps[:, 0], fused[16 * i : 16 * (i + 1)].reshape(-1), atol=0, rtol=0)
    assert (parts["out_proj.weight"].rows, parts["out_proj.weight"].row_length) == (16, 16)

    token_embedding = parts_by_name(gpt.layers[0])["weight"]  # (vocab 50, dim 16): a row per token
    assert CHUNK_TYPES[token_embedding.type] == ("embedding", "weight")
    assert (token_embedding.rows, token_embedding.row_length) == (50, 16)

    free = parts_by_name(vit.layers[1])  # cls_token (1, 1, 16) and pos_embed (1, 17, 16)
    assert {CHUNK_TYPES[p.type] for p in free.values()} == {("parameter", "value")}
    assert [(p.rows, p.row_length) for p in free.values()] == [(1, 16), (17, 16)]
    assert layer_parts(Layer("mask", "buffer", 0, {"mask": torch.ones(3)}), "test") == []


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_convolution_rows_are_output_channels(groups):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)  # (in 4, out / groups 3, 2x2)
    layer = Layer("up", "conv_transpose2d", 0, {"weight": weight, "bias": torch.zeros(3 * groups)},
                  attrs={"groups": groups})
    part = layer_parts(layer, "test")[0]
    assert CHUNK_TYPES[part.type] == ("conv_transpose2d", "weight") and part.kernel == (2, 2)
    per_group = 4 // groups
    assert (part.rows, part.row_length) == (3 * groups, per_group)
    grid = part.taps.reshape(3 * groups, per_group, 4)
    for out in range(3 * groups):  # output channel `out` of group `out // 3` reads inputs of that group
        group, j = divmod(out, 3)
        expected = weight[group * per_group : (group + 1) * per_group, j].reshape(per_group, 4)
        torch.testing.assert_close(grid[out], expected, atol=0, rtol=0)


def test_merge_tokens_mark_residual_sums_and_concatenations(records):
    resnet, unet = records["resnet"], records["unet"]
    residual = [l.name for l in resnet.layers if merge_tokens(l) == [RESIDUAL_TOKEN]]
    assert "fc" in residual and "layer2.0.conv1" in residual and "layer1.0.conv1" not in residual
    concatenating = [l.name for l in unet.layers if CONCAT_TOKEN in merge_tokens(l)]
    assert concatenating == ["ups.0.conv.block.0", "ups.1.conv.block.0"]
    assert not any(merge_tokens(l) for l in chain_mlp([2, 4, 1]).layers)
    batch = pad_chunk([chain_mlp([2, 4, 1]), resnet], 32)
    assert len(batch.token_kind) == len(residual) and batch.layer_mask.sum() == sum(
        len(layer_parts(l, "")) for l in resnet.layers) + 4 + len(residual)


# --- the first release's chains, unchanged --------------------------------------------------------


def test_chain_chunks_are_the_first_release_layout():
    """Chunk types, values, masks and slots of chains, computed here independently of chunking.py."""
    mlp, cnn = chain_mlp([3, 5, 2]), chain_cnn()
    batch = pad_chunk([mlp, cnn], chunk_size=8, dtype=torch.float64, standardize=True)
    # mlp: W0 5x3 (5 rows of 3: 2 per chunk -> 3 chunks), b0 (1 chunk), W1 2x5 (1 row per chunk: 2), b1 (1).
    # cnn: W0 4x1 3x3 (8 rows of 1 per chunk: 1), b0 (1), W1 6x4 5x5 (2 rows per chunk: 3), W2 10x6 (1 per chunk: 10),
    # b2 (10 values: 2 chunks).
    assert batch.chunk_type.tolist() == [0, 0, 0, 1, 0, 0, 1] + [4, 5, 4, 4, 4] + [0] * 10 + [1, 1]
    assert batch.chunk_level.tolist() == [0, 0, 0, 0, 1, 1, 1] + [0, 0, 1, 1, 1] + [2] * 12
    assert batch.layer_mask.tolist() == [[True, True]] * 2 + [[True, True], [True, False], [True, True]]
    assert batch.part_layer_slot.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert batch.token_kind.numel() == 0 and batch.network_chunk_mask.shape == (2, 17)
    linear = batch.tap_values[[tuple(c.shape) for c in batch.tap_coordinates].index((1, 0))]
    weight = mlp.layers[0].weight
    standardized = (weight - weight.mean()) / weight.std(unbiased=False)
    torch.testing.assert_close(linear[:15, 0], standardized.reshape(-1), atol=1e-12, rtol=0)
    stats = torch.stack([weight.mean(), weight.std(unbiased=False).log()])
    torch.testing.assert_close(batch.part_stats[0], stats, atol=1e-12, rtol=0)


def test_chain_context_is_the_first_release_encoding():
    """Type at its index, level at 8 + level, on the same sinusoidal axis (the first release's)."""
    torch.manual_seed(0)
    encoder = SNEEncoder(hidden=16, standardize_layers=False, **FIRST_RELEASE_SNE).double()
    batch = encoder.prepare([chain_cnn()])
    context = encoder._chunk_context(batch, torch.float64, 0, len(batch.chunk_type))
    expected = sinusoidal_encoding(batch.chunk_type, 16, dtype=torch.float64) + sinusoidal_encoding(
        batch.chunk_level + 8, 16, dtype=torch.float64)
    torch.testing.assert_close(context, expected, atol=1e-12, rtol=0)


def test_first_release_checkpoints_load_and_give_the_same_codes_for_chains():
    torch.manual_seed(0)
    encoder = SNEEncoder(hidden=16, **FIRST_RELEASE_SNE).double()
    chains = [chain_mlp([2, 8, 1]), chain_cnn(), chain_mlp([3, 40, 40, 2], seed=1)]
    encoder.fit_input_statistics(chains)
    expected = encoder.eval()(encoder.prepare(chains))
    # A first-release checkpoint: statistics for its eight chunk types, no merge tokens.
    old = dict(encoder.state_dict())
    old["stats_mean"] = old["stats_mean"][:, :FIRST_RELEASE_CHUNK_TYPES].clone()
    old["stats_std"] = old["stats_std"][:, :FIRST_RELEASE_CHUNK_TYPES].clone()
    del old["merge_tokens"]
    torch.manual_seed(1)
    loaded = SNEEncoder(hidden=16, **FIRST_RELEASE_SNE).double()
    loaded.load_state_dict(old)  # strict
    torch.testing.assert_close(loaded.eval()(loaded.prepare(chains)), expected, atol=0, rtol=0)
    assert (loaded.stats_std[:, FIRST_RELEASE_CHUNK_TYPES:] == 1).all()


def test_deepsets_positions_of_chains_are_two_per_level_and_any_network_gets_distinct_ones(records):
    cnn = chain_cnn()
    assert [p for _, p in tensor_positions(cnn)] == [0, 1, 2, 4, 5]
    resnet = records["resnet"]
    positions = [p for _, p in tensor_positions(resnet)]
    assert len(positions) == len(set(positions)) == sum(
        sum(t.is_floating_point() for t in l.tensors.values()) for l in resnet.layers)


# --- StatNN and refusals --------------------------------------------------------------------------


def test_statnn_reads_one_architecture_by_its_signature_and_refuses_others_in_one_line(records):
    vit = records["vit"]
    torch.manual_seed(0)
    encoder = build_encoder("statnn", architecture=vit.signature).double()
    encoder.fit_input_statistics([vit, permuted(vit)])
    z = encoder.eval()(encoder.prepare([vit, permuted(vit)]))
    assert z.shape == (2, 32) and torch.isfinite(z).all()
    torch.testing.assert_close(z[0], z[1], atol=1e-9, rtol=0)  # statistics are permutation invariant
    # 14 operations: 4 tensors per attention, cls_token and pos_embed, 2 per other one.
    assert encoder.feature_mean.numel() == 7 * (2 * 4 + 2 + 11 * 2)
    rebuilt = build_encoder_from_config(json.loads(json.dumps(encoder.config()))).double()
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt.eval()(rebuilt.prepare([vit])), z[:1], atol=1e-12, rtol=0)
    for other in ("vit-dim24-h3-d3", "resnet"):
        with pytest.raises(SneError, match="takes only the architecture it was built for") as error:
            encoder.prepare([records[other]])
        assert "\n" not in str(error.value) and other in str(error.value)
    legacy = build_encoder("statnn", architecture=vit.architecture)
    with pytest.raises(SneError, match=r"layer '<root>' of kind 'parameter' also holds 'pos_embed'"):
        legacy.prepare([vit])


def test_statnn_built_from_a_chain_architecture_reads_chains_as_before():
    cnn = chain_cnn()
    encoder = build_encoder("statnn", architecture=cnn.architecture)
    by_signature = build_encoder("statnn", architecture=cnn.signature)
    features = encoder.prepare([cnn])
    assert features.shape == (1, 7 * 5)
    torch.testing.assert_close(by_signature.prepare([cnn]), features, atol=0, rtol=0)
    expected = torch.quantile(cnn.layers[1].weight.reshape(-1), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0],
                                                                             dtype=torch.float64))
    torch.testing.assert_close(features[0, 14 + 2 : 14 + 7].double(), expected.float().double())


def test_sne_refuses_unknown_kinds_and_weight_outputs_of_other_networks_in_one_line(records):
    encoder = SNEEncoder(**SMALL_SNE)
    odd = NetworkRecord((Layer("rnn", "lstm", 0, {"weight_ih_l0": torch.randn(8, 4)}),), source="odd.pt")
    with pytest.raises(SneError, match=r"odd.pt: SNE cannot encode layer 'rnn' of kind 'lstm'") as error:
        encoder.prepare([odd])
    assert "\n" not in str(error.value)
    encoder.make_weight_head()
    with pytest.raises(SneError, match=r"layer 'bn1' of kind 'batch_norm'") as error:
        encoder.prepare_weights([records["resnet"]])
    assert "\n" not in str(error.value)


class ResidualStream(torch.nn.Module):
    """Wild Park's residual CNN: every convolution after the first adds its activation to a stream
    that the next ones and the head read."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(1, 4, 3, padding=1),
                                          *(torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))])
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.convs[0](x))
        for conv in self.convs[1:]:
            x = x + torch.relu(conv(x))
        return self.head(x.mean((2, 3)))


def test_residual_features_follow_the_stream_and_keep_invariance():
    from sne.encoders.chunking import RecordParts, own_neuron_features, source_neuron_features

    torch.manual_seed(0)
    record = record_from_module(ResidualStream(), torch.randn(1, 1, 6, 6), source="stream").to(torch.float64)
    assert [piece.sources for layer in record.layers[1:] for piece in layer.inputs] == [(0,), (0, 1), (0, 1, 2)]
    plain, summed = source_neuron_features(record), source_neuron_features(record, through_sums=True)
    assert [f is None for f in plain] == [True, False, True, True]
    assert [f is None for f in summed] == [True, False, False, False]
    torch.testing.assert_close(summed[1], plain[1], rtol=0, atol=0)
    # The head's input channel j: the mean over the three writers of (bias, rms of incoming weights,
    # 1, log norm of raw incoming weights, mean of incoming weights, and no phase: no sine layer).
    memo = RecordParts(record)
    writers = []
    for index, layer in enumerate(record.layers[:3]):
        weight, bias = memo.rows(index)[0]
        ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        gain = layer.weight.reshape(4, -1).norm(dim=1).log()
        writers.append(torch.stack([bias.squeeze(1), weight.square().mean(1).sqrt(), ones, gain, weight.mean(1),
                                    zeros, zeros], 1))
    torch.testing.assert_close(summed[3], torch.stack(writers).mean(0), rtol=0, atol=1e-12)
    # The first convolution is read by every later layer: the rms runs over all their columns.
    own = own_neuron_features(record, through_sums=True)
    readers = [memo.rows(index)[0][0].reshape(layer.out_features, 4, -1)
               for index, layer in enumerate(record.layers) if index > 0]
    squares = sum(columns.square().sum(dim=(0, 2)) for columns in readers)
    count = sum(columns[:, 0].numel() for columns in readers)
    torch.testing.assert_close(own[0][:, 1], (squares / count).sqrt(), rtol=0, atol=1e-12)
    # The second is read only through sums: its reader is unknown without them.
    assert own[1][:, 2].eq(1).all() and own_neuron_features(record)[1][:, 2].eq(0).all()
    # Features move with the stream's permutation: SNE stays exactly invariant.
    torch.manual_seed(0)
    encoder = SNEEncoder(**SMALL_SNE, use_residual_features=True).double().eval()
    with torch.no_grad():
        z = encoder(encoder.prepare([record, permuted(record)]))
        blind = SNEEncoder(**SMALL_SNE).double().eval()
    torch.testing.assert_close(z[0], z[1], atol=1e-9, rtol=0)
    assert not torch.equal(encoder.prepare([record]).source_features[0], blind.prepare([record]).source_features[0])
