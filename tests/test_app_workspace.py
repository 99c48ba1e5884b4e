"""The session kept in the workspace (issue 19) through Streamlit's AppTest: the URL key, a reload, the
write-through of the session's models, damaged files, and the Workspace page.

Each test opens ``app.py`` (the navigation, where the session is restored) on its own workspace folder.
A "reload" is a new AppTest (an empty ``st.session_state``) with the first one's ``?s=`` key. (After its
first run AppTest reruns only the page script, not ``app.py``; the browser tests cover the every-run sync.)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from aff_app.io.files import load_trajectory
from aff_app.ui import state
from aff_app.ui import workspace_sections as wsec
from aff_app.workflows import pipeline
from aff_app.workspace import Workspace
from test_app_jobs import _train_page  # the Train page on the sample, M = 15, γ and λ by hand

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
TRAIN, WORKSPACE = "pages/train.py", "pages/workspace.py"
SETTINGS = pipeline.TrainSettings(gamma=4.0, lam=1e-8, energy=False)

pytestmark = pytest.mark.usefixtures("fresh_streamlit_cache")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AFF_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


@lru_cache(maxsize=None)
def _benzene():
    return load_trajectory(REPO / "sample_data" / "benzene.npz")


@lru_cache(maxsize=None)
def _trained(seed: int = 0):
    return pipeline.train(_benzene(), n_train=15, seed=seed, settings=SETTINGS)


def _open(key: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if key is not None:
        at.query_params["s"] = key
    return at.run()


def _texts(at, kind: str) -> str:
    return " | ".join(str(e.value) for e in getattr(at, kind))


def _store_model(root: Path, key: str, name: str, seed: int = 0, metrics=None) -> str:
    """What a fit finished in the background does: store the model and attach it to the session."""
    ws = Workspace(root)
    entry = ws.put_model(_trained(seed), name=name, data_key=_benzene().fingerprint, metrics=metrics)
    ws.attach(key, model_id=entry.id)
    return entry.id


def test_a_reload_with_the_key_restores_the_data_and_the_models(root):
    at = _open()
    assert not at.exception, at.exception
    key = at.session_state[state.WS_SESSION]
    assert at.query_params["s"] == key and len(key) >= 16
    assert at.session_state[state.TRAJECTORY].fingerprint == _benzene().fingerprint
    # a fit finished in the background (the browser test sees it arrive without a reload; AppTest reruns
    # only the page script after its first run, not app.py, so here the reload picks it up)
    model_id = _store_model(root, key, "bg fit", metrics={"force_mae": 0.3, "pci": 0.94})
    # the reload: an empty Streamlit session that only has the address
    again = _open(key)
    assert not again.exception, again.exception
    assert again.session_state[state.WS_SESSION] == key
    assert again.session_state[state.TRAJECTORY].fingerprint == _benzene().fingerprint
    entry = again.session_state[state.MODELS].get("bg fit")
    assert entry.uid == model_id and entry.metrics["force_mae"] == 0.3 and entry.metrics["pci"] == 0.94
    # a page deep-linked with the key has its data too (it said "No trajectory loaded" before)
    again.switch_page(TRAIN).run()
    assert "No trajectory loaded" not in _texts(again, "info")


def test_models_trained_renamed_and_removed_in_the_session_are_written_through(root):
    at = _train_page()
    key = at.session_state[state.WS_SESSION]
    at.button(key=state.TRAIN_RUN).click().run()
    assert not at.exception, at.exception
    ws = Workspace(root)
    (stored,) = ws.session_models(key)
    entry = at.session_state[state.MODELS].get(stored.name)
    assert entry.uid == stored.id and stored.metrics["force_mae"] == pytest.approx(entry.metrics["force_mae"])
    at.text_input(key=state.TRAIN_RENAME_TEXT).set_value("benzene small").run()
    at.button(key=state.TRAIN_RENAME).click().run()
    assert [m.name for m in ws.session_models(key)] == ["benzene small"]
    at.button(key=state.TRAIN_REMOVE).click().run()
    assert ws.session_models(key) == [] and [m.name for m in ws.list_models()] == ["benzene small"]
    # removed from the session: a reload does not bring it back
    assert _open(key).session_state[state.MODELS].names() == []


@pytest.mark.parametrize("key, message", [("not a key!", "malformed session key"),
                                          ("A" * 22, "not in the workspace")])
def test_a_bad_or_unknown_key_starts_a_new_session_and_says_so(root, key, message):
    at = _open(key)
    assert not at.exception, at.exception
    assert message in _texts(at, "warning")
    new = at.session_state[state.WS_SESSION]
    assert new != key and at.query_params["s"] == new


def test_a_damaged_model_file_is_reported_and_the_rest_restored(root):
    at = _open()
    key = at.session_state[state.WS_SESSION]
    bad = _store_model(root, key, "damaged", seed=0)
    _store_model(root, key, "fine", seed=1)
    path = Workspace(root).model_path(bad)
    path.write_bytes(path.read_bytes()[:-100])  # truncated on disk
    again = _open(key)
    assert not again.exception, again.exception
    assert "Model 'damaged' was not restored" in _texts(again, "error")
    assert again.session_state[state.MODELS].names() == ["fine"]
    assert again.session_state[state.TRAJECTORY].fingerprint == _benzene().fingerprint
    again.run()  # reported once, not retried on every run
    assert "damaged" not in _texts(again, "error")
    again.switch_page(WORKSPACE).run()
    assert "problem(s) in the workspace" in _texts(again, "warning")


def test_an_unusable_workspace_folder_keeps_the_app_working(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AFF_WORKSPACE", str(blocker / "ws"))
    at = _open()
    assert not at.exception, at.exception
    assert at.session_state[state.TRAJECTORY].name  # the sample still loads
    assert "cannot be used" in at.session_state[state.WS_UNAVAILABLE]
    at.switch_page(WORKSPACE).run()
    assert "cannot be used" in _texts(at, "error")


def test_the_workspace_page_lists_adds_renames_deletes_and_starts_fresh(root):
    at = _open()
    key = at.session_state[state.WS_SESSION]
    other = Workspace(root).new_session()
    shared = _store_model(root, other, "someone else's")  # another session's model
    at.switch_page(WORKSPACE).run()
    assert not at.exception, at.exception
    assert key in _texts(at, "markdown")
    assert "1 data set(s) and 1 model(s) stored" in _texts(at, "success")
    at.selectbox(key=wsec.MODEL_PICK).set_value(shared).run()
    at.button(key=wsec.MODEL_ADD).click().run()
    assert at.session_state[state.MODELS].names() == ["someone else's"]
    at.text_input(key=wsec.MODEL_NAME).set_value("shared fit").run()
    at.button(key=wsec.MODEL_RENAME).click().run()
    assert at.session_state[state.MODELS].names() == ["shared fit"]
    assert [m.name for m in Workspace(root).list_models()] == ["shared fit"]
    # data used by a stored model is not deleted
    at.button(key=wsec.DATA_DELETE).click().run()
    assert "Not deleted" in _texts(at, "error") and Workspace(root).list_data()
    at.button(key=wsec.MODEL_DELETE).click().run()
    assert at.session_state[state.MODELS].names() == [] and Workspace(root).list_models() == []
    at.button(key=wsec.NEW_SESSION).click().run()
    assert not at.exception, at.exception
    fresh = at.session_state[state.WS_SESSION]
    assert fresh != key and at.query_params["s"] == fresh
    assert state.MODELS not in at.session_state and state.TRAJECTORY not in at.session_state  # nothing carried over
    assert _open(key).session_state[state.WS_SESSION] == key  # the old session stays reachable


def test_a_session_idle_for_longer_than_aff_session_days_is_forgotten_at_server_start(root, monkeypatch):
    import sqlite3
    import time

    ws = Workspace(root)
    idle, recent = ws.new_session(), ws.new_session()
    with sqlite3.connect(ws.index_path) as con:
        con.execute("UPDATE sessions SET updated = ? WHERE key = ?", (time.time() - 10 * 86400, idle))
    monkeypatch.setenv("AFF_SESSION_DAYS", "7")
    at = _open(idle)
    assert "The session of this address is not in the workspace" in _texts(at, "warning")
    assert at.session_state[state.WS_SESSION] != idle
    again = _open(recent)
    assert again.session_state[state.WS_SESSION] == recent and not _texts(again, "warning")
