"""Loading and writing trajectories: the edge where file units become internal units.

The entry points (:func:`load_trajectory`, :func:`write_trajectory`, the label-set
helpers) and the format registry (:data:`READERS`; ``aff_app.io.writers.WRITERS``).
The parts live beside this module: ``formats`` (names, extensions, label
layouts), ``errors``, ``frames`` (frame selection), ``sources`` (paths, uploads,
sniffing), ``npz`` and ``ase_formats`` (the readers), ``assemble`` (checks and
the Trajectory record), ``writers``. Everything public is importable from here.

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

import os

import numpy as np

from aff_app import units
from aff_app.io.trajectory import Trajectory
from aff_app.io.ase_formats import _ase_read, _calc_results, _load_ase, _real_scalar, from_atoms_list
from aff_app.io.assemble import describe_nonfinite
from aff_app.io.errors import (
    NONFINITE_POLICIES,
    CorruptFileError,
    DataError,
    DataFileNotFoundError,
    EmptyFileError,
    FrameSelectionError,
    LabelSetError,
    MissingKeyError,
    NonFiniteDataError,
    PickledDataError,
    UnexpectedReadError,
    UnsupportedFormatError,
    UploadTooLargeError,
    WrongFormatError,
)
from aff_app.io.formats import CALCULATOR_LABELS, FORMATS, MAX_UPLOAD_MB, SUPPORTED_EXTENSIONS
from aff_app.io.frames import parse_frames
from aff_app.io.npz import _load_npz, _npz_available, _npz_get, _npz_layout, _open_npz
from aff_app.io.sources import _check_content, _open_source, detect_format, sniff_format
from aff_app.io.writers import (
    sgdml_dataset_md5,
    to_atoms_list,
    write_ase,
    write_extxyz,
    write_sgdml_npz,
    write_trajectory,
)

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

#: The format registry, one line per format (as ASE's ``ioformats``): the reader of each name in
#: ``aff_app.io.formats.FORMATS``; the writers are ``aff_app.io.writers.WRITERS``.
READERS = {
    "npz": _load_npz,  # sGDML/MD17 and rMD17 layouts
    "extxyz": _load_ase,  # extended XYZ through ase.io (plain XYZ too: view-only)
    "xyz": _load_ase,
    "traj": _load_ase,  # ASE trajectory
    "db": _load_ase,  # ASE database
}


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
        return READERS[src.fmt](src, **kwargs)
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


