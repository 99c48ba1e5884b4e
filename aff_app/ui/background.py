"""Fits that run in the background: one queue per server, progress in the sidebar of every page.

A fit used to run inside the Train page's script, so any click (another page,
another widget) stopped it. Now the Train button hands the fit to the server's
:class:`aff_app.jobqueue.JobQueue` (one worker thread per job, at most one
heavy job per core, fair across sessions, memory budget over running jobs):

* an identical request (:func:`aff_app.workspace.fit_key`) is answered from the
  workspace at once when it was fitted before, and joins the running job when it
  is being fitted now — twenty students pressing Train with the defaults cause
  one fit;
* when the job ends it stores the model in the workspace and attaches it to
  every session that asked for it (``on_done``, in the worker), so the model
  reaches a session even if it switched page, reloaded, or was not looking;
* the Train page waits for the job in place (progress bar and Cancel) while
  the user stays; :func:`sidebar` shows every job of the session, on every
  page, refreshing once a second only while one is queued or running.

No script context exists in a worker thread: everything a job needs (the
workspace, the names, the sessions) is captured when it is submitted.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from aff_app.io.trajectory import Trajectory
from aff_app.jobqueue import Job, JobQueue, QueueError
from aff_app.symmetry import SymmetryInfo
from aff_app.workflows import pipeline
from aff_app.workflows.kinds import uses_symmetry
from aff_app.workflows.predictions import HeldOut
from aff_app.workflows.registry import TrainedModel
from aff_app.workspace import THIS_SERVER, JobRecord, Workspace, WorkspaceError, fit_key

from aff_app.ui import session_store, state

log = logging.getLogger(__name__)

#: Environment variable: how many heavy jobs run at once (default: one per core).
MAX_JOBS_ENV = "AFF_MAX_JOBS"
#: How often the sidebar and a waiting page look at a running job, s.
POLL_S = 1.0
#: Finished jobs the sidebar still lists.
SHOWN_FINISHED = 4


def _cores() -> int:
    # the cores this process may use (taskset, container limits), not the machine's
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def _max_running() -> int:
    raw = os.environ.get(MAX_JOBS_ENV, "").strip()
    try:
        return max(int(raw), 1) if raw else _cores()
    except ValueError:
        return _cores()


@st.cache_resource(show_spinner=False)
def _queue() -> JobQueue:
    # finished jobs hold their models until collected: keep few (the workspace has them anyway)
    return JobQueue(max_running=_max_running(), keep_finished=16)


def get_queue() -> JobQueue:
    """The server's job queue (one per process, shared by every session)."""
    return _queue()


def owner() -> str:
    """Who the session's jobs belong to: its workspace key (shared by its tabs), else a key of this session."""
    key = session_store.session_key()
    if key is not None:
        return key
    return st.session_state.setdefault(state.JOB_OWNER, uuid.uuid4().hex)


def _recorder(ws: Workspace | None, session: str):
    """``on_change`` of a job: its record in the workspace, so that a server restart reports it (and keeps
    what it finished when its partial result can be written as JSON: ``partial.to_json()``)."""
    if ws is None:
        return None

    def on_change(job: Job, event: str) -> None:
        partial = None
        if event == "partial":
            to_json = getattr(job.partial, "to_json", None)
            if not callable(to_json):
                return  # nothing a restart could use (e.g. MD frames): no write
            partial = to_json()
        try:
            ws.record_job(JobRecord(id=job.id, session=session, kind=job.kind, label=job.label, state=job.state,
                                    server=THIS_SERVER, submitted=job.submitted, started=job.started,
                                    finished=job.finished, error=job.error, partial=partial))
        except WorkspaceError:
            log.warning("job %s could not be recorded in the workspace", job.id, exc_info=True)

    return on_change


# -- a fit as a job ------------------------------------------------------------------------------------------


@dataclass
class FitRequest:
    """One Train-page request, complete: everything the worker needs (no Streamlit in there)."""

    traj: Trajectory
    settings: pipeline.TrainSettings
    n_train: int
    n_test: int
    seed: int
    symmetry: SymmetryInfo | None
    name: str
    training_share: float = 0.8
    scheduler: object = None  # aff_app.parallel.SchedulerChoice for the GP fit's tasks; None: here (not in the key)

    @property
    def key(self) -> str:
        """The fit-cache key: same data, settings, split, test frames and symmetry = the same fit."""
        extra: dict = {"n_test": int(self.n_test)}
        if self.symmetry is not None and uses_symmetry(self.settings.mode):
            extra["pe_sets"] = [sorted(int(i) for i in s) for s in self.symmetry.pe_sets]
            extra["perms"] = np.asarray(self.symmetry.perms, dtype=int).tolist()
        return fit_key(self.traj.fingerprint, self.settings, self.n_train, self.seed, extra)


@dataclass
class FitOutcome:
    """What a finished fit job holds: the model, its held-out predictions and metrics, and where it is stored."""

    trained: pipeline.Trained
    held: HeldOut
    metrics: dict
    warnings: list[str] = field(default_factory=list)
    model_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    name: str = ""
    stored: bool = False
    storage_error: str = ""  # why it could not be stored (the sessions keep it in memory)


def _fit(request: FitRequest, job: Job) -> FitOutcome:
    """The worker: train, then predict the held-out frames (the same work the page used to do in its script)."""
    from aff_app.ui.model_widgets import held_report  # pure function (no Streamlit call)

    from aff_app.parallel import open_executor

    share = request.training_share
    # a Dask cluster is started (or reached) for this fit and closed with it; serial opens nothing
    with open_executor(request.scheduler) as executor:
        trained = pipeline.train(request.traj, n_train=request.n_train, n_test=request.n_test, seed=request.seed,
                                 settings=request.settings, symmetry=request.symmetry,
                                 progress=lambda f, m: job.report(share * f, m), executor=executor)
    held = pipeline.evaluate(trained.force, request.traj, energy=trained.energy, n_test=request.n_test,
                             seed=request.seed,
                             progress=lambda f, m: job.report(share + (1 - share) * f, "held-out predictions: " + m))
    timings = trained.force.record.timings
    timings.evaluation_s = held.predict_s
    timings.total_s = (timings.total_s or 0.0) + held.predict_s
    warnings = list(trained.warnings)
    if not np.all(np.isfinite(held.F_mean)):
        warnings.append("Some held-out force predictions are NaN or infinite: the metrics that depend on them are "
                        "shown as —. Retrain with a larger λ or without duplicate frames.")
    return FitOutcome(trained=trained, held=held, metrics=held_report(held, 0.95, "latent"), warnings=warnings,
                      name=request.name)


def _store(ws: Workspace | None, request: FitRequest, key: str):
    """``on_done`` of a fit job: store the model once and attach it to every session that asked for it."""

    def on_done(job: Job) -> None:
        outcome: FitOutcome = job.result
        if ws is None:
            return
        try:
            data_key = request.traj.fingerprint
            ws.put_data(request.traj)  # normally stored already (remember_data); content-addressed, so idempotent
            entry = ws.put_model(outcome.trained, name=request.name, data_key=data_key, cache_key=key,
                                 metrics=outcome.metrics, model_id=outcome.model_id)
        except Exception as exc:  # noqa: BLE001 - a fit of minutes is never lost to a failed write
            log.exception("the model of job %s could not be stored; the waiting sessions keep it in memory", job.id)
            outcome.storage_error = str(exc) or type(exc).__name__
            return  # the sessions that wait take the model from the job instead (collect), and say so
        session_store.remember_model(ws, entry.id, outcome.trained)
        outcome.name, outcome.stored = entry.name, True
        for session in list(job.sessions):
            try:
                ws.attach(session, model_id=entry.id)
            except WorkspaceError:
                pass  # a session that was forgotten meanwhile

    return on_done


@dataclass(frozen=True)
class Submitted:
    """What pressing Train did: reused a stored fit, joined an identical running one, or queued a new job."""

    how: str  # 'reused', 'joined', 'queued'
    job: Job | None = None
    entry: TrainedModel | None = None


def submit_fit(request: FitRequest, *, cost_bytes: int, estimate_s: float | None, label: str) -> Submitted:
    """Answer a fit request from the workspace, or by joining or queueing a job (see the module docstring).

    Raises
    ------
    aff_app.jobqueue.QueueError
        The fit alone is above the memory budget.
    """
    ws = session_store.workspace()
    key = request.key
    if ws is not None:
        cached = ws.cached_model(key)
        have = mw_registry().uid_names()
        if cached is not None and cached.id in have:
            return Submitted("in session", entry=mw_registry().get(have[cached.id]))
        if cached is not None:
            try:
                entry = session_store.add_stored(ws, cached)
                ws.attach(session_store.session_key(), model_id=cached.id)
            except WorkspaceError:
                pass  # a damaged cached file: fit again
            else:
                return Submitted("reused", entry=entry)
    queue = get_queue()
    running = queue.find(key)
    job = queue.submit(owner(), "training", label, lambda j: _fit(request, j), key=key, cost_bytes=int(cost_bytes),
                       estimate_s=estimate_s, on_done=_store(ws, request, key), on_change=_recorder(ws, owner()))
    _watch(job)
    return Submitted("joined" if running is job else "queued", job=job)


def submit_task(kind: str, label: str, task, *, cost_bytes: int = 0, estimate_s: float | None = None) -> Job:
    """Queue any long job of this session (``task(job)``, reporting through ``job.report``, keeping partial
    results through ``job.keep``); collected by :func:`collect_finished` when it ends."""
    job = get_queue().submit(owner(), kind, label, task, cost_bytes=int(cost_bytes), estimate_s=estimate_s,
                             on_change=_recorder(session_store.workspace(), owner()))
    _watch(job)
    return job


def mw_registry():
    """The session's registry (``model_widgets.get_registry``; imported late: it imports this module's users)."""
    from aff_app.ui import model_widgets as mw

    return mw.get_registry()


def adopt_running_jobs() -> None:
    """Watch the queued and running jobs of this session's key (called once, when a reloaded tab restores it)."""
    for job in get_queue().jobs_for(owner(), active_only=True):
        _watch(job)


def _watch(job: Job) -> None:
    watched = st.session_state.setdefault(state.JOBS_WATCHED, [])
    if job.id not in watched:
        watched.append(job.id)


def cancel(job_id: str) -> None:
    """``on_click`` of a Cancel button: leave the job (it stops unless another session also waits for it)."""
    try:
        job = get_queue().cancel(job_id, owner())
    except QueueError:
        return  # finished and forgotten meanwhile
    if owner() not in job.sessions:
        # other sessions wait for the same fit: it goes on for them, and this session no longer takes it
        watched = st.session_state.get(state.JOBS_WATCHED) or []
        st.session_state[state.JOBS_WATCHED] = [j for j in watched if j != job_id]
        notice = st.session_state.get(state.TRAIN_NOTICE)
        notices = [notice] if isinstance(notice, tuple) else list(notice or [])
        st.session_state[state.TRAIN_NOTICE] = notices + [(
            "info", f"You left the fit {job.label}: another session waits for the same fit, so it goes on for "
                    "them; no model was added to this session.")]


# -- the session picks up what its jobs finished --------------------------------------------------------------


def collect(job: Job) -> TrainedModel | None:
    """The model a finished fit job made, in this session's registry (added when the workspace could not)."""
    from aff_app.ui import model_widgets as mw

    if job.state != "done" or not isinstance(job.result, FitOutcome):
        return None
    outcome: FitOutcome = job.result
    registry = mw.get_registry()
    have = registry.uid_names()
    if outcome.model_id in have:
        entry = registry.get(have[outcome.model_id])
    else:
        entry = registry.add(outcome.trained.force, name=registry.unique_name(outcome.name or "model"),
                             energy=outcome.trained.energy, data_fingerprint=outcome.trained.force.record.data_fingerprint,
                             metrics=outcome.metrics, uid=outcome.model_id, notify=not outcome.stored)
    ws, key = session_store.workspace(), session_store.session_key()
    if outcome.stored and ws is not None and key is not None:
        try:  # idempotent; covers a session that joined after the job attached its waiting sessions
            ws.attach(key, model_id=outcome.model_id)
        except WorkspaceError:
            pass
    # the held-out predictions were made by the job: the Predictions page shows them without recomputing
    fp = outcome.trained.force.record.data_fingerprint
    mw.remember_held_out((entry.uid, fp, int(outcome.held.n_frames), int(outcome.trained.force.record.seed or 0)),
                         outcome.held)
    return entry


#: Who stores a finished job of each kind in the session (module:function, imported when needed).
COLLECTORS = {
    "learning_curve": "aff_app.ui.compare_sections:collect_curves",
    "md": "aff_app.ui.md_sections:collect_md",
    "design": "aff_app.ui.design_sections:collect_design",
    "simulation": "aff_app.ui.data_sections:collect_simulation",
    "conservation": "aff_app.ui.compare_sections:collect_conservation",
}


#: Who restores what an interrupted job had finished (its record's JSON ``partial``), per kind.
RESTORERS = {"learning_curve": "aff_app.ui.compare_sections:restore_curves"}
#: What each kind of job is called in messages.
KIND_TEXT = {"training": "The fit", "learning_curve": "The learning-curve run", "md": "The MD run",
             "design": "The sequential design", "simulation": "The simulation",
             "conservation": "The conservation check"}


def interrupted_notices(ws: Workspace, key: str) -> list[tuple[str, str]]:
    """The jobs of session ``key`` that a server stop interrupted, told once (what they had finished is restored).

    Called when a session is restored (a reload, or every tab reconnecting after a restart).
    """
    notices = []
    try:
        ws.interrupt_stale_jobs()
        records = [r for r in ws.session_jobs(key) if r.state == "interrupted" and not r.reported]
    except WorkspaceError as exc:
        return [("warning", f"The session's job records could not be read: {exc}")]
    for record in records:
        what = KIND_TEXT.get(record.kind, "A job")
        text = f"{what} *{record.label}* was stopped by a server restart before it finished"
        kept = None
        if record.partial and record.kind in RESTORERS:
            module, name = RESTORERS[record.kind].split(":")
            try:
                kept = getattr(importlib.import_module(module), name)(record)
            except (ValueError, TypeError, KeyError) as exc:  # a record of another version: say so, keep going
                log.warning("the partial result of job %s could not be restored: %s", record.id, exc)
        text += f": {kept}." if kept else ": nothing of it was kept; run it again."
        notices.append(("warning", text))
        try:
            ws.mark_reported(record.id)
        except WorkspaceError:
            pass
    return notices


def collect_finished() -> list[tuple[Job, TrainedModel | None]]:
    """Every watched job of this session that finished since the last look: (job, its model or None)."""
    watched = st.session_state.get(state.JOBS_WATCHED) or []
    if not watched:
        return []
    queue = get_queue()
    out, still = [], []
    for job_id in watched:
        try:
            job = queue.get(job_id)
        except QueueError:
            continue
        if job.active:
            still.append(job_id)
            continue
        entry = collect(job)
        out.append((job, entry))
        st.session_state.setdefault(state.JOBS_FINISHED, []).append(job_id)
        if job.kind == "training":
            from aff_app.ui.train_sections import job_notices  # (it imports this module)

            notice = st.session_state.get(state.TRAIN_NOTICE)
            notices = [notice] if isinstance(notice, tuple) else list(notice or [])
            st.session_state[state.TRAIN_NOTICE] = notices + job_notices(job, entry)
        elif job.kind in COLLECTORS:
            module, name = COLLECTORS[job.kind].split(":")
            getattr(importlib.import_module(module), name)(job)  # (those modules import this one)
    st.session_state[state.JOBS_WATCHED] = still
    return out


def wait_here(job: Job, *, cancel_key: str, cancel_label: str = "Cancel", where=None, on_tick=None,
              tick_s: float = 1.0) -> Job:
    """Show ``job``'s progress (and a Cancel button) in the page until it ends; return it.

    A click elsewhere stops this script run at its next progress update — the
    job goes on, and the sidebar keeps showing it. ``on_tick(job)`` draws what
    the job has so far (e.g. live traces from ``job.partial``), at most every
    ``tick_s`` seconds and once more when it ends.
    """
    queue = get_queue()
    where = where or st
    where.button(cancel_label, key=cancel_key, on_click=cancel, args=(job.id,), icon="⏹️",
                 help="Stops the fit at its next progress report (another session waiting for the same fit keeps "
                      "it going); the data and the session's models stay as they were.")
    bar = where.progress(0.0, text=job.status_text(queue.position(job)))
    last_tick = -1e9
    while not queue.wait(job, timeout=0.25):
        bar.progress(job.fraction, text=job.status_text(queue.position(job)))
        if on_tick is not None and time.monotonic() - last_tick >= tick_s:
            last_tick = time.monotonic()
            on_tick(job)
    bar.progress(job.fraction, text=job.status_text())
    if on_tick is not None:
        on_tick(job)
    return job


def active_job(kind: str) -> Job | None:
    """This session's queued or running job of ``kind`` (a page runs one of its kind at a time), or None."""
    active = [j for j in get_queue().jobs_for(owner(), active_only=True) if j.kind == kind]
    return active[-1] if active else None


def run_here(job: Job, *, cancel_key: str, cancel_label: str, caption: str, on_tick=None, tick_s: float = 1.0) -> Job:
    """A page's job while the user stays: its caption, progress, Cancel and live view (``on_tick(job)``, drawn
    below the caption), then — once it ended — a bug re-raised as one and the result collected into the session.

    Any click elsewhere stops this script run; the job goes on (the sidebar shows it) and its result reaches
    the session on a later run (:func:`collect_finished`).
    """
    from aff_app.errors import AFFError

    running = st.empty()
    with running.container():
        st.caption(caption)
        live = st.empty()
        wait_here(job, cancel_key=cancel_key, cancel_label=cancel_label, tick_s=tick_s,
                  on_tick=None if on_tick is None else (lambda j: on_tick(j, live)))
    running.empty()
    if job.state == "failed" and job.exception is not None and not isinstance(job.exception, AFFError):
        raise job.exception  # a bug in aff_app is shown as one
    collect_finished()
    return job


def show_notices(key: str) -> None:
    """Show, once, what finished jobs left under ``st.session_state[key]``: a list of (level, text)."""
    collect_finished()  # (app.py does it on every run; AppTest reruns only the page)
    for level, text in st.session_state.pop(key, None) or []:
        getattr(st, level)(text, icon="⏹️" if level == "warning" else None)


# -- the sidebar --------------------------------------------------------------------------------------------------


def _panel() -> None:
    queue = get_queue()
    jobs = queue.jobs_for(owner())
    active = [j for j in jobs if j.active]
    finished = [j for j in jobs if not j.active][-SHOWN_FINISHED:]
    if not active and not finished:
        return
    st.markdown("**Jobs**")
    now = time.time()
    for job in active:
        st.progress(job.fraction, text=f"{job.label}: {job.status_text(queue.position(job), now=now)}")
        st.button("Cancel", key=f"job_cancel_{job.id}", on_click=cancel, args=(job.id,), icon="⏹️")
    for job in reversed(finished):
        icon = {"done": "✅", "failed": "❌", "cancelled": "⏹️"}.get(job.state, "")
        st.caption(f"{icon} {job.label}: {job.status_text(now=now)}")
    seen = st.session_state.get(state.JOBS_SEEN_ACTIVE, set())
    now_active = {j.id for j in active}
    st.session_state[state.JOBS_SEEN_ACTIVE] = now_active
    if seen - now_active:
        # a job ended while this panel refreshed on its own: rerun the page so that it shows the new model
        st.rerun(scope="app")


_live_panel = st.fragment(run_every=POLL_S)(_panel)
_still_panel = st.fragment(_panel)


def sidebar() -> None:
    """The session's jobs in the sidebar, on every page; it refreshes itself only while one is queued or running."""
    active = get_queue().jobs_for(owner(), active_only=True)
    # this full run draws the page after the sidebar: only a later refresh of the panel alone needs a rerun
    st.session_state[state.JOBS_SEEN_ACTIVE] = {j.id for j in active}
    with st.sidebar:
        if active:
            _live_panel()
        else:
            _still_panel()
