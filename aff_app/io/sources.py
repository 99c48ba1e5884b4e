"""A data source (a path or uploaded bytes), its format by extension, and a sniff of its content."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from aff_app.io.errors import (
    DataError,
    DataFileNotFoundError,
    EmptyFileError,
    UnsupportedFormatError,
    UploadTooLargeError,
    WrongFormatError,
)
from aff_app.io import formats  # formats.MAX_UPLOAD_MB read at call time (tests lower it)
from aff_app.io.formats import FORMATS, SUPPORTED_EXTENSIONS, _EXTENSION_FORMAT


# -- sources -------------------------------------------------------------------------
@dataclasses.dataclass
class _Source:
    name: str  # file name shown to the user
    data: bytes  # the file's bytes
    path: Path | None  # on-disk path (None for uploads)
    fmt: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def detect_format(filename: str | os.PathLike, fmt: str | None = None) -> str:
    """Format name for a file name (by extension) or the explicit ``fmt``.

    Raises
    ------
    UnsupportedFormatError
        Unknown extension or format, with the supported ones.
    """
    if fmt is not None:
        f = str(fmt).strip().lower().lstrip(".")
        if f not in FORMATS:
            raise UnsupportedFormatError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}")
        return f
    suffix = Path(str(filename)).suffix.lower()
    if suffix not in _EXTENSION_FORMAT:
        raise UnsupportedFormatError(
            f"cannot tell the format of {Path(str(filename)).name!r} from its extension {suffix or '(none)'!r}; "
            f"supported extensions: {', '.join('.' + e for e in SUPPORTED_EXTENSIONS)}"
        )
    return _EXTENSION_FORMAT[suffix]


def _too_large(name: str, n_bytes: int) -> UploadTooLargeError:
    return UploadTooLargeError(
        f"upload {name!r} is {n_bytes / 2**20:.1f} MB ({n_bytes} bytes), above the {formats.MAX_UPLOAD_MB} MB limit: "
        "select fewer frames before exporting it, or load it from disk with the CLI"
    )


def _open_source(source: Any, filename: str | None, fmt: str | None) -> _Source:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not filename:
            raise DataError("raw bytes need a filename (its extension tells the format, e.g. 'aspirin.npz')")
        data = bytes(source)
        name = Path(str(filename)).name
        if len(data) > formats.MAX_UPLOAD_MB * 2**20:
            raise _too_large(name, len(data))
        return _Source(name=name, data=data, path=None, fmt=detect_format(name, fmt))
    if hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        # a file-like upload object (e.g. Streamlit's UploadedFile): never read more than the limit
        name = filename or getattr(source, "name", None)
        size = getattr(source, "size", None)
        if isinstance(size, (int, np.integer)) and size > formats.MAX_UPLOAD_MB * 2**20:
            raise _too_large(Path(str(name or "upload")).name, int(size))
        data = source.read(formats.MAX_UPLOAD_MB * 2**20 + 1)
        if len(data) > formats.MAX_UPLOAD_MB * 2**20:
            raise _too_large(Path(str(name or "upload")).name, len(data) + 1)
        return _open_source(data, name, fmt)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"no such data file: {str(path)!r}")
    if path.is_dir():
        raise DataError(f"{str(path)!r} is a directory, not a data file")
    name = Path(filename).name if filename else path.name
    f = detect_format(name, fmt)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return _Source(name=name, data=data, path=path, fmt=f)


# -- content sniffing ------------------------------------------------------------------
#: What each format's bytes look like (see :func:`sniff_format`).
_FORMAT_KIND = {"npz": "npz", "extxyz": "text", "xyz": "text", "traj": "traj", "db": "db"}
_KIND_TEXT = {
    "npz": "a zip archive (an .npz dataset)",
    "npy": "a single NumPy .npy array",
    "text": "text (extended XYZ?)",
    "traj": "an ASE trajectory (.traj)",
    "pickle_traj": "an old pickle-based ASE trajectory",
    "db": "an SQLite database (ASE .db?)",
    "gzip": "gzip-compressed data",
    "binary": "binary data of no supported format",
}
_KIND_FORMAT = {"npz": "npz", "text": "extxyz", "traj": "traj", "db": "db"}


def sniff_format(data: bytes) -> str:
    """Guess what a file holds from its first bytes.

    Returns
    -------
    str
        ``'empty'``, ``'npz'`` (zip archive), ``'npy'``, ``'traj'`` (ASE ULM
        trajectory), ``'pickle_traj'`` (ASE's old pickle trajectories),
        ``'db'`` (SQLite), ``'gzip'``, ``'text'`` (UTF-8 text without NUL
        bytes) or ``'binary'``.
    """
    head = bytes(data[:4096])
    if not head:
        return "empty"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:8] == b"- of Ulm":
        return "traj"
    if head[:16] == b"PickleTrajectory":
        return "pickle_traj"
    if head[:16] == b"SQLite format 3\x00":
        return "db"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if b"\x00" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4 or len(data) <= len(head):  # not just a character cut at the 4 KiB edge
            return "binary"
    return "text"


def _check_content(src: _Source) -> None:
    """Refuse empty files and content that is not what the extension (or ``fmt``) says."""
    kind = sniff_format(src.data)
    if kind == "empty":
        raise EmptyFileError(
            f"{src.name!r} is empty (0 bytes): choose the file again, or check that it was saved completely"
        )
    expected = _FORMAT_KIND[src.fmt]
    if kind == expected:
        return
    what = {"npz": "an .npz dataset", "text": "an extended XYZ text file", "traj": "an ASE trajectory (.traj)",
            "db": "an ASE database (.db)"}[expected]
    if kind == "npy" and expected == "npz":
        raise WrongFormatError(
            f"{src.name!r} is a single .npy array; a dataset must be an .npz archive with R, z, E, F"
        )
    if kind == "pickle_traj":
        raise WrongFormatError(
            f"{src.name!r} is an old pickle-based ASE trajectory; it is refused (unpickling can run arbitrary "
            "code): convert it with a trusted ASE install (ase convert old.traj new.traj)"
        )
    if kind == "gzip":
        raise WrongFormatError(f"{src.name!r} is gzip-compressed: decompress it first (gunzip) and load the result")
    if kind in _KIND_FORMAT:
        proper = _KIND_FORMAT[kind]
        raise WrongFormatError(
            f"{src.name!r} is not {what}: it holds {_KIND_TEXT[kind]}. Rename it to .{proper} "
            f"or choose the format {proper!r} (CLI: --format {proper})"
        )
    raise WrongFormatError(
        f"{src.name!r} is not {what}: it holds {_KIND_TEXT.get(kind, kind)}. Supported: .npz (sGDML/MD17), "
        ".extxyz/.xyz (text), .traj and .db (ASE)"
    )


