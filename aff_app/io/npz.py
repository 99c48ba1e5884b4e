"""Reading ``.npz`` datasets: the sGDML/MD17 layout (and ../shared/data/md17's label sets) and the rMD17 release layout."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from aff_app import units
from aff_app.io.trajectory import Provenance, Trajectory
from aff_app.io.assemble import _build
from aff_app.io.errors import (
    CorruptFileError,
    DataError,
    LabelSetError,
    MissingKeyError,
    PickledDataError,
    WrongFormatError,
)
from aff_app.io.formats import _RMD17_SETS, _SGDML_SHARED_SETS
from aff_app.io.frames import _frames_text, _select_indices, parse_frames
from aff_app.io.sources import _Source


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
            eu_source = "given" if energy_unit else ("file" if e_file else "default")
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
            frames=_frames_text(frames), settings=settings, energy_unit_source=eu_source,
        ),
        nonfinite=nonfinite,
    )


