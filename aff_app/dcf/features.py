"""Per-atom rotation-invariant features and rotation-covariant vectors (the DCF-style network's inputs).

For atom i of a frame, with r_ij = |r_j − r_i| and the smooth cutoff
fc(r) = ½(cos(π r / r_c) + 1) for r < r_c (0 beyond):

* radial symmetry functions (Behler–Parrinello G2), one block per neighbour element e:
  G_e,μ = Σ_{j∈e} exp(−(r_ij − μ)² / (2 w²)) fc(r_ij), μ on an even grid;
* angular symmetry functions (ANI-style G4), one block per unordered element pair (a, b):
  G_ab,θs,Rs = Σ_{j∈a, k∈b, j≠k} ((1 + cos(θ_ijk − θs)) / 2)^ζ exp(−((r_ij + r_ik)/2 − Rs)² / (2 w_a²))
  fc(r_ij) fc(r_ik), halved when a = b so every unordered triple counts once;
* covariant vectors, one per neighbour element e and radial centre μ (narrow weights, so
  that neighbours at slightly different distances point the vectors in different
  directions and VᵀV stays well conditioned):
  v_e,μ = Σ_{j∈e} exp(−(r_ij − μ)² / (2 w_v²)) fc(r_ij) (r_j − r_i) / r_ij  (Å⁰: unit vectors weighted);
* the Gram matrix of those vectors, v_k · v_l (k ≤ l): angular functions
  Σ_{j,l} w_k(r_ij) w_l(r_il) cos θ_jil whose radial parts are the vectors' own weights.
  When the force is a sum of pair terms along the bonds, F = Σ_l c_l v_l, its projections
  p_k = Σ_l (v_k · v_l) c_l are linear in these: on rMD17 ethanol a linear model on them
  alone was already far better than on the symmetry functions alone.

The invariant features (G2, G4, Gram) are unchanged by rotation, reflection, translation and a
permutation of atoms of one element; the vectors rotate and reflect with the molecule. No spatial
derivatives are needed anywhere (the network predicts forces directly), so
these are plain values. Units: distances and widths in Å, angles in rad.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FeatureSpec", "atom_features", "n_features", "n_vectors"]

#: Frames per chunk: bounds the (B, N, N, N, terms) angular temporaries (~100 MB for 21 atoms).
_CHUNK_BYTES = 96 * 2**20


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that fixes the feature and vector layout of one molecule.

    Attributes
    ----------
    elements : tuple of int
        Sorted distinct atomic numbers of the molecule (the neighbour channels).
    cutoff : float
        Cutoff radius r_c, Å, of radial features and vectors.
    radial_centres : tuple of float
        μ of the radial Gaussians, Å.
    radial_width : float
        Their standard deviation w, Å.
    angular_cutoff : float
        Cutoff radius of the angular features, Å.
    angle_centres : tuple of float
        θs, rad.
    zeta : float
        Sharpness ζ of the angular terms.
    angular_centres : tuple of float
        Rs of the mean-distance Gaussians of the angular terms, Å.
    angular_width : float
        Their standard deviation, Å.
    vector_centres : tuple of float
        μ of the vectors' radial weights, Å.
    vector_width : float
        Their standard deviation w_v, Å.
    gram : bool
        Append the vectors' Gram matrix entries v_k · v_l (k ≤ l) to the invariant features.
    """

    elements: tuple[int, ...]
    cutoff: float
    radial_centres: tuple[float, ...]
    radial_width: float
    angular_cutoff: float
    angle_centres: tuple[float, ...]
    zeta: float
    angular_centres: tuple[float, ...]
    angular_width: float
    vector_centres: tuple[float, ...]
    vector_width: float
    gram: bool = True

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Unordered element-index pairs (a ≤ b) of the angular blocks."""
        n = len(self.elements)
        return [(a, b) for a in range(n) for b in range(a, n)]


def n_features(spec: FeatureSpec) -> int:
    """Length D of one atom's invariant feature vector."""
    ne, k = len(spec.elements), n_vectors(spec)
    gram = k * (k + 1) // 2 if spec.gram else 0
    return (ne * len(spec.radial_centres) + len(spec.pairs) * len(spec.angle_centres) * len(spec.angular_centres)
            + gram)


def n_vectors(spec: FeatureSpec) -> int:
    """Number K of covariant vectors per atom."""
    return len(spec.elements) * len(spec.vector_centres)


def _cutoff(r: np.ndarray, rc: float) -> np.ndarray:
    return np.where(r < rc, 0.5 * (np.cos(np.pi * np.minimum(r, rc) / rc) + 1.0), 0.0)


def atom_features(R: np.ndarray, z: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Invariant features and covariant vectors (method.md eq. 23) of every atom of every frame.

    Parameters
    ----------
    R : ndarray, shape (B, N, 3)
        Positions, Å (finite; checked by the caller).
    z : ndarray, shape (N,)
        Atomic numbers, each one of ``spec.elements``.
    spec : FeatureSpec

    Returns
    -------
    X : ndarray, shape (B, N, D)
        Invariant features (D = :func:`n_features`).
    V : ndarray, shape (B, N, K, 3)
        Covariant vectors (K = :func:`n_vectors`), dimensionless.
    """
    R = np.asarray(R, dtype=np.float64)
    B, N, _ = R.shape
    elems = np.asarray(spec.elements)
    onehot = (np.asarray(z)[:, None] == elems[None, :]).astype(np.float64)  # (N, E)
    D, K = n_features(spec), n_vectors(spec)
    X = np.empty((B, N, D))
    V = np.empty((B, N, K, 3))
    per_frame = 8 * N**3 * max(len(spec.angle_centres), len(spec.angular_centres), 4) * 3
    chunk = max(1, min(B, _CHUNK_BYTES // max(per_frame, 1)))
    for s in range(0, B, chunk):
        X[s:s + chunk], V[s:s + chunk] = _chunk(R[s:s + chunk], onehot, spec)
    return X, V


def _chunk(R: np.ndarray, onehot: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    B, N, _ = R.shape
    d = R[:, None, :, :] - R[:, :, None, :]  # (B, i, j, 3): r_j − r_i
    r = np.sqrt(np.einsum("bijc,bijc->bij", d, d))
    eye = np.eye(N, dtype=bool)[None]
    r_safe = np.where(eye, 1.0, r)  # the i = j entries are masked below; avoid 0/0
    u = d / r_safe[..., None]
    notself = ~eye

    # radial G2 per neighbour element
    fc = _cutoff(r, spec.cutoff) * notself
    mu = np.asarray(spec.radial_centres)
    g = np.exp(-((r[..., None] - mu) ** 2) / (2.0 * spec.radial_width**2)) * fc[..., None]  # (B, i, j, Pr)
    radial = np.einsum("bijp,je->biep", g, onehot).reshape(B, N, -1)

    # covariant vectors per neighbour element and radial centre
    mv = np.asarray(spec.vector_centres)
    w = np.exp(-((r[..., None] - mv) ** 2) / (2.0 * spec.vector_width**2)) * fc[..., None]  # (B, i, j, Pv)
    V = np.einsum("bijp,je,bijc->biepc", w, onehot, u).reshape(B, N, -1, 3)

    # angular G4 (ANI form) per unordered element pair
    fa = _cutoff(r, spec.angular_cutoff) * notself  # (B, i, j)
    cos = np.clip(np.einsum("bijc,bikc->bijk", u, u), -1.0, 1.0)
    theta = np.arccos(cos)
    ts = np.asarray(spec.angle_centres)
    ang = ((1.0 + np.cos(theta[..., None] - ts)) * 0.5) ** spec.zeta  # (B, i, j, k, T)
    rs = np.asarray(spec.angular_centres)
    rm = 0.5 * (r[:, :, :, None] + r[:, :, None, :])  # (B, i, j, k)
    pair = fa[:, :, :, None] * fa[:, :, None, :] * (1.0 - np.eye(N))[None, None]  # j ≠ k
    rad = np.exp(-((rm[..., None] - rs) ** 2) / (2.0 * spec.angular_width**2)) * pair[..., None]  # (B,i,j,k,S)
    # Σ_jk over element channels: contract k first (the cheaper order), then j
    t1 = np.einsum("bijkt,bijks,kf->bijfts", ang, rad, onehot, optimize=True)  # (B, i, j, E, T, S)
    full = np.einsum("bijfts,je->biefts", t1, onehot)  # (B, i, E, E, T, S), symmetric in (e, f)
    blocks = []
    for a, b in spec.pairs:
        # ordered sum over j≠k counts each unordered triple twice when a = b, once per order otherwise
        blocks.append(full[:, :, a, b] * (0.5 if a == b else 1.0))
    angular = np.stack(blocks, axis=2).reshape(B, N, -1)
    parts = [radial, angular]
    if spec.gram:
        K = V.shape[2]
        iu = np.triu_indices(K)
        parts.append(np.einsum("bikc,bilc->bikl", V, V)[:, :, iu[0], iu[1]])
    return np.concatenate(parts, axis=2), V
