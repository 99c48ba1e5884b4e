"""Held-out predictions of a trained model, their metrics, and files to download.

What the Predictions page and the learning curves share (no Streamlit here):

* :func:`select_test_frames` — the held-out frames, by the same rule as
  ``aff_app.workflows.pipeline.evaluate`` (the test frames recorded at training
  when the data is the training data, else frames that are not training
  frames, drawn with a seed);
* :func:`predict_held_out` — force predictions (mean, latent and observation
  standard deviations) and, with an energy model, energy predictions on those
  frames, as a :class:`HeldOut` record;
* :meth:`HeldOut.report` — the paper's metrics (method.md "What the paper
  reports"): force MAE/RMSE, PCI, LCI, L_norm, Δp = level − PCI, energy
  MAE/RMSE and energy PCI/LCI when the energy model gives intervals;
* :func:`predictions_file` — the one predictions file (extxyz or CSV) the app
  and the CLI write, and :func:`energy_csv`, the per-frame energies table.

Units: positions Å, forces kcal/mol/Å, energies kcal/mol (the extended XYZ
file uses ASE's eV and eV/Å, and says so in every comment line).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.special import ndtri  # Φ⁻¹; scipy.stats costs ~0.45 s to import

from aff_app import units
from aff_app.workflows import metrics
from aff_app.gp.energy import EnergyModel
from aff_app.gp.persistence import EnergyModelType, ForceModelType
from aff_app.gp.force import ForceModel
from aff_app.io.trajectory import Trajectory
from aff_app.workflows.training import SplitError, TrainTestOverlapError, UnlabelledDataError, check_atoms_match, training_positions_mask

__all__ = [
    "predict_structures",
    "HeldOut",
    "select_test_frames",
    "predict_held_out",
    "Predicted",
    "PREDICTION_KEYS",
    "predictions_file",
    "energy_csv",
    "CALIBRATION_LEVELS",
]

Progress = Callable[[float, str], None]

#: Nominal levels of the calibration curve (coverage against level).
CALIBRATION_LEVELS = tuple(np.round(np.linspace(0.05, 0.99, 48), 4).tolist())
KINDS = ("latent", "observation")


def _noop(fraction: float, message: str) -> None:
    return None


def _half_width(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(ndtri(0.5 + float(level) / 2.0))


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Predictions on held-out frames.

    Attributes
    ----------
    test_idx : ndarray of int, shape (B,)
        Frame indices into the trajectory, sorted.
    selection : str
        How they were chosen, in words.
    z : ndarray, shape (N,)
    R : ndarray, shape (B, N, 3), Å
    F_ref, F_mean : ndarray, shape (B, N, 3), kcal/mol/Å
    F_std : ndarray, shape (B, N, 3), kcal/mol/Å, or None
        Standard deviation of the latent (noise-free) force (None: means only
        were predicted, ``with_std=False``; the interval metrics are then None).
    F_std_obs : ndarray, shape (B, N, 3), kcal/mol/Å, or None
        Standard deviation of a new noisy observation (adds σ̂_i² λ).
    E_ref, E_mean, E_std : ndarray, shape (B,), kcal/mol, or None
        Reference and predicted energies (None without an energy model or
        without reference energies); ``E_std`` may be None when the energy
        model gives no interval.
    energy_model : str or None
        'energy GP' (conditioned on predicted forces, method.md) or
        'integrated force GP' (GDML recipe).
    predict_s : float
        Wall time of the predictions, s.
    """

    test_idx: np.ndarray
    selection: str
    z: np.ndarray
    R: np.ndarray
    F_ref: np.ndarray
    F_mean: np.ndarray
    F_std: np.ndarray | None
    F_std_obs: np.ndarray | None
    E_ref: np.ndarray | None = None
    E_mean: np.ndarray | None = None
    E_std: np.ndarray | None = None
    energy_model: str | None = None
    predict_s: float = 0.0

    @property
    def n_frames(self) -> int:
        return int(self.test_idx.size)

    @property
    def has_force_interval(self) -> bool:
        return self.F_std is not None

    @property
    def has_energy(self) -> bool:
        return self.E_mean is not None and self.E_ref is not None

    @property
    def has_energy_interval(self) -> bool:
        return self.has_energy and self.E_std is not None and bool(np.all(np.isfinite(self.E_std)))

    def force_std(self, kind: str = "latent") -> np.ndarray:
        """The standard deviation of ``kind`` ('latent' or 'observation'), (B, N, 3) kcal/mol/Å."""
        if kind not in KINDS:
            raise ValueError(f"kind must be 'latent' or 'observation', got {kind!r}")
        if self.F_std is None:
            raise ValueError("these predictions are means only (predicted with with_std=False)")
        return self.F_std if kind == "latent" else self.F_std_obs

    def force_interval(self, level: float = 0.95, kind: str = "latent") -> tuple[np.ndarray, np.ndarray]:
        """Central interval mean ± z·sd of each force component, each (B, N, 3) kcal/mol/Å."""
        h = _half_width(level) * self.force_std(kind)
        return self.F_mean - h, self.F_mean + h

    def energy_interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Central interval of each energy, each (B,) kcal/mol (needs :attr:`has_energy_interval`)."""
        if not self.has_energy_interval:
            raise ValueError("these predictions have no energy intervals")
        h = _half_width(level) * self.E_std
        return self.E_mean - h, self.E_mean + h

    def force_errors(self) -> np.ndarray:
        """|F̂ − F| per atom (Euclidean norm of the error vector), (B, N) kcal/mol/Å."""
        return np.linalg.norm(self.F_mean - self.F_ref, axis=-1)

    def calibration(self, levels: Sequence[float] = CALIBRATION_LEVELS, kind: str = "latent") -> dict:
        """Empirical coverage at nominal ``levels``: forces (kind's intervals) and, when possible, energies.

        Returns
        -------
        dict with ``levels`` (list), ``force`` (list of fractions) and
        ``energy`` (list, or None).
        """
        lv = [float(x) for x in levels]
        out = {"levels": lv, "force": metrics.coverage(self.F_ref, self.F_mean, self.force_std(kind), lv).tolist(),
               "energy": None}
        if self.has_energy_interval:
            out["energy"] = metrics.coverage(self.E_ref, self.E_mean, self.E_std, lv).tolist()
        return out

    def report(self, level: float = 0.95, kind: str = "latent") -> dict:
        """The paper's held-out metrics (Table I, Fig. 5) as a JSON-ready dict.

        Keys: ``n_test``, ``level``, ``kind``, ``force_mae``, ``force_rmse``,
        ``pci``, ``lci`` (kcal/mol/Å), ``l_norm``, ``delta_p``, and
        ``energy_mae``, ``energy_rmse`` (kcal/mol; None without energies),
        ``energy_pci``, ``energy_lci`` (None without energy intervals).
        """
        out = {
            "n_test": self.n_frames,
            "level": float(level),
            "kind": kind,
            "force_mae": metrics.mae(self.F_ref, self.F_mean),
            "force_rmse": metrics.rmse(self.F_ref, self.F_mean),
            "pci": None,
            "lci": None,
            "delta_p": None,
            "l_norm": None,
            "energy_mae": None,
            "energy_rmse": None,
            "energy_pci": None,
            "energy_lci": None,
        }
        if self.has_force_interval:
            lo, hi = self.force_interval(level, kind)
            out["pci"] = metrics.pci(self.F_ref, lo, hi)
            out["lci"] = metrics.lci(lo, hi)
            out["delta_p"] = metrics.delta_p(self.F_ref, lo, hi, level=level)
            try:
                out["l_norm"] = metrics.l_norm(lo, hi, self.F_ref)
            except metrics.MetricError:  # zero force range: undefined, never a number
                out["l_norm"] = None
        if self.has_energy:
            out["energy_mae"] = metrics.mae(self.E_ref, self.E_mean)
            out["energy_rmse"] = metrics.rmse(self.E_ref, self.E_mean)
            if self.has_energy_interval:
                elo, ehi = self.energy_interval(level)
                out["energy_pci"] = metrics.pci(self.E_ref, elo, ehi)
                out["energy_lci"] = metrics.lci(elo, ehi)
        return out


def select_test_frames(model: ForceModel, traj: Trajectory, *, n_test: int | None = None, seed: int = 0) -> tuple[np.ndarray, str]:
    """Held-out frames of ``traj`` for ``model``: ``(sorted indices, description)``.

    The rule of ``aff_app.workflows.pipeline.evaluate``: the test frames recorded
    at training when ``traj`` is the training data (same fingerprint) and
    ``n_test`` is None or their number; otherwise ``n_test`` frames (all when
    None) drawn with ``seed`` among the frames that are not training frames.

    Raises
    ------
    SplitError
        No held-out frame left, or more asked for than there are.
    """
    in_train = training_positions_mask(model, traj)
    same_data = model.record.data_fingerprint == traj.fingerprint
    recorded = model.record.test_idx if same_data else None
    if recorded and (n_test is None or int(n_test) == len(recorded)):
        return np.asarray(recorded, dtype=np.int64), "recorded at training"
    pool = np.flatnonzero(~in_train)
    if pool.size == 0:
        raise SplitError("every frame of the data is a training frame: there is nothing to test on")
    if n_test is None:
        return pool, f"all {pool.size} frames not used for training"
    n_test = int(n_test)
    if n_test < 1 or n_test > pool.size:
        raise SplitError(
            f"cannot draw {n_test} test frames: {traj.n_frames} frames minus {int(in_train.sum())} training "
            f"frames leaves {pool.size}; ask for between 1 and {pool.size}"
        )
    idx = np.sort(np.random.default_rng(seed).choice(pool, size=n_test, replace=False))
    return idx, f"{n_test} random frames not used for training (seed {seed})"


def predict_held_out(
    force_model: ForceModelType,
    traj: Trajectory,
    *,
    energy_model: EnergyModelType | None = None,
    n_test: int | None = None,
    test_idx: Sequence[int] | None = None,
    seed: int = 0,
    with_std: bool = True,
    progress: Progress | None = None,
) -> HeldOut:
    """Predict forces (and energies) on held-out frames of a labelled trajectory.

    Parameters
    ----------
    force_model : ForceModel
    traj : Trajectory
        Labelled data of the same molecule (same atoms, same order).
    energy_model : EnergyModel, IntegratedEnergyModel or SubsetEnergyModel, optional
        Its energies are predicted too when ``traj`` has energies. An
        ``EnergyModel`` conditions on the force prediction just made (not a
        second one).
    n_test, seed : see :func:`select_test_frames`.
    test_idx : sequence of int, optional
        Explicit test frames (refused when any is a training frame).
    with_std : bool
        Also the standard deviations (default). False: means only, for forces
        and energies (``F_std``, ``E_std`` None; no interval metrics).
    progress : callable(fraction, message), optional

    Returns
    -------
    HeldOut

    Raises
    ------
    UnlabelledDataError, AtomsMismatchError, SplitError, TrainTestOverlapError
    """
    import time

    progress = progress or _noop
    if not traj.has_labels:
        raise UnlabelledDataError(
            f"predictions on held-out frames need reference forces, but {traj.name or 'this trajectory'!r} has none"
        )
    check_atoms_match(force_model.z, traj.z, what="the loaded data")
    if test_idx is not None:
        idx = np.unique(np.asarray(test_idx, dtype=np.int64))
        if idx.size == 0 or idx.min() < 0 or idx.max() >= traj.n_frames:
            raise SplitError(f"test frames must be non-empty and lie in 0..{traj.n_frames - 1}")
        overlap = idx[training_positions_mask(force_model, traj)[idx]]
        if overlap.size:
            raise TrainTestOverlapError(
                f"{overlap.size} of the {idx.size} test frames were used for training (first: {overlap[:10].tolist()})"
            )
        selection = f"{idx.size} given frames"
    else:
        idx, selection = select_test_frames(force_model, traj, n_test=n_test, seed=seed)
    t0 = time.perf_counter()
    has_e = energy_model is not None and traj.E is not None
    share = 0.6 if has_e and energy_model.kind == "gp" else (0.8 if has_e else 1.0)
    R = traj.R[idx]
    fp = force_model.predict(R, return_std=with_std, progress=lambda f, m: progress(share * f, "forces: " + m))
    E_mean = E_std = E_ref = None
    kind = None
    if has_e:
        e_progress = lambda f, m: progress(share + (1 - share) * f, "energies: " + m)  # noqa: E731
        if isinstance(energy_model, EnergyModel):
            # the energy GP conditions on the predicted forces at x* (method.md "Energy prediction")
            ep = energy_model.predict(R, forces=fp, progress=e_progress)
        else:
            ep = energy_model.predict(R, return_std=with_std, progress=e_progress)
        kind = energy_model.label
        E_ref = np.asarray(traj.E[idx], dtype=np.float64)
        E_mean = np.asarray(ep.mean, dtype=np.float64)
        E_std = (None if not with_std or ep.std is None or not np.all(np.isfinite(ep.std))
                 else np.asarray(ep.std, dtype=np.float64))
    progress(1.0, "done")
    F_std = fp.std if with_std else None  # a mean-only prediction carries no sd to report
    F_std_obs = fp.std_observation() if with_std else None  # None, too, for a model without an interval
    arrays = [idx, R, traj.F[idx], fp.mean, F_std, F_std_obs, E_ref, E_mean, E_std]
    for a in arrays:
        if a is not None:
            a.setflags(write=False)
    return HeldOut(
        test_idx=idx, selection=selection, z=np.asarray(traj.z), R=R, F_ref=traj.F[idx], F_mean=fp.mean,
        F_std=F_std, F_std_obs=F_std_obs, E_ref=E_ref, E_mean=E_mean, E_std=E_std,
        energy_model=kind, predict_s=time.perf_counter() - t0,
    )


# -- downloads ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Predicted:
    """Predictions on any frames, for a file: what ``predict`` (CLI) and the Predictions page write.

    Arrays in internal units (Å, kcal/mol, kcal/mol/Å); B frames, N atoms.
    ``F_ref``/``E_ref`` are the file's labels (None for unlabelled
    structures); ``in_train`` marks frames the model trained on (None: not
    known, e.g. held-out frames only).
    """

    z: np.ndarray
    R: np.ndarray
    frames: np.ndarray
    F_mean: np.ndarray
    F_std: np.ndarray | None
    kind: str = "latent"
    E_mean: np.ndarray | None = None
    E_std: np.ndarray | None = None
    F_ref: np.ndarray | None = None
    E_ref: np.ndarray | None = None
    in_train: np.ndarray | None = None

    @classmethod
    def from_held_out(cls, held: HeldOut, kind: str = "latent") -> "Predicted":
        F_std = held.force_std(kind) if held.has_force_interval else None
        return cls(z=held.z, R=held.R, frames=held.test_idx, F_mean=held.F_mean, F_std=F_std,
                   kind=kind, E_mean=held.E_mean, E_std=held.E_std, F_ref=held.F_ref, E_ref=held.E_ref)


def predict_structures(model: ForceModelType, energy: EnergyModelType | None, traj: Trajectory, *,
                       progress: Callable[[float, str], None] | None = None, what: str | None = None) -> Predicted:
    """Forces, energies and their latent sds of a model on any structures (labels optional).

    What ``python -m aff_app predict`` and the Predictions page's "your own
    structures" section compute. Frames the model trained on are marked
    (``in_train``: their errors say nothing about the model). ``what`` names
    the structures in the refusal of another molecule (default: their name).

    Raises
    ------
    AtomsMismatchError
        ``traj`` is not the model's molecule (same atoms, same order).
    """
    progress = progress or _noop
    check_atoms_match(model.z, traj.z, what=what or f"the structures {traj.name or traj.provenance.source or ''!r}")
    share = 0.8 if energy is not None else 1.0
    pred = model.predict(traj.R, progress=lambda f, m: progress(share * f, m))
    epred = None
    if energy is not None:
        progress(share, "energies")
        # the energy GP conditions on the predicted forces at x* (method.md "Energy prediction")
        epred = energy.predict(traj.R, forces=pred)
    progress(1.0, "done")
    E_std = None if epred is None or epred.std is None or not np.all(np.isfinite(epred.std)) else epred.std
    return Predicted(
        z=traj.z, R=traj.R, frames=np.arange(traj.n_frames), F_mean=pred.mean, F_std=pred.std,
        E_mean=None if epred is None else epred.mean, E_std=E_std,
        F_ref=traj.F, E_ref=traj.E, in_train=training_positions_mask(model, traj),
    )


#: The one set of names a predictions file uses (extxyz arrays/info keys; CSV columns add the unit).
PREDICTION_KEYS = {"forces": "forces_pred", "forces_std": "forces_std", "energy": "energy_pred",
                   "energy_std": "energy_std"}


def predictions_file(pred: Predicted, fmt: str = "extxyz", *, energy_unit: str | None = None,
                     length_unit: str = "Å") -> bytes:
    """The predictions file: extended XYZ or CSV, in the units asked for.

    extxyz (default units eV and Å, as ASE expects): per frame, arrays
    ``forces_pred``, ``forces_std`` (the sd of ``pred.kind``); info
    ``energy_pred``, ``energy_std`` (when predicted), ``frame``,
    ``in_training_set`` (when known), ``interval_kind``, ``energy_unit``,
    ``length_unit``; the reference energy and forces, when the data has them,
    as calculator results (``ase.io.read`` gives them back as such).

    CSV (default kcal/mol and Å): one row per frame and atom: ``frame, atom,
    element, x, y, z, fx_pred…, fx_std…, fx_ref…`` (ref when known), the
    frame's ``E_pred``, ``E_std``, ``E_ref`` when known, and
    ``in_training_set`` when known; every column header names its unit.
    """
    import csv

    if fmt not in ("extxyz", "csv"):
        raise ValueError(f"format must be 'extxyz' or 'csv', got {fmt!r}")
    eu = energy_unit or ("eV" if fmt == "extxyz" else units.ENERGY_UNIT)
    lu = length_unit
    ff = units.force_factor(units.ENERGY_UNIT, units.LENGTH_UNIT, eu, lu)
    ef = units.energy_factor(units.ENERGY_UNIT, eu)
    lf = units.length_factor(units.LENGTH_UNIT, lu)
    B = pred.frames.size
    if fmt == "extxyz":
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        images = []
        for i in range(B):
            at = Atoms(numbers=pred.z, positions=pred.R[i] * lf)
            at.arrays[PREDICTION_KEYS["forces"]] = pred.F_mean[i] * ff
            if pred.F_std is not None:  # the peers predict means only
                at.arrays[PREDICTION_KEYS["forces_std"]] = pred.F_std[i] * ff
            at.info["frame"] = int(pred.frames[i])
            if pred.in_train is not None:
                at.info["in_training_set"] = bool(pred.in_train[i])
            if pred.F_std is not None:
                at.info["interval_kind"] = pred.kind
            at.info["energy_unit"] = eu
            at.info["length_unit"] = "Ang" if lu == "Å" else lu
            if pred.E_mean is not None:
                at.info[PREDICTION_KEYS["energy"]] = float(pred.E_mean[i] * ef)
                if pred.E_std is not None:
                    at.info[PREDICTION_KEYS["energy_std"]] = float(pred.E_std[i] * ef)
            results = {}
            if pred.F_ref is not None:
                results["forces"] = pred.F_ref[i] * ff
            if pred.E_ref is not None:
                results["energy"] = float(pred.E_ref[i] * ef)
            if results:  # reference labels as calculator results
                at.calc = SinglePointCalculator(at, **results)
            images.append(at)
        buf = io.StringIO()
        write(buf, images, format="extxyz")
        return buf.getvalue().encode()

    from ase.data import chemical_symbols

    fu = units.force_unit_label(eu, lu)
    std_name = "std" if pred.kind == "latent" else f"std_{pred.kind}"  # the latent sd is the default one
    header = ["frame", "atom", "element", f"x [{lu}]", f"y [{lu}]", f"z [{lu}]"]
    header += [f"f{c}_pred [{fu}]" for c in "xyz"]
    if pred.F_std is not None:
        header += [f"f{c}_{std_name} [{fu}]" for c in "xyz"]
    if pred.F_ref is not None:
        header += [f"f{c}_ref [{fu}]" for c in "xyz"]
    if pred.E_mean is not None:
        header.append(f"E_pred [{eu}]")
        if pred.E_std is not None:
            header.append(f"E_std [{eu}]")
    if pred.E_ref is not None:
        header.append(f"E_ref [{eu}]")
    if pred.in_train is not None:
        header.append("in_training_set")
    symbols = [chemical_symbols[int(a)] for a in pred.z]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    for i in range(B):
        tail: list = []
        if pred.E_mean is not None:
            tail.append(repr(float(pred.E_mean[i] * ef)))
            if pred.E_std is not None:
                tail.append(repr(float(pred.E_std[i] * ef)))
        if pred.E_ref is not None:
            tail.append(repr(float(pred.E_ref[i] * ef)))
        if pred.in_train is not None:
            tail.append(int(pred.in_train[i]))
        for a in range(len(symbols)):
            row: list = [int(pred.frames[i]), a, symbols[a]]
            row += [repr(float(v)) for v in pred.R[i, a] * lf]
            row += [repr(float(v)) for v in pred.F_mean[i, a] * ff]
            if pred.F_std is not None:
                row += [repr(float(v)) for v in pred.F_std[i, a] * ff]
            if pred.F_ref is not None:
                row += [repr(float(v)) for v in pred.F_ref[i, a] * ff]
            w.writerow(row + tail)
    return out.getvalue().encode()


def energy_csv(held: HeldOut) -> str:
    """One row per held-out frame: reference, predicted energy and its std (kcal/mol; std empty when none)."""
    if not held.has_energy:
        raise ValueError("these predictions have no energies")
    eu = units.ENERGY_UNIT
    out = io.StringIO()
    out.write(f"frame,E_ref [{eu}],E_pred [{eu}],E_std [{eu}]\n")
    for i, k in enumerate(held.test_idx):
        sd = "" if held.E_std is None else f"{held.E_std[i]:.10g}"
        out.write(f"{k},{held.E_ref[i]:.10g},{held.E_mean[i]:.10g},{sd}\n")
    return out.getvalue()
