"""Held-out predictions (aff_app.workflows.predictions) and learning curves (aff_app.workflows.learning) on real rMD17 uracil.

Tiny sizes (M = 20, 40) and fixed γ, λ keep every fit well under a second.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import pytest

from aff_app.workflows import learning
from aff_app.workflows import metrics
from aff_app.workflows import pipeline, training
from aff_app.gp.budget import estimate_cost
from aff_app.gp.energy import fit_energy_model
from aff_app.workflows.predictions import (
    CALIBRATION_LEVELS,
    Predicted,
    energy_csv,
    predict_held_out,
    predictions_file,
    select_test_frames,
)
from aff_app.symmetry import SymmetryInfo

GAMMA, LAM = 4.0, 1e-8


@lru_cache(maxsize=1)
def _uracil(path: str):
    from aff_app.io.files import load_trajectory

    return load_trajectory(path, frames=":1000")


@pytest.fixture(scope="module")
def uracil(shared_data):
    return _uracil(str(shared_data / "uracil.npz"))


@pytest.fixture(scope="module")
def trivial_sym(uracil) -> SymmetryInfo:
    """Uracil has no permutation symmetry (method.md: 1 permutation, 12 PE sets)."""
    n = uracil.n_atoms
    return SymmetryInfo(perms=np.arange(n)[None], pe_sets=tuple(np.array([i]) for i in range(n)), method="user")


# -- the split ----------------------------------------------------------------------------------------


def test_learning_split_is_nested_and_tests_on_fixed_frames():
    test, train = learning.learning_split(500, [40, 20, 80], 30, seed=3)
    assert test.size == 30 and list(train) == [20, 40, 80]
    assert set(train[20]) <= set(train[40]) <= set(train[80])  # nested training sets
    for idx in train.values():
        assert not set(idx) & set(test)
    test2, train2 = learning.learning_split(500, [20], 30, seed=3)
    np.testing.assert_array_equal(test, test2)  # the test frames do not depend on the sizes
    np.testing.assert_array_equal(train[20], train2[20])


@pytest.mark.parametrize(
    "sizes, n_test, match",
    [([], 10, "at least one"), ([1], 10, "at least 2"), ([95], 10, "exceed the 100 frames"), ([10], 0, "at least 1")],
)
def test_learning_split_refuses_impossible_requests(sizes, n_test, match):
    with pytest.raises(learning.LearningCurveError, match=match):
        learning.learning_split(100, sizes, n_test)


def test_set_sizes_follow_the_modes(trivial_sym):
    sym = SymmetryInfo(perms=np.array([[0, 1, 2], [1, 0, 2]]), pe_sets=(np.array([0, 1]), np.array([2])), method="user")
    assert learning.set_sizes_for("aff", 3, sym) == ([2, 1], 2)
    assert learning.set_sizes_for("gdml", 3, sym) == ([3], 1)
    assert learning.set_sizes_for("sgdml", 3, sym) == ([3], 2)
    assert learning.set_sizes_for("aff", 3, None) == ([1, 1, 1], 1)
    # Σ(3 M l_i)³/3 (method.md)
    assert learning.cost_for("aff", 10, 3, sym).cholesky_flops == pytest.approx((60**3 + 30**3) / 3)
    with pytest.raises(learning.LearningCurveError):
        learning.set_sizes_for("krr", 3, None)


# -- held-out predictions ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(uracil, trivial_sym):
    m = pipeline.train_model(uracil, model="aff", n_train=30, n_test=25, seed=1, gamma=GAMMA, lam=LAM,
                             symmetry=trivial_sym)
    em = fit_energy_model(m, uracil.R[m.train_idx], uracil.E[m.train_idx], seed=1)
    return m, em


def test_held_out_uses_the_frames_recorded_at_training_and_matches_evaluate_model(uracil, fitted):
    m, em = fitted
    held = predict_held_out(m, uracil, energy_model=em)
    np.testing.assert_array_equal(held.test_idx, m.record.split.test)
    assert not set(held.test_idx.tolist()) & set(m.train_idx.tolist())
    ref = pipeline.evaluate_model(m, uracil)
    rep = held.report(0.95, "latent")
    assert rep["force_mae"] == pytest.approx(ref["force_mae"], rel=1e-12)
    assert rep["pci"] == pytest.approx(ref["pci"], rel=1e-12)
    assert rep["lci"] == pytest.approx(ref["lci"], rel=1e-12)
    assert rep["delta_p"] == pytest.approx(0.95 - rep["pci"])
    lo, hi = held.force_interval(0.95)
    assert rep["l_norm"] == pytest.approx(np.mean(hi - lo) / np.ptp(held.F_ref))
    # energies: conditioned on this force prediction; MAE computed on the same frames
    assert held.has_energy_interval and held.energy_model == "energy GP"
    np.testing.assert_allclose(held.E_ref, uracil.E[held.test_idx])
    assert rep["energy_mae"] == pytest.approx(np.mean(np.abs(held.E_mean - held.E_ref)))
    np.testing.assert_allclose(held.E_mean, em.predict(uracil.R[held.test_idx]).mean, rtol=1e-9)
    # the arrays are read-only: a memoised result cannot be changed by a page
    with pytest.raises(ValueError):
        held.F_mean[0, 0, 0] = 1.0


def test_observation_intervals_are_wider_and_cover_at_least_as_much(uracil, fitted):
    m, _ = fitted
    held = predict_held_out(m, uracil)
    assert np.all(held.F_std_obs >= held.F_std)
    lat, obs = held.report(0.95, "latent"), held.report(0.95, "observation")
    assert obs["lci"] >= lat["lci"] and obs["pci"] >= lat["pci"]
    assert held.report()["energy_mae"] is None and not held.has_energy


def test_calibration_is_monotone_and_equals_the_metric(uracil, fitted):
    m, em = fitted
    held = predict_held_out(m, uracil, energy_model=em)
    cal = held.calibration()
    assert cal["levels"] == list(CALIBRATION_LEVELS)
    assert np.all(np.diff(cal["force"]) >= 0) and np.all(np.diff(cal["energy"]) >= 0)
    assert metrics.coverage(held.F_ref, held.F_mean, held.F_std, 0.95) == pytest.approx(held.report()["pci"])


def test_other_data_draws_seeded_frames_outside_training(uracil, fitted, shared_data):
    m, _ = fitted
    from aff_app.io.files import load_trajectory

    # the same file with another frame selection: another fingerprint, so no recorded test frames apply
    sub = load_trajectory(shared_data / "uracil.npz", frames=":400")
    assert sub.fingerprint != uracil.fingerprint
    idx, text = select_test_frames(m, sub, n_test=20, seed=5)
    assert idx.size == 20 and "seed 5" in text
    train_pos = {r.tobytes() for r in m.R_train}
    assert not any(sub.R[i].tobytes() in train_pos for i in idx)
    idx2, _ = select_test_frames(m, sub, n_test=20, seed=5)
    np.testing.assert_array_equal(idx, idx2)
    with pytest.raises(training.SplitError, match="ask for between 1 and"):
        select_test_frames(m, sub, n_test=10_000)


def test_explicit_test_frames_that_were_trained_on_are_refused(uracil, fitted):
    m, _ = fitted
    with pytest.raises(training.TrainTestOverlapError):
        predict_held_out(m, uracil, test_idx=m.train_idx[:3])


def test_downloads_have_units_one_row_per_atom_and_round_trip(uracil, fitted):
    m, em = fitted
    held = predict_held_out(m, uracil, energy_model=em)
    text = predictions_file(Predicted.from_held_out(held), "csv").decode()
    lines = text.strip().splitlines()
    assert lines[0] == ("frame,atom,element,x [Å],y [Å],z [Å],fx_pred [kcal/mol/Å],fy_pred [kcal/mol/Å],"
                        "fz_pred [kcal/mol/Å],fx_std [kcal/mol/Å],fy_std [kcal/mol/Å],fz_std [kcal/mol/Å],"
                        "fx_ref [kcal/mol/Å],fy_ref [kcal/mol/Å],fz_ref [kcal/mol/Å],E_pred [kcal/mol],"
                        "E_std [kcal/mol],E_ref [kcal/mol]")
    assert len(lines) == 1 + held.n_frames * uracil.n_atoms
    first = lines[1].split(",")
    assert int(first[0]) == held.test_idx[0] and first[1:3] == ["0", "C"]
    assert float(first[6]) == pytest.approx(held.F_mean[0, 0, 0], rel=1e-9)
    assert float(first[9]) == pytest.approx(held.F_std[0, 0, 0], rel=1e-9)
    assert float(first[15]) == pytest.approx(held.E_mean[0], rel=1e-12)
    obs = predictions_file(Predicted.from_held_out(held, "observation"), "csv").decode()
    assert "fx_std_observation" in obs.splitlines()[0]
    e_lines = energy_csv(held).strip().splitlines()
    assert e_lines[0] == "frame,E_ref [kcal/mol],E_pred [kcal/mol],E_std [kcal/mol]" and len(e_lines) == 1 + held.n_frames

    from ase.io import read

    from aff_app.units import energy_factor, force_factor

    images = read(io.StringIO(predictions_file(Predicted.from_held_out(held)).decode()), index=":", format="extxyz")
    assert len(images) == held.n_frames
    ff = force_factor("kcal/mol", "Å", "eV", "Å")
    at = images[1]
    assert at.info["frame"] == held.test_idx[1] and at.info["energy_unit"] == "eV"
    np.testing.assert_allclose(at.arrays["forces_pred"], held.F_mean[1] * ff, rtol=1e-6)
    np.testing.assert_allclose(at.arrays["forces_std"], held.F_std[1] * ff, rtol=1e-6)
    np.testing.assert_allclose(at.get_forces(), held.F_ref[1] * ff, rtol=1e-6)
    assert at.info["energy_pred"] == pytest.approx(held.E_mean[1] * energy_factor("kcal/mol", "eV"))


# -- learning curves -------------------------------------------------------------------------------------------


def test_learning_curve_rows_errors_fall_with_m(uracil, trivial_sym):
    calls = []
    rows = learning.learning_curve(uracil, ["aff", "gdml"], [40, 20], n_test=30, seed=0, symmetry=trivial_sym,
                                   gamma=GAMMA, lam=LAM, progress=lambda f, m: calls.append((f, m)))
    assert [(r["model"], r["M"]) for r in rows] == [("AFF", 20), ("AFF", 40), ("GDML", 20), ("GDML", 40)]
    for r in rows:
        assert set(r) == set(learning.ROW_KEYS)
        assert r["status"] == "ok" and r["n_test"] == 30
        assert r["train_s"] > 0 and r["gamma"] == GAMMA and r["lam"] == LAM
        assert 0 <= r["pci"] <= 1 and r["lci"] > 0 and r["l_norm"] > 0
        assert r["delta_p"] == pytest.approx(0.95 - r["pci"])
        assert r["energy_mae"] is not None and r["energy_mae"] > 0
    # more data, smaller error (real uracil; errors fall roughly 2x from M=20 to 40 here)
    for model in ("AFF", "GDML"):
        small, big = [r for r in rows if r["model"] == model]
        assert big["force_mae"] < small["force_mae"]
    # progress: fractions in [0, 1], never backwards, ends at 1
    fr = [f for f, _ in calls]
    assert all(0.0 <= f <= 1.0 for f in fr) and fr[-1] == 1.0
    assert all(b >= a - 1e-12 for a, b in zip(fr, fr[1:]))
    assert any("GDML M=40" in m for _, m in calls)


def test_learning_curve_points_match_a_direct_fit(uracil, trivial_sym):
    rows = learning.learning_curve(uracil, ["aff"], [20], n_test=15, seed=2, symmetry=trivial_sym,
                                   gamma=GAMMA, lam=LAM, with_energy=False)
    test, train = learning.learning_split(uracil.n_frames, [20], 15, seed=2)
    from aff_app.gp.force import fit_force_model

    fm = fit_force_model(uracil.R[train[20]], uracil.F[train[20]], uracil.z, mode="aff",
                         pe_sets=list(trivial_sym.pe_sets), perms=trivial_sym.perms, gamma=GAMMA, lam=LAM)
    pred = fm.predict(uracil.R[test])
    assert rows[0]["force_mae"] == pytest.approx(np.mean(np.abs(pred.mean - uracil.F[test])), rel=1e-10)
    assert rows[0]["energy_mae"] is None and rows[0]["energy_train_s"] is None


def test_sizes_over_the_budget_are_refused_with_a_note_not_a_crash(uracil, trivial_sym):
    n = uracil.n_atoms
    # a budget between GDML at M=20 and GDML at M=40 (one 3MN side each)
    lo = estimate_cost(20, [n]).peak_bytes
    hi = estimate_cost(40, [n]).peak_bytes
    budget = (lo + hi) // 2
    plan = learning.plan_learning_curve(n, ["aff", "gdml"], [20, 40], symmetry=trivial_sym, budget_bytes=budget)
    assert [(p.mode, p.n_train, p.allowed) for p in plan] == [
        ("aff", 20, True), ("aff", 40, True), ("gdml", 20, True), ("gdml", 40, False)]
    assert "refused" in plan[-1].note and "GB" in plan[-1].note
    rows = learning.learning_curve(uracil, ["aff", "gdml"], [20, 40], n_test=10, symmetry=trivial_sym,
                                   gamma=GAMMA, lam=LAM, with_energy=False, budget_bytes=budget)
    refused = rows[-1]
    assert refused["status"] == "over budget" and refused["force_mae"] is None and "refused" in refused["note"]
    assert refused["estimate_GB"] == pytest.approx(hi / 2**30)
    assert all(r["status"] == "ok" for r in rows[:-1])


def test_learning_curve_refuses_bad_requests(uracil):
    with pytest.raises(learning.LearningCurveError, match="model must be one of"):
        learning.learning_curve(uracil, ["krr"], [20], n_test=5)
    with pytest.raises(learning.LearningCurveError, match="choose at least one model"):
        learning.plan_learning_curve(12, [], [20])
    with pytest.raises(learning.LearningCurveError, match="exceed"):
        learning.learning_curve(uracil, ["aff"], [990], n_test=20)
