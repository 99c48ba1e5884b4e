"""The iterative solver (method.md "Iterative path"): the matrix-free product against the dense kernel,
CG against the Cholesky fit, the subset variance against the exact one, the preconditioner, the
automatic choice against the memory budget, persistence, the λ floor, calibrated intervals and the
symmetries of the predictions."""

import numpy as np
import pytest
from scipy.stats import binom

from aff_app.gp import ForceModel, ModelError, fit_force_model
from aff_app.gp.budget import ComputeBudgetError, estimate_cost
from aff_app.gp.iterative import (ITERATIVE_LAM_FLOOR, LAM_RAISE_FACTOR, NystromPreconditioner, SetsOperator,
                                  farthest_point_frames, frame_diagonal, pcg)
from aff_app.gp.kernels import Geometry, force_covariance_sets
from aff_app.gp.persistence import load_model, read_arrays
from aff_app.gp.record import FitRecord
from aff_app.symmetry import find_permutations, pe_sets_from_permutations
from test_force_model import _assert_rotates_and_translates, _gp_draws  # shared checks; prior draws (3-atom toy)


@pytest.fixture(scope="module")
def benzene(shared_data):
    d = np.load(shared_data / "benzene.npz")
    R, F, z = d["R"][::50], d["F"][::50], d["z"]  # 100 frames spread over the trajectory
    perms = find_permutations(d["R"], z, n_samples=200, seed=0)
    return R, F, z, perms, pe_sets_from_permutations(perms)


@pytest.fixture(scope="module")
def uracil(shared_data):
    d = np.load(shared_data / "uracil.npz")
    return d["R"][::40], d["F"][::40], d["z"]  # 125 frames, no symmetry: 12 single-atom sets


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_matrix_free_product_equals_the_dense_kernel(benzene, uracil):
    rng = np.random.default_rng(1)
    R, _, z, perms, sets = benzene
    for Rx, sx, px in ((R[:15], sets, perms), (uracil[0][:12], [np.array([i]) for i in range(12)], None),
                       (uracil[0][:10], [np.arange(3), np.arange(3, 12)], None)):
        G = Geometry.from_positions(Rx)
        p = np.arange(Rx.shape[1])[None] if px is None else px
        Ks = force_covariance_sets(G, G, 0.6, sx, perms=px)
        for cache in (True, False):
            op = SetsOperator(G, sx, p, 0.6, cache_coefficients=cache, block_bytes=2_000)  # several row blocks
            assert len(op.blocks) > 1
            xs = {k: rng.standard_normal(K.shape[0]) for k, K in enumerate(Ks)}
            out = op.matvec(xs)
            for k, K in enumerate(Ks):
                assert _rel(out[k], K @ xs[k]) < 1e-12
            # a subset of the sets: only those are computed
            assert set(op.matvec({1: xs[1]})) == {1}
    # the diagonal frame blocks used by the preconditioner
    G = Geometry.from_positions(R[:8])
    Ks = force_covariance_sets(G, G, 0.6, sets, perms=perms)
    for k, D in enumerate(frame_diagonal(G, sets, perms, 0.6)):
        w = 3 * sets[k].size
        assert _rel(D, np.einsum("mimj->mij", Ks[k].reshape(8, w, 8, w))) < 1e-12


def test_preconditioner_cuts_iterations_and_cg_solves_the_system(benzene):
    R, F, z, perms, sets = benzene
    M, gamma = 40, 0.5
    lam = 1e-7 * 5 / (3 * gamma**2)
    G = Geometry.from_positions(R[:M])
    op = SetsOperator(G, sets, perms, gamma)
    diag = frame_diagonal(G, sets, perms, gamma)
    ys = {k: F[:M][:, s].reshape(-1) for k, s in enumerate(sets)}
    Ks = force_covariance_sets(G, G, gamma, sets, perms=perms)
    its = {}
    for r in (0, 10, 40):
        sub = farthest_point_frames(G.D, r)
        assert sub.size == r and np.unique(sub).size == r
        precs = {k: NystromPreconditioner(G, s, perms, gamma, lam, sub, diag[k]) for k, s in enumerate(sets)}
        res = pcg(op, precs, ys, lam, tol=1e-10, maxiter=300)
        its[r] = max(res.iterations.values())
        if r == 0:  # block-Jacobi alone (~2000 iterations needed): given up as stalled, far from converged
            assert its[0] < 300 and min(res.residual.values()) > 1e-8
            continue
        for k, K in enumerate(Ks):
            exact = np.linalg.solve(K + lam * np.eye(K.shape[0]), ys[k])
            assert res.residual[k] <= 1e-10
            assert _rel(K @ res.x[k], K @ exact) < 1e-7  # the fitted forces, R α
    # 10 Nyström frames need about a hundred iterations, every frame in the subset a handful
    assert its[10] < 150 and its[10] > 5 * its[40], its
    assert its[40] <= 15, its


def test_iterative_fit_equals_the_dense_fit_when_the_subset_holds_every_frame(benzene, uracil):
    R, F, z, perms, sets = benzene
    for (Rx, Fx, zx, kw) in ((R[:30], F[:30], z, dict(pe_sets=sets, perms=perms)),
                             (uracil[0][:40], uracil[1][:40], uracil[2], {})):
        dense = fit_force_model(Rx, Fx, zx, gamma=0.5, lam=1e-6, calibrate=None, solver="dense", **kw)
        it = fit_force_model(Rx, Fx, zx, gamma=0.5, lam=1e-6, calibrate=None, solver="iterative", cg_tol=1e-12, **kw)
        assert it.solver == "iterative" and dense.solver == "dense"
        assert it.subset_idx.size == Rx.shape[0] and it.record.solver.method == "iterative"
        x = (R if zx is z else uracil[0])[80:86]
        a, b = dense.predict(x), it.predict(x)
        assert _rel(b.mean, a.mean) < 1e-6
        # the same σ̂² (eq. 9) and, with every frame in the subset, the exact variance (11)
        np.testing.assert_allclose(it.sigma2, dense.sigma2, rtol=1e-8)
        assert _rel(b.std, a.std) < 1e-8
        np.testing.assert_allclose(b.cov, a.cov, rtol=1e-6, atol=1e-8 * np.abs(a.cov).max())


def test_subset_variance_bounds_the_exact_one_from_above(benzene):
    R, F, z, perms, sets = benzene
    dense = fit_force_model(R[:50], F[:50], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6, calibrate=None)
    it = fit_force_model(R[:50], F[:50], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6, calibrate=None,
                         solver="iterative", nystrom_frames=12, cg_tol=1e-12)
    assert it.subset_idx.size == 12
    a, b = dense.predict(R[60:80]), it.predict(R[60:80])
    assert _rel(b.mean, a.mean) < 1e-6  # the mean does not depend on the preconditioner
    # conditioning on 12 of the 50 frames never gives a smaller variance (and here a larger one)
    assert np.all(b.std >= a.std * (1 - 1e-9))
    assert np.median(b.std / a.std) > 1.05


def test_auto_takes_the_iterative_path_only_below_the_dense_peak(benzene, monkeypatch):
    R, F, z, perms, sets = benzene
    m = 40
    dense_peak = estimate_cost(m, [6, 6], n_perms=len(perms)).peak_bytes
    budget = dense_peak - 1
    it_est = estimate_cost(m, [6, 6], n_perms=len(perms), solver="auto", budget_bytes=budget, n_atoms=12)
    assert it_est.solver == "iterative" and it_est.peak_bytes <= budget and it_est.dense_peak_bytes == dense_peak
    assert "iterative" in it_est.summary and it_est.to_dict()["solver"] == "iterative"
    roomy = estimate_cost(m, [6, 6], n_perms=len(perms), solver="auto", budget_bytes=dense_peak, n_atoms=12)
    assert roomy.solver == "dense" and roomy.peak_bytes == dense_peak
    kw = dict(pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6)
    assert fit_force_model(R[:m], F[:m], z, budget_bytes=dense_peak, **kw).solver == "dense"
    model = fit_force_model(R[:m], F[:m], z, budget_bytes=budget, **kw)
    assert model.solver == "iterative" and "over the memory budget" in model.record.solver.reason
    assert model._chol is None or all(L.shape[0] < 3 * m * 6 for L in model._chol)  # no full-kernel factor
    # the budget from the environment, as the app and the CLI pass it
    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", repr(budget / 2**30))
    assert fit_force_model(R[:m], F[:m], z, **kw).solver == "iterative"
    # GDML/sGDML keep the dense path: refused over the budget, and 'iterative' is an error
    with pytest.raises(ComputeBudgetError):
        fit_force_model(R[:m], F[:m], z, mode="gdml", gamma=0.5, lam=1e-6)
    with pytest.raises(ModelError, match="iterative"):
        fit_force_model(R[:m], F[:m], z, mode="sgdml", perms=perms, gamma=0.5, lam=1e-6, solver="iterative")
    with pytest.raises(ModelError, match="solver"):
        fit_force_model(R[:m], F[:m], z, gamma=0.5, lam=1e-6, solver="cg")
    # not even the iterative path fits: refused before anything is built, saying so
    with pytest.raises(ComputeBudgetError, match="iterative solver"):
        fit_force_model(R[:m], F[:m], z, budget_bytes=2**20, **kw)


def test_lambda_floor_is_applied_and_recorded(uracil):
    R, F, z = uracil
    gamma = 0.5
    scale = 5 / (3 * gamma**2)
    tiny = 1e-13 * scale  # the dense search's floor: CG could not converge at it
    model = fit_force_model(R[:30], F[:30], z, gamma=gamma, lam=tiny, solver="iterative", calibrate=None)
    s = model.record.solver
    assert model.lam == pytest.approx(ITERATIVE_LAM_FLOOR * scale) and s.lam_raised
    assert s.lam_search == tiny and s.lam == model.lam and s.lam_floor_rel == ITERATIVE_LAM_FLOOR
    assert all(r <= s.tol for r in s.residuals) and len(s.iterations) == 12
    assert model.record.lam_check.skipped and "iterative" in model.record.lam_check.skipped
    above = fit_force_model(R[:30], F[:30], z, gamma=gamma, lam=1e-6, solver="iterative", calibrate=None)
    assert above.lam == 1e-6 and not above.record.solver.lam_raised
    # the dense path keeps the nugget it is given and records its solver
    dense = fit_force_model(R[:30], F[:30], z, gamma=gamma, lam=1e-6)
    assert dense.record.solver.method == "dense"


def test_save_load_round_trip_and_old_files(tmp_path, benzene):
    R, F, z, perms, sets = benzene
    model = fit_force_model(R[:40], F[:40], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6, solver="iterative",
                            nystrom_frames=15, train_idx=np.arange(40) * 50)
    assert model.record.calibration.method == "held_out"
    model.save(tmp_path / "it.npz")
    arrays = read_arrays(tmp_path / "it.npz")
    assert str(arrays["solver"]) == "iterative" and arrays["subset_idx"].size == 15
    back, energy = load_model(tmp_path / "it.npz")
    assert energy is None and back.solver == "iterative" and back._chol is None
    np.testing.assert_array_equal(back.subset_idx, model.subset_idx)
    a, b = model.predict(R[60:64]), back.predict(R[60:64])  # the subset factor is rebuilt on load
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-9)
    assert back.record.solver == model.record.solver and back.record.calibration == model.record.calibration
    # a dense model's file has no solver keys (the layout of every file written before): read as dense
    dense = fit_force_model(R[:20], F[:20], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6)
    dense.save(tmp_path / "dense.npz")
    assert "solver" not in read_arrays(tmp_path / "dense.npz")
    old = ForceModel.load(tmp_path / "dense.npz")
    assert old.solver == "dense" and old.subset_idx is None and old.record.solver.method == "dense"
    # damaged iterative files are refused with the reason
    bad = dict(arrays)
    del bad["subset_idx"]
    with pytest.raises(ModelError, match="subset"):
        ForceModel.from_arrays(bad)
    bad = dict(arrays, subset_idx=np.array([0, 0, 99]))
    with pytest.raises(ModelError, match="subset_idx"):
        ForceModel.from_arrays(bad)
    with pytest.raises(ModelError, match="solver"):
        ForceModel.from_arrays(dict(arrays, solver=np.array("magic")))


def test_iterative_predictions_rotate_translate_and_permute(benzene):
    R, F, z, perms, sets = benzene
    model = fit_force_model(R[:30], F[:30], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6, solver="iterative",
                            nystrom_frames=10)
    x = R[60:63]
    _assert_rotates_and_translates(model, x)
    perm = perms[3]
    assert not np.array_equal(perm, np.arange(z.size))
    a = model.predict(x[:1])
    b = model.predict(x[:1][:, perm])
    np.testing.assert_allclose(b.mean[0], a.mean[0][perm], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b.std[0], a.std[0][perm], rtol=1e-6, atol=1e-9)


def test_calibrated_interval_covers_held_out_forces_with_a_small_subset():
    # the subset variance alone is too wide (it ignores most frames); the held-out calibration
    # scales it to the full model's errors, so the latent 95% interval holds ~95% of new forces
    gamma, lam = 0.4, 1e-3
    R, F, z = _gp_draws(gamma, lam, n_frames=260, n_draws=6)
    inside = total = 0
    scales = []
    for d in range(F.shape[0]):
        model = fit_force_model(R[:200], F[d, :200], z, gamma=gamma, lam=lam, solver="iterative", nystrom_frames=30,
                                seed=d)
        c = model.record.calibration
        assert c.method == "held_out" and c.frames == 40
        scales.append(c.scale)
        pred = model.predict(R[200:])
        lo, hi = pred.interval(0.95, kind="latent")
        inside += int(np.sum((F[d, 200:] >= lo) & (F[d, 200:] <= hi)))
        total += F[d, 200:].size
    assert np.exp(np.mean(np.log(scales))) < 0.95, scales  # the subset's variance was shrunk
    lo_c = binom.ppf(0.0005, total, 0.95) / total
    slack = 2 * (0.95 - lo_c)
    assert 0.95 - slack <= inside / total <= 0.95 + slack, inside / total


def test_nugget_is_raised_when_cg_stalls_and_the_fit_says_so(uracil):
    # a preconditioner of 10 of 60 frames cannot carry CG to 1e-8 within 150 iterations at λ = 1e-9 of
    # the kernel variance: λ is raised LAM_RAISE_FACTOR× at a time (preconditioner rebuilt) until it does, and recorded
    from aff_app.gp.iterative import IterativeError, fit_iterative

    R, F, z = uracil
    G = Geometry.from_positions(R[:60])
    sets, perms, gamma = [np.array([i]) for i in range(12)], np.arange(12)[None], 18.0
    scale = 5 / (3 * gamma**2)
    fit = fit_iterative(G, F[:60], sets, perms, gamma, 1e-9 * scale, budget=2**30, n_subset=10, maxiter=150,
                        calibrate=False, lam_floor=1e-9)
    raised = fit.info["raised"]
    assert raised and raised[0][0] == pytest.approx(1e-9 * scale) and all(r[1] <= 150 for r in raised)
    assert fit.lam == pytest.approx(1e-9 * scale * LAM_RAISE_FACTOR ** len(raised))
    assert max(fit.info["residuals"]) <= 10 * fit.info["tol"]
    # the same system solved densely at the raised λ
    K = force_covariance_sets(G, G, gamma, [sets[0]])[0]
    exact = np.linalg.solve(K + fit.lam * np.eye(K.shape[0]), F[:60, 0].reshape(-1))
    assert _rel(K @ fit.alpha[0], K @ exact) < 1e-6
    with pytest.raises(IterativeError, match="even with λ raised"):
        fit_iterative(G, F[:60], sets, perms, gamma, 1e-9 * scale, budget=2**30, n_subset=10, maxiter=5,
                      calibrate=False, lam_floor=1e-9)


def test_the_iterative_path_searches_gamma_for_the_nuggets_it_can_use(uracil):
    # λ below ITERATIVE_LAM_FLOOR is out of CG's reach: the search scores γ from the floor up (method.md
    # "Iterative path"), and says so in the record; the dense path searches the whole grid
    R, F, z = uracil
    it = fit_force_model(R[:40], F[:40], z, solver="iterative", calibrate=None)
    dense = fit_force_model(R[:40], F[:40], z, solver="dense", calibrate=None, refine_lam=False)
    scale = lambda g: 5 / (3 * g**2)  # noqa: E731
    assert it.record.search.lam_min_rel == ITERATIVE_LAM_FLOOR and dense.record.search.lam_min_rel == 0.0
    assert it.record.search.lam / scale(it.gamma) >= ITERATIVE_LAM_FLOOR * (1 - 1e-9)
    assert it.lam == it.record.search.lam or it.record.solver.raised
    assert FitRecord.from_dict(it.record.to_dict()).search.lam_min_rel == ITERATIVE_LAM_FLOOR  # the model file's
