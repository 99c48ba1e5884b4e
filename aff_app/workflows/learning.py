"""Learning curves (the paper's Fig. 3 and Fig. 5): accuracy, cost and interval quality against M.

For each chosen model (AFF, GDML, sGDML, and the peers: the sgdml package and the
DCF-style network, ``aff_app.workflows.kinds``) and training size M, a force model is
fitted on the first M frames of one seeded training pool and evaluated on one
fixed set of test frames, so that every point of every curve is tested on
the same held-out frames and the training sets are nested (the M = 400 set
contains the M = 200 set) — the protocol of the paper ("under the same
training, validation and testing set").

Before anything is fitted, :func:`plan_learning_curve` checks every (model,
M) against the memory budget with ``aff_app.gp.budget.estimate_cost``; refused
points become rows with ``status='over budget'`` and a note, never a crash.

No Streamlit here; a ``progress(fraction, message)`` callback reports on the
whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from aff_app.gp.budget import (
    ComputeBudgetError,
    CostEstimate,
    TimeEstimate,
    check_budget,
    default_budget_bytes,
    estimate_cost,
    estimate_time,
)
from aff_app.gp.force import MODES, FactorizationError, ModelError
from aff_app.parallel import Executor, SerialExecutor, Task
from aff_app.workflows import pipeline
from aff_app.workflows.pipeline import TrainSettings
from aff_app.workflows.kinds import ALL_MODES, MODE_LABELS, PEER_MODES, peer_cost, uses_symmetry
from aff_app.peers.sgdml import PeerError
from aff_app.dcf import DCFError
from aff_app.workflows.metrics import finite_or_none
from aff_app.symmetry import SymmetryInfo
from aff_app.io.trajectory import Trajectory
from aff_app.workflows.training import SplitError, TrainingError, UnlabelledDataError

__all__ = [
    "LearningCurveError",
    "CurvePoint",
    "set_sizes_for",
    "cost_for",
    "learning_split",
    "plan_learning_curve",
    "learning_curve",
    "curve_point",
    "ROW_KEYS",
]

Progress = Callable[[float, str], None]

#: Keys of every row :func:`learning_curve` returns.
ROW_KEYS = (
    "model", "mode", "M", "status", "note", "force_mae", "force_rmse", "energy_mae", "train_s", "energy_train_s",
    "pci", "lci", "l_norm", "delta_p", "gamma", "lam", "n_test", "estimate_GB", "estimate_s", "predict_ms",
)


class LearningCurveError(TrainingError):
    """A learning-curve request that cannot run at all (bad sizes, models or data)."""


def _noop(fraction: float, message: str) -> None:
    return None


def set_sizes_for(mode: str, n_atoms: int, symmetry: SymmetryInfo | None) -> tuple[list[int], int]:
    """PE-set sizes l_i and number of permutations S a fit of ``mode`` uses.

    AFF: the symmetry's PE sets (one set per atom without a symmetry) and its
    group; GDML: one set of all atoms, no permutations; sGDML: one set of all
    atoms and the group (method.md "Modes that fall out of the same code").
    """
    if mode not in ALL_MODES:
        raise LearningCurveError(f"model must be one of {', '.join(ALL_MODES)}, got {mode!r}")
    n_perms = 1 if symmetry is None else int(len(symmetry.perms))
    if mode == "aff":
        sizes = [1] * n_atoms if symmetry is None else [int(len(s)) for s in symmetry.pe_sets]
        return sizes, n_perms
    if mode == "gdml":
        return [n_atoms], 1
    return [n_atoms], n_perms


def cost_for(mode: str, n_train: int, n_atoms: int, symmetry: SymmetryInfo | None, *,
             solver: str = "dense") -> CostEstimate:
    """``estimate_cost`` of one fit: Σ(3 M l_i)³/3 flops, peak memory, rough seconds (the peers': ``peer_cost``).

    ``solver``: AFF's path ('dense', 'iterative', or 'auto': iterative when the dense kernels exceed the
    budget, as ``TrainSettings.solver`` decides); GDML/sGDML are always dense.
    """
    sizes, n_perms = set_sizes_for(mode, n_atoms, symmetry)
    if mode in PEER_MODES:
        return peer_cost(mode, n_train, n_atoms, n_perms)
    return estimate_cost(int(n_train), sizes, n_perms=n_perms, solver=solver if mode == "aff" else "dense",
                         n_atoms=int(n_atoms))


def time_for(mode: str, n_train: int, n_atoms: int, symmetry: SymmetryInfo | None, *, search: bool, energy: bool,
             n_test: int, energy_model: str = "integrated", solver: str = "dense") -> TimeEstimate:
    """``estimate_time`` of training one model and predicting ``n_test`` held-out frames.

    ``energy_model``: AFF's (``TrainSettings.energy_model``); the integrated one adds its subset's
    sGDML fit (M_E frames of ``aff_app.gp.aff_energy.subset_size``).
    """
    from aff_app.gp.aff_energy import MIN_SUBSET_FRAMES, subset_side, subset_size

    cost = cost_for(mode, n_train, n_atoms, symmetry, solver=solver)
    if mode in PEER_MODES:
        # the peers' own estimate is the whole fit; their held-out predictions are means only
        return TimeEstimate(search_s=0.0, fit_s=cost.seconds, energy_s=0.0, held_out_s=2e-3 * int(n_test))
    subset = None
    if mode == "aff" and energy and energy_model == "integrated":
        m_e = subset_size(int(n_train), int(n_atoms), subset_side(n_train, cost.set_sizes))
        if m_e >= MIN_SUBSET_FRAMES:
            subset = cost_for("sgdml", m_e, n_atoms, symmetry)
    return estimate_time(cost, n_atoms, search=search, energy=energy, n_test=n_test, energy_subset=subset)


@dataclass(frozen=True, eq=False)
class CurvePoint:
    """One planned (model, M) point: its cost and whether the budget allows it."""

    mode: str
    n_train: int
    estimate: CostEstimate
    allowed: bool
    note: str

    @property
    def label(self) -> str:
        return MODE_LABELS[self.mode]


def learning_split(n_frames: int, sizes: Sequence[int], n_test: int, *, seed: int = 0) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Fixed test frames and nested training sets from one seeded permutation.

    The permutation of ``numpy.random.default_rng(seed)`` gives the test frames
    first (its first ``n_test`` entries) and then the training pool; the
    training set of size M is the first M frames of the pool.

    Returns
    -------
    test : ndarray of int, shape (n_test,), sorted
    train : dict M -> sorted ndarray of int, shape (M,)

    Raises
    ------
    LearningCurveError
        Sizes below 2, or the largest size plus the test frames exceed the trajectory.
    """
    sizes = sorted({int(m) for m in sizes})
    if not sizes:
        raise LearningCurveError("choose at least one training size M")
    if sizes[0] < 2:
        raise LearningCurveError(f"training sizes must be at least 2, got {sizes[0]}")
    if int(n_test) < 1:
        raise LearningCurveError(f"the number of test frames must be at least 1, got {n_test}")
    if sizes[-1] + int(n_test) > n_frames:
        raise LearningCurveError(
            f"M = {sizes[-1]} training frames plus {n_test} test frames exceed the {n_frames} frames of the data: "
            f"use M ≤ {n_frames - int(n_test)} or fewer test frames"
        )
    perm = np.random.default_rng(seed).permutation(n_frames).astype(np.int64)
    test = np.sort(perm[: int(n_test)])
    pool = perm[int(n_test):]
    return test, {m: np.sort(pool[:m]) for m in sizes}


def plan_learning_curve(
    n_atoms: int,
    models: Sequence[str],
    sizes: Sequence[int],
    *,
    symmetry: SymmetryInfo | None = None,
    budget_bytes: int | None = None,
) -> list[CurvePoint]:
    """Every (model, M) point with its cost, ``allowed=False`` when it exceeds the memory budget."""
    budget = default_budget_bytes() if budget_bytes is None else int(budget_bytes)
    if not models:
        raise LearningCurveError("choose at least one model")
    points = []
    for mode in models:
        for m in sorted({int(s) for s in sizes}):
            est = cost_for(mode, m, n_atoms, symmetry)
            try:
                check_budget(est, budget, what=f"{MODE_LABELS.get(mode, mode)} fit")
            except ComputeBudgetError:
                note = (f"refused: needs about {est.peak_bytes / 2**30:.2f} GB, the budget is "
                        f"{budget / 2**30:.2f} GB")
                points.append(CurvePoint(mode, m, est, False, note))
                continue
            points.append(CurvePoint(mode, m, est, True, ""))
    return points


def _empty_row(point: CurvePoint, n_test: int) -> dict[str, Any]:
    row = {k: None for k in ROW_KEYS}
    row.update(model=point.label, mode=point.mode, M=point.n_train, n_test=int(n_test),
               estimate_GB=point.estimate.peak_bytes / 2**30, estimate_s=point.estimate.seconds,
               status="over budget" if not point.allowed else "pending", note=point.note)
    return row


def curve_point(traj: Trajectory, idx: np.ndarray, test: np.ndarray, valid: np.ndarray | None,
                settings: TrainSettings, symmetry: SymmetryInfo | None, *, seed: int = 0, with_std: bool = True,
                level: float = 0.95, kind: str = "latent", progress: Progress | None = None) -> dict[str, Any]:
    """Fit one (model, M) point on frames ``idx`` and score it on ``test``: the row's new values.

    A module-level function of plain inputs, so that it runs as a task anywhere
    (:mod:`aff_app.parallel`). A fit that fails for a known reason (budget, factorisation,
    the peers' own errors) gives ``status='failed'`` and the reason as ``note``.
    """
    job_progress = progress or _noop
    try:
        if settings.mode == "sgdml-package" and valid is None:
            raise SplitError("no frame is left outside the training and test frames for the package's σ "
                             "validation: use a smaller largest M or fewer test frames")
        trained = pipeline.fit(traj, idx, settings, symmetry=symmetry, seed=seed, valid_idx=valid,
                               progress=lambda f, m: job_progress(0.6 * f, m))
        held = pipeline.evaluate(trained, traj, test_idx=test, with_std=with_std,
                                 progress=lambda f, m: job_progress(0.6 + 0.4 * f, m))
        rep = held.report(level, kind)
    except (ComputeBudgetError, FactorizationError, ModelError, SplitError, PeerError, TrainingError, DCFError,
            np.linalg.LinAlgError) as exc:
        return {"status": "failed", "note": str(exc)}
    fm, t = trained.force, trained.timings
    return dict(
        status="ok", force_mae=rep["force_mae"], force_rmse=rep["force_rmse"], energy_mae=rep["energy_mae"],
        train_s=t.force_s, energy_train_s=t.energy_s, pci=rep["pci"], lci=rep["lci"], l_norm=rep["l_norm"],
        delta_p=rep["delta_p"], gamma=finite_or_none(fm.gamma), lam=finite_or_none(fm.lam),
        predict_ms=1e3 * held.predict_s / max(held.n_frames, 1),
    )


def learning_curve(
    traj: Trajectory,
    models: Sequence[str],
    sizes: Sequence[int],
    *,
    n_test: int = 200,
    seed: int = 0,
    symmetry: SymmetryInfo | None = None,
    gamma: float | None = None,
    lam: float | None = None,
    criterion: str = "likelihood",
    with_energy: bool = True,
    level: float = 0.95,
    kind: str = "latent",
    budget_bytes: int | None = None,
    with_std: bool = True,
    progress: Progress | None = None,
    on_point: Callable[[list[dict[str, Any]]], None] | None = None,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Fit and evaluate every (model, M); one row per point.

    Parameters
    ----------
    traj : Trajectory
        Labelled data (Å, kcal/mol, kcal/mol/Å).
    models : sequence of {'aff', 'gdml', 'sgdml', 'sgdml-package', 'dcf'}
    sizes : sequence of int
        Training sizes M.
    n_test : int
        Test frames, the same for every point (see :func:`learning_split`).
    seed : int
        Seed of the split and of the hyperparameter-search subsets.
    symmetry : SymmetryInfo, optional
        PE sets and permutation group for AFF and sGDML (None: each atom its
        own set, plain kernel).
    gamma, lam : float, optional
        Fix γ (1/Å) and/or λ; the others are searched by ``criterion``
        ('likelihood' or 'cv') at every point.
    with_energy : bool
        Also fit an energy model (AFF's integrated energy, the energy GP below 60 frames; the integrated force GP
        for GDML/sGDML) on the training frames' energies when the data has them.
    level, kind : interval level and kind ('latent' or 'observation') of PCI, LCI.
    budget_bytes : int, optional
        Memory budget (default ``aff_app.gp.budget.default_budget_bytes()``).
    with_std : bool
        Predict the held-out sds (default; PCI, LCI). False: means only, for every model alike
        (the benchmarks' thousands of test frames at large M, where the sds cost minutes).
    progress : callable(fraction, message), optional
    on_point : callable(rows), optional
        Called after every point with a copy of all rows so far (points not yet run have status
        'pending'): a caller that is cancelled keeps the finished points. Points arrive in the
        order of the curve, also from a cluster.
    executor : aff_app.parallel.Executor, optional
        Where the points run (default: one after the other here). A Dask executor
        (:func:`aff_app.parallel.open_executor`) fits them in parallel, with the same results; progress
        then moves once per finished point.

    Returns
    -------
    list of dict
        Keys :data:`ROW_KEYS`: ``model`` (label), ``mode``, ``M``, ``status``
        ('ok', 'over budget' or 'failed'), ``note``, ``force_mae``,
        ``force_rmse`` (kcal/mol/Å), ``energy_mae`` (kcal/mol or None),
        ``train_s`` (force fit, hyperparameter search included),
        ``energy_train_s``, ``pci``, ``lci`` (kcal/mol/Å), ``l_norm``,
        ``delta_p`` (= level − PCI), ``gamma``, ``lam``, ``n_test``,
        ``estimate_GB``, ``estimate_s``, ``predict_ms`` (held-out prediction per frame: forces with
        their sd and energies for the GPs, means for the peers). Models in the order given, M ascending.
        The peers have no interval (``pci``, ``lci`` None); the DCF-style network no energy.

    Raises
    ------
    LearningCurveError
        No models, bad sizes, or sizes that do not fit the data.
    UnlabelledDataError
        The trajectory has no forces.
    aff_app.parallel.TaskFailedError
        (Dask only) a point failed for an unexpected reason; the finished points were passed to ``on_point``.
    """
    progress = progress or _noop
    if not traj.has_labels:
        raise UnlabelledDataError("learning curves need a trajectory with energies and forces")
    models = list(dict.fromkeys(models))
    for mode in models:
        if mode not in ALL_MODES:
            raise LearningCurveError(f"model must be one of {', '.join(ALL_MODES)}, got {mode!r}")
    if symmetry is not None and symmetry.n_atoms != traj.n_atoms:
        raise LearningCurveError(f"the symmetry is for {symmetry.n_atoms} atoms but the data has {traj.n_atoms}")
    test, train_sets = learning_split(traj.n_frames, sizes, n_test, seed=seed)
    # the package selects σ on validation frames: the same ones at every M, outside every training set and the test
    valid = None
    if "sgdml-package" in models:
        unused = np.setdiff1d(np.arange(traj.n_frames), np.union1d(test, train_sets[max(train_sets)]))
        if unused.size:
            valid = np.sort(np.random.default_rng(seed + 1).choice(
                unused, size=min(pipeline.PACKAGE_VALID_FRAMES, unused.size), replace=False))
    points = plan_learning_curve(traj.n_atoms, models, sizes, symmetry=symmetry, budget_bytes=budget_bytes)
    rows = [_empty_row(p, test.size) for p in points]
    # one task per allowed point, weighted by its estimated cost so the bar moves evenly; the
    # trajectory is sent to a cluster once and every task names it
    data = executor.scatter(traj) if executor is not None else traj
    tasks, where = [], []
    for i, p in enumerate(points):
        if not p.allowed:
            continue
        settings = TrainSettings(mode=p.mode, gamma=gamma, lam=lam, criterion=criterion, energy=with_energy,
                                 budget_bytes=budget_bytes)
        tasks.append(Task(name=f"{p.label} M={p.n_train}", fn=curve_point,
                          args=(data, train_sets[p.n_train], test, valid, settings,
                                symmetry if uses_symmetry(p.mode) else None),
                          kwargs=dict(seed=seed, with_std=with_std, level=level, kind=kind),
                          progress_kw="progress", weight=max(p.estimate.seconds, 1e-3)))
        where.append(i)

    def arrived(k: int, update: dict[str, Any]) -> None:
        rows[where[k]].update(update)
        if on_point is not None:
            on_point([dict(r) for r in rows])

    (executor or SerialExecutor()).run(tasks, on_result=arrived, progress=progress)
    progress(1.0, "learning curve done")
    return rows
