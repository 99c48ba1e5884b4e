"""Accuracy and uncertainty metrics of method.md "What the paper reports".

On held-out configurations:

* MAE and RMSE of energies (kcal/mol) and of force components (kcal/mol/Å);
* PCI = share of held-out force components inside their interval (the paper
  reports PCI(95%));
* LCI = mean interval length (kcal/mol/Å), and L_norm = LCI / (max F − min F)
  over the held-out forces (the paper's Fig. 5 "interval length relative to the
  force range");
* Δp = level − PCI, the coverage gap of Fig. 5 (positive: under-coverage);
* coverage at any nominal level from means and standard deviations
  (calibration curves).

Every function takes plain arrays (any shape, compared element by element) and
returns Python floats or lists, so that reports are JSON-ready. Inputs are
checked once; a shape mismatch, an empty array or a NaN raises
:class:`MetricError` naming the arrays and their shapes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.special import ndtri  # Φ⁻¹; scipy.stats costs ~0.45 s to import

from aff_app.errors import AFFError

ENERGY_UNIT = "kcal/mol"
FORCE_UNIT = "kcal/mol/Å"


class MetricError(AFFError, ValueError):
    """Arrays a metric cannot be computed from (shapes, emptiness, NaN)."""


def finite_or_none(x) -> float | None:
    """``float(x)`` when it is a finite number; None for None, NaN, ±inf or anything not a number (JSON, tables)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _arrays(**named) -> list[np.ndarray]:
    """Same-shape, non-empty, finite float arrays (the names go into the error)."""
    out = [np.asarray(v, dtype=np.float64) for v in named.values()]
    shapes = {k: np.shape(v) for k, v in zip(named, out)}
    if len(set(shapes.values())) != 1:
        raise MetricError(f"arrays must have the same shape, got {shapes}")
    if out[0].size == 0:
        raise MetricError(f"arrays are empty: {shapes}")
    for k, v in zip(named, out):
        if not np.all(np.isfinite(v)):
            raise MetricError(f"{k} contains {int(np.sum(~np.isfinite(v)))} NaN or infinite values")
    return out


def _level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise MetricError(f"level must lie in (0, 1), got {level}")
    return float(level)


def mae(y, y_pred) -> float:
    """Mean absolute error over all elements (units of y)."""
    y, p = _arrays(y=y, y_pred=y_pred)
    return float(np.mean(np.abs(p - y)))


def rmse(y, y_pred) -> float:
    """Root mean squared error over all elements (units of y)."""
    y, p = _arrays(y=y, y_pred=y_pred)
    return float(np.sqrt(np.mean((p - y) ** 2)))


def pci(y, lo, hi) -> float:
    """Share of the values ``y`` inside their interval [lo, hi] (ends included)."""
    y, lo, hi = _arrays(y=y, lo=lo, hi=hi)
    if np.any(hi < lo):
        raise MetricError(f"{int(np.sum(hi < lo))} intervals have hi < lo")
    return float(np.mean((y >= lo) & (y <= hi)))


def lci(lo, hi) -> float:
    """Mean interval length, mean(hi − lo) (units of the intervals)."""
    lo, hi = _arrays(lo=lo, hi=hi)
    if np.any(hi < lo):
        raise MetricError(f"{int(np.sum(hi < lo))} intervals have hi < lo")
    return float(np.mean(hi - lo))


def l_norm(lo, hi, y) -> float:
    """LCI relative to the range of the held-out values: lci / (max y − min y)."""
    y = _arrays(y=y)[0]
    span = float(np.max(y) - np.min(y))
    if span <= 0:
        raise MetricError("the held-out values have zero range: L_norm is undefined")
    return lci(lo, hi) / span


def delta_p(y, lo, hi, *, level: float = 0.95) -> float:
    """Coverage gap Δp = level − PCI (positive when intervals cover too little)."""
    return _level(level) - pci(y, lo, hi)


def coverage(y, mean, std, levels: Sequence[float] | float) -> np.ndarray | float:
    """Empirical coverage of central Gaussian intervals mean ± z(level)·std.

    Parameters
    ----------
    y, mean, std : arrays of one shape
    levels : float or sequence of floats in (0, 1)

    Returns
    -------
    float, or ndarray of shape (len(levels),): the share of ``y`` with
    |y − mean| ≤ z·std, z = Φ⁻¹(½ + level/2).
    """
    y, mean, std = _arrays(y=y, mean=mean, std=std)
    if np.any(std < 0):
        raise MetricError("std has negative entries")
    scalar = np.ndim(levels) == 0
    lv = np.atleast_1d(np.asarray(levels, dtype=np.float64))
    for v in lv:
        _level(v)
    zq = ndtri(0.5 + lv / 2.0)
    r = np.abs(y - mean).reshape(-1)
    s = std.reshape(-1)
    cov = np.mean(r[None, :] <= zq[:, None] * s[None, :], axis=1)
    return float(cov[0]) if scalar else cov


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)] if 0 <= int(z) < len(chemical_symbols) else f"Z{int(z)}"


def breakdown(F_true, F_pred, z, pe_sets, lo=None, hi=None) -> list[dict]:
    """Force errors per atom, per element and per PE set.

    Parameters
    ----------
    F_true, F_pred : (B, N, 3) kcal/mol/Å
    z : (N,) atomic numbers
    pe_sets : list of int arrays (the sets' atoms)
    lo, hi : (B, N, 3), optional
        Interval ends; when given each row also has ``pci`` and ``lci``.

    Returns
    -------
    list of dict
        One row per atom, then per element, then per PE set, each with
        ``group`` ('atom', 'element' or 'pe_set'), ``label``, ``atoms``
        (indices), ``n_components``, ``mae``, ``rmse`` (kcal/mol/Å) and, with
        intervals, ``pci`` and ``lci``.
    """
    F_true, F_pred = _arrays(F_true=F_true, F_pred=F_pred)
    if F_true.ndim == 2:
        F_true, F_pred = F_true[None], F_pred[None]
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    if F_true.ndim != 3 or F_true.shape[1:] != (z.size, 3):
        raise MetricError(f"forces must have shape (B, {z.size}, 3) to match z, got {F_true.shape}")
    with_iv = lo is not None or hi is not None
    if with_iv:
        if lo is None or hi is None:
            raise MetricError("give both lo and hi, or neither")
        lo, hi = _arrays(lo=lo, hi=hi)
        if lo.size != F_true.size:
            raise MetricError(f"intervals {lo.shape} must have the forces' shape {F_true.shape}")
        lo, hi = lo.reshape(F_true.shape), hi.reshape(F_true.shape)
    sets = [np.asarray(s, dtype=np.int64).reshape(-1) for s in pe_sets]
    if sorted(np.concatenate(sets).tolist()) != list(range(z.size)):
        raise MetricError(f"PE sets must partition the {z.size} atoms exactly once each")

    def row(group: str, label: str, atoms: np.ndarray) -> dict:
        t, p = F_true[:, atoms], F_pred[:, atoms]
        r = {"group": group, "label": label, "atoms": [int(a) for a in atoms], "n_components": int(t.size),
             "mae": mae(t, p), "rmse": rmse(t, p)}
        if with_iv:
            r["pci"] = pci(t, lo[:, atoms], hi[:, atoms])
            r["lci"] = lci(lo[:, atoms], hi[:, atoms])
        return r

    rows = [row("atom", f"{_symbol(z[i])}{i}", np.array([i])) for i in range(z.size)]
    for e in sorted(set(z.tolist())):
        rows.append(row("element", _symbol(e), np.flatnonzero(z == e)))
    for k, s in enumerate(sets):
        rows.append(row("pe_set", f"set {k}: " + " ".join(f"{_symbol(z[a])}{a}" for a in s), s))
    return rows


def force_report(F_true, pred, *, level: float = 0.95, kind: str = "latent", z=None, pe_sets=None) -> dict:
    """Held-out force metrics as a JSON-ready dict (method.md, paper's Table I and Fig. 5).

    Parameters
    ----------
    F_true : (B, N, 3) kcal/mol/Å reference forces
    pred : ForcePrediction (mean, std and ``interval(level, kind=...)``)
    level : nominal interval level (0.95 → the paper's PCI(95%), LCI(95%))
    kind : 'latent' (interval on the force itself) or 'observation' (adds the
        nugget variance of a new noisy label)
    z, pe_sets : optional; when both given the dict has a ``breakdown`` list.

    Returns
    -------
    dict with ``n_frames``, ``n_components``, ``mae``, ``rmse``, ``level``,
    ``kind``, ``pci``, ``lci``, ``l_norm``, ``delta_p`` and ``units``.
    """
    level = _level(level)
    F_true = np.asarray(F_true, dtype=np.float64)
    mean = np.asarray(pred.mean, dtype=np.float64)
    if F_true.shape != mean.shape:
        raise MetricError(f"reference forces {F_true.shape} and predictions {mean.shape} differ in shape")
    lo, hi = pred.interval(level, kind=kind)
    out = {
        "n_frames": int(F_true.shape[0]) if F_true.ndim == 3 else 1,
        "n_components": int(F_true.size),
        "mae": mae(F_true, mean),
        "rmse": rmse(F_true, mean),
        "level": level,
        "kind": kind,
        "pci": pci(F_true, lo, hi),
        "lci": lci(lo, hi),
        "l_norm": l_norm(lo, hi, F_true),
        "delta_p": delta_p(F_true, lo, hi, level=level),
        "units": {"mae": FORCE_UNIT, "rmse": FORCE_UNIT, "lci": FORCE_UNIT, "pci": "fraction",
                  "l_norm": "fraction", "delta_p": "fraction"},
    }
    if z is not None and pe_sets is not None:
        out["breakdown"] = breakdown(F_true, mean, z, pe_sets, lo=lo, hi=hi)
    return out


def energy_report(E_true, pred, *, level: float = 0.95) -> dict:
    """Held-out energy metrics as a JSON-ready dict.

    Parameters
    ----------
    E_true : (B,) kcal/mol
    pred : EnergyPrediction (``mean``, ``std``, ``interval(level)``); a NaN
        std (no interval) drops the interval entries.

    Returns
    -------
    dict with ``n_frames``, ``mae``, ``rmse``, ``max_abs_error``,
    ``level``, ``pci``, ``lci`` (when intervals exist) and ``units``.
    """
    level = _level(level)
    E_true = np.asarray(E_true, dtype=np.float64).reshape(-1)
    mean = np.asarray(pred.mean, dtype=np.float64).reshape(-1)
    if E_true.shape != mean.shape:
        raise MetricError(f"reference energies {E_true.shape} and predictions {mean.shape} differ in shape")
    y, p = _arrays(E_true=E_true, mean=mean)
    out = {
        "n_frames": int(y.size),
        "mae": mae(y, p),
        "rmse": rmse(y, p),
        "max_abs_error": float(np.max(np.abs(p - y))),
        "units": {"mae": ENERGY_UNIT, "rmse": ENERGY_UNIT, "max_abs_error": ENERGY_UNIT},
    }
    std = np.asarray(pred.std, dtype=np.float64).reshape(-1)
    if std.shape == y.shape and np.all(np.isfinite(std)):
        lo, hi = pred.interval(level)
        out.update({"level": level, "pci": pci(y, lo, hi), "lci": lci(lo, hi),
                    "delta_p": delta_p(y, lo, hi, level=level)})
        out["units"].update({"lci": ENERGY_UNIT, "pci": "fraction", "delta_p": "fraction"})
    return out
