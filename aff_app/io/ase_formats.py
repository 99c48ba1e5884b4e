"""Reading extended XYZ, XYZ, ASE trajectory and database files through ``ase.io``."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from aff_app import units
from aff_app.io.trajectory import Provenance, Trajectory
from aff_app.io.assemble import _build
from aff_app.io.errors import (
    CorruptFileError,
    DataError,
    FrameSelectionError,
    LabelSetError,
    MissingKeyError,
    WrongFormatError,
)
from aff_app.io.formats import CALCULATOR_LABELS
from aff_app.io.frames import _frames_text, parse_frames
from aff_app.io.sources import _Source


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
        eu_source = "given" if energy_unit else ("file" if info0.get("energy_unit") else "default")
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
        provenance=dataclasses.replace(prov, label_set=label, energy_unit_source=eu_source),
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


