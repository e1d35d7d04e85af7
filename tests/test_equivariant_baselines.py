"""Weight-space baselines nfn_np, nfn_hnp, nft and dwsnet: shapes, exact invariance to hidden-neuron
permutations, equivariance and completeness of the DWSNet layer, refusals, config round trip, learning."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sne.encoders import build_encoder, build_encoder_from_config
from sne.encoders.dwsnet import DWSLayer, to_spaces, weight_spaces
from sne.errors import SneError
from sne.train import TrainConfig, fit
from sne.train.evaluate import evaluate_run
from sne.weights.permute import permute_hidden, random_equivalent_permutation, random_permutations
from sne.weights import StackedWeights
from sne.weights.record import NetworkRecord, make_layer

ENCODERS = ["nfn_np", "nfn_hnp", "nft", "dwsnet"]
SMALL = {
    "nfn_np": {"hidden": 8, "num_layers": 2, "out_dim": 8},
    "nfn_hnp": {"hidden": 8, "num_layers": 2, "out_dim": 8},
    "nft": {"hidden": 8, "heads": 2, "num_layers": 2, "out_dim": 8},
    "dwsnet": {"hidden": 8, "num_layers": 2, "out_dim": 8},
}
SIREN = [(32, 1), (32, 32), (1, 32)]
MLP = [(7, 2), (5, 7), (3, 5)]
#: Conv layers, global average pooling, a linear layer; the middle layer has no bias.
CNN = [(5, 2, 3, 3), (4, 5, 3, 3), (6, 4, 1, 1), (3, 6)]
CNN_1D = [(4, 2, 3), (3, 4, 5), (2, 3)]
#: Which architectures each encoder takes (the nfn package's layers take 2-D kernels only).
SUPPORTED = {name: {"mlp": MLP, "cnn": CNN} for name in ENCODERS}
SUPPORTED["dwsnet"] = {"mlp": MLP, "cnn": CNN, "cnn1d": CNN_1D}


def network(shapes, generator: torch.Generator, dtype=torch.float64) -> NetworkRecord:
    """A chain of layers with the given weight shapes; every layer but the second has a bias."""
    layers = [
        make_layer(f"layer{i}", i, torch.randn(*shape, generator=generator, dtype=dtype),
                   None if i == 1 else torch.randn(shape[0], generator=generator, dtype=dtype))
        for i, shape in enumerate(shapes)
    ]
    return NetworkRecord(tuple(layers), source=f"net{shapes}")


def built(name: str, shapes, dtype=torch.float64, **options):
    torch.manual_seed(0)
    architecture = network(shapes, torch.Generator().manual_seed(0)).architecture
    return build_encoder(name, architecture=architecture, **{**SMALL[name], **options}).to(dtype).eval()


def encode(encoder, records) -> torch.Tensor:
    with torch.no_grad():
        return encoder(encoder.prepare(records))


# --- shapes and gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_default_encoder_shapes_and_gradients(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    records = [network(SIREN, g, torch.float32) for _ in range(3)]
    encoder = build_encoder(name, architecture=records[0].architecture)
    encoder.fit_input_statistics(records)
    z = encoder(encoder.prepare(records))
    assert z.shape == (3, encoder.out_dim) and torch.isfinite(z).all()
    z.square().sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert not unused


# --- invariance -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shapes"),
    [pytest.param(name, shapes, id=f"{name}-{arch}") for name in ENCODERS for arch, shapes in SUPPORTED[name].items()],
)
def test_code_is_invariant_to_hidden_neuron_permutations(name, shapes):
    encoder = built(name, shapes)
    g = torch.Generator().manual_seed(2)
    records = [network(shapes, g) for _ in range(3)]
    encoder.fit_input_statistics(records)
    z = encode(encoder, records)
    permuted = encode(encoder, [random_equivalent_permutation(r, g) for r in records])
    torch.testing.assert_close(permuted, z, atol=1e-10, rtol=0)
    # The test can fail: a change that is not a symmetry (rows of a hidden layer reordered without
    # the next layer's inputs) changes the code, and so do other networks.
    first = records[0]
    swap = torch.arange(shapes[0][0]).roll(1)
    broken = first.with_layers([first.layers[0].with_tensors(weight=first.layers[0].weight[swap]), *first.layers[1:]])
    assert (encode(encoder, [broken]) - z[:1]).abs().max() > 1e-6
    assert (z[0] - z[1]).abs().max() > 1e-6


# --- the DWSNet layer -----------------------------------------------------------------------------


def _permute_spaces(xs, spaces, perms):
    """Apply hidden-neuron permutations (``perms[t - 1]`` for neuron layer t) to space tensors."""
    out = []
    for x, space in zip(xs, spaces):
        for j, axis in enumerate(space.axes):
            x = x.index_select(1 + j, perms[axis - 1])
        out.append(x)
    return out


@st.composite
def chains(draw):
    """Weight shapes of a random chain: some conv layers (one kernel shape), then linear layers."""
    widths = draw(st.lists(st.integers(1, 4), min_size=2, max_size=5))
    kernel = draw(st.sampled_from([(), (2,), (1, 3)]))
    convs = draw(st.integers(0, len(widths) - 2)) if kernel else 0
    return [(n_out, n_in, *(kernel if i < convs else ())) for i, (n_in, n_out) in enumerate(zip(widths, widths[1:]))]


@settings(max_examples=30, deadline=None)
@given(shapes=chains(), channels=st.tuples(st.integers(1, 3), st.integers(1, 3)), seed=st.integers(0, 2**16))
def test_dws_layer_is_equivariant(shapes, channels, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    record = network(shapes, g)
    spaces = weight_spaces(record.architecture)
    perms = random_permutations(record, g)
    # The input conversion commutes with permutations: permuting the record = permuting its spaces.
    xs = to_spaces(StackedWeights.from_records([record], torch.float64), spaces)
    moved = to_spaces(StackedWeights.from_records([permute_hidden(record, perms)], torch.float64), spaces)
    for a, b in zip(_permute_spaces(xs, spaces, perms), moved):
        assert torch.equal(a, b)
    c_in, c_out = channels
    layer = DWSLayer(spaces, c_in, c_out).double()
    xs = [torch.randn(2, *s.sizes, s.width * c_in, generator=g, dtype=torch.float64) for s in spaces]
    for a, b in zip(layer(_permute_spaces(xs, spaces, perms)), _permute_spaces(layer(xs), spaces, perms)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def _count_orbits(shapes) -> tuple[int, int]:
    """Burnside: orbits of the hidden-neuron permutation group on entries and on pairs of entries,
    i.e. the dimensions of the invariant biases and of the equivariant linear maps."""
    widths = [shapes[0][1]] + [s[0] for s in shapes]
    hidden = widths[1:-1]
    on_entries = on_pairs = 0
    groups = list(itertools.product(*(itertools.permutations(range(n)) for n in hidden)))
    for group in groups:
        fixed = [widths[0], *(sum(p[i] == i for i in range(len(p))) for p in group), widths[-1]]
        entries = sum(fixed[l + 1] * (fixed[l] * math.prod(s[2:]) + 1) for l, s in enumerate(shapes))
        on_entries += entries
        on_pairs += entries**2
    return on_entries // len(groups), on_pairs // len(groups)


@pytest.mark.parametrize("shapes", [[(2, 2), (3, 2), (2, 3)], [(2, 1, 2), (3, 2, 2), (1, 3)]])
def test_dws_layer_spans_all_equivariant_linear_maps(shapes):
    """Its weights parameterise exactly the space of equivariant linear maps: as many weights as
    that space has dimensions (Burnside), and linearly independent maps."""
    architecture = network(shapes, torch.Generator()).architecture
    spaces = weight_spaces(architecture)
    layer = DWSLayer(spaces, 1, 1).double()
    params = [p for p in layer.parameters()]
    weights = [m.weight for m in layer.maps]
    biases = [m.bias for m in layer.maps if m.bias is not None]
    invariant_dim, equivariant_dim = _count_orbits(shapes)
    assert sum(w.numel() for w in weights) == equivariant_dim
    assert sum(b.numel() for b in biases) == invariant_dim
    # Basis networks: network e has parameter e set to 1 (every layer here has a bias).
    sizes = [n for s in shapes for n in (math.prod(s), s[0])]
    eye = torch.eye(sum(sizes), dtype=torch.float64).split(sizes, dim=1)
    basis = StackedWeights(tuple(eye[2 * i].reshape(-1, *s) for i, s in enumerate(shapes)),
                           tuple(eye[2 * i + 1] for i in range(len(shapes))), (True,) * len(shapes))
    xs = to_spaces(basis, spaces)
    maps = []
    with torch.no_grad():
        for p in params:
            p.zero_()
        for w in weights:
            for k in range(w.numel()):
                w.view(-1)[k] = 1.0
                maps.append(torch.cat([y.flatten(1) for y in layer(xs)], dim=1).flatten())
                w.view(-1)[k] = 0.0
    assert torch.linalg.matrix_rank(torch.stack(maps)) == equivariant_dim


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_other_architectures_are_refused_with_one_line(name):
    encoder = built(name, SIREN, torch.float32)
    g = torch.Generator().manual_seed(0)
    other = network([(16, 1), (16, 16), (1, 16)], g, torch.float32)
    for call in (encoder.check_records, encoder.prepare):
        with pytest.raises(SneError) as caught:
            call([network(SIREN, g, torch.float32), other])
        message = str(caught.value)
        assert "\n" not in message and "linear 32x32" in message and "linear 16x16" in message
    skipping = network(SIREN, g, torch.float32)
    skipping = skipping.with_layers([*skipping.layers[:2], replace(skipping.layers[2], skip_from=(0,))])
    with pytest.raises(SneError, match="skip connection"):
        encoder.check_records([skipping])


@pytest.mark.parametrize("name", ENCODERS)
def test_unbuildable_configurations_are_user_errors(name):
    architecture = network(SIREN, torch.Generator()).architecture
    flattened = network([(4, 1, 3, 3), (10, 36)], torch.Generator()).architecture
    with pytest.raises(SneError, match="fixed architecture"):
        build_encoder(name)
    with pytest.raises(SneError, match="flattened"):
        build_encoder(name, architecture=flattened)
    with pytest.raises(SneError, match=f"unknown {name} option"):
        build_encoder(name, architecture=architecture, width=3)
    with pytest.raises(SneError, match="positive integer"):
        build_encoder(name, architecture=architecture, hidden=0)
    conv1d = network(CNN_1D, torch.Generator()).architecture
    if name == "dwsnet":
        build_encoder(name, architecture=conv1d)
    else:
        with pytest.raises(SneError, match="conv1d"):
            build_encoder(name, architecture=conv1d)


def test_hnp_needs_two_layers_and_nft_heads_divide_hidden():
    single = network([(3, 2)], torch.Generator()).architecture
    with pytest.raises(SneError, match="at least 2 layers"):
        build_encoder("nfn_hnp", architecture=single)
    with pytest.raises(SneError, match="divisible"):
        build_encoder("nft", architecture=network(SIREN, torch.Generator()).architecture, hidden=10, heads=4)


# --- config round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_config_round_trip_gives_identical_codes(name):
    encoder = built(name, CNN, torch.float32)
    g = torch.Generator().manual_seed(3)
    records = [network(CNN, g, torch.float32) for _ in range(4)]
    encoder.fit_input_statistics(records)
    assert encoder.scaler.weight_std.ne(1).all()
    rebuilt = build_encoder_from_config(json.loads(json.dumps(encoder.config())))
    rebuilt.load_state_dict(encoder.state_dict())
    assert rebuilt.options == encoder.options and rebuilt.out_dim == SMALL[name]["out_dim"]
    torch.testing.assert_close(encode(rebuilt.eval(), records), encode(encoder, records), atol=0, rtol=0)


# --- learning -------------------------------------------------------------------------------------

#: Small settings that learn on the shared-init test zoo in a few seconds each.
LEARNING = {
    "nfn_np": ({"hidden": 16, "num_layers": 2, "out_dim": 16}, 10, 3e-3),
    "nfn_hnp": ({"hidden": 16, "num_layers": 2, "out_dim": 16}, 10, 3e-3),
    "nft": ({"hidden": 16, "heads": 2, "num_layers": 1, "out_dim": 16}, 10, 1e-3),
    "dwsnet": ({"hidden": 16, "num_layers": 2, "out_dim": 16}, 10, 3e-3),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_learns_sine_frequency_through_the_shared_training_loop(name, shared_sine_zoo, tmp_path):
    options, epochs, lr = LEARNING[name]
    config = TrainConfig(zoo=str(shared_sine_zoo.path), target="frequency", encoder=name, encoder_options=options,
                         epochs=epochs, batch_size=16, lr=lr, milestones=[0.8], head_hidden=[64], seed=0, device="cpu")
    fit(config, tmp_path / name, progress=False)
    result = evaluate_run(tmp_path / name, device="cpu", plot=False)
    metrics = result["metrics"]
    # Reached here (normalized MSE): nfn_np 0.52, nfn_hnp 0.59, nft 0.73, dwsnet 0.33.
    assert metrics["mse"] < 0.85 * metrics["mean_predictor_mse"]
    assert result["permutation_sensitivity"]["max_abs_change"] < 1e-4  # float32, exactly invariant in theory
