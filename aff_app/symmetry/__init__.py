"""Permutation symmetry of molecular data and permutationally equivalent (PE) sets.

method.md, "Permutation symmetry and permutationally equivalent (PE) sets": a
permutation of atom indices (same element onto same element) is a symmetry of
the data when it maps configurations onto configurations. The permutations the
data realises are collected over sampled frames, closed under composition (a
group) and the orbits of the atoms under that group are the PE sets.

Convention (used by every function here and by the PS kernel)
--------------------------------------------------------------
A permutation is an integer array ``p`` of shape (N,) holding each of
``0..N-1`` once; "atom ``i`` maps to ``p[i]``". Applied to a configuration
``R`` of shape (N, 3) it gives the *relabelled* configuration ``R[p]``, whose
atom ``i`` sits where atom ``p[i]`` of ``R`` was (and ``z[p] == z`` because a
symmetry only exchanges atoms of one element). Its inverse distances are
``A[np.ix_(p, p)]``. Applying ``p`` and then ``q`` gives ``R[p][q] == R[p[q]]``,
so that composition is ``p[q]``; the inverse of ``p`` is ``np.argsort(p)``.
A group is returned as an array of shape (S, N), rows sorted lexicographically,
which puts the identity ``arange(N)`` first.

The detection (``find_permutations``), step by step
---------------------------------------------------
1. Draw ``n_samples`` frames at random (``numpy.random.default_rng(seed)``).
2. Describe each frame by its matrix of inverse distances A (method.md,
   "Descriptor": the same numbers the kernel compares, so a symmetry is judged
   in the space the model works in; it also weights bonded pairs most, so a
   relabelling has to keep bonds: with plain distances the two oxygens of
   aspirin's carboxyl group look exchangeable whenever the group rotates,
   although the O-H bond stays on one of them).
3. Candidate pairs: each frame with its ``n_neighbours`` nearest frames under a
   fingerprint that no relabelling changes (for each pair of elements, the
   sorted inverse distances between their atoms).
4. Each candidate pair (a, b) is matched: the permutation p minimising
   ``||A_a[p][:, p] - A_b||`` (a quadratic assignment problem). It is started
   from a linear assignment per element block
   (``scipy.optimize.linear_sum_assignment``) between per-atom profiles (each
   atom's sorted inverse distances to every element) and polished by exchanges
   of two atoms of one element while the objective decreases (2-opt).
   The residual of the pair is the smaller of the matched and the unmatched one.
5. Synchronisation: a minimum spanning tree over the residuals links every
   frame to the rest of the data through its closest matches; the permutations
   of its edges (when they beat the identity) are the candidates. A candidate
   must be realised on at least ``min_support`` tree edges (default 2): a
   one-off match usually belongs to an outlier frame whose nearest partner
   differs in a way that a relabelling only partly hides.
6. The kept permutations are closed under composition (``close_group``) and
   their orbits are the PE sets (``pe_sets_from_permutations``).

The ``sgdml`` package (Chmiela et al.) runs the same programme with a different
matcher (eigenvectors of the distance matrix, all pairs of frames); on the
eight rMD17 molecules both find the groups of method.md's table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

__all__ = [
    "DEFAULT_MAX_ORDER",
    "SymmetryError",
    "SymmetryInfo",
    "bond_graph",
    "close_group",
    "cycle_notation",
    "detect_symmetry",
    "find_permutations",
    "graph_automorphisms",
    "parse_pe_sets",
    "pe_sets_from_permutations",
    "restrict_group",
    "user_symmetry",
    "validate_pe_sets",
]

#: Largest group accepted by default. The PS kernel costs S times the plain one,
#: so groups this large are impractical anyway; an explosion beyond it usually
#: means spurious matches.
DEFAULT_MAX_ORDER = 1000

#: Methods a SymmetryInfo can come from.
METHODS = ("data", "graph", "user")

Progress = Callable[[float, str], None]


class SymmetryError(ValueError):
    """Invalid permutations or PE sets, or a search that cannot be completed (message has the numbers)."""


# ---------------------------------------------------------------------------
# permutations and groups
# ---------------------------------------------------------------------------
def _as_perms(perms: Any, n_atoms: int | None = None) -> np.ndarray:
    """Validate an (S, N) array of permutations and return it as int64."""
    P = np.asarray(perms)
    if P.ndim == 1:
        P = P[None, :]
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] == 0:
        raise SymmetryError(f"permutations must have shape (S, N) with S, N >= 1, got {np.shape(perms)}")
    if not np.issubdtype(P.dtype, np.integer):
        if not np.all(np.isfinite(P)) or not np.all(np.equal(np.mod(P, 1), 0)):
            raise SymmetryError("permutations must hold integer atom indices")
    P = P.astype(np.int64)
    n = P.shape[1]
    if n_atoms is not None and n != n_atoms:
        raise SymmetryError(f"permutations act on {n} atoms, expected {n_atoms}")
    bad = np.flatnonzero(np.any(np.sort(P, axis=1) != np.arange(n), axis=1))
    if bad.size:
        raise SymmetryError(
            f"{bad.size} of {P.shape[0]} rows are not permutations of 0..{n - 1} "
            f"(first bad row {int(bad[0])}: {P[bad[0]].tolist()})"
        )
    return P


def _sorted_unique(P: np.ndarray) -> np.ndarray:
    """Unique rows in lexicographic order (the identity, if present, comes first)."""
    return np.unique(P, axis=0)


def close_group(perms: Any, *, max_order: int = DEFAULT_MAX_ORDER) -> np.ndarray:
    """The group generated by some permutations (closure under composition).

    Parameters
    ----------
    perms : array_like of int, shape (K, N) or (N,)
        Generators, in the module's convention (atom i maps to p[i]).
    max_order : int
        Largest group accepted.

    Returns
    -------
    ndarray of int64, shape (S, N)
        Every product of generators, identity first, rows sorted; closed under
        composition ``p[q]`` and inverse ``argsort(p)``.

    Raises
    ------
    SymmetryError
        If the rows are not permutations, or the group grows beyond ``max_order``.
    """
    P = _as_perms(perms)
    n = P.shape[1]
    identity = np.arange(n, dtype=np.int64)
    gens = _sorted_unique(P)
    gens = gens[np.any(gens != identity, axis=1)]
    seen = {identity.tobytes()}
    elements = [identity]
    frontier = identity[None, :]
    while frontier.shape[0] and gens.shape[0]:
        # every element of the frontier followed by every generator: products[f, g] = frontier[f][gens[g]]
        products = frontier[:, gens].reshape(-1, n)
        new = []
        for row in products:
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                new.append(row)
                if len(seen) > max_order:
                    raise SymmetryError(
                        f"the group generated by {gens.shape[0]} permutations of {n} atoms has more than "
                        f"max_order={max_order} elements (reached {len(seen)}); the matches are probably "
                        "spurious: use fewer or more similar frames, the bond-graph view, or set PE sets by hand"
                    )
        elements.extend(new)
        frontier = np.array(new, dtype=np.int64).reshape(-1, n)
    return _sorted_unique(np.array(elements, dtype=np.int64))


def pe_sets_from_permutations(perms: Any) -> list[np.ndarray]:
    """Orbits of the atoms under the group generated by ``perms``: the PE sets.

    Parameters
    ----------
    perms : array_like of int, shape (S, N)
        Permutations (a group or just generators: the orbits are the same).

    Returns
    -------
    list of ndarray of int64
        Each orbit sorted; the list sorted by first atom; together a partition of 0..N-1.
    """
    P = _as_perms(perms)
    n = P.shape[1]
    rows = np.repeat(np.arange(n), P.shape[0])
    cols = P.T.reshape(-1)
    graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return _sets_from_labels(labels)


def _sets_from_labels(labels: np.ndarray) -> list[np.ndarray]:
    sets = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    return sorted(sets, key=lambda s: int(s[0]))


def cycle_notation(p: Any) -> str:
    """Disjoint-cycle form of one permutation, e.g. ``'(0 1 2)(6 7)'``; ``'()'`` for the identity."""
    p = _as_perms(p)[0]
    seen = np.zeros(p.size, dtype=bool)
    out = []
    for start in range(p.size):
        if seen[start] or p[start] == start:
            continue
        cycle = [start]
        seen[start] = True
        nxt = int(p[start])
        while nxt != start:
            cycle.append(nxt)
            seen[nxt] = True
            nxt = int(p[nxt])
        out.append("(" + " ".join(map(str, cycle)) + ")")
    return "".join(out) or "()"


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


# ---------------------------------------------------------------------------
# bond-graph view
# ---------------------------------------------------------------------------
def bond_graph(R0: Any, z: Any, *, scale: float = 1.15) -> np.ndarray:
    """Bonds of one configuration: atoms closer than ``scale`` times the sum of covalent radii.

    Parameters
    ----------
    R0 : array_like, shape (N, 3)
        Positions in Å (covalent radii from ``ase.data.covalent_radii`` are in Å).
    z : array_like of int, shape (N,)
    scale : float
        Tolerance on the sum of covalent radii.

    Returns
    -------
    ndarray of bool, shape (N, N)
        Symmetric adjacency matrix, False on the diagonal.
    """
    from ase.data import covalent_radii

    R, z = _check_R_z(R0, z)
    if R.shape[0] != 1:
        raise SymmetryError(f"bond_graph takes one configuration (N, 3), got {R.shape[0]} frames")
    if not scale > 0:
        raise SymmetryError(f"scale must be positive, got {scale}")
    r = R[0]
    d = np.linalg.norm(r[:, None, :] - r[None, :, :], axis=-1)
    rc = covalent_radii[z]
    adj = d < scale * (rc[:, None] + rc[None, :])
    np.fill_diagonal(adj, False)
    return adj


def _refined_colours(adj: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Colour refinement (1-dimensional Weisfeiler-Lehman) starting from the elements.

    Automorphisms map each atom onto an atom of the same final colour.
    """
    colours = np.unique(z, return_inverse=True)[1]
    neighbours = [np.flatnonzero(row) for row in adj]
    while True:
        signatures = [(int(colours[i]), tuple(sorted(colours[nb].tolist()))) for i, nb in enumerate(neighbours)]
        table = {sig: k for k, sig in enumerate(sorted(set(signatures)))}
        new = np.array([table[sig] for sig in signatures])
        if np.unique(new).size == np.unique(colours).size:
            return new
        colours = new


def graph_automorphisms(
    R0: Any, z: Any, *, scale: float = 1.15, max_order: int = DEFAULT_MAX_ORDER
) -> np.ndarray:
    """Automorphisms of the bond graph with atoms labelled by element (the graph view).

    The graph knows which atoms are bonded, not the geometry or the dynamics,
    so it can find more permutations than the data realises (ethanol: 12, all
    of S2 x S3 on the CH2 and CH3 hydrogens, where the data realises 6: a
    mirror image swaps two CH3 hydrogens *and* the two CH2 hydrogens, never
    one pair alone) or fewer, when bonds change during the trajectory (a
    proton that moves between two atoms) or one frame's bonds are atypical.
    For benzene it finds the 12 permutations of the dihedral group D6 of the
    ring (each H follows its C): the point group D6h has 24 operations, but the
    12 that involve the molecular plane as a mirror move the atoms exactly as
    the other 12, so they are the same 12 permutations.

    Parameters
    ----------
    R0 : array_like, shape (N, 3)
        One configuration in Å, used only for its bonds (``bond_graph``).
    z : array_like of int, shape (N,)
    scale : float
        Bond tolerance passed to ``bond_graph``.
    max_order : int
        Largest group accepted.

    Returns
    -------
    ndarray of int64, shape (S, N)
        The automorphism group in the module's convention, identity first, rows sorted.

    Notes
    -----
    Backtracking over atoms in breadth-first order, trying only atoms of the
    same refined colour whose bonds to the atoms placed so far agree (a small
    VF2-like search; fine for molecules of up to ~100 atoms).
    """
    R, z = _check_R_z(R0, z)
    adj = bond_graph(R[0], z, scale=scale)
    n = z.size
    colours = _refined_colours(adj, z)
    # breadth-first order, each component started at an atom of its rarest colour
    counts = np.bincount(colours)
    order: list[int] = []
    placed = np.zeros(n, dtype=bool)
    while len(order) < n:
        rest = np.flatnonzero(~placed)
        start = int(rest[np.argmin(counts[colours[rest]])])
        queue = [start]
        placed[start] = True
        while queue:
            v = queue.pop(0)
            order.append(v)
            for w in np.flatnonzero(adj[v] & ~placed):
                placed[w] = True
                queue.append(int(w))
    order_arr = np.array(order)
    by_colour = [np.flatnonzero(colours == c) for c in range(counts.size)]
    mapping = np.full(n, -1, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    found: list[np.ndarray] = []

    def extend(k: int) -> None:
        if k == n:
            found.append(mapping.copy())
            if len(found) > max_order:
                raise SymmetryError(
                    f"the bond graph of these {n} atoms has more than max_order={max_order} automorphisms"
                )
            return
        v = order_arr[k]
        prev = order_arr[:k]
        for w in by_colour[colours[v]]:
            if used[w] or np.any(adj[v, prev] != adj[w, mapping[prev]]):
                continue
            mapping[v] = w
            used[w] = True
            extend(k + 1)
            used[w] = False
        mapping[v] = -1

    extend(0)
    return _sorted_unique(np.array(found, dtype=np.int64))


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
