"""The γ/λ search's numerical parts: the vector-free spectrum, parabolic refinement, the thread pool."""

import threading

import numpy as np
import pytest

from aff_app.gp._lapack_nogil import eig_projected
from aff_app.gp.hyper import LAMBDA_GRID_REL, _spectra, parabolic_refine_max, profile_loglik
from aff_app.gp.kernels import force_covariance_sets, parallel_map


def _kernel_and_labels(n_frames=40, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0, 0], [1.1, 0, 0], [0, 1.2, 0], [0, 0, 1.3], [1.0, 1.0, 0.2]])
    R = base + 0.05 * rng.normal(size=(n_frames, 5, 3))
    sets = [np.array([0]), np.array([1, 2]), np.array([3, 4])]
    Ks = force_covariance_sets(R, R, 1.5, sets)
    ys = [rng.normal(size=K.shape[0]) for K in Ks]
    return Ks, ys


@pytest.mark.parametrize("n", [2, 3, 17, 150])
def test_eig_projected_matches_a_full_eigendecomposition(n):
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    K = A @ A.T + 1e-3 * np.eye(n)
    y = rng.normal(size=n)
    w_ref, Q = np.linalg.eigh(K)
    w, qy = eig_projected(K, y)
    np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-12 * w_ref.max())
    # eigenvector signs are arbitrary: compare magnitudes, and the invariant yᵀK⁻¹y
    np.testing.assert_allclose(np.abs(qy), np.abs(Q.T @ y), rtol=1e-7, atol=1e-10 * np.linalg.norm(y))
    np.testing.assert_allclose(np.sum(qy**2 / w), y @ np.linalg.solve(K, y), rtol=1e-8)


def test_eig_projected_leaves_its_input_unless_told():
    Ks, ys = _kernel_and_labels()
    K = Ks[1].copy()
    eig_projected(K, ys[1])
    np.testing.assert_array_equal(K, Ks[1])


def test_likelihood_from_the_vector_free_spectra_equals_the_eigh_one():
    Ks, ys = _kernel_and_labels()
    lams = LAMBDA_GRID_REL * 5.0 / (3.0 * 1.5**2)
    full = profile_loglik(_spectra([K.copy() for K in Ks], ys, vectors=True), lams)
    fast = profile_loglik(_spectra([K.copy() for K in Ks], ys, vectors=False), lams)
    np.testing.assert_allclose(fast, full, rtol=1e-9, atol=1e-6)
    assert np.argmax(fast) == np.argmax(full)


def test_parabolic_refinement_finds_a_smooth_maximum_in_three_steps():
    calls = []

    def f(x):
        calls.append(x)
        return -np.cosh(x - 0.37)  # smooth, asymmetric around the grid point

    grid = np.linspace(-3, 3, 5)
    points = {float(x): f(x) for x in grid}
    calls.clear()
    parabolic_refine_max(f, points, 3)
    assert len(calls) <= 3
    best = max(points, key=points.get)
    assert abs(best - 0.37) < 0.05


def test_parabolic_refinement_stops_at_the_edge_of_the_evaluated_range():
    points = {float(x): float(x) for x in np.linspace(0, 1, 5)}  # increasing: best at the end
    parabolic_refine_max(lambda x: pytest.fail("must not evaluate"), points, 3)
    assert len(points) == 5


def test_parallel_map_keeps_order_and_runs_nested_maps_serially():
    seen = set()

    def inner(x):
        seen.add(threading.current_thread().name)
        return x * x

    def outer(k):
        return sum(parallel_map(inner, range(k), threads=2))  # would wait on itself if not serial

    out = parallel_map(outer, range(12), threads=2)
    assert out == [sum(i * i for i in range(k)) for k in range(12)]
    assert all(name.startswith("aff") for name in seen)


def test_lambda_floor_is_not_an_edge_but_the_top_of_the_grid_is():
    """Noise-free benzene forces put λ on the bottom of its grid (the precision floor): the search has converged
    and the record says so; forces with noise far above the kernel's reach push λ to the top: not converged."""
    from pathlib import Path

    from aff_app.gp.force import fit_force_model
    from aff_app.io.files import load_trajectory
    from aff_app.workflows import pipeline

    t = load_trajectory(Path(__file__).resolve().parents[1] / "sample_data" / "benzene.npz")
    fit = pipeline.train(t, n_train=50, seed=0, settings=pipeline.TrainSettings(energy=False)).force  # C and H sets
    search = fit.record.search
    assert search.lam_at_floor and search.converged, search
    assert fit.record.search.edge_warning(fit.gamma, fit.lam) is None
    noise = np.random.default_rng(0).normal(scale=300.0, size=t.F[:60].shape)  # 10× the force scale, independent
    fit = fit_force_model(t.R[:60], noise, t.z, pe_sets=fit.pe_sets, perms=fit.perms)
    search = fit.record.search
    assert not search.lam_at_floor and search.converged is False, search
    assert "λ at the top of its grid" in search.edge_warning(fit.gamma, fit.lam)


def test_search_restricted_to_a_nugget_floor_picks_the_range_for_it():
    """The iterative solver's search (method.md "Iterative path"): λ only from the floor up, reported on the full
    grid's index; on noise-free benzene forces the unconstrained λ sits at 1e-13 of the kernel variance, and a
    floor of 1e-11 makes the likelihood prefer a shorter range (smaller γ) that carries that nugget."""
    from pathlib import Path

    from aff_app.gp.hyper import SearchKernels, lambda_grid, score_gamma, search
    from aff_app.gp.kernels import Geometry
    from aff_app.io.files import load_trajectory
    from aff_app.symmetry import detect_symmetry

    t = load_trajectory(Path(__file__).resolve().parents[1] / "sample_data" / "benzene.npz")
    R, F = t.R[:40], t.F[:40]
    sym = detect_symmetry(R, t.z, n_samples=40, seed=0)
    sets = [np.sort(s) for s in sym.pe_sets]
    build = SearchKernels(Geometry.from_positions(R), tuple(sets), sym.perms)
    ys = [F[:, s, :].reshape(-1) for s in sets]
    d = build.geometry.D
    rho = float(np.median(np.linalg.norm(d[:, None] - d[None], axis=-1)[np.triu_indices(40, 1)]))
    free = search(build, ys, rho_scale=rho)
    floored = search(build, ys, rho_scale=rho, lam_min_rel=1e-11)
    var = lambda g: 5.0 / (3.0 * g * g)  # noqa: E731 - the kernel variance, λ's unit
    assert free.lam / var(free.gamma) == pytest.approx(LAMBDA_GRID_REL[0]) and free.lam_min_rel == 0.0
    assert floored.lam / var(floored.gamma) >= 1e-11 * (1 - 1e-9) and floored.lam_min_rel == 1e-11
    assert floored.gamma < 0.8 * free.gamma, (floored.gamma, free.gamma)
    # a floor at the grid's own bottom changes nothing; the index is the full grid's
    same = search(build, ys, rho_scale=rho, lam_min_rel=LAMBDA_GRID_REL[0])
    assert (same.gamma, same.lam, same.history) == (free.gamma, free.lam, free.history)
    score, lam, k = score_gamma(build, ys, floored.gamma, "likelihood", lam_min_rel=1e-11)
    assert lam == pytest.approx(LAMBDA_GRID_REL[k] * var(floored.gamma)) and k >= lambda_grid(1e-11)[1]
