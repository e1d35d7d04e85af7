"""Atomic file output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sne.errors import SneError, one_line

# The process's umask, read once (reading it means setting it): files made here get the modes
# open() would give them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


#: Longest file name most file systems take, in bytes.
MAX_NAME_BYTES = 255


def bounded_path(path: str | os.PathLike, limit: int = MAX_NAME_BYTES) -> Path:
    """``path``, or where its file name is longer than ``limit`` bytes (names built from many options),
    the same path with the name's stem cut and a hash of the whole name added: distinct names stay
    distinct, and a name that fits is kept as it is."""
    import hashlib

    path = Path(path)
    name = path.name
    if len(name.encode()) <= limit:
        return path
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    keep = limit - len(path.suffix.encode()) - len(digest) - 1
    stem = path.stem.encode()[:keep].decode(errors="ignore")
    return path.with_name(f"{stem}-{digest}{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it to ``path`` only on success.

    A crash or exception leaves the previous file (if any) untouched and no partial file behind.
    A directory that cannot be written to (missing, read-only, full), an ``OSError`` while the
    caller writes the temporary file (a full disk) or a target that cannot be replaced (a
    directory) is :class:`SneError` naming ``path``; other errors come from the caller unchanged.
    Writers that report a full disk otherwise (``torch.save``, safetensors) should go through
    :func:`write_bytes_atomic`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name repeats only the start of the target's: a name near the file-system limit
        # (255 bytes) must still get a temporary file.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise SneError(f"{path}: cannot write there ({_reason(error)})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide zoos and runs from other users
    try:
        try:
            yield tmp_path
        except OSError as error:
            raise SneError(f"{path}: cannot write it ({_reason(error)})") from None
        try:
            os.replace(tmp_path, path)
        except OSError as error:
            raise SneError(f"{path}: cannot replace it ({_reason(error)})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def staged_directory(root: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty directory beside ``root`` that is renamed to ``root`` (absent or empty) only
    when the block completes: an error or a kill leaves nothing at ``root``. Staging directories of
    earlier runs that were killed are removed first; a parent that cannot be written is
    :class:`SneError` naming ``root``."""
    root = Path(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        for stale in root.parent.glob(f".{glob.escape(root.name)}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        # Not ".tmp": remove_stale_temporaries() unlinks those as files.
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
        os.chmod(staging, 0o777 & ~_UMASK)
    except OSError as error:
        raise SneError(f"{root}: cannot write there ({_reason(error)})") from None
    try:
        yield staging
        if root.is_dir():
            root.rmdir()
        os.replace(staging, root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _reason(error: OSError) -> str:
    return error.strerror or one_line(error)


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float made None: JSON has no NaN, and strict parsers (jq,
    JavaScript, Go) refuse the ``NaN`` Python writes by default."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def json_text(obj, **options) -> str:
    """Strict JSON of ``obj`` (non-finite numbers as null: :func:`finite_or_null`)."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **options)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj, indent=2, sort_keys=False) + "\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` as :func:`atomic_path` does. Serialise in memory first where a library's own
    file writer hides a full disk in an opaque error (``torch.save``: RuntimeError; safetensors'
    ``save_file``: SafetensorError): a plain write reports it as the ``OSError`` it is."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries left by an interrupted :func:`atomic_path`; return how many."""
    removed = 0
    for stale in Path(directory).glob(".*.tmp"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
