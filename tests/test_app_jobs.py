"""Fits as background jobs (issue 19) through Streamlit's AppTest: a fit outlives the page that started it,
identical requests from several sessions are computed once, a stored fit is reused at once, and failures
and cancellations are reported on the Train page.

Each test has its own workspace folder. The queue is the server's (one per process), as in the app.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from aff_app.ui import background as bg
from aff_app.ui import state
from aff_app.workflows import pipeline
from aff_app.workspace import Workspace

real_wait_here = bg.wait_here

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TRAIN, DATA = "pages/train.py", "pages/data.py"

pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AFF_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


@pytest.fixture
def counted_train(monkeypatch):
    """pipeline.train counting its calls; ``gate`` (an Event) holds every fit until the test sets it."""
    real = pipeline.train
    calls = []
    gate = threading.Event()

    def train(*args, **kwargs):
        calls.append(1)
        if not gate.wait(timeout=60):
            raise RuntimeError("test gate never opened")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train", train)
    return calls, gate


def _train_page(*, name: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()  # the Data page opens the benzene sample
    at.switch_page(TRAIN).run()
    at.radio(key=state.TRAIN_HYPER).set_value("fixed").run()
    at.number_input(key=state.TRAIN_M).set_value(15)
    at.number_input(key=state.TRAIN_N_TEST).set_value(10)
    at.number_input(key=state.TRAIN_GAMMA).set_value(4.0)
    at.number_input(key=state.TRAIN_LAM).set_value(1e-8)
    if name:
        at.text_input(key=state.TRAIN_NAME).set_value(name)
    return at.run()


def _texts(at, kind: str) -> str:
    return " | ".join(str(e.value) for e in getattr(at, kind))


def _fixed_aff_curve_form(at: AppTest, sizes: list[int]) -> AppTest:
    """Open the Compare page with an AFF learning curve at ``sizes``, 10 test frames, γ = 4 and λ = 1e-8 fixed."""
    at.switch_page("pages/compare.py").run()
    at.multiselect(key=state.CMP_MODELS).set_value(["aff"])
    at.multiselect(key=state.CMP_SIZES).set_value(sizes)
    at.number_input(key=state.CMP_N_TEST).set_value(10)
    at.radio(key=state.CMP_HYPER).set_value("fixed").run()
    at.number_input(key=state.CMP_GAMMA).set_value(4.0)
    return at.number_input(key=state.CMP_LAM).set_value(1e-8).run()


def _leave_the_page(monkeypatch):
    """The user clicks elsewhere right after Train: Streamlit stops the page's script at its next progress update
    (with the StopException it raises there), while the job goes on."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    def stopped(job, **kwargs):
        raise StopException()

    monkeypatch.setattr(bg, "wait_here", stopped)


def test_a_fit_goes_on_when_the_user_leaves_the_page(root, counted_train, monkeypatch):
    calls, gate = counted_train
    _leave_the_page(monkeypatch)
    at = _train_page(name="left behind")
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    (job,) = bg.get_queue().jobs_for(at.session_state[state.WS_SESSION])
    at.switch_page(DATA).run()  # another page while it runs
    assert job.active and not at.session_state[state.MODELS].names()
    gate.set()
    assert bg.get_queue().wait(job, timeout=60) and job.state == "done"
    at.switch_page(TRAIN).run()
    assert not at.exception, at.exception
    assert at.session_state[state.MODELS].names() == ["left behind"]
    assert "Trained **left behind**" in _texts(at, "success")
    stored = Workspace(root).session_models(at.session_state[state.WS_SESSION])
    assert [m.name for m in stored] == ["left behind"] and stored[0].cache_key == job.key
    assert len(calls) == 1


def test_identical_requests_are_computed_once_and_a_stored_fit_is_reused(root, counted_train, monkeypatch):
    calls, gate = counted_train
    _leave_the_page(monkeypatch)
    students = [_train_page() for _ in range(3)]
    for at in students:
        at.button(key=state.TRAIN_RUN).click().run()
        assert not at.exception, at.exception
    jobs = {id(j) for at in students for j in bg.get_queue().jobs_for(at.session_state[state.WS_SESSION])}
    assert len(jobs) == 1  # the second and third joined the first one's job
    gate.set()
    job = bg.get_queue().jobs_for(students[0].session_state[state.WS_SESSION])[0]
    assert bg.get_queue().wait(job, timeout=60) and job.state == "done"
    uids = set()
    for at in students:
        at.switch_page(TRAIN).run()
        (entry,) = list(at.session_state[state.MODELS])
        uids.add(entry.uid)
        assert entry.metrics["force_mae"] > 0
    assert len(uids) == 1 and len(calls) == 1
    # later, the same request: answered from the workspace at once, nothing computed
    late = _train_page()
    late.button(key=state.TRAIN_RUN).click().run()
    assert not late.exception, late.exception
    assert "Reused" in _texts(late, "success") and "nothing was computed" in _texts(late, "success")
    assert [e.uid for e in late.session_state[state.MODELS]] == list(uids) and len(calls) == 1
    # the same request again in a session that has the model: nothing added, nothing computed
    late.button(key=state.TRAIN_RUN).click().run()
    assert "in the session already" in _texts(late, "info") and len(late.session_state[state.MODELS]) == 1
    # another split is another fit, waited for in the page again
    monkeypatch.setattr(bg, "wait_here", real_wait_here)
    late.number_input(key=state.TRAIN_SEED).set_value(1).run()
    late.button(key=state.TRAIN_RUN).click().run()
    assert not late.exception, late.exception
    assert len(late.session_state[state.MODELS]) == 2 and len(calls) == 2


def test_a_failed_fit_is_reported_on_the_train_page(root, monkeypatch):
    from aff_app.gp.force import FactorizationError

    def refused(*args, **kwargs):
        raise FactorizationError("Cholesky of PE set 0 failed with λ = 1e-12: raise λ")

    monkeypatch.setattr(pipeline, "train", refused)
    _leave_the_page(monkeypatch)
    at = _train_page()
    at.button(key=state.TRAIN_RUN).click().run()
    (job,) = bg.get_queue().jobs_for(at.session_state[state.WS_SESSION])
    assert bg.get_queue().wait(job, timeout=30) and job.state == "failed"
    at.switch_page(TRAIN).run()
    assert not at.exception, at.exception
    assert "Training failed (AFF, M = 15)" in _texts(at, "error") and "raise λ" in _texts(at, "error")
    assert at.session_state[state.MODELS].names() == []


def test_a_fit_over_the_memory_budget_is_refused_before_it_is_queued(root, monkeypatch):
    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", "0.00001")
    at = _train_page()
    assert at.button(key=state.TRAIN_RUN).disabled  # the cost card refuses it before anything runs
    assert "Refused before training" in _texts(at, "error")


def test_a_fit_whose_model_cannot_be_stored_stays_in_the_session(root, monkeypatch):
    import os

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    at = _train_page(name="kept in memory")
    monkeypatch.setattr(os, "replace", full_disk)  # the disk fills up during the fit
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    assert at.session_state[state.MODELS].names() == ["kept in memory"]
    warnings = _texts(at, "warning")
    assert "could not be stored in the workspace" in warnings and "No space left on device" in warnings
    assert "Trained **kept in memory**" in _texts(at, "success")


def test_a_reload_while_a_learning_curve_runs_still_gets_its_curves(root, monkeypatch):
    from aff_app.workflows import learning

    real = learning.learning_curve
    gate = threading.Event()

    def held_curve(*args, **kwargs):
        if not gate.wait(timeout=60):
            raise RuntimeError("test gate never opened")
        return real(*args, **kwargs)

    monkeypatch.setattr(learning, "learning_curve", held_curve)
    _leave_the_page(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=120).run()
    key = at.session_state[state.WS_SESSION]
    _fixed_aff_curve_form(at, [25])
    at.button(key=state.CMP_RUN).click().run()
    (job,) = bg.get_queue().jobs_for(key, active_only=True)
    # the reload: a new Streamlit session on the same key while the job runs
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["s"] = key
    again.run()
    assert job.id in again.session_state[state.JOBS_WATCHED]
    gate.set()
    assert bg.get_queue().wait(job, timeout=60) and job.state == "done"
    again.switch_page("pages/compare.py").run()
    assert not again.exception, again.exception
    rows = again.session_state[state.CMP_RESULT]["rows"]
    assert [(r["M"], r["status"]) for r in rows] == [(25, "ok")]


def test_an_md_run_goes_on_when_the_user_leaves_the_page(root, monkeypatch):
    """The MD run is a job of the server too: the user switches page at once; the run finishes and its frames reach
    the MD page when the user comes back."""
    from aff_app.workflows import md
    from aff_app.workflows.registry import ModelRegistry

    real = md.run_model_md
    gate = threading.Event()

    def held_run(*args, **kwargs):
        if not gate.wait(timeout=60):
            raise RuntimeError("test gate never opened")
        return real(*args, **kwargs)

    monkeypatch.setattr(md, "run_model_md", held_run)
    _leave_the_page(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=120).run()  # the benzene sample
    traj = at.session_state[state.TRAJECTORY]
    trained = pipeline.train(traj, n_train=15, n_test=10, seed=0, settings=pipeline.TrainSettings(gamma=4.0, lam=1e-8))
    registry = ModelRegistry()
    registry.add(trained.force, energy=trained.energy, name="small", data_fingerprint=traj.fingerprint)
    at.session_state[state.MODELS] = registry
    at.switch_page("pages/md.py").run()
    at.number_input(key=state.MD_STEPS).set_value(40)
    at.number_input(key=state.MD_RECORD_EVERY).set_value(10).run()
    at.button(key=state.MD_RUN_BUTTON).click().run()
    assert not at.exception, at.exception
    (job,) = bg.get_queue().jobs_for(at.session_state[state.WS_SESSION], active_only=True)
    assert job.kind == "md"
    at.switch_page(DATA).run()
    # another tab of the session (app.py runs in full, sidebar included): the run is listed with its progress
    tab = AppTest.from_file(APP, default_timeout=120)
    tab.query_params["s"] = at.session_state[state.WS_SESSION]
    tab.run()
    sidebar = " ".join(str(getattr(e, "text", "") or getattr(e, "value", "")) for e in tab.sidebar.get("progress"))
    assert "MD: small, NVE, 40 steps" in sidebar, sidebar
    gate.set()
    assert bg.get_queue().wait(job, timeout=60) and job.state == "done"
    at.switch_page("pages/md.py").run()
    assert not at.exception, at.exception
    run = at.session_state[state.MD_RUN]
    assert run.stop_reason == "completed" and run.n_frames == 5
    assert "**small**: " in _texts(at, "success")


def test_a_server_restart_reports_the_interrupted_job_and_keeps_its_finished_points(root, monkeypatch):
    """A learning curve records its finished points in the workspace as it goes; after a restart (its record's
    server is a process that no longer exists) the reopened session is told, and gets those points back."""
    import sqlite3
    import socket

    from aff_app.workflows import learning

    real = learning.learning_curve
    gate = threading.Event()

    def held_after_first_point(*args, on_point=None, **kwargs):
        def point(rows):
            on_point(rows)
            if sum(r["status"] == "ok" for r in rows) == 1:
                gate.wait(timeout=60)  # the server "stops" here: one point finished, one to go

        return real(*args, on_point=point, **kwargs)

    monkeypatch.setattr(learning, "learning_curve", held_after_first_point)
    _leave_the_page(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=120).run()
    key = at.session_state[state.WS_SESSION]
    _fixed_aff_curve_form(at, [25, 50])
    at.button(key=state.CMP_RUN).click().run()
    (job,) = bg.get_queue().jobs_for(key, active_only=True)
    ws = Workspace(root)
    deadline = time.monotonic() + 60
    while not (ws.session_jobs(key) and ws.session_jobs(key)[0].partial) and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = ws.session_jobs(key)
    assert record.state == "running" and record.kind == "learning_curve" and '"status": "ok"' in record.partial
    # the restart, as the index sees it: the process that ran the job is gone
    with sqlite3.connect(ws.index_path) as con:
        con.execute("UPDATE jobs SET server = ? WHERE id = ?", (f"{socket.gethostname()}:{2**22 + 7}:0", job.id))
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["s"] = key
    again.run()
    assert not again.exception, again.exception
    warnings = _texts(again, "warning")
    assert "was stopped by a server restart before it finished" in warnings, warnings
    assert "its 1 finished point(s) of 2 are kept on the Compare page" in warnings
    rows = again.session_state[state.CMP_RESULT]["rows"]
    assert [(r["M"], r["status"]) for r in rows] == [(25, "ok"), (50, "interrupted")]
    assert ws.session_jobs(key)[0].state == "interrupted" and ws.session_jobs(key)[0].reported
    # told once: the next reload says nothing more
    third = AppTest.from_file(APP, default_timeout=120)
    third.query_params["s"] = key
    third.run()
    assert "server restart" not in _texts(third, "warning")
    gate.set()
    assert bg.get_queue().wait(job, timeout=60)


def test_learning_curve_points_run_on_a_dask_cluster_from_the_compare_page(root):
    """The Compare page's "Run the points on" field: a bad address is refused before the button; local:2 (a real
    two-worker LocalCluster, started for the job and stopped after it) gives the serial run's numbers."""
    pytest.importorskip("distributed")
    at = AppTest.from_file(APP, default_timeout=300).run()
    _fixed_aff_curve_form(at, [25])
    at.text_input(key=state.CMP_SCHEDULER).set_value("udp://nowhere").run()
    assert "Cannot run the points there" in _texts(at, "error") and at.button(key=state.CMP_RUN).disabled
    at.text_input(key=state.CMP_SCHEDULER).set_value("serial").run()
    at.button(key=state.CMP_RUN).click().run()
    assert not at.exception, at.exception
    serial = at.session_state[state.CMP_RESULT]["rows"]
    at.text_input(key=state.CMP_SCHEDULER).set_value("local:2").run()
    at.button(key=state.CMP_RUN).click().run()
    assert not at.exception, at.exception
    on_dask = at.session_state[state.CMP_RESULT]["rows"]
    assert [(r["M"], r["status"]) for r in on_dask] == [(25, "ok")]
    assert on_dask[0]["force_mae"] == pytest.approx(serial[0]["force_mae"], rel=1e-9)
    (job,) = [j for j in bg.get_queue().jobs_for(at.session_state[state.WS_SESSION]) if "on " in j.label]
    assert "Dask" in job.label or "local" in job.label
