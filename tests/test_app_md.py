"""The MD page (issue 17, item 1) through Streamlit's AppTest: a model of the session runs NVE from a held-out
frame of uracil with its force sd recorded, against GFN2-xTB from the same start; a threshold that stops at once
keeps the frames and says why; a model without energy draws no energy traces and says so; no model → Train."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from aff_app.ui import state
from aff_app.workflows import pipeline
from aff_app.workflows.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
MD_PAGE = "pages/md.py"

pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


@lru_cache(maxsize=None)
def _traj():
    from aff_app.io.files import load_trajectory

    return load_trajectory(REPO / "sample_data" / "uracil.npz")


@lru_cache(maxsize=None)
def _aff():
    # M = 80 ≥ 60: AFF's integrated energy (with −∇Ê), γ and λ fixed (no search: fast)
    return pipeline.train(_traj(), n_train=80, n_test=40, seed=1, settings=pipeline.TrainSettings(gamma=4.0, lam=1e-8))


def _registry(*, energy: bool = True) -> ModelRegistry:
    reg = ModelRegistry()
    reg.add(_aff().force, energy=_aff().energy if energy else None, name="small AFF" if energy else "AFF no energy",
            data_fingerprint=_traj().fingerprint)
    return reg


def _open(registry: ModelRegistry | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state[state.TRAJECTORY] = _traj()
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    if registry is not None:
        at.session_state[state.MODELS] = registry
    at.switch_page(MD_PAGE).run()
    assert not at.exception, at.exception
    return at


def _texts(at, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


def _specs(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _axis_titles(spec: dict) -> list[str]:
    return [v["title"]["text"] for k, v in spec["layout"].items() if k.startswith(("xaxis", "yaxis")) and "title" in v]


def _short_run(at, steps: int = 200, every: int = 5) -> None:
    at.number_input(key=state.MD_STEPS).set_value(steps)
    at.number_input(key=state.MD_RECORD_EVERY).set_value(every).run()


def test_no_model_points_to_the_train_page():
    at = _open(ModelRegistry())
    assert "No trained model for C4H4N2O2" in _texts(at, "info")
    assert not at.button  # no Run button without a model


def test_md_with_the_xtb_reference_stores_the_run_and_draws_everything():
    at = _open(_registry())
    # the default start is a frame the model did not train on
    assert at.number_input(key=state.MD_FRAME).value in _aff().force.record.test_idx
    assert "did not train on" in _texts(at, "caption")
    assert at.checkbox(key=state.MD_CONSERVATIVE) is not None  # AFF's integrated energy has −∇Ê
    _short_run(at)
    at.checkbox(key=state.MD_WITH_REFERENCE).check().run()
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    run = at.session_state[state.MD_RUN]
    assert run.stop_reason == "completed" and run.n_frames == 41 and run.force_sd is not None
    ref = at.session_state[state.MD_REFERENCE]
    assert ref.label == "GFN2-xTB" and ref.n_frames == 41 and ref.force_sd is None
    np.testing.assert_allclose(ref.positions[0], run.positions[0])  # the same start
    assert at.session_state[state.MD_RESULT]["fingerprint"] == _traj().fingerprint
    assert "completed 200 steps" in _texts(at, "success")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Frames kept"] == "41" and metrics["Time per step"].endswith(" ms")
    assert metrics["Drift (kcal/mol/ps)"] != "—"  # NVE with an energy
    assert "not the gradient of any energy" in _texts(at, "caption")
    traces, bonds, energy = _specs(at)
    assert "time (ps)" in _axis_titles(traces) and "temperature (K)" in _axis_titles(traces)
    assert {t["name"] for t in traces["data"]} >= {"small AFF: E_pot", "GFN2-xTB: E_total"}
    assert "GFN2-xTB: no force sd" in traces["layout"]["title"]["subtitle"]["text"]
    assert "C–H length (Å)" in _axis_titles(bonds) and any("kcal/mol" in t for t in _axis_titles(energy))
    assert list(at.dataframe[-1].value["bond"]) == ["C–C", "C–H", "C–N", "C–O", "H–N"]
    html = at.get("iframe")[-1].proto.srcdoc
    assert "addModelsAsFrames" in html and "cdn" not in html.lower().split("</script>", 1)[1]
    downloads = [d for d in at.get("download_button")]
    assert len(downloads) == 2


def test_a_threshold_below_the_start_sd_stops_at_once_and_keeps_the_frame():
    at = _open(_registry())
    _short_run(at)
    at.checkbox(key=state.MD_USE_THRESHOLD).check().run()
    at.number_input(key=state.MD_SD_THRESHOLD).set_value(0.001).run()
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    run = at.session_state[state.MD_RUN]
    assert run.stop_reason == "sd_threshold" and run.n_frames == 1
    warning = _texts(at, "warning")
    assert "above the threshold 0.001" in warning and "extrapolating" in warning
    traces = _specs(at)[0]
    assert any(s.get("text", "").startswith("stop threshold 0.001") for s in traces["layout"]["annotations"])
    assert at.get("download_button")  # the frame is there to download


def test_a_model_without_energy_has_no_energy_traces_and_says_why():
    at = _open(_registry(energy=False))
    assert not [c for c in at.checkbox if c.key == state.MD_CONSERVATIVE]  # no −∇Ê without an energy model
    _short_run(at, steps=40, every=10)
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    traces = _specs(at)[0]
    assert not any("E − E_total" in t for t in _axis_titles(traces))
    assert "no energy model, so no energy traces" in traces["layout"]["title"]["subtitle"]["text"]
    assert {m.label: m.value for m in at.metric}["Drift (kcal/mol/ps)"] == "—"
    assert "no energy model here" in _texts(at, "caption")


def test_a_time_step_too_large_ends_with_the_message_and_the_frames(monkeypatch):
    at = _open(_registry())
    at.number_input(key=state.MD_TIMESTEP).set_value(5.0)
    at.number_input(key=state.MD_TEMPERATURE).set_value(3000.0)
    _short_run(at, steps=2000, every=5)
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    run = at.session_state[state.MD_RUN]
    assert run.stop_reason == "unstable" and run.n_frames >= 1
    assert "frames before it are kept" in _texts(at, "warning")


def _head(run, k: int):
    """The first ``k`` frames of ``run``, as the workflow's per-frame snapshot would give them."""
    import dataclasses

    cut = {f: getattr(run, f)[:k] for f in ("steps", "times_ps", "positions", "forces", "potential_energy",
                                            "kinetic_energy", "temperature_K")}
    return dataclasses.replace(run, **cut, force_sd=None if run.force_sd is None else run.force_sd[:k],
                               stop_reason="running", message="")


def _cancel_after(monkeypatch, n_frames: int, which: str = "model"):
    """Wrap the MD job so that it cancels itself once the ``which`` run has recorded ``n_frames`` frames, as a click on
    Cancel would (the job's token); returns the list of frame counts the job kept, in order."""
    from aff_app.ui import md_sections as ms

    kept, original = [], ms._md_task

    def cancelling(form, base):
        task = original(form, base)

        def wrapped(job):
            real_keep = job.keep

            def keep(partial):
                real_keep(partial)
                run = partial.snapshot()
                kept.append((partial.which, run.n_frames))
                if partial.which == which and run.stop_reason == "running" and run.n_frames >= n_frames:
                    job.token.cancel()

            job.keep = keep
            return task(job)

        return wrapped

    monkeypatch.setattr(ms, "_md_task", cancelling)
    return kept


def test_the_job_keeps_every_frame_and_the_page_draws_live_traces(monkeypatch):
    """The workflow hands each recorded frame to the job (``on_frame`` → ``job.keep``); the page waiting for the job
    redraws the traces from what the job has, and the finished run reaches the session."""
    from aff_app.figures import md as figmd
    from aff_app.ui import md_sections as ms

    drawn = []
    monkeypatch.setattr(ms, "LIVE_EVERY_S", 0.0)
    original = figmd.md_traces

    def counting(runs, **kw):
        if kw.get("title") == "Running…":
            drawn.append(runs[-1].n_frames)
        return original(runs, **kw)

    monkeypatch.setattr(figmd, "md_traces", counting)
    kept = _cancel_after(monkeypatch, n_frames=10**6)  # never cancels: only records what the job keeps
    at = _open(_registry())
    _short_run(at, steps=50, every=10)
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    assert [n for which, n in kept] == [1, 2, 3, 4, 5, 6, 6]  # one per recorded frame, then the finished run
    assert drawn and drawn == sorted(drawn) and drawn[-1] == 6
    assert at.session_state[state.MD_RUN].n_frames == 6 and at.session_state[state.MD_RUN].stop_reason == "completed"


def test_a_cancelled_run_keeps_the_frames_it_had_recorded(monkeypatch):
    """Cancel mid-run (the job's token, as the Cancel button sets it): the frames recorded so far reach the session
    as a stopped run, and the page says so."""
    _cancel_after(monkeypatch, n_frames=3)
    at = _open(_registry())
    _short_run(at, steps=100, every=10)
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    run = at.session_state[state.MD_RUN]
    assert run.stop_reason == "cancelled" and run.n_frames == 3
    assert "cancelled at step 20 of 100; the 3 frames recorded up to then are kept" in _texts(at, "warning")
    np.testing.assert_allclose(run.positions[0], _traj().R[at.session_state[state.MD_FRAME]])


def test_a_cancelled_reference_keeps_the_whole_model_run(monkeypatch):
    """Cancelled while GFN2-xTB runs: the finished model run is kept whole, beside the reference's frames so far."""
    pytest.importorskip("tblite")
    _cancel_after(monkeypatch, n_frames=2, which="reference")
    at = _open(_registry())
    _short_run(at, steps=30, every=10)
    at.checkbox(key=state.MD_WITH_REFERENCE).check().run()
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    result = at.session_state[state.MD_RESULT]
    assert result["run"].stop_reason == "completed" and result["run"].n_frames == 4
    assert result["reference"].stop_reason == "cancelled" and result["reference"].n_frames == 2
    assert "The GFN2-xTB reference was cancelled" in _texts(at, "warning")


def test_nvt_from_the_model_s_first_training_frame_reports_no_drift():
    at = _open(_registry())
    at.radio(key=state.MD_START).set_value("model").run()
    at.radio(key=state.MD_ENSEMBLE).set_value("nvt").run()
    at.number_input(key=state.MD_FRICTION).set_value(0.02)
    _short_run(at, steps=60, every=10)
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    run = at.session_state[state.MD_RUN]
    assert run.settings.ensemble == "nvt" and run.settings.friction_per_fs == 0.02
    np.testing.assert_allclose(run.positions[0], _aff().force.R_train[0])
    assert at.session_state[state.MD_RESULT]["start"] == "the model's first training frame"
    assert {m.label: m.value for m in at.metric}["Drift (kcal/mol/ps)"] == "—"
    assert "Langevin thermostat exchanges energy" in _texts(at, "caption")
