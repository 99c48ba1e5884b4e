"""Train and evaluate force models on a trajectory: the layer the CLI and the Train page share.

The pieces, in the order a user meets them:

* :func:`split_frames` draws disjoint training / validation / test frame
  indices from one seed (rMD17's frames come from one MD run, so held-out
  frames must never be training frames, see ``../shared/data/README.md``).
* :func:`resolve_symmetry` finds the permutation group and PE sets of the data
  (``aff_app.symmetry``), or applies the user's PE sets.
* :func:`train_model` fits AFF, GDML or sGDML (``aff_app.gp.force``) and
  records where the model came from in ``model.info``: the data fingerprint,
  source, label set, split, seed, symmetry and timings.
* :func:`evaluate_model` predicts held-out frames and reports the force MAE,
  RMSE, PCI (share of force components inside their interval) and LCI (mean
  interval length), method.md "What the paper reports".

Units are the library's internal ones: Å and kcal/mol/Å.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from aff_app.gp.budget import ComputeBudgetError, check_budget, estimate_cost
from aff_app.gp.force import MODES, ForceModel, fit_force_model
from aff_app.symmetry import SymmetryInfo, detect_symmetry, parse_pe_sets, user_symmetry
from aff_app.io.trajectory import Trajectory
from aff_app.units import FORCE_UNIT

__all__ = [
    "TrainingError",
    "SplitError",
    "UnlabelledDataError",
    "AtomsMismatchError",
    "TrainTestOverlapError",
    "TrainingBudgetError",
    "Split",
    "split_frames",
    "formula_of",
    "check_atoms_match",
    "resolve_symmetry",
    "train_model",
    "training_positions_mask",
    "evaluate_model",
]

Progress = Callable[[float, str], None]

#: Frames the symmetry search samples by default (method.md: the sgdml reference uses 200).
DEFAULT_SYMMETRY_FRAMES = 200
#: Positions are compared on this grid (Å) when looking for training frames in other data.
POSITION_MATCH_TOLERANCE = 1e-6


class TrainingError(ValueError):
    """A training or evaluation request that cannot be carried out (the message says why)."""


class SplitError(TrainingError):
    """Frame counts that do not fit the trajectory."""


class UnlabelledDataError(TrainingError):
    """A view-only trajectory (no energies/forces) given where labels are needed."""


class AtomsMismatchError(TrainingError):
    """A model and a trajectory (or ``ase.Atoms``) of different molecules or atom orders."""


class TrainTestOverlapError(TrainingError):
    """Explicitly requested test frames that were used for training."""


class TrainingBudgetError(TrainingError, ComputeBudgetError):
    """A fit refused by the memory budget (both a ``ValueError`` and a ``MemoryError``)."""


def _noop(fraction: float, message: str) -> None:
    return None


def _count(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SplitError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise SplitError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ---------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint frame indices for training, validation and testing.

    Attributes
    ----------
    train, valid, test : ndarray of int64
        Sorted frame indices into the trajectory; pairwise disjoint.
    seed : int
        Seed of ``numpy.random.default_rng`` that drew them.
    n_frames : int
        Frames of the trajectory the indices refer to.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    seed: int
    n_frames: int

    def __post_init__(self) -> None:
        for arr in (self.train, self.valid, self.test):
            arr.setflags(write=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (plain ints and lists)."""
        return {
            "seed": self.seed,
            "n_frames": self.n_frames,
            "train": self.train.tolist(),
            "valid": self.valid.tolist(),
            "test": self.test.tolist(),
        }


def split_frames(n_frames: int, n_train: int, n_test: int | None = None, *, seed: int = 0, n_valid: int = 0) -> Split:
    """Draw disjoint training, validation and test frames at random.

    One permutation of ``0..n_frames-1`` from ``numpy.random.default_rng(seed)``
    is cut into consecutive pieces: the first ``n_train`` indices train, the
    next ``n_valid`` validate, the next ``n_test`` test (all the rest when
    ``n_test`` is None). Each piece is returned sorted.

    Parameters
    ----------
    n_frames : int
        M, frames in the trajectory.
    n_train : int
        Training frames (>= 1).
    n_test : int, optional
        Test frames (>= 0); None takes every frame not used for training or validation.
    seed : int
    n_valid : int
        Validation frames (>= 0).

    Returns
    -------
    Split

    Raises
    ------
    SplitError
        Non-integer or negative counts, or more frames asked for than the trajectory holds.
    """
    n_frames = _count(n_frames, "n_frames", minimum=1)
    n_train = _count(n_train, "n_train", minimum=1)
    n_valid = _count(n_valid, "n_valid", minimum=0)
    rest = n_frames - n_train - n_valid
    if n_test is not None:
        n_test = _count(n_test, "n_test", minimum=0)
    need = n_train + n_valid + (n_test or 0)
    if need > n_frames or rest < 0:
        parts = f"{n_train} training" + (f" + {n_valid} validation" if n_valid else "") + (
            f" + {n_test} test" if n_test else "")
        raise SplitError(
            f"cannot draw {parts} frames from a trajectory of {n_frames} frames ({need - n_frames} too many): "
            f"use at most {max(n_frames - n_valid - (n_test or 0), 0)} training frames or load more frames"
        )
    if n_test is None:
        n_test = rest
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_frames).astype(np.int64)
    train = np.sort(perm[:n_train])
    valid = np.sort(perm[n_train : n_train + n_valid])
    test = np.sort(perm[n_train + n_valid : n_train + n_valid + n_test])
    return Split(train=train, valid=valid, test=test, seed=int(seed), n_frames=n_frames)


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------
def formula_of(z: Any) -> str:
    """Hill formula of atomic numbers, e.g. ``'C4H4N2O2'``."""
    from ase import Atoms

    return Atoms(numbers=np.asarray(z, dtype=np.int64)).get_chemical_formula(mode="hill")


def check_atoms_match(model_z: Any, z: Any, *, what: str = "the data") -> None:
    """Raise :class:`AtomsMismatchError` unless ``z`` equals the model's atomic numbers, in order.

    The message names both formulas (or, for the same formula, the first atom
    whose element differs: the model needs the atom order it was trained with).
    """
    mz = np.asarray(model_z, dtype=np.int64).reshape(-1)
    dz = np.asarray(z, dtype=np.int64).reshape(-1)
    if mz.shape == dz.shape and np.array_equal(mz, dz):
        return
    fm, fd = formula_of(mz), formula_of(dz)
    if fm != fd:
        raise AtomsMismatchError(
            f"the model was trained on {fm} ({mz.size} atoms) but {what} is {fd} ({dz.size} atoms): "
            "use a model trained on this molecule"
        )
    first = int(np.flatnonzero(mz != dz)[0])
    raise AtomsMismatchError(
        f"the model and {what} are both {fm} but list the atoms in a different order "
        f"(atom {first}: Z={int(mz[first])} in the model, Z={int(dz[first])} in {what}): "
        "reorder the atoms as in the training data"
    )


def _require_labels(traj: Trajectory, what: str) -> None:
    if not traj.has_labels:
        raise UnlabelledDataError(
            f"{what} needs forces and energies, but {traj.name or 'this trajectory'!r} "
            f"(source {traj.provenance.source or 'unknown'!r}) is view-only (no labels): load a file with labels, "
            "or name its energy/force keys"
        )


# ---------------------------------------------------------------------------
# symmetry
# ---------------------------------------------------------------------------
def resolve_symmetry(
    traj: Trajectory,
    *,
    method: str = "data",
    n_samples: int = DEFAULT_SYMMETRY_FRAMES,
    seed: int = 0,
    pe_sets: str | Sequence[Sequence[int]] | None = None,
    progress: Progress | None = None,
) -> SymmetryInfo:
    """Permutation group and PE sets for training on ``traj``.

    Parameters
    ----------
    traj : Trajectory
        Only its positions are used.
    method : {'data', 'graph'}
        Search the trajectory (``n_samples`` random frames) or the bond graph of frame 0.
    n_samples, seed : int
        For the data search.
    pe_sets : str or sequence of sequences of int, optional
        The user's PE sets (text like ``"0,1;2 3"``, see ``parse_pe_sets``, or
        index lists). The kernel then averages over the detected permutations
        that map each user set onto itself (``restrict_group``).

    Returns
    -------
    SymmetryInfo
    """
    options: dict[str, Any] = {}
    if method == "data" and progress is not None:
        options["progress"] = progress
    detected = detect_symmetry(traj.R, traj.z, method=method, n_samples=n_samples, seed=seed, **options)
    if pe_sets is None:
        return detected
    sets = parse_pe_sets(pe_sets, traj.n_atoms) if isinstance(pe_sets, str) else [list(s) for s in pe_sets]
    return user_symmetry(sets, traj.z, perms=detected.perms, n_samples=detected.n_samples, seed=detected.seed)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _data_record(traj: Trajectory) -> dict[str, Any]:
    prov = traj.provenance
    return {
        "fingerprint": traj.fingerprint,
        "name": traj.name,
        "formula": traj.formula,
        "n_frames": traj.n_frames,
        "n_atoms": traj.n_atoms,
        "source": prov.source,
        "content_hash": prov.content_hash,
        "label_set": prov.label_set,
        "frames": prov.frames,
        "file_units": {"energy": prov.energy_unit, "length": prov.length_unit},
    }


def train_model(
    traj: Trajectory,
    *,
    model: str = "aff",
    n_train: int,
    seed: int = 0,
    n_test: int | None = None,
    gamma: float | None = None,
    lam: float | None = None,
    criterion: str = "likelihood",
    symmetry: SymmetryInfo | None = None,
    n_symmetry_frames: int = DEFAULT_SYMMETRY_FRAMES,
    budget_bytes: int | None = None,
    progress: Progress | None = None,
    keep_factors: bool = True,
) -> ForceModel:
    """Fit a force model on ``n_train`` random frames of a labelled trajectory.

    Parameters
    ----------
    traj : Trajectory
        Labelled data (positions Å, forces kcal/mol/Å).
    model : {'aff', 'gdml', 'sgdml'}
        AFF (one GP per PE set, PS kernel over the group), GDML (one GP of all
        atoms, plain kernel) or sGDML (one GP of all atoms, PS kernel).
    n_train : int
        M, training frames, drawn by :func:`split_frames` with ``seed``.
    seed : int
        Seed of the split (and of the hyperparameter-search subset).
    n_test : int, optional
        Also draw and record this many test frames (default: every frame not
        used for training is a test frame; none is recorded).
    gamma, lam : float, optional
        Fix γ (1/Å) and/or λ; the others are searched by ``criterion``.
    criterion : {'likelihood', 'cv'}
    symmetry : SymmetryInfo, optional
        Permutations and PE sets; by default detected on up to
        ``n_symmetry_frames`` frames of ``traj`` (positions only). GDML uses
        none and skips the search.
    budget_bytes : int, optional
        Memory budget; default ``aff_app.gp.budget.default_budget_bytes()``.
    progress : callable(fraction, message), optional
    keep_factors : bool
        Keep the Cholesky factors on the model (see
        :func:`aff_app.gp.force.fit_force_model`); False when the model is
        only written to disk (the CLI), which needs one kernel's memory.

    Returns
    -------
    ForceModel
        ``model.info`` holds ``data`` (fingerprint, source, label set, content
        hash, frames, formula), ``split`` (seed, train, test indices),
        ``symmetry`` (``SymmetryInfo.to_dict()`` or None), ``timings`` (s) and
        the fit's own record (hyperparameter search, version).

    Raises
    ------
    UnlabelledDataError, SplitError, AtomsMismatchError, TrainingBudgetError,
    aff_app.gp.force.ModelError, aff_app.symmetry.SymmetryError
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    if model not in MODES:
        raise TrainingError(f"model must be one of {', '.join(MODES)}, got {model!r}")
    _require_labels(traj, "training")
    split = split_frames(traj.n_frames, n_train, n_test, seed=seed)
    if split.train.size < 2:
        raise SplitError(f"training needs at least 2 frames, got n_train = {split.train.size}")
    if model != "aff":
        # one set of all atoms: the memory need is known before the symmetry search
        _check_budget(estimate_cost(split.train.size, [traj.n_atoms]), budget_bytes, model)

    t_sym = 0.0
    if model == "gdml":
        sym = None
    elif symmetry is not None:
        if symmetry.n_atoms != traj.n_atoms:
            raise AtomsMismatchError(
                f"the symmetry record is for {symmetry.n_atoms} atoms but the data has {traj.n_atoms} ({traj.formula})"
            )
        sym = symmetry
    else:
        ts = time.perf_counter()
        sym = resolve_symmetry(
            traj, n_samples=n_symmetry_frames, seed=seed,
            progress=lambda f, msg: progress(0.1 * f, "symmetry: " + msg),
        )
        t_sym = time.perf_counter() - ts
    progress(0.1, "symmetry done" if sym is not None else "no symmetry (GDML)")

    info = {
        "data": _data_record(traj),
        "split": {"seed": int(seed), "n_frames": traj.n_frames, "train": split.train.tolist(),
                  "test": None if n_test is None else split.test.tolist(),
                  "test_rule": "all frames outside train" if n_test is None else f"{n_test} random frames outside train"},
        "symmetry": None if sym is None else sym.to_dict(),
    }
    kwargs: dict[str, Any] = {}
    if model == "aff":
        kwargs.update(pe_sets=list(sym.pe_sets), perms=sym.perms)
    elif model == "sgdml":
        kwargs.update(perms=sym.perms)
    try:
        fitted = fit_force_model(
            traj.R[split.train], traj.F[split.train], traj.z, mode=model, gamma=gamma, lam=lam,
            criterion=criterion, train_idx=split.train, budget_bytes=budget_bytes, seed=seed, info=info,
            keep_factors=keep_factors,
            progress=lambda f, msg: progress(0.1 + 0.9 * f, msg), **kwargs,
        )
    except ComputeBudgetError as exc:
        if isinstance(exc, TrainingBudgetError):
            raise
        raise TrainingBudgetError(str(exc)) from None
    timings = dict(fitted.info.get("timings", {}))
    timings["fit_s"] = timings.get("total_s", 0.0)
    timings["symmetry_s"] = t_sym
    timings["total_s"] = time.perf_counter() - t0
    fitted.info["timings"] = timings
    return fitted


def _check_budget(estimate, budget_bytes, model: str) -> None:
    try:
        check_budget(estimate, budget_bytes, what=f"{model.upper()} fit")
    except ComputeBudgetError as exc:
        raise TrainingBudgetError(str(exc)) from None


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
def _position_keys(R: np.ndarray) -> list[bytes]:
    grid = np.round(np.asarray(R, dtype=np.float64) / POSITION_MATCH_TOLERANCE).astype(np.int64)
    return [row.tobytes() for row in grid.reshape(grid.shape[0], -1)]


def training_positions_mask(model: ForceModel, traj: Trajectory) -> np.ndarray:
    """Frames of ``traj`` that are training frames of ``model``, shape (M,) bool.

    A frame counts as a training frame when its index is in ``model.train_idx``
    and the data is the very data the model was trained on (same
    fingerprint), or when its positions equal a training configuration to
    within :data:`POSITION_MATCH_TOLERANCE` Å (the same geometries loaded with
    another label set or frame selection).
    """
    mask = np.zeros(traj.n_frames, dtype=bool)
    if model.info.get("data", {}).get("fingerprint") == traj.fingerprint:
        idx = np.asarray(model.train_idx, dtype=np.int64)
        mask[idx[(idx >= 0) & (idx < traj.n_frames)]] = True
    if traj.n_atoms == model.n_atoms:
        train_keys = set(_position_keys(model.R_train))
        mask |= np.array([k in train_keys for k in _position_keys(traj.R)], dtype=bool)
    return mask


def evaluate_model(
    model: ForceModel,
    traj: Trajectory,
    *,
    n_test: int | None = None,
    test_idx: Sequence[int] | None = None,
    seed: int = 0,
    level: float = 0.95,
    kind: str = "latent",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Force errors and interval quality on held-out frames.

    Test frames, in order of precedence: ``test_idx`` (refused when it
    contains training frames); the test frames recorded at training when the
    data is the training data and ``n_test`` is None or equal to their number;
    else ``n_test`` frames (all when None) drawn with ``seed`` from the frames
    that are not training frames (see :func:`training_positions_mask`).

    Parameters
    ----------
    model : ForceModel
    traj : Trajectory
        Labelled data of the same molecule (same atoms in the same order).
    n_test : int, optional
    test_idx : sequence of int, optional
    seed : int
    level : float
        Interval level, e.g. 0.95 (mean ± 1.96 sd).
    kind : {'latent', 'observation'}
        Interval on the force itself, or on a new noisy label (adds σ̂² λ).

    Returns
    -------
    dict
        ``force_mae``, ``force_rmse`` (kcal/mol/Å), ``pci`` (share of force
        components inside their interval, 0..1), ``lci`` (mean interval length,
        kcal/mol/Å), ``n_test``, ``level``, ``interval``, ``test_idx``,
        ``test_selection``, ``reference_force_std`` (std of the held-out
        reference force components), ``force_max_abs_error``,
        ``same_data_as_training``, ``n_training_frames_excluded``, ``units``.

    Raises
    ------
    UnlabelledDataError, AtomsMismatchError, TrainTestOverlapError, SplitError
    """
    progress = progress or _noop
    _require_labels(traj, "evaluation")
    check_atoms_match(model.z, traj.z, what="the data")
    if not 0.0 < float(level) < 1.0:
        raise TrainingError(f"level must lie in (0, 1), got {level}")
    if kind not in ("latent", "observation"):
        raise TrainingError(f"interval kind must be 'latent' or 'observation', got {kind!r}")
    in_train = training_positions_mask(model, traj)
    same_data = model.info.get("data", {}).get("fingerprint") == traj.fingerprint
    recorded = model.info.get("split", {}).get("test") if same_data else None

    if test_idx is not None:
        idx = np.asarray(test_idx)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise SplitError(f"test_idx must be a non-empty 1-d list of frame indices, got shape {idx.shape}")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= traj.n_frames)]
        if bad.size:
            raise SplitError(f"test frames {bad[:10].tolist()} are outside 0..{traj.n_frames - 1}")
        overlap = idx[in_train[idx]]
        if overlap.size:
            raise TrainTestOverlapError(
                f"{overlap.size} of the {idx.size} requested test frames were used for training "
                f"(first: {overlap[:10].tolist()}): evaluate on held-out frames only"
            )
        idx = np.unique(idx)
        selection = "explicit"
    elif recorded is not None and (n_test is None or int(n_test) == len(recorded)) and len(recorded) > 0:
        idx = np.asarray(recorded, dtype=np.int64)
        selection = "recorded at training"
    else:
        pool = np.flatnonzero(~in_train)
        if n_test is not None:
            n_test = _count(n_test, "n_test", minimum=1)
            if n_test > pool.size:
                raise SplitError(
                    f"cannot draw {n_test} test frames: {traj.n_frames} frames minus {int(in_train.sum())} "
                    f"training frames leaves {pool.size}; use --n-test {pool.size} or fewer"
                )
            idx = np.sort(np.random.default_rng(seed).choice(pool, size=n_test, replace=False))
            selection = f"{n_test} random held-out frames (seed {seed})"
        else:
            if pool.size == 0:
                raise SplitError("every frame of the data is a training frame: there is nothing to test on")
            idx = pool
            selection = "all held-out frames"

    pred = model.predict(traj.R[idx], progress=progress)
    ref = traj.F[idx]
    err = pred.mean - ref
    lo, hi = pred.interval(level, kind=kind)
    # metrics of method.md "What the paper reports", over all force components
    inside = (lo <= ref) & (ref <= hi)
    return {
        "model": model.mode,
        "n_train": model.n_train,
        "n_test": int(idx.size),
        "level": float(level),
        "interval": kind,
        "force_mae": float(np.mean(np.abs(err))),
        "force_rmse": float(np.sqrt(np.mean(err**2))),
        "force_max_abs_error": float(np.max(np.abs(err))),
        "pci": float(np.mean(inside)),
        "lci": float(np.mean(hi - lo)),
        "reference_force_std": float(np.std(ref)),
        "units": {"force": FORCE_UNIT},
        "same_data_as_training": bool(same_data),
        "n_training_frames_excluded": int(in_train.sum()),
        "test_selection": selection,
        "test_idx": idx.tolist(),
    }
