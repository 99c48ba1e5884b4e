"""Plotly builders of the Predictions and Compare pages, checked through their JSON (what the browser receives)."""

from __future__ import annotations

import json

import numpy as np
import plotly.io as pio
import pytest

from aff_app.figures import compare as figc
from aff_app.figures import predictions as figp


def _spec(fig) -> dict:
    return json.loads(pio.to_json(fig))


def _series(n=8, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.permutation(np.arange(100, 100 + n))  # unsorted on purpose
    ref = rng.normal(size=n)
    mean = ref + 0.1 * rng.normal(size=n)
    sd = 0.2 + 0.05 * rng.random(n)
    return frames, ref, mean, mean - 1.96 * sd, mean + 1.96 * sd


# -- band -------------------------------------------------------------------------------------------------


def test_band_lower_first_then_upper_filled_to_it_sorted_by_frame():
    frames, ref, mean, lo, hi = _series()
    spec = _spec(figp.band_figure(frames, ref, mean, lo, hi, title="F_x on C0", quantity="F_x of C0",
                                  unit="kcal/mol/Å", band_label="95% interval (latent)"))
    lower, upper, pred, refer = spec["data"]
    order = np.argsort(frames)
    assert lower["x"] == sorted(frames.tolist()) and upper["x"] == lower["x"]
    np.testing.assert_allclose(lower["y"], lo[order])
    np.testing.assert_allclose(upper["y"], hi[order])
    assert "fill" not in lower or lower["fill"] in (None, "none")
    assert upper["fill"] == "tonexty" and upper["name"] == "95% interval (latent)"
    assert lower["showlegend"] is False
    np.testing.assert_allclose(pred["y"], mean[order])
    np.testing.assert_allclose(refer["y"], ref[order])
    assert refer["name"] == "reference" and refer["mode"] == "markers" and pred["mode"] == "markers"
    assert all(t["type"] == "scatter" for t in spec["data"])  # Scattergl draws no fills
    lay = spec["layout"]
    assert lay["xaxis"]["title"]["text"] == "held-out frame index"
    assert lay["yaxis"]["title"]["text"] == "F_x of C0 (kcal/mol/Å)"
    assert lay["title"]["text"] == "F_x on C0" and lay["showlegend"] is True


def test_band_residual_centres_on_zero_and_offset_is_named():
    frames, ref, mean, lo, hi = _series()
    spec = _spec(figp.band_figure(frames, ref, mean, lo, hi, title="t", quantity="energy", unit="kcal/mol",
                                  residual=True))
    lower, upper, pred, zero = spec["data"]
    order = np.argsort(frames)
    np.testing.assert_allclose(pred["y"], (mean - ref)[order])
    np.testing.assert_allclose(upper["y"], (hi - ref)[order])
    assert zero["y"] == [0.0, 0.0]
    assert spec["layout"]["yaxis"]["title"]["text"] == "energy: predicted − reference (kcal/mol)"
    spec = _spec(figp.band_figure(frames, ref + 1000, mean + 1000, lo + 1000, hi + 1000, title="t",
                                  quantity="energy", unit="kcal/mol", offset=1000.0))
    np.testing.assert_allclose(spec["data"][3]["y"], ref[order])
    assert spec["layout"]["yaxis"]["title"]["text"] == "energy − 1,000.00 (kcal/mol)"
    spec = _spec(figp.band_figure(frames, ref - 9955.5, mean - 9955.5, lo - 9955.5, hi - 9955.5, title="t",
                                  quantity="energy", unit="kcal/mol", offset=-9955.5))
    np.testing.assert_allclose(spec["data"][3]["y"], ref[order], atol=1e-9)
    assert spec["layout"]["yaxis"]["title"]["text"] == "energy + 9,955.50 (kcal/mol)"  # never "− -9,955.50"


def test_band_refuses_mismatched_or_nonfinite():
    frames, ref, mean, lo, hi = _series()
    with pytest.raises(figp.FigureError, match="one value per frame"):
        figp.band_figure(frames[:-1], ref, mean, lo, hi, title="t", quantity="q", unit="u")
    bad = mean.copy()
    bad[2] = np.nan
    with pytest.raises(figp.FigureError, match="non-finite"):
        figp.band_figure(frames, ref, bad, lo, hi, title="t", quantity="q", unit="u")


# -- parity -----------------------------------------------------------------------------------------------------


def test_parity_has_diagonal_and_metrics_with_units_in_title():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(5, 4, 3))
    pred = ref + 0.1 * rng.normal(size=ref.shape)
    spec = _spec(figp.parity_figure(ref, pred, quantity="force components", unit="kcal/mol/Å"))
    pts, diag = spec["data"]
    assert len(pts["x"]) == ref.size
    assert diag["x"] == diag["y"] and diag["x"][0] <= min(pts["x"]) and diag["x"][1] >= max(pts["x"])
    mae = np.mean(np.abs(pred - ref))
    rmse = np.sqrt(np.mean((pred - ref) ** 2))
    title = spec["layout"]["title"]["text"]
    assert f"MAE {mae:.3g} kcal/mol/Å" in title and f"RMSE {rmse:.3g} kcal/mol/Å" in title
    assert spec["layout"]["xaxis"]["title"]["text"] == "reference force components (kcal/mol/Å)"
    assert spec["layout"]["yaxis"]["title"]["text"] == "predicted force components (kcal/mol/Å)"


def test_parity_subsamples_for_drawing_but_not_for_metrics():
    ref = np.linspace(0, 1, 1000)
    spec = _spec(figp.parity_figure(ref, ref + 0.5, quantity="energy", unit="kcal/mol", max_points=100, offset=0.25))
    assert len(spec["data"][0]["x"]) == 100
    assert "MAE 0.5 kcal/mol" in spec["layout"]["title"]["text"] and "shown: 100 of 1,000" in spec["layout"]["title"]["text"]
    assert min(spec["data"][0]["x"]) == pytest.approx(-0.25)
    assert spec["layout"]["xaxis"]["title"]["text"] == "reference energy − 0.25 (kcal/mol)"


# -- calibration --------------------------------------------------------------------------------------------------


def test_calibration_curve_with_diagonal_and_fraction_axes():
    levels = [0.1, 0.5, 0.9, 0.95]
    spec = _spec(figp.calibration_figure(levels, [0.12, 0.55, 0.93, 0.97], [0.1, 0.4, 0.8, 0.9], kind="observation"))
    diag, forces, energies = spec["data"]
    assert diag["x"] == [0, 1] and diag["y"] == [0, 1] and "ideal" in diag["name"]
    assert forces["x"] == levels and forces["y"] == [0.12, 0.55, 0.93, 0.97] and forces["name"] == "forces"
    assert energies["name"] == "energies"
    lay = spec["layout"]
    assert "observation" in lay["title"]["text"]
    assert "nominal level" in lay["xaxis"]["title"]["text"] and "empirical coverage" in lay["yaxis"]["title"]["text"]
    with pytest.raises(figp.FigureError):
        figp.calibration_figure(levels, [0.1])


# -- 3D comparison ---------------------------------------------------------------------------------------------------


def test_atom_colors_sequential_and_range():
    colors, lo, hi = figp.atom_colors([0.0, 1.0, 2.0])
    assert (lo, hi) == (0.0, 2.0) and all(c.startswith("#") and len(c) == 7 for c in colors)
    assert colors[0] != colors[2]
    same, _, _ = figp.atom_colors([3.0, 3.0])
    assert same[0] == same[1]
    with pytest.raises(figp.FigureError):
        figp.atom_colors([1.0, np.inf])


def test_force_comparison_html_two_arrow_colours_legend_and_offline():
    pytest.importorskip("aff_app.figures.viewer").threedmol_js()  # needs vendor/3dmol (scripts/setup.sh)
    z = np.array([8, 1, 1])
    R = np.array([[0.0, 0.0, 0.1], [0.0, 0.76, -0.48], [0.0, -0.76, -0.48]])
    Fr = np.array([[0.0, 0.0, 10.0], [0.0, 5.0, 0.0], [0.0, -5.0, 0.0]])
    Fp = Fr + 1.0
    html = figp.force_comparison_html(z, R, Fr, Fp, [0.5, 1.0, 1.5], value_label="prediction error |F̂ − F|",
                                      force_scale=0.02, caption="frame 7")
    assert html.count("viewer.addArrow(") == 6
    assert html.count(f'"color": "{figp.REFERENCE_COLOR}"') == 3 and html.count(f'"color": "{figp.PREDICTED_COLOR}"') == 3
    assert "reference force" in html and "predicted force" in html
    assert '<span id="aff-cmin">0.5</span>' in html and '<span id="aff-cmax">1.5</span>' in html
    assert "prediction error |F̂ − F| (kcal/mol/Å)" in html and "frame 7" in html
    assert "linear-gradient" in html and "3dmolReady" in html
    assert "<script src=" not in html and "https://" not in html.split("</script>", 1)[1]
    with pytest.raises(figp.FigureError, match="one value per atom"):
        figp.force_comparison_html(z, R, Fr, Fp, [1.0], value_label="x")


# -- Compare page (Fig. 3, Fig. 5) ---------------------------------------------------------------------------------------


def _rows():
    rows = []
    for model, base in (("AFF", 1.0), ("GDML", 0.8)):
        for m in (20, 40, 80):
            rows.append({"model": model, "M": m, "status": "ok", "force_mae": base * 20 / m, "train_s": 0.01 * m,
                         "energy_mae": None if model == "GDML" else 0.1 * 20 / m, "l_norm": 0.1, "delta_p": -0.02,
                         "pci": 0.97})
    rows.append({"model": "GDML", "M": 160, "status": "over budget", "force_mae": None, "train_s": None,
                 "energy_mae": None, "l_norm": None, "delta_p": None, "pci": None})
    rows[0]["l_norm"] = float("nan")  # a NaN never becomes a point
    return rows


def test_learning_curve_figure_log_log_per_model_with_units():
    spec = _spec(figc.learning_curve_figure(_rows()))
    names = [(t["name"], t["xaxis"], t["yaxis"]) for t in spec["data"]]
    assert ("AFF", "x", "y") in names and ("GDML", "x", "y") in names
    by_axis = {}
    for t in spec["data"]:
        by_axis.setdefault(t["yaxis"], []).append(t)
    assert len(by_axis) == 3  # force MAE, energy MAE (AFF has energies), training time
    for t in spec["data"]:
        assert 160 not in t["x"]  # the refused point is not drawn
    lay = spec["layout"]
    for ax in ("xaxis", "xaxis2", "xaxis3"):
        assert lay[ax]["type"] == "log" and lay[ax]["title"]["text"] == "training frames M"
    ytitles = [lay[a]["title"]["text"] for a in ("yaxis", "yaxis2", "yaxis3")]
    assert ytitles == ["force MAE (kcal/mol/Å)", "energy MAE (kcal/mol)", "training time (s)"]
    assert all(lay[a]["type"] == "log" for a in ("yaxis", "yaxis2", "yaxis3"))
    # minor log ticks carry their whole value ("0.5", not plotly's bare "5" that read 10× off)
    assert all(lay[a]["minorloglabels"] == "complete" for a in ("xaxis", "xaxis2", "xaxis3", "yaxis", "yaxis2", "yaxis3"))
    assert sum(1 for t in spec["data"] if t.get("showlegend") is not False) == 2  # each model once in the legend
    assert lay["title"]["text"]


def test_learning_curve_figure_without_energy_has_two_panels():
    rows = [dict(r, energy_mae=None) for r in _rows()]
    spec = _spec(figc.learning_curve_figure(rows))
    assert {t["yaxis"] for t in spec["data"]} == {"y", "y2"}
    assert spec["layout"]["yaxis2"]["title"]["text"] == "training time (s)"


def test_uncertainty_figure_bars_and_coverage_gap():
    spec = _spec(figc.uncertainty_figure(_rows()))
    bars = [t for t in spec["data"] if t["type"] == "bar"]
    lines = [t for t in spec["data"] if t["type"] == "scatter"]
    assert {b["name"] for b in bars} == {"AFF: L_norm", "GDML: L_norm"}
    aff_bar = next(b for b in bars if b["name"] == "AFF: L_norm")
    assert aff_bar["x"] == ["40", "80"]  # the NaN L_norm at M=20 is left out
    assert {t["name"] for t in lines} == {"AFF: Δp", "GDML: Δp"}
    assert all(t["yaxis"] == "y2" for t in lines)
    lay = spec["layout"]
    assert lay["xaxis"]["title"]["text"] == "training frames M" and lay["xaxis"]["categoryarray"] == ["20", "40", "80"]
    assert "L_norm" in lay["yaxis"]["title"]["text"] and "fraction" in lay["yaxis"]["title"]["text"]
    assert "Δp = 0.95 − PCI(95%)" in lay["yaxis2"]["title"]["text"]


def test_usable_rows_drop_non_ok_none_and_nonpositive():
    rows = _rows() + [{"model": "AFF", "M": 5, "status": "ok", "force_mae": 0.0}]
    got = figc.usable_rows(rows, "force_mae", positive=True)
    assert got["AFF"][0] == [20, 40, 80] and got["GDML"][0] == [20, 40, 80]
