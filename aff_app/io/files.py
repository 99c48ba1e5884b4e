"""Loading and writing trajectories: the edge where file units become internal units.

Every loader returns an :class:`aff_app.io.trajectory.Trajectory` in internal units
(positions in Å, energies in kcal/mol, forces in kcal/mol/Å) and every writer
converts back out of them; the factors come from :mod:`aff_app.units` only.

Formats
-------
``npz``
    sGDML/MD17 datasets (keys ``R``, ``z``, ``E`` (M,) or (M, 1), ``F``, with
    optional ``r_unit``/``e_unit``; default Å and kcal/mol), the layout of
    ``../shared/data/md17`` (``E``/``F`` = rMD17 labels, ``E_md17``/``F_md17`` =
    original MD17 labels), and the rMD17 release layout (``nuclear_charges``,
    ``coords``, ``energies``, ``forces``, optionally ``old_energies``,
    ``old_forces``, ``old_indices``; kcal/mol and Å). Pickled objects are refused.
``extxyz`` / ``xyz``
    Extended XYZ through :func:`ase.io.read` (labels from the calculator results
    ``energy``/``forces`` or from ``info``/``arrays`` keys the caller names); a
    plain XYZ file loads view-only (no labels). ASE convention: eV and Å unless
    the file records ``energy_unit``/``length_unit`` in its comment line or the
    caller overrides them.
``traj`` / ``db``
    ASE trajectory and database files, read by :func:`ase.io.read` (eV and Å).

Frames are selected with ASE's slice syntax (``':'``, ``'::10'``, ``'-500:'``,
``'5'``, ``'10:20:2'``), see :func:`parse_frames`, for every format alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aff_app import units
from aff_app.io.trajectory import Provenance, Trajectory, TrajectoryError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "FORMATS",
    "MAX_UPLOAD_MB",
    "DataError",
    "DataFileNotFoundError",
    "UnsupportedFormatError",
    "MissingKeyError",
    "PickledDataError",
    "FrameSelectionError",
    "LabelSetError",
    "EmptyFileError",
    "UploadTooLargeError",
    "WrongFormatError",
    "CorruptFileError",
    "NonFiniteDataError",
    "UnexpectedReadError",
    "NONFINITE_POLICIES",
    "describe_nonfinite",
    "sniff_format",
    "parse_frames",
    "detect_format",
    "load_trajectory",
    "available_label_sets",
    "suggest_label_keys",
    "from_atoms_list",
    "to_atoms_list",
    "write_extxyz",
    "write_sgdml_npz",
    "write_ase",
    "write_trajectory",
    "sgdml_dataset_md5",
]

#: File extensions (without the dot) the loaders accept; for the upload widget.
SUPPORTED_EXTENSIONS: tuple[str, ...] = ("npz", "extxyz", "xyz", "traj", "db")
#: Largest upload accepted, in megabytes (raw-bytes sources only).
MAX_UPLOAD_MB = 200
#: Format names accepted by ``fmt=`` (``xyz`` = ASE's plain XYZ reader, view-only).
FORMATS: tuple[str, ...] = ("npz", "extxyz", "xyz", "traj", "db")

_EXTENSION_FORMAT = {
    ".npz": "npz",
    ".extxyz": "extxyz",
    # A ``.xyz`` file is often extended XYZ; ASE's extxyz reader also reads plain
    # XYZ (then there are no labels and the trajectory is view-only).
    ".xyz": "extxyz",
    ".traj": "traj",
    ".db": "db",
}

# Label sets of the npz layouts: name -> (energy key, force key).
_SGDML_SHARED_SETS = {"rmd17": ("E", "F"), "md17": ("E_md17", "F_md17")}
_RMD17_SETS = {"rmd17": ("energies", "forces"), "md17": ("old_energies", "old_forces")}
#: Label-set name for ASE files whose labels are calculator results.
CALCULATOR_LABELS = "calculator"


# -- errors ----------------------------------------------------------------------
class DataError(ValueError):
    """A file or upload that cannot be turned into a trajectory (message says why)."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The data file does not exist."""


class UnsupportedFormatError(DataError):
    """A file extension or format name the loaders do not handle."""


class MissingKeyError(DataError):
    """A key (array, info entry, calculator result) the file does not have."""


class PickledDataError(DataError):
    """An ``.npz`` holding pickled Python objects (never unpickled: unsafe)."""


class FrameSelectionError(DataError):
    """A frame selection that cannot be parsed or selects no frames."""


class LabelSetError(DataError):
    """A label set the file does not provide."""


class EmptyFileError(DataError):
    """A file or upload of zero bytes."""


class UploadTooLargeError(DataError):
    """An upload above :data:`MAX_UPLOAD_MB`."""


class WrongFormatError(DataError):
    """Content that does not match the format its extension (or ``fmt``) names."""


class CorruptFileError(DataError):
    """A file of the right kind that is truncated or damaged."""


class UnexpectedReadError(DataError):
    """A parser failed in a way no check foresaw (the last line of defence; the fuzz tests expect none)."""


class NonFiniteDataError(DataError):
    """NaN or infinite positions, energies or forces (the message names the first frame and atom)."""


#: What :func:`load_trajectory` does with frames holding NaN/inf: refuse them or drop those frames.
NONFINITE_POLICIES: tuple[str, ...] = ("error", "drop")


# -- frame selection ---------------------------------------------------------------
_INT_RE = re.compile(r"^[+-]?\d+$")


def parse_frames(text: str | int | slice | None) -> slice | int:
    """Parse an ASE-style frame selection.

    Parameters
    ----------
    text : str, int, slice or None
        ``':'`` (all), ``'::10'`` (every 10th), ``'-500:'`` (last 500),
        ``'5'`` (frame 5 only), ``'10:20:2'``; None or ``''`` mean all frames.

    Returns
    -------
    slice or int

    Raises
    ------
    FrameSelectionError
        Text that is not ``int`` or ``start:stop:step`` with integer parts, or a
        zero step.
    """
    if text is None:
        return slice(None)
    if isinstance(text, slice):
        if text.step == 0:
            raise FrameSelectionError("frame selection step must not be zero")
        return text
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return int(text)
    s = str(text).strip()
    if s == "":
        return slice(None)
    if _INT_RE.match(s):
        return int(s)
    parts = s.split(":")
    if len(parts) > 3:
        raise FrameSelectionError(
            f"cannot parse frame selection {text!r}: use start:stop:step (e.g. ':', '::10', '-500:', '10:20:2') or one index"
        )
    values: list[int | None] = []
    for p in parts:
        p = p.strip()
        if p == "":
            values.append(None)
        elif _INT_RE.match(p):
            values.append(int(p))
        else:
            raise FrameSelectionError(
                f"cannot parse frame selection {text!r}: {p!r} is not an integer "
                "(use start:stop:step, e.g. ':', '::10', '-500:', '10:20:2')"
            )
    while len(values) < 3:
        values.append(None)
    if values[2] == 0:
        raise FrameSelectionError(f"frame selection {text!r}: step must not be zero")
    return slice(values[0], values[1], values[2])


def _frames_text(frames: Any) -> str:
    """Canonical text of a frame selection for provenance."""
    sel = parse_frames(frames)
    if isinstance(sel, int):
        return str(sel)
    parts = ["" if v is None else str(v) for v in (sel.start, sel.stop, sel.step)]
    text = ":".join(parts).rstrip(":") if sel.step is None else ":".join(parts)
    return text if ":" in text else text + ":"


def _select_indices(n_total: int, sel: slice | int, frames: Any, name: str) -> np.ndarray:
    """Indices into ``n_total`` frames chosen by ``sel`` (errors name the file)."""
    if isinstance(sel, int):
        if not -n_total <= sel < n_total:
            raise FrameSelectionError(
                f"frame {sel} is out of range: {name!r} has {n_total} frames (valid: {-n_total}..{n_total - 1})"
            )
        return np.array([sel % n_total])
    idx = np.arange(n_total)[sel]
    if idx.size == 0:
        raise FrameSelectionError(f"frame selection {str(frames)!r} selects no frames from the {n_total} of {name!r}")
    return idx


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
        f"upload {name!r} is {n_bytes / 2**20:.1f} MB ({n_bytes} bytes), above the {MAX_UPLOAD_MB} MB limit: "
        "select fewer frames before exporting it, or load it from disk with the CLI"
    )


def _open_source(source: Any, filename: str | None, fmt: str | None) -> _Source:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not filename:
            raise DataError("raw bytes need a filename (its extension tells the format, e.g. 'aspirin.npz')")
        data = bytes(source)
        name = Path(str(filename)).name
        if len(data) > MAX_UPLOAD_MB * 2**20:
            raise _too_large(name, len(data))
        return _Source(name=name, data=data, path=None, fmt=detect_format(name, fmt))
    if hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        # a file-like upload object (e.g. Streamlit's UploadedFile): never read more than the limit
        name = filename or getattr(source, "name", None)
        size = getattr(source, "size", None)
        if isinstance(size, (int, np.integer)) and size > MAX_UPLOAD_MB * 2**20:
            raise _too_large(Path(str(name or "upload")).name, int(size))
        data = source.read(MAX_UPLOAD_MB * 2**20 + 1)
        if len(data) > MAX_UPLOAD_MB * 2**20:
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


# -- npz ----------------------------------------------------------------------------
#: Largest total uncompressed size of an .npz's arrays (guards against zip bombs).
MAX_NPZ_UNCOMPRESSED_MB = 8 * 1024


def _npz_damaged(name: str, exc: BaseException, what: str = "") -> CorruptFileError:
    detail = str(exc) or type(exc).__name__
    return CorruptFileError(
        f"{name!r} is a damaged .npz archive{what} (truncated or corrupted: {detail}); "
        "export or download the file again"
    )


def _check_npz_members(src: _Source) -> None:
    """Refuse archives whose members would decompress to more than the limit, or do not open."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(src.data)) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise _npz_damaged(src.name, exc) from None
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types on garbage
        raise _npz_damaged(src.name, exc) from None
    total = sum(max(0, int(i.file_size)) for i in infos)
    if total > MAX_NPZ_UNCOMPRESSED_MB * 2**20:
        raise DataError(
            f"{src.name!r} would decompress to {total / 2**30:.1f} GB, above the "
            f"{MAX_NPZ_UNCOMPRESSED_MB / 1024:.0f} GB limit; select fewer frames before saving it"
        )


def _open_npz(src: _Source):
    if src.data[:6] == b"\x93NUMPY":
        raise WrongFormatError(f"{src.name!r} is a single .npy array; a dataset must be an .npz archive with R, z, E, F")
    if src.data[:2] != b"PK":
        raise WrongFormatError(f"{src.name!r} is not an .npz (zip) archive")
    _check_npz_members(src)
    try:
        return np.load(io.BytesIO(src.data), allow_pickle=False)
    except ValueError as exc:  # numpy refuses pickled content when allow_pickle=False
        if "pickle" in str(exc).lower():
            raise PickledDataError(
                f"{src.name!r} holds pickled Python objects; they are refused (unpickling can run arbitrary code)"
            ) from None
        raise _npz_damaged(src.name, exc) from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError from a damaged archive
        raise _npz_damaged(src.name, exc) from None


def _npz_get(npz, key: str, name: str) -> np.ndarray:
    if key not in npz.files:
        raise MissingKeyError(f"file {name!r} has no key {key!r}; keys present: {', '.join(sorted(npz.files))}")
    try:
        arr = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise PickledDataError(
                f"key {key!r} of {name!r} holds pickled Python objects; refused (unpickling can run arbitrary code). "
                "Save strings and numbers as plain NumPy arrays instead."
            ) from None
        raise _npz_damaged(name, exc, f" (key {key!r})") from None
    except MemoryError:
        raise CorruptFileError(
            f"key {key!r} of {name!r} declares an array too large to hold in memory; the file is damaged"
        ) from None
    except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, OSError from a damaged member
        raise _npz_damaged(name, exc, f" (key {key!r})") from None
    if not isinstance(arr, np.ndarray):  # pragma: no cover - np.load of a member is always an array
        raise DataError(f"key {key!r} of {name!r} is not an array")
    return arr


def _npz_numeric(arr: np.ndarray, key: str, name: str, *, integer: bool = False) -> np.ndarray:
    """``arr`` if it holds real numbers (integers for ``integer``), else a DataError naming the key and dtype."""
    kinds = "iu" if integer else "fiu"
    if arr.dtype.kind not in kinds and not (integer and arr.dtype.kind == "f"):
        want = "integer atomic numbers" if integer else "real numbers"
        raise DataError(f"key {key!r} of {name!r} must hold {want}, got dtype {arr.dtype} (shape {arr.shape})")
    return arr


def _npz_str(npz, key: str, name: str) -> str | None:
    """A string-valued npz entry (unicode or bytes array), or None when absent."""
    if key not in npz.files:
        return None
    val = _npz_get(npz, key, name)
    if val.dtype.kind not in "US" or val.size != 1:
        raise DataError(f"key {key!r} of {name!r} should hold one string, got dtype {val.dtype} shape {val.shape}")
    item = val.reshape(-1)[0]
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _npz_layout(npz, name: str) -> tuple[str, str, str, dict[str, tuple[str, str]]]:
    """(layout, position key, atomic-number key, label sets) of an npz dataset."""
    files = set(npz.files)
    if {"R", "z"} <= files:
        if "E_md17" in files or "F_md17" in files:
            sets = dict(_SGDML_SHARED_SETS)
        else:
            primary = _npz_str(npz, "label_set", name) or "sgdml"
            sets = {primary: ("E", "F")}
        return "sgdml", "R", "z", sets
    if {"coords", "nuclear_charges"} <= files:
        return "rmd17", "coords", "nuclear_charges", dict(_RMD17_SETS)
    raise MissingKeyError(
        f"file {name!r} is neither an sGDML/MD17 dataset (keys R, z, E, F) nor an rMD17 one "
        f"(keys nuclear_charges, coords, energies, forces); keys present: {', '.join(sorted(files)) or '(none)'}"
    )


def _npz_available(npz, sets: dict[str, tuple[str, str]]) -> list[str]:
    return [s for s, (ek, fk) in sets.items() if ek in npz.files and fk in npz.files]


def _load_npz(src, *, frames, label_set, energy_key, forces_key, energy_unit, length_unit, nonfinite) -> Trajectory:
    npz = _open_npz(src)
    with npz:
        layout, rkey, zkey, sets = _npz_layout(npz, src.name)
        z = _npz_numeric(_npz_get(npz, zkey, src.name), zkey, src.name, integer=True)
        if z.ndim != 1 or z.size == 0:
            raise DataError(f"{zkey!r} of {src.name!r} must have shape (N,) with N >= 1 atoms, got {z.shape}")
        R = _npz_numeric(_npz_get(npz, rkey, src.name), rkey, src.name)
        if R.ndim == 2 and R.shape[1] == 3 * np.size(z):  # some files store R as (M, 3N)
            R = R.reshape(R.shape[0], -1, 3)
        if R.ndim != 3 or R.shape[1:] != (z.size, 3):
            raise DataError(
                f"{rkey!r} of {src.name!r} must have shape (M, N, 3) with N = {z.size} atoms (the length of "
                f"{zkey!r}), got {R.shape}"
            )
        if R.shape[0] == 0:
            raise DataError(f"{rkey!r} of {src.name!r} holds no frames (shape {R.shape})")
        sel = parse_frames(frames)
        idx = _select_indices(R.shape[0], sel, frames, src.name)

        # which labels
        if energy_key is not None or forces_key is not None:
            if label_set is not None:
                raise DataError("give either a label set or energy/forces keys, not both")
            ek, fk = energy_key, forces_key
            label_name = f"{ek or '-'}/{fk or '-'}"
        else:
            available = _npz_available(npz, sets)
            if label_set is None:
                if available:
                    label_name = available[0]
                    ek, fk = sets[label_name]
                else:
                    label_name, ek, fk = "", None, None  # no labels: view-only
                    for e_, f_ in sets.values():  # half a label set: load it, view-only (the report says so)
                        if (e_ in npz.files) != (f_ in npz.files):
                            ek = e_ if e_ in npz.files else None
                            fk = f_ if f_ in npz.files else None
                            label_name = f"{ek or '-'}/{fk or '-'}"
                            break
            else:
                by_lower = {k.lower(): k for k in sets}
                label_name = by_lower.get(str(label_set).strip().lower(), str(label_set))
                if label_name not in sets:
                    raise LabelSetError(
                        f"unknown label set {label_set!r} for {src.name!r}; available: {', '.join(available) or '(none)'}"
                    )
                ek, fk = sets[label_name]

        E = _npz_numeric(_npz_get(npz, ek, src.name), ek, src.name) if ek else None
        F = _npz_numeric(_npz_get(npz, fk, src.name), fk, src.name) if fk else None

        # units: explicit argument > file's r_unit/e_unit > sGDML defaults (Å, kcal/mol)
        try:
            e_file = _npz_str(npz, "e_unit", src.name)
            r_file = _npz_str(npz, "r_unit", src.name)
            eu = units.canonical_energy_unit(energy_unit or e_file or units.ENERGY_UNIT)
            lu = units.canonical_length_unit(length_unit or r_file or units.LENGTH_UNIT)
        except units.UnitError as exc:
            raise units.UnitError(f"{src.name!r}: {exc} (override with energy_unit=/length_unit=)") from None

        settings: dict[str, Any] = {"format": "npz", "layout": layout}
        idx_key = "idx" if "idx" in npz.files else ("old_indices" if "old_indices" in npz.files else None)
        if idx_key is not None:
            file_idx = _npz_get(npz, idx_key, src.name)
            if file_idx.shape == (R.shape[0],) and file_idx.dtype.kind in "iu":
                settings["idx"] = [int(i) for i in file_idx[idx]]
        for key in ("source", "theory"):
            val = _npz_str(npz, key, src.name) if key in npz.files else None
            if val:
                settings[key] = val
        # 'settings_json' is written by write_sgdml_npz, 'settings' by aff_app.io.simulate.write_sample
        for skey in ("settings_json", "settings"):
            if skey not in npz.files:
                continue
            try:
                extra = json.loads(_npz_str(npz, skey, src.name) or "{}")
            except json.JSONDecodeError as exc:
                raise DataError(f"key {skey!r} of {src.name!r} is not valid JSON: {exc}") from None
            if isinstance(extra, dict):
                settings = {**extra, **settings}
        name = _npz_str(npz, "name", src.name) if "name" in npz.files else None

    m_total, n = R.shape[0], np.size(z)
    if E is not None:
        E = np.asarray(E)
        if E.ndim == 2 and E.shape[1] == 1:
            E = E[:, 0]
        if E.shape != (m_total,):
            raise DataError(f"energies {ek!r} of {src.name!r} must have shape ({m_total},) or ({m_total}, 1), got {E.shape}")
        E = E[idx]
    if F is not None:
        F = np.asarray(F)
        if F.ndim == 2 and F.shape[1] == 3 * n:
            F = F.reshape(F.shape[0], n, 3)
        if F.shape != (m_total, n, 3):
            raise DataError(f"forces {fk!r} of {src.name!r} must have shape ({m_total}, {n}, 3), got {F.shape}")
        F = F[idx]
    R = R[idx]
    return _build(
        z, R, E, F,
        name=name or Path(src.name).stem,
        energy_unit=eu, length_unit=lu,
        provenance=Provenance(
            source=src.name, content_hash=src.sha256, label_set=label_name,
            frames=_frames_text(frames), settings=settings,
        ),
        nonfinite=nonfinite,
    )


def _nonfinite_frames(R, E, F) -> np.ndarray:
    """Frames (indices) with a NaN or infinite position, energy or force."""
    bad = ~np.isfinite(R).all(axis=(1, 2))
    if E is not None:
        bad |= ~np.isfinite(E)
    if F is not None:
        bad |= ~np.isfinite(F).all(axis=(1, 2))
    return np.flatnonzero(bad)


def describe_nonfinite(z, R, E=None, F=None) -> str | None:
    """Where the first NaN/inf sits, e.g. ``"forces F[4, 7] (atom 7, O) = [nan, 0.1, 2.0]"``; None if all finite.

    Parameters
    ----------
    z : (N,) atomic numbers; R : (M, N, 3); E : (M,) or None; F : (M, N, 3) or None
    """
    from ase.data import chemical_symbols

    bad = _nonfinite_frames(R, E, F)
    if bad.size == 0:
        return None
    f = int(bad[0])
    counts = []
    for label, arr in (("positions", R), ("energies", E), ("forces", F)):
        if arr is not None:
            k = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            if k:
                counts.append(f"{k} in {label}")
    where = ""
    for label, key, arr in (("positions", "R", R), ("forces", "F", F)):
        if arr is not None and not np.isfinite(arr[f]).all():
            a = int(np.flatnonzero(~np.isfinite(arr[f]).all(axis=1))[0])
            zz = int(np.asarray(z)[a]) if a < np.size(z) else 0
            sym = chemical_symbols[zz] if 0 < zz < len(chemical_symbols) else "?"
            vals = ", ".join(f"{v:.6g}" for v in arr[f, a])
            where = f"frame {f}, atom {a} ({sym}): {label} {key}[{f}, {a}] = [{vals}]"
            break
    if not where:
        where = f"frame {f}: energy E[{f}] = {E[f]}"
    return (f"non-finite values (NaN or ±inf): {', '.join(counts)}, in {bad.size} of {R.shape[0]} frames; "
            f"first at {where}")


def _drop_frames(traj: Trajectory, drop, reason: str) -> Trajectory:
    """``traj`` without the frames ``drop``; provenance records them (and keeps ``idx`` aligned)."""
    drop = np.asarray(sorted(set(int(i) for i in drop)), dtype=np.int64)
    if drop.size == 0:
        return traj
    keep = np.setdiff1d(np.arange(traj.n_frames), drop)
    settings = dict(traj.provenance.settings)
    idx = settings.get("idx")
    if idx is not None and len(idx) == traj.n_frames:
        settings["idx"] = [idx[i] for i in keep]
    dropped = dict(settings.get("dropped_frames") or {})
    dropped[reason] = list(dropped.get(reason, [])) + drop.tolist()
    settings["dropped_frames"] = dropped
    sub = traj.subset(keep)
    return dataclasses.replace(sub, provenance=dataclasses.replace(traj.provenance, settings=settings))


def _build(z, R, E, F, *, name: str, energy_unit: str, length_unit: str, provenance: Provenance,
           nonfinite: str = "error") -> Trajectory:
    """Convert arrays from file units to internal units and validate them."""
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    ef = units.energy_factor(energy_unit)
    lf = units.length_factor(length_unit)
    ff = units.force_factor(energy_unit, length_unit)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values become inf: reported below
        R = np.asarray(R, dtype=np.float64)
        R = R * lf if lf != 1.0 else R
        if E is not None:
            E = np.asarray(E, dtype=np.float64)
            E = E * ef if ef != 1.0 else E
        if F is not None:
            F = np.asarray(F, dtype=np.float64)
            F = F * ff if ff != 1.0 else F
    prov = dataclasses.replace(provenance, energy_unit=energy_unit, length_unit=length_unit)
    src = provenance.source or name
    try:
        traj = Trajectory(z=np.asarray(z), R=R, E=E, F=F, name=name, provenance=prov)
    except TrajectoryError as exc:
        raise DataError(f"{src!r}: {exc}") from None
    bad = _nonfinite_frames(traj.R, traj.E, traj.F)
    if bad.size:
        if nonfinite == "error" or bad.size == traj.n_frames:
            within = "" if provenance.frames in (":", "") else f" (frames counted within the selection {provenance.frames!r})"
            advice = (
                "every frame is affected: fix the file" if bad.size == traj.n_frames else
                f"fix the file, or drop the {bad.size} affected frame(s): nonfinite='drop' (CLI: --drop-nonfinite)"
            )
            raise NonFiniteDataError(
                f"{src!r} has {describe_nonfinite(traj.z, traj.R, traj.E, traj.F)}{within}; {advice}"
            )
        traj = _drop_frames(traj, bad, "nonfinite")
    return traj


# -- ASE formats ---------------------------------------------------------------------
_ASE_FORMAT_TEXT = {"extxyz": "extended XYZ", "xyz": "XYZ", "traj": "an ASE trajectory (.traj)",
                    "db": "an ASE database (.db)"}


def _ase_error(src: _Source, exc: BaseException) -> DataError:
    """A user-facing message for an exception from ASE's readers."""
    what = _ASE_FORMAT_TEXT.get(src.fmt, src.fmt)
    if isinstance(exc, UnicodeDecodeError) and src.fmt in ("extxyz", "xyz"):
        return WrongFormatError(
            f"{src.name!r} is not a text file: byte {exc.start} is not UTF-8 text ({what} must be plain text)"
        )
    if isinstance(exc, MemoryError):
        return CorruptFileError(
            f"{src.name!r} declares arrays too large to hold in memory: the file is damaged, not {what}"
        )
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    if src.fmt in ("traj", "db"):
        return CorruptFileError(
            f"{src.name!r} could not be read as {what}; it looks truncated or damaged ({detail}). "
            "Export or download it again"
        )
    return CorruptFileError(
        f"{src.name!r} could not be read as {what} ({detail}); the file may be truncated or not {what}"
    )


def _check_ase_db(path: str, src: _Source) -> None:
    """An SQLite file that is no ASE database gets its own message (ASE would add tables to it)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError, ValueError) as exc:  # a damaged schema may not even decode
        raise CorruptFileError(
            f"{src.name!r} could not be read as an ASE database (.db): {exc}; the file looks truncated or damaged"
        ) from None
    if "systems" not in tables:
        raise WrongFormatError(
            f"{src.name!r} is an SQLite database but not an ASE database (it has no 'systems' table; "
            f"tables: {', '.join(sorted(tables)) or '(none)'})"
        )


def _ase_read(src: _Source, index) -> list:
    import warnings

    import ase.io

    if isinstance(index, slice) and ((index.step or 1) < 0 or (src.fmt == "db" and index.step not in (None, 1))):
        # ASE's db reader fails on stepped slices and its extxyz reader returns nothing for negative steps
        # (found by tests/test_fuzz.py): read every frame and slice here
        return _ase_read(src, slice(None))[index]

    def read(path: str):
        if src.fmt == "db":
            _check_ase_db(path, src)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ASE warns on odd extxyz keys; errors are what matter
                images = ase.io.read(path, index=index, format=src.fmt)
        except (StopIteration, IndexError):
            raise FrameSelectionError(f"frame {index!r} is out of range for {src.name!r}") from None
        except Exception as exc:  # ASE's parsers raise many types for malformed files
            raise _ase_error(src, exc) from None
        except MemoryError as exc:
            raise _ase_error(src, exc) from None
        return [images] if not isinstance(images, list) else images

    if src.path is not None and src.fmt != "db":
        return read(str(src.path))
    # uploads: ASE's readers want a real file for traj/db; keep the extension. A .db is always read
    # from a copy: ASE's sqlite backend writes (creates tables) when it opens a file.
    with tempfile.TemporaryDirectory(prefix="aff_upload_") as tmp:
        path = Path(tmp) / ("upload" + (Path(src.name).suffix or "." + src.fmt))
        path.write_bytes(src.data)
        return read(str(path))


def _calc_results(atoms) -> dict:
    calc = getattr(atoms, "calc", None)
    return dict(getattr(calc, "results", {}) or {}) if calc is not None else {}


def _symbol(z) -> str:
    """Element symbol of an atomic number, or ``'Z=200'`` when there is none."""
    from ase.data import chemical_symbols

    z = int(z)
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _formula(atoms) -> str:
    """Chemical formula of ``atoms``, also for impossible atomic numbers (a damaged file)."""
    try:
        return atoms.get_chemical_formula() or "(no atoms)"
    except (IndexError, KeyError, ValueError):
        return " ".join(_symbol(z) for z in atoms.numbers[:20]) + (" ..." if len(atoms) > 20 else "")


def _real_scalar(val) -> bool:
    if isinstance(val, (bool, np.bool_)):
        return False
    arr = np.asarray(val)
    return arr.size == 1 and arr.dtype.kind in "fi"


def from_atoms_list(
    images: Sequence,
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    name: str = "",
    provenance: Provenance | None = None,
    nonfinite: str = "error",
) -> Trajectory:
    """Build a Trajectory from ASE ``Atoms`` (one molecule, same atoms in every frame).

    Parameters
    ----------
    images : sequence of ase.Atoms, length M
        Frames with N atoms each; positions in ``length_unit``.
    energy_key, forces_key : str, optional
        ``atoms.info`` key with the energy (float per frame) and ``atoms.arrays``
        key with the forces ((N, 3) per frame); a calculator-result name
        (``'energy'``, ``'forces'``) also works. Default: the calculator's
        ``energy`` and ``forces`` when every frame has them.
    energy_unit, length_unit : str, optional
        Units of the labels and positions. Default: ``energy_unit``/``length_unit``
        recorded in the first frame's ``info``, else eV and Å (ASE convention).
    name : str
        Trajectory name (default: ``info['name']`` of the first frame, else '').
    provenance : Provenance, optional
        Source information; its units and label set are filled in here.
    nonfinite : {'error', 'drop'}
        Frames with NaN/inf positions or labels: refuse (:class:`NonFiniteDataError`,
        naming the first frame and atom) or drop them (recorded in
        ``provenance.settings['dropped_frames']``).

    Returns
    -------
    Trajectory
        In internal units (Å, kcal/mol, kcal/mol/Å).
    """
    images = list(images)
    prov = provenance or Provenance()
    src = prov.source or name or "atoms"
    if not images:
        raise FrameSelectionError(f"{src!r}: no frames")
    z = np.asarray(images[0].numbers)
    for i, at in enumerate(images):
        if len(at) != len(z):
            raise DataError(
                f"{src!r}: frame {i} has atoms {_formula(at)} ({len(at)} atoms) but frame 0 "
                f"has {_formula(images[0])} ({len(z)} atoms); a trajectory must be one molecule in a fixed "
                f"atom order: load only the first {i} frame(s) (frames ':{i}') or split the file"
            )
        if not np.array_equal(at.numbers, z):
            a = int(np.flatnonzero(np.asarray(at.numbers) != z)[0])
            same = sorted(at.numbers.tolist()) == sorted(z.tolist())
            raise DataError(
                f"{src!r}: frame {i} has its atoms in a different order from frame 0 (first difference: atom {a} "
                f"is {_symbol(at.numbers[a])} in frame {i} but {_symbol(z[a])} in frame 0)"
                + ("" if same else f"; its formula {_formula(at)} also differs from {_formula(images[0])}")
                + "; a trajectory needs one fixed atom order: reorder the atoms or split the file"
            )
    info0 = images[0].info
    try:
        eu = units.canonical_energy_unit(energy_unit or info0.get("energy_unit") or "eV")
        lu = units.canonical_length_unit(length_unit or info0.get("length_unit") or "Å")
    except units.UnitError as exc:
        raise units.UnitError(f"{src!r}: {exc} (override with energy_unit=/length_unit=)") from None

    def energy_of(i, at, key):
        res = _calc_results(at)
        if key is None:
            return res.get("energy")
        if key in at.info:
            val = at.info[key]
            if not _real_scalar(val):
                raise DataError(f"{src!r}: info key {key!r} of frame {i} is not one number (got {val!r})")
            return float(np.asarray(val).reshape(-1)[0])
        if key in res and np.size(res[key]) == 1:
            return float(np.asarray(res[key]).reshape(-1)[0])
        raise MissingKeyError(
            f"{src!r}: frame {i} has no energy {key!r}; info keys: {', '.join(sorted(at.info)) or '(none)'}; "
            f"calculator results: {', '.join(sorted(res)) or '(none)'}"
        )

    def forces_of(i, at, key):
        res = _calc_results(at)
        if key is None:
            return res.get("forces")
        if key in at.arrays:
            return at.arrays[key]
        if key in res:
            return res[key]
        arrays = [k for k in at.arrays if k not in ("numbers", "positions")]
        raise MissingKeyError(
            f"{src!r}: frame {i} has no forces {key!r}; arrays: {', '.join(sorted(arrays)) or '(none)'}; "
            f"calculator results: {', '.join(sorted(res)) or '(none)'}"
        )

    energies = [energy_of(i, at, energy_key) for i, at in enumerate(images)]
    forces = [forces_of(i, at, forces_key) for i, at in enumerate(images)]
    for i, e in enumerate(energies):
        if e is not None and not _real_scalar(e):
            raise DataError(f"{src!r}: the energy of frame {i} is not one number (got {e!r})")
    for i, f in enumerate(forces):
        if f is not None and (np.shape(f) != (len(z), 3) or np.asarray(f).dtype.kind not in "fiu"):
            raise DataError(
                f"{src!r}: the forces of frame {i} must be {len(z)}×3 numbers, got shape {np.shape(f)}"
                f" (dtype {np.asarray(f).dtype})"
            )
    E = _all_or_none(energies, "energy", src)
    F = _all_or_none(forces, "forces", src)
    if energy_key is None and forces_key is None:
        label = CALCULATOR_LABELS if (E is not None or F is not None) else ""
    else:
        label = f"{energy_key or CALCULATOR_LABELS}/{forces_key or CALCULATOR_LABELS}"
    try:
        R = np.stack([np.asarray(at.positions, dtype=np.float64) for at in images])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{src!r}: positions are not N×3 numbers in every frame ({exc})") from None
    return _build(
        z, R, E, F,
        name=name or str(info0.get("name") or ""),
        energy_unit=eu, length_unit=lu,
        provenance=dataclasses.replace(prov, label_set=label),
        nonfinite=nonfinite,
    )


def _all_or_none(values: list, what: str, src: str):
    have = [v is not None for v in values]
    if not any(have):
        return None
    if not all(have):
        missing = [i for i, h in enumerate(have) if not h]
        raise DataError(
            f"{src!r}: {len(missing)} of {len(values)} frames have no {what} (first: frame {missing[0]}); "
            "labels must be present in every frame or in none"
        )
    return np.asarray(np.stack([np.asarray(v, dtype=np.float64) for v in values]))


def _load_ase(src, *, frames, label_set, energy_key, forces_key, energy_unit, length_unit, nonfinite) -> Trajectory:
    if label_set is not None and str(label_set).strip().lower() != CALCULATOR_LABELS:
        raise LabelSetError(
            f"unknown label set {label_set!r} for {src.name!r} ({src.fmt}); available: {CALCULATOR_LABELS!r}, "
            "or name the info/arrays keys with energy_key=/forces_key="
        )
    sel = parse_frames(frames)
    images = _ase_read(src, sel)
    if not images:
        if isinstance(sel, slice) and sel == slice(None):
            raise CorruptFileError(
                f"{src.name!r} holds no complete frame that ASE can read as {_ASE_FORMAT_TEXT.get(src.fmt, src.fmt)}"
            )
        raise FrameSelectionError(f"frame selection {str(frames)!r} selects no frames from {src.name!r}")
    if src.fmt == "xyz" and (energy_key or forces_key):
        raise DataError("plain XYZ files carry no labels; read them with format 'extxyz' to use info/arrays keys")
    traj = from_atoms_list(
        images,
        energy_key=energy_key,
        forces_key=forces_key,
        energy_unit=energy_unit,
        length_unit=length_unit,
        provenance=Provenance(
            source=src.name, content_hash=src.sha256, frames=_frames_text(frames), settings={"format": src.fmt}
        ),
        nonfinite=nonfinite,
    )
    if src.fmt in ("extxyz", "xyz"):
        _check_xyz_complete(src, traj.n_atoms)
    if not traj.name:
        traj = dataclasses.replace(traj, name=Path(src.name).stem)
    return traj


def _check_xyz_complete(src: _Source, n_atoms: int) -> None:
    """ASE silently skips an incomplete last frame: refuse a (fixed-size) XYZ file whose lines do not add up."""
    lines = src.data.decode("utf-8", "replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    per_frame = n_atoms + 2
    extra = len(lines) % per_frame
    if extra:
        raise CorruptFileError(
            f"{src.name!r} looks truncated: {len(lines)} lines are {len(lines) // per_frame} complete frames of "
            f"{n_atoms} atoms ({per_frame} lines each) plus {extra} line(s) of an incomplete last frame; "
            f"export the file again (or delete the incomplete frame)"
        )


# -- public loaders -------------------------------------------------------------------
def load_trajectory(
    source: str | os.PathLike | bytes,
    *,
    filename: str | None = None,
    fmt: str | None = None,
    frames: str | int | slice | None = ":",
    label_set: str | None = None,
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    nonfinite: str = "error",
) -> Trajectory:
    """Load a trajectory from a file path or uploaded bytes, in internal units.

    Parameters
    ----------
    source : path-like or bytes
        A file path, or the raw bytes of an upload (then ``filename`` is required).
    filename : str, optional
        Name whose extension tells the format (required with bytes).
    fmt : {'npz', 'extxyz', 'xyz', 'traj', 'db'}, optional
        Overrides the format deduced from the extension.
    frames : str, int or slice
        ASE-style selection (``':'``, ``'::10'``, ``'-500:'``, ``'5'``).
    label_set : str, optional
        npz: ``'rmd17'`` (``E``/``F``, the default where present) or ``'md17'``
        (``E_md17``/``F_md17``); see :func:`available_label_sets`. ASE files:
        only ``'calculator'``.
    energy_key, forces_key : str, optional
        Explicit keys holding the labels (npz keys, or ASE ``info``/``arrays``
        keys; see :func:`suggest_label_keys`).
    energy_unit, length_unit : str, optional
        Units of the file, overriding what it records (npz ``e_unit``/``r_unit``,
        extxyz ``energy_unit``/``length_unit``) and the defaults (npz: kcal/mol, Å;
        ASE formats: eV, Å). Forces are taken in ``energy_unit/length_unit``.
    nonfinite : {'error', 'drop'}
        Frames holding NaN/inf positions, energies or forces: refuse the file
        (:class:`NonFiniteDataError`, naming the first frame and atom; the
        default) or drop those frames (listed in
        ``provenance.settings['dropped_frames']['nonfinite']``).

    Returns
    -------
    Trajectory
        ``R`` (M, N, 3) in Å, ``E`` (M,) in kcal/mol and ``F`` (M, N, 3) in
        kcal/mol/Å (None when the file has no labels: view-only data).

    Raises
    ------
    DataError
        (and its subclasses) for missing files or keys, unknown formats or label
        sets, pickled content and empty frame selections, empty files
        (:class:`EmptyFileError`), uploads above :data:`MAX_UPLOAD_MB`
        (:class:`UploadTooLargeError`), content that is not what the extension
        says (:class:`WrongFormatError`), damaged files
        (:class:`CorruptFileError`), NaN/inf values (:class:`NonFiniteDataError`);
        ``units.UnitError`` for unknown units. No other exception escapes: an
        unexpected failure of a parser is reported as a :class:`DataError`.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise DataError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    src = _open_source(source, filename, fmt)
    _check_content(src)
    kwargs = dict(
        frames=frames, label_set=label_set, energy_key=energy_key, forces_key=forces_key,
        energy_unit=energy_unit, length_unit=length_unit, nonfinite=nonfinite,
    )
    try:
        if src.fmt == "npz":
            return _load_npz(src, **kwargs)
        return _load_ase(src, **kwargs)
    except (DataError, units.UnitError):
        raise
    except MemoryError:
        raise CorruptFileError(f"{src.name!r} declares more data than fits in memory; the file is damaged") from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: a parser failed in a way not foreseen
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise UnexpectedReadError(f"could not read {src.name!r} as {src.fmt}: {detail[:300]}") from None


def available_label_sets(source: str | os.PathLike | bytes, filename: str | None = None, *, fmt: str | None = None) -> list[str]:
    """Label sets a file offers (first = default).

    npz: e.g. ``['rmd17', 'md17']`` for the shared MD17 files, ``['sgdml']`` (or
    the name its ``label_set`` entry records) for a plain sGDML dataset. ASE
    files: ``['calculator']`` when the first frame has calculator energy and
    forces. An empty list means view-only (unless keys are named explicitly).
    """
    src = _open_source(source, filename, fmt)
    if src.fmt == "npz":
        with _open_npz(src) as npz:
            _, _, _, sets = _npz_layout(npz, src.name)
            return _npz_available(npz, sets)
    first = _ase_read(src, 0)[0]
    res = _calc_results(first)
    return [CALCULATOR_LABELS] if "energy" in res and "forces" in res else []


def _looks_like_energy(name: str) -> bool:
    return "energ" in name.lower() or "E" in name or "U" in name


def _looks_like_forces(name: str) -> bool:
    low = name.lower()
    return "force" in low or "grad" in low or "F" in name


def suggest_label_keys(
    source: str | os.PathLike | bytes, filename: str | None = None, *, fmt: str | None = None
) -> dict[str, list[str]]:
    """Keys that look like energies or forces, for a "which column?" picker.

    Energies: one float per frame whose name contains ``energ``, ``E`` or ``U``
    (npz arrays of shape (M,) or (M, 1); ASE ``info`` entries; the calculator's
    ``energy``). Forces: (N, 3) float per frame whose name contains ``force``,
    ``grad`` or ``F`` (npz arrays (M, N, 3); ASE ``arrays``; the calculator's
    ``forces``). ASE files are judged by their first frame.

    Returns
    -------
    dict
        ``{'energy': [...], 'forces': [...]}``, calculator results first.
    """
    src = _open_source(source, filename, fmt)
    out: dict[str, list[str]] = {"energy": [], "forces": []}
    if src.fmt == "npz":
        with _open_npz(src) as npz:
            _, rkey, zkey, _ = _npz_layout(npz, src.name)
            m = _npz_get(npz, rkey, src.name).shape[0]
            n = _npz_get(npz, zkey, src.name).size
            for key in npz.files:
                if key in (rkey, zkey):
                    continue
                try:
                    arr = npz[key]
                except ValueError:  # pickled object: never a label
                    continue
                if arr.dtype.kind != "f":
                    continue
                if arr.shape in ((m,), (m, 1)) and _looks_like_energy(key):
                    out["energy"].append(key)
                elif arr.shape == (m, n, 3) and _looks_like_forces(key):
                    out["forces"].append(key)
        return out
    first = _ase_read(src, 0)[0]
    res = _calc_results(first)
    if "energy" in res:
        out["energy"].append("energy")
    if "forces" in res:
        out["forces"].append("forces")
    for key, val in first.info.items():
        if _real_scalar(val) and np.asarray(val).dtype.kind == "f" and _looks_like_energy(key):
            out["energy"].append(key)
    for key, val in first.arrays.items():
        if key in ("numbers", "positions", "momenta"):
            continue
        arr = np.asarray(val)
        if arr.shape == (len(first), 3) and arr.dtype.kind == "f" and _looks_like_forces(key):
            out["forces"].append(key)
    return out


# -- writers ------------------------------------------------------------------------
def _require_labels(traj: Trajectory, what: str) -> None:
    if not traj.has_labels:
        raise DataError(f"{what} needs energies and forces; {traj.name or 'this trajectory'!r} is view-only")


def to_atoms_list(traj: Trajectory) -> list:
    """One ``ase.Atoms`` per frame, in ASE units (Å, and eV, eV/Å in a SinglePointCalculator).

    Frames without labels get no calculator.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    ef = units.energy_factor(units.ENERGY_UNIT, "eV")
    ff = units.force_factor(units.ENERGY_UNIT, units.LENGTH_UNIT, "eV", "Å")
    images = []
    for i in range(traj.n_frames):
        at = Atoms(numbers=traj.z, positions=traj.R[i])
        if traj.name:
            at.info["name"] = traj.name
        results = {}
        if traj.E is not None:
            results["energy"] = float(traj.E[i] * ef)
        if traj.F is not None:
            results["forces"] = traj.F[i] * ff
        if results:
            at.calc = SinglePointCalculator(at, **results)
        images.append(at)
    return images


_ASCII_LENGTH = {"Å": "Ang", "bohr": "bohr"}


def write_extxyz(traj: Trajectory, path: str | os.PathLike, *, energy_unit: str = "eV", length_unit: str = "Å") -> Path:
    """Write an extended-XYZ file that :func:`ase.io.read` reads back exactly.

    ASE's convention: positions in Å, ``energy`` (comment line) in eV and a
    ``forces`` column in eV/Å, which ``ase.io.read`` turns into calculator
    results. Other units may be chosen; they are recorded as ``energy_unit`` and
    ``length_unit`` in every comment line (and :func:`load_trajectory` honours
    them). Numbers are written with 17 significant digits (ASE's own writer
    keeps 8 decimals), so a write/read round trip is exact to float precision.

    Parameters
    ----------
    traj : Trajectory
    path : path-like
    energy_unit, length_unit : str
        Units of the written energies/forces and positions.

    Returns
    -------
    Path
        The written file.
    """
    from ase.data import chemical_symbols
    from ase.io.extxyz import key_val_dict_to_str

    eu = units.canonical_energy_unit(energy_unit)
    lu = units.canonical_length_unit(length_unit)
    ef = units.energy_factor(units.ENERGY_UNIT, eu)
    lf = units.length_factor(units.LENGTH_UNIT, lu)
    ff = units.force_factor(units.ENERGY_UNIT, units.LENGTH_UNIT, eu, lu)
    R = traj.R * lf if lf != 1.0 else traj.R
    F = None if traj.F is None else (traj.F * ff if ff != 1.0 else traj.F)
    E = None if traj.E is None else (traj.E * ef if ef != 1.0 else traj.E)
    props = "species:S:1:pos:R:3" + (":forces:R:3" if F is not None else "")
    symbols = [chemical_symbols[int(z)] for z in traj.z]
    ncol = 3 if F is None else 6
    line_fmt = "%-2s" + " %24.16e" * ncol + "\n"
    path = Path(path)
    with open(path, "w", encoding="ascii") as fh:
        for i in range(traj.n_frames):
            info: dict[str, Any] = {}
            if E is not None:
                info["energy"] = float(E[i])  # repr: exact
            info["energy_unit"] = eu
            info["length_unit"] = _ASCII_LENGTH[lu]
            if traj.name:
                info["name"] = traj.name
            info["pbc"] = np.array([False, False, False])
            fh.write(f"{traj.n_atoms}\n")
            fh.write(f"Properties={props} {key_val_dict_to_str(info)}\n")
            block = R[i] if F is None else np.hstack([R[i], F[i]])
            for s, row in zip(symbols, block):
                fh.write(line_fmt % (s, *row))
    return path


def sgdml_dataset_md5(z: np.ndarray, R: np.ndarray, E: np.ndarray, F: np.ndarray) -> str:
    """Fingerprint of an sGDML dataset, as ``sgdml.utils.io.dataset_md5`` computes it.

    MD5 over the MD5 digests of the raw bytes of ``z``, ``R``, ``E``, ``F``
    (each raveled, in the dtypes stored in the file).
    """
    md5 = hashlib.md5()
    for arr in (z, R, E, F):
        md5.update(hashlib.md5(np.ascontiguousarray(arr).ravel()).digest())
    return md5.hexdigest()


def write_sgdml_npz(traj: Trajectory, path: str | os.PathLike) -> Path:
    """Write an sGDML dataset (``type='d'``) readable by the ``sgdml`` package.

    Keys: ``type``, ``name``, ``theory``, ``R`` (M, N, 3) Å, ``z`` (N,),
    ``E`` (M, 1) kcal/mol, ``F`` (M, N, 3) kcal/mol/Å, ``r_unit='Ang'``,
    ``e_unit='kcal/mol'``, ``md5`` (as sgdml computes it), ``label_set``,
    ``idx`` when the trajectory knows its original frame indices, ``source`` and
    ``settings_json`` (other provenance settings, e.g. simulation settings, as
    JSON; :func:`load_trajectory` restores them). No object
    arrays (the file loads with ``allow_pickle=False``). The path is used as
    given (no ``.npz`` is appended).

    Raises
    ------
    DataError
        When the trajectory has no energies or forces (sGDML needs both).
    """
    _require_labels(traj, "an sGDML dataset")
    prov = traj.provenance
    z = np.asarray(traj.z, dtype=np.int64)
    R = np.asarray(traj.R, dtype=np.float64)
    E = np.asarray(traj.E, dtype=np.float64).reshape(-1, 1)
    F = np.asarray(traj.F, dtype=np.float64)
    theory = prov.settings.get("theory") or prov.label_set or "unknown"
    arrays: dict[str, np.ndarray] = {
        "type": np.array("d"),
        "name": np.array(traj.name or "dataset"),
        "theory": np.array(str(theory)),
        "R": R,
        "z": z,
        "E": E,
        "F": F,
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
        # sgdml stores its md5 as bytes
        "md5": np.array(sgdml_dataset_md5(z, R, E, F).encode("ascii")),
    }
    if prov.label_set:
        arrays["label_set"] = np.array(prov.label_set)
    idx = prov.settings.get("idx")
    if idx is not None and len(idx) == traj.n_frames:
        arrays["idx"] = np.asarray(idx, dtype=np.int64)
    source = prov.settings.get("source")
    if not source and prov.source:
        source = prov.source + (f" (sha256 {prov.content_hash}, frames {prov.frames!r})" if prov.content_hash else "")
    if source:
        arrays["source"] = np.array(str(source))
    # the rest of the provenance settings (e.g. simulation settings) as one JSON string
    extra = {k: v for k, v in prov.settings.items() if k not in ("idx", "source", "theory", "format", "layout")}
    if extra:
        arrays["settings_json"] = np.array(json.dumps(extra, default=str))
    path = Path(path)
    with open(path, "wb") as fh:  # a file object: np.savez would append '.npz' to a bare name
        np.savez(fh, **arrays)
    return path


def write_ase(traj: Trajectory, path: str | os.PathLike, *, fmt: str = "traj") -> Path:
    """Write an ASE ``.traj`` or ``.db`` file (eV, Å; an existing file is replaced)."""
    import ase.io

    if fmt not in ("traj", "db"):
        raise UnsupportedFormatError(f"write_ase writes 'traj' or 'db', not {fmt!r}")
    path = Path(path)
    if fmt == "db" and path.exists():
        path.unlink()  # ase.io.write would append rows to an existing database
    ase.io.write(str(path), to_atoms_list(traj), format=fmt)
    return path


def write_trajectory(traj: Trajectory, path: str | os.PathLike, *, fmt: str | None = None) -> Path:
    """Write by extension: ``.npz`` → sGDML, ``.xyz``/``.extxyz`` → extended XYZ (eV, Å),
    ``.traj`` / ``.db`` → ASE.

    Returns
    -------
    Path
        The written file.
    """
    f = detect_format(path, fmt)
    if f == "npz":
        return write_sgdml_npz(traj, path)
    if f in ("extxyz", "xyz"):
        return write_extxyz(traj, path)
    return write_ase(traj, path, fmt=f)
