"""User overrides: PE sets given as text or index lists, validated, and the group restricted to them."""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
from aff_app.symmetry.groups import SymmetryError, _as_perms, _sorted_unique


# ---------------------------------------------------------------------------
# user overrides
# ---------------------------------------------------------------------------
def validate_pe_sets(sets: Sequence[Sequence[int]], z: Any) -> list[np.ndarray]:
    """Check that PE sets partition the atoms and never mix elements.

    Parameters
    ----------
    sets : sequence of sequences of int
        0-based atom indices.
    z : array_like of int, shape (N,)

    Returns
    -------
    list of ndarray of int64
        The sets, each sorted, sorted by first atom.

    Raises
    ------
    SymmetryError
        Empty set, non-integer or out-of-range index, an atom missing or listed
        twice, or a set with atoms of different elements (the message names them).
    """
    z = np.asarray(z).astype(np.int64).reshape(-1)
    n = z.size
    out = []
    for k, s in enumerate(sets):
        arr = np.asarray(list(s))
        if arr.size == 0:
            raise SymmetryError(f"PE set {k} is empty")
        if not np.issubdtype(arr.dtype, np.integer):
            raise SymmetryError(f"PE set {k} holds non-integer indices: {arr.tolist()}")
        arr = np.sort(arr.astype(np.int64))
        outside = arr[(arr < 0) | (arr >= n)]
        if outside.size:
            raise SymmetryError(f"PE set {k} has indices outside 0..{n - 1}: {outside.tolist()}")
        out.append(arr)
    allidx = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    counts = np.bincount(allidx, minlength=n)
    dup = np.flatnonzero(counts > 1)
    missing = np.flatnonzero(counts == 0)
    if dup.size:
        raise SymmetryError(f"atoms listed in more than one PE set (or twice): {dup.tolist()}")
    if missing.size:
        raise SymmetryError(f"atoms in no PE set: {missing.tolist()} (every atom of 0..{n - 1} exactly once)")
    for k, arr in enumerate(out):
        if np.unique(z[arr]).size > 1:
            pairs = ", ".join(f"{int(i)}:Z={int(z[i])}" for i in arr)
            raise SymmetryError(f"PE set {k} mixes elements ({pairs}); a PE set holds atoms of one element")
    return sorted(out, key=lambda s: int(s[0]))


_TOKEN = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_pe_sets(text: str, n_atoms: int) -> list[np.ndarray]:
    """Parse user PE sets such as ``"0,1,2; 3 4 5; 6"`` (0-based atom indices).

    Sets are separated by ``;`` or new lines; indices within a set by commas
    or spaces; ``a-b`` is the inclusive range a..b. Atoms not listed become
    singleton sets. Element checks are ``validate_pe_sets``'s job.

    Parameters
    ----------
    text : str
    n_atoms : int
        N; valid indices are 0..N-1.

    Returns
    -------
    list of ndarray of int64
        Each set sorted, sorted by first atom; together a partition of 0..N-1.

    Raises
    ------
    SymmetryError
        A token that is not an index or range, indices out of range, or
        indices listed more than once (the message lists them).
    """
    n = int(n_atoms)
    if n < 1:
        raise SymmetryError(f"n_atoms must be >= 1, got {n_atoms}")
    sets: list[list[int]] = []
    for k, chunk in enumerate(re.split(r"[;\n]", text or "")):
        tokens = [t for t in re.split(r"[,\s]+", chunk.strip()) if t]
        if not tokens:
            continue
        members: list[int] = []
        for t in tokens:
            m = _TOKEN.match(t)
            if m is None:
                raise SymmetryError(
                    f"cannot read {t!r} in set {len(sets) + 1} (line/part {k + 1}): use 0-based indices like "
                    "'0,1,2; 3 4 5' or ranges '6-8'"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise SymmetryError(f"range {t!r} runs backwards")
            members.extend(range(lo, hi + 1))
        sets.append(members)
    allidx = np.array([i for s in sets for i in s], dtype=np.int64)
    outside = np.unique(allidx[allidx >= n])
    if outside.size:
        raise SymmetryError(f"indices out of range 0..{n - 1}: {outside.tolist()}")
    counts = np.bincount(allidx, minlength=n)
    dup = np.flatnonzero(counts > 1)
    if dup.size:
        raise SymmetryError(f"indices listed more than once: {dup.tolist()}")
    out = [np.array(sorted(s), dtype=np.int64) for s in sets]
    out += [np.array([i], dtype=np.int64) for i in np.flatnonzero(counts == 0)]
    return sorted(out, key=lambda s: int(s[0]))


def _labels(sets: Sequence[np.ndarray], n: int) -> np.ndarray:
    lab = np.full(n, -1, dtype=np.int64)
    for k, s in enumerate(sets):
        lab[np.asarray(s, dtype=np.int64)] = k
    if np.any(lab < 0):
        raise SymmetryError(f"atoms in no set: {np.flatnonzero(lab < 0).tolist()}")
    return lab


def restrict_group(perms: Any, sets: Sequence[Sequence[int]]) -> np.ndarray:
    """The permutations that map every set onto itself (a subgroup when ``perms`` is a group).

    Parameters
    ----------
    perms : array_like of int, shape (S, N)
    sets : sequence of sequences of int
        A partition of 0..N-1.

    Returns
    -------
    ndarray of int64, shape (S', N)
        Rows of ``perms`` with ``set_of[p[i]] == set_of[i]`` for every atom i,
        identity first, rows sorted. Its orbits can be finer than ``sets`` (a
        user may group atoms that no realised permutation exchanges).
    """
    P = _as_perms(perms)
    lab = _labels([np.asarray(s) for s in sets], P.shape[1])
    keep = np.all(lab[P] == lab[None, :], axis=1)
    identity = np.arange(P.shape[1], dtype=np.int64)
    return _sorted_unique(np.vstack([identity[None, :], P[keep]]))


