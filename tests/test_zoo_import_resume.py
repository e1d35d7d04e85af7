"""An import killed at a shard and run again finishes the zoo an uninterrupted import makes, bit for
bit, without reading the source files of the shards it had written; a re-run on other sources or
options is refused in one line, and bad input found midway leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli
from sne.errors import SneError
from sne.zoo import Zoo
from sne.zoo import folder as folder_module
from sne.zoo import format as format_module
from sne.zoo import unterthiner as unterthiner_module
from sne.zoo.folder import import_folder
from sne.zoo.unterthiner import import_unterthiner
from test_unterthiner_import import write_fake_zoo
from test_zoo_import_folder import write_folder

SHARD = 3  # networks per shard: the folder's 11 networks make 4 shards, Unterthiner's 12 checkpoints 4


class Killed(BaseException):
    """What a kill looks like in-process: nothing catches it (as KeyboardInterrupt)."""


def assert_same_zoo(a: Path, b: Path) -> None:
    """Every file of zoo ``a`` equals ``b``'s: shard tensors bit for bit, rows, metadata, manifest
    but for its timestamps; and nothing else (no temporaries) is in either."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert not [f for f in files if f.name.startswith(".")]
    for name in files:
        if name.suffix == ".safetensors":
            x, y = load_file(str(a / name)), load_file(str(b / name))
            assert list(x) == list(y)
            for key in x:
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), (name, key)
        elif name.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
        else:
            stamps = ("created", "completed")
            x, y = (json.loads((root / name).read_text()) for root in (a, b))
            assert {k: v for k, v in x.items() if k not in stamps} == {k: v for k, v in y.items() if k not in stamps}


def no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.endswith(".partial") or p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ folder
@pytest.fixture
def folder(tmp_path):
    write_folder(tmp_path)
    return tmp_path


def counting_reader(monkeypatch, read: list[str], kill_at: int | None = None) -> None:
    """Count every checkpoint the folder importer reads; raise Killed on the ``kill_at``-th shard
    (counted from 1) before it is read."""
    real = folder_module.network_reader
    calls = {"shards": 0}

    def reader(arch):
        inner = real(arch)

        def read_one(path):
            read.append(Path(path).name)
            return inner(path)
        return read_one

    real_load = folder_module.parse_folder

    def parse(*args, **kwargs):
        imported = real_load(*args, **kwargs)
        load = imported.load

        def load_shard(ids):
            calls["shards"] += 1
            if calls["shards"] == kill_at:
                raise Killed
            return load(ids)
        imported.load = load_shard
        return imported

    monkeypatch.setattr(folder_module, "network_reader", reader)
    monkeypatch.setattr(folder_module, "parse_folder", parse)


def import_it(root: Path, out: Path, **options) -> Zoo:
    return import_folder(root / "nets", out, targets=root / "table.csv", shard_size=SHARD, **options)


def test_a_killed_folder_import_resumes_without_rereading_finished_shards(folder, monkeypatch):
    whole = import_it(folder, folder / "whole")
    assert len(whole) == 11 and len(whole.architectures) == 2

    first: list[str] = []
    counting_reader(monkeypatch, first, kill_at=3)  # killed after shards 0 and 1, before shard 2
    with pytest.raises(Killed):
        import_it(folder, folder / "resumed")
    with pytest.raises(SneError, match="incomplete"):
        Zoo.open(folder / "resumed")
    written = sorted(p.name for p in (folder / "resumed" / "shards").iterdir())
    assert written == [f"shard-0000{i}.{ext}" for i in range(2) for ext in ("parquet", "safetensors")]

    monkeypatch.undo()
    second: list[str] = []
    counting_reader(monkeypatch, second)
    import_it(folder, folder / "resumed")
    table = pd.read_csv(folder / "table.csv")["file"].map(lambda f: Path(f).name).tolist()
    assert first == table[: 2 * SHARD]
    assert second == table[2 * SHARD:]  # the first two shards' files are not read again
    assert_same_zoo(folder / "whole", folder / "resumed")
    assert no_leftovers(folder) == []


def test_a_folder_import_killed_while_the_manifest_grows_resumes_alike(folder, monkeypatch):
    """The CNNs (a second architecture) first appear in shard 2: killed with the manifest already
    listing them but shard 2 unwritten, the resumed import numbers them as an uninterrupted one."""
    import_it(folder, folder / "whole")
    real_write = format_module._write_shard

    def killed_at_shard_2(root, index, *args):
        if index == 2:
            raise Killed
        real_write(root, index, *args)

    monkeypatch.setattr(format_module, "_write_shard", killed_at_shard_2)
    with pytest.raises(Killed):
        import_it(folder, folder / "resumed")
    manifest = json.loads((folder / "resumed" / "manifest.json").read_text())
    assert len(manifest["architectures"]) == 2 and not manifest["complete"]
    monkeypatch.setattr(format_module, "_write_shard", real_write)
    import_it(folder, folder / "resumed")
    assert_same_zoo(folder / "whole", folder / "resumed")


def test_a_rerun_with_other_sources_or_options_is_refused_in_one_line(folder, monkeypatch, capsys):
    counting_reader(monkeypatch, [], kill_at=2)
    with pytest.raises(Killed):
        import_it(folder, folder / "zoo")
    monkeypatch.undo()
    before = sorted(p.name for p in (folder / "zoo" / "shards").iterdir())
    with pytest.raises(SneError, match="seed: zoo has 0, requested 1"):
        import_it(folder, folder / "zoo", seed=1)
    # A checkpoint rewritten since (same values, new modification time) is another source.
    path = folder / "nets" / "mlp_0.pt"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(SneError, match="source files") as refused:
        import_it(folder, folder / "zoo")
    assert "option" not in str(refused.value) and "seed" not in str(refused.value)
    code, _, err = run_cli(["zoo", "import", "folder", str(folder / "nets"), "--targets", str(folder / "table.csv"),
                            "--out", str(folder / "zoo")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(folder / "zoo") in err and "source files" in err
    assert sorted(p.name for p in (folder / "zoo" / "shards").iterdir()) == before  # nothing mixed in


def test_bad_input_found_by_a_resumed_import_leaves_nothing(folder, monkeypatch):
    counting_reader(monkeypatch, [], kill_at=2)
    with pytest.raises(Killed):
        import_it(folder, folder / "zoo")
    monkeypatch.undo()
    path = folder / "nets" / "cnn" / "net9.safetensors"  # in shard 3, not yet read
    stamp = path.stat()
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(path)).items()}, str(path))
    assert path.stat().st_size == stamp.st_size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the same listing, so it resumes
    with pytest.raises(SneError, match=str(path)):
        import_it(folder, folder / "zoo")
    assert not (folder / "zoo").exists() and no_leftovers(folder) == []


# ------------------------------------------------------------------------------ Unterthiner
class RowSpy:
    """weights.npy as read_weights gives it, recording which rows are read."""

    def __init__(self, array: np.ndarray, read: list[int], kill_at: int | None) -> None:
        self.array, self.read, self.kill_at, self.calls = array, read, kill_at, 0
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, rows):
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed
        self.read.extend(np.asarray(rows).tolist())
        return self.array[rows]


def spy_rows(monkeypatch, read: list[int], kill_at: int | None = None) -> None:
    real = unterthiner_module.read_weights
    monkeypatch.setattr(unterthiner_module, "read_weights", lambda path: RowSpy(real(path), read, kill_at))


@pytest.mark.parametrize("splits", [None, "nfn"])
def test_a_killed_unterthiner_import_resumes_without_rereading_finished_shards(tmp_path, monkeypatch, splits):
    published = tmp_path / "published"
    write_fake_zoo(published)
    if splits:
        pd.Series(np.random.default_rng(0).permutation(12)).to_csv(published / "mnist_split.csv", index=False,
                                                                    header=False)
    options = {"step": "all", "splits": splits, "shard_size": SHARD}
    whole = import_unterthiner(published, tmp_path / "whole", **options)
    assert len(whole) == 12 and whole.manifest["diverged"] == 1  # its NaN weights show only when read

    first: list[int] = []
    spy_rows(monkeypatch, first, kill_at=4)  # killed reading shard 3, after shards 0..2
    with pytest.raises(Killed):
        import_unterthiner(published, tmp_path / "resumed", **options)
    monkeypatch.undo()
    second: list[int] = []
    spy_rows(monkeypatch, second)
    import_unterthiner(published, tmp_path / "resumed", **options)
    assert len(first) == 3 * SHARD and len(second) == SHARD and not set(first) & set(second)
    assert_same_zoo(tmp_path / "whole", tmp_path / "resumed")
    assert no_leftovers(tmp_path) == []


def test_an_unfinished_unterthiner_import_refuses_other_options(tmp_path, monkeypatch):
    published = tmp_path / "published"
    write_fake_zoo(published)
    spy_rows(monkeypatch, [], kill_at=2)
    with pytest.raises(Killed):
        import_unterthiner(published, tmp_path / "zoo", step="all", shard_size=SHARD)
    monkeypatch.undo()
    with pytest.raises(SneError, match="option step: zoo has 'all', requested 86"):
        import_unterthiner(published, tmp_path / "zoo", shard_size=SHARD)
    import_unterthiner(published, tmp_path / "zoo", step="all", shard_size=SHARD)
    assert len(Zoo.open(tmp_path / "zoo")) == 12
