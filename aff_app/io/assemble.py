"""Checks and assembly shared by the readers: non-finite frames, unit conversion, the Trajectory record."""

from __future__ import annotations

import dataclasses

import numpy as np

from aff_app import units
from aff_app.io.trajectory import Provenance, Trajectory, TrajectoryError
from aff_app.io.errors import DataError, NONFINITE_POLICIES, NonFiniteDataError


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


