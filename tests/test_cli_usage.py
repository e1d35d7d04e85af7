"""The installed ``sne`` console script on wrong command lines, and the declared dependencies.

Every command and subcommand (found from the typer app, so new ones are covered without editing
this file) is run in a subprocess with a missing required argument, an unknown option and, where
it has one, a bad value for a typed option: each must exit with code 2 in at most two lines and
no traceback. The usage checks need no model, so each process only imports typer and rich.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.models import ParameterInfo

from conftest import run_cli
from sne.cli import app

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "sne"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the sne console script is not installed")


def _commands(typer_app: typer.Typer, prefix: tuple[str, ...] = ()):
    """``(words, callback)`` of every leaf command, and ``(words, None)`` of every group."""
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__.lower().replace("_", "-")
        yield (*prefix, name), info.callback
    for group in typer_app.registered_groups:
        words = (*prefix, group.name)
        yield words, None
        yield from _commands(group.typer_instance, words)


COMMANDS = list(_commands(app))
LEAVES = [(words, callback) for words, callback in COMMANDS if callback is not None]
GROUPS = [()] + [words for words, callback in COMMANDS if callback is None]


def _parameters(callback):
    """``(name, info, type)`` of each typer parameter of a command's function."""
    hints = typing.get_type_hints(callback)
    for name, parameter in inspect.signature(callback).parameters.items():
        if isinstance(parameter.default, ParameterInfo):
            yield name, parameter.default, hints.get(name)


def _is_required(info) -> bool:
    return info.default is ... or info.default is Ellipsis


def _number_type(annotation):
    """int or float for ``int``, ``float`` and their ``Optional``; else None."""
    if annotation in (int, float):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and args in ([int], [float]) else None


def _cases() -> list[tuple[str, list[str], str]]:
    """``(case id, argv, text the error must contain)`` for every wrong command line."""
    cases = []
    for words, callback in LEAVES:
        command = " ".join(words)
        parameters = list(_parameters(callback))
        if any(_is_required(info) for _, info, _ in parameters):
            cases.append((f"{command}: nothing given", [*words], "Missing"))
        cases.append((f"{command}: unknown option", [*words, "--no-such-option"], "No such option"))
        numbers = [(info, kind) for _, info, kind in ((n, i, _number_type(t)) for n, i, t in parameters)
                   if kind is not None and getattr(info, "param_decls", None)]
        if numbers:
            info, kind = numbers[0]
            flag = next(d for d in info.param_decls if d.startswith("--"))
            cases.append((f"{command}: {flag} notanumber", [*words, flag, "notanumber"], "Invalid value"))
            # the option given without its value
            cases.append((f"{command}: {flag} without a value", [*words, flag], "requires an argument"))
    for words in GROUPS:
        command = " ".join(("sne", *words))
        cases.append((f"{command}: unknown command", [*words, "no-such-command"], "No such command"))
        cases.append((f"{command}: unknown option", [*words, "--no-such-option"], "No such option"))
    return cases


CASES = _cases()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def results() -> dict[str, subprocess.CompletedProcess]:
    """All wrong command lines, run at once in parallel (each process only parses its arguments)."""
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        done = list(pool.map(_run, [argv for _, argv, _ in CASES]))
    return {case: result for (case, _, _), result in zip(CASES, done)}


def test_every_command_is_discovered():
    """The discovery above sees what the CLI itself dispatches to (so no command escapes the checks)."""
    command = typer.main.get_command(app)

    def walk(group, prefix=()):
        for name, sub in getattr(group, "commands", {}).items():
            if getattr(sub, "commands", None) is not None and hasattr(sub, "list_commands"):
                yield (*prefix, name), None
                yield from walk(sub, (*prefix, name))
            else:
                yield (*prefix, name), True

    seen = {(words, callback is None) for words, callback in COMMANDS}
    assert seen == {(words, leaf is None) for words, leaf in walk(command)}
    assert len(LEAVES) >= 10 and {("predict",), ("embed",), ("train",), ("zoo", "generate")} <= {w for w, _ in LEAVES}


@pytest.mark.parametrize("case", [case for case, _, _ in CASES])
def test_wrong_command_line_exits_2_in_two_lines(results, case):
    expected = next(text for name, _, text in CASES if name == case)
    result = results[case]
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert 1 <= len(lines) <= 2, output
    assert expected in output, output


def test_a_bare_command_group_prints_its_help():
    for words in GROUPS:
        result = _run(list(words))
        assert result.returncode in (0, 2) and "Traceback" not in result.stdout + result.stderr
        assert "Usage" in result.stdout + result.stderr


# --- declared dependencies ------------------------------------------------------------------------

#: Import names whose distribution is named otherwise.
DISTRIBUTION = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "torch_geometric": "torch-geometric",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "google": "protobuf",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """Distribution names of pyproject's dependencies, and of each optional extra."""
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs):
        return {_normalise(re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)) for spec in specs}

    extras = {extra: names(specs) for extra, specs in project.get("optional-dependencies", {}).items()}
    return names(project["dependencies"]), extras


def _third_party_imports() -> dict[str, set[tuple[str, bool]]]:
    """Per top-level imported name outside the standard library and sne: ``(file, at module level)``."""
    found: dict[str, set[tuple[str, bool]]] = {}
    for path in sorted((ROOT / "src" / "sne").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = {id(node) for node in tree.body}
        # Imports in `if TYPE_CHECKING:` or `try:` at module level also run at import time.
        for node in tree.body:
            if isinstance(node, (ast.If, ast.Try)):
                top_level |= {id(child) for child in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                root = module.split(".")[0]
                if root == "sne" or root in sys.stdlib_module_names or root == "__future__":
                    continue
                found.setdefault(root, set()).add((str(path.relative_to(ROOT)), id(node) in top_level))
    return found


def test_every_import_of_src_is_a_declared_dependency():
    required, extras = _declared()
    optional = set().union(*extras.values()) if extras else set()
    undeclared, only_optional = [], []
    for name, places in sorted(_third_party_imports().items()):
        distribution = _normalise(DISTRIBUTION.get(name, name))
        if distribution in required:
            continue
        if distribution in optional and not any(top for _, top in places):
            continue  # imported inside a function, for a feature of an extra (e.g. transformers for hf)
        (only_optional if distribution in optional else undeclared).append(f"{name} ({sorted(p for p, _ in places)[0]})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert not only_optional, f"imported at module level but declared only in an extra: {only_optional}"


def test_declared_dependencies_have_lower_and_upper_bounds():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for group in project["optional-dependencies"].values() for s in group]
    for spec in specs:
        assert ">=" in spec and "<" in spec.replace("<=", ""), f"'{spec}' needs a lower and an upper bound"
    assert any(spec.replace(" ", "") == "torch>=2.2,<2.14" for spec in project["dependencies"])


def test_the_lock_pins_every_declared_dependency_within_its_bounds():
    lock = ROOT / "requirements" / "constraints.txt"
    assert lock.is_file(), "run 'make lock'"
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"'{line}' in {lock.name} is not an exact pin"
            pins[_normalise(name)] = version
    assert pins.get("torch") == "2.13.0" and "sne" not in pins
    required, extras = _declared()
    for name in required | extras.get("test", set()):
        assert name in pins, f"{name} is declared but not locked in {lock.name}"
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging comes with pip's toolchain nearly always; the check is a bonus
        return
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in list(project["dependencies"]) + [s for group in project["optional-dependencies"].values() for s in group]:
        requirement = Requirement(spec)
        pinned = pins[_normalise(requirement.name)]
        assert requirement.specifier.contains(pinned, prereleases=True), f"locked {requirement.name}=={pinned} outside '{spec}'"


# --- many files at once: every readable file is predicted, each failure gets its own line ------------



@pytest.fixture(scope="module")
def small_run(tiny_sne_run) -> Path:
    return tiny_sne_run


def _siren_state(seed: int) -> dict[str, torch.Tensor]:
    """A chain MLP 1 -> 32 -> 32 -> 1 with SIREN-like keys."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"seq.0.weight": (32, 1), "seq.0.bias": (32,), "seq.1.weight": (32, 32), "seq.1.bias": (32,),
              "seq.2.weight": (1, 32), "seq.2.bias": (1,)}
    return {key: torch.randn(shape, generator=generator) * 0.3 for key, shape in shapes.items()}


@pytest.fixture
def mixed_files(tmp_path) -> tuple[list[Path], list[Path]]:
    """(all files in order, the good ones): good safetensors and .pt MLPs, a corrupt file, an LSTM,
    a missing file, and another good one at the end."""
    from sne.weights import save_state_dict_file

    good = [tmp_path / "a.safetensors", tmp_path / "b.pt", tmp_path / "z.safetensors"]
    for seed, path in enumerate(good):
        save_state_dict_file(_siren_state(seed), path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good[0].read_bytes()[:-50])
    lstm = torch.nn.Module()
    lstm.lstm = torch.nn.LSTM(4, 8)
    save_state_dict_file(lstm.state_dict(), tmp_path / "lstm.pt")
    files = [good[0], corrupt, good[1], tmp_path / "lstm.pt", tmp_path / "missing.pt", good[2]]
    return files, good


def test_predict_reads_every_file_it_can_and_reports_each_failure(small_run, mixed_files, capsys):
    files, good = mixed_files
    code, out, err = run_cli(["predict", str(small_run), *map(str, files), "--device", "cpu"], capsys)
    assert code == 2
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in good]
    values = [float(line.split("\t")[2]) for line in lines]
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 4 and "Traceback" not in err  # three failures and a closing count
    for bad, line in zip((files[1], files[3], files[4]), errors):
        assert str(bad) in line
    assert "3 of 6 files failed" in errors[-1] and lines[-1] == errors[-1]
    # The run learned sine phases; bare state_dicts name no activations: one note for the three read.
    notes = [line for line in lines if line.startswith("note: ")]
    assert len(notes) == 1 and f"{good[0]} (and 2 more files)" in notes[0] and "--arch" in notes[0]
    assert len(lines) == len(errors) + len(notes)
    # The same predictions one at a time, and as JSON: one entry per file, in order, good or not.
    code, out, err = run_cli(["predict", str(small_run), *map(str, files), "--device", "cpu", "--json",
                              "--batch-size", "1"], capsys)
    assert code == 2
    entries = json.loads(out)
    assert [entry["file"] for entry in entries] == [str(path) for path in files]
    assert [("error" in entry) for entry in entries] == [False, True, False, True, True, False]
    assert [entry["prediction"] for entry in entries if "error" not in entry] == pytest.approx(values, rel=1e-5)


def test_embed_writes_the_readable_files_in_order(small_run, mixed_files, tmp_path, capsys):
    files, good = mixed_files
    out_path = tmp_path / "codes.npy"
    code, _, err = run_cli(["embed", str(small_run), *map(str, files), "--out", str(out_path), "--device", "cpu",
                            "--batch-size", "2"], capsys)
    assert code == 2 and "Traceback" not in err
    codes = np.load(out_path)
    assert codes.shape == (len(good), 8)
    code, _, _ = run_cli(["embed", str(small_run), *map(str, good), "--out", str(tmp_path / "good.npy"),
                          "--device", "cpu"], capsys)
    assert code == 0
    np.testing.assert_allclose(codes, np.load(tmp_path / "good.npy"), rtol=1e-5, atol=1e-6)
    assert "in the order given" in err.strip().splitlines()[-1]
    # No readable file: nothing is written.
    code, _, err = run_cli(["embed", str(small_run), str(files[1]), "--out", str(tmp_path / "none.npy")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "none.npy").exists()
    # A .csv names each row's file: the rows of the .npy, beside the files that could be read.
    code, _, err = run_cli(["embed", str(small_run), *map(str, files), "--out", str(tmp_path / "codes.csv"),
                            "--device", "cpu", "--batch-size", "2"], capsys)
    assert code == 2
    table = pd.read_csv(tmp_path / "codes.csv")
    assert list(table.columns) == ["file", *(f"z{i}" for i in range(8))]
    assert table["file"].tolist() == [str(path) for path in good]
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), codes, rtol=1e-6, atol=1e-7)
    # Another suffix is refused before any work, in one line.
    code, out, err = run_cli(["embed", str(small_run), *map(str, good), "--out", str(tmp_path / "codes.txt")], capsys)
    assert code == 2 and ".npy or a .csv" in out + err and len((out + err).strip().splitlines()) == 1
    assert not (tmp_path / "codes.txt").exists()


def test_predict_names_classes_with_probabilities(small_run, shared_sine_zoo, mixed_files, tmp_path, capsys):
    """A class target prints the class name and its probability (names from the run's zoo)."""
    zoo = tmp_path / "zoo"
    shutil.copytree(shared_sine_zoo.path, zoo)
    manifest = json.loads((zoo / "manifest.json").read_text())
    manifest["targets"]["band"] = {"kind": "class", "num_classes": 3, "classes": ["low", "mid", "high"]}
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    metadata = pd.read_parquet(zoo / "metadata.parquet")
    metadata["band"] = np.arange(len(metadata)) % 3  # a zoo's targets are columns of its metadata
    metadata.to_parquet(zoo / "metadata.parquet")
    run = tmp_path / "class-run"
    shutil.copytree(small_run, run)
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    checkpoint["config"]["zoo"], checkpoint["config"]["target"] = str(zoo), "band"
    checkpoint["target"] = {"name": "band", "kind": "class", "mean": 0.0, "std": 1.0, "num_classes": 3}
    last = max((key for key in checkpoint["model"] if key.startswith("head.")), key=lambda k: int(k.split(".")[1]))
    index = last.split(".")[1]
    width = checkpoint["model"][f"head.{index}.weight"].shape[1]
    checkpoint["model"][f"head.{index}.weight"] = torch.randn(3, width)
    checkpoint["model"][f"head.{index}.bias"] = torch.tensor([0.0, 5.0, 0.0])
    torch.save(checkpoint, run / "best.pt")
    _, good = mixed_files
    code, out, err = run_cli(["predict", str(run), *map(str, good), "--device", "cpu"], capsys)
    assert code == 0, err
    for line in out.strip().splitlines():
        _, target, name, probability = line.split("\t")
        assert target == "band" and name in ("low", "mid", "high") and 1 / 3 <= float(probability) <= 1
    code, out, _ = run_cli(["predict", str(run), str(good[0]), "--device", "cpu", "--json"], capsys)
    entry = json.loads(out)[0]
    assert set(entry["probabilities"]) == {"low", "mid", "high"}
    assert sum(entry["probabilities"].values()) == pytest.approx(1.0)
    assert entry["probability"] == max(entry["probabilities"].values())


def test_encoders_lists_options_defaults_and_what_each_reads(capsys):
    from sne.encoders import encoder_names

    code, out, _ = run_cli(["encoders", "--json"], capsys)
    assert code == 0
    described = {entry["name"]: entry for entry in json.loads(out)}
    assert sorted(described) == encoder_names()
    assert described["sne"]["reads"] == "any network" and described["sne"]["options"]["out_dim"] == 32
    assert described["mlp"]["reads"].startswith("one fixed architecture")
    assert all(entry["options"] for entry in described.values()), "an encoder's defaults were not found"
    code, out, _ = run_cli(["encoders"], capsys)
    assert code == 0 and "options: " in out and "sne: reads any network" in out


def test_long_commands_write_plain_progress_lines_to_a_log(tmp_path):
    """Not a terminal (a pipe, a log file): zoo generation and training still say how far they are."""
    script = str(Path(sys.executable).parent / "sne")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    zoo, run = tmp_path / "zoo", tmp_path / "run"
    done = subprocess.run([script, "zoo", "generate", "sine-inr", "--n", "30", "--seed", "0", "--steps", "5",
                           "--out", str(zoo)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "sine-inr zoo: 30/30" in done.stderr
    done = subprocess.run([script, "train", "--zoo", str(zoo), "--encoder", "deepsets", "--target", "frequency",
                           "--epochs", "2", "--out", str(run), "--device", "cpu"], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert re.search(r"epoch 2/2 train [\d.]+ val [\d.]+: 2/2", done.stderr), done.stderr
    assert "\x1b[" not in done.stderr  # plain text, no terminal escapes
