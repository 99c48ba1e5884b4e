"""Metrics on hand-computed arrays (exact values) and as properties: coverage grows
with the nominal level, a perfect prediction has zero error, reports are JSON."""

import json

import numpy as np
import pytest
from scipy.stats import norm

from aff_app.workflows.metrics import (
    MetricError,
    breakdown,
    coverage,
    delta_p,
    energy_report,
    force_report,
    l_norm,
    lci,
    mae,
    pci,
    rmse,
)
from aff_app.gp import ForcePrediction
from aff_app.gp.energy import EnergyPrediction


def test_mae_and_rmse_by_hand():
    y = np.array([1.0, -2.0, 3.0, 0.0])
    p = np.array([2.0, -2.0, 0.0, 4.0])  # errors 1, 0, −3, 4
    assert mae(y, p) == pytest.approx(8 / 4)
    assert rmse(y, p) == pytest.approx(np.sqrt((1 + 0 + 9 + 16) / 4))


def test_interval_metrics_by_hand():
    y = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    lo = np.array([-1.0, 1.0, 2.5, 0.0, 0.0])
    hi = np.array([1.0, 2.0, 3.0, 2.0, 10.0])  # inside: yes, yes (edge), no, no, yes (edge)
    assert pci(y, lo, hi) == pytest.approx(3 / 5)
    assert lci(lo, hi) == pytest.approx((2 + 1 + 0.5 + 2 + 10) / 5)
    assert l_norm(lo, hi, y) == pytest.approx(((2 + 1 + 0.5 + 2 + 10) / 5) / 10.0)
    assert delta_p(y, lo, hi) == pytest.approx(0.95 - 0.6)
    assert delta_p(y, lo, hi, level=0.9) == pytest.approx(0.3)


def test_coverage_by_hand_and_monotone_in_level():
    y = np.array([0.0, 0.0, 0.0, 0.0])
    mean = np.array([0.5, 1.5, 2.5, -0.1])
    std = np.ones(4)
    # |r| = 0.5, 1.5, 2.5, 0.1 against z(0.95) = 1.96 and z(0.5) = 0.674
    assert coverage(y, mean, std, 0.95) == pytest.approx(3 / 4)
    assert coverage(y, mean, std, 0.5) == pytest.approx(2 / 4)
    rng = np.random.default_rng(0)
    y = rng.normal(size=4000)
    levels = np.linspace(0.05, 0.99, 30)
    cov = coverage(y, np.zeros_like(y), np.ones_like(y), levels)
    assert cov.shape == levels.shape
    assert np.all(np.diff(cov) >= 0)
    # standard normal draws against their own distribution: calibrated within a binomial band
    band = 4 * np.sqrt(levels * (1 - levels) / y.size)
    assert np.all(np.abs(cov - levels) <= band)


def test_perfect_prediction_has_zero_error_and_full_coverage():
    rng = np.random.default_rng(1)
    F = rng.normal(size=(3, 4, 3))
    assert mae(F, F) == 0.0 and rmse(F, F) == 0.0
    assert pci(F, F - 1e-3, F + 1e-3) == 1.0
    assert coverage(F, F, np.zeros_like(F), [0.1, 0.9]).tolist() == [1.0, 1.0]


def test_bad_inputs_raise_metric_errors():
    with pytest.raises(MetricError, match="same shape"):
        mae(np.zeros(3), np.zeros(4))
    with pytest.raises(MetricError, match="empty"):
        rmse(np.zeros(0), np.zeros(0))
    with pytest.raises(MetricError, match="NaN"):
        mae(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(MetricError, match="hi < lo"):
        pci(np.zeros(2), np.ones(2), np.zeros(2))
    with pytest.raises(MetricError, match="level"):
        coverage(np.zeros(2), np.zeros(2), np.ones(2), [0.5, 1.0])
    with pytest.raises(MetricError, match="zero range"):
        l_norm(np.zeros(2), np.ones(2), np.ones(2))
    assert issubclass(MetricError, ValueError)


def test_breakdown_rows_by_hand():
    z = np.array([6, 1, 1])
    F = np.zeros((2, 3, 3))
    P = np.zeros((2, 3, 3))
    P[:, 0] = 1.0  # C0 errs by 1 on each component
    P[0, 1, 0] = 6.0  # H1 errs by 6 on one of its 6 components
    lo, hi = P - 0.5, P + 0.5  # covers every zero error, misses the errors of 1 and 6
    rows = breakdown(F, P, z, [np.array([0]), np.array([1, 2])], lo=lo, hi=hi)
    by = {(r["group"], r["label"]): r for r in rows}
    assert [r["group"] for r in rows] == ["atom"] * 3 + ["element"] * 2 + ["pe_set"] * 2
    assert by[("atom", "C0")]["mae"] == pytest.approx(1.0)
    assert by[("atom", "H1")]["mae"] == pytest.approx(1.0)  # 6 / 6 components
    assert by[("atom", "H1")]["rmse"] == pytest.approx(np.sqrt(36 / 6))
    assert by[("atom", "H2")]["mae"] == 0.0 and by[("atom", "H2")]["pci"] == 1.0
    assert by[("element", "H")]["mae"] == pytest.approx(6 / 12)
    assert by[("element", "H")]["atoms"] == [1, 2] and by[("element", "H")]["n_components"] == 12
    assert by[("element", "H")]["pci"] == pytest.approx(11 / 12)
    assert by[("atom", "C0")]["pci"] == 0.0 and by[("atom", "C0")]["lci"] == pytest.approx(1.0)
    pe = [r for r in rows if r["group"] == "pe_set"]
    assert pe[1]["atoms"] == [1, 2] and pe[1]["mae"] == pytest.approx(6 / 12)
    with pytest.raises(MetricError, match="partition"):
        breakdown(F, P, z, [np.array([0, 1])])


def test_force_report_matches_the_parts_and_is_json():
    rng = np.random.default_rng(2)
    F = rng.normal(scale=3.0, size=(5, 3, 3))
    mean = F + rng.normal(scale=0.5, size=F.shape)
    pred = ForcePrediction(mean=mean, std=np.full(F.shape, 0.5), noise_var=np.full(3, 0.01))
    rep = force_report(F, pred, z=[8, 1, 1], pe_sets=[[0], [1, 2]])
    lo, hi = mean - norm.ppf(0.975) * 0.5, mean + norm.ppf(0.975) * 0.5
    assert rep["mae"] == pytest.approx(mae(F, mean))
    assert rep["pci"] == pytest.approx(pci(F, lo, hi))
    assert rep["lci"] == pytest.approx(2 * 1.959963984540054 * 0.5)
    assert rep["l_norm"] == pytest.approx(rep["lci"] / (F.max() - F.min()))
    assert rep["delta_p"] == pytest.approx(0.95 - rep["pci"])
    assert rep["units"]["mae"] == "kcal/mol/Å" and rep["n_components"] == 45
    obs = force_report(F, pred, kind="observation")
    assert obs["lci"] > rep["lci"]
    assert json.loads(json.dumps(rep))["breakdown"][0]["label"] == "O0"


def test_energy_report_with_and_without_intervals():
    E = np.array([1.0, 2.0, 3.0])
    pred = EnergyPrediction(mean=np.array([1.5, 2.0, 1.0]), std=np.array([1.0, 1.0, 0.5]))
    rep = energy_report(E, pred)
    assert rep["mae"] == pytest.approx((0.5 + 0 + 2) / 3)
    assert rep["max_abs_error"] == pytest.approx(2.0)
    assert rep["pci"] == pytest.approx(2 / 3)  # |2| > 1.96·0.5
    assert rep["lci"] == pytest.approx(2 * 1.959963984540054 * (2.5 / 3))
    assert rep["units"]["mae"] == "kcal/mol"
    no_iv = energy_report(E, EnergyPrediction(mean=pred.mean, std=np.full(3, np.nan)))
    assert "pci" not in no_iv and no_iv["mae"] == rep["mae"]
    json.dumps(rep)
    with pytest.raises(MetricError, match="shape"):
        energy_report(E[:2], pred)
