"""The Sequential design page through Streamlit's AppTest: a tiny run on the sample, a cancelled run's rounds kept,
bad settings refused before the button, and an MD run of the emulator as the pool (labelled with GFN2-xTB).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from aff_app.ui import state
from aff_app.workflows.design import DesignSettings, run_design

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
DESIGN = "pages/design.py"

pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


@lru_cache(maxsize=None)
def _traj():
    from aff_app.io.files import load_trajectory

    return load_trajectory(REPO / "sample_data" / "uracil.npz")


def _open(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state[state.TRAJECTORY] = _traj()
    at.session_state[state.DEFAULT_SAMPLE_TRIED] = True
    for k, v in session.items():
        at.session_state[k] = v
    at.switch_page(DESIGN).run()
    assert not at.exception, at.exception
    return at


def _texts(at, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


def _tiny(at, n0=10, batch=10, budget=30, n_test=200) -> None:
    at.number_input(key=state.DESIGN_INITIAL).set_value(n0)
    at.number_input(key=state.DESIGN_BATCH).set_value(batch)
    at.number_input(key=state.DESIGN_BUDGET).set_value(budget)
    at.number_input(key=state.DESIGN_N_TEST).set_value(n_test).run()
    assert not at.exception, at.exception


def test_page_loads_and_a_tiny_run_shows_curves_trace_and_answer():
    at = _open()
    assert "file's own forces" in _texts(at, "caption") and "about 1 minute" in _texts(at, "caption")
    assert not at.button(key=state.DESIGN_RUN).disabled
    _tiny(at)
    at.button(key=state.DESIGN_RUN).click().run()
    assert not at.exception, at.exception
    assert not at.error, _texts(at, "error")
    stored = at.session_state[state.DESIGN_RESULT]
    result = stored["result"]
    assert stored["pool"] == _traj().fingerprint and result.finished and len(result.rows) == 6
    assert "random selection's M = 30 force MAE" in _texts(at, "info") + _texts(at, "success")
    specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert len(specs) == 2
    curve, trace = specs
    assert "(kcal/mol/Å)" in curve["layout"]["yaxis"]["title"]["text"] and curve["layout"]["xaxis"]["type"] == "log"
    assert "(kcal/mol)" in trace["layout"]["yaxis"]["title"]["text"]
    assert any(t.get("name") == "chosen by variance" for t in trace["data"])
    table = at.dataframe[-1].value
    assert list(table["M"]) == [10, 10, 20, 20, 30, 30]
    # the other strategy's frames on the trace
    at.radio(key=state.DESIGN_TRACE_STRATEGY).set_value("random").run()
    trace = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert any(t.get("name") == "chosen by random" for t in trace["data"])


def test_a_cancelled_run_keeps_its_finished_rounds(monkeypatch):
    """Cancel after the third round (the job's token, as the Cancel button sets it): the three finished rounds reach
    the session and the page says so; the library alone stops at the same place."""
    from aff_app.ui import design_sections as ds

    original = ds._design_task

    def cancelling(pool, settings):
        task = original(pool, settings)

        def wrapped(job):
            real_keep = job.keep

            def keep(outcome):
                real_keep(outcome)
                if len(outcome.result.rows) >= 3:
                    job.token.cancel()

            job.keep = keep
            return task(job)

        return wrapped

    monkeypatch.setattr(ds, "_design_task", cancelling)
    at = _open()
    _tiny(at)
    at.button(key=state.DESIGN_RUN).click().run()
    assert not at.exception, at.exception
    assert "Sequential design cancelled" in _texts(at, "warning")
    assert "the 3 rounds that finished are kept" in _texts(at, "warning")
    assert "stopped early" in _texts(at, "caption") and len(at.dataframe[-1].value) == 3
    assert len(at.get("plotly_chart")) == 2
    seen = []
    partial = run_design(_traj(), settings=DesignSettings(n_initial=10, batch=10, budget=30, n_test=200),
                         on_round=lambda r: seen.append(r), should_stop=lambda: len(seen) >= 3)
    assert partial.stopped_early and len(partial.rows) == 3
    stored = at.session_state[state.DESIGN_RESULT]["result"]
    assert [(r.strategy, r.M) for r in stored.rows] == [(r.strategy, r.M) for r in partial.rows]


def test_bad_settings_are_an_error_and_a_disabled_button():
    at = _open()
    at.number_input(key=state.DESIGN_N_TEST).set_value(2800).run()
    assert "Cannot run" in _texts(at, "error") and "exceed the 3000 frames of the pool" in _texts(at, "error")
    assert at.button(key=state.DESIGN_RUN).disabled
    at.number_input(key=state.DESIGN_N_TEST).set_value(200)
    at.multiselect(key=state.DESIGN_STRATEGIES).set_value([]).run()
    assert "choose at least one strategy" in _texts(at, "error") and at.button(key=state.DESIGN_RUN).disabled


def test_an_md_run_is_a_pool_labelled_with_xtb():
    traj = _traj()
    frames = np.arange(0, 600, 10)  # 60 frames, 20 fs apart
    run = SimpleNamespace(z=traj.z, positions=traj.R[frames], times_ps=frames * 0.002,
                          potential_energy=traj.E[frames] + 0.5, label="AFF MD 300 K")
    at = _open(**{state.MD_RUN: run})
    at.radio(key=state.DESIGN_POOL).set_value("md").run()
    assert not at.exception, at.exception
    assert "GFN2-xTB" in _texts(at, "caption")
    _tiny(at, n0=4, batch=3, budget=7, n_test=8)
    at.button(key=state.DESIGN_RUN).click().run()
    assert not at.exception, at.exception
    assert not at.error, _texts(at, "error")
    result = at.session_state[state.DESIGN_RESULT]["result"]
    assert result.label_source == "GFN2-xTB" and result.finished
    # only the test frames and the chosen ones were labelled
    assert result.n_labelled == np.unique(np.concatenate([result.test_idx, result.frames("variance"),
                                                          result.frames("random")])).size <= 8 + 4 + 3 + 3
    trace = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert trace["layout"]["xaxis"]["title"]["text"] == "time (ps)"
    assert "potential energy (emulator)" in trace["layout"]["yaxis"]["title"]["text"]


def test_an_md_run_without_energies_draws_the_chosen_frames_at_their_labels():
    traj = _traj()
    run = SimpleNamespace(z=traj.z, positions=traj.R[:40], times_ps=np.arange(40) * 0.002,
                          potential_energy=np.full(40, np.nan), label="DCF MD")  # a model without an energy
    at = _open(**{state.MD_RUN: run})
    at.radio(key=state.DESIGN_POOL).set_value("md").run()
    assert not at.exception, at.exception
    assert "no energies" in _texts(at, "caption")
