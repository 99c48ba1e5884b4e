"""Finding the permutations a trajectory realises: assignment on inverse-distance matrices of sampled frames."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from aff_app.symmetry.groups import DEFAULT_MAX_ORDER, Progress, SymmetryError, close_group


# ---------------------------------------------------------------------------
# detection from data
# ---------------------------------------------------------------------------
def _check_R_z(R: Any, z: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z)
    if z.ndim != 1 or z.size == 0:
        raise SymmetryError(f"z must have shape (N,) with N >= 1, got {z.shape}")
    if not np.issubdtype(z.dtype, np.integer):
        if not np.all(np.equal(np.mod(z, 1), 0)):
            raise SymmetryError("z must hold integer atomic numbers")
    z = z.astype(np.int64)
    n = z.size
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1:] != (n, 3) or R.shape[0] == 0:
        raise SymmetryError(f"R must have shape (M, {n}, 3) (or ({n}, 3)) with M >= 1, got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise SymmetryError("R holds non-finite positions")
    return R, z


def _sample(n_frames: int, n_samples: int, seed: int | None) -> np.ndarray:
    if isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 2:
        raise SymmetryError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    if n_frames <= n_samples:
        return np.arange(n_frames)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_frames, size=int(n_samples), replace=False))


def _inverse_distances(X: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """A[s, i, j] = 1/||r_i - r_j|| for i != j, 0 on the diagonal; shape (S, N, N), 1/Å."""
    d = np.linalg.norm(X[:, :, None, :] - X[:, None, :, :], axis=-1)
    n = X.shape[1]
    off = ~np.eye(n, dtype=bool)
    too_close = (d < 1e-6) & off
    if too_close.any():
        s, i, j = np.argwhere(too_close)[0]
        raise SymmetryError(
            f"frame {int(frames[s])}: atoms {int(i)} and {int(j)} coincide (distance {d[s, i, j]:.2e} Å)"
        )
    A = np.zeros_like(d)
    A[:, off] = 1.0 / d[:, off]
    return A


def _element_blocks(z: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(z == e) for e in np.unique(z)]


def _fingerprints(A: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Relabelling-invariant summary of each frame, shape (S, N(N-1)/2).

    For each pair of elements, the sorted inverse distances between their
    atoms. Any element-preserving permutation only reorders each group, so the
    Euclidean distance between two fingerprints is at most the distance between
    the matched descriptors (and is used only to pick candidate pairs).
    """
    S = A.shape[0]
    parts = []
    for k, ca in enumerate(blocks):
        for cb in blocks[k:]:
            block = A[:, ca][:, :, cb]
            if cb is ca:
                iu = np.triu_indices(ca.size, 1)
                block = block[:, iu[0], iu[1]]
            parts.append(np.sort(block.reshape(S, -1), axis=1))
    return np.concatenate(parts, axis=1)


def _candidate_pairs(fp: np.ndarray, n_neighbours: int) -> np.ndarray:
    """Each frame with its n_neighbours nearest frames in fingerprint space; (E, 2) pairs a < b."""
    S = fp.shape[0]
    sq = np.sum(fp * fp, axis=1)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * fp @ fp.T
    np.fill_diagonal(dist2, np.inf)
    k = min(int(n_neighbours), S - 1)
    nn = np.argpartition(dist2, k - 1, axis=1)[:, :k]
    a = np.repeat(np.arange(S), k)
    b = nn.reshape(-1)
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    return np.unique(pairs, axis=0)


def _profiles(A: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Per-atom profile: its sorted inverse distances to the atoms of each element, (S, N, N)."""
    return np.concatenate([np.sort(A[:, :, c], axis=2) for c in blocks], axis=2)


def _initial_matches(
    prof: np.ndarray, blocks: list[np.ndarray], a: np.ndarray, b: np.ndarray, progress: Progress | None
) -> np.ndarray:
    """Linear assignment per element block between atom profiles of frames b (rows) and a (columns).

    Returns P of shape (E, N) with A_a[p][:, p] ~ A_b: atom i of frame b is
    matched with atom p[i] of frame a.
    """
    E, n = a.size, prof.shape[1]
    P = np.tile(np.arange(n, dtype=np.int64), (E, 1))
    costs = []
    for c in blocks:
        if c.size < 2:
            costs.append(None)
            continue
        pb = prof[b][:, c]  # (E, n_c, N)
        pa = prof[a][:, c]
        # squared Euclidean distances between profiles, all pairs at once: (E, n_c, n_c)
        cost = (
            np.sum(pb * pb, axis=2)[:, :, None]
            + np.sum(pa * pa, axis=2)[:, None, :]
            - 2.0 * np.einsum("eik,ejk->eij", pb, pa)
        )
        costs.append(cost)
    step = max(1, E // 10)
    for e in range(E):
        for c, cost in zip(blocks, costs):
            if cost is not None:
                rows, cols = linear_sum_assignment(cost[e])
                P[e, c[rows]] = c[cols]
        if progress is not None and e % step == 0:
            progress(0.1 + 0.6 * e / E, f"matching frame pairs ({e}/{E})")
    return P


def _two_opt(A: np.ndarray, a: np.ndarray, b: np.ndarray, P: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Exchange two atoms of one element while ||A_a[p][:, p] - A_b|| decreases; all pairs at once.

    Minimising the norm is maximising g(p) = sum_ij A_a[p_i, p_j] B_ij (the norm of
    A_a[p][:, p] does not depend on p). Exchanging positions r and s of p changes g by
    -2 (C_rr + C_ss - C_rs - C_sr - 2 A'_rs B_rs), with A' = A_a[p][:, p] and C = A' B
    (symmetric matrices with zero diagonal).
    """
    P = P.copy()
    B_all = A[b]
    active = np.arange(a.size)
    n = P.shape[1]
    for _ in range(n * n):
        if active.size == 0:
            break
        Pa = P[active]
        Aa = A[a[active]]
        Ap = Aa[np.arange(active.size)[:, None, None], Pa[:, :, None], Pa[:, None, :]]
        B = B_all[active]
        C = Ap @ B
        d = np.diagonal(C, axis1=1, axis2=2)
        gain = -2.0 * (d[:, :, None] + d[:, None, :] - C - np.swapaxes(C, 1, 2) - 2.0 * Ap * B)
        gain[:, ~same] = -np.inf
        flat = gain.reshape(active.size, -1)
        best = np.argmax(flat, axis=1)
        best_gain = flat[np.arange(active.size), best]
        scale = np.abs(np.sum(Ap * B, axis=(1, 2)))
        improve = best_gain > 1e-12 * scale
        rows = active[improve]
        r, s = np.divmod(best[improve], n)
        pr = P[rows, r].copy()
        P[rows, r] = P[rows, s]
        P[rows, s] = pr
        active = rows
    return P


def _search(
    R: np.ndarray,
    z: np.ndarray,
    *,
    n_samples: int,
    seed: int | None,
    n_neighbours: int,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-5 of the module docstring: candidate permutations and their support on the tree."""
    n = z.size
    identity = np.arange(n, dtype=np.int64)
    frames = _sample(R.shape[0], n_samples, seed)
    if progress is not None:
        progress(0.0, f"inverse distances of {frames.size} frames")
    blocks = _element_blocks(z)
    if frames.size < 2 or all(c.size < 2 for c in blocks):
        return identity[None, :], np.zeros(1, dtype=np.int64)
    A = _inverse_distances(R[frames], frames)
    pairs = _candidate_pairs(_fingerprints(A, blocks), n_neighbours)
    a, b = pairs[:, 0], pairs[:, 1]
    P = _initial_matches(_profiles(A, blocks), blocks, a, b, progress)
    if progress is not None:
        progress(0.7, "refining matches (2-opt)")
    P = _two_opt(A, a, b, P, z[:, None] == z[None, :])
    E = a.size
    Ap = A[a][np.arange(E)[:, None, None], P[:, :, None], P[:, None, :]]
    matched = np.linalg.norm((Ap - A[b]).reshape(E, -1), axis=1)
    plain = np.linalg.norm((A[a] - A[b]).reshape(E, -1), axis=1)
    better = matched < plain * (1.0 - 1e-9)
    residual = np.where(better, matched, plain)
    # tree over the residuals (a zero residual, for duplicate frames, must stay an edge)
    weights = residual + np.finfo(float).tiny
    S = frames.size
    tree = minimum_spanning_tree(coo_matrix((weights, (a, b)), shape=(S, S)).tocsr()).tocoo()
    edge_index = {(int(i), int(j)): k for k, (i, j) in enumerate(pairs)}
    on_tree = np.array([edge_index[(min(i, j), max(i, j))] for i, j in zip(tree.row, tree.col)], dtype=np.int64)
    kept = on_tree[better[on_tree]]
    if kept.size == 0:
        return identity[None, :], np.zeros(1, dtype=np.int64)
    cands, support = np.unique(P[kept], axis=0, return_counts=True)
    return cands, support


def find_permutations(
    R: Any,
    z: Any,
    *,
    n_samples: int = 200,
    seed: int | None = 0,
    n_neighbours: int = 5,
    min_support: int = 2,
    max_order: int = DEFAULT_MAX_ORDER,
    progress: Progress | None = None,
) -> np.ndarray:
    """The permutation group realised by the data (method.md; see the module docstring).

    Parameters
    ----------
    R : array_like, shape (M, N, 3)
        Positions in Å (any length unit works: only ratios of distances matter).
    z : array_like of int, shape (N,)
        Atomic numbers; only atoms of one element are exchanged.
    n_samples : int
        Frames drawn at random (all frames when M <= n_samples).
    seed : int or None
        Seed of ``numpy.random.default_rng`` for that draw.
    n_neighbours : int
        Candidate partners per frame (nearest in the relabelling-invariant fingerprint).
    min_support : int
        Tree edges on which a permutation must be found to be kept (1 keeps every match).
    max_order : int
        Largest group accepted (``close_group``).
    progress : callable(fraction, message), optional
        Called with a fraction in [0, 1] while the search runs.

    Returns
    -------
    ndarray of int64, shape (S, N)
        The group: identity first, rows sorted, closed under composition. Row
        ``p`` relabels a configuration as ``R[p]`` (atom i maps to p[i]).

    Raises
    ------
    SymmetryError
        Bad shapes, coinciding atoms, or a group larger than ``max_order``.
    """
    R, z = _check_R_z(R, z)
    if int(min_support) != min_support or min_support < 1:
        raise SymmetryError(f"min_support must be an integer >= 1, got {min_support!r}")
    if int(n_neighbours) != n_neighbours or n_neighbours < 1:
        raise SymmetryError(f"n_neighbours must be an integer >= 1, got {n_neighbours!r}")
    cands, support = _search(R, z, n_samples=n_samples, seed=seed, n_neighbours=n_neighbours, progress=progress)
    gens = cands[support >= min_support]
    if progress is not None:
        progress(0.9, f"closing {gens.shape[0]} permutations under composition")
    group = close_group(gens if gens.size else np.arange(z.size)[None, :], max_order=max_order)
    if progress is not None:
        progress(1.0, f"found {group.shape[0]} permutations")
    return group


