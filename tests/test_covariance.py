"""aff_app.gp.covariance: Fig. 1 matrices (kernel, per PE set, empirical) and the cost comparison."""

from __future__ import annotations

import numpy as np
import pytest

from aff_app.gp import covariance as cov
from aff_app.gp.kernels import force_covariance


def _molecule(n_frames: int = 6, seed: int = 0):
    """A small non-planar molecule (CH4-like, 5 atoms) jittered over frames."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    R = base[None] + 0.05 * rng.normal(size=(n_frames, 5, 3))
    z = np.array([6, 1, 1, 1, 1])
    return R, z


def _tetrahedral_group() -> np.ndarray:
    """All 24 permutations of the four H atoms (1..4), C fixed."""
    from itertools import permutations

    return np.array([[0, *p] for p in permutations([1, 2, 3, 4])])


def test_correlation_has_unit_diagonal_is_symmetric_and_bounded():
    R, _ = _molecule()
    C = cov.kernel_force_covariance(R, [0, 2, 5], 0.3)
    assert C.shape == (3 * 5 * 3, 3 * 5 * 3)
    np.testing.assert_array_equal(C, C.T)
    corr = cov.to_correlation(C)
    np.testing.assert_allclose(np.diag(corr), 1.0)
    np.testing.assert_array_equal(corr, corr.T)
    assert np.all(np.abs(corr) <= 1.0)
    # it is the covariance rescaled: corr_ij * sqrt(C_ii C_jj) == C_ij
    d = np.sqrt(np.diag(C))
    np.testing.assert_allclose(corr * np.outer(d, d), C, rtol=1e-10, atol=1e-14 * np.abs(C).max())


def test_correlation_of_a_zero_variance_row_is_zero_off_diagonal():
    C = np.array([[4.0, 0.0, 2.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
    corr = cov.to_correlation(C)
    np.testing.assert_allclose(corr, [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    with pytest.raises(cov.CovarianceError, match="negative variances"):
        cov.to_correlation(np.diag([1.0, -1.0]))
    with pytest.raises(cov.CovarianceError, match="square"):
        cov.to_correlation(np.ones((2, 3)))


def test_kernel_covariance_matches_kernels_and_is_positive_semidefinite():
    R, _ = _molecule()
    frames = [1, 4]
    C = cov.kernel_force_covariance(R, frames, 0.25)
    ref = force_covariance(R[frames], R[frames], 0.25)
    np.testing.assert_allclose(C, 0.5 * (ref + ref.T), rtol=1e-12)
    assert np.linalg.eigvalsh(C).min() > -1e-9 * np.abs(C).max()


def test_ps_self_covariance_is_invariant_to_permuting_the_configuration():
    """cov(F(Px), F(Px)) under the PS kernel is cov(F(x), F(x)) with rows/columns relabelled."""
    R, _ = _molecule()
    G = _tetrahedral_group()
    x = R[3]
    p = G[7]  # a non-trivial permutation of the H atoms
    C = cov.kernel_force_covariance(x[None], [0], 0.3, perms=G)
    Cp = cov.kernel_force_covariance(x[p][None], [0], 0.3, perms=G)
    # atom i of x[p] is atom p[i] of x: rows (i, c) of Cp are rows (p[i], c) of C
    idx = (3 * p[:, None] + np.arange(3)[None, :]).reshape(-1)
    np.testing.assert_allclose(Cp, C[np.ix_(idx, idx)], rtol=1e-10, atol=1e-14)
    # and the group average really differs from the plain kernel here
    assert not np.allclose(C, cov.kernel_force_covariance(x[None], [0], 0.3))


def test_set_covariance_is_the_block_of_the_full_matrix():
    R, _ = _molecule()
    G = _tetrahedral_group()
    frames = [0, 2, 3]
    full = cov.kernel_force_covariance(R, frames, 0.3, perms=G)
    hs = [1, 2, 3, 4]
    sub = cov.set_force_covariance(R, frames, 0.3, hs, perms=G)
    ix = cov.component_index(5, len(frames), hs)
    assert sub.shape == (3 * 3 * 4, 3 * 3 * 4)
    np.testing.assert_allclose(sub, full[np.ix_(ix, ix)], rtol=1e-10, atol=1e-14)


def test_empirical_correlation_matches_numpy_corrcoef():
    rng = np.random.default_rng(3)
    F = rng.normal(size=(40, 4, 3))
    F[:, 1] += 0.8 * F[:, 0]  # atom 1 follows atom 0
    corr = cov.empirical_force_correlation(F)
    np.testing.assert_allclose(corr, np.corrcoef(F.reshape(40, -1).T), rtol=1e-10, atol=1e-12)
    assert corr[0, 3] > 0.5  # x of atom 0 with x of atom 1
    with pytest.raises(cov.CovarianceError, match="M >= 2"):
        cov.empirical_force_correlation(F[:1])


def test_empirical_correlation_of_a_constant_component_is_zero():
    rng = np.random.default_rng(4)
    F = rng.normal(size=(20, 2, 3))
    F[:, 1, 2] = 5.0  # never changes
    corr = cov.empirical_force_correlation(F)
    assert np.all(np.isfinite(corr))
    assert corr[5, 5] == 1.0 and np.all(corr[5, :5] == 0.0)


def test_default_gamma_is_the_median_descriptor_distance():
    from aff_app.gp.descriptors import inverse_distances

    R, _ = _molecule(n_frames=12)
    D = inverse_distances(R)
    d = np.linalg.norm(D[:, None] - D[None], axis=-1)[np.triu_indices(12, 1)]
    assert cov.median_descriptor_distance(R) == pytest.approx(np.median(d), rel=1e-9)
    assert cov.default_gamma(R) == pytest.approx(float(f"{np.median(d):.3g}"))
    # subsampling draws frames without replacement and stays close
    assert cov.median_descriptor_distance(R, n_samples=8, seed=1) == pytest.approx(np.median(d), rel=0.5)
    assert cov.median_descriptor_distance(R[:1]) > 0  # one frame: still a usable positive scale


def test_parse_frame_list_and_even_frames():
    assert cov.parse_frame_list("0, 12 7", 20) == [0, 12, 7]
    for bad, msg in [("", "enter 1 to 3"), ("1, x", "cannot read 'x'"), ("1 2 3 4", "at most 3"),
                     ("25", r"outside 0\.\.19"), ("3, 3", "given twice"), ("-1", "cannot read")]:
        with pytest.raises(cov.CovarianceError, match=msg):
            cov.parse_frame_list(bad, 20)
    assert cov.even_frames(3000, 3) == [0, 1500, 2999]
    assert cov.even_frames(2, 5) == [0, 1]


def test_invalid_inputs_raise_with_the_numbers():
    R, _ = _molecule()
    with pytest.raises(cov.CovarianceError, match=r"outside 0\.\.5"):
        cov.kernel_force_covariance(R, [0, 9], 0.3)
    with pytest.raises(cov.CovarianceError, match="γ must be a positive"):
        cov.kernel_force_covariance(R, [0], 0.0)
    with pytest.raises(cov.CovarianceError, match=r"0\.\.4"):
        cov.set_force_covariance(R, [0], 0.3, [7])


def test_cost_comparison_benzene_numbers_and_formatting():
    c = cov.compare_cost(200, [6, 6])
    assert c.aff_flops == pytest.approx(2 * 3600**3 / 3)
    assert c.full_flops == pytest.approx(7200**3 / 3)
    assert c.aff_bytes == 2 * 8 * 3600**2 and c.full_bytes == 8 * 7200**2
    assert c.flops_ratio == pytest.approx(4.0) and c.bytes_ratio == pytest.approx(2.0)
    assert cov.format_flops(c.aff_flops) == "31.1 GFLOP"
    assert cov.format_flops(c.full_flops) == "124 GFLOP"
    assert cov.format_bytes(c.aff_bytes) == "207 MB"
    assert cov.format_bytes(3.2e9) == "3.2 GB"
    assert cov.format_bytes(512) == "512 B"
    # uracil: 12 single-atom sets, 144× fewer flops and 12× less memory than one 12-atom kernel
    u = cov.compare_cost(1000, [1] * 12)
    assert u.flops_ratio == pytest.approx(144.0) and u.bytes_ratio == pytest.approx(12.0)
    with pytest.raises(cov.CovarianceError):
        cov.compare_cost(0, [6, 6])


def test_block_share_properties():
    """Block-diagonal by sets → everything kept; evenly spread → the share of entries; permuting atoms together with
    their sets changes nothing; frame blocks count a set against itself in every pair of frames."""
    rng = np.random.default_rng(0)
    sets = [[0, 2], [1], [3, 4]]
    n_atoms, k = 5, 2
    n = 3 * n_atoms * k
    label = np.tile(np.repeat([0, 1, 0, 2, 2], 3), k)
    A = rng.normal(size=(n, n))
    C = cov.to_correlation(A @ A.T)
    inside = C * (label[:, None] == label[None, :])
    share = cov.block_share(inside, sets, n_atoms, k)
    assert share.kept == pytest.approx(1.0) and share.dropped == pytest.approx(0.0) and share.verdict == "strong"
    assert share.mean_between == 0.0
    even = np.ones((n, n))
    share = cov.block_share(even, sets, n_atoms, k)
    off = n * n - n
    same = (label[:, None] == label[None, :]).sum() - n
    assert share.kept == pytest.approx(same / off) == pytest.approx(share.entries)
    assert share.mean_within == share.mean_between == 1.0
    # relabelling atoms (and the sets with them) is invisible
    perm = np.array([4, 0, 3, 1, 2])  # new atom a is old atom perm[a]
    inv = np.argsort(perm)
    ix = cov.component_index(n_atoms, k, perm)
    moved = cov.block_share(C[np.ix_(ix, ix)], [[int(inv[a]) for a in s] for s in sets], n_atoms, k)
    assert moved.kept == pytest.approx(cov.block_share(C, sets, n_atoms, k).kept)
    with pytest.raises(cov.CovarianceError, match="do not cover atoms \\[4\\]"):
        cov.block_share(C, [[0, 2], [1], [3]], n_atoms, k)
    with pytest.raises(cov.CovarianceError, match="needs"):
        cov.block_share(C, sets, n_atoms, 1)
    assert cov.set_order([[3, 1], [0], [2, 4]]) == [1, 3, 0, 2, 4]
