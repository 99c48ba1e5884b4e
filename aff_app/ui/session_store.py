"""The browser session kept in the workspace: a key in the URL brings data and models back.

A reload of the page, a second tab opened on the same address, or a restart of
the server all start a new Streamlit session with an empty ``st.session_state``.
What the user had is kept in the :class:`aff_app.workspace.Workspace` (one per
server, under ``$AFF_WORKSPACE``) and found again through the ``?s=<key>`` query
parameter that :func:`begin_run` writes into the address:

* :func:`begin_run` (called by ``app.py`` before every page) makes sure the
  session has a workspace key, restores the data and models of a key found in
  the URL, and adds models that finished in the background (the job queue
  attaches them to the session in the workspace) to the session's registry;
* :func:`remember_data` (called by ``state.set_trajectory``) stores a newly
  loaded trajectory, content-addressed;
* :func:`mirror` is the session registry's ``on_change``: every model added,
  renamed, removed or evaluated is written through to the workspace.

A workspace that cannot be opened (a read-only folder, a foreign index) never
stops the app: the session then lives in memory only and the sidebar says why.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import streamlit as st

from aff_app.errors import AFFError
from aff_app.io.trajectory import Trajectory
from aff_app.workflows import pipeline
from aff_app.workflows.registry import ModelRegistry, TrainedModel
from aff_app.workspace import ModelEntry, Workspace, WorkspaceError, default_root

from aff_app.ui import state

#: The query parameter that carries the session key (short: it is part of every address the user shares).
SESSION_PARAM = "s"
#: How many loaded model files the server keeps in memory, shared by every session that has them.
MODEL_CACHE_ENTRIES = 16
#: Environment variable: days a session may stay unused before the server forgets it (0: never).
SESSION_DAYS_ENV = "AFF_SESSION_DAYS"
DEFAULT_SESSION_DAYS = 30.0


@st.cache_resource(show_spinner=False)
def _open_workspace(root: str) -> Workspace:
    ws = Workspace(root)
    days = _session_days()
    if days > 0:
        # once per server process: sessions idle that long are forgotten (their data and models stay stored)
        ws.forget_idle_sessions(days * 86400.0)
    return ws


def _session_days() -> float:
    """``$AFF_SESSION_DAYS`` (default 30; 0 keeps every session)."""
    raw = os.environ.get(SESSION_DAYS_ENV, "").strip()
    try:
        return max(float(raw), 0.0) if raw else DEFAULT_SESSION_DAYS
    except ValueError:
        return DEFAULT_SESSION_DAYS


def workspace() -> Workspace | None:
    """The server's workspace (one per folder, shared by every session), or None when it cannot be opened."""
    root = str(default_root())
    try:
        return _open_workspace(root)
    except AFFError as exc:
        st.session_state[state.WS_UNAVAILABLE] = (
            f"Work is kept in this browser session only: the workspace {root} cannot be used ({exc}).")
        return None


class _ModelCache:
    """Stored models in memory, shared by every session that has them (fitted models are only read).

    A fit finished in the background puts its in-memory model here (with its Cholesky factors, which
    the model file does not hold), so the sessions that pick it up predict intervals without
    refactoring. Least recently used first out, at most :data:`MODEL_CACHE_ENTRIES`.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], pipeline.Trained] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ws: Workspace, model_id: str) -> pipeline.Trained:
        key = (str(ws.root), model_id)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        trained = ws.get_model(model_id)  # outside the lock: reading a file must not block other sessions
        self.put(ws, model_id, trained)
        return trained

    def put(self, ws: Workspace, model_id: str, trained: pipeline.Trained) -> None:
        with self._lock:
            self._items[(str(ws.root), model_id)] = trained
            self._items.move_to_end((str(ws.root), model_id))
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_MODELS = _ModelCache(MODEL_CACHE_ENTRIES)


def remember_model(ws: Workspace, model_id: str, trained: pipeline.Trained) -> None:
    """Share the in-memory ``trained`` (just stored as ``model_id``) with every session that restores it."""
    _MODELS.put(ws, model_id, trained)


def session_key() -> str | None:
    """This browser session's workspace key, or None when the workspace is unavailable."""
    key = st.session_state.get(state.WS_SESSION)
    return key if isinstance(key, str) else None


def begin_run() -> None:
    """Give the session its key (from the URL or new), restore it once, pick up models finished in the background.

    Called by ``app.py`` at the top of every run, before the page.
    """
    ws = workspace()
    if ws is None:
        return
    key = session_key()
    if key is None:
        key = _adopt_or_create(ws, st.query_params.get(SESSION_PARAM))
        if key is None:
            return
        st.session_state[state.WS_SESSION] = key
        # a reload while a job of this session runs: this new Streamlit session takes it over (its curves,
        # its messages); the jobs belong to the key, not to the browser tab that started them
        from aff_app.ui import background  # (imports this module)

        background.adopt_running_jobs()
    if st.query_params.get(SESSION_PARAM) != key:
        # a page switch drops the query string: put the key back so a reload finds the session
        st.query_params[SESSION_PARAM] = key
    _sync_models(ws, key)


def _adopt_or_create(ws: Workspace, from_url: str | None) -> str | None:
    notices = []
    key = None
    if from_url:
        try:
            if ws.session_exists(from_url):
                key = from_url
                ws.touch_session(key)
                notices += _restore(ws, key)
                from aff_app.ui import background  # (imports this module)

                notices += background.interrupted_notices(ws, key)
            else:
                notices.append(("warning", "The session of this address is not in the workspace (it was ended, or "
                                           "the address is from another server): a new session started."))
        except WorkspaceError:
            notices.append(("warning", "The address holds a malformed session key: a new session started."))
    if key is None:
        try:
            key = ws.new_session()
        except AFFError as exc:
            st.session_state[state.WS_UNAVAILABLE] = f"Work is kept in this browser session only: {exc}"
            return None
    if notices:
        st.session_state[state.WS_NOTICE] = notices
    return key


def _restore(ws: Workspace, key: str) -> list[tuple[str, str]]:
    """Put the stored data and models of session ``key`` into this (empty) Streamlit session."""
    notices = []
    record = ws.session_state(key)
    if record.data_key is not None and state.get_trajectory() is None:
        try:
            traj = ws.get_data(record.data_key)
        except WorkspaceError as exc:
            notices.append(("error", f"The session's data could not be restored: {exc}"))
        else:
            st.session_state[state.TRAJECTORY] = traj
            st.session_state[state.DEFAULT_SAMPLE_TRIED] = True  # never replace restored data by the sample
    return notices


def _sync_models(ws: Workspace, key: str) -> None:
    """Add the session's stored models that the registry lacks (a restore, or a fit finished in the background)."""
    from aff_app.ui import model_widgets as mw

    registry = mw.get_registry()
    try:
        stored = ws.session_models(key)
    except WorkspaceError:
        return
    have = registry.uid_names()
    failures = st.session_state.setdefault(state.WS_SKIPPED, set())
    notices = []
    for entry in stored:
        if entry.id in have or entry.id in failures:
            continue
        try:
            add_stored(ws, entry, registry)
        except WorkspaceError as exc:
            failures.add(entry.id)
            notices.append(("error", f"Model {entry.name!r} was not restored: {exc}"))
    if notices:
        st.session_state.setdefault(state.WS_NOTICE, []).extend(notices)


def add_stored(ws: Workspace, entry: ModelEntry, registry: ModelRegistry | None = None) -> TrainedModel:
    """Put the stored model ``entry`` into the session's registry (under its stored id) without writing it back.

    Raises
    ------
    WorkspaceError
        The file is missing, damaged or not a model file (the entry is then reported, never loaded).
    """
    from aff_app.ui import model_widgets as mw

    registry = mw.get_registry() if registry is None else registry
    trained = _MODELS.get(ws, entry.id)
    return registry.add(trained.force, name=registry.unique_name(entry.name), energy=trained.energy,
                        data_fingerprint=entry.data_key or trained.force.record.data_fingerprint,
                        metrics=entry.metrics, uid=entry.id, notify=False,
                        source="trained" if entry.cache_key is not None or trained.force.record.seed is not None
                        else "uploaded")


def remember_data(traj: Trajectory) -> None:
    """Store ``traj`` (once per content) and make it the session's data in the workspace."""
    ws, key = workspace(), session_key()
    if ws is None or key is None:
        return
    try:
        entry = ws.put_data(traj)
        ws.attach(key, data_key=entry.key)
    except AFFError as exc:
        st.session_state.setdefault(state.WS_NOTICE, []).append(
            ("warning", f"The data is not kept in the workspace ({exc}); it stays in this browser session only."))


def mirror(event: str, entry: TrainedModel, old_name: str | None) -> None:
    """The registry's ``on_change``: write the session's model changes through to the workspace."""
    ws, key = workspace(), session_key()
    if ws is None or key is None:
        return
    try:
        if event == "add":
            data_key = entry.data_fingerprint if _data_stored(ws, entry.data_fingerprint) else None
            ws.put_model(pipeline.Trained(force=entry.force, energy=entry.energy), name=entry.name,
                         data_key=data_key, metrics=entry.metrics, model_id=entry.uid)
            ws.attach(key, model_id=entry.uid)
        elif event == "rename":
            ws.rename_model(entry.uid, entry.name)
        elif event == "remove":
            # the file stays stored (other sessions, the fit cache); the Workspace page deletes it for good
            ws.detach_model(key, entry.uid)
        elif event == "metrics" and ws.model_entry(entry.uid).metrics is None:
            # only a model stored without them (an upload): a shared fit keeps the metrics of its own split
            ws.set_metrics(entry.uid, entry.metrics)
    except WorkspaceError as exc:
        if "no stored model" in str(exc):
            return  # a model that never reached the workspace (it said so when it was added)
        what = {"add": f"{entry.name!r} is not kept in the workspace ({exc}); it stays in this browser session "
                       "only — download it on the Train page to keep it.",
                "rename": f"The new name {entry.name!r} is used in this session only: the workspace refused it "
                          f"({exc}). After a reload the model has its stored name.",
                "remove": f"{entry.name!r} was removed from this session, but the workspace could not record it "
                          f"({exc}): a reload may bring it back.",
                "metrics": f"The metrics of {entry.name!r} are not kept in the workspace ({exc})."}[event]
        st.session_state.setdefault(state.WS_NOTICE, []).append(("warning", what))


def _data_stored(ws: Workspace, fingerprint: str | None) -> bool:
    if not fingerprint:
        return False
    try:
        ws.data_entry(fingerprint)
    except WorkspaceError:
        return False
    return True


def attach_registry(registry: ModelRegistry) -> ModelRegistry:
    """Make ``registry`` write through to the workspace (a registry put into the session by a test keeps its own)."""
    if registry.on_change is None:
        registry.on_change = mirror
    return registry


def notices() -> None:
    """Messages of the restore and of failed writes (shown once, at the top of the page)."""
    for level, text in st.session_state.pop(state.WS_NOTICE, None) or []:
        getattr(st, level)(text)

