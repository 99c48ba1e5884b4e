"""Is a force field conservative? Three measurements for any force model given as a callable.

A direct-force model (AFF's own forces, any model that predicts forces without an energy) need
not be the gradient of anything. Whether it is, and how much it matters, is measured three ways:

1. **NVE energy drift** (:func:`nve_drift`): ASE's velocity Verlet through
   :class:`aff_app.calculator.AFFCalculator` (the force callable wrapped as its force model, so
   units are converted at that one edge), Maxwell–Boltzmann velocities at T with no net momentum
   or angular momentum. The total energy needs a potential: the model's energy when it has one;
   otherwise minus the work of its forces along the *straight line* from R0 to R(t), R(t)
   first rigidly moved onto R0 (:func:`eckart_align`, :func:`line_potential`, Gauss–Legendre;
   the rigid motion is no work for a rotation-invariant model, which every model of an isolated
   molecule is, and keeps the line among the run's own shapes). For a conservative field that
   is the potential U(R) − U(R0), so the total is conserved as well as Verlet conserves it; for a
   non-conservative one the total changes by the circulation ∮ F·dR around "trajectory out,
   line back", so every model's drift is measurable. (Minus the work along the trajectory
   itself, accumulated step by step, cannot serve: by the work–energy theorem
   E_kin − ∫_traj F·dR is constant for every force field, conservative or not: a swirl field
   that visibly spins a molecule up drifted 0.001 kcal/mol/ps by it, 10⁴ times less than by
   its energy.) The drift is the slope of a straight line fitted to E_total(t).
2. **Closed-loop work** (:func:`loop_work`): W = ∮ F·dR around circles
   R(θ) = R0 + a (cos θ u + sin θ w) in configuration space, u and w orthonormal random
   displacement fields (unit Frobenius norm over all 3N coordinates, so a is the circle's radius
   in Å). W = 0 for a conservative field. The periodic trapezoid rule on a smooth closed loop is
   spectrally accurate, so W of a conservative field is at round-off level with 64 points.
   Normalised by the gross work ∮ |F·dR| it is a dimensionless ratio.
3. **Force-Jacobian asymmetry** (:func:`jacobian_asymmetry`): J = −∂F/∂R (3N × 3N, for a
   conservative field the Hessian, symmetric) by central differences;
   ‖J − Jᵀ‖_F / ‖J + Jᵀ‖_F is 0 for a conservative field up to the difference's error.

:func:`conservation_check` runs all three and returns a :class:`ConservationReport`.

Callables: ``forces(R)`` takes R (B, N, 3) Å and returns (B, N, 3) kcal/mol/Å; ``energy(R)``
takes (B, N, 3) Å and returns (B,) kcal/mol. For a fitted model, e.g.
``lambda R: fm.predict(R, return_std=False).mean`` and ``lambda R: em.predict(R).mean``
(or ``em.forces`` for the conservative forces of AFF's integrated energy).

Cancelling: ``progress(fraction, message)`` may raise :class:`aff_app.cancel.Cancelled`
(the library convention), which leaves these functions untouched; ``should_stop()`` returning
True instead ends the MD run early and keeps what ran (``NVEResult.stopped_early`` says so).

Units: positions Å, energies kcal/mol, forces kcal/mol/Å, time fs (step) and ps (series,
drift), temperature K; ASE's eV and amu only inside the MD run (``ase.units``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
from ase import Atoms
from ase import units as ase_units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation

from aff_app.calculator import AFFCalculator
from aff_app.errors import AFFError
from aff_app.units import energy_factor

__all__ = [
    "ConservationError",
    "ConservationSettings",
    "NVEResult",
    "ConservationReport",
    "FLY_APART_RATIO",
    "nve_drift",
    "line_potential",
    "eckart_align",
    "loop_directions",
    "loop_works",
    "loop_work",
    "force_jacobian",
    "jacobian_asymmetry",
    "conservation_check",
]

ForceFn = Callable[[np.ndarray], np.ndarray]
EnergyFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

#: The MD run stops (a result, not an error) when any interatomic distance exceeds this multiple of
#: its start value: the molecule has come apart and the energy means nothing any more.
FLY_APART_RATIO = 3.0
#: Largest time step: bonds to hydrogen (period ~11 fs) need ≲ 1 fs; beyond 5 fs Verlet itself fails.
MAX_DT_FS = 5.0
#: Most MD steps one check may run (time series are kept at every step: 5 floats a step).
MAX_STEPS = 1_000_000
#: Hottest start: far above any temperature a molecular model is trained for.
MAX_TEMPERATURE_K = 10_000.0
#: Largest loop radius and finite-difference step (Å): beyond these the checks leave the
#: neighbourhood of the geometry they are meant to describe.
MAX_LOOP_AMPLITUDE = 1.0
MAX_FD_STEP = 0.1
#: Fewest points on a loop: the periodic trapezoid rule needs a few per period of the integrand.
MIN_LOOP_POINTS = 8
#: How many MD progress reports a run makes (each a callback; every step would cost too much).
_PROGRESS_REPORTS = 100

_EV_TO_KCAL = energy_factor("eV", "kcal/mol")
#: Most geometries per call of a callable outside the MD run (a GP predicts in batches; this bounds memory).
_BATCH = 256
ENERGY_SOURCES = ("model energy", "work integral")


class ConservationError(AFFError, ValueError):
    """Bad settings or inputs of a conservation check (or a force model whose output does not fit)."""


def _check_number(name: str, value, *, lo: float, hi: float, lo_open: bool = False, integer: bool = False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConservationError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConservationError(f"{name} must be finite, got {value!r}")
    if integer and v != int(v):
        raise ConservationError(f"{name} must be a whole number, got {value!r}")
    if v < lo or (lo_open and v == lo) or v > hi:
        left = "(" if lo_open else "["
        raise ConservationError(f"{name} must be in {left}{lo:g}, {hi:g}], got {value!r}")
    return int(v) if integer else v


@dataclass(frozen=True)
class ConservationSettings:
    """Settings of the three conservation checks (validated on construction).

    Attributes
    ----------
    temperature_K : float
        Maxwell–Boltzmann temperature of the start velocities, K (0 starts at rest).
    dt_fs : float
        Velocity-Verlet time step, fs (0 < dt ≤ 5).
    n_steps : int
        MD steps; 0 skips the NVE run.
    loop_amplitude : float
        Radius a of each closed loop in configuration space, Å (the 3N-dimensional norm of
        the displacement: per atom about a/√N).
    loop_points : int
        Points θ_k = 2πk/n on each loop (≥ 8).
    n_loops : int
        Loops averaged; 0 skips the loop check.
    fd_step : float
        Central-difference step h of the Jacobian, Å. The asymmetry of a conservative field is
        the difference's error: truncation O(h²), round-off ~ε|F|/h. Measured, harmonic springs:
        2e-8 at 1e-3 Å, 2e-10 at 1e-4, 6e-12 at 1e-5, 5e-11 at 1e-6 (round-off); −∇ of AFF's
        integrated energy (uracil, 60 frames): 1.6e-6, 1.7e-8, 2.9e-8 at 1e-3, 1e-4, 1e-5, while
        AFF's own forces give 0.03: 1e-3 Å separates the two by four orders of magnitude.
    n_jacobian_frames : int
        Frames at which the Jacobian is taken; 0 skips the Jacobian check.
    seed : int
        Seeds the velocities and the loop directions.
    n_samples : int
        Steps of the MD run at which the potential (and so E_total) is evaluated, evenly spaced
        (every ⌈n_steps / n_samples⌉-th step, and the last): the potential costs a model call
        (the energy) or ``line_points`` force evaluations (the line integral) per sample.
    line_points : int
        Gauss–Legendre nodes of the line-integral potential of a model without an energy.
    """

    temperature_K: float = 300.0
    dt_fs: float = 0.5
    n_steps: int = 2000
    loop_amplitude: float = 0.05
    loop_points: int = 64
    n_loops: int = 4
    fd_step: float = 1e-3
    n_jacobian_frames: int = 3
    seed: int = 0
    n_samples: int = 400
    line_points: int = 12

    def __post_init__(self) -> None:
        # object.__setattr__: the dataclass is frozen; this only normalises the types once
        checked = {
            "temperature_K": _check_number("temperature_K", self.temperature_K, lo=0.0, hi=MAX_TEMPERATURE_K),
            "dt_fs": _check_number("dt_fs", self.dt_fs, lo=0.0, hi=MAX_DT_FS, lo_open=True),
            "n_steps": _check_number("n_steps", self.n_steps, lo=0, hi=MAX_STEPS, integer=True),
            "loop_amplitude": _check_number("loop_amplitude", self.loop_amplitude, lo=0.0, hi=MAX_LOOP_AMPLITUDE,
                                            lo_open=True),
            "loop_points": _check_number("loop_points", self.loop_points, lo=MIN_LOOP_POINTS, hi=100_000,
                                         integer=True),
            "n_loops": _check_number("n_loops", self.n_loops, lo=0, hi=1000, integer=True),
            "fd_step": _check_number("fd_step", self.fd_step, lo=0.0, hi=MAX_FD_STEP, lo_open=True),
            "n_jacobian_frames": _check_number("n_jacobian_frames", self.n_jacobian_frames, lo=0, hi=1000,
                                               integer=True),
            "seed": _check_number("seed", self.seed, lo=0, hi=2**63 - 1, integer=True),
            "n_samples": _check_number("n_samples", self.n_samples, lo=2, hi=MAX_STEPS, integer=True),
            "line_points": _check_number("line_points", self.line_points, lo=2, hi=100, integer=True),
        }
        for k, v in checked.items():
            object.__setattr__(self, k, v)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _json_value(v):
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()] if v.ndim else _json_value(v.item())
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else None  # JSON has no NaN
    if isinstance(v, np.integer):
        return int(v)
    return v


@dataclass
class NVEResult:
    """One velocity-Verlet run and its total-energy drift.

    Attributes
    ----------
    energy_source : str
        ``'model energy'`` (E_pot is the model's energy) or ``'work integral'`` (E_pot(R) is minus
        the work of the forces along the straight line from R0 to R rigidly moved onto R0,
        :func:`line_potential` after :func:`eckart_align`; E_pot(R0) = 0).
    temperature_K, dt_fs : float
        Start temperature (K) and time step (fs).
    n_steps : int
        Steps asked for.  steps_done : int — steps run (< n_steps when stopped early).
    drift : float
        Slope of a least-squares line through E_total(t), kcal/mol/ps (NaN with < 2 points, and NaN
        when the run fell apart: ``stopped_early`` says why, ``max_deviation`` how far it got).
    max_deviation : float
        max_t |E_total(t) − E_total(0)|, kcal/mol.
    mean_temperature : float
        Mean instantaneous temperature, K (ASE's convention, 3N degrees of freedom).
    t : (S,) ps;  e_kin, e_pot, e_total : (S,) kcal/mol;  temperature : (S,) K
        Time series at S ≈ n_samples evenly spaced steps from 0 to the last step run.
    frames : (K, N, 3) Å
        Geometries evenly spaced along the run (K ≤ the settings' n_jacobian_frames, at least 1),
        where :func:`conservation_check` takes the Jacobian when given no frames.
    stopped_early : str or None
        Why the run ended before n_steps (atoms flew apart, non-finite forces, the caller asked);
        None when it ran to the end.
    """

    energy_source: str
    temperature_K: float
    dt_fs: float
    n_steps: int
    steps_done: int
    drift: float
    max_deviation: float
    mean_temperature: float
    t: np.ndarray
    e_kin: np.ndarray
    e_pot: np.ndarray
    e_total: np.ndarray
    temperature: np.ndarray
    frames: np.ndarray
    stopped_early: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (arrays as lists, NaN as None), keys with their units."""
        return {
            "energy_source": self.energy_source,
            "temperature_K": self.temperature_K,
            "dt_fs": self.dt_fs,
            "n_steps": self.n_steps,
            "steps_done": self.steps_done,
            "drift_kcal_mol_per_ps": _json_value(self.drift),
            "max_deviation_kcal_mol": _json_value(self.max_deviation),
            "mean_temperature_K": _json_value(self.mean_temperature),
            "t_ps": _json_value(self.t),
            "e_kin_kcal_mol": _json_value(self.e_kin),
            "e_pot_kcal_mol": _json_value(self.e_pot),
            "e_total_kcal_mol": _json_value(self.e_total),
            "temperature_series_K": _json_value(self.temperature),
            "frames_angstrom": _json_value(self.frames),
            "stopped_early": self.stopped_early,
        }


@dataclass
class ConservationReport:
    """The three conservation measurements of one force model.

    Attributes
    ----------
    name : str
        The model's name (legend and table).
    nve : NVEResult or None
        The MD run (None when skipped: n_steps = 0).
    loop_work, loop_work_sd : float or None
        Mean and standard deviation over the loops of |∮ F·dR|, kcal/mol (None when skipped).
    loop_ratio : float or None
        Mean over the loops of |∮ F·dR| / ∮ |F·dR| (dimensionless).
    jacobian_asymmetry, jacobian_asymmetry_max : float or None
        Mean and largest ‖J − Jᵀ‖_F / ‖J + Jᵀ‖_F over the frames (dimensionless).
    energy_source : str
        ``'model energy'`` or ``'work integral'`` (what the MD run's E_pot is).
    settings : ConservationSettings
        What was run.
    """

    name: str
    nve: NVEResult | None
    loop_work: float | None
    loop_work_sd: float | None
    loop_ratio: float | None
    jacobian_asymmetry: float | None
    jacobian_asymmetry_max: float | None
    energy_source: str
    settings: ConservationSettings = field(default_factory=ConservationSettings)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; scalar keys carry their units."""
        return {
            "name": self.name,
            "energy_source": self.energy_source,
            "nve": None if self.nve is None else self.nve.to_dict(),
            "loop_work_kcal_mol": _json_value(self.loop_work),
            "loop_work_sd_kcal_mol": _json_value(self.loop_work_sd),
            "loop_ratio": _json_value(self.loop_ratio),
            "jacobian_asymmetry": _json_value(self.jacobian_asymmetry),
            "jacobian_asymmetry_max": _json_value(self.jacobian_asymmetry_max),
            "settings": self.settings.to_dict(),
        }


# -- inputs ----------------------------------------------------------------------------------

def _settings(settings) -> ConservationSettings:
    if not isinstance(settings, ConservationSettings):
        raise ConservationError(f"settings must be a ConservationSettings, got {type(settings).__name__}")
    return settings


def _inputs(settings, forces, energy, z, R0) -> tuple[ConservationSettings, np.ndarray, np.ndarray]:
    """The checks every run with a start geometry makes: settings, the callables, z, R0 (N, 3)."""
    settings = _settings(settings)
    _callable(forces, "forces")
    if energy is not None:
        _callable(energy, "energy")
    zz = _atomic_numbers(z)
    return settings, zz, _geometry(R0, zz.size)


def _callable(fn, name: str) -> None:
    if not callable(fn):
        raise ConservationError(f"{name} must be a callable R (B, N, 3) Å → array, got {type(fn).__name__}")


def _geometry(R0, n_atoms: int | None = None, what: str = "R0") -> np.ndarray:
    try:
        R = np.asarray(R0, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConservationError(f"{what} must be an array of positions (N, 3) Å") from None
    if R.ndim == 3 and R.shape[0] == 1:
        R = R[0]
    if R.ndim != 2 or R.shape[1] != 3 or R.shape[0] < 1:
        raise ConservationError(f"{what} must have shape (N, 3) Å, got {R.shape}")
    if n_atoms is not None and R.shape[0] != n_atoms:
        raise ConservationError(f"{what} has {R.shape[0]} atoms but z has {n_atoms}")
    if not np.all(np.isfinite(R)):
        raise ConservationError(f"{what} has non-finite positions")
    return R


def _frames(R_frames, n_atoms: int) -> np.ndarray:
    try:
        R = np.asarray(R_frames, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConservationError("R_frames must be an array of positions (K, N, 3) Å") from None
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (n_atoms, 3) or R.shape[0] < 1:
        raise ConservationError(f"R_frames must have shape (K, {n_atoms}, 3) Å, got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ConservationError("R_frames has non-finite positions")
    return R


def _atomic_numbers(z) -> np.ndarray:
    try:
        zz = np.asarray(z)
        out = zz.astype(np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ConservationError(f"z must be atomic numbers (N,), got {z!r}") from None
    if zz.ndim != 1 or out.size < 1 or np.any(out != zz) or np.any(out < 1) or np.any(out > 118):
        raise ConservationError(f"z must be a 1-D array of atomic numbers 1-118, got {z!r}")
    return out


def _call_forces(forces: ForceFn, R: np.ndarray) -> np.ndarray:
    """``forces(R)`` as a float array, refusing output of the wrong shape (finite or not is the caller's check)."""
    F = np.asarray(forces(R), dtype=np.float64)
    if F.shape != R.shape:
        raise ConservationError(f"the force model returned shape {F.shape} for positions {R.shape}: "
                                "forces(R) must map (B, N, 3) Å to (B, N, 3) kcal/mol/Å")
    return F


def _call_energy(energy: EnergyFn, R: np.ndarray) -> np.ndarray:
    E = np.asarray(energy(R), dtype=np.float64)
    if E.shape != (R.shape[0],):
        # (B, 1) is a common shape for one energy per frame; anything else is a mistake
        if E.size == R.shape[0]:
            E = E.reshape(-1)
        else:
            raise ConservationError(f"the energy model returned shape {E.shape} for positions {R.shape}: "
                                    "energy(R) must map (B, N, 3) Å to (B,) kcal/mol")
    return E


# -- the callables as the calculator's models -------------------------------------------------

@dataclass
class _Prediction:
    mean: np.ndarray
    std: np.ndarray | None = None


class _CallableForceModel:
    """``forces(R)`` with the interface :class:`AFFCalculator` expects of a force model."""

    def __init__(self, forces: ForceFn, z: np.ndarray) -> None:
        self._forces = forces
        self.z = z

    def predict(self, R, *, return_std: bool = True, **_) -> _Prediction:
        F = _call_forces(self._forces, np.asarray(R, dtype=np.float64))
        # a callable has no sd; NaN says so if anything asks (the MD run never does)
        return _Prediction(mean=F, std=np.full_like(F, np.nan) if return_std else None)


class _Stop(Exception):
    """Raised from the MD observer to end the run; never leaves this module."""


# -- 1. NVE drift ------------------------------------------------------------------------------

def nve_drift(forces: ForceFn, z, R0, *, energy: EnergyFn | None = None,
              settings: ConservationSettings = ConservationSettings(),
              progress: Progress | None = None, should_stop: ShouldStop | None = None) -> NVEResult:
    """Run velocity-Verlet NVE dynamics and measure the total-energy drift.

    Parameters
    ----------
    forces : callable
        R (B, N, 3) Å → F (B, N, 3) kcal/mol/Å.
    z : (N,) int
        Atomic numbers (the masses).
    R0 : (N, 3) Å
        Start geometry.
    energy : callable, optional
        R (B, N, 3) Å → E (B,) kcal/mol. Without it the potential is the line integral
        E_pot(R) = −∫₀¹ F(R0 + sΔ)·Δ ds, Δ = R' − R0, R' the sample R rigidly moved onto R0
        (:func:`eckart_align`, :func:`line_potential`); the model is taken to be rotation-invariant.
    settings : ConservationSettings
        temperature_K, dt_fs, n_steps (≥ 2 here), seed, n_samples, line_points, and
        n_jacobian_frames (how many geometries ``frames`` keeps).
    progress : callable(fraction, message), optional
        Reported ~100 times; may raise :class:`aff_app.cancel.Cancelled`.
    should_stop : callable() → bool, optional
        Asked every step; True ends the run early and keeps what ran.

    Returns
    -------
    NVEResult
        Drift (kcal/mol/ps), max |E_total − E_total(0)| (kcal/mol), mean temperature (K) and
        the series at ~n_samples evenly spaced steps. A molecule that comes apart (a distance
        beyond :data:`FLY_APART_RATIO` × its start value), non-finite forces or a non-finite
        potential end the series with ``stopped_early`` set; no exception.

    Raises
    ------
    ConservationError
        Bad settings or shapes, fewer than 2 steps, or a model whose output has the wrong shape.
    """
    settings, zz, R0 = _inputs(settings, forces, energy, z, R0)
    if settings.n_steps < 2:
        raise ConservationError(f"the NVE run needs at least 2 steps to fit a drift, got n_steps={settings.n_steps}")
    d0 = pdist(R0)
    if d0.size and d0.min() <= 0:
        raise ConservationError("R0 has two atoms at the same position")

    atoms = Atoms(numbers=zz, positions=R0, pbc=False)
    # the callable as AFFCalculator's force model: the calculator converts kcal/mol/Å → eV/Å at its edge
    atoms.calc = AFFCalculator(_CallableForceModel(forces, zz))
    if settings.temperature_K > 0 and zz.size > 1:
        # force_temp: the draw is rescaled to exactly T (a few atoms' draw scatters widely: 259 K for a
        # 5-atom molecule at 300 K), so runs at one T start with one kinetic energy whatever the seed
        MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_K, force_temp=True,
                                     rng=np.random.default_rng(settings.seed))
        # no drift of the whole molecule nor spin: the kinetic energy is all internal motion
        # (both keep the temperature, rescaling what is left)
        Stationary(atoms)
        ZeroRotation(atoms)
    # else the atoms start at rest (one atom has no internal motion; ASE's rescaling would divide by 0)
    dyn = VelocityVerlet(atoms, timestep=settings.dt_fs * ase_units.fs)

    n = settings.n_steps
    stride = max(1, math.ceil(n / settings.n_samples))
    steps, e_kin, temp, Rs = [], [], [], []
    state = {"done": -1, "why": None}
    every = max(1, n // _PROGRESS_REPORTS)
    md_share = 0.8  # of the progress bar; the potential at the samples takes the rest

    def observe() -> None:
        i = dyn.nsteps
        R = atoms.get_positions()
        F = atoms.get_forces()  # cached by the calculator: no model call
        if not (np.all(np.isfinite(F)) and np.all(np.isfinite(R))):
            state["why"] = f"the forces became non-finite at step {i} ({i * settings.dt_fs * 1e-3:g} ps)"
            raise _Stop
        state["done"] = i
        bad = None
        if d0.size:
            ratio = pdist(R) / d0
            k = int(np.argmax(ratio))
            if ratio[k] > FLY_APART_RATIO:
                a, b = _pair(k, zz.size)
                bad = (f"atoms flew apart at step {i} ({i * settings.dt_fs * 1e-3:g} ps): atoms {a} and {b} are "
                       f"{ratio[k]:.1f}× their start distance (limit {FLY_APART_RATIO:g}×)")
        stop = bad is None and should_stop is not None and i < n and bool(should_stop())
        # the last step run is always a sample, so the series ends where the run did
        if i % stride == 0 or i == n or bad is not None or stop:
            steps.append(i)
            e_kin.append(atoms.get_kinetic_energy() * _EV_TO_KCAL)
            temp.append(atoms.get_temperature())
            Rs.append(R)
        if bad is not None:
            state["why"] = bad
            raise _Stop
        if stop:
            state["why"] = f"stopped at the caller's request after {i} of {n} steps"
            raise _Stop
        if progress is not None and (i % every == 0 or i == n):
            progress(md_share * i / n, f"NVE step {i}/{n}")

    dyn.attach(observe, interval=1)
    try:
        dyn.run(n)
    except _Stop:
        pass
    why = state["why"]
    steps_arr = np.asarray(steps, dtype=np.int64)
    R_s = np.asarray(Rs, dtype=np.float64).reshape(-1, *R0.shape)
    stage = _stage(progress, md_share, 1.0)
    if energy is not None:
        e_pot = _batched_energy(energy, R_s, progress=stage)
    else:
        # the line starts from R0 and ends at each sample's shape in R0's orientation: the run's rigid
        # rotation is no work for a rotation-invariant model, and a line to a rotated copy would pass
        # through collapsed geometries (a 5-atom molecule spun by a swirl: a spike of 45 kcal/mol where
        # the true total rose by 7), where no model is accurate and the quadrature fails
        e_pot = line_potential(forces, R0, eckart_align(R_s, R0, atoms.get_masses()),
                               points=settings.line_points, progress=stage)
    finite = np.isfinite(e_pot)
    if not np.all(finite):
        # a model may blow up somewhere the run reached: keep the series up to there and say so
        first = int(np.argmin(finite))
        what = "energy" if energy is not None else "line-integral potential"
        why = f"the {what} is non-finite at step {int(steps_arr[first])}" + (f"; {why}" if why else "")
        steps_arr, e_pot, R_s = steps_arr[:first], e_pot[:first], R_s[:first]
    k = steps_arr.size
    e_kin_arr = np.asarray(e_kin[:k], dtype=np.float64)
    temp_arr = np.asarray(temp[:k], dtype=np.float64)
    t = steps_arr * settings.dt_fs * 1e-3
    e_tot = e_kin_arr + e_pot
    # a run that fell apart (atoms flew apart, a non-finite force or potential) has no drift to speak of:
    # a line through an exploding E_total reported 1e139 kcal/mol/ps; its max deviation says how far it got
    broke = why is not None and not why.startswith("stopped at the caller's request")
    drift = float(np.polyfit(t, e_tot, 1)[0]) if k >= 2 and not broke else float("nan")
    max_dev = float(np.max(np.abs(e_tot - e_tot[0]))) if k else float("nan")
    if k:
        pick = np.unique(np.linspace(0, k - 1, max(1, settings.n_jacobian_frames)).round().astype(int))
        frames = R_s[pick].copy()
    else:
        frames = R0[None].copy()
    return NVEResult(
        energy_source=ENERGY_SOURCES[0] if energy is not None else ENERGY_SOURCES[1],
        temperature_K=settings.temperature_K,
        dt_fs=settings.dt_fs,
        n_steps=n,
        steps_done=max(int(state["done"]), 0),
        drift=drift,
        max_deviation=max_dev,
        mean_temperature=float(np.mean(temp_arr)) if k else float("nan"),
        t=t, e_kin=e_kin_arr, e_pot=e_pot, e_total=e_tot, temperature=temp_arr,
        frames=frames,
        stopped_early=why,
    )


def _batched_energy(energy: EnergyFn, R: np.ndarray, *, progress: Progress | None = None) -> np.ndarray:
    out = np.empty(R.shape[0])
    for start in range(0, R.shape[0], _BATCH):
        sl = slice(start, min(start + _BATCH, R.shape[0]))
        out[sl] = _call_energy(energy, R[sl])
        if progress is not None:
            progress(sl.stop / R.shape[0], f"energy at {sl.stop}/{R.shape[0]} samples")
    return out


def eckart_align(R, R_ref, masses) -> np.ndarray:
    """Each frame rigidly moved onto R_ref: its centre of mass onto R_ref's, then the mass-weighted best rotation.

    Parameters
    ----------
    R : (K, N, 3) Å
    R_ref : (N, 3) Å
    masses : (N,) amu (only their ratios matter)

    Returns
    -------
    (K, N, 3) Å
        Same shapes (interatomic distances) as R; minimises Σ_i m_i |R_i − R_ref,i|² over rotations.
    """
    R = np.asarray(R, dtype=np.float64)
    R_ref = np.asarray(R_ref, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    c_ref = m @ R_ref / m.sum()
    out = np.empty_like(R)
    for k, x in enumerate(R):
        c = m @ x / m.sum()
        if R.shape[1] < 2:
            out[k] = x - c + c_ref
            continue
        with warnings.catch_warnings():
            # two atoms (or a straight chain) leave the spin about their axis undefined: any best rotation serves
            warnings.simplefilter("ignore", UserWarning)
            rot, _ = Rotation.align_vectors(R_ref - c_ref, x - c, weights=m)
        out[k] = rot.apply(x - c) + c_ref
    return out


def line_potential(forces: ForceFn, R0, R, *, points: int = 12, progress: Progress | None = None) -> np.ndarray:
    """Minus the work of the forces along the straight line from R0 to each R: a potential for any field (method.md eq. 25).

    E_pot(R) = −∫₀¹ F(R0 + s Δ)·Δ ds, Δ = R − R0, by ``points``-point Gauss–Legendre quadrature
    (exact for polynomials of degree 2·points − 1; for a smooth field spectrally accurate).
    For a conservative field this is U(R) − U(R0). It is a function of R alone, so along an MD
    trajectory E_kin + E_pot changes by ∮ F·dR around the loop "trajectory out, straight line
    back": zero for a conservative field, the field's circulation otherwise. (Minus the work
    along the trajectory itself would not do: by the work–energy theorem E_kin − ∫_traj F·dR is
    constant for *every* force field, so it could never show a drift.)

    Parameters
    ----------
    forces : callable, R (B, N, 3) Å → (B, N, 3) kcal/mol/Å
    R0 : (N, 3) Å
    R : (K, N, 3) Å
    points : int
        Quadrature nodes per line (K·points geometries in all, in calls of ≤ 256).

    Returns
    -------
    (K,) kcal/mol
        NaN where the field was non-finite somewhere on the line.
    """
    R0 = _geometry(R0)
    R = _frames(R, R0.shape[0]) if np.size(R) else np.zeros((0, *R0.shape))
    q = _check_number("line_points", points, lo=1, hi=1000, integer=True)
    s, w = np.polynomial.legendre.leggauss(q)
    s, w = 0.5 * (s + 1.0), 0.5 * w  # nodes and weights on [0, 1]
    K = R.shape[0]
    out = np.empty(K)
    per_call = max(1, _BATCH // q)
    for start in range(0, K, per_call):
        sl = slice(start, min(start + per_call, K))
        D = R[sl] - R0  # (k, N, 3)
        X = R0 + s[None, :, None, None] * D[:, None]  # (k, q, N, 3)
        F = _call_forces(forces, X.reshape(-1, *R0.shape)).reshape(X.shape)
        out[sl] = -np.einsum("q,kqnc,knc->k", w, F, D)
        if progress is not None:
            progress(sl.stop / K, f"line-integral potential at {sl.stop}/{K} samples")
    return out


def _pair(k: int, n: int) -> tuple[int, int]:
    """Atoms (i, j), i < j, of entry k of a condensed distance vector (scipy's pdist order)."""
    i = 0
    while k >= n - 1 - i:
        k -= n - 1 - i
        i += 1
    return i, i + 1 + k


# -- 2. closed-loop work -----------------------------------------------------------------------

def loop_directions(n_atoms: int, n_loops: int, seed: int = 0) -> np.ndarray:
    """Orthonormal pairs of random displacement fields, one pair per loop.

    Parameters
    ----------
    n_atoms, n_loops : int
    seed : int

    Returns
    -------
    (n_loops, 2, N, 3)
        u = [:, 0] and w = [:, 1]: Gaussian fields, w made orthogonal to u (Gram–Schmidt),
        each of unit Frobenius norm over all 3N coordinates (dimensionless; × a gives Å).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_loops), 2, int(n_atoms), 3))
    for k in range(int(n_loops)):
        g = rng.normal(size=(2, 3 * int(n_atoms)))
        u = g[0] / np.linalg.norm(g[0])
        w = g[1] - (g[1] @ u) * u
        # a circle needs two independent directions: for one atom (3 coordinates) the draw
        # could in principle be parallel; orthogonalising and normalising guards it
        w /= np.linalg.norm(w)
        out[k, 0] = u.reshape(-1, 3)
        out[k, 1] = w.reshape(-1, 3)
    return out


def loop_works(forces: ForceFn, R0, *, settings: ConservationSettings = ConservationSettings(),
               directions=None, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signed work ∮ F·dR and gross work ∮ |F·dR| around each loop.

    R(θ) = R0 + a (cos θ u + sin θ w), θ_k = 2πk/n (a = ``loop_amplitude`` Å, n =
    ``loop_points``, u, w from :func:`loop_directions` with the settings' seed), and
    dR/dθ = a (−sin θ u + cos θ w) exactly; the integrals are the periodic trapezoid rule
    (2π/n) Σ_k, spectrally accurate for a smooth field.

    Parameters
    ----------
    forces : callable, R (B, N, 3) Å → (B, N, 3) kcal/mol/Å (called once per loop, B = n)
    R0 : (N, 3) Å
    directions : (L, 2, N, 3), optional
        The loops' u and w (each pair orthonormal over the 3N coordinates) instead of
        :func:`loop_directions`' random ones; L replaces ``n_loops``.

    Returns
    -------
    W : (n_loops,) kcal/mol
        Work done by the field around each loop (counter-clockwise from u towards w).
    gross : (n_loops,) kcal/mol
        ∮ |F·dR| around each loop.
    """
    settings = _settings(settings)
    _callable(forces, "forces")
    R0 = _geometry(R0)
    n, a = settings.loop_points, settings.loop_amplitude
    theta = 2.0 * np.pi * np.arange(n) / n
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    if directions is None:
        dirs = loop_directions(R0.shape[0], settings.n_loops, settings.seed)
    else:
        dirs = np.asarray(directions, dtype=np.float64)
        if dirs.ndim != 4 or dirs.shape[1:] != (2, *R0.shape) or dirs.shape[0] < 1:
            raise ConservationError(f"directions must have shape (L, 2, {R0.shape[0]}, 3), got {dirs.shape}")
        uu, ww, uw = (np.einsum("knc,knc->k", dirs[:, i], dirs[:, j]) for i, j in ((0, 0), (1, 1), (0, 1)))
        if not (np.allclose(uu, 1) and np.allclose(ww, 1) and np.allclose(uw, 0, atol=1e-9)):
            raise ConservationError("each pair of loop directions must be orthonormal (unit norm over 3N, u·w = 0)")
    L = dirs.shape[0]
    W = np.empty(L)
    gross = np.empty(L)
    for k, (u, w) in enumerate(dirs):
        R = R0 + a * (c * u + s * w)
        dR = a * (-s * u + c * w)  # dR/dθ, Å per radian
        F = _call_forces(forces, R)
        if not np.all(np.isfinite(F)):
            raise ConservationError(f"the force model returned non-finite forces on loop {k + 1} "
                                    f"(radius {a:g} Å around R0)")
        p = np.sum(F * dR, axis=(1, 2))  # F·dR/dθ, kcal/mol per radian
        W[k] = p.sum() * (2.0 * np.pi / n)
        gross[k] = np.abs(p).sum() * (2.0 * np.pi / n)
        if progress is not None:
            progress((k + 1) / L, f"loop {k + 1}/{L}")
    return W, gross


def loop_work(forces: ForceFn, R0, *, settings: ConservationSettings = ConservationSettings(),
              progress: Progress | None = None) -> tuple[float, float, float]:
    """Closed-loop work of a force field around R0: 0 for a conservative field.

    Parameters
    ----------
    forces : callable, R (B, N, 3) Å → (B, N, 3) kcal/mol/Å
    R0 : (N, 3) Å
    settings : ConservationSettings
        loop_amplitude, loop_points, n_loops (≥ 1), seed.

    Returns
    -------
    mean_abs_W : float
        Mean over the loops of |∮ F·dR|, kcal/mol.
    sd_abs_W : float
        Their standard deviation (ddof 1; 0 for one loop), kcal/mol.
    ratio : float
        Mean over the loops of |∮ F·dR| / ∮ |F·dR| (dimensionless; 0 where the gross work is 0).
    """
    settings = _settings(settings)
    if settings.n_loops < 1:
        raise ConservationError("loop_work needs n_loops ≥ 1")
    W, gross = loop_works(forces, R0, settings=settings, progress=progress)
    absW = np.abs(W)
    ratio = np.divide(absW, gross, out=np.zeros_like(absW), where=gross > 0)
    sd = float(np.std(absW, ddof=1)) if absW.size > 1 else 0.0
    return float(np.mean(absW)), sd, float(np.mean(ratio))


# -- 3. Jacobian asymmetry ---------------------------------------------------------------------

def force_jacobian(forces: ForceFn, R, *, h: float = 1e-3) -> np.ndarray:
    """J = −∂F/∂R at one geometry by central differences (for a conservative field, the Hessian).

    All 6N displaced geometries R ± h e_j go to ``forces`` in one call.

    Parameters
    ----------
    forces : callable, R (B, N, 3) Å → (B, N, 3) kcal/mol/Å
    R : (N, 3) Å
    h : float
        Step, Å.

    Returns
    -------
    (3N, 3N) kcal/mol/Å²
        J[a, b] = −∂F_a/∂R_b, coordinates flattened atom-major (atom 0 x, y, z, atom 1 x, …).
    """
    _callable(forces, "forces")
    R = _geometry(R, what="R")
    h = _check_number("fd_step", h, lo=0.0, hi=MAX_FD_STEP, lo_open=True)
    m = R.size
    x = R.reshape(-1)
    D = np.eye(m) * h
    X = np.concatenate([x + D, x - D]).reshape(2 * m, *R.shape)
    F = _call_forces(forces, X).reshape(2, m, m)  # [±, displaced coordinate b, force component a]
    if not np.all(np.isfinite(F)):
        raise ConservationError(f"the force model returned non-finite forces within {h:g} Å of a frame")
    return -(F[0] - F[1]).T / (2.0 * h)


def _asymmetry(J: np.ndarray) -> float:
    num = float(np.linalg.norm(J - J.T))
    den = float(np.linalg.norm(J + J.T))
    if den == 0.0:
        # J = 0 is symmetric; a purely antisymmetric J is as non-conservative as a field gets
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def jacobian_asymmetry(forces: ForceFn, R_frames, *, settings: ConservationSettings = ConservationSettings(),
                       progress: Progress | None = None) -> tuple[float, float]:
    """‖J − Jᵀ‖_F / ‖J + Jᵀ‖_F of the force Jacobian, mean and max over frames.

    0 for a conservative field up to the central difference's error (O(h²) truncation plus
    round-off ~ε|F|/h; at h = 1e-3 Å measured 2e-8 for harmonic springs, 2e-6 for −∇ of AFF's
    integrated energy, against 0.03 for AFF's own forces).

    Parameters
    ----------
    forces : callable, R (B, N, 3) Å → (B, N, 3) kcal/mol/Å
    R_frames : (K, N, 3) or (N, 3) Å
        Frames; the first ``n_jacobian_frames`` are used (all when there are fewer).
    settings : ConservationSettings
        fd_step (Å), n_jacobian_frames (≥ 1).

    Returns
    -------
    mean, max : float
        Dimensionless.
    """
    settings = _settings(settings)
    if settings.n_jacobian_frames < 1:
        raise ConservationError("jacobian_asymmetry needs n_jacobian_frames ≥ 1")
    _callable(forces, "forces")
    try:
        shape = np.shape(R_frames)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (2, 3):
        raise ConservationError(f"R_frames must have shape (K, N, 3) Å, got {shape}")
    R = _frames(R_frames, shape[-2])[: settings.n_jacobian_frames]
    vals = []
    for k, x in enumerate(R):
        vals.append(_asymmetry(force_jacobian(forces, x, h=settings.fd_step)))
        if progress is not None:
            progress((k + 1) / R.shape[0], f"Jacobian {k + 1}/{R.shape[0]}")
    return float(np.mean(vals)), float(np.max(vals))


# -- all three ---------------------------------------------------------------------------------

def _stage(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress(lo + (hi - lo) * float(fraction), message)

    return report


def conservation_check(name: str, forces: ForceFn, z, R0, *, energy: EnergyFn | None = None, R_frames=None,
                       settings: ConservationSettings = ConservationSettings(),
                       progress: Progress | None = None, should_stop: ShouldStop | None = None) -> ConservationReport:
    """NVE drift, closed-loop work and Jacobian asymmetry of one force model.

    Parameters
    ----------
    name : str
        The model's name in figures and tables.
    forces : callable, R (B, N, 3) Å → (B, N, 3) kcal/mol/Å
    z : (N,) int
    R0 : (N, 3) Å
        Start of the MD run and centre of the loops.
    energy : callable, R (B, N, 3) Å → (B,) kcal/mol, optional
        The model's energy for the MD run's potential (else the work integral).
    R_frames : (K, N, 3) Å, optional
        Where to take the Jacobian; default the MD run's ``frames`` (R0 when the run is skipped).
    settings : ConservationSettings
        n_steps = 0, n_loops = 0 or n_jacobian_frames = 0 skip that check (its fields None).
    progress : callable(fraction, message), optional
        MD 0-80%, loops 80-90%, Jacobian 90-100%; may raise :class:`aff_app.cancel.Cancelled`.
    should_stop : callable() → bool, optional
        Ends the MD run early (kept, ``stopped_early`` set); when it is True after the run, the
        loop and Jacobian checks are skipped too.

    Returns
    -------
    ConservationReport
    """
    settings, zz, R0 = _inputs(settings, forces, energy, z, R0)
    frames = None if R_frames is None else _frames(R_frames, zz.size)
    nve = None
    if settings.n_steps > 0:
        nve = nve_drift(forces, zz, R0, energy=energy, settings=settings, progress=_stage(progress, 0.0, 0.8),
                        should_stop=should_stop)
    stop = should_stop is not None and bool(should_stop())
    lw = lsd = lratio = None
    if settings.n_loops > 0 and not stop:
        lw, lsd, lratio = loop_work(forces, R0, settings=settings, progress=_stage(progress, 0.8, 0.9))
    ja = jmax = None
    if settings.n_jacobian_frames > 0 and not stop:
        if frames is None:
            frames = nve.frames if nve is not None else R0[None]
        ja, jmax = jacobian_asymmetry(forces, frames, settings=settings, progress=_stage(progress, 0.9, 1.0))
    if progress is not None:
        progress(1.0, "conservation check done")
    return ConservationReport(
        name=str(name), nve=nve, loop_work=lw, loop_work_sd=lsd, loop_ratio=lratio,
        jacobian_asymmetry=ja, jacobian_asymmetry_max=jmax,
        energy_source=ENERGY_SOURCES[0] if energy is not None else ENERGY_SOURCES[1],
        settings=settings,
    )
