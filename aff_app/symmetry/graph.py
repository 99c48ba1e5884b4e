"""The bond-graph view: automorphisms of the covalent bond graph of one frame, for comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
from aff_app.symmetry.detect import _check_R_z
from aff_app.symmetry.groups import DEFAULT_MAX_ORDER, SymmetryError, _sorted_unique


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


