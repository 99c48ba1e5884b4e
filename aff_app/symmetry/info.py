"""The result object (SymmetryInfo) and the two ways to make one: detected, or the user's sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from aff_app.symmetry.detect import _check_R_z, find_permutations
from aff_app.symmetry.graph import graph_automorphisms
from aff_app.symmetry.groups import (
    METHODS,
    _as_perms,
    _sorted_unique,
    cycle_notation,
    pe_sets_from_permutations,
    SymmetryError,
)
from aff_app.symmetry.overrides import _labels, restrict_group, validate_pe_sets


# ---------------------------------------------------------------------------
# the result object
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SymmetryInfo:
    """Permutation group and PE sets of one molecule.

    Attributes
    ----------
    perms : ndarray of int64, shape (S, N)
        The permutations used by the PS kernel (identity first; convention in
        the module docstring). Each one maps every PE set onto itself.
    pe_sets : tuple of ndarray of int64
        Partition of 0..N-1 into PE sets, each sorted, sorted by first atom.
    method : {'data', 'graph', 'user'}
        Found in the trajectory, from the bond graph, or set by the user.
    n_samples, seed : int or None
        Frames and seed of the data search the permutations come from (None when not from data).
    """

    perms: np.ndarray
    pe_sets: tuple
    method: str
    n_samples: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SymmetryError(f"method must be one of {METHODS}, got {self.method!r}")
        P = _sorted_unique(_as_perms(self.perms))
        n = P.shape[1]
        if np.any(P[0] != np.arange(n)):
            raise SymmetryError("the permutations must include the identity")
        sets = [np.sort(np.asarray(s, dtype=np.int64)) for s in self.pe_sets]
        lab = _labels(sets, n)
        counts = np.bincount(np.concatenate(sets), minlength=n) if sets else np.zeros(n)
        if np.any(counts != 1) or counts.size != n:
            raise SymmetryError(f"PE sets must hold each atom 0..{n - 1} once; counts {counts.tolist()}")
        moved = np.flatnonzero(~np.all(lab[P] == lab[None, :], axis=1))
        if moved.size:
            raise SymmetryError(
                f"{moved.size} permutations move atoms between PE sets (first: {cycle_notation(P[moved[0]])})"
            )
        sets = sorted(sets, key=lambda s: int(s[0]))
        for arr in [P, *sets]:
            arr.setflags(write=False)
        object.__setattr__(self, "perms", P)
        object.__setattr__(self, "pe_sets", tuple(sets))
        for name in ("n_samples", "seed"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))

    @property
    def n_atoms(self) -> int:
        """N."""
        return int(self.perms.shape[1])

    @property
    def n_perms(self) -> int:
        """S, the number of permutations."""
        return int(self.perms.shape[0])

    @property
    def n_sets(self) -> int:
        """Number of PE sets."""
        return len(self.pe_sets)

    @property
    def set_sizes(self) -> np.ndarray:
        """Atoms per PE set, shape (n_sets,)."""
        return np.array([s.size for s in self.pe_sets], dtype=np.int64)

    @property
    def atom_to_set(self) -> np.ndarray:
        """Index of each atom's PE set, shape (N,)."""
        return _labels(self.pe_sets, self.n_atoms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (plain ints and lists)."""
        return {
            "method": self.method,
            "n_samples": self.n_samples,
            "seed": self.seed,
            "n_atoms": self.n_atoms,
            "n_perms": self.n_perms,
            "perms": self.perms.tolist(),
            "pe_sets": [s.tolist() for s in self.pe_sets],
            "set_sizes": self.set_sizes.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SymmetryInfo":
        """Inverse of ``to_dict`` (validated)."""
        try:
            return cls(
                perms=np.asarray(d["perms"], dtype=np.int64),
                pe_sets=tuple(np.asarray(s, dtype=np.int64) for s in d["pe_sets"]),
                method=d["method"],
                n_samples=d.get("n_samples"),
                seed=d.get("seed"),
            )
        except KeyError as exc:
            raise SymmetryError(f"symmetry record lacks the key {exc}") from None


def detect_symmetry(
    R: Any,
    z: Any,
    *,
    method: str = "data",
    n_samples: int = 200,
    seed: int | None = 0,
    **options: Any,
) -> SymmetryInfo:
    """Permutations and PE sets of a trajectory.

    Parameters
    ----------
    R : array_like, shape (M, N, 3)
        Positions in Å.
    z : array_like of int, shape (N,)
    method : {'data', 'graph'}
        'data': ``find_permutations`` on ``n_samples`` random frames;
        'graph': ``graph_automorphisms`` of the first frame's bond graph.
    n_samples, seed : int
        For 'data'.
    **options
        Passed on (``n_neighbours``, ``min_support``, ``max_order``, ``progress``
        for 'data'; ``scale``, ``max_order`` for 'graph').

    Returns
    -------
    SymmetryInfo
    """
    R, z = _check_R_z(R, z)
    if method == "data":
        perms = find_permutations(R, z, n_samples=n_samples, seed=seed, **options)
        used = min(int(n_samples), R.shape[0])
        return SymmetryInfo(perms, tuple(pe_sets_from_permutations(perms)), "data", used, seed)
    if method == "graph":
        perms = graph_automorphisms(R[0], z, **options)
        return SymmetryInfo(perms, tuple(pe_sets_from_permutations(perms)), "graph")
    raise SymmetryError(f"method must be 'data' or 'graph' (use user_symmetry for your own sets), got {method!r}")


def user_symmetry(
    sets: Sequence[Sequence[int]],
    z: Any,
    *,
    perms: Any = None,
    n_samples: int | None = None,
    seed: int | None = None,
) -> SymmetryInfo:
    """PE sets chosen by the user, with the permutations that respect them.

    Parameters
    ----------
    sets : sequence of sequences of int
        The user's partition of 0..N-1 (e.g. from ``parse_pe_sets``).
    z : array_like of int, shape (N,)
    perms : array_like of int, shape (S, N), optional
        The detected group. The PS kernel then uses its subgroup that maps each
        user set onto itself (``restrict_group``); None uses the identity only.
    n_samples, seed : int, optional
        Provenance of ``perms`` when it came from a data search.

    Returns
    -------
    SymmetryInfo with method 'user'.
    """
    z = np.asarray(z).astype(np.int64).reshape(-1)
    clean = validate_pe_sets(sets, z)
    n = z.size
    if perms is None:
        group = np.arange(n, dtype=np.int64)[None, :]
    else:
        group = restrict_group(_as_perms(perms, n), clean)
    return SymmetryInfo(group, tuple(clean), "user", n_samples, seed)
