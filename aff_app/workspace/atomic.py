"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``.

A reader (another session, another server process) sees either no file or the
whole file under the final name, never a partial one: ``os.replace`` is atomic
on POSIX and Windows when source and target lie on the same file system, which
is why the temporary file is made in the target folder and not in ``/tmp``.
A crash leaves at most a file named ``.tmp-*`` that :meth:`Workspace.scan`
names and nothing ever loads.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["TEMP_PREFIX", "write_atomic", "sha256_file"]

#: Name prefix of the temporary files (never the name of a stored entry, which is hexadecimal).
TEMP_PREFIX = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible, and not needed, on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, write: Callable[[BinaryIO], None]) -> int:
    """Write ``target`` through ``write(file_object)``, atomically; return its size in bytes.

    On any failure the temporary file is removed and the exception propagates;
    ``target`` is then untouched (absent, or its old content).
    """
    target = Path(target)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        size = tmp.stat().st_size
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)
    return size


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks (model files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
