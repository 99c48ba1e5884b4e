"""Molecular dynamics with a trained model, its live uncertainty, and a GFN2-xTB reference run.

One function, :func:`run_md`, drives ASE's integrators (velocity Verlet for NVE, Langevin for
NVT) with any ASE calculator: an :class:`aff_app.calculator.AFFCalculator` over a model file's
force (and energy) model, or GFN2-xTB (:func:`xtb_calculator`, tblite) for the reference run
from the same start. Every ``record_every`` steps it keeps the frame: positions, forces, the
model's calibrated force sd (method.md eq. 11; a triangular solve per PE set, so only at recorded
steps — the steps between use the fast mean of eq. 26), potential and kinetic energy,
temperature. It stops early, keeping every recorded frame, when

* the largest force sd exceeds the user's threshold (kcal/mol/Å) — the model is extrapolating;
* the molecule falls apart (a bonded pair of the start stretched beyond :data:`BOND_BREAK_RATIO`
  times its start length, two atoms closer than :data:`MIN_DISTANCE`, non-finite forces);
* the caller cancels (``should_stop``, or ``progress`` raising :class:`aff_app.cancel.Cancelled`).

The result, :class:`MDRun`, writes extxyz (forces and sds per atom) and answers the
comparisons of the MD page: bond-length and energy distributions against a reference run.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from ase import Atoms, units as ase_units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from threadpoolctl import threadpool_limits

from aff_app.cancel import Cancelled
from aff_app.errors import AFFError
from aff_app.gp.kernels import n_threads

__all__ = ["MDError", "MDSettings", "MDRun", "run_md", "run_model_md", "xtb_calculator", "bonds_of",
           "bond_lengths", "compare_runs", "MDComparison", "BondTypeStats", "reference_settings",
           "ENSEMBLES", "STOP_REASONS"]

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]
OnFrame = Callable[[Callable[[], "MDRun"]], None]

#: eV → kcal/mol (ASE works in eV; the app in kcal/mol).
EV_TO_KCAL = 1.0 / (ase_units.kcal / ase_units.mol)
ENSEMBLES = ("nve", "nvt")
#: How a run ended; "running" marks the snapshots handed to ``on_frame`` while it goes on.
STOP_REASONS = ("completed", "sd_threshold", "unstable", "cancelled", "running")
#: A bond of the start geometry (distance < BOND_SCALE × the covalent radii's sum) stretched beyond this
#: ratio of its start length has broken: at 300 K bonds vibrate by a few per cent.
BOND_SCALE = 1.25
BOND_BREAK_RATIO = 2.0
#: Two atoms closer than this (Å) have collided: no molecule of the data comes near it.
MIN_DISTANCE = 0.5
#: Largest time step accepted (fs): hydrogen vibrations (~11 fs period) need ≤ 1 fs for NVE to hold.
MAX_TIMESTEP_FS = 5.0
MAX_STEPS = 1_000_000


class MDError(AFFError, ValueError):
    """Bad MD settings or a start the run cannot begin from."""


@dataclass(frozen=True)
class MDSettings:
    """How to run the dynamics.

    Attributes
    ----------
    ensemble : {'nve', 'nvt'}
        Velocity Verlet (constant energy) or Langevin (constant temperature).
    temperature_K : float
        Start temperature (Maxwell–Boltzmann velocities, rescaled to exactly T, no drift nor spin);
        the thermostat's target for NVT.
    timestep_fs : float
        0 < dt ≤ :data:`MAX_TIMESTEP_FS`; 0.5 fs keeps hydrogen vibrations resolved.
    n_steps : int
    record_every : int
        Keep a frame (and compute the force sd and the energy) every this many steps.
    sd_threshold : float, optional
        Stop when the largest force-component sd of a recorded frame exceeds this, kcal/mol/Å
        (the model's calibrated latent sd). None: never.
    friction_per_fs : float
        Langevin friction (NVT only), 1/fs.
    conservative : bool
        Forces −∇Ê of AFF's integrated energy instead of the force GP's mean (NVE then conserves
        the model's energy; the sd shown is still the force GP's).
    seed : int
        Seed of the velocities and of the Langevin noise.
    """

    ensemble: str = "nve"
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    n_steps: int = 2000
    record_every: int = 10
    sd_threshold: float | None = None
    friction_per_fs: float = 0.01
    conservative: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise MDError(f"ensemble must be 'nve' or 'nvt', got {self.ensemble!r}")
        _check("temperature", self.temperature_K, 0.0, 5000.0, "K")
        if not (np.isfinite(self.timestep_fs) and 0 < self.timestep_fs <= MAX_TIMESTEP_FS):
            raise MDError(f"the time step must lie in (0, {MAX_TIMESTEP_FS:g}] fs, got {self.timestep_fs!r} "
                          "(0.5 fs resolves the hydrogen vibrations; above ~1 fs NVE energy is not conserved)")
        if not isinstance(self.n_steps, (int, np.integer)) or not 1 <= self.n_steps <= MAX_STEPS:
            raise MDError(f"the number of steps must be an integer in 1..{MAX_STEPS:,}, got {self.n_steps!r}")
        if not isinstance(self.record_every, (int, np.integer)) or not 1 <= self.record_every <= self.n_steps:
            raise MDError(f"record_every must be an integer in 1..n_steps ({self.n_steps}), got {self.record_every!r}")
        if self.sd_threshold is not None and not (np.isfinite(self.sd_threshold) and self.sd_threshold > 0):
            raise MDError(f"the sd threshold must be a positive number of kcal/mol/Å (or none), got {self.sd_threshold!r}")
        _check("friction", self.friction_per_fs, 1e-6, 10.0, "1/fs")

    @property
    def duration_ps(self) -> float:
        return self.n_steps * self.timestep_fs * 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


def _check(name: str, value, lo: float, hi: float, unit: str) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MDError(f"the {name} must be a number, got {value!r}") from None
    if not (np.isfinite(v) and lo <= v <= hi):
        raise MDError(f"the {name} must lie in [{lo:g}, {hi:g}] {unit}, got {value!r}")


@dataclass(eq=False)
class MDRun:
    """A trajectory of the dynamics, one row per recorded frame.

    Attributes
    ----------
    label : str — what drove it ("AFF uracil M=1000", "GFN2-xTB")
    z : (N,) atomic numbers
    steps : (T,) MD step of each frame;  times_ps : (T,) ps
    positions : (T, N, 3) Å;  forces : (T, N, 3) kcal/mol/Å (the forces the integrator used)
    force_sd : (T, N, 3) kcal/mol/Å or None (a model without an interval, or the reference)
    potential_energy : (T,) kcal/mol (NaN without an energy model)
    kinetic_energy : (T,) kcal/mol;  temperature_K : (T,)
    settings : MDSettings
    stop_reason : one of :data:`STOP_REASONS`;  message : str, what happened in words
    wall_s : float — the dynamics' wall time;  ms_per_step : float
    """

    label: str
    z: np.ndarray
    steps: np.ndarray
    times_ps: np.ndarray
    positions: np.ndarray
    forces: np.ndarray
    force_sd: np.ndarray | None
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    temperature_K: np.ndarray
    settings: MDSettings
    stop_reason: str
    message: str
    wall_s: float
    ms_per_step: float

    @property
    def n_frames(self) -> int:
        return int(self.steps.size)

    @property
    def total_energy(self) -> np.ndarray:
        """E_pot + E_kin, (T,) kcal/mol (NaN without an energy model)."""
        return self.potential_energy + self.kinetic_energy

    @property
    def max_sd(self) -> np.ndarray | None:
        """Largest force-component sd of each frame, (T,) kcal/mol/Å."""
        return None if self.force_sd is None else self.force_sd.reshape(self.n_frames, -1).max(axis=1)

    def drift_per_ps(self) -> float:
        """Slope of the total energy against time, kcal/mol/ps (NVE with an energy; NaN otherwise).

        A run that fell apart has no drift to speak of (NaN).
        """
        e = self.total_energy
        if self.settings.ensemble != "nve" or self.n_frames < 3 or not np.all(np.isfinite(e)) \
                or self.stop_reason == "unstable":
            return float("nan")
        return float(np.polyfit(self.times_ps, e, 1)[0])

    def write_extxyz(self, target) -> None:
        """Write the frames as extended XYZ: positions Å, forces and force sds (``forces_sd``) in eV/Å.

        ASE's own units, so ``ase.io.read`` gives a usable trajectory; each frame's info carries the
        time (ps), step, potential energy (eV), temperature (K) and the largest sd (eV/Å).
        """
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        to_ev = 1.0 / EV_TO_KCAL
        frames = []
        max_sd = self.max_sd
        for k in range(self.n_frames):
            a = Atoms(numbers=self.z, positions=self.positions[k])
            e = self.potential_energy[k]
            a.calc = SinglePointCalculator(a, forces=self.forces[k] * to_ev,
                                           energy=float(e * to_ev) if np.isfinite(e) else None)
            if self.force_sd is not None:
                a.arrays["forces_sd"] = self.force_sd[k] * to_ev
                a.info["max_forces_sd"] = float(max_sd[k] * to_ev)
            a.info.update(time_ps=float(self.times_ps[k]), step=int(self.steps[k]),
                          temperature_K=float(self.temperature_K[k]), source=self.label)
            frames.append(a)
        write(target, frames, format="extxyz")

    def extxyz_text(self) -> str:
        buf = io.StringIO()
        self.write_extxyz(buf)
        return buf.getvalue()

    def summary(self) -> dict:
        """JSON-ready numbers of the run (no per-frame arrays)."""
        mx = self.max_sd
        return {
            "label": self.label, "frames": self.n_frames, "steps_done": int(self.steps[-1]) if self.n_frames else 0,
            "n_steps": self.settings.n_steps, "time_ps": float(self.times_ps[-1]) if self.n_frames else 0.0,
            "stop_reason": self.stop_reason, "message": self.message, "wall_s": self.wall_s,
            "ms_per_step": self.ms_per_step,
            "mean_temperature_K": float(np.mean(self.temperature_K)) if self.n_frames else float("nan"),
            "max_force_sd": float(np.max(mx)) if mx is not None and mx.size else None,
            "drift_kcal_mol_per_ps": self.drift_per_ps(),
            "settings": self.settings.to_dict(),
        }


# -- geometry checks -------------------------------------------------------------------------------------
def bonds_of(z, R) -> np.ndarray:
    """Bonded pairs (i < j) of one geometry: distance < BOND_SCALE × the sum of covalent radii. (K, 2)."""
    from ase.data import covalent_radii

    z = np.asarray(z)
    R = np.asarray(R, dtype=np.float64)
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    limit = BOND_SCALE * (covalent_radii[z][:, None] + covalent_radii[z][None])
    i, j = np.nonzero(np.triu(d < limit, 1))
    return np.stack([i, j], axis=1)


def bond_lengths(R, bonds) -> np.ndarray:
    """Lengths of ``bonds`` in each frame, (T, K) Å."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, *np.shape(R)[-2:])
    b = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    return np.linalg.norm(R[:, b[:, 0]] - R[:, b[:, 1]], axis=-1)


def _element(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]


def _unstable(z, R, F, bonds, start_lengths) -> str | None:
    """Why this frame means the run fell apart, or None."""
    if not (np.all(np.isfinite(R)) and np.all(np.isfinite(F))):
        return "the positions or forces became non-finite"
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    i, j = np.unravel_index(np.argmin(d), d.shape)
    if d[i, j] < MIN_DISTANCE:
        return (f"atoms {i} ({_element(z[i])}) and {j} ({_element(z[j])}) collided "
                f"({d[i, j]:.2f} Å < {MIN_DISTANCE} Å)")
    if bonds.size:
        ratio = bond_lengths(R, bonds)[0] / start_lengths
        k = int(np.argmax(ratio))
        if ratio[k] > BOND_BREAK_RATIO:
            a, b = bonds[k]
            return (f"the bond {a}–{b} ({_element(z[a])}–{_element(z[b])}) broke: {ratio[k]:.1f}× its start length "
                    f"(limit {BOND_BREAK_RATIO:g}×)")
    return None


# -- the run ---------------------------------------------------------------------------------------------
def xtb_calculator(charge: int = 0, unpaired: int = 0):
    """GFN2-xTB through tblite's ASE calculator (the reference of the bundled samples)."""
    from aff_app.io.simulate import _make_calculator

    return _make_calculator(charge, unpaired)


class _Stop(Exception):
    pass


def run_md(calc, z, R0, settings: MDSettings = MDSettings(), *, label: str = "model", with_sd: bool = True,
           with_energy: bool = True, threads: int | None = 1, sd_threads: int | None = None,
           progress: Progress | None = None,
           should_stop: ShouldStop | None = None, on_frame: OnFrame | None = None) -> MDRun:
    """Run NVE/NVT dynamics from ``R0`` with the ASE calculator ``calc``; keep every ``record_every``-th frame.

    Parameters
    ----------
    calc : ase Calculator
        Its ``forces`` drive the dynamics (eV/Å). With ``with_sd`` it must also implement
        ``forces_std`` (AFFCalculator over a GP), asked at recorded steps only.
    z : (N,) int;  R0 : (N, 3) Å
    settings : MDSettings
    label : str
        Names the run in plots and files.
    with_sd, with_energy : bool
        Record the force sd / the potential energy (each when ``calc`` implements it).
    threads : int or None
        Cap on the OpenMP/BLAS threads of the steps (``threadpoolctl``; None: no cap). Default 1: a
        step is a few products of some MB (the fast mean, eq. 26) or a small SCF (GFN2-xTB), where a
        second thread only spin-waits — on a busy two-core machine one xTB step took 400 ms with two
        threads against 3.7 ms with one, and one AFF frame 31 ms against 0.2 ms.
    sd_threads : int, optional
        Threads of the force sd at the recorded steps (default: every core, ``AFF_THREADS``): its
        triangular solves read the whole Cholesky factors and gain from a second thread (uracil,
        M = 1000: 38 ms against 52 ms).
    progress : callable(fraction, message), optional
        Called at every recorded frame; may raise :class:`Cancelled` (the run stops, frames kept).
    should_stop : callable() → bool, optional
        Asked at every recorded frame; True stops the run (frames kept).
    on_frame : callable(snapshot), optional
        Called at every recorded frame, before ``progress``, with a function that builds the
        :class:`MDRun` of the frames so far (``stop_reason='running'``): live plots, and a page that
        keeps what ran before a rerun can stop it. A function, so the copy is made only when used.

    Returns
    -------
    MDRun
        Never raises for a run that goes wrong after it started: the reason is in ``stop_reason``
        and ``message`` and every frame recorded before is there.

    Raises
    ------
    MDError
        A start the run cannot begin from (shapes, coincident atoms, a calculator that fails at R0).
    """
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    R0 = np.asarray(R0, dtype=np.float64)
    if R0.shape != (z.size, 3):
        raise MDError(f"the start geometry must have shape ({z.size}, 3), got {R0.shape}")
    if not np.all(np.isfinite(R0)):
        raise MDError("the start geometry has non-finite coordinates")
    if z.size < 2:
        raise MDError("MD needs a molecule of at least two atoms")
    props = set(getattr(calc, "implemented_properties", ["forces", "energy"]))
    with_sd = with_sd and "forces_std" in props
    with_energy = with_energy and "energy" in props
    atoms = Atoms(numbers=z, positions=R0, pbc=False)
    atoms.calc = calc
    bonds = bonds_of(z, R0)
    start_lengths = bond_lengths(R0, bonds)[0] if bonds.size else np.zeros(0)
    why0 = _unstable(z, R0, np.zeros_like(R0), bonds, start_lengths)
    if why0 is not None:
        raise MDError(f"cannot start from this geometry: {why0}")
    s = settings
    rng = np.random.default_rng(s.seed)
    if s.temperature_K > 0:
        # force_temp: exactly T at the start whatever the draw (a 12-atom draw scatters by ±25%)
        MaxwellBoltzmannDistribution(atoms, temperature_K=s.temperature_K, force_temp=True, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
    if s.ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=s.timestep_fs * ase_units.fs)
    else:
        # fixcm=False: ase 3.26's fixcm=True mass-weights the noise wrongly for unequal masses (sample_data README)
        dyn = Langevin(atoms, timestep=s.timestep_fs * ase_units.fs, temperature_K=s.temperature_K,
                       friction=s.friction_per_fs / ase_units.fs, fixcm=False, rng=rng)
    try:
        atoms.get_forces()  # a calculator that cannot start is the start's problem, said before any step
    except _calculation_errors() as exc:
        raise MDError(f"the calculator failed at the start geometry: {exc}") from exc

    rec: dict[str, list] = {k: [] for k in ("steps", "R", "F", "sd", "epot", "ekin", "T")}
    n_sd_threads = n_threads() if sd_threads is None else int(sd_threads)
    state: dict[str, Any] = {"reason": "completed", "message": "", "report_frame": None}
    to_kcal_force = EV_TO_KCAL  # eV/Å → kcal/mol/Å

    def record() -> None:
        i = dyn.nsteps
        if rec["steps"] and rec["steps"][-1] == i:  # ASE also calls observers when run() starts
            return
        R = atoms.get_positions()
        F = atoms.get_forces() * to_kcal_force  # cached: the step already computed them
        why = _unstable(z, R, F, bonds, start_lengths)
        if why is not None:
            state.update(reason="unstable", message=f"stopped at step {i} ({i * s.timestep_fs * 1e-3:.3g} ps): {why}. "
                                                    "The frames before it are kept.")
            raise _Stop
        sd = None
        if with_sd:
            with threadpool_limits(limits=n_sd_threads):
                sd = atoms.calc.get_property("forces_std", atoms) * to_kcal_force
        epot = atoms.get_potential_energy() * EV_TO_KCAL if with_energy else float("nan")
        rec["steps"].append(i)
        rec["R"].append(R)
        rec["F"].append(F)
        rec["sd"].append(sd)
        rec["epot"].append(epot)
        rec["ekin"].append(atoms.get_kinetic_energy() * EV_TO_KCAL)
        rec["T"].append(atoms.get_temperature())
        if sd is not None and s.sd_threshold is not None and float(np.max(sd)) > s.sd_threshold:
            k = np.unravel_index(int(np.argmax(sd)), sd.shape)
            state.update(reason="sd_threshold",
                         message=f"stopped at step {i} ({i * s.timestep_fs * 1e-3:.3g} ps): the force sd of atom {k[0]} "
                                 f"({_element(z[k[0]])}) reached {float(np.max(sd)):.3g} kcal/mol/Å, above the "
                                 f"threshold {s.sd_threshold:g} — the model is extrapolating here.")
            raise _Stop
        if state["report_frame"] is not None:
            state["report_frame"]()
        if progress is not None:
            progress(i / s.n_steps, f"{label}: step {i}/{s.n_steps} ({i * s.timestep_fs * 1e-3:.3g} ps)")
        if should_stop is not None and i < s.n_steps and should_stop():
            state.update(reason="cancelled", message=f"cancelled at step {i} of {s.n_steps}; the frames so far are kept.")
            raise _Stop

    t0 = time.perf_counter()
    clock = {"steps_from": t0}

    def build(reason: str, message: str) -> MDRun:
        n = len(rec["steps"])
        done = max(int(dyn.nsteps), 1)
        return MDRun(
            label=label, z=z, steps=np.asarray(rec["steps"], dtype=np.int64),
            times_ps=np.asarray(rec["steps"], dtype=np.float64) * s.timestep_fs * 1e-3,
            positions=np.asarray(rec["R"]).reshape(n, z.size, 3), forces=np.asarray(rec["F"]).reshape(n, z.size, 3),
            force_sd=np.asarray(rec["sd"]).reshape(n, z.size, 3) if with_sd else None,
            potential_energy=np.asarray(rec["epot"], dtype=np.float64),
            kinetic_energy=np.asarray(rec["ekin"], dtype=np.float64),
            temperature_K=np.asarray(rec["T"], dtype=np.float64), settings=s, stop_reason=reason,
            message=message, wall_s=time.perf_counter() - t0,
            ms_per_step=1e3 * (time.perf_counter() - clock["steps_from"]) / done)

    if on_frame is not None:
        def report_frame() -> None:
            on_frame(lambda: build("running", f"running: step {dyn.nsteps} of {s.n_steps}"))
    else:
        report_frame = None
    state["report_frame"] = report_frame
    dyn.attach(record, interval=s.record_every)
    limits = threadpool_limits(limits=threads) if threads is not None else contextlib.nullcontext()
    with limits:
        try:
            record()  # frame 0 (the start may already be past the threshold)
            clock["steps_from"] = time.perf_counter()
            dyn.run(s.n_steps)
        except _Stop:
            pass
        except Cancelled:
            state.update(reason="cancelled", message=f"cancelled at step {dyn.nsteps} of {s.n_steps}; the frames so "
                                                     "far are kept.")
        except _calculation_errors() as exc:
            # a calculator that cannot go where the run went (coincident atoms, an SCC that does not converge)
            # ends the run, not the session
            state.update(reason="unstable", message=f"stopped at step {dyn.nsteps}: the calculator failed ({exc}). "
                                                    "The frames before it are kept.")
    wall = time.perf_counter() - t0
    done = max(int(dyn.nsteps), 1)
    msg = state["message"] or (f"completed {s.n_steps} steps ({s.duration_ps:.3g} ps) in {wall:.1f} s "
                               f"({1e3 * (time.perf_counter() - clock['steps_from']) / done:.2f} ms per step).")
    return build(state["reason"], msg)


def _calculation_errors() -> tuple[type[BaseException], ...]:
    """Failures of a calculator at a geometry the run reached (not bugs): ours, ASE's, tblite's."""
    from ase.calculators.calculator import CalculationFailed

    errors: list[type[BaseException]] = [AFFError, FloatingPointError, np.linalg.LinAlgError, CalculationFailed]
    try:
        from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError

        errors += [TBLiteRuntimeError, TBLiteValueError]
    except ImportError:  # pragma: no cover - older tblite
        pass
    return tuple(errors)


def run_model_md(force_model, energy_model, R0, settings: MDSettings = MDSettings(), *, label: str = "model",
                 progress: Progress | None = None, should_stop: ShouldStop | None = None,
                 on_frame: OnFrame | None = None) -> MDRun:
    """:func:`run_md` with an :class:`~aff_app.calculator.AFFCalculator` over a trained model.

    ``settings.conservative`` takes the forces from the energy model (AFF's integrated energy); a model
    without an interval (the peers) runs without the sd and its threshold.
    """
    from aff_app.calculator import AFFCalculator

    if settings.conservative and not hasattr(energy_model, "forces"):
        raise MDError("conservative forces need AFF's integrated energy model (−∇Ê); this model has "
                      + ("no energy model" if energy_model is None else f"a {getattr(energy_model, 'label', 'different')} energy"))
    calc = AFFCalculator(force_model, energy_model, conservative=settings.conservative)
    return run_md(calc, force_model.z, R0, settings, label=label, progress=progress, should_stop=should_stop,
                  on_frame=on_frame)


def reference_settings(settings: MDSettings) -> MDSettings:
    """The reference run's settings: the model run's, without the sd threshold (xTB has no sd)."""
    from dataclasses import replace

    return replace(settings, sd_threshold=None, conservative=False)


@dataclass(frozen=True)
class BondTypeStats:
    """Length statistics of one kind of bond (e.g. C–H) in a model run and a reference run, Å."""

    kind: str
    n_bonds: int
    model_mean: float
    model_sd: float
    reference_mean: float
    reference_sd: float


@dataclass(eq=False)
class MDComparison:
    """A model run against a reference run from the same start: bond-length and energy distributions.

    Attributes
    ----------
    bonds : (K, 2) bonded pairs of the start geometry
    kinds : list of str, the element pair of each bond ("C–H")
    model_lengths, reference_lengths : (T, K), (T', K) Å
    model_energy, reference_energy : (T,), (T',) potential energy minus its mean, kcal/mol
        (the model and the reference may differ by a constant: rMD17's DFT against xTB)
    by_kind : list of BondTypeStats
    """

    bonds: np.ndarray
    kinds: list
    model_lengths: np.ndarray
    reference_lengths: np.ndarray
    model_energy: np.ndarray
    reference_energy: np.ndarray
    by_kind: list


def compare_runs(model: MDRun, reference: MDRun) -> MDComparison:
    """Bond-length and energy-fluctuation distributions of two runs of one molecule (bonds of the model run's start)."""
    if not np.array_equal(model.z, reference.z):
        raise MDError("the two runs are of different molecules")
    bonds = bonds_of(model.z, model.positions[0])
    kinds = ["–".join(sorted((_element(model.z[a]), _element(model.z[b])))) for a, b in bonds]
    lm, lr = bond_lengths(model.positions, bonds), bond_lengths(reference.positions, bonds)

    def fluct(e):
        return e - np.nanmean(e) if e.size and np.any(np.isfinite(e)) else e

    stats = []
    for kind in sorted(set(kinds)):
        cols = [k for k, x in enumerate(kinds) if x == kind]
        a, b = lm[:, cols].ravel(), lr[:, cols].ravel()
        stats.append(BondTypeStats(kind=kind, n_bonds=len(cols), model_mean=float(a.mean()), model_sd=float(a.std()),
                                   reference_mean=float(b.mean()), reference_sd=float(b.std())))
    return MDComparison(bonds=bonds, kinds=kinds, model_lengths=lm, reference_lengths=lr,
                        model_energy=fluct(model.potential_energy), reference_energy=fluct(reference.potential_energy),
                        by_kind=stats)
