"""The CNN zoo recipes: architectures, stacked training vs training alone, divergence, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from sne.errors import SneError
from sne.weights.permute import random_equivalent_permutation
from sne.zoo import Zoo, generate_zoo
from sne.zoo.cnn import CNN_S, SMALL_CNN, CnnRecipe, CnnS, SmallCnn, evaluate, train_alone
from sne.zoo.cnn_nets import StackedOptimizer, ZooCnn, initial_parameters, reference_optimizer, stacked_forward
from sne.zoo.format import EXCLUDED
from sne.zoo.recipes import FitProgress

# 256 images a batch: 6 steps an epoch on digits' 1347 training images, enough to check everything.
TINY = {"epochs": 1, "batch_size": 256}


def make(recipe: str, out, n: int = 6, seed: int = 1, shard_size: int = 3, **options) -> Zoo:
    return generate_zoo(recipe, out, n=n, seed=seed, options={**TINY, **options}, command="test", progress=False,
                        shard_size=shard_size)


@pytest.fixture(scope="module")
def tiny_zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    return {name: make(name, root / name) for name in ("small-cnn", "cnn-s")}


def test_architectures_and_manifest(tiny_zoos):
    assert SMALL_CNN.num_parameters() == 4970 and CNN_S.num_parameters() == 2464
    assert SMALL_CNN.conv_shapes() == [(16, 13, 13), (16, 6, 6), (16, 2, 2)]
    assert CNN_S.conv_shapes()[-1] == (4, 3, 3) and CNN_S.readout_features() == 36
    for name, zoo in tiny_zoos.items():
        arch = SMALL_CNN if name == "small-cnn" else CNN_S
        module = ZooCnn(arch, "relu")
        state = {key: list(value.shape) for key, value in module.state_dict().items()}
        assert state == {f"{l['name']}.weight": l["weight_shape"] for l in zoo.architecture} | {
            f"{l['name']}.bias": [l["weight_shape"][0]] for l in zoo.architecture
        }
        assert [l["level"] for l in zoo.architecture] == list(range(len(zoo.architecture)))
        assert zoo.architecture[-1]["activation"] == "identity"
        assert all(l["activation_from"] == "activation" for l in zoo.architecture[:-1])
        assert zoo.manifest["options"] == {
            "dataset": "digits", "epochs": 1, "epochs_min": 1, "dropout_max": 0.5, "batch_size": 256,
            "group_size": 256, "device": "cpu",
        }
        assert zoo.manifest["dataset"]["name"] == "digits" and zoo.manifest["diverged"] == 0
        targets = zoo.targets
        assert targets["test_accuracy"]["kind"] == "unit_interval"
        assert targets["generalization_gap"]["kind"] == "regression"
        assert targets["optimizer"] == {**targets["optimizer"], "kind": "class", "num_classes": 3,
                                        "classes": ["sgd", "adam", "rmsprop"]}
        meta = zoo.metadata
        assert meta["optimizer"].dtype.kind == "i" and meta["activation"].isin([0, 1]).all()
        np.testing.assert_allclose(meta["generalization_gap"], meta["train_accuracy"] - meta["test_accuracy"])
        assert ((meta["train_size"] > 100) & (meta["train_size"] <= 1347)).all()


def test_stacked_forward_matches_module():
    generator = torch.Generator().manual_seed(0)
    for arch in (SMALL_CNN, CNN_S):
        for activation in ("relu", "tanh"):
            nets = [initial_parameters(arch, "normal_fan_in", 1.5, generator) for _ in range(3)]
            params = [torch.stack(parts) for parts in zip(*nets)]
            images = torch.rand(5, 3, 1, 28, 28, generator=generator)
            masks = [(torch.rand(5, 3, *shape, generator=generator) < 0.7).float() / 0.7
                     for shape in arch.dropout_shapes()]
            n_conv = len(arch.convs)
            stacked_masks = [m.reshape(5, -1, *m.shape[3:]) if k < n_conv else m.transpose(0, 1)
                             for k, m in enumerate(masks)]
            logits = stacked_forward(arch, params, images.reshape(5, 3, 28, 28), activation, stacked_masks)
            for m in range(3):
                module = ZooCnn(arch, activation)
                module.load_state_dict(dict(zip(module.state_dict(), nets[m])))
                expected = module(images[:, m], [mask[:, m] for mask in masks])
                torch.testing.assert_close(logits[m], expected, rtol=1e-5, atol=1e-5)


def test_stacked_optimizer_matches_torch_optim():
    for name in ("sgd", "adam", "rmsprop"):
        torch.manual_seed(0)
        start = torch.randn(2, 7)
        stacked = start.clone()
        optimizer = StackedOptimizer([stacked], [name, name], [0.01, 0.003], [1e-3, 0.0])  # as `settings`
        singles = [start[m].clone().requires_grad_() for m in range(2)]
        settings = [(0.01, 1e-3), (0.003, 0.0)]
        references = [reference_optimizer(name, [singles[m]], lr, wd) for m, (lr, wd) in enumerate(settings)]
        for _ in range(5):
            grads = torch.randn(2, 7)
            optimizer.step([grads], active=2)
            for m in range(2):
                singles[m].grad = grads[m].clone()
                references[m].step()
        torch.testing.assert_close(stacked, torch.stack([s.detach() for s in singles]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recipe_class", [SmallCnn, CnnS])
def test_stacked_training_equals_training_alone(recipe_class):
    """The real check of the batching: each network of a stacked group ends where it ends trained alone."""
    recipe = recipe_class()
    options = recipe.resolve_options({**TINY, "group_size": 4})
    # The first network of every (optimizer, activation) pair: six networks, groups of at most 4.
    first = {}
    for i in range(200):
        hp = recipe.hyperparameters(0, i, options)
        first.setdefault((hp["optimizer"], hp["activation"]), i)
    assert len(first) == 6
    ids = np.array(sorted(first.values()))
    hps = {int(i): recipe.hyperparameters(0, int(i), options) for i in ids}
    assert all(h["dropout"] > 0 for h in hps.values())
    shard = recipe.generate_shard(ids, 0, options, FitProgress())
    for row, i in enumerate(ids.tolist()):
        model, losses = train_alone(recipe, int(i), 0, options)
        assert len(losses) == 6
        for key, value in model.state_dict().items():
            # RMSProp's first steps divide by sqrt(0.01 g^2): rounding of tiny gradients moves some
            # weights by up to ~1e-3 over six steps; a wrong mask, batch or formula moves them by far more.
            torch.testing.assert_close(shard.tensors[key][row], value, rtol=0, atol=2e-3, msg=f"network {i}, {key}")
        _, correct = evaluate(recipe.arch, [p[None] for p in model.state_dict().values()], hps[i]["activation"],
                              _digits().test_x, _digits().test_y)
        assert shard.rows[row]["id"] == i
        assert abs(shard.rows[row]["test_accuracy"] - float(correct.float().mean())) <= 2 / len(_digits().test_y)


def test_training_lowers_loss():
    recipe = SmallCnn()
    options = recipe.resolve_options({"epochs": 2, "epochs_min": 2, "batch_size": 64})
    data = _digits()
    # Two networks that should learn: Adam at a usual rate, a usual init gain.
    ids = [i for i in range(100) if (lambda hp: hp["optimizer"] == "adam" and 1e-3 < hp["lr"] < 5e-3
                                     and 0.8 < hp["init_gain"] < 2)(recipe.hyperparameters(0, i, options))][:2]
    shard = recipe.generate_shard(np.array(ids), 0, options, FitProgress())
    for row, i in zip(shard.rows, ids):
        hp = recipe.hyperparameters(0, i, options)
        params = [p[None] for p in recipe.initial_parameters(0, i, hp)]
        before = float(evaluate(recipe.arch, params, hp["activation"], data.train_x, data.train_y)[0].mean())
        assert row["train_loss"] < before - 0.5 and row["test_accuracy"] > 0.4, (i, before, row)


def test_records_permute_to_the_same_function(tiny_zoos):
    data = _digits()
    for name, zoo in tiny_zoos.items():
        arch = SMALL_CNN if name == "small-cnn" else CNN_S
        for record in zoo.records([0, 1, 2]):
            activation = zoo.targets["activation"]["classes"][int(zoo.metadata.at[record.meta["id"], "activation"])]
            assert [l.activation for l in record.layers] == [activation] * (len(record.layers) - 1) + ["identity"]
            permuted = random_equivalent_permutation(record, torch.Generator().manual_seed(3))
            assert not torch.equal(permuted.layers[0].weight, record.layers[0].weight)
            outputs = []
            for r in (record, permuted):
                module = ZooCnn(arch, activation)
                module.load_state_dict(r.to_state_dict())
                outputs.append(module(data.test_x[:20]))
            torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_diverged_networks_are_excluded_and_counted(tmp_path, monkeypatch, tiny_zoos):
    real = CnnRecipe.initial_parameters

    def poisoned(self, seed, network_id, hp):
        params = real(self, seed, network_id, hp)
        if network_id in (1, 4):
            params[0][0, 0, 0, 0] = float("nan")
        return params

    monkeypatch.setattr(CnnRecipe, "initial_parameters", poisoned)
    zoo = make("small-cnn", tmp_path / "zoo")
    meta = zoo.metadata
    assert meta["diverged"].tolist() == [i in (1, 4) for i in range(6)]
    assert (meta.loc[[1, 4], "split"] == EXCLUDED).all() and meta.loc[[1, 4], "test_accuracy"].isna().all()
    kept = np.concatenate([zoo.split_ids(s) for s in ("train", "val", "test")])
    assert sorted(kept.tolist()) == [0, 2, 3, 5]
    assert zoo.manifest["diverged"] == 2 and sum(zoo.manifest["splits"].values()) == 4
    with pytest.raises(SneError, match="diverged"):
        zoo.records([4])
    # The NaN never reached the other networks of the group: they equal the clean zoo's.
    clean = tiny_zoos["small-cnn"]
    for i in (0, 2, 3, 5):
        for a, b in zip(zoo.records([i])[0].layers, clean.records([i])[0].layers):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    pd.testing.assert_frame_equal(meta.drop(index=[1, 4]), clean.metadata.drop(index=[1, 4]), check_like=True,
                                  check_dtype=False)


def test_resume_is_bit_identical(tmp_path, monkeypatch, tiny_zoos):
    reference = tiny_zoos["cnn-s"]
    out = tmp_path / "zoo"
    real = CnnRecipe.generate_shard
    calls = []

    def crash_on_second(self, ids, *args):
        calls.append(int(ids[0]))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(self, ids, *args)

    monkeypatch.setattr(CnnRecipe, "generate_shard", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make("cnn-s", out)
    monkeypatch.setattr(CnnRecipe, "generate_shard", real)
    zoo = make("cnn-s", out)
    for index in range(2):
        a = load_file(str(out / "shards" / f"shard-{index:05d}.safetensors"))
        b = load_file(str(reference.path / "shards" / f"shard-{index:05d}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(zoo.metadata, reference.metadata)


def test_cli_generate_and_info(tmp_path, capsys):
    out = tmp_path / "zoo"
    code, _, err = run_cli(["zoo", "generate", "small-cnn", "--dataset", "digits", "--n", "4", "--out", str(out),
                            "-o", "epochs=1", "-o", "batch_size=256", "--seed", "2", "--shard-size", "4"], capsys)
    assert code == 0, err
    assert "zoo with 4 networks" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["batch_size"] == 256 and manifest["recipe"] == "small-cnn"
    plot = tmp_path / "hist.png"
    code, stdout, err = run_cli(["zoo", "info", str(out), "--plot", str(plot)], capsys)
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "small-cnn zoo of 4 networks on digits" in text and "test_accuracy" in text and "diverged 0" in text
    assert plot.stat().st_size > 1000
    code, stdout, _ = run_cli(["zoo", "info", str(out), "--json"], capsys)
    summary = json.loads(stdout)
    assert sum(summary["splits"].values()) == 4 and summary["diverged"] == 0
    assert sum(summary["targets"]["optimizer"]["counts"].values()) == 4
    assert 0 <= summary["targets"]["test_accuracy"]["fraction_at_chance"] <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "epochs=0"], "small-cnn option 'epochs' must be a positive integer, got 0"),
        (["-o", "epochs_min=5", "-o", "epochs=2"], "epochs_min <= epochs"),
        (["-o", "dropout_max=1.5"], "dropout_max"),
        (["-o", "colour=red"], "has no option 'colour'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["-o", "epochs"], "not of the form key=value"),
        (["--steps", "5"], "has no option 'steps'"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, capsys, args, message):
    code, _, err = run_cli(["zoo", "generate", "small-cnn", "--n", "2", "--out", str(tmp_path / "z"), *args], capsys)
    assert code == 2
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z").exists()


def _digits():
    from sne.data import load_dataset

    return load_dataset("digits")


def test_sign_flip_augmentation_says_it_cannot_flip_convolutions(tiny_zoos, tmp_path, capsys):
    code, out, err = run_cli(["train", "--zoo", str(tiny_zoos["small-cnn"].path), "--target", "test_accuracy",
                              "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--augment-sign-flips",
                              "-o", "hidden=16", "-o", "heads=2", "-o", "num_sab=1", "-o", "out_dim=8"], capsys)
    assert code == 0, err
    networks = len(tiny_zoos["small-cnn"].split_ids("train"))
    assert f"sign-flip augmentation flipped 0 of {networks} training networks" in " ".join((out + err).split())
