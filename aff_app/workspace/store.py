"""The workspace: data, models and sessions on disk, indexed by one SQLite file.

Layout under the root (``default_root()`` unless the user sets one)::

    root/
      index.sqlite3        the index (stdlib sqlite3, WAL journal)
      data/<sha256>.npz    trajectories, content-addressed by Trajectory.fingerprint
      models/<id>.npz      model files, the one format of aff_app.gp.persistence

Nothing here is a server: several Streamlit sessions (threads) and several
server processes share one root. Every method opens its own SQLite
connection (sqlite3 connections must not cross threads), waits up to
:data:`BUSY_TIMEOUT_S` for a lock, and writes inside ``BEGIN IMMEDIATE`` so two
writers never interleave. Files are written atomically before their row is
inserted and removed after their row is deleted, so a row never names a
partial file; a file without a row is reported by :meth:`Workspace.scan`,
never loaded. No file is ever unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aff_app.errors import AFFError
from aff_app.io.files import load_trajectory
from aff_app.io.trajectory import Provenance, Trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.registry import MAX_NAME_LENGTH as REGISTRY_MAX_NAME_LENGTH, clean_model_name
from aff_app.workspace.atomic import TEMP_PREFIX, sha256_file, write_atomic
from aff_app.workspace.records import (
    JOB_RECORD_STATES,
    DataEntry,
    JobRecord,
    ModelEntry,
    Problem,
    ScanReport,
    SessionRecord,
    WorkspaceError,
    WorkspaceFileError,
)

__all__ = ["Workspace", "default_root", "ENV_VAR", "MAX_NAME_LENGTH", "BUSY_TIMEOUT_S"]

#: Environment variable naming the workspace folder.
ENV_VAR = "AFF_WORKSPACE"
#: Longest model name: the session registry's, so every stored name can be a name in a session.
MAX_NAME_LENGTH = REGISTRY_MAX_NAME_LENGTH
#: How long a call waits for another writer's lock before giving up, s.
BUSY_TIMEOUT_S = 30.0
#: Bump when the tables change; an index of another version is refused, not silently altered.
SCHEMA_VERSION = 3
#: Older index versions this one upgrades in place: version -> its SQL (version 2 added models.metrics;
#: version 3 the jobs table, which the CREATE ... IF NOT EXISTS of the schema makes).
_UPGRADES = {"1": "ALTER TABLE models ADD COLUMN metrics TEXT", "2": None}
#: Finished job records kept per session (the oldest are dropped).
KEEP_JOB_RECORDS = 50

_DATA_KEY = re.compile(r"[0-9a-f]{64}")
_MODEL_ID = re.compile(r"[0-9a-f]{32}")
# secrets.token_urlsafe(16) gives 22 characters; accept a little more for keys of later versions
_SESSION_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS data (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, formula TEXT NOT NULL, n_frames INTEGER NOT NULL,
    n_atoms INTEGER NOT NULL, has_labels INTEGER NOT NULL, provenance TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, data_key TEXT NOT NULL, mode TEXT NOT NULL,
    n_train INTEGER NOT NULL, has_energy INTEGER NOT NULL, cache_key TEXT,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created REAL NOT NULL, metrics TEXT,
    UNIQUE (data_key, name));
CREATE INDEX IF NOT EXISTS models_cache ON models (cache_key);
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, data_key TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS session_models (
    session TEXT NOT NULL, model_id TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (session, model_id));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, state TEXT NOT NULL,
    server TEXT NOT NULL, submitted REAL NOT NULL, started REAL, finished REAL, error TEXT, partial TEXT,
    reported INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_session ON jobs (session, submitted);
"""
# models.data_key is '' for "no stored data": SQLite's UNIQUE treats NULLs as distinct, and names
# must be unique among those models too.


#: This process as a job's server: host, process id and start time (a restart is another server).
THIS_SERVER = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"


def server_alive(server: str) -> bool:
    """Whether the server process that recorded a job (``THIS_SERVER`` of some process) still runs.

    This process: yes. The same process id but another start (a restarted container): no. Another
    process of this host: whether it exists. Another host: assumed alive (nothing here can tell).
    """
    if server == THIS_SERVER:
        return True
    host, _, rest = server.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return host != socket.gethostname()
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def default_root() -> Path:
    """The workspace folder: ``$AFF_WORKSPACE`` when set, else ``~/.aff_app/workspace``."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".aff_app" / "workspace"


def _check(pattern: re.Pattern, value: Any, what: str) -> str:
    # keys become file names and SQL parameters: only the expected alphabet passes
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = repr(value)[:80]
        raise WorkspaceError(f"{shown} is not a valid {what}")
    return value


def _clean_name(name: Any) -> str:
    return clean_model_name(name, WorkspaceError)


def _provenance_json(prov: Provenance) -> str:
    # settings may hold anything a loader put there; what JSON cannot say is kept as text
    return json.dumps(dataclasses.asdict(prov), sort_keys=True, default=str)


def _provenance_from_json(text: str) -> Provenance:
    try:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(Provenance)}
        return Provenance(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, TypeError, AttributeError):
        return Provenance()


class Workspace:
    """Data, models and sessions stored under one folder (see the module docstring for the layout).

    Parameters
    ----------
    root : str or Path, optional
        The folder (created when absent); default :func:`default_root`.

    Raises
    ------
    WorkspaceError
        The folder cannot be created or written, or its index is not a workspace index of this version.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.data_dir = self.root / "data"
        self.models_dir = self.root / "models"
        self.index_path = self.root / "index.sqlite3"
        self._column_names: dict[str, list[str]] = {}
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create the workspace folder {self.root}: {exc.strerror or exc}; "
                                 f"choose another folder (${ENV_VAR})") from None
        try:
            with self._connect() as con:
                # WAL: readers never block the writer nor it them (several sessions, several processes)
                con.execute("PRAGMA journal_mode=WAL")
                # each CREATE ... IF NOT EXISTS is idempotent: two processes starting at once both succeed
                con.executescript(_SCHEMA)
                with self._write(con):
                    row = con.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                    if row is None:
                        con.execute("INSERT INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    elif row[0] in _UPGRADES:
                        for version in sorted(v for v in _UPGRADES if int(v) >= int(row[0])):
                            if _UPGRADES[version]:
                                con.execute(_UPGRADES[version])
                        con.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(SCHEMA_VERSION),))
                    elif row[0] != str(SCHEMA_VERSION):
                        raise WorkspaceError(
                            f"the workspace index {self.index_path} has schema version {row[0]}, this aff_app "
                            f"reads version {SCHEMA_VERSION}: use another folder or the matching aff_app")
        except (sqlite3.DatabaseError, WorkspaceFileError) as exc:
            raise WorkspaceFileError(f"{self.index_path} is not a usable workspace index ({exc}); move it away "
                                     "or choose another folder") from None

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- the index ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection for one call (connections must not cross Streamlit's session threads).

        A failure of the index itself (locked longer than :data:`BUSY_TIMEOUT_S`, a full disk, a damaged
        file) becomes a :class:`WorkspaceFileError` that says so: it is the storage's problem, not a bug.
        """
        try:
            con = sqlite3.connect(self.index_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise WorkspaceFileError(f"the workspace index {self.index_path} cannot be opened ({exc})") from None
        try:
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            yield con
        except sqlite3.Error as exc:
            raise WorkspaceFileError(f"the workspace index {self.index_path} failed ({exc}): the disk may be full "
                                     "or the folder read-only") from None
        finally:
            con.close()

    def _write_file(self, path: Path, write) -> int:
        """``write_atomic`` with a storage failure (full disk, read-only folder) as a :class:`WorkspaceFileError`."""
        try:
            return write_atomic(path, write)
        except OSError as exc:
            raise WorkspaceFileError(f"cannot write {path} ({exc.strerror or exc}): the disk may be full or the "
                                     "folder read-only") from None

    @contextlib.contextmanager
    def _write(self, con: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock at once, so check-then-insert is safe."""
        con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- paths -------------------------------------------------------------------------------
    def data_path(self, key: str) -> Path:
        """The file of data ``key`` (for a download); the key is validated, the file not."""
        return self.data_dir / f"{_check(_DATA_KEY, key, 'data key')}.npz"

    def model_path(self, model_id: str) -> Path:
        """The file of model ``model_id``, for a download.

        Raises
        ------
        WorkspaceError
            Unknown or malformed id; :class:`WorkspaceFileError` when the file is missing or damaged.
        """
        row = self._model_row(model_id)
        path = self.models_dir / f"{row['id']}.npz"
        problem = self._file_problem(path, row["size_bytes"], f"model {row['name']!r}", row["id"])
        if problem is not None:
            raise WorkspaceFileError(problem.message)
        return path

    # -- data --------------------------------------------------------------------------------
    def put_data(self, traj: Trajectory) -> DataEntry:
        """Store ``traj`` under its fingerprint; storing the same arrays again returns the first entry.

        The name and provenance of the first copy are kept (the key is the content, z, R, E, F).

        Raises
        ------
        WorkspaceError
            Not a Trajectory, or it holds NaN/inf values (the loader would refuse the stored file).
        """
        if not isinstance(traj, Trajectory):
            raise WorkspaceError(f"expected a Trajectory, got {type(traj).__name__}")
        for label, arr in (("R", traj.R), ("E", traj.E), ("F", traj.F)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise WorkspaceError(f"{label} of {traj.name or 'the data'!r} holds NaN or inf values; load it "
                                     "with nonfinite='drop' before storing it")
        key = traj.fingerprint  # SHA-256 of z, R, E, F: a content address
        existing = self._data_entry_or_none(key)
        path = self.data_path(key)
        if existing is not None and self._file_problem(path, existing.size_bytes, "", key) is None:
            return existing
        size = self._write_file(path, lambda fh: _write_trajectory(traj, fh))
        digest = sha256_file(path)
        now = time.time()
        with self._connect() as con, self._write(con):
            # REPLACE: a row whose file was lost or damaged is healed by the fresh copy
            con.execute(
                "INSERT OR REPLACE INTO data (key, name, formula, n_frames, n_atoms, has_labels, provenance, "
                "size_bytes, sha256, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "COALESCE((SELECT created FROM data WHERE key = ?), ?))",
                (key, traj.name, traj.formula, traj.n_frames, traj.n_atoms, int(traj.has_labels),
                 _provenance_json(traj.provenance), size, digest, key, now),
            )
        return self._data_entry(key)

    def get_data(self, key: str) -> Trajectory:
        """The stored trajectory ``key``, read by the project's loader and checked against its fingerprint.

        Raises
        ------
        WorkspaceError
            Unknown or malformed key.
        WorkspaceFileError
            The file is missing, changed since it was stored, unreadable, or holds other arrays.
        """
        row = self._data_row(key)
        path = self.data_path(key)
        self._verify(path, row["size_bytes"], row["sha256"], f"data {row['name']!r}", key)

        try:
            loaded = load_trajectory(path, fmt="npz")
        except AFFError as exc:
            raise WorkspaceFileError(f"the stored data file {path} cannot be read: {exc}") from None
        if loaded.fingerprint != key:
            raise WorkspaceFileError(f"the stored data file {path} holds other arrays than were stored "
                                     f"(fingerprint {loaded.fingerprint[:12]}…, expected {key[:12]}…); delete it")
        return Trajectory(z=loaded.z, R=loaded.R, E=loaded.E, F=loaded.F, name=row["name"],
                          provenance=_provenance_from_json(row["provenance"]))

    def data_entry(self, key: str) -> DataEntry:
        """The index row of stored data ``key`` (its file is not read); :class:`WorkspaceError` when unknown."""
        return self._data_entry(key)

    def list_data(self) -> list[DataEntry]:
        """Stored data whose file is present and of the size written, oldest first (see :meth:`problems`)."""
        with self._connect() as con:
            rows = con.execute("SELECT * FROM data ORDER BY created, key").fetchall()
        cols = self._columns("data")
        out = []
        for raw in rows:
            row = dict(zip(cols, raw))
            if self._file_problem(self.data_dir / f"{row['key']}.npz", row["size_bytes"], "", row["key"]) is None:
                out.append(self._data_from_row(row))
        return out

    def delete_data(self, key: str) -> None:
        """Delete stored data (its file and row); refused while models trained on it are stored.

        Sessions that had it open are left without data.
        """
        self._data_row(key)
        with self._connect() as con, self._write(con):
            n = con.execute("SELECT COUNT(*) FROM models WHERE data_key = ?", (key,)).fetchone()[0]
            if n:
                raise WorkspaceError(f"{n} stored model(s) were trained on this data: delete them first")
            con.execute("DELETE FROM data WHERE key = ?", (key,))
            con.execute("UPDATE sessions SET data_key = NULL WHERE data_key = ?", (key,))
        with contextlib.suppress(FileNotFoundError):
            self.data_path(key).unlink()

    # -- models ------------------------------------------------------------------------------
    def put_model(self, trained, *, name: str, data_key: str | None, cache_key: str | None = None,
                  unique: bool = True, metrics: dict | None = None, model_id: str | None = None) -> ModelEntry:
        """Store a model file (``pipeline.save``), atomically, and index it.

        Parameters
        ----------
        trained : aff_app.workflows.pipeline.Trained
        name : str
            Non-empty, at most :data:`MAX_NAME_LENGTH` characters; with ``unique`` a name taken among
            the models of the same data gets a ``' (2)'`` suffix, else it is refused.
        data_key : str or None
            The stored data it was trained on (must be stored), or None.
        cache_key : str, optional
            The :func:`~aff_app.workspace.fit_key` this fit answers: later requests reuse it.
        metrics : dict, optional
            Its held-out metrics (``TrainedModel.metrics``: numbers, None or text), stored as JSON.
        model_id : str, optional
            32 hexadecimal digits (the session registry's ``uid``, so both name the model alike);
            default a fresh one. An id already stored is refused.

        Raises
        ------
        WorkspaceError
            Invalid name, unknown data, or (``unique=False``) a name taken.
        """
        if not isinstance(trained, pipeline.Trained):
            raise WorkspaceError(f"expected a Trained model, got {type(trained).__name__}")
        clean = _clean_name(name)
        if data_key is not None:
            self._data_row(data_key)
        if cache_key is not None:
            _check(_DATA_KEY, cache_key, "fit-cache key")
        if model_id is None:
            model_id = uuid.uuid4().hex
        else:
            _check(_MODEL_ID, model_id, "model id")
            with self._connect() as con:
                if con.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone():
                    raise WorkspaceError(f"a model with id {model_id} is stored already")
        path = self.models_dir / f"{model_id}.npz"
        size = self._write_file(path, lambda fh: pipeline.save(trained, fh))
        try:
            digest = sha256_file(path)
            with self._connect() as con, self._write(con):
                taken = {r[0] for r in con.execute("SELECT name FROM models WHERE data_key = ?", (data_key or "",))}
                if clean in taken and not unique:
                    raise WorkspaceError(f"a model named {clean!r} exists already for this data: choose another name")
                final, k = clean, 2
                while final in taken:
                    final, k = f"{clean} ({k})", k + 1
                force = trained.force
                con.execute(
                    "INSERT INTO models (id, name, data_key, mode, n_train, has_energy, cache_key, size_bytes, "
                    "sha256, created, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (model_id, final, data_key or "", str(force.mode), int(force.n_train),
                     int(trained.energy is not None), cache_key, size, digest, time.time(), _metrics_json(metrics)),
                )
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # no row will name it
            raise
        return self._model_entry(model_id)

    def import_model(self, source: bytes | str | os.PathLike, *, name: str, data_key: str | None = None,
                     where: str | None = None) -> ModelEntry:
        """Store an uploaded model file after reading it with the one validating reader (never unpickled).

        Raises
        ------
        WorkspaceFileError
            Not a model file of aff_app (pickled, damaged, foreign, newer format).
        """
        try:
            trained = pipeline.load(source, where=where)
        except (AFFError, FileNotFoundError) as exc:
            raise WorkspaceFileError(str(exc)) from None
        return self.put_model(trained, name=name, data_key=data_key)

    def get_model(self, model_id: str):
        """The stored model ``model_id`` (a ``Trained``; its ``warnings`` are not stored).

        Raises
        ------
        WorkspaceError
            Unknown or malformed id.
        WorkspaceFileError
            The file is missing, changed since it was stored, or not a readable model file.
        """
        row = self._model_row(model_id)
        path = self.models_dir / f"{row['id']}.npz"
        what = f"model {row['name']!r}"
        self._verify(path, row["size_bytes"], row["sha256"], what, row["id"])
        try:
            return pipeline.load(path, where=f"{what} ({path})")
        except (AFFError, FileNotFoundError) as exc:
            raise WorkspaceFileError(f"{what} cannot be loaded: {exc}") from None

    def model_entry(self, model_id: str) -> ModelEntry:
        """The index row of stored model ``model_id`` (its file is not read); :class:`WorkspaceError` when unknown."""
        return self._model_entry(model_id)

    def list_models(self, data_key: str | None = None) -> list[ModelEntry]:
        """Stored models (of ``data_key`` when given) whose file is present and whole, oldest first.

        Damaged entries are left out here and reported by :meth:`problems`.
        """
        sql, args = "SELECT * FROM models", ()
        if data_key is not None:
            sql, args = sql + " WHERE data_key = ?", (_check(_DATA_KEY, data_key, "data key"),)
        with self._connect() as con:
            rows = con.execute(sql + " ORDER BY created, id", args).fetchall()
        cols = self._columns("models")
        out = []
        for raw in rows:
            row = dict(zip(cols, raw))
            if self._file_problem(self.models_dir / f"{row['id']}.npz", row["size_bytes"], "", row["id"]) is None:
                out.append(self._model_from_row(row))
        return out

    def rename_model(self, model_id: str, name: str) -> ModelEntry:
        """Rename a model; the name must be free among the models of its data."""
        row = self._model_row(model_id)
        clean = _clean_name(name)
        if clean != row["name"]:
            with self._connect() as con, self._write(con):
                clash = con.execute("SELECT 1 FROM models WHERE data_key = ? AND name = ? AND id != ?",
                                    (row["data_key"], clean, row["id"])).fetchone()
                if clash:
                    raise WorkspaceError(f"a model named {clean!r} exists already for this data: choose another name")
                con.execute("UPDATE models SET name = ? WHERE id = ?", (clean, row["id"]))
        return self._model_entry(row["id"])

    def set_metrics(self, model_id: str, metrics: dict | None) -> ModelEntry:
        """Record (or clear) the held-out metrics of a stored model, e.g. after a later evaluation."""
        row = self._model_row(model_id)
        with self._connect() as con, self._write(con):
            con.execute("UPDATE models SET metrics = ? WHERE id = ?", (_metrics_json(metrics), row["id"]))
        return self._model_entry(row["id"])

    def delete_model(self, model_id: str) -> None:
        """Delete a model: its row, its place in every session, then its file."""
        row = self._model_row(model_id)
        with self._connect() as con, self._write(con):
            con.execute("DELETE FROM session_models WHERE model_id = ?", (row["id"],))
            con.execute("DELETE FROM models WHERE id = ?", (row["id"],))
        # after the row: a crash in between leaves a foreign file (reported), never a row without a file
        with contextlib.suppress(FileNotFoundError):
            (self.models_dir / f"{row['id']}.npz").unlink()

    # -- fit cache ---------------------------------------------------------------------------
    def cached_model(self, cache_key: str) -> ModelEntry | None:
        """The newest stored model for this :func:`~aff_app.workspace.fit_key` whose file is intact, or None.

        Intact means present, of the size written and of the same SHA-256: a damaged cached file
        is never served (the caller fits again and stores the new model).
        """
        _check(_DATA_KEY, cache_key, "fit-cache key")
        with self._connect() as con:
            rows = con.execute("SELECT * FROM models WHERE cache_key = ? ORDER BY created DESC",
                               (cache_key,)).fetchall()
        cols = self._columns("models")
        for raw in rows:
            row = dict(zip(cols, raw))
            try:
                self._verify(self.models_dir / f"{row['id']}.npz", row["size_bytes"], row["sha256"], "", row["id"])
            except WorkspaceFileError:
                continue
            return self._model_from_row(row)
        return None

    # -- sessions ----------------------------------------------------------------------------
    def new_session(self) -> str:
        """A fresh session and its URL-safe key (22 characters of ``secrets.token_urlsafe``)."""
        key = secrets.token_urlsafe(16)
        now = time.time()
        with self._connect() as con, self._write(con):
            con.execute("INSERT INTO sessions (key, data_key, created, updated) VALUES (?, NULL, ?, ?)",
                        (key, now, now))
        return key

    def session_exists(self, key: str) -> bool:
        """Whether ``key`` names a stored session (a malformed key raises :class:`WorkspaceError`)."""
        _check(_SESSION_KEY, key, "session key")
        with self._connect() as con:
            return con.execute("SELECT 1 FROM sessions WHERE key = ?", (key,)).fetchone() is not None

    def session_state(self, key: str) -> SessionRecord:
        """What session ``key`` had open: its data and its models in order.

        Raises
        ------
        WorkspaceError
            Malformed key, or no such session (start a new one).
        """
        _check(_SESSION_KEY, key, "session key")
        with self._connect() as con:
            row = con.execute("SELECT data_key, created, updated FROM sessions WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise WorkspaceError("this session is not stored in the workspace (it was forgotten, or the link "
                                     "is from another workspace): start a new session")
            ids = [r[0] for r in con.execute(
                "SELECT model_id FROM session_models WHERE session = ? ORDER BY position", (key,))]
        return SessionRecord(key=key, data_key=row[0], model_ids=tuple(ids), created=row[1], updated=row[2])

    def attach(self, session: str, *, data_key: str | None = None, model_id: str | None = None) -> SessionRecord:
        """Make ``data_key`` the session's current data and/or add ``model_id`` to its models (kept once)."""
        self.session_state(session)
        if data_key is not None:
            self._data_row(data_key)
        if model_id is not None:
            self._model_row(model_id)
        with self._connect() as con, self._write(con):
            if data_key is not None:
                con.execute("UPDATE sessions SET data_key = ? WHERE key = ?", (data_key, session))
            if model_id is not None:
                con.execute(
                    "INSERT OR IGNORE INTO session_models (session, model_id, position) VALUES (?, ?, "
                    "(SELECT COALESCE(MAX(position), -1) + 1 FROM session_models WHERE session = ?))",
                    (session, model_id, session))
            con.execute("UPDATE sessions SET updated = ? WHERE key = ?", (time.time(), session))
        return self.session_state(session)

    def session_models(self, key: str) -> list[ModelEntry]:
        """The models of session ``key`` in its order (one query; damaged files are left to :meth:`get_model`)."""
        _check(_SESSION_KEY, key, "session key")
        with self._connect() as con:
            rows = con.execute("SELECT models.* FROM session_models JOIN models ON models.id = session_models.model_id "
                               "WHERE session_models.session = ? ORDER BY session_models.position", (key,)).fetchall()
        cols = self._columns("models")
        return [self._model_from_row(dict(zip(cols, raw))) for raw in rows]

    def detach_model(self, session: str, model_id: str) -> SessionRecord:
        """Take ``model_id`` out of the session (the model stays stored)."""
        self.session_state(session)
        _check(_MODEL_ID, model_id, "model id")
        with self._connect() as con, self._write(con):
            con.execute("DELETE FROM session_models WHERE session = ? AND model_id = ?", (session, model_id))
            con.execute("UPDATE sessions SET updated = ? WHERE key = ?", (time.time(), session))
        return self.session_state(session)

    def touch_session(self, key: str) -> None:
        """Record that session ``key`` was used now (a restore counts as use for :meth:`forget_idle_sessions`)."""
        _check(_SESSION_KEY, key, "session key")
        with self._connect() as con, self._write(con):
            con.execute("UPDATE sessions SET updated = ? WHERE key = ?", (time.time(), key))

    def forget_idle_sessions(self, max_idle_s: float, *, keep: str | None = None) -> int:
        """Forget sessions not used for ``max_idle_s`` seconds (their data and models stay stored); return how many.

        ``keep``: a session never forgotten here (the caller's own). Sessions with a queued or running job
        record stay.
        """
        cutoff = time.time() - float(max_idle_s)
        with self._connect() as con, self._write(con):
            stale = [k for (k,) in con.execute(
                "SELECT key FROM sessions WHERE updated < ? AND key NOT IN "
                "(SELECT session FROM jobs WHERE state IN ('queued', 'running'))", (cutoff,)) if k != keep]
            for key in stale:
                con.execute("DELETE FROM session_models WHERE session = ?", (key,))
                con.execute("DELETE FROM jobs WHERE session = ?", (key,))
                con.execute("DELETE FROM sessions WHERE key = ?", (key,))
        return len(stale)

    def forget_session(self, key: str) -> None:
        """Forget a session (its data and models stay stored)."""
        _check(_SESSION_KEY, key, "session key")
        with self._connect() as con, self._write(con):
            con.execute("DELETE FROM session_models WHERE session = ?", (key,))
            con.execute("DELETE FROM jobs WHERE session = ?", (key,))
            con.execute("DELETE FROM sessions WHERE key = ?", (key,))

    # -- job records ---------------------------------------------------------------------------
    def record_job(self, record: JobRecord) -> None:
        """Insert or update one job's record (the queue's state as it changes; ``partial`` as it grows)."""
        _check(_SESSION_KEY, record.session, "session key")
        _check(_MODEL_ID, record.id, "job id")
        if record.state not in JOB_RECORD_STATES:
            raise WorkspaceError(f"job state {record.state!r} is not one of {', '.join(JOB_RECORD_STATES)}")
        with self._connect() as con, self._write(con):
            con.execute(
                "INSERT INTO jobs (id, session, kind, label, state, server, submitted, started, finished, error, "
                "partial, reported) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                # hooks of two threads may write out of order: a final state is never overwritten
                "state = CASE WHEN jobs.state IN ('queued', 'running') THEN excluded.state ELSE jobs.state END, "
                "started = COALESCE(excluded.started, jobs.started), "
                "finished = COALESCE(jobs.finished, excluded.finished), "
                "error = CASE WHEN jobs.state IN ('queued', 'running') THEN excluded.error ELSE jobs.error END, "
                "partial = COALESCE(excluded.partial, jobs.partial)",
                (record.id, record.session, record.kind, record.label, record.state, record.server,
                 record.submitted, record.started, record.finished, record.error, record.partial,
                 int(record.reported)))
            if record.state not in ("queued", "running"):
                # bounded: the oldest finished records of this session go
                con.execute(
                    "DELETE FROM jobs WHERE session = ? AND state NOT IN ('queued', 'running') AND id NOT IN "
                    "(SELECT id FROM jobs WHERE session = ? ORDER BY submitted DESC LIMIT ?)",
                    (record.session, record.session, KEEP_JOB_RECORDS))

    def session_jobs(self, key: str) -> list[JobRecord]:
        """The job records of session ``key``, oldest first."""
        _check(_SESSION_KEY, key, "session key")
        with self._connect() as con:
            rows = con.execute("SELECT * FROM jobs WHERE session = ? ORDER BY submitted", (key,)).fetchall()
        cols = self._columns("jobs")
        return [self._job_from_row(dict(zip(cols, raw))) for raw in rows]

    def interrupt_stale_jobs(self, is_alive=None) -> int:
        """Mark 'interrupted' every queued or running record whose server is gone; return how many.

        ``is_alive(server) -> bool`` says whether the server that recorded a job still runs; default
        :func:`server_alive` (another live server's jobs are left alone).
        """
        is_alive = server_alive if is_alive is None else is_alive
        with self._connect() as con:
            rows = con.execute("SELECT id, server FROM jobs WHERE state IN ('queued', 'running')").fetchall()
        stale = [job_id for job_id, server in rows if not is_alive(server)]
        if stale:
            with self._connect() as con, self._write(con):
                con.executemany(
                    "UPDATE jobs SET state = 'interrupted', finished = ?, error = ? WHERE id = ? AND state IN "
                    "('queued', 'running')",
                    [(time.time(), "the server stopped while the job was queued or running", job_id)
                     for job_id in stale])
        return len(stale)

    def mark_reported(self, job_id: str) -> None:
        """The session was told about this (interrupted) job: it is not reported again."""
        _check(_MODEL_ID, job_id, "job id")
        with self._connect() as con, self._write(con):
            con.execute("UPDATE jobs SET reported = 1 WHERE id = ?", (job_id,))

    @staticmethod
    def _job_from_row(row: dict[str, Any]) -> JobRecord:
        return JobRecord(id=row["id"], session=row["session"], kind=row["kind"], label=row["label"],
                         state=row["state"], server=row["server"], submitted=row["submitted"],
                         started=row["started"], finished=row["finished"], error=row["error"],
                         partial=row["partial"], reported=bool(row["reported"]))

    # -- checks ------------------------------------------------------------------------------
    def problems(self) -> tuple[Problem, ...]:
        """Index rows whose file is missing or of another size than written (cheap: no file is read)."""
        out: list[Problem] = []
        with self._connect() as con:
            data = con.execute("SELECT key, name, size_bytes FROM data ORDER BY created").fetchall()
            models = con.execute("SELECT id, name, size_bytes FROM models ORDER BY created").fetchall()
        for key, name, size in data:
            p = self._file_problem(self.data_dir / f"{key}.npz", size, f"data {name!r}", key)
            if p is not None:
                out.append(p)
        for mid, name, size in models:
            p = self._file_problem(self.models_dir / f"{mid}.npz", size, f"model {name!r}", mid)
            if p is not None:
                out.append(p)
        return tuple(out)

    def scan(self, *, deep: bool = False) -> ScanReport:
        """Everything wrong in the workspace folders, without loading any file that has no row.

        Reports rows without their file or of the wrong size, files without a row (``foreign``: never
        loaded; remove them or store them through :meth:`import_model`) and leftover temporary files of
        interrupted writes. With ``deep`` every indexed file is also hashed and compared with the
        SHA-256 recorded when it was written.
        """
        problems = list(self.problems())
        bad = {p.entry for p in problems}
        with self._connect() as con:
            data = {r[0]: r[1] for r in con.execute("SELECT key, sha256 FROM data")}
            models = {r[0]: r[1] for r in con.execute("SELECT id, sha256 FROM models")}
        for folder, rows, what in ((self.data_dir, data, "data"), (self.models_dir, models, "model")):
            for path in sorted(folder.iterdir()):
                stem = path.name[:-4] if path.name.endswith(".npz") else None
                if path.name.startswith(TEMP_PREFIX):
                    problems.append(Problem("temporary", path, f"{path} is left over from an interrupted write; "
                                            "it is never loaded and can be deleted"))
                elif stem is None or stem not in rows:
                    problems.append(Problem("foreign", path, f"{path} is not in the workspace index: it was not "
                                            f"written by the workspace and is never loaded; remove it, or add it "
                                            f"through the app's upload"))
                elif deep and stem not in bad:
                    try:
                        if sha256_file(path) != rows[stem]:
                            problems.append(Problem("corrupt", path, f"{what} file {path} changed since it was "
                                                    "written (its SHA-256 differs): delete the entry", stem))
                    except OSError as exc:
                        problems.append(Problem("corrupt", path, f"{path} cannot be read: {exc}", stem))
        n_bad = {p.entry for p in problems if p.entry is not None}
        return ScanReport(n_data=len(set(data) - n_bad), n_models=len(set(models) - n_bad),
                          problems=tuple(problems))

    # -- helpers -----------------------------------------------------------------------------
    def _file_problem(self, path: Path, size: int, what: str, entry: str) -> Problem | None:
        what = what or path.name
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            return Problem("missing", path, f"the file of {what} ({path}) is missing: delete the entry "
                           "(or restore the file)", entry)
        except OSError as exc:
            return Problem("corrupt", path, f"the file of {what} ({path}) cannot be read: {exc}", entry)
        if found != size:
            return Problem("corrupt", path, f"the file of {what} ({path}) has {found} bytes but {size} were "
                           "written: it is damaged (truncated or overwritten); delete the entry", entry)
        return None

    def _verify(self, path: Path, size: int, digest: str, what: str, entry: str) -> None:
        problem = self._file_problem(path, size, what, entry)
        if problem is not None:
            raise WorkspaceFileError(problem.message)
        try:
            found = sha256_file(path)
        except OSError as exc:
            raise WorkspaceFileError(f"the file of {what or path.name} ({path}) cannot be read: {exc}") from None
        if found != digest:
            raise WorkspaceFileError(f"the file of {what or path.name} ({path}) changed since it was written (its "
                                     "SHA-256 differs): it is damaged or was replaced; it is not loaded. Delete "
                                     "the entry")

    def _columns(self, table: str) -> list[str]:
        # the tables are fixed once __init__ has created or upgraded them: read their columns once, not with
        # a second connection for every row (the app reads the session's models on every script run)
        if table not in self._column_names:
            with self._connect() as con:
                self._column_names[table] = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]  # ours
        return self._column_names[table]

    def _data_row(self, key: str) -> dict[str, Any]:
        _check(_DATA_KEY, key, "data key")
        with self._connect() as con:
            raw = con.execute("SELECT * FROM data WHERE key = ?", (key,)).fetchone()
        if raw is None:
            raise WorkspaceError(f"no stored data with key {key[:12]}…: load the data again")
        return dict(zip(self._columns("data"), raw))

    def _data_entry_or_none(self, key: str) -> DataEntry | None:
        try:
            return self._data_from_row(self._data_row(key))
        except WorkspaceError:
            return None

    def _data_entry(self, key: str) -> DataEntry:
        return self._data_from_row(self._data_row(key))

    def _model_row(self, model_id: str) -> dict[str, Any]:
        _check(_MODEL_ID, model_id, "model id")
        with self._connect() as con:
            raw = con.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        if raw is None:
            raise WorkspaceError(f"no stored model with id {model_id}: it was deleted")
        return dict(zip(self._columns("models"), raw))

    def _model_entry(self, model_id: str) -> ModelEntry:
        return self._model_from_row(self._model_row(model_id))

    @staticmethod
    def _data_from_row(row: dict[str, Any]) -> DataEntry:
        prov = _provenance_from_json(row["provenance"])
        return DataEntry(key=row["key"], name=row["name"], formula=row["formula"], n_frames=int(row["n_frames"]),
                         n_atoms=int(row["n_atoms"]), has_labels=bool(row["has_labels"]), source=prov.source,
                         size_bytes=int(row["size_bytes"]), created=float(row["created"]))

    @staticmethod
    def _model_from_row(row: dict[str, Any]) -> ModelEntry:
        return ModelEntry(id=row["id"], name=row["name"], data_key=row["data_key"] or None, mode=row["mode"],
                          n_train=int(row["n_train"]), has_energy=bool(row["has_energy"]),
                          cache_key=row["cache_key"], size_bytes=int(row["size_bytes"]),
                          created=float(row["created"]), metrics=_metrics_from_json(row.get("metrics")))


def _metrics_json(metrics: dict | None) -> str | None:
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        raise WorkspaceError(f"metrics must be a dict or None, got {type(metrics).__name__}")

    def plain(v):
        # numpy scalars become Python numbers; NaN/inf become None (JSON has neither; the pages show "—")
        if isinstance(v, (np.generic,)):
            v = v.item()
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    return json.dumps({str(k): plain(v) for k, v in metrics.items()}, sort_keys=True)


def _metrics_from_json(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None  # a hand-edited index: the metrics are recomputed on the Predictions page
    return raw if isinstance(raw, dict) else None


def _write_trajectory(traj: Trajectory, fh) -> None:
    """Plain arrays in the sGDML layout (internal units: Å, kcal/mol), readable by ``load_trajectory``.

    Float64 throughout, so the arrays read back bit for bit and the fingerprint (the file name) holds.
    """
    arrays: dict[str, np.ndarray] = {
        "type": np.array("d"),
        "name": np.array(traj.name or "dataset"),
        "z": np.asarray(traj.z, dtype=np.int64),
        "R": np.asarray(traj.R, dtype=np.float64),
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
    }
    if traj.E is not None:
        arrays["E"] = np.asarray(traj.E, dtype=np.float64).reshape(-1, 1)
    if traj.F is not None:
        arrays["F"] = np.asarray(traj.F, dtype=np.float64)
    np.savez(fh, **arrays)
