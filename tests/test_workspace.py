"""The workspace library (issue 19): data, models, sessions and the fit cache on disk, with a real SQLite index."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from aff_app.errors import AFFError
from aff_app.io.files import load_trajectory
from aff_app.io.trajectory import Trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.pipeline import TrainSettings
from aff_app.workspace import JobRecord, Workspace, WorkspaceError, WorkspaceFileError, default_root, fit_key
from aff_app.workspace import store as store_module

REPO = Path(__file__).resolve().parents[1]
SETTINGS = TrainSettings(gamma=4.5, lam=1e-8, energy=False)


@pytest.fixture(scope="module")
def traj() -> Trajectory:
    return load_trajectory(REPO / "sample_data" / "uracil.npz", frames=":200")


@pytest.fixture(scope="module")
def trained(traj):
    return pipeline.train(traj, n_train=20, seed=0, settings=SETTINGS)


@pytest.fixture(scope="module")
def trained_b(traj):
    return pipeline.train(traj, n_train=20, seed=1, settings=SETTINGS)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_layout_and_default_root(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "w")
    assert (ws.root / "data").is_dir() and (ws.root / "models").is_dir() and ws.index_path.is_file()
    import sqlite3

    with sqlite3.connect(ws.index_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.setenv("AFF_WORKSPACE", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"
    monkeypatch.delenv("AFF_WORKSPACE")
    assert default_root() == Path.home() / ".aff_app" / "workspace"
    assert issubclass(WorkspaceFileError, WorkspaceError) and issubclass(WorkspaceError, (AFFError, ValueError))


def test_data_round_trip_is_content_addressed_and_idempotent(ws, traj):
    entry = ws.put_data(traj)
    assert entry.key == traj.fingerprint and ws.data_path(entry.key).is_file()
    back = ws.get_data(entry.key)
    assert back.fingerprint == traj.fingerprint
    for a, b in ((back.z, traj.z), (back.R, traj.R), (back.E, traj.E), (back.F, traj.F)):
        np.testing.assert_array_equal(a, b)
    assert back.name == traj.name and back.provenance.source == traj.provenance.source
    again = ws.put_data(traj)
    assert again == entry
    assert len(list(ws.data_dir.iterdir())) == 1 and ws.list_data() == [entry]


def test_unlabelled_data_is_stored_too(ws, traj):
    view = Trajectory(z=traj.z, R=traj.R[:5], name="view")
    back = ws.get_data(ws.put_data(view).key)
    assert back.E is None and back.F is None and back.fingerprint == view.fingerprint


def test_data_file_replaced_by_other_arrays_is_refused(ws, traj):
    key = ws.put_data(traj).key
    other = traj.subset(slice(0, 199))
    ws.put_data(other)
    os.replace(ws.data_path(other.fingerprint), ws.data_path(key))  # another (valid) npz under the key's name
    with pytest.raises(WorkspaceFileError, match=key[:8]):
        ws.get_data(key)
    assert [p.entry for p in ws.problems()] == [key, other.fingerprint]


def test_model_round_trip_predicts_the_same_forces(ws, traj, trained):
    key = ws.put_data(traj).key
    entry = ws.put_model(trained, name="AFF M=20", data_key=key)
    assert (entry.mode, entry.n_train, entry.has_energy, entry.data_key) == ("aff", 20, False, key)
    back = ws.get_model(entry.id)
    R = traj.R[150:155]
    np.testing.assert_allclose(back.force.predict(R).mean, trained.force.predict(R).mean, rtol=1e-12)
    assert ws.model_path(entry.id) == ws.models_dir / f"{entry.id}.npz"
    assert ws.list_models(key) == [entry] and ws.list_models() == [entry]


def test_rename_and_delete(ws, traj, trained, trained_b):
    key = ws.put_data(traj).key
    a = ws.put_model(trained, name="a", data_key=key)
    b = ws.put_model(trained_b, name="a", data_key=key)
    assert b.name == "a (2)"  # a clash on put gets a suffix
    with pytest.raises(WorkspaceError, match="exists already"):
        ws.put_model(trained_b, name="a", data_key=key, unique=False)
    with pytest.raises(WorkspaceError, match="exists already"):
        ws.rename_model(b.id, "  a ")
    with pytest.raises(WorkspaceError, match="empty"):
        ws.rename_model(b.id, "   ")
    with pytest.raises(WorkspaceError, match="at most 80"):
        ws.rename_model(b.id, "x" * 81)
    assert ws.rename_model(b.id, "second  model").name == "second model"
    session = ws.new_session()
    ws.attach(session, data_key=key, model_id=a.id)
    ws.delete_model(a.id)
    assert not (ws.models_dir / f"{a.id}.npz").exists()
    assert [m.id for m in ws.list_models()] == [b.id]
    assert ws.session_state(session).model_ids == ()
    with pytest.raises(WorkspaceError, match="deleted"):
        ws.get_model(a.id)
    with pytest.raises(WorkspaceError, match="delete them first"):
        ws.delete_data(key)
    assert len(list(ws.models_dir.iterdir())) == 1  # the refused put left no file behind


def test_a_restarted_server_sees_everything_and_restores_the_session(tmp_path, traj, trained):
    first = Workspace(tmp_path / "ws")
    key = first.put_data(traj).key
    model = first.put_model(trained, name="m", data_key=key)
    session = first.new_session()
    assert len(session) == 22 and first.session_exists(session)
    first.attach(session, data_key=key)
    first.attach(session, model_id=model.id)
    first.attach(session, model_id=model.id)  # kept once
    del first
    second = Workspace(tmp_path / "ws")
    state = second.session_state(session)
    assert (state.data_key, state.model_ids) == (key, (model.id,))
    assert second.get_data(state.data_key).fingerprint == traj.fingerprint
    assert second.get_model(state.model_ids[0]).force.n_train == 20
    assert second.detach_model(session, model.id).model_ids == ()
    second.forget_session(session)
    assert not second.session_exists(session)
    with pytest.raises(WorkspaceError, match="start a new session"):
        second.session_state(session)
    assert second.new_session() != session


@pytest.mark.parametrize("bad", ["", "short", "x' OR '1'='1'; DROP TABLE sessions; --", "../../etc/passwd0000",
                                 "a" * 65, "ключ" * 6, None, 42])
def test_malformed_session_key_is_rejected(ws, bad):
    with pytest.raises(WorkspaceError, match="not a valid session key"):
        ws.session_state(bad)
    with pytest.raises(WorkspaceError):
        ws.session_exists(bad)
    assert ws.new_session()  # the tables survived


def test_malformed_ids_never_become_paths(ws):
    with pytest.raises(WorkspaceError, match="not a valid model id"):
        ws.get_model("../index.sqlite3")
    with pytest.raises(WorkspaceError, match="not a valid data key"):
        ws.get_data("../../x")


def test_fit_cache_hits_identical_requests_and_misses_changes(ws, traj, trained):
    fp = traj.fingerprint
    key = fit_key(fp, SETTINGS, 20, 0)
    assert key == fit_key(fp, TrainSettings(gamma=4.5, lam=1e-8, energy=False, keep_factors=False), 20, 0)
    assert key == fit_key(fp, TrainSettings(gamma=4.5, lam=1e-8, energy=False, budget_bytes=10**9), 20, 0)
    misses = {
        fit_key(fp, TrainSettings(gamma=4.0, lam=1e-8, energy=False), 20, 0),
        fit_key(fp, SETTINGS, 20, 1),
        fit_key(fp, SETTINGS, 21, 0),
        fit_key(traj.subset(slice(0, 199)).fingerprint, SETTINGS, 20, 0),
        fit_key(fp, SETTINGS, 20, 0, extra={"n_test": 50}),
    }
    assert key not in misses and len(misses) == 5
    data_key = ws.put_data(traj).key
    assert ws.cached_model(key) is None
    entry = ws.put_model(trained, name="cached", data_key=data_key, cache_key=key)
    other_session = Workspace(ws.root)  # any session, any process
    assert other_session.cached_model(key) == entry
    assert other_session.cached_model(fit_key(fp, SETTINGS, 20, 1)) is None


def test_fit_key_follows_the_code_version(traj, monkeypatch):
    import aff_app

    before = fit_key(traj.fingerprint, SETTINGS, 20, 0)
    monkeypatch.setattr(aff_app, "__version__", "99.0.0")
    assert fit_key(traj.fingerprint, SETTINGS, 20, 0) != before


def test_a_damaged_cached_model_is_not_served(ws, traj, trained):
    key = fit_key(traj.fingerprint, SETTINGS, 20, 0)
    entry = ws.put_model(trained, name="c", data_key=ws.put_data(traj).key, cache_key=key)
    path = ws.models_dir / f"{entry.id}.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(raw))
    assert ws.cached_model(key) is None
    with pytest.raises(WorkspaceFileError, match="changed since it was written"):
        ws.get_model(entry.id)
    assert [p.kind for p in ws.scan(deep=True).problems] == ["corrupt"]


def test_a_failed_rename_leaves_no_partial_file_and_the_index_unchanged(ws, traj, trained, monkeypatch):
    key = ws.put_data(traj).key

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    # a storage failure is the user's to fix (free space, another folder), reported as such, not as a bug
    with pytest.raises(WorkspaceFileError, match="No space left on device.*disk may be full"):
        ws.put_model(trained, name="m", data_key=key)
    with pytest.raises(WorkspaceFileError, match="No space"):
        ws.put_data(traj.subset(slice(0, 100)))
    monkeypatch.undo()
    assert ws.list_models() == [] and len(ws.list_data()) == 1
    assert list(ws.models_dir.iterdir()) == [] and len(list(ws.data_dir.iterdir())) == 1
    assert ws.scan().ok


def test_a_locked_or_broken_index_is_a_workspace_error(ws, traj, monkeypatch):
    import sqlite3

    real = sqlite3.connect

    class Locked:
        def __init__(self, *args, **kwargs):
            self.con = real(*args, **kwargs)

        def execute(self, sql, *args):
            if sql.startswith("BEGIN"):
                raise sqlite3.OperationalError("database is locked")
            return self.con.execute(sql, *args)

        def close(self):
            self.con.close()

    monkeypatch.setattr(sqlite3, "connect", Locked)
    with pytest.raises(WorkspaceFileError, match="database is locked"):
        ws.new_session()


def test_a_leftover_temporary_file_is_ignored_and_named(ws, traj, trained):
    key = ws.put_data(traj).key
    (ws.models_dir / ".tmp-crashed.part").write_bytes(b"PK\x03\x04 half a zip")
    entry = ws.put_model(trained, name="m", data_key=key)
    assert ws.list_models() == [entry]
    report = ws.scan()
    assert [p.kind for p in report.problems] == ["temporary"] and "interrupted write" in report.problems[0].message


def test_a_truncated_model_is_reported_and_the_others_still_work(ws, traj, trained, trained_b):
    key = ws.put_data(traj).key
    bad = ws.put_model(trained, name="bad", data_key=key)
    good = ws.put_model(trained_b, name="good", data_key=key)
    path = ws.models_dir / f"{bad.id}.npz"
    path.write_bytes(path.read_bytes()[:100])
    assert ws.list_models() == [good]
    (problem,) = ws.problems()
    assert problem.kind == "corrupt" and problem.entry == bad.id
    assert "'bad'" in problem.message and "100 bytes" in problem.message and "damaged" in problem.message
    with pytest.raises(WorkspaceFileError, match="damaged"):
        ws.get_model(bad.id)
    with pytest.raises(WorkspaceFileError):
        ws.model_path(bad.id)
    assert ws.get_model(good.id).force.n_train == 20
    report = ws.scan()
    assert report.n_models == 1 and report.of_kind("corrupt") == (problem,)
    path.unlink()
    assert ws.problems()[0].kind == "missing"
    ws.delete_model(bad.id)
    assert ws.scan().ok


def test_a_foreign_file_is_reported_and_never_loaded(ws, traj, trained, monkeypatch):
    key = ws.put_data(traj).key
    entry = ws.put_model(trained, name="m", data_key=key)
    foreign = ws.models_dir / ("ab" * 16 + ".npz")
    pipeline.save(trained, foreign)  # even a valid model file: it has no row
    (ws.data_dir / "notes.txt").write_text("hello")
    loads = []
    monkeypatch.setattr(pipeline, "load", lambda *a, **k: loads.append(a))
    report = ws.scan(deep=True)
    assert sorted(p.path.name for p in report.of_kind("foreign")) == [foreign.name, "notes.txt"]
    assert all("never loaded" in p.message for p in report.problems)
    assert loads == [] and ws.list_models() == [entry]
    with pytest.raises(WorkspaceError, match="no stored model"):
        ws.get_model("ab" * 16)


class _Flag:
    """Unpickling this would set ``tripped``: the test proves it never happens."""

    tripped = False

    def __setstate__(self, state):
        _Flag.tripped = True


def test_a_pickle_containing_npz_is_refused(ws, traj, trained, tmp_path):
    import io

    buf = io.BytesIO()
    np.savez(buf, format=np.array("aff_app.force_model/1"), payload=np.array([_Flag()], dtype=object))
    with pytest.raises(WorkspaceFileError, match="pickle"):
        ws.import_model(buf.getvalue(), name="upload")
    # swapped in under a stored model's name: refused by its checksum before any reader runs
    entry = ws.put_model(trained, name="m", data_key=ws.put_data(traj).key)
    (ws.models_dir / f"{entry.id}.npz").write_bytes(buf.getvalue())
    with pytest.raises(WorkspaceFileError):
        ws.get_model(entry.id)
    assert not _Flag.tripped and ws.list_models() == []
    # a genuine model file is accepted through the same door
    pipeline.save(trained, tmp_path / "m.npz")
    good = ws.import_model(tmp_path / "m.npz", name="uploaded")
    assert ws.get_model(good.id).force.n_train == 20 and good.data_key is None


def test_two_threads_putting_models_both_land(ws, traj, trained, trained_b):
    key = ws.put_data(traj).key
    errors, ids = [], []
    barrier = threading.Barrier(4)

    def worker(i, model):
        try:
            barrier.wait()
            for j in range(3):
                ids.append(ws.put_model(model, name=f"t{i}-{j}", data_key=key).id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, m)) for i, m in enumerate((trained, trained_b) * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(m.id for m in ws.list_models(key)) == sorted(ids) and len(ids) == 12
    assert ws.scan(deep=True).ok


def test_an_index_that_is_not_sqlite_is_reported(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "index.sqlite3").write_bytes(b"this is not a database" * 10)
    with pytest.raises(WorkspaceFileError, match="not a usable workspace index"):
        Workspace(root)
    assert store_module.SCHEMA_VERSION == 3


def test_metrics_are_stored_with_the_model_and_updated_later(ws, traj, trained):
    data = ws.put_data(traj)
    metrics = {"force_mae": np.float64(0.25), "pci": 0.95, "energy_mae": float("nan"), "n_test": np.int64(50),
               "kind": "latent"}
    entry = ws.put_model(trained, name="m", data_key=data.key, metrics=metrics)
    again = Workspace(ws.root).list_models(data.key)[0]
    assert again.metrics == {"force_mae": 0.25, "pci": 0.95, "energy_mae": None, "n_test": 50, "kind": "latent"}
    assert ws.set_metrics(entry.id, {"force_mae": 0.5}).metrics == {"force_mae": 0.5}
    assert ws.set_metrics(entry.id, None).metrics is None
    with pytest.raises(WorkspaceError, match="metrics must be a dict"):
        ws.set_metrics(entry.id, [1, 2])


def test_job_records_outlive_the_server_and_stale_ones_are_marked_interrupted(ws):
    key, other = ws.new_session(), ws.new_session()
    mine = JobRecord(id="1" * 32, session=key, kind="learning_curve", label="AFF; M = 25", state="queued",
                     server="host:10:1.0", submitted=10.0)
    ws.record_job(mine)
    ws.record_job(dataclasses.replace(mine, state="running", started=11.0, partial='[{"M": 25}]'))
    ws.record_job(dataclasses.replace(mine, state="running", started=11.0))  # partial=None keeps the last one
    live = JobRecord(id="2" * 32, session=other, kind="training", label="AFF, M = 15", state="running",
                     server="host:20:1.0", submitted=12.0, started=12.5)
    ws.record_job(live)
    (rec,) = ws.session_jobs(key)
    assert (rec.state, rec.started, rec.partial, rec.reported) == ("running", 11.0, '[{"M": 25}]', False)
    # a new server: the job of the dead one (pid 10) is interrupted, the live one's (pid 20) is left alone
    assert ws.interrupt_stale_jobs(lambda server: server.split(":")[1] == "20") == 1
    (rec,) = ws.session_jobs(key)
    assert rec.state == "interrupted" and "server stopped" in rec.error and rec.finished is not None
    assert rec.partial == '[{"M": 25}]'  # what it had finished is still there
    assert ws.session_jobs(other)[0].state == "running"
    assert ws.interrupt_stale_jobs(lambda server: True) == 0
    ws.mark_reported(rec.id)
    assert ws.session_jobs(key)[0].reported
    with pytest.raises(WorkspaceError, match="job state"):
        ws.record_job(dataclasses.replace(mine, state="exploded"))
    with pytest.raises(WorkspaceError, match="session key"):
        ws.record_job(dataclasses.replace(mine, session="../x"))
    # bounded: only the newest finished records of a session stay
    for i in range(store_module.KEEP_JOB_RECORDS + 5):
        ws.record_job(JobRecord(id=f"{i:032x}", session=other, kind="md", label=f"MD {i}", state="done",
                                server="host:20:1.0", submitted=100.0 + i))
    kept = ws.session_jobs(other)
    assert len(kept) == store_module.KEEP_JOB_RECORDS + 1  # + the running one
    assert kept[-1].label == f"MD {store_module.KEEP_JOB_RECORDS + 4}" and "MD 0" not in {j.label for j in kept}
    ws.forget_session(other)
    assert ws.session_jobs(other) == []


def test_an_index_of_version_1_is_upgraded_in_place(tmp_path, traj, trained):
    import sqlite3

    ws = Workspace(tmp_path / "old")
    data = ws.put_data(traj)
    kept = ws.put_model(trained, name="kept", data_key=data.key)
    # make it a version-1 index: no metrics column, no jobs table
    with sqlite3.connect(ws.index_path) as con:
        con.execute("ALTER TABLE models DROP COLUMN metrics")
        con.execute("DROP TABLE jobs")
        con.execute("UPDATE meta SET value = '1' WHERE name = 'schema'")
    reopened = Workspace(ws.root)
    assert [m.id for m in reopened.list_models()] == [kept.id]
    assert reopened.set_metrics(kept.id, {"force_mae": 0.1}).metrics == {"force_mae": 0.1}
    key = reopened.new_session()
    reopened.record_job(JobRecord(id="a" * 32, session=key, kind="md", label="MD", state="queued", server="h:1:0",
                                  submitted=1.0))
    assert [j.id for j in reopened.session_jobs(key)] == ["a" * 32]
    with sqlite3.connect(ws.index_path) as con:
        assert con.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0] == "3"
    with sqlite3.connect(ws.index_path) as con:
        con.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    with pytest.raises(WorkspaceError, match="schema version 99"):
        Workspace(ws.root)


def test_idle_sessions_are_forgotten_but_their_models_and_data_stay(ws, traj, trained):
    import sqlite3

    data = ws.put_data(traj)
    model = ws.put_model(trained, name="kept", data_key=data.key)
    old, busy, mine, fresh = (ws.new_session() for _ in range(4))
    for key in (old, busy, mine, fresh):
        ws.attach(key, data_key=data.key, model_id=model.id)
    ws.record_job(JobRecord(id="3" * 32, session=busy, kind="training", label="AFF", state="running",
                            server="h:1:0", submitted=1.0))
    with sqlite3.connect(ws.index_path) as con:  # three of them last used 40 days ago
        con.execute("UPDATE sessions SET updated = ? WHERE key IN (?, ?, ?)",
                    (time.time() - 40 * 86400, old, busy, mine))
    assert ws.forget_idle_sessions(30 * 86400, keep=mine) == 1
    assert not ws.session_exists(old)
    assert ws.session_exists(busy) and ws.session_exists(mine) and ws.session_exists(fresh)  # a job; the caller's
    assert [m.id for m in ws.list_models()] == [model.id] and [d.key for d in ws.list_data()] == [data.key]
    ws.touch_session(mine)  # a restore counts as use
    assert ws.forget_idle_sessions(30 * 86400) == 0
