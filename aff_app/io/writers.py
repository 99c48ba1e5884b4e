"""Writing trajectories: sGDML ``.npz``, extended XYZ (eV, Å) and ASE formats, converted out of internal units."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from aff_app import units
from aff_app.io.trajectory import Trajectory
from aff_app.io.errors import DataError, UnsupportedFormatError
from aff_app.io.sources import detect_format


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
    return WRITERS[detect_format(path, fmt)](traj, path)


#: The writer of each format name, one line per format (see ``aff_app.io.files.READERS``).
WRITERS = {
    "npz": write_sgdml_npz,
    "extxyz": write_extxyz,
    "xyz": write_extxyz,  # extended XYZ: a plain XYZ would drop the labels
    "traj": lambda traj, path: write_ase(traj, path, fmt="traj"),
    "db": lambda traj, path: write_ase(traj, path, fmt="db"),
}
