"""`sne zoo import folder` and `sne zoo export`: a folder of checkpoints of mixed architectures plus
a CSV becomes a zoo (through the installed console script), export then import gives back the same
zoo, and bad folders or tables end in one line naming the file, exit 2 and nothing written."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import run_cli
from sne.weights import load_record, record_from_state_dict
from sne.zoo import Zoo

SNE = Path(sys.executable).parent / "sne"
N_MLP, N_CNN = 6, 5


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def write_folder(root: Path, split_column: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """MLPs as .pt and CNNs as .safetensors under root/nets, and root/table.csv; returns each file's state."""
    from safetensors.torch import save_file

    states, rows = {}, []
    (root / "nets" / "cnn").mkdir(parents=True)
    for i in range(N_MLP + N_CNN):
        if i < N_MLP:
            name, state = f"mlp_{i}.pt", mlp(i).state_dict()
            torch.save(state, root / "nets" / name)
        else:
            name, state = f"cnn/net{i}.safetensors", cnn(i).state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, str(root / "nets" / name))
        states[name] = state
        row = {"file": name, "accuracy": 0.05 * i + 0.1, "loss": 3.0 - 0.2 * i,
               "optimizer": ["sgd", "adam", "rmsprop"][i % 3]}
        if split_column:
            row["split"] = ["train", "train", "val", "test"][i % 4]
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    return states


@pytest.fixture
def folder(tmp_path):
    return tmp_path, write_folder(tmp_path)


def assert_same_records(a, b) -> None:
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert (x.name, x.kind, x.level, x.activation, x.skip_from, x.inputs, dict(x.attrs)) == \
               (y.name, y.kind, y.level, y.activation, y.skip_from, y.inputs, dict(y.attrs))
        assert list(x.tensors) == list(y.tensors)
        for name in x.tensors:
            assert x.tensors[name].dtype == y.tensors[name].dtype and torch.equal(x.tensors[name], y.tensors[name])
    assert a.symmetries == b.symmetries


def sne(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SNE), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_import_folder_of_mixed_architectures_with_the_installed_script(folder):
    root, states = folder
    done = sne("zoo", "import", "folder", "nets", "--targets", "table.csv", "--out", "zoo", cwd=root)
    assert done.returncode == 0, done.stderr
    zoo = Zoo.open(root / "zoo")
    assert len(zoo) == N_MLP + N_CNN and len(zoo.manifest["architectures"]) == 2
    assert zoo.targets["accuracy"]["kind"] == "unit_interval"
    assert zoo.targets["loss"]["kind"] == "regression"
    assert zoo.targets["optimizer"] == {"kind": "class", "num_classes": 3, "classes": ["adam", "rmsprop", "sgd"]}
    table = pd.read_csv(root / "table.csv")
    assert zoo.metadata["split"].tolist() == table["split"].tolist()
    assert zoo.metadata["file"].tolist() == table["file"].tolist()
    np.testing.assert_array_equal(zoo.target_values("accuracy", range(len(zoo))), table["accuracy"])
    assert [zoo.targets["optimizer"]["classes"][c] for c in zoo.metadata["optimizer"]] == table["optimizer"].tolist()
    for record, name in zip(zoo.records(range(len(zoo))), table["file"]):
        assert_same_records(record, record_from_state_dict(states[name]))


def test_export_then_import_gives_back_the_same_zoo(folder):
    root, _ = folder
    assert run_cli(["zoo", "import", "folder", str(root / "nets"), "--targets", str(root / "table.csv"),
                    "--out", str(root / "zoo")], _NoCapture())[0] == 0
    done = sne("zoo", "export", "zoo", "shared", cwd=root)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (root / "shared").iterdir()) == ["networks", "targets.csv", "targets.json"]
    again = sne("zoo", "import", "folder", "shared", "--targets", "shared/targets.csv", "--out", "again", cwd=root)
    assert again.returncode == 0, again.stderr
    assert_same_zoo(Zoo.open(root / "zoo"), Zoo.open(root / "again"))


def test_export_round_trip_keeps_structure_the_bare_files_cannot_tell(shared_sine_zoo, tmp_path):
    """Sine INRs carry activations (sine, identity) no state_dict holds; the export keeps them."""
    from sne.zoo import export_zoo
    from sne.zoo.folder import import_folder

    table = export_zoo(shared_sine_zoo, tmp_path / "shared")
    first = shared_sine_zoo.records([0])[0]
    assert load_record(tmp_path / "shared" / "networks" / "000000.safetensors").layers[0].activation == \
        first.layers[0].activation == "sine"
    again = import_folder(tmp_path / "shared", tmp_path / "again", targets=table)
    assert_same_zoo(shared_sine_zoo, again)


def assert_same_zoo(zoo: Zoo, again: Zoo) -> None:
    kept = zoo.metadata.index[zoo.metadata["split"] != "excluded"].to_numpy()
    assert len(again) == len(kept)
    assert again.targets == zoo.targets
    assert again.metadata["split"].tolist() == zoo.metadata["split"][kept].tolist()
    for name in zoo.targets:
        np.testing.assert_array_equal(again.target_values(name, range(len(again))), zoo.target_values(name, kept))
    for a, b in zip(zoo.records(kept), again.records(range(len(again)))):
        assert_same_records(a, b)


def test_without_a_split_column_the_split_is_seeded(tmp_path):
    write_folder(tmp_path, split_column=False)
    from sne.zoo.folder import import_folder

    a = import_folder(tmp_path / "nets", tmp_path / "a", targets=tmp_path / "table.csv", seed=1)
    b = import_folder(tmp_path / "nets", tmp_path / "b", targets=tmp_path / "table.csv", seed=1)
    assert a.metadata["split"].tolist() == b.metadata["split"].tolist()
    assert set(a.metadata["split"]) <= {"train", "val", "test"} and a.manifest["split_method"] == "seeded"


def test_target_kind_overrides_the_inferred_kind(folder):
    from sne.zoo.folder import import_folder

    root, _ = folder
    zoo = import_folder(root / "nets", root / "zoo", targets=root / "table.csv", target_kinds={"accuracy": "regression"})
    assert zoo.targets["accuracy"]["kind"] == "regression"


def test_a_column_of_numbers_and_words_is_read_as_classes_only_when_asked(folder):
    from sne.errors import SneError
    from sne.zoo.folder import import_folder

    root, _ = folder
    edit_table(root, lambda t: t.assign(loss=[*t["loss"][:3], "high", *t["loss"][4:]]))
    with pytest.raises(SneError, match="row 4 has 'high' in target 'loss', not a number, while 10 of its 11"):
        import_folder(root / "nets", root / "zoo", targets=root / "table.csv")
    zoo = import_folder(root / "nets", root / "zoo", targets=root / "table.csv", target_kinds={"loss": "class"})
    assert zoo.targets["loss"]["num_classes"] == N_MLP + N_CNN and "high" in zoo.targets["loss"]["classes"]


class _Payload:
    """Unpickling this would create a marker file (it must never happen)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious(path: Path, marker: Path, how: str) -> None:
    """A checkpoint whose unpickling would run ``touch marker``: torch.save's zip format or a raw pickle."""
    payload = {"0.weight": _Payload(str(marker))}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))


def edit_table(root: Path, edit) -> None:
    table = pd.read_csv(root / "table.csv")
    edit(table).to_csv(root / "table.csv", index=False)


def nan_weights(root: Path) -> None:
    state = mlp(2).state_dict()
    state["2.weight"][0, 0] = float("nan")
    torch.save(state, root / "nets" / "mlp_2.pt")


BAD = {
    "missing file": ("nets/mlp_0.pt", lambda r: (r / "nets" / "mlp_0.pt").unlink()),
    "no file column": ("table.csv", lambda r: edit_table(r, lambda t: t.rename(columns={"file": "path"}))),
    "listed twice": ("table.csv", lambda r: edit_table(r, lambda t: t.assign(file=[*t["file"][:-1], t["file"][0]]))),
    "unlisted checkpoint": ("nets/extra.pth", lambda r: torch.save(mlp(9).state_dict(), r / "nets" / "extra.pth")),
    "truncated file": ("nets/mlp_3.pt", lambda r: (r / "nets" / "mlp_3.pt").write_bytes((r / "nets" / "mlp_3.pt").read_bytes()[:300])),
    "non-finite weights": ("nets/mlp_2.pt", nan_weights),
    "missing target value": ("table.csv", lambda r: edit_table(r, lambda t: t.assign(loss=[None, *t["loss"][1:]]))),
    "bad split": ("table.csv", lambda r: edit_table(r, lambda t: t.assign(split=["holdout", *t["split"][1:]]))),
    "a column named twice": ("table.csv", lambda r: (r / "table.csv").write_text(
        (r / "table.csv").read_text().replace("optimizer", "loss", 1))),
    "a word among numbers": ("table.csv", lambda r: edit_table(r, lambda t: t.assign(loss=[*t["loss"][:3], "high",
                                                                                           *t["loss"][4:]]))),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folder_is_one_line_naming_the_file_and_writes_nothing(folder, capsys, case):
    root, _ = folder
    named, damage = BAD[case]
    damage(root)
    code, out, err = run_cli(["zoo", "import", "folder", str(root / "nets"), "--targets", str(root / "table.csv"),
                              "--out", str(root / "zoo")], capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(root / named) in err, err
    assert not (root / "zoo").exists() and not list(root.glob(".zoo.*"))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(folder, capsys, how):
    root, _ = folder
    marker = root / "pwned"
    malicious(root / "nets" / "mlp_1.pt", marker, how)
    code, _, err = run_cli(["zoo", "import", "folder", str(root / "nets"), "--targets", str(root / "table.csv"),
                            "--out", str(root / "zoo")], capsys)
    assert code == 2 and str(root / "nets" / "mlp_1.pt") in err and len(err.strip().splitlines()) == 1
    assert "refused to unpickle posix.system" in err or how == "raw pickle"
    assert not marker.exists() and not (root / "zoo").exists()


def test_folder_needs_its_table(folder, capsys):
    root, _ = folder
    code, _, err = run_cli(["zoo", "import", "folder", str(root / "nets"), "--out", str(root / "zoo")], capsys)
    assert code == 2 and "--targets" in err


def test_an_option_of_another_format_is_refused(folder, capsys):
    root, _ = folder
    code, _, err = run_cli(["zoo", "import", "folder", str(root / "nets"), "--targets", str(root / "table.csv"),
                            "--step", "3", "--out", str(root / "zoo")], capsys)
    assert code == 2 and "takes no --step" in err and not (root / "zoo").exists()


class _NoCapture:
    """run_cli's capsys for a call whose output is not looked at."""

    def readouterr(self):
        return type("Captured", (), {"out": "", "err": ""})()


def test_an_imported_mixed_folder_trains_sne(folder):
    root, _ = folder
    assert sne("zoo", "import", "folder", "nets", "--targets", "table.csv", "--out", "zoo", cwd=root).returncode == 0
    done = sne("train", "--zoo", "zoo", "--target", "accuracy", "--encoder", "sne", "--epochs", "1", "--batch-size", "4",
               "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=4", "--device", "cpu", "--out", "run", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (root / "run" / "history.json").is_file()
