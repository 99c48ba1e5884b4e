"""Inverse-distance descriptor and its (sparse) Jacobian.

THE pair order (method.md "Descriptor"), used by every module that indexes pairs:
pair ``p`` is ``(i, j)`` with ``i > j``, enumerated row by row as
``np.tril_indices(N, -1)``: (1,0), (2,0), (2,1), (3,0), ... — P = N(N-1)/2
pairs. Descriptor, Jacobian and permutations all go through
:func:`pair_indices`.

The Jacobian is never formed densely by the models: row ``p = (i, j)`` has
only two non-zero 3-vectors, ∂D_p/∂r_i = −(r_i − r_j)/|r_i − r_j|³ and
∂D_p/∂r_j = +(r_i − r_j)/|r_i − r_j|³. We store it as the antisymmetric
array ``V[m, i, k] = (r_i − r_k)/|r_i − r_k|³`` (zero on the diagonal), so
that ∂D_{ik}/∂r_i = −V[i, k] for either order of i and k.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from aff_app.errors import AFFError


class GeometryError(AFFError, ValueError):
    """Positions that no descriptor can be built from (coincident atoms, bad shape)."""


@lru_cache(maxsize=64)
def pair_indices(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices ``(i, j)``, ``i > j``, of the P = N(N−1)/2 pairs in THE pair order."""
    i, j = np.tril_indices(n_atoms, -1)
    i.setflags(write=False)
    j.setflags(write=False)
    return i, j


def _as_frames(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[-1] != 3 or R.shape[1] < 2:
        raise GeometryError(f"positions must have shape (M, N, 3) with N >= 2, got {np.shape(R)}")
    return R


def distance_matrices(R: np.ndarray) -> np.ndarray:
    """Pairwise distances, shape (M, N, N), Å."""
    R = _as_frames(R)
    diff = R[:, :, None, :] - R[:, None, :, :]
    return np.sqrt(np.einsum("mijc,mijc->mij", diff, diff))


def inverse_distances(R: np.ndarray) -> np.ndarray:
    """Descriptor D(x): inverse pairwise distances in THE pair order.

    Parameters
    ----------
    R : ndarray, shape (M, N, 3) or (N, 3)
        Positions in Å.

    Returns
    -------
    D : ndarray, shape (M, P)
        1/|r_i − r_j| in 1/Å, P = N(N−1)/2.
    """
    R = _as_frames(R)
    i, j = pair_indices(R.shape[1])
    d = np.linalg.norm(R[:, i, :] - R[:, j, :], axis=-1)
    if np.any(d < 1e-8):
        m, p = np.argwhere(d < 1e-8)[0]
        raise GeometryError(
            f"atoms {i[p]} and {j[p]} coincide in frame {m} (distance {d[m, p]:.2e} Å): "
            "inverse distances are undefined"
        )
    return 1.0 / d


def geometry_terms(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense inverse-distance matrices and the compact Jacobian of each frame.

    Returns
    -------
    Dmat : ndarray, shape (M, N, N)
        ``Dmat[m, i, k] = 1/|r_i − r_k|`` (symmetric, zero diagonal), 1/Å.
    V : ndarray, shape (M, N, N, 3)
        ``V[m, i, k] = (r_i − r_k)/|r_i − r_k|³`` (antisymmetric, zero
        diagonal), 1/Å². ∂D_{ik}/∂r_i = −V[m, i, k].
    """
    R = _as_frames(R)
    n = R.shape[1]
    diff = R[:, :, None, :] - R[:, None, :, :]
    dist = np.sqrt(np.einsum("mijc,mijc->mij", diff, diff))
    eye = np.eye(n, dtype=bool)
    off = dist[:, ~eye]
    if np.any(off < 1e-8):
        m = int(np.argwhere(off < 1e-8)[0, 0])
        raise GeometryError(f"two atoms coincide in frame {m}: inverse distances are undefined")
    dist[:, eye] = np.inf
    Dmat = 1.0 / dist
    V = diff * (Dmat**3)[..., None]
    return Dmat, V


def descriptor_jacobian(R: np.ndarray) -> np.ndarray:
    """Dense Jacobian ∂D/∂x, shape (M, P, 3N) — for tests and small N only."""
    R = _as_frames(R)
    m, n, _ = R.shape
    i, j = pair_indices(n)
    diff = R[:, i, :] - R[:, j, :]
    g = diff / (np.linalg.norm(diff, axis=-1) ** 3)[..., None]
    J = np.zeros((m, i.size, n, 3))
    p = np.arange(i.size)
    J[:, p, i, :] = -g
    J[:, p, j, :] = g
    return J.reshape(m, i.size, 3 * n)


def farthest_point_order(D: np.ndarray, k: int, first: int) -> np.ndarray:
    """Farthest-point sampling on descriptors: ``first``, then ``k − 1`` rows each farthest
    (Euclidean) from those chosen. D: (M, P); returns (k,) row indices in the order chosen.

    One loop for the two samplers built on it: AFF's energy subset (``aff_energy.spread_frames``)
    and the iterative path's Nyström frames (``iterative.farthest_point_frames``), which differ
    only in where they start and which rows they may take.
    """
    chosen = [int(first)]
    dist = np.sum((D - D[first]) ** 2, axis=1)
    for _ in range(int(k) - 1):
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, np.sum((D - D[j]) ** 2, axis=1))
    return np.asarray(chosen, dtype=np.int64)
