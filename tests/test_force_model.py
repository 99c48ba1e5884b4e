"""The force GP as physics: GDML equivalence, rotation equivariance, PE-set
permutation equivariance, calibrated intervals on draws from a known GP,
hyperparameter recovery, persistence, budgets and numerical failure paths."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import binom

from aff_app.gp.budget import ComputeBudgetError
from aff_app.gp.kernels import force_covariance_sets
from aff_app.gp.record import Calibration, DataRecord, FitRecord, LamCheck
from aff_app.gp import FactorizationError, ForceModel, ModelError, fit_force_model
from aff_app.gp.force import loo_frame_residuals
from aff_app.symmetry import find_permutations, pe_sets_from_permutations


@pytest.fixture(scope="module")
def benzene(shared_data):
    d = np.load(shared_data / "benzene.npz")
    R, F, z = d["R"][::50], d["F"][::50], d["z"]  # 100 frames spread over the trajectory
    perms = find_permutations(d["R"], z, n_samples=200, seed=0)
    return R, F, z, perms


def test_aff_with_one_set_of_all_atoms_equals_gdml(benzene):
    R, F, z, _ = benzene
    n = z.size
    gdml = fit_force_model(R[:20], F[:20], z, mode="gdml", gamma=0.5, lam=1e-6)
    aff1 = fit_force_model(R[:20], F[:20], z, mode="aff", pe_sets=[np.arange(n)], gamma=0.5, lam=1e-6)
    a, b = gdml.predict(R[50:55]), aff1.predict(R[50:55])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-8, atol=1e-10)


def _assert_rotates_and_translates(model, x):
    """Predictions at x rotated and shifted: means rotate as Q F, each atom's 3×3 covariance as Q C Qᵀ."""
    Q = Rotation.from_euler("zyx", [0.4, 1.3, -0.7]).as_matrix()
    p = model.predict(x)
    pr = model.predict(x @ Q.T + np.array([3.0, -1.0, 2.0]))
    np.testing.assert_allclose(pr.mean, p.mean @ Q.T, rtol=1e-8, atol=1e-8)
    # the 3×3 covariance of each atom's force rotates as Q C Qᵀ (its trace, ‖sd‖², is invariant)
    scale = np.abs(p.cov).max()
    np.testing.assert_allclose(pr.cov, np.einsum("ij,bnjk,lk->bnil", Q, p.cov, Q), rtol=1e-7, atol=1e-9 * scale)
    return p, pr


def test_predicted_forces_rotate_with_the_molecule(benzene):
    R, F, z, perms = benzene
    sets = pe_sets_from_permutations(perms)
    model = fit_force_model(R[:30], F[:30], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6)
    p, pr = _assert_rotates_and_translates(model, R[60:63])
    np.testing.assert_allclose(np.linalg.norm(pr.std, axis=-1) ** 2, np.einsum("bncc->bn", p.cov), rtol=1e-8)


def test_swapping_atoms_of_one_pe_set_swaps_their_predictions(benzene):
    R, F, z, perms = benzene
    sets = pe_sets_from_permutations(perms)
    model = fit_force_model(R[:30], F[:30], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6)
    x = R[70]
    p = perms[3]  # a non-trivial symmetry of benzene: atoms i -> p[i]
    assert not np.array_equal(p, np.arange(z.size))
    a = model.predict(x[None]).mean[0]
    b = model.predict(x[p][None]).mean[0]
    np.testing.assert_allclose(b, a[p], rtol=1e-8, atol=1e-8)


def test_fit_learns_real_forces(benzene):
    R, F, z, perms = benzene
    sets = pe_sets_from_permutations(perms)
    model = fit_force_model(R[:60], F[:60], z, pe_sets=sets, perms=perms)
    pred = model.predict(R[60:])
    mae = np.mean(np.abs(pred.mean - F[60:]))
    # benzene forces have a mean |component| of ~ 6 kcal/mol/Å; 60 frames learn most of it
    assert mae < 0.25 * np.mean(np.abs(F[60:])), mae
    assert model.record.search.criterion == "likelihood"


def _gp_draws(gamma, lam, n_frames, n_draws, seed=0):
    """Forces drawn from the AFF prior (plain kernel, two singleton sets of a 3-atom toy)."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [-0.3, 1.0, 0.0]])
    R = base + rng.normal(scale=0.12, size=(n_frames, 3, 3))
    sets = [np.array([0]), np.array([1]), np.array([2])]
    Ks = force_covariance_sets(R, R, gamma, sets)
    F = np.zeros((n_draws, n_frames, 3, 3))
    for k, (s, K) in enumerate(zip(sets, Ks)):
        L = np.linalg.cholesky(K + lam * np.eye(K.shape[0]))
        F[:, :, s[0], :] = (L @ rng.normal(size=(K.shape[0], n_draws))).T.reshape(n_draws, n_frames, 3)
    return R, F, np.array([8, 1, 1])


def test_latent_intervals_cover_95_percent_of_gp_draws():
    gamma, lam = 0.4, 1e-3
    R, F, z = _gp_draws(gamma, lam, n_frames=140, n_draws=8)
    inside = total = 0
    for d in range(F.shape[0]):
        # method.md's σ̂² (no calibration): its observation interval is the GP's own
        model = fit_force_model(R[:100], F[d, :100], z, gamma=gamma, lam=lam, calibrate=None)
        pred = model.predict(R[100:])
        lo, hi = pred.interval(0.95, kind="observation")
        inside += int(np.sum((F[d, 100:] >= lo) & (F[d, 100:] <= hi)))
        total += F[d, 100:].size
    # binomial 99.9% band around 0.95 for `total` independent components, widened 2x for correlation
    lo_c, hi_c = binom.ppf([0.0005, 0.9995], total, 0.95) / total
    slack = 2 * (0.95 - lo_c)
    assert 0.95 - slack <= inside / total <= min(1.0, 0.95 + slack), inside / total


def test_leave_one_frame_out_residuals_equal_refits_without_the_frame():
    gamma, lam = 0.4, 1e-3
    R, F, z = _gp_draws(gamma, lam, n_frames=40, n_draws=1)
    model = fit_force_model(R[:30], F[0, :30], z, gamma=gamma, lam=lam, calibrate=None)
    for k, s in enumerate(model.pe_sets):
        w = 3 * s.size
        r, v = loo_frame_residuals(model._factors()[k], model.alpha[k], w, 4)
        for j, f in enumerate(range(26, 30)):
            keep = np.setdiff1d(np.arange(30), [f])
            refit = fit_force_model(R[keep], F[0, keep], z, gamma=gamma, lam=lam, calibrate=None)
            p = refit.predict(R[f:f + 1])
            res = (F[0, f][s] - p.mean[0][s]).ravel()
            var_obs = (p.std[0][s] ** 2).ravel() / refit.sigma2[k] + lam + refit.jitter[k]
            np.testing.assert_allclose(r[j * w:(j + 1) * w], res, rtol=1e-8, atol=1e-10 * np.abs(res).max())
            np.testing.assert_allclose(v[j * w:(j + 1) * w], var_obs, rtol=1e-8)
    with pytest.raises(ModelError, match="leave-one-out"):
        loo_frame_residuals(model._factors()[0], model.alpha[0], 3 * model.pe_sets[0].size, 31)


def test_loo_calibration_leaves_a_true_gp_alone_and_is_optional():
    # nearly noise-free draws (like DFT forces): latent and observation intervals coincide
    gamma, lam = 0.4, 1e-7
    R, F, z = _gp_draws(gamma, lam, n_frames=100, n_draws=6, seed=5)
    scales = []
    for d in range(F.shape[0]):
        cal = fit_force_model(R, F[d], z, gamma=gamma, lam=lam)
        ml = fit_force_model(R, F[d], z, gamma=gamma, lam=lam, calibrate=None)
        c = cal.record.calibration
        assert c.method == "loo" and c.frames == 40
        np.testing.assert_allclose(cal.sigma2, ml.sigma2 * c.scale ** 2, rtol=1e-12)
        # calibrate=None is method.md's profile-likelihood σ̂_i² = F_iᵀ(R_i + λI)⁻¹F_i / (3 M l_i)
        for k, s in enumerate(ml.pe_sets):
            y = F[d][:, s].reshape(-1)
            assert ml.sigma2[k] == pytest.approx(y @ ml.alpha[k] / y.size, rel=1e-12)
        assert ml.record.calibration == Calibration(method=None, scale=1.0)
        scales.append(c.scale)
    # on draws from the model itself the LOO quantile needs no correction (geometric mean ~1)
    assert 0.85 < np.exp(np.mean(np.log(scales))) < 1.15, scales
    with pytest.raises(ModelError, match="calibrate"):
        fit_force_model(R, F[0], z, gamma=gamma, lam=lam, calibrate="quantile")


def test_calibrated_latent_interval_covers_noisy_held_out_forces():
    # with label noise (λ = 1e-3) the calibrated latent interval is a predictive interval for the
    # reference forces, which is what PCI scores
    gamma, lam = 0.4, 1e-3
    R, F, z = _gp_draws(gamma, lam, n_frames=140, n_draws=8)
    inside = total = 0
    for d in range(F.shape[0]):
        pred = fit_force_model(R[:100], F[d, :100], z, gamma=gamma, lam=lam).predict(R[100:])
        lo, hi = pred.interval(0.95, kind="latent")
        inside += int(np.sum((F[d, 100:] >= lo) & (F[d, 100:] <= hi)))
        total += F[d, 100:].size
    lo_c = binom.ppf(0.0005, total, 0.95) / total
    slack = 2 * (0.95 - lo_c)
    assert 0.95 - slack <= inside / total <= 0.95 + slack, inside / total


def test_lambda_refinement_is_a_full_fit_at_the_nugget_with_the_smaller_loo_error(shared_data):
    d = np.load(shared_data / "uracil.npz")
    R, F, z = d["R"][:3000:15], d["F"][:3000:15], d["z"]  # 200 frames, 12 single-atom PE sets
    model = fit_force_model(R, F, z, search_frames=50, search_fraction=0.0)
    info = model.record.lam_check
    lam_search = model.record.search.lam
    # twelve single-atom sets: the three smallest (the first three) are the probes, a quarter of the flops
    assert info.method == "loo" and info.frames == 40 and info.probe_sets == (0, 1, 2)
    assert info.candidates == pytest.approx([lam_search, lam_search / 16], rel=1e-12)
    smaller = info.loo_mae[1] < 0.98 * info.loo_mae[0]
    assert model.lam == info.candidates[1 if smaller else 0]
    # the probe set's reused factor is the one a fit at the chosen (γ, λ) computes, for every set
    fixed = fit_force_model(R, F, z, gamma=model.gamma, lam=model.lam)
    assert fixed.record.lam_check == LamCheck()
    for a, b in zip(model.alpha, fixed.alpha):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    np.testing.assert_allclose(model.sigma2, fixed.sigma2, rtol=1e-10)
    # and its leave-one-out error, pooled over the probe sets, is the one recorded for the chosen candidate
    r = np.concatenate([loo_frame_residuals(fixed._factors()[k], fixed.alpha[k], 3 * fixed.pe_sets[k].size,
                                            info.frames)[0] for k in info.probe_sets])
    assert np.mean(np.abs(r)) == pytest.approx(info.loo_mae[1 if smaller else 0], rel=1e-10)
    off = fit_force_model(R, F, z, search_frames=50, search_fraction=0.0, refine_lam=False)
    assert off.lam == lam_search and off.record.lam_check == LamCheck()
    # no room for the probe's kernel copy: the search's λ, and the reason
    from aff_app.gp.budget import estimate_cost
    tight = estimate_cost(200, [1] * 12).peak_bytes + 1000
    squeezed = fit_force_model(R, F, z, search_frames=50, search_fraction=0.0, budget_bytes=tight)
    assert squeezed.lam == lam_search and "memory budget" in squeezed.record.lam_check.skipped
    # a search on every frame has nothing to extrapolate
    assert fit_force_model(R[:60], F[:60], z, search_frames=60).record.lam_check == LamCheck()


def test_fit_without_kept_factors_equals_the_fit_with_them(shared_data):
    # the CLI's fit (one reused kernel buffer, factors dropped) against the default, with the
    # γ/λ search, the λ check on the probe set and the calibration all on
    d = np.load(shared_data / "uracil.npz")
    R, F, z = d["R"][:3000:25], d["F"][:3000:25], d["z"]  # 120 frames, 12 single-atom PE sets
    kept = fit_force_model(R, F, z, search_frames=40, search_fraction=0.0)
    lean = fit_force_model(R, F, z, search_frames=40, search_fraction=0.0, keep_factors=False)
    assert lean._chol is None and kept._chol is not None
    assert (lean.gamma, lean.lam) == (kept.gamma, kept.lam) and lean.record.lam_check.method == "loo"
    for key in ("chosen", "loo_mae", "probe_sets"):
        assert getattr(lean.record.lam_check, key) == pytest.approx(getattr(kept.record.lam_check, key), rel=1e-10)
    assert lean.record.calibration.scale == pytest.approx(kept.record.calibration.scale, rel=1e-10)
    for a, b in zip(lean.alpha, kept.alpha):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lean.sigma2, kept.sigma2, rtol=1e-10)
    # intervals of the lean model come from factors rebuilt on demand
    a, b = lean.predict(d["R"][5000:5004]), kept.predict(d["R"][5000:5004])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-8, atol=1e-10)
    # and the budget counts one kernel, not twelve
    from aff_app.gp.budget import estimate_cost
    one, all12 = estimate_cost(120, [1] * 12, keep_factors=False), estimate_cost(120, [1] * 12)
    assert all12.peak_bytes - one.peak_bytes >= 11 * 8 * 360**2


def test_progress_counts_each_pe_set_once_with_the_lambda_check(benzene):
    import re

    R, F, z, _ = benzene
    seen = []
    for sets in ([np.arange(z.size)], [np.arange(6), np.arange(6, 12)]):  # one set (GDML-like), two sets
        seen.clear()
        model = fit_force_model(R[:60], F[:60], z, pe_sets=sets, search_frames=30, search_fraction=0.0,
                                progress=lambda f, msg: seen.append((f, msg)))
        assert model.record.lam_check.method == "loo"
        counts = [tuple(map(int, m.groups())) for _, msg in seen if (m := re.search(r"PE set (\d+)/(\d+)", msg))]
        assert counts and all(k <= n == len(sets) for k, n in counts), counts
        fractions = [f for f, _ in seen]
        assert all(0.0 <= f <= 1.0 for f in fractions) and fractions[-1] == 1.0


def test_lambda_check_probe_sets_are_the_smallest_within_flops_and_memory():
    from aff_app.gp.force import _probe_sets

    big = 10**15
    assert _probe_sets([300] * 12, True, 0, big) == [0, 1, 2]  # uracil: 3 of 12 equal sets, 25% of the flops
    assert _probe_sets([7200, 7200], True, 0, big) == [0]  # benzene: one set (50%), never none
    assert _probe_sets([1200, 300, 1200, 300], True, 0, big) == [1, 3]  # a third (1200) would pass 25%
    # memory: a copy of the set being probed, plus (keep_factors) the second factors of those before it
    k = 8 * 300**2
    assert _probe_sets([300] * 12, True, 0, 2 * k - 1) == [0]
    assert _probe_sets([300] * 12, True, 0, 3 * k - 1) == [0, 1]
    assert _probe_sets([300] * 12, False, 0, k) == [0, 1, 2]  # lean fits drop each probe's factors
    assert _probe_sets([300] * 12, False, 1, k) == []


def test_lambda_refinement_keeps_the_nugget_of_noisy_labels():
    # with real label noise (λ = 1e-3) a 16× smaller nugget fits the noise: no clear leave-one-out gain
    gamma, lam = 0.4, 1e-3
    R, F, z = _gp_draws(gamma, lam, n_frames=160, n_draws=3, seed=7)
    for d in range(F.shape[0]):
        model = fit_force_model(R, F[d], z, gamma=gamma, search_frames=40, search_fraction=0.0)
        info = model.record.lam_check
        assert info.method == "loo" and info.loo_mae[1] > 0.98 * info.loo_mae[0], info
        assert model.lam == info.candidates[0]


def test_likelihood_search_recovers_the_true_range():
    gamma = 0.4
    R, F, z = _gp_draws(gamma, 1e-4, n_frames=120, n_draws=1, seed=3)
    model = fit_force_model(R, F[0], z, search_frames=120)
    assert gamma / 2 < model.gamma < gamma * 2, model.gamma
    cv = fit_force_model(R, F[0], z, search_frames=120, criterion="cv")
    assert gamma / 3 < cv.gamma < gamma * 3, cv.gamma
    assert cv.record.search.criterion == "cv"


def test_interval_levels_and_kinds(benzene):
    R, F, z, _ = benzene
    model = fit_force_model(R[:10], F[:10], z, gamma=0.5, lam=1e-4)
    p = model.predict(R[20:22])
    lo90, hi90 = p.interval(0.90)
    lo99, hi99 = p.interval(0.99)
    assert np.all(hi99 - lo99 > hi90 - lo90)
    lo_o, hi_o = p.interval(0.95, kind="observation")
    lo_l, hi_l = p.interval(0.95)
    assert np.all(hi_o - lo_o >= hi_l - lo_l)
    with pytest.raises(ValueError, match="level"):
        p.interval(1.5)


def test_save_load_round_trip(tmp_path, benzene):
    R, F, z, perms = benzene
    sets = pe_sets_from_permutations(perms)
    model = fit_force_model(R[:20], F[:20], z, pe_sets=sets, perms=perms, gamma=0.5, lam=1e-6,
                            record=FitRecord(data=DataRecord(fingerprint="abc")), train_idx=np.arange(20) * 50)
    model.save(tmp_path / "m.npz")
    back = ForceModel.load(tmp_path / "m.npz")
    a, b = model.predict(R[40:43]), back.predict(R[40:43])
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-9)
    assert back.record.data_fingerprint == "abc"
    assert back.train_idx.tolist() == (np.arange(20) * 50).tolist()
    assert [s.tolist() for s in back.pe_sets] == [s.tolist() for s in model.pe_sets]


def test_load_rejects_bad_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not an .npz archive"):
        ForceModel.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(ModelError, match="missing keys"):
        ForceModel.load(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelError, match="pickled"):
        ForceModel.load(tmp_path / "pickled.npz")


def test_budget_refuses_before_building(benzene):
    R, F, z, _ = benzene
    with pytest.raises(ComputeBudgetError, match=r"GB .*budget is"):
        fit_force_model(R, F, z, mode="gdml", gamma=0.5, lam=1e-6, budget_bytes=10 * 2**20)


def test_duplicate_frames_get_bounded_jitter(benzene):
    R, F, z, _ = benzene
    Rd, Fd = np.concatenate([R[:5], R[:5]]), np.concatenate([F[:5], F[:5]])
    model = fit_force_model(Rd, Fd, z, gamma=0.5, lam=0.0)
    assert max(model.jitter) > 0  # exact duplicates make K singular at λ = 0
    assert np.all(np.isfinite(model.predict(R[10:11]).mean))


def test_bad_inputs_raise_model_errors(benzene):
    R, F, z, _ = benzene
    with pytest.raises(ModelError, match="mode"):
        fit_force_model(R[:5], F[:5], z, mode="nn")
    with pytest.raises(ModelError, match="partition"):
        fit_force_model(R[:5], F[:5], z, pe_sets=[np.arange(3)], gamma=1, lam=1e-6)
    bad = F[:5].copy(); bad[0, 0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        fit_force_model(R[:5], bad, z, gamma=1, lam=1e-6)
    model = fit_force_model(R[:5], F[:5], z, gamma=1, lam=1e-6)
    with pytest.raises(ModelError, match="shape"):
        model.predict(R[:2, :5])


def test_blocked_cholesky_matches_lapack_and_restores_on_failure():
    import scipy.linalg

    from aff_app.gp.force import _blocked_cholesky, _cholesky_inplace

    rng = np.random.default_rng(0)
    A = rng.normal(size=(700, 40))
    K = A @ A.T + 0.5 * np.eye(700)
    ref = scipy.linalg.cholesky(K + 1e-3 * np.eye(700), lower=True)
    work = K.copy()
    L = _blocked_cholesky(work, 1e-3, nb=128)  # blocks of 128: a ragged last block too
    np.testing.assert_allclose(np.tril(L), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.tril(_cholesky_inplace(K.copy(), 1e-3)), ref, rtol=1e-10, atol=1e-12)
    # an indefinite matrix: the factorisation fails part-way and K comes back unchanged
    bad = K.copy()
    bad[650:, 650:] -= 3.0 * np.eye(50)  # indefinite only in the last block: fails after 5 blocks
    work = bad.copy()
    assert _blocked_cholesky(work, 0.0, nb=128) is None
    np.testing.assert_array_equal(work, bad)
    work = bad.copy()
    assert _cholesky_inplace(work, 0.0) is None
    np.testing.assert_array_equal(work, bad)


def test_cholesky_reads_only_the_lower_triangle():
    """The fit builds only the lower triangle (mirror=False): garbage above must not matter."""
    import scipy.linalg

    from aff_app.gp.force import _blocked_cholesky, _cholesky_inplace

    rng = np.random.default_rng(1)
    A = rng.normal(size=(500, 30))
    K = A @ A.T + 0.5 * np.eye(500)
    ref = scipy.linalg.cholesky(K + 1e-3 * np.eye(500), lower=True)
    junk = np.triu(rng.normal(size=K.shape), 1) * 1e6
    for factor in (lambda M: _cholesky_inplace(M, 1e-3, restorable=False),
                   lambda M: _blocked_cholesky(M, 1e-3, nb=96, restorable=False)):
        L = factor(np.tril(K) + junk)
        np.testing.assert_allclose(np.tril(L), ref, rtol=1e-10, atol=1e-12)
    assert _cholesky_inplace(np.tril(K) - 2.0 * np.eye(500), 0.0, restorable=False) is None


def test_kernel_built_without_mirror_has_the_same_lower_triangle(benzene):
    from aff_app.gp.kernels import force_covariance_sets

    R, _, _, _ = benzene
    sets = [np.arange(6), np.arange(6, 12)]
    full = force_covariance_sets(R[:7], R[:7], 0.7, sets)
    lower = force_covariance_sets(R[:7], R[:7], 0.7, sets, mirror=False)
    for K, Kl in zip(full, lower):
        np.testing.assert_array_equal(np.tril(Kl), np.tril(K))
        np.testing.assert_allclose(K, K.T, rtol=0, atol=1e-14 * np.abs(K).max())


def test_search_subset_grows_with_the_training_set(benzene):
    """max(search_frames, search_fraction·M) frames (MAX_SEARCH_SIDE caps it for big sets)."""
    R, F, z, _ = benzene
    sets = [np.array([i]) for i in range(12)]  # singletons: the side cap is far away
    fixed = fit_force_model(R[:80], F[:80], z, pe_sets=sets, search_frames=10, search_fraction=0.0)
    grown = fit_force_model(R[:80], F[:80], z, pe_sets=sets, search_frames=10, search_fraction=0.5)
    assert fixed.record.search.n_frames == 10
    assert grown.record.search.n_frames == 40
