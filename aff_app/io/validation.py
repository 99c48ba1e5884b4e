"""Checks on a loaded trajectory, and numbers that are safe to show.

A file that cannot become a :class:`~aff_app.io.trajectory.Trajectory` at all is
refused by :func:`aff_app.io.files.load_trajectory` with a :class:`~aff_app.io.files.DataError`.
This module looks at trajectories that did load and says, in plain sentences,
what a user should know before training on them:

* :func:`validate_trajectory` gathers everything into a :class:`ValidationReport`
  (``errors``: training is impossible; ``warnings``: it is possible but something
  is off; ``notes``: facts worth showing).
* :func:`find_duplicate_frames` / :func:`drop_duplicate_frames`: frames with the
  same geometry make the kernel matrix singular (two equal rows).
* :func:`check_unit_consistency`: the energies and forces of one file must agree,
  E(b) − E(a) = −∫ F·dR, which over a short step is the trapezoid rule
  ΔE ≈ −½ (F_a + F_b)·ΔR. The fitted ratio ΔE / (−½ (F_a + F_b)·ΔR) over close
  pairs of frames is 1 for consistent labels, ≈ 1/23.06 for energies in eV and
  forces in kcal/mol/Å, and so on: the ratio names the likely unit mismatch.
* :func:`check_label_scale`: a common scale factor on energies *and* forces
  (a file in kcal/mol read as eV) passes the check above; it shows in the size
  of the labels. The RMS force and the temperature implied by the energy
  fluctuations (docs/method.md, "Plausible labels") are compared with what
  molecular dynamics produces, and the unit that would make them plausible is named.
* :func:`with_energy_unit`: the same file's labels read in another energy unit.
* :func:`format_value` shows NaN/inf as "—", never as a number.

Units are the library's internal ones (Å, kcal/mol, kcal/mol/Å).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aff_app import units
from aff_app.io.assemble import _drop_frames, _nonfinite_frames, describe_nonfinite
from aff_app.io.errors import DataError
from aff_app.io.trajectory import Trajectory

__all__ = [
    "MAX_ATOMS",
    "MIN_TRAINING_FRAMES",
    "DUPLICATE_TOL",
    "ValidationReport",
    "UnitCheck",
    "validate_trajectory",
    "find_duplicate_frames",
    "drop_duplicate_frames",
    "drop_nonfinite_frames",
    "check_unit_consistency",
    "ScaleCheck",
    "check_label_scale",
    "with_energy_unit",
    "check_model_limits",
    "format_value",
]

#: Largest molecule a model is trained on: N(N-1)/2 descriptor entries per frame
#: (19,900 at N = 200) and 3·M·N-sided GDML kernels make larger ones impractical here.
MAX_ATOMS = 200
#: Frames a fit needs at the very least (one frame gives a 1-frame kernel: no range can be estimated).
MIN_TRAINING_FRAMES = 2
#: Two frames whose interatomic distances all agree within this (Å) count as one geometry.
DUPLICATE_TOL = 1e-8

#: A ratio within this relative distance of 1 counts as consistent units.
UNIT_RATIO_TOLERANCE = 0.10
#: A ratio within this relative distance of a known unit factor names that mismatch.
UNIT_MATCH_TOLERANCE = 0.06
#: Pairs of frames farther apart than this RMS displacement (Å) are not used (trapezoid error ∝ ΔR³).
UNIT_MAX_RMS_STEP = 0.05
#: Fewest close pairs needed to judge the units.
UNIT_MIN_PAIRS = 5
#: Relative RMS residual of the fit above which the check is inconclusive.
UNIT_MAX_RESIDUAL = 0.5

#: RMS force component range (kcal/mol/Å) seen in molecular dynamics of molecules: MD17 at 500 K reads
#: 21–32 per component (36–55 for |F|), the bundled 300 K samples 18–22. Outside it, by far, the scale is suspect.
PLAUSIBLE_RMS_FORCE = (1.5, 200.0)
#: Temperature (K) implied by the potential-energy fluctuations (method.md, "Plausible labels"): MD17 ≈ 600,
#: the samples ≈ 300. Labels above the upper bound are far too spread; below the lower, far too flat.
PLAUSIBLE_TEMPERATURE = (20.0, 5000.0)
#: The centre a corrected scale is judged against when naming the likely unit.
TYPICAL_RMS_FORCE = 25.0


# ---------------------------------------------------------------------------
# display
# ---------------------------------------------------------------------------
def format_value(x: Any, unit: str = "", digits: int = 4) -> str:
    """Text for a number with its unit; ``'—'`` for NaN, ±inf, None or non-numbers.

    Parameters
    ----------
    x : float-like or None
    unit : str
        Appended after a space (``'1.2346 kcal/mol'``); omitted for ``'—'``.
    digits : int
        Significant digits (``'g'`` format).

    Examples
    --------
    >>> format_value(1.23456789, "kcal/mol", 3)
    '1.23 kcal/mol'
    >>> format_value(float("nan"), "kcal/mol")
    '—'
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    text = f"{v:.{max(1, int(digits))}g}"
    return f"{text} {unit}" if unit else text


# ---------------------------------------------------------------------------
# duplicates
# ---------------------------------------------------------------------------
def _pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def _distances(R: np.ndarray, iu) -> np.ndarray:
    """Interatomic distances, shape (..., N(N-1)/2); positions themselves when N < 2."""
    if iu[0].size == 0:
        return R.reshape(R.shape[:-2] + (-1,))
    d = R[..., iu[0], :] - R[..., iu[1], :]
    return np.sqrt(np.einsum("...k,...k->...", d, d))


def find_duplicate_frames(R, tol: float = DUPLICATE_TOL) -> list[list[int]]:
    """Groups of frames with the same geometry.

    Two frames are duplicates when every interatomic distance agrees within
    ``tol`` Å: the kernel depends on the inverse distances only, so such frames
    (also a rotated or translated copy) give identical kernel rows and a
    singular kernel matrix.

    Parameters
    ----------
    R : ndarray, shape (M, N, 3)
        Positions in Å.
    tol : float
        Largest difference of any interatomic distance, Å.

    Returns
    -------
    list of list of int
        Each group sorted, with at least 2 frames, groups ordered by their first
        frame; ``[]`` when all frames differ.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[-1] != 3:
        raise DataError(f"positions must have shape (M, N, 3), got {R.shape}")
    m, n = R.shape[:2]
    if m < 2:
        return []
    iu = _pair_index(n)
    p = iu[0].size if iu[0].size else 3 * n
    # sort frames by a random projection of their distances: equal geometries get keys within `bound`
    v = np.random.default_rng(0).uniform(0.5, 1.5, size=p)
    bound = float(tol) * float(v.sum()) * (1 + 1e-9) + 1e-12 * float(v.sum())
    chunk = max(1, int(2**23 // max(1, p)))  # ≤ 64 MB of distances at a time
    keys = np.empty(m)
    for s in range(0, m, chunk):
        keys[s : s + chunk] = _distances(R[s : s + chunk], iu) @ v
    order = np.argsort(keys, kind="stable")
    groups: dict[int, list[int]] = {}
    window: deque = deque()  # (key, frame, distances) of group representatives near the current key
    for j in order:
        kj = keys[j]
        while window and window[0][0] < kj - bound:
            window.popleft()
        dj = _distances(R[j], iu)
        for _, r, dr in window:
            if np.max(np.abs(dr - dj)) <= tol:
                groups[r].append(int(j))
                break
        else:
            window.append((kj, int(j), dj))
            groups[int(j)] = [int(j)]
    out = [sorted(g) for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: g[0])


def drop_duplicate_frames(traj: Trajectory, tol: float = DUPLICATE_TOL) -> tuple[Trajectory, int]:
    """Keep the first frame of each duplicate group.

    Returns
    -------
    (Trajectory, int)
        The trajectory without the later copies (``provenance.settings['dropped_frames']['duplicate']``
        lists their indices in ``traj``) and how many frames were dropped.
    """
    groups = find_duplicate_frames(traj.R, tol)
    drop = [i for g in groups for i in g[1:]]
    if not drop:
        return traj, 0
    return _drop_frames(traj, drop, "duplicate"), len(drop)


def drop_nonfinite_frames(traj: Trajectory) -> tuple[Trajectory, int]:
    """Drop frames with NaN/inf positions, energies or forces.

    Raises
    ------
    DataError
        When every frame is affected.
    """
    bad = _nonfinite_frames(traj.R, traj.E, traj.F)
    if bad.size == 0:
        return traj, 0
    if bad.size == traj.n_frames:
        raise DataError(f"every one of the {traj.n_frames} frames has NaN or infinite values: nothing left to keep")
    return _drop_frames(traj, bad, "nonfinite"), int(bad.size)


# ---------------------------------------------------------------------------
# energy / force unit consistency
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class UnitCheck:
    """Outcome of :func:`check_unit_consistency`.

    Attributes
    ----------
    ratio : float or None
        Least-squares ratio ΔE / (−½ (F_a + F_b)·ΔR) over the pairs (1 = consistent).
    n_pairs : int
        Pairs of close frames used.
    residual : float or None
        Relative RMS residual of that fit (small: the ratio is well determined).
    consistent : bool or None
        True: units agree; False: they do not; None: could not be judged.
    likely : str or None
        The unit mismatch the ratio points to, e.g. ``'energies in eV, forces in kcal/mol/Å'``.
    message : str
        One sentence for the user.
    """

    ratio: float | None
    n_pairs: int
    residual: float | None
    consistent: bool | None
    likely: str | None
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _unit_explanations() -> list[tuple[float, int, str]]:
    """(ratio, number of mismatches, description) for every pair of energy and length units.

    The measured ratio is ρ = [force's energy unit]/[energy's unit] · [position unit]/[force's length unit]
    (derivation: a number e in unit U_e read as unit C gives E·C/U_e, likewise for F and R; C cancels).
    """
    out = []
    lengths = [("Å", "Å"), ("Å", "bohr"), ("bohr", "Å")]
    for ue in units.ENERGY_UNITS:
        for ufe in units.ENERGY_UNITS:
            for url, ufl in lengths:
                rho = units.energy_factor(ufe, ue) * units.length_factor(url, ufl)
                n_mis = int(ue != ufe) + int(url != ufl)
                if n_mis == 0:
                    continue
                if ue == ufe:  # lengths only: the energy unit cannot be told
                    text = f"forces per {ufl} but positions in {url}"
                elif url == ufl:
                    text = f"energies in {ue}, forces in {ufe}/{ufl}"
                else:
                    text = f"energies in {ue}, forces in {ufe}/{ufl}, positions in {url}"
                out.append((rho, n_mis, text))
    return list({t[2]: t for t in out}.values())


def _close_pairs(R: np.ndarray, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of nearby frames: consecutive frames first, nearest neighbours if those are far apart."""
    m = R.shape[0]
    flat = R.reshape(m, -1)
    rms = np.sqrt(np.mean((flat[1:] - flat[:-1]) ** 2, axis=1))
    a = np.arange(m - 1)
    ok = rms <= UNIT_MAX_RMS_STEP
    pa, pb, pr = a[ok], a[ok] + 1, rms[ok]
    if pa.size < UNIT_MIN_PAIRS and m > 2:
        # shuffled frames: look for nearest neighbours among up to 1000 frames
        sub = np.arange(m) if m <= 1000 else np.sort(np.random.default_rng(0).choice(m, 1000, replace=False))
        X = flat[sub]
        sq = np.sum(X * X, axis=1)
        d2 = np.maximum(sq[:, None] + sq[None] - 2 * X @ X.T, 0.0) / X.shape[1]
        np.fill_diagonal(d2, np.inf)
        nn = np.argmin(d2, axis=1)
        dn = np.sqrt(d2[np.arange(sub.size), nn])
        keep = dn <= UNIT_MAX_RMS_STEP
        i, j = sub[keep], sub[nn[keep]]
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        pairs = np.unique(np.stack([lo, hi], 1), axis=0) if lo.size else np.zeros((0, 2), np.int64)
        pa, pb = pairs[:, 0], pairs[:, 1]
        pr = np.sqrt(np.mean((flat[pb] - flat[pa]) ** 2, axis=1))
    order = np.argsort(pr, kind="stable")[:max_pairs]
    return pa[order], pb[order]


def check_unit_consistency(traj: Trajectory, *, max_pairs: int = 200) -> UnitCheck:
    """Do the energies and forces of ``traj`` agree? ΔE against −½ (F_a + F_b)·ΔR over close frames.

    Pairs are consecutive frames (or nearest neighbours, for shuffled data) at
    most :data:`UNIT_MAX_RMS_STEP` Å RMS apart, the ``max_pairs`` closest ones.
    The ratio ρ = Σ ΔE·W / Σ W², W = −½ (F_a + F_b)·ΔR (trapezoid rule for the
    work integral) is 1 when the units agree; otherwise it is compared with the
    ratio of every pair of supported units (eV, kcal/mol, kJ/mol, Hartree; Å,
    bohr) and the closest one is named. ρ ≈ −1 means the "forces" are gradients.

    Parameters
    ----------
    traj : Trajectory
        With energies and forces (internal units).
    max_pairs : int
        Most pairs used.

    Returns
    -------
    UnitCheck
        ``consistent`` is None (with the reason in ``message``) for view-only
        data, too few close pairs, or a fit too poor to judge.
    """
    if traj.E is None or traj.F is None:
        return UnitCheck(None, 0, None, None, None, "unit check skipped: the data has no energies and forces")
    good = np.setdiff1d(np.arange(traj.n_frames), _nonfinite_frames(traj.R, traj.E, traj.F))
    R, E, F = traj.R[good], traj.E[good], traj.F[good]
    if R.shape[0] < 2:
        return UnitCheck(None, 0, None, None, None, "unit check skipped: fewer than 2 frames")
    a, b = _close_pairs(R, max_pairs)
    if a.size < UNIT_MIN_PAIRS:
        return UnitCheck(None, int(a.size), None, None, None,
                         f"unit check skipped: only {a.size} pairs of frames are within {UNIT_MAX_RMS_STEP} Å "
                         f"RMS of each other (need {UNIT_MIN_PAIRS}; MD frames a few fs apart work)")
    dE = E[b] - E[a]
    W = -0.5 * np.einsum("pij,pij->p", F[a] + F[b], R[b] - R[a])
    ww = float(W @ W)
    if not ww > 0 or not np.any(dE != 0):
        return UnitCheck(None, int(a.size), None, None, None,
                         "unit check skipped: energies or forces do not change between close frames")
    rho = float(dE @ W) / ww
    res = dE - rho * W
    residual = float(np.sqrt(np.mean(res**2)) / max(np.sqrt(np.mean(dE**2)), 1e-300))
    n = int(a.size)
    if not np.isfinite(rho) or residual > UNIT_MAX_RESIDUAL:
        return UnitCheck(rho if np.isfinite(rho) else None, n, residual, None, None,
                         f"unit check inconclusive: ΔE and −F·ΔR over {n} close frame pairs do not follow "
                         f"one ratio (relative residual {residual:.2f}); the labels may be noisy or the frames "
                         "not from one continuous trajectory")
    fit = f"ΔE ≈ {rho:.4g} × (−F·ΔR) over {n} pairs of close frames"
    if abs(rho - 1.0) <= UNIT_RATIO_TOLERANCE:
        return UnitCheck(rho, n, residual, True, None, f"energies and forces agree: {fit} (expected 1)")
    if abs(rho + 1.0) <= UNIT_RATIO_TOLERANCE:
        return UnitCheck(rho, n, residual, False, "forces are gradients (sign flipped)",
                         f"energies and forces disagree in sign: {fit}; the 'forces' look like energy "
                         "gradients dE/dR: use F = −dE/dR (negate them) before training")
    sign = "" if rho > 0 else " (and the sign is flipped: gradients instead of forces?)"
    best = min(_unit_explanations(), key=lambda t: (abs(math.log(abs(rho)) - math.log(t[0])), t[1]))
    if abs(math.log(abs(rho)) - math.log(best[0])) <= math.log1p(UNIT_MATCH_TOLERANCE):
        return UnitCheck(rho, n, residual, False, best[2],
                         f"energies and forces disagree: {fit} (expected 1); {best[0]:.4g} is the ratio expected "
                         f"with {best[2]}{sign}. Convert one of them so both use one unit before training")
    return UnitCheck(rho, n, residual, False, None,
                     f"energies and forces disagree: {fit} (expected 1), not the ratio of any two supported "
                     f"units{sign}; check which quantities the file's labels hold")


# ---------------------------------------------------------------------------
# plausible label scale
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ScaleCheck:
    """Outcome of :func:`check_label_scale`.

    Attributes
    ----------
    rms_force : float or None
        RMS force component, kcal/mol/Å (None without forces).
    max_force : float or None
        Largest |F| of any atom, kcal/mol/Å.
    temperature : float or None
        Temperature (K) whose equipartition fluctuations match the potential
        energy's standard deviation (None without energies or with one frame).
    plausible : bool or None
        False when either number is far outside molecular dynamics; None when
        there is nothing to judge.
    likely_unit : str or None
        The energy unit that would make the labels plausible, when one does.
    message : str
    """

    rms_force: float | None
    max_force: float | None
    temperature: float | None
    plausible: bool | None
    likely_unit: str | None
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _implied_temperature(E: np.ndarray, n_atoms: int) -> float | None:
    """T with std(E) = k_B T √(f/2), f = max(3N − 6, 1) harmonic modes (method.md, "Plausible labels")."""
    if E is None or E.size < 2:
        return None
    modes = max(3 * n_atoms - 6, 1)
    kb = units.BOLTZMANN  # kcal/mol/K
    return float(np.std(E) / (kb * math.sqrt(modes / 2.0)))


def _in(x: float | None, bounds: tuple[float, float]) -> bool:
    return x is None or bounds[0] <= x <= bounds[1]


def check_label_scale(traj: Trajectory) -> ScaleCheck:
    """Are the energies and forces of plausible size for molecular dynamics?

    A file whose energies and forces are both in kcal/mol but read as eV passes
    :func:`check_unit_consistency` (the ratio ΔE / (−F·ΔR) is still 1), yet its
    forces are 23× too large and its energies fluctuate as a trajectory at
    thousands of kelvin would. This check reports the RMS force component and
    the temperature implied by the energy spread, flags either one far outside
    :data:`PLAUSIBLE_RMS_FORCE` / :data:`PLAUSIBLE_TEMPERATURE`, and names the
    supported energy unit that would bring both inside (closest to
    :data:`TYPICAL_RMS_FORCE`). Data that is not MD (a relaxation, a scan) can
    be flagged although right: the message says what was measured.

    Parameters
    ----------
    traj : Trajectory
        Internal units.

    Returns
    -------
    ScaleCheck
    """
    good = np.setdiff1d(np.arange(traj.n_frames), _nonfinite_frames(traj.R, traj.E, traj.F))
    E = None if traj.E is None else traj.E[good]
    F = None if traj.F is None else traj.F[good]
    if (E is None and F is None) or good.size == 0:
        return ScaleCheck(None, None, None, None, None, "label scale not checked: the data has no labels")
    rms = None if F is None else float(np.sqrt(np.mean(F**2)))
    fmax = None if F is None else float(np.max(np.linalg.norm(F, axis=-1)))
    temp = _implied_temperature(E, traj.n_atoms)
    if temp is not None and temp == 0.0:
        temp = None  # constant energies (one geometry repeated, or energies not really given): nothing to judge
    measured = "; ".join(
        t for t in (
            None if rms is None else f"RMS force component {rms:.3g} kcal/mol/Å (largest |F| {fmax:,.4g})",
            None if temp is None else f"energy spread of a {temp:,.0f} K trajectory",
        ) if t
    )
    if rms is None and temp is None:
        return ScaleCheck(rms, fmax, temp, None, None, "label scale not checked: one frame and no forces")
    if _in(rms, PLAUSIBLE_RMS_FORCE) and _in(temp, PLAUSIBLE_TEMPERATURE):
        return ScaleCheck(rms, fmax, temp, True, None, f"label scale plausible for molecular dynamics: {measured}")
    read_as = traj.provenance.energy_unit
    source = traj.provenance.energy_unit_source
    how = {"default": f"the file names no energy unit, so {read_as} was assumed",
           "file": f"the file says its energies are in {read_as}",
           "given": f"the energies were read as {read_as}, as asked"}.get(source, f"the energies were read as {read_as}")
    size = "large" if not (_in(rms, (0, PLAUSIBLE_RMS_FORCE[1])) and _in(temp, (0, PLAUSIBLE_TEMPERATURE[1]))) else "small"
    text = (f"labels implausibly {size} for molecular dynamics: {measured} (MD of molecules: RMS force component "
            f"{PLAUSIBLE_RMS_FORCE[0]:g}–{PLAUSIBLE_RMS_FORCE[1]:g} kcal/mol/Å, a few hundred K); {how}")
    best = None
    for unit in units.ENERGY_UNITS:
        if unit == read_as:
            continue
        c = units.energy_factor(unit) / units.energy_factor(read_as)  # internal value per internal value as read
        r2 = None if rms is None else rms * c
        t2 = None if temp is None else temp * c
        if _in(r2, PLAUSIBLE_RMS_FORCE) and _in(t2, PLAUSIBLE_TEMPERATURE):
            score = abs(math.log(r2 / TYPICAL_RMS_FORCE)) if r2 is not None else abs(math.log(t2 / 400.0))
            if best is None or score < best[0]:
                best = (score, unit, r2, t2)
    if best is None:
        return ScaleCheck(rms, fmax, temp, False, None,
                          f"{text}. No supported energy unit makes them plausible: check what the file's labels hold")
    _, unit, r2, t2 = best
    then = ", ".join(t for t in (None if r2 is None else f"RMS force component {r2:.3g} kcal/mol/Å",
                                 None if t2 is None else f"{t2:,.0f} K") if t)
    return ScaleCheck(rms, fmax, temp, False, unit,
                      f"{text}. Read in {unit} they would be {then}: if the file is in {unit}, load it with "
                      f"energy unit {unit} (CLI --energy-unit '{unit}')")


def with_energy_unit(traj: Trajectory, energy_unit: str) -> Trajectory:
    """``traj`` as if its file had been read with energies in ``energy_unit`` (forces per the same length).

    The file's numbers were multiplied by ``energy_factor(provenance.energy_unit)``
    at load; this replaces that factor by ``energy_factor(energy_unit)``.
    Positions are untouched. Used by the app's "read the labels as ..." fix.
    """
    unit = units.canonical_energy_unit(energy_unit)
    c = units.energy_factor(unit) / units.energy_factor(traj.provenance.energy_unit)
    prov = dataclasses.replace(traj.provenance, energy_unit=unit, energy_unit_source="given")
    return dataclasses.replace(
        traj,
        E=None if traj.E is None else traj.E * c,
        F=None if traj.F is None else traj.F * c,
        provenance=prov,
    )


# ---------------------------------------------------------------------------
# limits and the report
# ---------------------------------------------------------------------------
def check_model_limits(traj: Trajectory, *, max_atoms: int = MAX_ATOMS) -> list[str]:
    """Reasons the trajectory's molecule cannot be modelled (empty list: it can).

    Too many atoms (above ``max_atoms``) or a single atom (no interatomic
    distances, so no descriptor).
    """
    out = []
    n = traj.n_atoms
    if n > max_atoms:
        out.append(
            f"{traj.formula} has N = {n} atoms, above the {max_atoms} a model here handles "
            f"(descriptor of N(N−1)/2 = {n * (n - 1) // 2} distances per frame, GDML kernel side 3·M·N); "
            "the data can be viewed but not trained on"
        )
    if n < 2:
        out.append(f"{traj.formula} has a single atom: no interatomic distances, nothing to model")
    return out


@dataclass
class ValidationReport:
    """What a user should know about a loaded trajectory before training.

    Attributes
    ----------
    errors : list of str
        Each one makes training impossible (the data can still be viewed).
    warnings : list of str
        Training is possible but the result may be poor or fail (duplicates,
        unit mismatch).
    notes : list of str
        Facts worth showing (e.g. the unit check passed).
    duplicate_groups : list of list of int
        From :func:`find_duplicate_frames`.
    nonfinite_frames : list of int
        Frames with NaN/inf values.
    unit_check : UnitCheck or None
    scale_check : ScaleCheck or None
    n_frames, n_atoms : int
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)
    nonfinite_frames: list[int] = field(default_factory=list)
    unit_check: UnitCheck | None = None
    scale_check: ScaleCheck | None = None
    n_frames: int = 0
    n_atoms: int = 0

    @property
    def trainable(self) -> bool:
        """True when no error blocks training."""
        return not self.errors

    @property
    def n_duplicates(self) -> int:
        """Frames :func:`drop_duplicate_frames` would drop."""
        return sum(len(g) - 1 for g in self.duplicate_groups)

    def messages(self) -> list[tuple[str, str]]:
        """``[(level, text), ...]`` with level 'error', 'warning' or 'note', in that order."""
        return ([("error", m) for m in self.errors] + [("warning", m) for m in self.warnings]
                + [("note", m) for m in self.notes])

    def to_dict(self) -> dict:
        """JSON-ready (the CLI's ``validation`` entry)."""
        return {
            "trainable": self.trainable,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "n_duplicates": self.n_duplicates,
            "duplicate_groups": [list(g) for g in self.duplicate_groups[:20]],
            "nonfinite_frames": list(self.nonfinite_frames[:100]),
            "unit_check": None if self.unit_check is None else self.unit_check.to_dict(),
            "scale_check": None if self.scale_check is None else self.scale_check.to_dict(),
        }


def validate_trajectory(
    traj: Trajectory,
    *,
    max_atoms: int = MAX_ATOMS,
    duplicate_tol: float = DUPLICATE_TOL,
    check_units: bool = True,
) -> ValidationReport:
    """Check a loaded trajectory for everything that would spoil a fit.

    Errors (training impossible): no energies or forces (view-only), fewer
    than :data:`MIN_TRAINING_FRAMES` frames, NaN/inf values, too many atoms or a
    single atom. Warnings: duplicate frames (singular kernel; offer
    :func:`drop_duplicate_frames`), energies and forces in disagreeing units,
    labels of implausible size (:func:`check_label_scale`).
    Notes: frames dropped at load time, the unit check's verdict.

    Parameters
    ----------
    traj : Trajectory
    max_atoms : int
        Largest N a model is trained on.
    duplicate_tol : float
        Å, see :func:`find_duplicate_frames`.
    check_units : bool
        Run :func:`check_unit_consistency` (cheap: at most 200 pairs, or a
        1000×1000 distance matrix for shuffled frames).

    Returns
    -------
    ValidationReport
    """
    rep = ValidationReport(n_frames=traj.n_frames, n_atoms=traj.n_atoms)
    name = traj.name or traj.provenance.source or "the data"
    if not traj.has_labels:
        missing = [w for w, a in (("energies", traj.E), ("forces", traj.F)) if a is None]
        rep.errors.append(
            f"{name!r} has no {' and no '.join(missing)}: it loads for viewing only. To train, load a file with "
            "both labels (or name the keys that hold them: energy/forces key options)"
        )
    if traj.n_frames < MIN_TRAINING_FRAMES:
        rep.errors.append(
            f"{name!r} has {traj.n_frames} frame; training needs at least {MIN_TRAINING_FRAMES} "
            "(and a useful model hundreds): load more frames"
        )
    rep.errors.extend(check_model_limits(traj, max_atoms=max_atoms))
    bad = _nonfinite_frames(traj.R, traj.E, traj.F)
    if bad.size:
        rep.nonfinite_frames = bad.tolist()
        rep.errors.append(
            f"{name!r} has {describe_nonfinite(traj.z, traj.R, traj.E, traj.F)}; drop those frames "
            "(drop_nonfinite_frames, CLI --drop-nonfinite) before training"
        )
    rep.duplicate_groups = find_duplicate_frames(traj.R, duplicate_tol)
    if rep.duplicate_groups:
        g = rep.duplicate_groups[0]
        rep.warnings.append(
            f"{rep.n_duplicates} duplicate frame(s) in {len(rep.duplicate_groups)} group(s) (same geometry within "
            f"{duplicate_tol:g} Å; first: frames {', '.join(map(str, g[:5]))}{' ...' if len(g) > 5 else ''}): they "
            "make the kernel matrix singular. Drop them (drop_duplicate_frames, CLI --drop-duplicates) to keep "
            "one frame of each group"
        )
    dropped = traj.provenance.settings.get("dropped_frames") or {}
    for reason, idx in dropped.items():
        rep.notes.append(f"{len(idx)} frame(s) were dropped at load time ({reason})")
    if check_units and traj.has_labels:
        rep.unit_check = check_unit_consistency(traj)
        if rep.unit_check.consistent is False:
            rep.warnings.append(rep.unit_check.message)
        else:
            rep.notes.append(rep.unit_check.message)
    if check_units and (traj.E is not None or traj.F is not None):
        rep.scale_check = check_label_scale(traj)
        if rep.scale_check.plausible is False:
            rep.warnings.append(rep.scale_check.message)
        elif rep.scale_check.plausible:
            rep.notes.append(rep.scale_check.message)
    return rep
