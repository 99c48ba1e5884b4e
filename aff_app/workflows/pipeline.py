"""The one workflow: split → force fit → energy fit → evaluation → record → file.

The Train page, the CLI (``train``, ``evaluate``), the learning curves and the
reproduction all call these functions; none of them fits or scores a model
another way.

* :func:`fit` — a force model on given training frames and, when the data has
  energies, its energy model (the energy GP of method.md "Energy prediction"
  for AFF, the integrated force GP of "Modes that fall out of the same code"
  for GDML/sGDML), with one typed record (:class:`~aff_app.gp.record.FitRecord`)
  and the timings of each part;
* :func:`train` — the same after drawing the split (:func:`~aff_app.workflows.training.split_frames`)
  and finding the symmetry: what a user means by "train on M frames";
* :func:`evaluate` — predictions on held-out frames and the paper's metrics
  (:class:`~aff_app.workflows.predictions.HeldOut`, its ``report``);
* :func:`save` / :func:`load` — the one model file (``aff_app.gp.persistence``).

Units are the library's: Å, kcal/mol, kcal/mol/Å, s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from aff_app.gp import persistence
from aff_app.gp.budget import SOLVERS, ComputeBudgetError, check_budget, estimate_cost
from aff_app.gp.energy import EnergyModel, fit_energy_model
from aff_app.gp.integrated import fit_integrated_energy
from aff_app.gp.aff_energy import MIN_HELD_FRAMES, MIN_SUBSET_FRAMES, fit_subset_energy, subset_side, subset_size
from aff_app.gp.persistence import EnergyModelType, ForceModelType
from aff_app.gp.force import MODES, FactorizationError, ForceModel, ModelError, fit_force_model
from aff_app.gp.record import DataRecord, FitRecord, SplitRecord, Timings
from aff_app.io.trajectory import Trajectory
from aff_app.io.validation import check_label_scale
from aff_app.symmetry import SymmetryInfo
from aff_app.workflows.predictions import HeldOut, predict_held_out
from aff_app.workflows.training import (
    DEFAULT_SYMMETRY_FRAMES,
    AtomsMismatchError,
    SplitError,
    TrainingBudgetError,
    TrainingError,
    check_atoms_match,
    require_labels,
    resolve_symmetry,
    split_frames,
    training_positions_mask,
)
from aff_app.units import ENERGY_UNIT, FORCE_UNIT
from aff_app.workflows.kinds import ALL_MODES, MODE_LABELS, PEER_MODES, peer_cost, uses_symmetry

__all__ = ["TrainSettings", "Trained", "fit", "train", "train_model", "evaluate", "evaluate_model", "save", "load",
           "data_record"]

Progress = Callable[[float, str], None]
#: AFF's energy models: method.md "AFF's energy" (default) and "Energy prediction".
ENERGY_MODELS = ("integrated", "gp")

#: Share of the progress bar the force fit takes when an energy model follows.
FORCE_SHARE = 0.9


def _noop(fraction: float, message: str) -> None:
    return None


@dataclass(frozen=True)
class TrainSettings:
    """How to fit: the model, its hyperparameters, and whether to fit energies.

    Attributes
    ----------
    mode : {'aff', 'gdml', 'sgdml', 'sgdml-package', 'dcf'}
        The force GPs of method.md, or a peer (``aff_app.workflows.kinds``): the sgdml package
        trained through ``sgdml all`` (forces and energies), or the DCF-style network (forces).
    gamma, lam : float, optional
        Fix γ (1/Å) and/or λ; the others are searched by ``criterion``.
    criterion : {'likelihood', 'cv'}
    search_frames, search_fraction
        Size of the search subset: max(search_frames, search_fraction·M) frames
        (see :func:`aff_app.gp.force.fit_force_model`).
    energy : bool
        Also fit the energy model when the data has energies.
    energy_model : {'integrated', 'gp'}
        AFF's energy (GDML/sGDML always integrate their own force GP): 'integrated'
        (default), the sGDML force GP of a spread subset integrated and corrected by a GP on
        the other training energies (method.md "AFF's energy"; it needs 60 frames, below
        which the energy GP is fitted with a warning); 'gp', the energy GP conditioned on the
        forces at x* (method.md "Energy prediction").
    energy_side : int, optional
        Largest side 3·M_E·N of the integrated energy's subset kernel; default
        ``aff_app.gp.aff_energy.subset_side`` (follows the force fit's largest set kernel).
    energy_gamma, energy_lam : float, optional
        Fix the energy GP's range and nugget ('gp' only); None: its likelihood.
    keep_factors : bool
        Keep the Cholesky factors (False when the model is only written to disk).
    budget_bytes : int, optional
        Memory budget; default ``aff_app.gp.budget.default_budget_bytes()``.
    solver : {'auto', 'dense', 'iterative'}
        How the GP's PE-set systems are solved (:func:`aff_app.gp.force.fit_force_model`):
        'auto' (default) factors them densely when their kernels fit the memory budget and
        otherwise (AFF) uses conjugate gradients on the matrix-free kernel (method.md
        "Iterative path"); the peers ignore it.
    peer_timeout_s : float
        Wall-clock limit of the sgdml package's run.
    """

    mode: str = "aff"
    gamma: float | None = None
    lam: float | None = None
    criterion: str = "likelihood"
    search_frames: int = 100
    search_fraction: float = 0.25
    energy: bool = True
    energy_model: str = "integrated"
    energy_side: int | None = None
    energy_gamma: float | None = None
    energy_lam: float | None = None
    keep_factors: bool = True
    budget_bytes: int | None = None
    solver: str = "auto"
    peer_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.mode not in ALL_MODES:
            raise TrainingError(f"model must be one of {', '.join(ALL_MODES)}, got {self.mode!r}")
        if self.criterion not in ("likelihood", "cv"):
            raise TrainingError(f"criterion must be 'likelihood' or 'cv', got {self.criterion!r}")
        if self.solver not in SOLVERS:
            raise TrainingError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.solver == "iterative" and self.mode != "aff":
            raise TrainingError(f"the iterative solver fits AFF models, not {self.mode}")
        if self.energy_model not in ENERGY_MODELS:
            raise TrainingError(f"energy model must be one of {', '.join(ENERGY_MODELS)}, got {self.energy_model!r}")


@dataclass(eq=False)
class Trained:
    """A fitted force model, its energy model (or None) and what the fit had to say.

    ``force.record`` holds the provenance and the timings of every part
    (``record.timings``: symmetry, search, build, Cholesky, force, energy, total).
    """

    force: ForceModelType
    energy: EnergyModelType | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def record(self) -> FitRecord:
        return self.force.record

    @property
    def timings(self) -> Timings:
        return self.force.record.timings


def data_record(traj: Trajectory) -> DataRecord:
    """The provenance of ``traj`` as recorded with a model."""
    prov = traj.provenance
    return DataRecord(
        fingerprint=traj.fingerprint, name=traj.name, formula=traj.formula, n_frames=traj.n_frames,
        n_atoms=traj.n_atoms, source=prov.source, content_hash=prov.content_hash, label_set=prov.label_set,
        frames=prov.frames, energy_unit=prov.energy_unit, length_unit=prov.length_unit,
    )


def _budget_error(exc: ComputeBudgetError) -> TrainingBudgetError:
    return exc if isinstance(exc, TrainingBudgetError) else TrainingBudgetError(str(exc))


def fit(
    traj: Trajectory,
    train_idx: Sequence[int],
    settings: TrainSettings = TrainSettings(),
    *,
    symmetry: SymmetryInfo | None = None,
    seed: int = 0,
    record: FitRecord | None = None,
    valid_idx: Sequence[int] | None = None,
    progress: Progress | None = None,
    executor=None,
) -> Trained:
    """Fit the force model (and the energy model) on the frames ``train_idx`` of ``traj``.

    Parameters
    ----------
    traj : Trajectory
        Labelled data (positions Å, forces kcal/mol/Å, energies kcal/mol).
    train_idx : sequence of int
        Training frames (M ≥ 2).
    settings : TrainSettings
    symmetry : SymmetryInfo, optional
        PE sets and permutation group (AFF, sGDML); None: each atom its own
        set, plain kernel. GDML ignores it.
    seed : int
        Seed of the hyperparameter-search subsets.
    record : FitRecord, optional
        Provenance the caller knows (data, split, symmetry, symmetry time).
    valid_idx : sequence of int, optional
        Validation frames of the sgdml package's σ selection (default: up to
        ``PACKAGE_VALID_FRAMES`` frames drawn with ``seed`` among those neither
        trained nor recorded as test frames). The other models ignore it.
    progress : callable(fraction, message), optional
    executor : aff_app.parallel.Executor, optional
        Runs the independent parts of the GP force fit (the γ grid, the large PE sets) as
        tasks (:func:`aff_app.gp.force.fit_force_model`); the peers and the energy model ignore it.

    Returns
    -------
    Trained
        ``warnings`` says when the energy model could not be fitted (the force
        model is kept), the search ended on the edge of its range, or the
        labels are of implausible size (a unit mistake; ``check_label_scale``).

    Raises
    ------
    UnlabelledDataError, AtomsMismatchError, TrainingBudgetError, ModelError
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    require_labels(traj, "training")
    idx = np.asarray(train_idx, dtype=np.int64)
    s = settings
    if symmetry is not None and symmetry.n_atoms != traj.n_atoms:
        raise AtomsMismatchError(
            f"the symmetry record is for {symmetry.n_atoms} atoms but the data has {traj.n_atoms} ({traj.formula})"
        )
    if s.mode in PEER_MODES:
        return _fit_peer(traj, idx, s, seed=seed, record=record, valid_idx=valid_idx, progress=progress, t0=t0)
    kwargs: dict[str, Any] = {}
    if s.mode == "aff" and symmetry is not None:
        kwargs.update(pe_sets=list(symmetry.pe_sets), perms=symmetry.perms)
    elif s.mode == "sgdml" and symmetry is not None:
        kwargs.update(perms=symmetry.perms)
    with_energy = s.energy and traj.E is not None
    share = FORCE_SHARE if with_energy else 1.0
    try:
        force = fit_force_model(
            traj.R[idx], traj.F[idx], traj.z, mode=s.mode, gamma=s.gamma, lam=s.lam, criterion=s.criterion,
            search_frames=s.search_frames, search_fraction=s.search_fraction, keep_factors=s.keep_factors,
            train_idx=idx, budget_bytes=s.budget_bytes, seed=seed, record=record, solver=s.solver,
            progress=lambda f, m: progress(share * f, m), executor=executor, **kwargs,
        )
    except ComputeBudgetError as exc:
        raise _budget_error(exc) from None
    warnings: list[str] = []
    scale = check_label_scale(traj)
    if scale.plausible is False:  # a unit mistake survives the fit: say it where the model is shown
        warnings.append(f"The {scale.message[0].upper()}{scale.message[1:]}.")
    edge = force.record.search.edge_warning(force.gamma, force.lam)
    if edge:
        warnings.append(f"{edge[0].upper()}{edge[1:]}. The held-out error tells whether it matters; γ and λ set by "
                        "hand, or more training frames, change it.")
    energy = None
    t_energy = None
    if with_energy:
        progress(share, "fitting the energy model")
        te = time.perf_counter()
        e_progress = lambda f, m: progress(share + (1 - share) * f, "energy model: " + m)  # noqa: E731
        try:
            use_gp = s.energy_model == "gp"
            side = s.energy_side or subset_side(idx.size, [a.size for a in force.pe_sets])
            if s.mode == "aff" and not use_gp and subset_size(idx.size, traj.n_atoms, side) < MIN_SUBSET_FRAMES:
                use_gp = True
                warnings.append(f"{idx.size} training frames are too few for the integrated energy (it needs "
                                f"{MIN_SUBSET_FRAMES} for its subset and {MIN_HELD_FRAMES} to calibrate it): the energy GP was fitted instead.")
            if s.mode == "aff" and not use_gp:
                # method.md "AFF's energy": integrated sGDML forces on a spread subset + residual GP
                energy = fit_subset_energy(force, traj.R[idx], traj.E[idx], traj.F[idx], max_side=side,
                                           train_idx=idx, seed=seed, progress=e_progress)
            elif s.mode == "aff":
                # method.md "Energy prediction": the energy GP, conditioned on forces at x* and its neighbours
                energy = fit_energy_model(force, traj.R[idx], traj.E[idx], F=traj.F[idx], gamma=s.energy_gamma,
                                          lam=s.energy_lam, train_idx=idx, seed=seed, progress=e_progress)
            else:
                # GDML/sGDML: the energy their force GP implies, plus a constant (method.md "Modes that fall out of the same code")
                energy = fit_integrated_energy(force, traj.R[idx], traj.E[idx], progress=e_progress)
        except (ModelError, FactorizationError, np.linalg.LinAlgError) as exc:
            warnings.append(f"The energy model could not be fitted ({exc}); forces only.")
        t_energy = time.perf_counter() - te
    elif s.energy:
        warnings.append("The data has no energies: no energy model was fitted.")
    timings = force.record.timings
    timings.energy_s = t_energy
    timings.total_s = (timings.symmetry_s or 0.0) + (time.perf_counter() - t0)
    progress(1.0, "done")
    return Trained(force=force, energy=energy, warnings=warnings)


#: Validation frames of the sgdml package's σ selection when the caller names none.
PACKAGE_VALID_FRAMES = 200


def _validation_frames(traj: Trajectory, idx: np.ndarray, record: FitRecord | None, seed: int) -> np.ndarray:
    """Frames for the package's σ selection: neither training frames nor recorded test frames."""
    taken = np.zeros(traj.n_frames, dtype=bool)
    taken[idx] = True
    if record is not None and record.test_idx:
        taken[np.asarray(record.test_idx, dtype=np.int64)] = True
    pool = np.flatnonzero(~taken)
    if pool.size == 0:
        raise SplitError("the sgdml package selects σ on validation frames, but every frame is a training or test "
                         "frame: train on fewer frames, or record fewer test frames")
    n = min(PACKAGE_VALID_FRAMES, pool.size)
    return np.sort(np.random.default_rng(seed + 1).choice(pool, size=n, replace=False))


def _fit_peer(traj: Trajectory, idx: np.ndarray, s: TrainSettings, *, seed: int, record: FitRecord | None,
              valid_idx: Sequence[int] | None, progress: Progress, t0: float) -> Trained:
    """The peers (``aff_app.workflows.kinds``): the sgdml package, or the DCF-style network."""
    from aff_app import __version__

    rec = record if record is not None else FitRecord()
    rec.version, rec.mode, rec.n_train = __version__, s.mode, int(idx.size)
    warnings: list[str] = []
    scale = check_label_scale(traj)
    if scale.plausible is False:
        warnings.append(f"The {scale.message[0].upper()}{scale.message[1:]}.")
    energy = None
    if s.mode == "dcf":
        from aff_app.dcf import DCFSettings, fit_dcf

        rec.criterion = "validation loss (early stopping)"
        tf = time.perf_counter()
        force = fit_dcf(traj.R[idx], traj.F[idx], traj.z, train_idx=idx, settings=DCFSettings(seed=int(seed)),
                        progress=progress)
        rec.timings.force_s = time.perf_counter() - tf
        force.record = rec
        if s.energy and traj.E is not None:
            warnings.append("The DCF-style network predicts forces only (no energy derivative): no energy model.")
    else:
        from aff_app.peers.package_model import fit_package_model

        if traj.E is None:
            raise TrainingError("the sgdml package trains on energies and forces, but this data has no energies")
        try:
            check_budget(peer_cost(s.mode, idx.size, traj.n_atoms), s.budget_bytes, what="sgdml package fit")
        except ComputeBudgetError as exc:
            raise _budget_error(exc) from None
        valid = np.asarray(valid_idx, dtype=np.int64) if valid_idx is not None else _validation_frames(traj, idx, rec, seed)
        if np.intersect1d(valid, idx).size:
            raise SplitError("the validation frames of the sgdml package overlap its training frames")
        force = fit_package_model(traj.R[idx], traj.F[idx], traj.E[idx], traj.z, train_idx=idx,
                                  valid=(traj.R[valid], traj.F[valid], traj.E[valid]), record=rec,
                                  timeout_s=s.peer_timeout_s, name=traj.name or "data", progress=progress)
        energy = force.energy_model if s.energy else None
    timings = force.record.timings
    timings.total_s = (timings.symmetry_s or 0.0) + (time.perf_counter() - t0)
    progress(1.0, "done")
    return Trained(force=force, energy=energy, warnings=warnings)


def train(
    traj: Trajectory,
    *,
    n_train: int,
    n_test: int | None = None,
    seed: int = 0,
    settings: TrainSettings = TrainSettings(),
    symmetry: SymmetryInfo | None = None,
    n_symmetry_frames: int = DEFAULT_SYMMETRY_FRAMES,
    progress: Progress | None = None,
    executor=None,
) -> Trained:
    """Draw the split, find the symmetry, fit: "train on M random frames".

    Parameters
    ----------
    traj : Trajectory
        Labelled data.
    n_train : int
        M, training frames, drawn by :func:`~aff_app.workflows.training.split_frames` with ``seed``.
    n_test : int, optional
        Also draw and record this many test frames (default: every frame not
        used for training is a test frame; none is recorded).
    seed : int
        Seed of the split and of the hyperparameter-search subsets.
    settings : TrainSettings
    symmetry : SymmetryInfo, optional
        Permutations and PE sets; by default detected on up to
        ``n_symmetry_frames`` frames of ``traj`` (GDML uses none).
    progress : callable(fraction, message), optional
    executor : aff_app.parallel.Executor, optional
        Passed to :func:`fit` (independent parts of the force fit as tasks).

    Returns
    -------
    Trained
        ``force.record`` holds the data, split and symmetry; its timings count
        the symmetry search when it ran here.

    Raises
    ------
    UnlabelledDataError, SplitError, AtomsMismatchError, TrainingBudgetError,
    aff_app.gp.force.ModelError, aff_app.symmetry.SymmetryError
    """
    progress = progress or _noop
    mode = settings.mode
    require_labels(traj, "training")
    split = split_frames(traj.n_frames, n_train, n_test, seed=seed)
    if split.train.size < 2:
        raise SplitError(f"training needs at least 2 frames, got n_train = {split.train.size}")
    if mode != "aff":
        # one set of all atoms (or a peer): the memory need is known before the symmetry search
        cost = (peer_cost(mode, split.train.size, traj.n_atoms) if mode in PEER_MODES
                else estimate_cost(split.train.size, [traj.n_atoms]))
        try:
            check_budget(cost, settings.budget_bytes, what=f"{MODE_LABELS[mode]} fit")
        except ComputeBudgetError as exc:
            raise _budget_error(exc) from None
    t_sym = 0.0
    if not uses_symmetry(mode):
        # GDML uses none; the package searches its own permutations; the network is equivariant by construction
        symmetry = None
    elif symmetry is None:
        ts = time.perf_counter()
        symmetry = resolve_symmetry(traj, n_samples=n_symmetry_frames, seed=seed,
                                    progress=lambda f, msg: progress(0.1 * f, "symmetry: " + msg))
        t_sym = time.perf_counter() - ts
    progress(0.1, "symmetry done" if symmetry is not None else f"no symmetry record ({MODE_LABELS[mode]})")
    record = FitRecord(
        data=data_record(traj),
        split=SplitRecord(seed=int(seed), n_frames=traj.n_frames, train=tuple(split.train.tolist()),
                          test=None if n_test is None else tuple(split.test.tolist()),
                          test_rule="all frames outside train" if n_test is None
                          else f"{n_test} random frames outside train"),
        symmetry=None if symmetry is None else symmetry.to_dict(),
        timings=Timings(symmetry_s=t_sym),
    )
    return fit(traj, split.train, settings, symmetry=symmetry, seed=seed, record=record,
               progress=lambda f, m: progress(0.1 + 0.9 * f, m), executor=executor)


def train_model(traj: Trajectory, *, model: str = "aff", n_train: int, seed: int = 0, n_test: int | None = None,
                gamma: float | None = None, lam: float | None = None, criterion: str = "likelihood",
                symmetry: SymmetryInfo | None = None, n_symmetry_frames: int = DEFAULT_SYMMETRY_FRAMES,
                budget_bytes: int | None = None, progress: Progress | None = None,
                keep_factors: bool = True) -> ForceModel:
    """:func:`train` for the force model alone (no energy model), with the settings as keywords."""
    settings = TrainSettings(mode=model, gamma=gamma, lam=lam, criterion=criterion, energy=False,
                             keep_factors=keep_factors, budget_bytes=budget_bytes)
    return train(traj, n_train=n_train, n_test=n_test, seed=seed, settings=settings, symmetry=symmetry,
                 n_symmetry_frames=n_symmetry_frames, progress=progress).force


def evaluate(
    model: Trained | ForceModel,
    traj: Trajectory,
    *,
    energy: EnergyModelType | None = None,
    test_idx: Sequence[int] | None = None,
    n_test: int | None = None,
    seed: int = 0,
    with_std: bool = True,
    progress: Progress | None = None,
) -> HeldOut:
    """Predict held-out frames of ``traj``: forces, their sd and, with an energy model, energies.

    Test frames: ``test_idx`` (refused when any is a training frame); else
    the frames drawn at training when ``traj`` is the training data and
    ``n_test`` is None or their number; else ``n_test`` frames drawn with
    ``seed`` (all when None) among the frames the model did not train on
    (:func:`~aff_app.workflows.predictions.select_test_frames`). Score with
    ``HeldOut.report(level, kind)``.

    ``with_std=False`` predicts means only (no intervals: cheaper for GDML and
    sGDML, whose single kernel makes each sd a solve with 3N right-hand sides).
    """
    force = model.force if isinstance(model, Trained) else model
    if energy is None and isinstance(model, Trained):
        energy = model.energy
    return predict_held_out(force, traj, energy_model=energy, test_idx=test_idx, n_test=n_test, seed=seed,
                            with_std=with_std, progress=progress)


def save(trained: Trained, path) -> None:
    """Write the model file (force model, and its energy model when there is one)."""
    persistence.save_model(path, trained.force, trained.energy)


def load(source, *, where: str | None = None) -> Trained:
    """Read a model file (a path or its bytes) written by :func:`save`, the app or an older version."""
    force, energy = persistence.load_model(source, where=where)
    return Trained(force=force, energy=energy)



def evaluate_model(
    model: Trained | ForceModel,
    traj: Trajectory,
    *,
    energy: EnergyModelType | None = None,
    n_test: int | None = None,
    test_idx: Sequence[int] | None = None,
    seed: int = 0,
    level: float = 0.95,
    kind: str = "latent",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` and its report as one JSON-ready dict (the CLI's ``evaluate``).

    Returns
    -------
    dict
        ``HeldOut.report`` (force MAE/RMSE, PCI, LCI, L_norm, Δp; energy
        MAE/RMSE, energy PCI/LCI when there is an energy model; fractions, not
        percent) plus ``model``, ``n_train``, ``interval`` (= kind),
        ``force_max_abs_error``, ``reference_force_std``, ``energy_model``,
        ``same_data_as_training``, ``n_training_frames_excluded``,
        ``test_selection``, ``test_idx`` and ``units``.

    Raises
    ------
    UnlabelledDataError, AtomsMismatchError, TrainTestOverlapError, SplitError, TrainingError
    """
    force = model.force if isinstance(model, Trained) else model
    if not 0.0 < float(level) < 1.0:
        raise TrainingError(f"level must lie in (0, 1), got {level}")
    if kind not in ("latent", "observation"):
        raise TrainingError(f"interval kind must be 'latent' or 'observation', got {kind!r}")
    require_labels(traj, "evaluation")
    check_atoms_match(force.z, traj.z, what="the data")
    held = evaluate(model, traj, energy=energy, test_idx=test_idx, n_test=n_test, seed=seed, progress=progress)
    in_train = training_positions_mask(force, traj)
    return {
        "model": force.mode,
        "n_train": force.n_train,
        **held.report(level, kind),
        "interval": kind,
        "force_max_abs_error": float(np.max(np.abs(held.F_mean - held.F_ref))),
        "reference_force_std": float(np.std(held.F_ref)),
        "energy_model": held.energy_model,
        "same_data_as_training": force.record.data_fingerprint == traj.fingerprint,
        "n_training_frames_excluded": int(in_train.sum()),
        "test_selection": held.selection,
        "test_idx": held.test_idx.tolist(),
        "units": {"force": FORCE_UNIT, "energy": ENERGY_UNIT},
    }
