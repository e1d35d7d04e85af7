"""Recipe options for shifted test zoos: small-cnn's kernel size, sine-inr's input range and initial gains."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from sne.bench.results import targets_digest, zoo_label
from sne.encoders import build_encoder
from sne.errors import SneError
from sne.zoo import Zoo, generate_zoo, get_recipe
from sne.zoo.cnn import SMALL_CNN, small_cnn_architecture, train_alone
from sne.zoo.cnn_nets import ZooCnn
from sne.zoo.recipes import FitProgress
from sne.zoo.sine_inr import grid, sine_targets
from sne.zoo.siren import Siren, hidden_gains, initial_parameters

#: Small zoo options per recipe, and each new option at its default value.
DEFAULT_OF_THE_OPTION = {
    "small-cnn": ({"epochs": 1}, {"kernel": 3}),
    "sine-inr": ({"steps": 20}, {"input_range": 1, "init_gain": 1, "hidden_gain": 1, "phase_max": 0}),
}


def weights_digest(zoo: Zoo) -> str:
    digest = hashlib.sha256()
    for record in zoo.records(range(len(zoo))):
        for layer in record.layers:
            for tensor in (layer.weight, layer.bias):
                digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("recipe", sorted(DEFAULT_OF_THE_OPTION))
def test_the_option_at_its_default_makes_the_default_zoo_bit_for_bit(recipe, tmp_path):
    """Compared within one run, not with digests recorded elsewhere: another CPU rounds otherwise.
    (Checked once when the options came: the default zoos equal those the code made before them.)"""
    options, explicit = DEFAULT_OF_THE_OPTION[recipe]
    zoo = generate_zoo(recipe, tmp_path / "zoo", n=8, seed=0, options=options, command="test", progress=False)
    same = generate_zoo(recipe, tmp_path / "same", n=8, seed=0, options={**options, **explicit}, command="test",
                        progress=False)
    assert (targets_digest(same), weights_digest(same)) == (targets_digest(zoo), weights_digest(zoo))
    # The default is left out of the options, so existing zoos resume and results files keep merging.
    assert not {"kernel", "input_range", "init_gain", "hidden_gain", "hidden_gain_max", "phase_max"} & set(
        zoo.manifest["options"])
    assert same.manifest["options"] == zoo.manifest["options"]


# -- small-cnn: kernel -------------------------------------------------------------------------------


def test_larger_kernels_keep_the_map_sizes_and_are_recorded():
    for kernel, padding in ((5, 1), (7, 2), (27, 12)):
        arch = small_cnn_architecture(kernel)
        assert arch.conv_shapes() == SMALL_CNN.conv_shapes() and arch.readout_features() == 16
        assert all(c.kernel == kernel and c.padding == padding for c in arch.convs)
    assert small_cnn_architecture(1).conv_shapes() == [(16, 14, 14), (16, 7, 7), (16, 4, 4)]
    layers = get_recipe("small-cnn").architecture({"kernel": 7})
    assert [(l["weight_shape"][2:], l["padding"], l["output_shape"]) for l in layers[:3]] == [
        ([7, 7], 2, [16, 13, 13]), ([7, 7], 2, [16, 6, 6]), ([7, 7], 2, [16, 2, 2])]
    assert [l["padding"] for l in get_recipe("small-cnn").architecture({})[:3]] == [0, 0, 0]


@pytest.mark.parametrize("kernel", [2, 4, 0, -3, 29, 2.0, True, "7"])
def test_bad_kernels_are_refused_in_one_line(kernel):
    with pytest.raises(SneError, match="option 'kernel' must be an odd integer from 1 to 27") as error:
        get_recipe("small-cnn").resolve_options({"kernel": kernel})
    assert "\n" not in str(error.value)
    with pytest.raises(SneError, match="has no option 'kernel'"):
        get_recipe("cnn-s").resolve_options({"kernel": 5})


def test_a_7x7_zoo_trains_sne_reads_it_and_neural_graphs_refuse_it(tmp_path):
    zoo = generate_zoo("small-cnn", tmp_path / "k7", n=8, seed=0, options={"epochs": 1, "kernel": 7},
                       command="test", progress=False)
    assert zoo.manifest["options"]["kernel"] == 7 and zoo.manifest["diverged"] == 0
    records = zoo.records(zoo.split_ids("train"))
    assert [tuple(l.weight.shape) for l in records[0].layers] == [(16, 1, 7, 7), (16, 16, 7, 7), (16, 16, 7, 7), (10, 16)]
    # The stored weights are the networks the recipe measured: a plain module (padded the same way) agrees.
    from sne.data import load_dataset

    data = load_dataset("digits")
    activations = zoo.targets["activation"]["classes"]
    for record in records[:2]:
        network = record.meta["id"]
        module = ZooCnn(small_cnn_architecture(7), activations[int(zoo.metadata.at[network, "activation"])])
        module.load_state_dict(record.to_state_dict())
        with torch.no_grad():
            accuracy = float((module(data.test_x).argmax(1) == data.test_y).float().mean())
        assert abs(accuracy - zoo.metadata.at[network, "test_accuracy"]) <= 2 / len(data.test_y)
    encoder = build_encoder("sne", hidden=16, heads=2, out_dim=8)
    codes = encoder(encoder.prepare(records))
    assert codes.shape == (len(records), 8) and bool(torch.isfinite(codes).all())
    with pytest.raises(SneError, match="kernel 7x7 is larger than the maximum kernel size 5"):
        build_encoder("ng_gnn").prepare(records)


def test_a_7x7_network_trained_alone_ends_where_the_stacked_one_does():
    recipe = get_recipe("small-cnn")
    options = recipe.resolve_options({"epochs": 1, "batch_size": 256, "kernel": 7})
    shard = recipe.generate_shard(torch.tensor([3]).numpy(), 0, options, FitProgress())
    model, losses = train_alone(recipe, 3, 0, options)
    assert len(losses) == 6 and model.conv1.padding == (2, 2)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(shard.tensors[key][0], value, rtol=0, atol=2e-3, msg=key)


# -- sine-inr: input_range -------------------------------------------------------------------------


def _grid_mse(zoo: Zoo, input_range: float, with_phase: bool = True) -> list[float]:
    """Each INR's MSE to its sine (with its phase, where the zoo has one, unless not ``with_phase``) over the
    recipe's grid, fed as x * input_range / pi."""
    x = grid(zoo.manifest["options"]["points"])
    errors = []
    for record in zoo.records(range(len(zoo))):
        module = Siren()
        module.load_state_dict(record.to_state_dict())
        with torch.no_grad():
            fitted = module((x * input_range / math.pi).float()[:, None])[:, 0]
        row = zoo.metadata.loc[record.meta["id"]]
        phase = [float(row["phase"])] if with_phase and "phase" in row else None
        target = sine_targets([row["frequency"]], x, phase)[0]
        errors.append(float(((fitted - target) ** 2).mean()))
    return errors


def test_a_wider_input_range_fits_the_same_sines_with_other_weights(tmp_path):
    zoos = {r: generate_zoo("sine-inr", tmp_path / f"range-{r}", n=8, seed=0, options={"steps": 150, "input_range": r},
                            command="test", progress=False) for r in (1.0, 2.0)}
    wide = zoos[2.0]
    assert wide.manifest["options"]["input_range"] == 2.0
    assert wide.manifest["dataset"]["network_input"] == "x * 2 / pi, in [-2, 2) (option input_range)"
    assert zoos[1.0].manifest["dataset"]["network_input"] == "x / pi, in [-1, 1)"
    assert wide.metadata["frequency"].equals(zoos[1.0].metadata["frequency"])
    changed = [not torch.equal(a.layers[0].weight, b.layers[0].weight)
               for a, b in zip(wide.records(range(8)), zoos[1.0].records(range(8)))]
    assert all(changed)
    # Every INR fits its sine (a sine's variance is 1/2) on the inputs the recipe records, not on x / pi.
    errors = _grid_mse(wide, 2.0)
    assert max(errors) < 1e-3
    assert errors == pytest.approx(wide.metadata["fit_mse"].tolist(), rel=1e-3, abs=1e-7)
    assert min(_grid_mse(wide, 1.0)) > 100 * max(errors)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "2", True])
def test_bad_input_ranges_are_refused_in_one_line(value):
    with pytest.raises(SneError, match="option 'input_range' must be") as error:
        get_recipe("sine-inr").resolve_options({"input_range": value})
    assert "\n" not in str(error.value)


# -- sine-inr: phase_max ---------------------------------------------------------------------------


def test_random_phases_fit_sines_shifted_by_each_networks_own_phase(tmp_path):
    options = {"steps": 150, "phase_max": 2 * math.pi}
    shifted = generate_zoo("sine-inr", tmp_path / "phase", n=8, seed=0, options=options, command="test", progress=False)
    plain = generate_zoo("sine-inr", tmp_path / "plain", n=8, seed=0, options={"steps": 150}, command="test",
                         progress=False)
    assert shifted.manifest["options"]["phase_max"] == pytest.approx(2 * math.pi)
    assert shifted.manifest["dataset"]["function"] == "f(x) = sin(a x + phi)"
    phases = shifted.metadata["phase"]
    assert ((phases >= 0) & (phases < 2 * math.pi)).all() and phases.nunique() == 8
    # The frequencies (the target) and initial weights are the default zoo's; only the fitted functions move.
    assert shifted.metadata["frequency"].equals(plain.metadata["frequency"])
    assert shifted.metadata["init_seed"].equals(plain.metadata["init_seed"])
    assert "phase" not in plain.metadata.columns
    errors = _grid_mse(shifted, 1.0)
    assert max(errors) < 1e-3
    assert errors == pytest.approx(shifted.metadata["fit_mse"].tolist(), rel=1e-3, abs=1e-7)
    assert min(_grid_mse(shifted, 1.0, with_phase=False)) > 100 * max(errors)
    # Each network's phase comes from (seed, id) alone: a smaller zoo of the same seed has the same first ones.
    few = generate_zoo("sine-inr", tmp_path / "few", n=4, seed=0, options={**options, "steps": 1}, command="test",
                       progress=False)
    assert few.metadata["phase"].tolist() == phases.iloc[:4].tolist()


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "2", True])
def test_bad_phase_ranges_are_refused_in_one_line(value):
    with pytest.raises(SneError, match="option 'phase_max' must") as error:
        get_recipe("sine-inr").resolve_options({"phase_max": value})
    assert "\n" not in str(error.value)


# -- sine-inr (and digit-inr): init_gain -----------------------------------------------------------


def test_another_initial_gain_scales_every_initial_bound_and_still_fits(tmp_path):
    plain, doubled = initial_parameters([3, 4]), initial_parameters([3, 4], gain=2.0)
    for a, b in zip(plain, doubled):
        torch.testing.assert_close(b, 2 * a, rtol=1e-6, atol=0)
    zoo = generate_zoo("sine-inr", tmp_path / "gain", n=8, seed=0, options={"steps": 150, "init_gain": 2.0},
                       command="test", progress=False)
    assert zoo.manifest["options"]["init_gain"] == 2.0
    assert zoo_label(zoo) == "gain init_gain=2.0"  # tables name the shift
    assert max(_grid_mse(zoo, 1.0)) < 1e-2


@pytest.mark.parametrize("value", [0, -1, float("nan"), "2", True])
def test_bad_initial_gains_are_refused_in_one_line(value):
    with pytest.raises(SneError, match="option 'init_gain' must be") as error:
        get_recipe("sine-inr").resolve_options({"init_gain": value})
    assert "\n" not in str(error.value)


# -- sine-inr (and digit-inr): hidden_gain, one for all or each network's own -------------------------


def test_a_hidden_gain_scales_the_weights_after_the_first_layer_only():
    plain, scaled = initial_parameters([3, 4]), initial_parameters([3, 4], hidden_gains=[4.0, 0.5])
    for index, (a, b) in enumerate(zip(plain, scaled)):
        factor = torch.tensor([4.0, 0.5]).view(2, *[1] * (a.dim() - 1)) if index in (2, 4) else 1.0
        torch.testing.assert_close(b, factor * a, rtol=1e-6, atol=0)


def test_each_network_draws_its_hidden_gain_from_seed_and_id_alone(tmp_path):
    options = get_recipe("sine-inr").resolve_options({"steps": 150, "hidden_gain": 0.5, "hidden_gain_max": 16})
    gains = hidden_gains("sine-inr", 0, range(200), options)
    assert 0.5 <= gains.min() and gains.max() <= 16 and len(set(gains.round(9))) == 200
    # Log-uniform: as many networks below the geometric middle (~2.83) as above it.
    assert 70 < (gains < math.sqrt(8)).sum() < 130
    assert hidden_gains("sine-inr", 0, [7], options)[0] == gains[7] != hidden_gains("sine-inr", 1, [7], options)[0]
    zoo = generate_zoo("sine-inr", tmp_path / "gains", n=6, seed=0, options={"steps": 150, "hidden_gain": 0.5,
                       "hidden_gain_max": 16}, command="test", progress=False)
    assert zoo.metadata["hidden_gain"].tolist() == pytest.approx(gains[:6].tolist())
    assert zoo_label(zoo) == "gains hidden_gain=0.5 hidden_gain_max=16.0"
    # Up to 16 times SIREN's scale, every network still fits its sine.
    assert max(_grid_mse(zoo, 1.0)) < 1e-2


@pytest.mark.parametrize(("options", "message"), [
    ({"hidden_gain": 0}, "option 'hidden_gain' must be"),
    ({"hidden_gain_max": float("inf")}, "option 'hidden_gain_max' must be"),
    ({"hidden_gain": 2, "hidden_gain_max": 2}, "must exceed 'hidden_gain'"),
    ({"init": "shared", "hidden_gain_max": 4}, "shared initialisation"),
])
def test_bad_hidden_gains_are_refused_in_one_line(options, message):
    for recipe in ("sine-inr", "digit-inr"):
        with pytest.raises(SneError, match=message) as error:
            get_recipe(recipe).resolve_options(options)
        assert "\n" not in str(error.value)
