"""Transfer benchmarks under names of their own (--name), and results files that are never replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from sne.zoo import generate_zoo
from project_scripts import load_script


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    """Tiny zoos: small CNNs on two datasets and CNN-s, 24 networks each, one epoch."""
    root = tmp_path_factory.mktemp("zoos")
    made = {}
    for recipe, dataset in (("small-cnn", "digits"), ("small-cnn", "shapes10"), ("cnn-s", "digits")):
        made[f"{recipe}/{dataset}"] = generate_zoo(recipe, root / f"{recipe}-{dataset}", n=24, seed=0,
                                                   options={"dataset": dataset, "epochs": 1}, command="test",
                                                   progress=False).path
    return made


def _common(tmp_path: Path) -> list[str]:
    return ["--encoders", "statnn", "--epochs", "1", "--batch-size", "16", "--device", "cpu",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]


def _page(monkeypatch, root: Path):
    """scripts/make_results_md.py, reading ``root``/results."""
    page = load_script("scripts/make_results_md.py")
    monkeypatch.setattr(page, "ROOT", root)
    return page


def test_results_on_other_zoos_or_of_another_benchmark_are_refused_and_kept(zoos, tmp_path, capsys):
    common = _common(tmp_path)
    code, _, err = run_cli(["bench", "cross-arch", "--train", str(zoos["small-cnn/digits"]),
                            "--test", str(zoos["small-cnn/shapes10"]), *common], capsys)
    assert code == 0, err
    path = tmp_path / "results" / "cross_arch.json"
    before = path.read_bytes()
    # Other test zoos: the small-cnn table would be wiped, so nothing is written.
    code, _, err = run_cli(["bench", "cross-arch", "--train", str(zoos["small-cnn/digits"]),
                            "--test", str(zoos["cnn-s/digits"]), *common], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    message = "".join(err.split())  # rich wraps long lines, even inside a path
    assert str(path) in message and "otherzoos" in message and "--nameNAME" in message and "--resultsDIR" in message
    assert path.read_bytes() == before
    # Another benchmark's file: refused before anything is trained.
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", str(zoos["small-cnn/shapes10"]), "--name", "cross_arch",
                            *common], capsys)
    assert code == 2 and "benchmark 'cross_arch'" in " ".join(err.split()), err
    assert path.read_bytes() == before
    assert not (tmp_path / "runs" / "test_accuracy" / "statnn_seed0" / "small-cnn-shapes10").exists()
    # A file that is no results file is not replaced either.
    broken = tmp_path / "results" / "cross_dataset.json"
    broken.write_text("{ half a file")
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", str(zoos["small-cnn/digits"]), *common], capsys)
    assert code == 2 and "not a results file" in err and broken.read_text() == "{ half a file"


def test_a_named_transfer_study_gets_its_own_file_merges_and_its_own_section(zoos, tmp_path, capsys, monkeypatch):
    common = _common(tmp_path)
    default = ["bench", "cross-arch", "--train", str(zoos["small-cnn/digits"]), "--test", str(zoos["small-cnn/shapes10"])]
    assert run_cli([*default, *common], capsys)[0] == 0
    kept = (tmp_path / "results" / "cross_arch.json").read_bytes()
    named = ["bench", "cross-arch", "--train", str(zoos["small-cnn/digits"]), "--test", str(zoos["cnn-s/digits"]),
             "--name", "cnn-s_transfer", *common]
    code, out, err = run_cli(named, capsys)
    assert code == 0, err
    path = tmp_path / "results" / "cnn-s_transfer.json"
    assert str(tmp_path / "results" / "cnn-s_transfer.json") in "".join((out + err).split())  # rich wraps it
    assert (tmp_path / "results" / "cross_arch.json").read_bytes() == kept
    data = json.loads(path.read_text())
    assert data["benchmark"] == "cross_arch" and data["name"] == "cnn-s_transfer"
    assert [z["label"] for z in data["test_zoos"]] == ["cnn-s/digits"]
    assert all(Path(p).name.startswith("cnn-s_transfer_") for e in data["entries"] for p in e["plots"].values())
    # A second run under the same name adds its rows.
    code, _, err = run_cli([*named, "--seeds", "1"], capsys)
    assert code == 0, err
    data = json.loads(path.read_text())
    assert sorted(e["seed"] for e in data["entries"]) == [0, 1] and len(data["commands"]) == 2
    # The results page gives the named study its own section beside the benchmark's.
    text = _page(monkeypatch, tmp_path).render()
    assert "## Transfer study `cnn-s_transfer` (target `test_accuracy`, Kendall's tau on test splits)" in text
    assert "## Cross-architecture accuracy prediction (target `test_accuracy`" in text
    assert "Source: `results/cnn-s_transfer.json`" in text and "normalised MSE" not in text
    # Published numbers stand under the tables they were published for, not under a study of its own.
    sections = {part.split("\n", 1)[0]: part for part in text.split("\n## ")}
    named = next(part for title, part in sections.items() if title.startswith("Transfer study `cnn-s_transfer`"))
    benchmark = next(part for title, part in sections.items() if title.startswith("Cross-architecture"))
    assert data["paper"] is None and "Published numbers" not in named
    assert "Published numbers (the SNE paper, small-CNN to CNN-s" in benchmark


def test_published_numbers_belong_to_their_own_study():
    from sne.bench.paper import PAPER_CROSS_DATASET_TAU, published_tau, rerun_of

    assert published_tau("cross_dataset", "cross_dataset")[1] is PAPER_CROSS_DATASET_TAU
    source, numbers = published_tau("cross_dataset", "wild_park")
    assert "Neural Graphs" in source and numbers["ng_t"] == {"wild-park": 0.817}
    assert published_tau("cross_arch", "transformer_transfer")[1]["sne"] == {"min": 0.33, "max": 0.46}
    assert published_tau("cross_arch", "my_study") is None
    # A study made again on regenerated zoos is still that study.
    assert published_tau("cross_arch", "transformer_transfer_rerun") == published_tau("cross_arch", "transformer_transfer")
    assert published_tau("cross_dataset", "cross_dataset_rerun")[1] is PAPER_CROSS_DATASET_TAU
    assert published_tau("cross_arch", "my_study_rerun") is None
    assert rerun_of("cross_dataset_rerun") == "cross_dataset" and rerun_of("rerun_study") is None


def test_a_regression_target_shows_normalised_mse_per_cell(zoos, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", f"{zoos['small-cnn/digits']},{zoos['small-cnn/shapes10']}",
                            "--target", "log10_lr", "--name", "lr", *_common(tmp_path)], capsys)
    assert code == 0, err
    path = tmp_path / "results" / "lr.json"
    data = json.loads(path.read_text())
    assert data["target_kind"] == "regression"
    page = _page(monkeypatch, tmp_path)
    text = "\n".join(page.transfer_section(path, data))
    assert text.startswith("## Transfer study `lr` (target `log10_lr`, Kendall's tau and normalised MSE")
    for entry in data["entries"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {entry['train_zoo']} |"))
        for evaluation in entry["evaluations"].values():
            assert f"({page._fmt(evaluation['normalized_mse'])})" in row
    assert "Published numbers" not in text  # published taus rank accuracies


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "table.json", "-x", "zoo_small", "two words"])
def test_bad_names_are_refused_in_one_line(name, tmp_path, capsys):
    code, _, err = run_cli(["bench", "cross-arch", "--train", "nowhere", "--test", "nowhere-else", "--name", name,
                            *_common(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "results name" in err, err
    assert not (tmp_path / "results").exists()


def test_a_study_with_published_numbers_checks_their_ordering(zoos, tmp_path, capsys, monkeypatch):
    import sne.bench.paper

    published = {"statnn": {"zoo": 0.9}, "mlp": {"zoo": 0.1}, "nft": {"zoo": 0.5}}  # nft: not in our table
    monkeypatch.setitem(sne.bench.paper.PAPER_STUDY_TAU, "ordered", ("a test", published))
    common = _common(tmp_path)
    common[common.index("statnn")] = "statnn,mlp"
    del common[common.index("--batch-size"):common.index("--batch-size") + 2]  # rows at their defaults
    code, _, err = run_cli(["bench", "cross-dataset", "--zoos", f"{zoos['small-cnn/digits']},{zoos['small-cnn/shapes10']}",
                            "--name", "ordered", *common], capsys)
    assert code == 0, err
    path = tmp_path / "results" / "ordered.json"
    data = json.loads(path.read_text())
    text = "\n".join(_page(monkeypatch, tmp_path).transfer_section(path, data))
    line = next(line for line in text.splitlines() if line.startswith("Ordering check"))
    ours = {}
    for encoder in ("statnn", "mlp"):
        taus = [e["evaluations"][z]["kendall_tau"] for e in data["entries"] if e["encoder"] == encoder
                for z in e["evaluations"]]
        ours[encoder] = sum(taus) / len(taus)
    assert "published statnn 0.900 > mlp 0.100" in line and "nft" not in line
    if ours["statnn"] > ours["mlp"]:
        assert line.endswith("the published ordering holds.")
    else:
        assert line.endswith("reversed here, where the published table has statnn over mlp.")
