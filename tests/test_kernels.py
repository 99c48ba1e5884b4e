"""Kernel blocks as properties: analytic derivatives against central finite
differences of the kernel value, the sparse assembly against the dense
Jᵀ H J of method.md, and invariance to rotation, translation and permutation."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from aff_app.gp.descriptors import descriptor_jacobian, inverse_distances, pair_indices
from aff_app.gp.kernels import (
    force_covariance_sets,
    energy_covariance,
    energy_force_covariance,
    force_covariance,
    force_covariance_self,
    matern52,
)

GAMMA = 0.7


def _frames(n_frames=3, n_atoms=5, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=1.2, size=(n_atoms, 3))
    return base + rng.normal(scale=0.15, size=(n_frames, n_atoms, 3))


def _k(xa, xb, perms=None):
    return energy_covariance(xa[None], xb[None], GAMMA, perms=perms)[0, 0]


def _fd_force_cov(xa, xb, perms=None, h=1e-4):
    """∂²k/∂x_a∂x_b by central differences (the definition of cov(F_a, F_b))."""
    n = xa.size
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei = np.zeros(n); ei[i] = h
            ej = np.zeros(n); ej[j] = h
            ei, ej = ei.reshape(xa.shape), ej.reshape(xb.shape)
            out[i, j] = (
                _k(xa + ei, xb + ej, perms) - _k(xa + ei, xb - ej, perms)
                - _k(xa - ei, xb + ej, perms) + _k(xa - ei, xb - ej, perms)
            ) / (4 * h * h)
    return out


def test_pair_order_is_lower_triangle_row_major():
    i, j = pair_indices(4)
    assert list(zip(i.tolist(), j.tolist())) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]


def test_descriptor_jacobian_matches_finite_differences():
    R = _frames(1, 5)[0]
    J = descriptor_jacobian(R)[0]
    h = 1e-6
    fd = np.zeros_like(J)
    for c in range(R.size):
        e = np.zeros(R.size); e[c] = h
        fd[:, c] = (inverse_distances(R + e.reshape(R.shape)) - inverse_distances(R - e.reshape(R.shape)))[0] / (2 * h)
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-9)


def test_force_covariance_matches_finite_differences_of_kernel():
    R = _frames(2, 4)
    K = force_covariance(R[:1], R[1:], GAMMA)
    np.testing.assert_allclose(K, _fd_force_cov(R[0], R[1]), rtol=2e-5, atol=1e-6)


def test_ps_force_covariance_matches_finite_differences():
    R = _frames(2, 4, seed=3)
    perms = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 3, 2], [1, 0, 3, 2]])
    K = force_covariance(R[:1], R[1:], GAMMA, perms=perms)
    np.testing.assert_allclose(K, _fd_force_cov(R[0], R[1], perms), rtol=2e-5, atol=1e-6)


def test_energy_force_covariance_is_minus_gradient():
    R = _frames(2, 4, seed=1)
    perms = np.array([[0, 1, 2, 3], [1, 0, 2, 3]])
    for p in (None, perms):
        C = energy_force_covariance(R[:1], R[1:], GAMMA, perms=p)[0, 0]  # (N, 3)
        h = 1e-6
        fd = np.zeros_like(R[1])
        for a in range(4):
            for c in range(3):
                e = np.zeros_like(R[1]); e[a, c] = h
                fd[a, c] = -(_k(R[0], R[1] + e, p) - _k(R[0], R[1] - e, p)) / (2 * h)
        np.testing.assert_allclose(C, fd, rtol=1e-6, atol=1e-9)


def test_sparse_assembly_equals_dense_JT_H_J():
    R = _frames(3, 6, seed=2)
    D = inverse_distances(R)
    J = descriptor_jacobian(R)
    K = force_covariance(R, R, GAMMA).reshape(3, 18, 3, 18)
    for a in range(3):
        for b in range(3):
            u = D[a] - D[b]
            s = np.sqrt(5) * np.linalg.norm(u) / GAMMA
            H = 5 / (3 * GAMMA**2) * np.exp(-s) * ((1 + s) * np.eye(u.size) - 5 / GAMMA**2 * np.outer(u, u))
            np.testing.assert_allclose(K[a, :, b], J[a].T @ H @ J[b], rtol=1e-10, atol=1e-12)


def test_subset_of_atoms_is_a_submatrix():
    R = _frames(3, 5, seed=4)
    full = force_covariance(R, R, GAMMA).reshape(3, 5, 3, 3, 5, 3)
    atoms = np.array([1, 3])
    sub = force_covariance(R, R, GAMMA, atoms_a=atoms, atoms_b=atoms).reshape(3, 2, 3, 3, 2, 3)
    np.testing.assert_allclose(sub, full[:, atoms][:, :, :, :, atoms], rtol=1e-12, atol=1e-14)


def test_chunked_threaded_equals_single_chunk():
    R = _frames(17, 5, seed=5)
    a = force_covariance(R, R, GAMMA, chunk_bytes=1, threads=2)
    b = force_covariance(R, R, GAMMA, chunk_bytes=2**30, threads=1)
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a, a.T, rtol=1e-12, atol=1e-14)


def test_diag_matches_full_diagonal_blocks():
    R = _frames(3, 4, seed=6)
    perms = np.array([[0, 1, 2, 3], [1, 0, 2, 3]])
    full = force_covariance(R, R, GAMMA, perms=perms).reshape(3, 4, 3, 3, 4, 3)
    diag, sub = force_covariance_self(R, GAMMA, [np.arange(4), np.array([0, 1])], perms=perms)
    for m in range(3):
        np.testing.assert_allclose(diag[m], full[m, :, :, m], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sub[m], full[m, :2, :, m, :2], rtol=1e-12, atol=1e-14)


def test_kernel_is_invariant_and_forces_equivariant_under_rigid_motion():
    R = _frames(2, 5, seed=7)
    Q = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    Rt = R @ Q.T + np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(inverse_distances(R), inverse_distances(Rt), rtol=1e-12)
    np.testing.assert_allclose(energy_covariance(R, R, GAMMA), energy_covariance(Rt, Rt, GAMMA), rtol=1e-12)
    K = force_covariance(R[:1], R[1:], GAMMA).reshape(5, 3, 5, 3)
    Kt = force_covariance(Rt[:1], Rt[1:], GAMMA).reshape(5, 3, 5, 3)
    # forces rotate: cov(QF_a, QF_b) = Q cov Qᵀ per 3×3 block
    np.testing.assert_allclose(Kt, np.einsum("ce,iejf,df->icjd", Q, K, Q), rtol=1e-9, atol=1e-12)


def test_ps_kernel_is_invariant_to_permuting_either_argument():
    R = _frames(2, 4, seed=8)
    perms = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 3, 2], [1, 0, 3, 2]])
    k = energy_covariance(R[:1], R[1:], GAMMA, perms=perms)
    for p in perms:
        np.testing.assert_allclose(energy_covariance(R[:1][:, p], R[1:], GAMMA, perms=perms), k, rtol=1e-12)
        np.testing.assert_allclose(energy_covariance(R[:1], R[1:][:, p], GAMMA, perms=perms), k, rtol=1e-12)


def test_matern_value_at_zero_and_decay():
    assert matern52(0.0, 1.0) == pytest.approx(1.0)
    r = np.linspace(0, 5, 50)
    assert np.all(np.diff(matern52(r, 1.0)) < 0)


def test_fused_assembly_equals_numpy_reference(monkeypatch):
    import aff_app.gp.kernels as kern

    if kern._assemble is None:
        pytest.fail("numba is a pinned requirement: the fused assembly must be available")
    R = _frames(7, 6, seed=9)
    perms = np.array([[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 5, 4]])
    sets = [np.array([0, 1]), np.array([2]), np.array([3]), np.array([4, 5])]
    fused = force_covariance_sets(R, R[:5], GAMMA, sets, perms=perms)
    monkeypatch.setattr(kern, "_FORCE_NUMPY", True)
    ref = force_covariance_sets(R, R[:5], GAMMA, sets, perms=perms)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk_bytes", [1, 2**30])
def test_symmetric_half_build_equals_full_build(chunk_bytes):
    from aff_app.gp.kernels import Geometry

    R = _frames(9, 6, seed=10)
    perms = np.array([[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 5, 4]])
    sets = [np.array([0, 1]), np.array([2]), np.array([3]), np.array([4, 5])]
    G = Geometry.from_positions(R)
    half = force_covariance_sets(G, G, GAMMA, sets, perms=perms, chunk_bytes=chunk_bytes)  # same object
    full = force_covariance_sets(G, G.take(slice(None)), GAMMA, sets, perms=perms, chunk_bytes=chunk_bytes)
    for a, b in zip(half, full):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a, a.T, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("numpy_path", [False, True])
def test_one_set_at_a_time_into_a_reused_buffer_equals_the_one_pass_build(monkeypatch, numpy_path):
    # the fit's lean path: each set built alone into the front of one stale buffer (the first
    # permutation writes, the others add: nothing is zeroed), the pair coefficients shared
    import aff_app.gp.kernels as kern
    from aff_app.gp.kernels import CoefficientCache, Geometry

    monkeypatch.setattr(kern, "_FORCE_NUMPY", numpy_path)
    R = _frames(9, 6, seed=12)
    perms = np.array([[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 5, 4]])
    sets = [np.array([0, 1]), np.array([2]), np.array([3]), np.array([4, 5])]
    G = Geometry.from_positions(R)
    ref = force_covariance_sets(G, G, GAMMA, sets, perms=perms, mirror=False, chunk_bytes=1)
    cache = CoefficientCache(lmax=2)
    buf = np.full(max(K.size for K in ref), np.nan)
    for s, K in zip(sets, ref):
        out = force_covariance_sets(G, G, GAMMA, [s], perms=perms, mirror=False, chunk_bytes=1,
                                    out=[buf[: K.size]], coef_cache=cache)[0]
        assert np.shares_memory(out, buf)
        a = 3 * s.size  # frame blocks on and below the diagonal are complete; above them, the buffer's old values
        below = np.kron(np.tril(np.ones((9, 9))), np.ones((a, a))).astype(bool)
        np.testing.assert_allclose(out[below], K[below], rtol=1e-12, atol=1e-14)
        buf[: K.size] = np.where(below.ravel(), -1e300, np.nan)  # stale content for the next set
    assert len(cache._store) > 1 and cache.nbytes > 0
    # a cache entry is keyed by γ: another γ computes its own coefficients
    other = force_covariance_sets(G, G, 2 * GAMMA, [sets[1]], perms=perms, mirror=False, chunk_bytes=1,
                                  coef_cache=cache)[0]
    fresh = force_covariance_sets(G, G, 2 * GAMMA, [sets[1]], perms=perms, mirror=False, chunk_bytes=1)[0]
    np.testing.assert_allclose(other, fresh, rtol=1e-12, atol=1e-14)


def test_out_buffers_are_checked():
    from aff_app.gp.kernels import Geometry

    G = Geometry.from_positions(_frames(3, 4, seed=13))
    with pytest.raises(ValueError, match="C-ordered float64 with 81 elements"):
        force_covariance_sets(G, G, GAMMA, [np.array([0])], out=[np.empty(80)])
    with pytest.raises(ValueError, match="2 buffers for 1 sets"):
        force_covariance_sets(G, G, GAMMA, [np.array([0])], out=[np.empty(81), np.empty(81)])


def test_energy_covariance_permutes_the_smaller_side_with_the_same_result():
    """k_s(x_a, x_b) = (1/S) Σ_q k(x_a, P_q x_b): computing k(P_q⁻¹ x_a, x_b) instead is the same number."""
    from aff_app.gp.kernels import energy_covariance, matern52
    from aff_app.gp.descriptors import inverse_distances

    rng = np.random.default_rng(3)
    Ra = rng.normal(size=(2, 6, 3)) * 1.5
    Rb = rng.normal(size=(7, 6, 3)) * 1.5
    perms = np.array([np.arange(6), [1, 0, 2, 3, 4, 5], [0, 1, 3, 2, 5, 4], [1, 0, 3, 2, 5, 4]])

    def brute(A, B):
        Da = inverse_distances(A)
        return np.mean([matern52(np.linalg.norm(Da[:, None] - inverse_distances(B[:, p])[None], axis=-1), 2.0)
                        for p in perms], axis=0)

    np.testing.assert_allclose(energy_covariance(Ra, Rb, 2.0, perms=perms), brute(Ra, Rb), rtol=1e-12)
    np.testing.assert_allclose(energy_covariance(Rb, Ra, 2.0, perms=perms), brute(Rb, Ra), rtol=1e-12)
