"""The Train, Predictions and Compare pages through Streamlit's AppTest (no browser).

The session is seeded with the bundled benzene sample and, where a page needs
one, a small AFF model (M = 20, fixed γ and λ) so that every run takes seconds.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from aff_app.workflows import pipeline
from aff_app.gp.record import LamCheck
from aff_app.gp.budget import ComputeBudgetError, estimate_cost
from aff_app.gp.covariance import format_flops
from aff_app.gp.energy import fit_energy_model
from aff_app.gp.force import FactorizationError
from aff_app.gp.persistence import model_bytes as _model_bytes
from aff_app.workflows.registry import ModelRegistry
from aff_app.ui import state

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TRAIN, PREDICTIONS, COMPARE = "pages/train.py", "pages/predictions.py", "pages/compare.py"
GAMMA, LAM = 4.0, 1e-8


pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


@lru_cache(maxsize=None)
def _traj(name: str = "benzene"):
    from aff_app.io.files import load_trajectory

    return load_trajectory(REPO / "sample_data" / f"{name}.npz")


@lru_cache(maxsize=None)
def _fitted(name: str = "benzene"):
    traj = _traj(name)
    m = pipeline.train_model(traj, model="aff", n_train=20, n_test=30, gamma=GAMMA, lam=LAM)
    em = fit_energy_model(m, traj.R[m.train_idx], traj.E[m.train_idx], gamma=GAMMA, lam=LAM)
    return m, em


def model_bytes(entry) -> bytes:
    """The bytes the Train page's download button serves for ``entry``."""
    return _model_bytes(entry.force, entry.energy)


def _registry(with_model: bool = True) -> ModelRegistry:
    reg = ModelRegistry()
    if with_model:
        m, em = _fitted()
        reg.add(m, energy=em, name="small AFF", data_fingerprint=_traj().fingerprint)
    return reg


def _fixed_small(at: AppTest) -> AppTest:
    """Set the Train form to a small fixed-γ/λ AFF fit (20 frames, 15 test frames) and rerun."""
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()  # γ and λ are enabled only in this mode
    at.number_input(key=state.TRAIN_M).set_value(20)
    at.number_input(key=state.TRAIN_N_TEST).set_value(15)
    at.number_input(key=state.TRAIN_GAMMA).set_value(GAMMA)
    at.number_input(key=state.TRAIN_LAM).set_value(LAM)
    return at.run()


def _open(page: str, *, traj=True, registry: ModelRegistry | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if traj:
        at.session_state[state.TRAJECTORY] = _traj()
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    if registry is not None:
        at.session_state[state.MODELS] = registry
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _specs(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _texts(at, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


def _links(at) -> list[str]:
    return [el.proto.page for el in at.get("page_link")]


# -- nothing loaded ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [TRAIN, PREDICTIONS, COMPARE])
def test_pages_without_data_point_to_the_data_page(page):
    at = _open(page, traj=False)
    assert "No trajectory loaded" in _texts(at, "info")
    assert "data" in _links(at)
    assert not at.get("plotly_chart")


def test_predictions_without_a_model_point_to_the_train_page():
    at = _open(PREDICTIONS, registry=_registry(with_model=False))
    assert "No trained model for C6H6 yet" in _texts(at, "info")
    assert "train" in _links(at)
    # a model of another molecule does not count, and the page says so
    reg = ModelRegistry()
    m, _ = _fitted("uracil")
    reg.add(m, name="uracil model")
    at = _open(PREDICTIONS, registry=reg)
    assert "of another molecule" in _texts(at, "info")


# -- Train ---------------------------------------------------------------------------------------------------------------


def test_train_page_shows_the_cost_before_training():
    at = _open(TRAIN, registry=_registry(with_model=False))
    m = _metrics(at)
    est = estimate_cost(200, [6, 6], n_perms=12)  # benzene AFF at the default M = 200: two PE sets of 6 atoms
    assert m["Cholesky work Σ(3Mlᵢ)³/3"] == format_flops(est.cholesky_flops) == "31.1 GFLOP"
    assert m["Peak memory"] == f"{est.peak_bytes / 2**30:.2f} GB"
    assert "Memory budget" in m
    # the time estimate covers the whole action, part by part (issue 20 item 4)
    from aff_app.gp.budget import estimate_time

    from aff_app.gp.aff_energy import subset_side, subset_size
    from aff_app.ui.train_sections import _seconds

    # AFF's integrated energy adds its subset's sGDML fit (issue 15): M_E frames, one set of all 12 atoms
    subset = estimate_cost(subset_size(200, 12, subset_side(200, [6, 6])), [12], n_perms=12)
    times = estimate_time(est, 12, search=True, energy=True, n_test=at.number_input(key=state.TRAIN_N_TEST).value,
                          energy_subset=subset)
    assert times.energy_s > estimate_time(est, 12, search=True, energy=True, n_test=200).energy_s
    assert m["Time, train and test (est.)"] == _seconds(times.total_s)
    caption = _texts(at, "caption")
    assert "Estimated parts: search" in caption and "held-out predictions" in caption
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    assert "Estimated parts: force fit" in _texts(at, "caption")  # no search with γ and λ by hand
    at.radio(key=state.TRAIN_HYPER).set_value("likelihood").run()
    assert at.number_input(key=state.TRAIN_M).value == 200
    assert "PE sets: 2" in _texts(at, "caption")
    assert not at.button(key=state.TRAIN_RUN).disabled
    # the estimate follows the settings: GDML factors one 3MN side
    at.radio(key=state.TRAIN_MODEL).set_value("gdml").run()
    est = estimate_cost(200, [12])
    assert _metrics(at)["Cholesky work Σ(3Mlᵢ)³/3"] == format_flops(est.cholesky_flops)  # (3·200·12)³/3 = 124 GFLOP


def test_train_button_trains_a_small_model_into_the_session():
    reg = _registry()
    at = _open(TRAIN, registry=reg)
    _fixed_small(at)
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    reg = at.session_state[state.MODELS]
    assert reg.names() == ["small AFF", "AFF M=20 seed 0"]
    new = reg.get("AFF M=20 seed 0")
    assert new.force.gamma == GAMMA and new.force.lam == LAM and new.n_train == 20
    assert new.energy is not None and len(new.test_idx) == 15
    assert new.metrics["force_mae"] > 0 and 0 <= new.metrics["pci"] <= 1
    assert "Trained **AFF M=20 seed 0**" in _texts(at, "success")
    table = at.dataframe[0].value
    assert list(table["name"]) == ["small AFF", "AFF M=20 seed 0"]
    assert table["force MAE (kcal/mol/Å)"].iloc[1] == f"{new.metrics['force_mae']:.3g}"
    # the held-out predictions are memoised for the Predictions page
    assert any(k[0] == new.uid for k in at.session_state[state.HELD_OUT])


def test_over_budget_gdml_is_refused_and_existing_models_stay(monkeypatch):
    reg = _registry()  # the existing model is trained before the budget shrinks
    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", "0.001")
    at = _open(TRAIN, registry=reg)
    at.radio(key=state.TRAIN_MODEL).set_value("gdml").run()
    assert not at.exception
    errors = _texts(at, "error")
    assert "Refused before training" in errors and "memory budget is 0.001 GB" in errors
    assert at.button(key=state.TRAIN_RUN).disabled
    assert at.session_state[state.MODELS].names() == ["small AFF"]
    assert at.session_state[state.TRAJECTORY].fingerprint == _traj().fingerprint


def test_train_notice_says_when_the_lambda_check_lowered_the_nugget(monkeypatch):
    reg = _registry()
    at = _open(TRAIN, registry=reg)
    _fixed_small(at)
    real = pipeline.train

    def checked_fit(*args, **kwargs):  # a real fit, recorded as if the λ check had lowered λ 16×
        trained = real(*args, **kwargs)
        trained.force.record.lam_check = LamCheck(method="loo", probe_sets=(0,), candidates=(16 * LAM, LAM),
                                                  loo_mae=(1.0, 0.9), frames=5, chosen=LAM)
        return trained

    monkeypatch.setattr(pipeline, "train", checked_fit)
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    text = _texts(at, "success")
    assert "λ lowered 16× from the search's" in text and "error was 10% smaller" in text


@pytest.mark.parametrize("exc", [
    FactorizationError("Cholesky of PE set 0 (atoms [0, 1], size 360) failed with λ = 1e-12: raise λ"),
    ComputeBudgetError("this AFF fit needs about 9.0 GB but the memory budget is 1.0 GB"),
])
def test_training_failure_is_shown_and_changes_nothing(monkeypatch, exc):
    """A failure inside the fit becomes st.error with the library's message; models and data stay."""
    reg = _registry()
    at = _open(TRAIN, registry=reg)
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    at.number_input(key=state.TRAIN_M).set_value(20).run()

    def failing_fit(*args, **kwargs):
        kwargs["progress"](0.3, "building kernels")
        raise exc

    monkeypatch.setattr(pipeline, "train", failing_fit)
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    errors = _texts(at, "error")
    assert "Training failed" in errors and str(exc) in errors and "models and the data are unchanged" in errors
    assert at.session_state[state.MODELS].names() == ["small AFF"]
    assert at.session_state[state.TRAJECTORY].fingerprint == _traj().fingerprint


def test_rename_remove_and_download():
    reg = _registry()
    at = _open(TRAIN, registry=reg)
    assert at.selectbox(key=state.TRAIN_MANAGE).value == "small AFF"
    at.text_input(key=state.TRAIN_RENAME_TEXT).set_value("benzene AFF").run()
    at.button(key=state.TRAIN_RENAME).click().run()
    assert at.session_state[state.MODELS].names() == ["benzene AFF"]
    assert "Renamed" in _texts(at, "success")
    dl = at.get("download_button")
    assert any("benzene AFF (force and energy model, .npz)" in el.proto.label for el in dl)
    at.button(key=state.TRAIN_REMOVE).click().run()
    assert len(at.session_state[state.MODELS]) == 0
    assert "None yet" in _texts(at, "caption")


def test_upload_adds_a_saved_model_and_refuses_another_molecule():
    reg = _registry()
    data = model_bytes(reg.get("small AFF"))
    at = _open(TRAIN, registry=ModelRegistry())
    at.get("file_uploader")  # present
    uploader = next(el for el in at.get("file_uploader"))
    assert uploader is not None
    at = _upload(at, "saved.npz", data)
    names = at.session_state[state.MODELS].names()
    assert names == ["saved (uploaded)"]
    added = at.session_state[state.MODELS].get("saved (uploaded)")
    assert added.energy is not None and added.source == "uploaded"
    np.testing.assert_allclose(added.force.alpha[0], reg.get("small AFF").force.alpha[0])
    # a uracil model (12 atoms too) on benzene data: a clear error, nothing added
    ura = ModelRegistry()
    ura.add(_fitted("uracil")[0], name="u")
    at = _upload(at, "uracil.npz", model_bytes(ura.get("u")))
    assert "Could not add uracil.npz" in _texts(at, "error") and "C4H4N2O2" in _texts(at, "error")
    assert at.session_state[state.MODELS].names() == ["saved (uploaded)"]
    at = _upload(at, "junk.npz", b"not a zip file")
    assert "not an .npz archive" in _texts(at, "error")


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    """Set the uploader (AppTest has no typed accessor for it in every version) and press Add."""
    try:
        at.file_uploader(key=state.TRAIN_UPLOAD).set_value((name, data, "application/octet-stream")).run()
    except (AttributeError, TypeError):  # pragma: no cover - older AppTest
        pytest.skip("this Streamlit's AppTest cannot set a file_uploader")
    at.button(key=state.TRAIN_UPLOAD_ADD).click().run()
    assert not at.exception, at.exception
    return at


# -- Predictions ------------------------------------------------------------------------------------------------------------


def test_predictions_page_shows_bands_parity_calibration_metrics_and_view():
    reg = _registry()
    at = _open(PREDICTIONS, registry=reg)
    entry = reg.get("small AFF")
    m = _metrics(at)
    assert m["Training frames M"] == "20"
    assert float(m["Force MAE (kcal/mol/Å)"]) > 0 and float(m["Energy MAE (kcal/mol)"]) > 0
    assert m["PCI(95%) latent"].endswith("%") and float(m["LCI(95%) (kcal/mol/Å)"]) > 0
    assert m["Train time (s)"] != "—"
    assert "30 frames: the 30 test frames drawn when it was trained" in _texts(at, "markdown")
    specs = _specs(at)
    assert len(specs) == 5  # force band, energy band, force parity, energy parity, calibration
    force_band, energy_band, f_par, e_par, cal = specs
    assert force_band["data"][0]["showlegend"] is False and force_band["data"][1]["fill"] == "tonexty"
    assert force_band["data"][0]["x"] == sorted(entry.test_idx)
    assert force_band["layout"]["yaxis"]["title"]["text"] == "F_x of C0 (kcal/mol/Å)"
    assert energy_band["data"][1]["fill"] == "tonexty" and "(kcal/mol)" in energy_band["layout"]["yaxis"]["title"]["text"]
    assert "MAE" in f_par["layout"]["title"]["text"] and "kcal/mol/Å" in f_par["layout"]["title"]["text"]
    assert len(f_par["data"][0]["x"]) == 30 * 12 * 3
    assert "kcal/mol" in e_par["layout"]["title"]["text"]
    assert cal["data"][0]["x"] == [0, 1] and cal["data"][0]["y"] == [0, 1]
    iframe = at.get("iframe")[0].proto.srcdoc
    assert "reference force" in iframe and "predicted force" in iframe and "prediction error" in iframe
    labels = [el.proto.label for el in at.get("download_button")]
    assert any("Predictions CSV" in lab for lab in labels) and any("Extended XYZ" in lab for lab in labels)
    # the Compare table now has this model's metrics
    assert reg.get("small AFF").metrics["force_mae"] == pytest.approx(float(m["Force MAE (kcal/mol/Å)"]), rel=5e-3)


def test_predictions_toggles_kind_atom_and_residual():
    at = _open(PREDICTIONS, registry=_registry())
    lat_lci = float(_metrics(at)["LCI(95%) (kcal/mol/Å)"])
    at.radio(key=state.PRED_KIND).set_value("observation").run()
    assert not at.exception
    m = _metrics(at)
    assert "PCI(95%) observation" in m and float(m["LCI(95%) (kcal/mol/Å)"]) >= lat_lci
    assert _specs(at)[0]["data"][1]["name"] == "95% interval (observation)"
    at.selectbox(key=state.PRED_ATOM).set_value(7)
    at.radio(key=state.PRED_COMPONENT).set_value("z")
    at.toggle(key=state.PRED_RESIDUAL).set_value(True).run()
    band = _specs(at)[0]
    assert band["layout"]["yaxis"]["title"]["text"] == "F_z of H7: predicted − reference (kcal/mol/Å)"
    at.radio(key=state.PRED_COLOR_BY).set_value("std").run()
    assert "predicted uncertainty" in at.get("iframe")[0].proto.srcdoc


def test_predictions_of_a_force_only_model_say_why_there_is_no_energy():
    reg = ModelRegistry()
    reg.add(_fitted()[0], name="forces only")
    at = _open(PREDICTIONS, registry=reg)
    assert _metrics(at)["Energy MAE (kcal/mol)"] == "—"
    assert "this model has no energy model" in _texts(at, "info")
    assert "energy MAE — " in _texts(at, "caption")
    assert len(_specs(at)) == 3  # force band, force parity, calibration


# -- Compare ---------------------------------------------------------------------------------------------------------------


def test_compare_lists_models_and_computes_learning_curves_with_refusals(monkeypatch):
    n = 12
    aff50 = estimate_cost(50, [6, 6], n_perms=12).peak_bytes
    gdml25, gdml50 = estimate_cost(25, [n]).peak_bytes, estimate_cost(50, [n]).peak_bytes
    budget = (max(aff50, gdml25) + gdml50) / 2
    assert max(aff50, gdml25) < budget < gdml50
    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", repr(budget / 2**30))
    at = _open(COMPARE, registry=_registry())
    table = at.dataframe[0].value
    assert list(table["name"]) == ["small AFF"] and list(table["model"]) == ["AFF"]
    assert table["γ (1/Å)"].iloc[0] == "4" and table["λ"].iloc[0] == "1.00e-08"
    at.multiselect(key=state.CMP_MODELS).set_value(["aff", "gdml"])
    at.multiselect(key=state.CMP_SIZES).set_value([25, 50])
    at.number_input(key=state.CMP_N_TEST).set_value(20)
    at.radio(key=state.CMP_HYPER).set_value("fixed").run()
    at.number_input(key=state.CMP_GAMMA).set_value(GAMMA)
    at.number_input(key=state.CMP_LAM).set_value(LAM)
    at.run()
    assert "GDML M = 50" in _texts(at, "warning") and "over the memory budget" in _texts(at, "warning")
    at.button(key=state.CMP_RUN).click().run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key == state.CMP_CANCEL]  # the finished run takes its Cancel with it
    rows = at.session_state[state.CMP_RESULT]["rows"]
    assert [(r["model"], r["M"], r["status"]) for r in rows] == [
        ("AFF", 25, "ok"), ("AFF", 50, "ok"), ("GDML", 25, "ok"), ("GDML", 50, "over budget")]
    curve, unc = _specs(at)
    lay = curve["layout"]
    assert lay["xaxis"]["type"] == "log" and lay["yaxis"]["type"] == "log"
    assert lay["yaxis"]["title"]["text"] == "force MAE (kcal/mol/Å)"
    assert {t["name"] for t in curve["data"]} == {"AFF", "GDML"}
    assert all(50 not in t["x"] for t in curve["data"] if t["name"] == "GDML")
    assert "L_norm" in unc["layout"]["yaxis"]["title"]["text"]
    result = at.dataframe[1].value
    assert list(result["status"]) == ["ok", "ok", "ok", "over budget"]
    assert result["force MAE (kcal/mol/Å)"].iloc[3] == "—" and "refused" in result["note"].iloc[3]


def test_hand_set_hyperparameters_start_from_the_data_s_last_search_and_reset_with_the_data():
    """Issue 20 item 5: γ and λ by hand are pre-filled from the newest searched model of the loaded data (not the
    rough defaults, not another data set's values), on Train and on Compare; a user's own value survives reruns."""
    traj = _traj()
    reg = _registry()  # "small AFF": fixed γ, λ: not a search, so not a source
    at = _open(TRAIN, registry=reg)
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    assert "No search has run on this data yet" in _texts(at, "caption")
    default_gamma = at.number_input(key=state.TRAIN_GAMMA).value
    searched = pipeline.train_model(traj, model="aff", n_train=30, n_test=10)
    assert not searched.record.search.fixed
    reg.add(searched, name="searched", data_fingerprint=traj.fingerprint)
    at.run()
    assert at.number_input(key=state.TRAIN_GAMMA).value == pytest.approx(searched.gamma)
    assert at.number_input(key=state.TRAIN_LAM).value == pytest.approx(searched.lam)
    assert "Filled in from the search of **searched**" in _texts(at, "caption")
    at.number_input(key=state.TRAIN_GAMMA).set_value(0.5).run()  # the user's own value stays
    at.run()
    assert at.number_input(key=state.TRAIN_GAMMA).value == 0.5
    assert "Your own values; the last search on this data (**searched**) found" in _texts(at, "caption")
    at.switch_page(COMPARE).run()
    assert not at.exception, at.exception
    at.radio(key=state.CMP_HYPER).set_value("fixed").run()
    assert at.number_input(key=state.CMP_GAMMA).value == pytest.approx(searched.gamma)
    # another data set: its own defaults on both pages, nothing inherited
    uracil = _traj("uracil")
    at.session_state[state.TRAJECTORY] = uracil
    at.run()
    assert at.number_input(key=state.CMP_GAMMA).value != pytest.approx(searched.gamma)
    assert "No search has run on this data yet" in _texts(at, "caption")
    at.switch_page(TRAIN).run()
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    gamma = at.number_input(key=state.TRAIN_GAMMA).value
    assert gamma != pytest.approx(searched.gamma) and gamma != 0.5 and gamma != default_gamma


def test_compare_plots_the_session_s_models_against_training_time():
    reg = _registry()
    m, em = _fitted()
    reg.add(m, energy=em, name="second AFF", data_fingerprint=_traj().fingerprint)
    reg.set_metrics("small AFF", {"force_mae": 0.9, "energy_mae": 0.5})
    reg.set_metrics("second AFF", {"force_mae": 0.6, "energy_mae": 0.4})
    at = _open(COMPARE, registry=reg)
    charts = [s for s in _specs(at) if "Accuracy against training time" in s["layout"]["title"]["text"]]
    assert len(charts) == 1
    names = [n for t in charts[0]["data"] if t.get("mode") == "markers+text" and t.get("xaxis", "x") == "x"
             for n in t["text"]]
    assert sorted(names) == ["second AFF", "small AFF"]
    assert "second AFF (AFF) is the most accurate" in _texts(at, "markdown") or "both the most accurate" in \
        _texts(at, "markdown")


def _plain_xyz(traj, frames) -> bytes:
    import io as _io

    import ase
    import ase.io

    buf = _io.StringIO()
    ase.io.write(buf, [ase.Atoms(numbers=traj.z, positions=traj.R[i]) for i in frames], format="xyz")
    return buf.getvalue().encode()


def test_predictions_on_uploaded_structures_without_labels():
    """Issue 20 item 7: a plain XYZ (no labels) gets forces, energies and sds on the Predictions page, with the
    CLI's files for download; the numbers are the library's."""
    from aff_app.workflows.predictions import predict_structures

    reg = _registry()
    at = _open(PREDICTIONS, registry=reg)
    traj = _traj()
    frames = [2900, 2950, 2999]
    at.file_uploader(key=state.PRED_OWN_UPLOAD).set_value(("three.xyz", _plain_xyz(traj, frames), "text/plain")).run()
    assert not at.exception, at.exception
    at.button(key=state.PRED_OWN_RUN).click().run()
    assert not at.exception, at.exception
    table = [d for d in at.dataframe if "largest force sd (kcal/mol/Å)" in d.value.columns][0].value
    assert len(table) == 3
    entry = reg.get("small AFF")
    want = predict_structures(entry.force, entry.energy, traj.subset(frames))
    np.testing.assert_allclose(table["energy (kcal/mol)"], np.round(want.E_mean, 3))
    np.testing.assert_allclose(table["largest force sd (kcal/mol/Å)"], np.round(want.F_std.max(axis=(1, 2)), 4))
    assert at.get("download_button")  # extxyz and CSV (served by the CLI's writer)
    # another molecule is refused with the reason
    uracil = _traj("uracil")
    at.file_uploader(key=state.PRED_OWN_UPLOAD).set_value(("u.xyz", _plain_xyz(uracil, [0]), "text/plain")).run()
    at.button(key=state.PRED_OWN_RUN).click().run()
    assert not at.exception, at.exception
    assert "Cannot predict" in _texts(at, "error")


def test_predictions_page_on_unlabelled_loaded_data():
    import dataclasses

    reg = _registry()
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.TRAJECTORY] = dataclasses.replace(_traj().subset(range(10)), E=None, F=None)
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    at.session_state[state.MODELS] = reg
    at.switch_page(PREDICTIONS).run()
    assert not at.exception, at.exception
    assert "no reference energies and forces" in _texts(at, "info")
    at.button(key=state.PRED_OWN_RUN).click().run()
    assert not at.exception, at.exception
    table = [d for d in at.dataframe if "energy sd (kcal/mol)" in d.value.columns][0].value
    assert len(table) == 10 and (table["energy sd (kcal/mol)"] > 0).all()


def test_a_fit_over_the_budget_for_the_dense_path_takes_the_iterative_one(monkeypatch):
    """The cost card says which path a fit takes: with a budget below the dense kernels (41.6 MB for benzene,
    M = 40, two 6-atom sets) AFF goes iterative (conjugate gradients) and stays trainable; GDML, dense only, is
    refused."""
    from aff_app.gp.budget import estimate_cost

    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", str(20e6 / 2**30))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(TRAIN).run()
    at.number_input(key=state.TRAIN_M).set_value(40).run()
    assert not at.exception, at.exception
    expected = estimate_cost(40, [6, 6], n_perms=12, solver="auto", budget_bytes=int(20e6), n_atoms=12)
    assert expected.solver == "iterative" and expected.dense_peak_bytes > 20e6 >= expected.peak_bytes
    infos = " ".join(str(e.value) for e in at.info)
    assert "The dense kernels would exceed the memory budget" in infos and expected.summary in infos
    assert f"Solver: {expected.summary}" in " ".join(str(c.value) for c in at.caption)
    assert not at.button(key=state.TRAIN_RUN).disabled
    assert not at.error
    at.radio(key=state.TRAIN_MODEL).set_value("gdml").run()
    assert "Refused before training" in " ".join(str(e.value) for e in at.error)
    assert at.button(key=state.TRAIN_RUN).disabled


def test_train_page_runs_the_large_pe_sets_of_a_fit_on_a_local_cluster():
    """The Train page's "Run the fit on" field (issue 18): a bad scheduler disables Train and says why; local:2
    (a real two-worker LocalCluster, started for the fit and stopped after it) factors benzene's two 6-atom sets
    (kernel side 18·M = 2520 ≥ TASK_SET_SIDE) as tasks, and the model equals the serial fit."""
    pytest.importorskip("distributed")
    from aff_app.gp.force import TASK_SET_SIDE

    at = _open(TRAIN)
    _fixed_small(at)
    at.number_input(key=state.TRAIN_M).set_value(140)
    at.text_input(key=state.TRAIN_SCHEDULER).set_value("udp://nowhere").run()
    assert "Cannot run the fit there" in _texts(at, "error") and at.button(key=state.TRAIN_RUN).disabled
    at.radio(key=state.TRAIN_MODEL).set_value("dcf").run()  # a peer ignores the field: not blocked by it
    assert not at.button(key=state.TRAIN_RUN).disabled
    at.radio(key=state.TRAIN_MODEL).set_value("aff").run()
    at.text_input(key=state.TRAIN_SCHEDULER).set_value("local:2").run()
    assert not at.button(key=state.TRAIN_RUN).disabled
    at.button(key=state.TRAIN_RUN).click().run(timeout=300)
    assert not at.exception, at.exception
    new = at.session_state[state.MODELS].get("AFF M=140 seed 0")
    solver = new.force.record.solver
    assert 18 * 140 >= TASK_SET_SIDE and solver.task_sets == (0, 1), solver
    assert "LocalCluster" in solver.scheduler or "local" in solver.scheduler, solver.scheduler
    assert "PE sets 1, 2 were factored on" in _texts(at, "success")
    serial = pipeline.train_model(_traj(), model="aff", n_train=140, n_test=15, gamma=GAMMA, lam=LAM)
    assert np.array_equal(new.force.train_idx, serial.train_idx)
    # the predictions, not α: at λ = 1e-8 α is ~1e6 and carries the BLAS threads' rounding (workers run one)
    R = _traj().R[new.test_idx]
    expected = serial.predict_mean(R)
    assert np.abs(new.force.predict_mean(R) - expected).max() <= 1e-7 * np.abs(expected).max()
