"""The Trajectory dataclass: one molecule's MD frames, in internal units.

This is the exchange object of the library. Loaders (``aff_app.io.files``) build it,
the models consume ``z``, ``R``, ``E``, ``F``; nothing mutates it.

Units (see ``aff_app.units``): ``R`` in Å, ``E`` in kcal/mol, ``F`` in kcal/mol/Å.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aff_app.errors import AFFError
from aff_app.units import ENERGY_UNIT, FORCE_UNIT, LENGTH_UNIT


class TrajectoryError(AFFError, ValueError):
    """Arrays that do not form a valid trajectory (message carries the shapes)."""


@dataclass(frozen=True)
class Provenance:
    """Where a trajectory came from.

    Attributes
    ----------
    source : str
        File name (or ``'simulated:<molecule>'``) the data was read from.
    content_hash : str
        SHA-256 hex digest of the source file's bytes ('' when not from a file).
    energy_unit, length_unit : str
        Units of the *original* file, before conversion to internal units.
    energy_unit_source : str
        Where ``energy_unit`` came from: ``'given'`` (the caller named it),
        ``'file'`` (the file's metadata), ``'default'`` (assumed: the format's
        default), or ``''`` (not recorded).
    label_set : str
        Which labels were read (e.g. ``'rmd17'`` = ``E``/``F``, ``'md17'`` =
        ``E_md17``/``F_md17``, ``'calculator'``, or the user-named keys).
    frames : str
        The ASE-style slice used to select frames (``':'`` = all).
    settings : dict
        Generation settings for simulated data (calculator, temperature,
        time step, seed, ...), or other file metadata; empty when unknown.
    """

    source: str = ""
    content_hash: str = ""
    energy_unit: str = ENERGY_UNIT
    length_unit: str = LENGTH_UNIT
    energy_unit_source: str = ""
    label_set: str = ""
    frames: str = ":"
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trajectory:
    """M frames of one molecule with N atoms.

    Attributes
    ----------
    z : ndarray of int, shape (N,)
        Atomic numbers.
    R : ndarray of float, shape (M, N, 3)
        Positions in Å.
    E : ndarray of float, shape (M,), or None
        Potential energies in kcal/mol (None: view-only data).
    F : ndarray of float, shape (M, N, 3), or None
        Forces in kcal/mol/Å (None: view-only data).
    name : str
        Human-readable name (molecule or file stem).
    provenance : Provenance
    """

    z: np.ndarray
    R: np.ndarray
    E: np.ndarray | None = None
    F: np.ndarray | None = None
    name: str = ""
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        z = np.asarray(self.z)
        if z.ndim != 1 or z.size == 0:
            raise TrajectoryError(f"z must have shape (N,) with N >= 1, got {z.shape}")
        if not np.issubdtype(z.dtype, np.integer):
            if not np.all(np.equal(np.mod(z, 1), 0)):
                raise TrajectoryError("z must hold integer atomic numbers")
        z = z.astype(np.int64)
        if np.any(z < 1) or np.any(z > 118):
            raise TrajectoryError(f"atomic numbers must lie in 1..118, got range {z.min()}..{z.max()}")
        n = z.size
        R = np.asarray(self.R, dtype=np.float64)
        if R.ndim == 2 and R.shape == (n, 3):
            R = R[None]
        if R.ndim != 3 or R.shape[1:] != (n, 3) or R.shape[0] == 0:
            raise TrajectoryError(f"R must have shape (M, {n}, 3) with M >= 1, got {R.shape}")
        m = R.shape[0]
        E = self.E
        if E is not None:
            E = np.asarray(E, dtype=np.float64).reshape(-1) if np.size(E) == m else np.asarray(E, dtype=np.float64)
            if E.shape != (m,):
                raise TrajectoryError(f"E must have shape ({m},) (or ({m}, 1)), got {np.shape(self.E)}")
        F = self.F
        if F is not None:
            F = np.asarray(F, dtype=np.float64)
            if F.shape != (m, n, 3):
                raise TrajectoryError(f"F must have shape ({m}, {n}, 3), got {F.shape}")
        for arr in (z, R, E, F):
            if arr is not None:
                arr.setflags(write=False)
        object.__setattr__(self, "z", z)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "E", E)
        object.__setattr__(self, "F", F)

    # -- sizes -----------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        """M, the number of frames."""
        return int(self.R.shape[0])

    @property
    def n_atoms(self) -> int:
        """N, the number of atoms."""
        return int(self.z.size)

    @property
    def has_labels(self) -> bool:
        """True when both energies and forces are present (trainable)."""
        return self.E is not None and self.F is not None

    @property
    def formula(self) -> str:
        """Hill formula, e.g. ``'C4H4N2O2'``."""
        from ase import Atoms

        return Atoms(numbers=self.z).get_chemical_formula(mode="hill")

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the arrays (z, R, E, F) in internal units: the cache key and model provenance."""
        h = hashlib.sha256()
        for arr in (self.z, self.R, self.E, self.F):
            if arr is None:
                h.update(b"none")
            else:
                h.update(str(arr.shape).encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    # -- derived -----------------------------------------------------------------
    def subset(self, index) -> "Trajectory":
        """Frames selected by an integer array, boolean mask or slice (a new Trajectory)."""
        idx = np.arange(self.n_frames)[index]
        idx = np.atleast_1d(idx)
        return Trajectory(
            z=self.z,
            R=self.R[idx],
            E=None if self.E is None else self.E[idx],
            F=None if self.F is None else self.F[idx],
            name=self.name,
            provenance=self.provenance,
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary with units: formula, frames, atoms, energy range, largest |F|."""
        out: dict[str, Any] = {
            "name": self.name,
            "formula": self.formula,
            "n_frames": self.n_frames,
            "n_atoms": self.n_atoms,
            "units": {"energy": ENERGY_UNIT, "length": LENGTH_UNIT, "force": FORCE_UNIT},
            "original_units": {"energy": self.provenance.energy_unit, "length": self.provenance.length_unit},
            "has_energies": self.E is not None,
            "has_forces": self.F is not None,
            "label_set": self.provenance.label_set,
            "source": self.provenance.source,
            "content_hash": self.provenance.content_hash,
            "frames": self.provenance.frames,
        }
        if self.E is not None:
            out["energy_min"] = float(np.min(self.E))
            out["energy_max"] = float(np.max(self.E))
        if self.F is not None:
            out["max_abs_force"] = float(np.max(np.linalg.norm(self.F, axis=-1)))
        return out
