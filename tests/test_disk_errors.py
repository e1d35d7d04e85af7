"""A full disk or a read-only output directory: one line naming the path, exit code 2, no traceback,
and what was there before is left as it was."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from sne.errors import SneError
from sne.io_utils import atomic_path, write_bytes_atomic, write_json_atomic
from sne.train import run as run_module

SNE = Path(sys.executable).with_name("sne")
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
TINY_ZOO = ["--n", "4", "--steps", "5", "--shard-size", "2", "--seed", "1"]


def full_disk(monkeypatch, under: Path) -> None:
    """Writes of whole files below ``under`` fail as on a full disk."""
    for name in ("write_bytes", "write_text"):
        real = getattr(pathlib.Path, name)

        def failing(self, *args, _real=real, **kwargs):
            if Path(self).is_relative_to(under):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, name, failing)


def interrupt(zoo: Path) -> None:
    """Make ``zoo`` what a kill during its second shard leaves: a resume writes that shard."""
    manifest = json.loads((zoo / "manifest.json").read_text())
    (zoo / "manifest.json").write_text(json.dumps({**manifest, "complete": False, "completed": None}))
    for path in [zoo / "metadata.parquet", *(zoo / "shards").glob("shard-00001.*")]:
        path.unlink()


def error_line(output: str) -> str:
    """The one error line of a failed command (progress lines may come before it; no traceback)."""
    errors = [line for line in output.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def leftovers(root: Path) -> list[Path]:
    return [p for pattern in (".*.tmp", "*.partial") for p in root.rglob(pattern)]


def test_a_full_disk_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "history.json"
    write_json_atomic(target, [1])
    full_disk(monkeypatch, tmp_path)
    for write in (lambda: write_json_atomic(target, [1, 2]), lambda: write_bytes_atomic(target, b"[1, 2]")):
        with pytest.raises(SneError, match=f"{target}: cannot write it \\(No space left on device\\)"):
            write()
    with pytest.raises(SneError, match="No space left on device"), atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:  # a library's own write, e.g. np.save or to_parquet
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    monkeypatch.undo()
    assert json.loads(target.read_text()) == [1] and not leftovers(tmp_path)


def test_a_checkpoint_on_a_full_disk_is_one_error_and_the_old_one_stays(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    run_module._save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    full_disk(monkeypatch, tmp_path)
    with pytest.raises(SneError, match=f"{path}: cannot write it"):
        run_module._save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(3)) and not leftovers(tmp_path)


def test_cli_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch, shared_sine_zoo):
    """zoo generate resumed, train and import, in-process with the disk filling up under --out."""
    from test_unterthiner_import import write_fake_zoo

    zoo = tmp_path / "zoo"
    assert run_cli(["zoo", "generate", "sine-inr", *TINY_ZOO, "--out", str(zoo)], capsys)[0] == 0
    interrupt(zoo)
    manifest = (zoo / "manifest.json").read_text()
    published = tmp_path / "published"
    write_fake_zoo(published)
    full_disk(monkeypatch, tmp_path)
    commands = {
        "zoo": ["zoo", "generate", "sine-inr", *TINY_ZOO, "--out", str(zoo)],
        "run": ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--out", str(tmp_path / "run"),
                "--epochs", "1", "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8", "--device", "cpu"],
        "imported": ["zoo", "import", "unterthiner", str(published), "--out", str(tmp_path / "imported")],
    }
    for name, command in commands.items():
        code, out, err = run_cli(command, capsys)
        line = error_line(out + err)
        # An import writes into a staging directory beside --out (renamed into place when complete).
        named = str(tmp_path / name) in line or str(tmp_path / f".{name}.") in line
        assert code == 2 and named and "No space left on device" in line, line
    assert (zoo / "manifest.json").read_text() == manifest
    assert not leftovers(tmp_path)


def test_installed_script_on_a_full_disk_is_one_line(tmp_path):
    """The same through a real process: `sne zoo generate` with writes below --out failing."""
    out = tmp_path / "zoo"
    program = (
        "import errno, os, pathlib, sys\n"
        f"under = pathlib.Path({str(out)!r})\n"
        "real = pathlib.Path.write_text\n"
        "def failing(self, *a, **k):\n"
        "    if self.is_relative_to(under):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return real(self, *a, **k)\n"
        "pathlib.Path.write_text = failing\n"
        "from sne.cli import main\n"
        "sys.argv = ['sne', 'zoo', 'generate', 'sine-inr', '--out', str(under), *sys.argv[1:]]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", program, *TINY_ZOO], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = error_line(done.stdout + done.stderr)
    assert done.returncode == 2 and str(out / "manifest.json") in line and "No space left on device" in line


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories anyway")
def test_read_only_output_directories_are_one_line_and_left_intact(tmp_path, shared_sine_zoo):
    from test_unterthiner_import import write_fake_zoo

    published = tmp_path / "published"
    write_fake_zoo(published)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    zoo = tmp_path / "ro" / "zoo"
    done = subprocess.run([str(SNE), "zoo", "generate", "sine-inr", *TINY_ZOO, "--out", str(zoo)], env=env)
    assert done.returncode == 0
    interrupt(zoo)
    run_dir = tmp_path / "ro" / "run"
    run_dir.mkdir()
    before = {p: p.read_bytes() for p in (tmp_path / "ro").rglob("*") if p.is_file()}
    read_only = [tmp_path / "ro", zoo, zoo / "shards", run_dir]
    for directory in read_only:
        directory.chmod(0o555)
    try:
        commands = {
            str(zoo): ["zoo", "generate", "sine-inr", *TINY_ZOO, "--out", str(zoo)],
            str(run_dir): ["train", "--zoo", str(shared_sine_zoo.path), "--target", "frequency", "--out", str(run_dir),
                           "--epochs", "1", "-o", "hidden=8", "-o", "heads=2", "-o", "out_dim=8", "--device", "cpu"],
            str(tmp_path / "ro" / "imported"): ["zoo", "import", "unterthiner", str(published), "--out",
                                                str(tmp_path / "ro" / "imported")],
        }
        for path, command in commands.items():
            done = subprocess.run([str(SNE), *command], capture_output=True, text=True, env=env)
            assert done.returncode == 2 and path in error_line(done.stdout + done.stderr)
    finally:
        for directory in read_only:
            directory.chmod(0o755)
    assert {p: p.read_bytes() for p in (tmp_path / "ro").rglob("*") if p.is_file()} == before


def test_files_and_zoos_get_the_modes_open_would_give(tmp_path):
    """mkstemp and mkdtemp make 0600 files and 0700 directories: zoos and runs written through
    them would be unreadable to the other users of a shared machine."""
    import stat

    from sne.io_utils import staged_directory, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        with staged_directory(tmp_path / "zoo") as staging:
            write_json_atomic(staging / "manifest.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "zoo").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "zoo" / "manifest.json").stat().st_mode) == 0o644


def test_a_file_name_too_long_for_the_file_system_is_shortened_not_refused(tmp_path):
    from sne.io_utils import MAX_NAME_BYTES, bounded_path
    from sne.plots import plt, save_figure

    # Plot names are built from runs' options: with enough of them a name passes the 255-byte limit.
    long = tmp_path / ("sne_" + "option-value_" * 25 + "seed0_small-cnn-digits-affine_scatter.png")
    assert len(long.name.encode()) > MAX_NAME_BYTES
    fig, _ = plt.subplots()
    written = save_figure(fig, long)
    assert written.is_file() and written.parent == tmp_path and written.suffix == ".png"
    assert len(written.name.encode()) <= MAX_NAME_BYTES and written.name.startswith("sne_option-value_")
    assert written == bounded_path(long) != bounded_path(long.with_name(long.name.replace("scatter", "tsne")))
    assert bounded_path(tmp_path / "short.png") == tmp_path / "short.png"
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temporary left behind
