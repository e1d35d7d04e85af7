"""Published zoo formats, each imported from a small fake written here in its documented layout:
Unterthiner's canonical NFN split and checkpoints by step, DWSNet and NFN SIREN sets, Schürholt's
model zoos, CNN Wild Park (OmegaConf configs read without running their code) and a transformer zoo
in the Hugging Face layout; malicious pickles are refused in every format that unpickles."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conftest import run_cli
from sne.zoo import Zoo
from test_unterthiner_import import NETWORKS, write_fake_zoo
from test_zoo_import_folder import malicious

SNE = Path(sys.executable).parent / "sne"


def cli(capsys, *args) -> tuple[int, str]:
    code, _, err = run_cli([str(a) for a in args], capsys)
    return code, err


# --- Unterthiner: canonical splits and checkpoints by step -------------------------------------------


def expected_nfn_split(order: list[int], steps: list[int]) -> dict[int, str]:
    """NFN's recipe, written out: final-step rows in CSV order, last half test, first half shuffled 80/20."""
    final = [row for row in order if steps[row] == 86]
    half = int(0.5 * len(final))
    trainval = list(range(half))
    random.Random(0).shuffle(trainval)
    cut = int(0.8 * len(trainval))
    split = {final[p]: "test" for p in range(half, len(final))}
    split.update({final[p]: "train" for p in trainval[:cut]})
    split.update({final[p]: "val" for p in trainval[cut:]})
    return split


def test_unterthiner_canonical_nfn_split(tmp_path, capsys):
    directory = tmp_path / "published"
    write_fake_zoo(directory)
    metrics = pd.read_csv(directory / "metrics.csv.gz")
    order = list(np.random.default_rng(5).permutation(len(metrics)))
    pd.Series(order).to_csv(directory / "cifar10_split.csv", index=False, header=False)
    code, err = cli(capsys, "zoo", "import", "unterthiner", directory, "--splits", "nfn", "--out", tmp_path / "zoo")
    assert code == 0, err
    zoo = Zoo.open(tmp_path / "zoo")
    expected = expected_nfn_split(order, metrics["step"].tolist())
    assert zoo.metadata["source_row"].tolist() == [row for row in order if metrics["step"][row] == 86]
    for row, split, diverged in zip(zoo.metadata["source_row"], zoo.metadata["split"], zoo.metadata["diverged"]):
        assert split == ("excluded" if diverged else expected[row])
    assert zoo.manifest["split_method"] == "given"


def test_unterthiner_all_steps_keep_each_network_in_one_split(tmp_path, capsys):
    directory = tmp_path / "published"
    write_fake_zoo(directory)
    code, err = cli(capsys, "zoo", "import", "unterthiner", directory, "--step", "all", "--out", tmp_path / "zoo")
    assert code == 0, err
    meta = Zoo.open(tmp_path / "zoo").metadata
    assert len(meta) == 2 * NETWORKS and sorted(set(meta["step"])) == [0.0, 86.0]
    for _, group in meta[~meta["diverged"]].groupby("modeldir"):
        assert group["split"].nunique() == 1


def test_unterthiner_split_csv_naming_a_missing_row_is_refused(tmp_path, capsys):
    directory = tmp_path / "published"
    write_fake_zoo(directory)
    pd.Series([0, 1, 999]).to_csv(directory / "mnist_split.csv", index=False, header=False)
    code, err = cli(capsys, "zoo", "import", "unterthiner", directory, "--splits", "nfn", "--out", tmp_path / "zoo")
    assert code == 2 and str(directory / "mnist_split.csv") in err and not (tmp_path / "zoo").exists()


# --- DWSNet and NFN SIREN sets ----------------------------------------------------------------------


def dwsnet_siren(seed: int, in_dim: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_dim, 32), nn.Linear(32, 32), nn.Linear(32, 1)).state_dict() | {}


def dwsnet_state(seed: int, in_dim: int = 2) -> dict[str, torch.Tensor]:
    return {f"seq.{k}": v for k, v in dwsnet_siren(seed, in_dim).items()}


def write_dwsnet_mnist(root: Path) -> dict[str, tuple[str, str]]:
    """INRs under root/mnist-inrs/mnist_png_<split>_<label>_<n>/checkpoints/model_final.pth and a splits JSON
    naming them by absolute paths of another machine; returns path -> (split, label)."""
    table, truth = {s: {"path": [], "label": []} for s in ("train", "val", "test")}, {}
    for n in range(9):
        split, label = ("train", "val", "test")[n % 3], str(n % 4)
        relative = Path("mnist-inrs") / f"mnist_png_{'training' if split != 'test' else 'testing'}_{label}_{n}" / "checkpoints" / "model_final.pth"
        (root / relative).parent.mkdir(parents=True)
        torch.save(dwsnet_state(n), root / relative)
        table[split]["path"].append(f"/home/author/dws/dataset/{relative}")
        table[split]["label"].append(label)
        truth[str(relative)] = (split, label)
    (root / "mnist_splits.json").write_text(json.dumps(table))
    return truth


def test_dwsnet_classification_set(tmp_path, capsys):
    truth = write_dwsnet_mnist(tmp_path)
    code, err = cli(capsys, "zoo", "import", "dwsnet", tmp_path, "--out", tmp_path / "zoo")
    assert code == 0, err
    zoo = Zoo.open(tmp_path / "zoo")
    assert zoo.manifest["dataset"]["siren"].startswith("dwsnet") and len(zoo) == 9
    classes = zoo.targets["label"]["classes"]
    assert classes == ["0", "1", "2", "3"]
    for (_, row), record in zip(zoo.metadata.iterrows(), zoo.records(range(len(zoo)))):
        split, label = truth[row["file"]]
        assert row["split"] == split and classes[row["label"]] == label
        expected = torch.load(tmp_path / row["file"])
        assert all(torch.equal(record.to_state_dict()[k], v) for k, v in expected.items())
        assert [l.activation for l in record.layers] == ["sine", "sine", "identity"]


def test_dwsnet_sine_set_reads_the_coefficients(tmp_path, capsys):
    table = {"train": [], "val": [], "test": []}
    coefs = {}
    for n in range(6):
        state = dwsnet_state(n, in_dim=1) | {"coef": [1.0 + n, 2.0 + 0.5 * n], "x": np.arange(5.0), "y": np.ones(5)}
        path = tmp_path / "sine" / f"model_{n}.pth"
        path.parent.mkdir(exist_ok=True)
        torch.save(state, path)
        table[("train", "val", "test")[n % 3]].append(f"/elsewhere/sine/model_{n}.pth")
        coefs[f"sine/model_{n}.pth"] = state["coef"]
    (tmp_path / "ssl_splits.json").write_text(json.dumps(table))
    code, err = cli(capsys, "zoo", "import", "dwsnet", tmp_path, "--out", tmp_path / "zoo")
    assert code == 0, err
    zoo = Zoo.open(tmp_path / "zoo")
    assert zoo.targets["frequency"]["kind"] == "regression"
    for _, row in zoo.metadata.iterrows():
        assert [row["amplitude"], row["frequency"]] == coefs[row["file"]]


def test_nfn_siren_set(tmp_path, capsys):
    for index in range(8):
        label = index % 3
        folder = tmp_path / f"randinit_smaller_{label}s"
        folder.mkdir(exist_ok=True)
        torch.manual_seed(index)
        state = {"net.0.linear.weight": torch.randn(32, 2), "net.0.linear.bias": torch.randn(32),
                 "net.1.linear.weight": torch.randn(32, 32), "net.1.linear.bias": torch.randn(32),
                 "net.2.weight": torch.randn(1, 32), "net.2.bias": torch.randn(1)}
        torch.save(state, folder / f"net{index}.pth")
    (tmp_path / "randinit_smaller_aug0_1s").mkdir()  # another prefix's folder: must be ignored by choice
    code, err = cli(capsys, "zoo", "import", "nfn-siren", tmp_path, "-o", "prefix=randinit_smaller",
                    "-o", "split_points=5,7", "--out", tmp_path / "zoo")
    assert code == 0, err
    zoo = Zoo.open(tmp_path / "zoo")
    assert zoo.manifest["dataset"]["siren"].startswith("nfn")
    assert zoo.metadata["index"].tolist() == list(range(8))
    assert zoo.metadata["split"].tolist() == ["train"] * 5 + ["val"] * 2 + ["test"]
    assert [zoo.targets["label"]["classes"][c] for c in zoo.metadata["label"]] == [str(i % 3) for i in range(8)]
    code, err = cli(capsys, "zoo", "import", "nfn-siren", tmp_path, "--out", tmp_path / "zoo2")
    assert code == 2 and "prefix" in err  # two prefixes and none chosen


# --- Schürholt model zoos ----------------------------------------------------------------------------


def cnn_s(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.MaxPool2d(2), nn.Tanh(), nn.Conv2d(8, 6, 5), nn.MaxPool2d(2),
                         nn.Tanh(), nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh(),
                         nn.Linear(20, 10))


def write_schurholt(root: Path, trials: int = 4, epochs: tuple[int, ...] = (0, 5, 10)) -> None:
    for t in range(trials):
        trial = root / f"NN_tune_trainable_{t:05d}_{t}_seed={t}"
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"model::nlin": "tanh", "optim::lr": 10.0 ** -(t + 1),
                                                       "optim::optimizer": "adam", "seed": t}))
        lines = []
        for e in epochs:
            (trial / f"checkpoint_{e:06d}").mkdir()
            state = cnn_s(100 * t + e).state_dict()
            if t == 3 and e == epochs[-1]:
                state["9.weight"][0, 0] = float("nan")
            torch.save(state, trial / f"checkpoint_{e:06d}" / "checkpoints")
            lines.append(json.dumps({"training_iteration": e, "test_acc": 0.1 + 0.05 * t + 0.01 * e,
                                     "train_acc": 0.2 + 0.05 * t + 0.01 * e, "ggap": 0.1, "loss_test": 1.0}))
        (trial / "result.json").write_text("\n".join(lines) + "\n")


def test_schurholt_last_epoch_and_all_epochs(tmp_path, capsys):
    write_schurholt(tmp_path / "zoo_src")
    code, err = cli(capsys, "zoo", "import", "schurholt", tmp_path / "zoo_src", "--out", tmp_path / "last")
    assert code == 0, err
    last = Zoo.open(tmp_path / "last")
    assert len(last) == 4 and last.metadata["epoch"].tolist() == [10.0] * 4
    assert last.manifest["diverged"] == 1 and last.metadata["diverged"].tolist() == [False, False, False, True]
    assert set(last.targets) == {"test_accuracy", "generalization_gap", "epoch"}
    assert last.targets["test_accuracy"]["kind"] == "unit_interval"
    assert {"model::nlin", "optim::lr", "seed"} <= set(last.metadata.columns)
    record = last.records([1])[0]
    assert [l.activation for l in record.layers] == ["tanh"] * 4 + ["identity"]
    expected = cnn_s(100 * 1 + 10).state_dict()
    assert all(torch.equal(record.to_state_dict()[k], v) for k, v in expected.items())

    code, err = cli(capsys, "zoo", "import", "schurholt", tmp_path / "zoo_src", "--epoch", "all", "--out", tmp_path / "all")
    assert code == 0, err
    meta = Zoo.open(tmp_path / "all").metadata
    assert len(meta) == 12
    for _, group in meta[meta["split"] != "excluded"].groupby("trial"):
        assert group["split"].nunique() == 1


def test_schurholt_missing_epoch_names_the_trial(tmp_path, capsys):
    write_schurholt(tmp_path / "zoo_src")
    code, err = cli(capsys, "zoo", "import", "schurholt", tmp_path / "zoo_src", "--epoch", "7", "--out", tmp_path / "z")
    assert code == 2 and "NN_tune_trainable_00000" in err and "epoch 7" in err and not (tmp_path / "z").exists()


# --- CNN Wild Park ----------------------------------------------------------------------------------

WILDPARK_MAKER = textwrap.dedent('''
    """Writes fake Wild Park checkpoints the way the authors' trainer saves them (run in a subprocess
    whose path holds a stand-in of their 'experiments' package, which the importing process lacks)."""
    import sys
    from pathlib import Path
    import torch
    from omegaconf import OmegaConf
    from experiments.cnn_generalization.dataset.cnn_sampler import CNNConfig
    from sne.zoo.wildpark import WildParkCnn

    root = Path(sys.argv[1])
    configs = [
        CNNConfig(2, 10, [3, 8, 16], [3, 5], [1, 1], [1, 2], [-1, -1], ["relu", "gelu"]),
        CNNConfig(4, 10, [3, 4, 16, 8, 16], [3, 5, 7, 3], [1, 1, 1, 1], [1, 2, 3, 1], [-1, -1, 0, 1],
                  ["tanh", "relu", "sigmoid", "leaky_relu"]),
    ]
    for run, config in enumerate(configs):
        cfg = OmegaConf.create({"model": config, "data": {"path": "x"}, "batch_size": 32})
        cfg.data.path = Path("/tmp/data").resolve()
        tune = OmegaConf.to_container(cfg, resolve=True)
        tune["model"] = config
        for epoch in (10, 20):
            torch.manual_seed(100 * run + epoch)
            model = WildParkCnn(OmegaConf.to_container(cfg.model))
            folder = root / f"cifar10_zooV2/NN_tune_trainable_{run}" / f"checkpoint_{epoch:06d}"
            folder.mkdir(parents=True)
            torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                        "config": cfg.model, "iteration": epoch,
                        "last_result": {"test/acc": 0.3 + 0.01 * epoch + 0.1 * run, "config": tune}},
                       folder / "checkpoint.pt")
            torch.save(model.state_dict(), folder / "truth.pt")  # the weights, for the test to compare
''')

CONFIG_CLASS = textwrap.dedent('''
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class CNNConfig:
        n_layers: int
        n_classes: int
        channels: list[int]
        kernel_size: list[int]
        stride: list[int]
        padding: list[int]
        residual: list[int]
        activation: list[str]
''')


@pytest.fixture(scope="module")
def wildpark(tmp_path_factory):
    pytest.importorskip("omegaconf")
    root = tmp_path_factory.mktemp("wildpark")
    package = root / "authors" / "experiments" / "cnn_generalization" / "dataset"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "cnn_sampler.py").write_text(CONFIG_CLASS)
    (root / "maker.py").write_text(WILDPARK_MAKER)
    env = {**os.environ, "PYTHONPATH": str(root / "authors"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(root / "maker.py"), str(root / "park")], check=True, env=env, timeout=300)
    return root / "park"


def test_wildpark_reads_configs_without_the_authors_code(wildpark, tmp_path, capsys):
    assert "experiments" not in sys.modules
    code, err = cli(capsys, "zoo", "import", "wildpark", wildpark, "--out", tmp_path / "zoo")
    assert code == 0, err
    assert "experiments" not in sys.modules  # the config class name was never imported
    zoo = Zoo.open(tmp_path / "zoo")
    assert len(zoo) == 4 and len(zoo.manifest["architectures"]) == 2
    assert sorted(zoo.metadata["epoch"].tolist()) == [10.0, 10.0, 20.0, 20.0]
    np.testing.assert_allclose(sorted(zoo.target_values("test_accuracy", range(4))), [0.4, 0.5, 0.5, 0.6])
    for (_, row), record in zip(zoo.metadata.iterrows(), zoo.records(range(4))):
        truth = torch.load(wildpark / Path(row["file"]).parent / "truth.pt", weights_only=True)
        assert list(record.to_state_dict()) == list(truth)
        assert all(torch.equal(record.to_state_dict()[k], v) for k, v in truth.items())
    residual = next(r for r in zoo.records(range(4)) if len(r.layers) == 5)
    assert residual.layers[3].inputs[0].sources == (0, 2)  # layer 3 adds layer 0's output
    for _, group in zoo.metadata.groupby("run"):
        assert group["split"].nunique() == 1


def test_wildpark_refuses_any_other_pickled_code(wildpark, tmp_path, capsys):
    park = tmp_path / "park"
    folder = park / "run" / "checkpoint_000001"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    malicious(folder / "checkpoint.pt", marker, "torch.save")
    code, err = cli(capsys, "zoo", "import", "wildpark", park, "--out", tmp_path / "zoo")
    assert code == 2 and "refused to unpickle posix.system" in err and str(folder / "checkpoint.pt") in err
    assert not marker.exists() and not (tmp_path / "zoo").exists()


# --- transformer zoo, Hugging Face layout -----------------------------------------------------------

TRANSFORMER = textwrap.dedent('''
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.queries, self.keys, self.values = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.out_projection, self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

        def forward(self, x):
            q, k, v = self.queries(x), self.keys(x), self.values(x)
            x = x + self.out_projection(torch.nn.functional.scaled_dot_product_attention(q, k, v))
            return x + self.fc2(torch.relu(self.fc1(x)))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Linear(4, 8)
            self.encoder = nn.ModuleList([Block(8), Block(8)])
            self.classifier = nn.Linear(8, 3)

        def forward(self, x):
            x = self.embedding(x)
            for block in self.encoder:
                x = block(x)
            return self.classifier(x.mean(1))

    def build():
        return Tiny(), torch.randn(1, 5, 4)
''')


def test_hf_transformer_zoo_with_arch(tmp_path, capsys):
    (tmp_path / "tiny.py").write_text(TRANSFORMER)
    sys.path.insert(0, str(tmp_path))
    try:
        from tiny import Tiny  # noqa: PLC0415
    finally:
        sys.path.remove(str(tmp_path))
    rows = []
    for model in range(3):
        for epoch in (1, 2):
            torch.manual_seed(10 * model + epoch)
            name = f"model_{model}/epoch_{epoch}.safetensors"
            (tmp_path / "zoo_src" / name).parent.mkdir(parents=True, exist_ok=True)
            save_file(Tiny().state_dict(), str(tmp_path / "zoo_src" / name))
            rows.append({"ckpt_file": name, "ckpt_epoch": epoch, "test_accuracy": 0.2 * model + 0.1 * epoch,
                         "dataset": "mnist"})
    (tmp_path / "zoo_src" / "metadata").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "zoo_src" / "metadata" / "mnist.csv", index=False)
    code, err = cli(capsys, "zoo", "import", "hf-transformer", tmp_path / "zoo_src", "--arch",
                    f"{tmp_path / 'tiny.py'}:build", "--out", tmp_path / "zoo")
    assert code == 0, err
    zoo = Zoo.open(tmp_path / "zoo")
    assert set(zoo.targets) == {"epoch", "test_accuracy"} and zoo.targets["test_accuracy"]["kind"] == "unit_interval"
    assert zoo.metadata["dataset"].tolist() == ["mnist"] * 6
    for _, group in zoo.metadata.groupby(zoo.metadata["file"].str.split("/").str[0]):
        assert group["split"].nunique() == 1
    record = zoo.records([0])[0]
    assert record.symmetries  # heads and hidden units found through --arch
    code, err = cli(capsys, "zoo", "import", "hf-transformer", tmp_path / "zoo_src", "--out", tmp_path / "bare")
    assert code == 2 and "--arch" in err and not (tmp_path / "bare").exists()


# --- malicious pickles in every format that unpickles ----------------------------------------------


def test_schurholt_and_dwsnet_refuse_code_in_a_pickle(tmp_path, capsys):
    write_schurholt(tmp_path / "zoo_src", trials=2)
    target = tmp_path / "zoo_src" / "NN_tune_trainable_00001_1_seed=1" / "checkpoint_000010" / "checkpoints"
    marker = tmp_path / "pwned"
    malicious(target, marker, "torch.save")
    code, err = cli(capsys, "zoo", "import", "schurholt", tmp_path / "zoo_src", "--out", tmp_path / "z1")
    assert code == 2 and str(target) in err and not marker.exists() and not (tmp_path / "z1").exists()

    write_dwsnet_mnist(tmp_path / "dws")
    target = next((tmp_path / "dws").rglob("model_final.pth"))
    malicious(target, marker, "torch.save")
    code, err = cli(capsys, "zoo", "import", "dwsnet", tmp_path / "dws", "--out", tmp_path / "z2")
    assert code == 2 and str(target) in err and not marker.exists() and not (tmp_path / "z2").exists()


