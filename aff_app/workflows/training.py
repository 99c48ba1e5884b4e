"""The pieces of training that come before a fit: splits, checks, symmetry, training frames in other data.

The workflow itself (fit, train, evaluate, save) is :mod:`aff_app.workflows.pipeline`;
these are the pieces it and the pages use, in the order a user meets them:

* :func:`split_frames` draws disjoint training / validation / test frame
  indices from one seed (rMD17's frames come from one MD run, so held-out
  frames must never be training frames, see ``../shared/data/README.md``).
* :func:`resolve_symmetry` finds the permutation group and PE sets of the data
  (``aff_app.symmetry``), or applies the user's PE sets.
* :func:`check_atoms_match` refuses a model and data of different molecules
  or atom orders, naming both;
* :func:`training_positions_mask` finds a model's training frames in any data
  of its molecule (by index in the training data, by position elsewhere).

Units are the library's internal ones: Å and kcal/mol/Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from aff_app.errors import AFFError
from aff_app.gp.budget import ComputeBudgetError
from aff_app.gp.force import ForceModel
from aff_app.symmetry import SymmetryInfo, detect_symmetry, parse_pe_sets, user_symmetry
from aff_app.io.trajectory import Trajectory

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
    "training_positions_mask",
    "require_labels",
]

Progress = Callable[[float, str], None]

#: Frames the symmetry search samples by default (method.md: the sgdml reference uses 200).
DEFAULT_SYMMETRY_FRAMES = 200
#: Positions are compared on this grid (Å) when looking for training frames in other data.
POSITION_MATCH_TOLERANCE = 1e-6


class TrainingError(AFFError, ValueError):
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


def require_labels(traj: Trajectory, what: str) -> None:
    """Refuse a view-only trajectory (no energies/forces) for ``what``, saying how to load labels."""
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
# training frames in other data
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
    if model.record.data_fingerprint == traj.fingerprint:
        idx = np.asarray(model.train_idx, dtype=np.int64)
        mask[idx[(idx >= 0) & (idx < traj.n_frames)]] = True
    if traj.n_atoms == model.n_atoms:
        train_keys = set(_position_keys(model.R_train))
        mask |= np.array([k in train_keys for k in _position_keys(traj.R)], dtype=bool)
    return mask
