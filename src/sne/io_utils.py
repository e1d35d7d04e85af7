"""Atomic file output: write to a temporary file beside the target, then rename over it."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sne.errors import SneError, one_line


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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise SneError(f"{path}: cannot write there ({_reason(error)})") from None
    os.close(fd)
    tmp_path = Path(tmp)
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


def _reason(error: OSError) -> str:
    return error.strerror or one_line(error)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


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
