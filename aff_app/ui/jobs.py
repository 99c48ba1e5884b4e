"""Long runs in the app (training, learning curves, simulation): progress, Cancel, and what survives an interruption.

How Streamlit (1.67, ``runner.fastReruns`` on by default) treats a click while
a script is still running: the running script is asked to stop and a new run
starts at once with the click applied. The old run stops at its next Streamlit
call (``StopException``, a BaseException) — for a long job, at its next
progress report, because :func:`progress_callback` updates an ``st.progress``
bar. So any click (the Cancel button, another widget, another page) ends the
job; the session (data, models) is untouched because a job changes the session
only after it has finished.

This module makes that explicit and safe:

* :func:`begin` records the running job in ``state.ACTIVE_JOB`` with an
  :class:`aff_app.cancel.CancelToken`;
* :func:`cancel_button`'s ``on_click`` sets the token; :func:`progress_callback`
  raises :class:`aff_app.cancel.Cancelled` when it is set (so a job running in a
  script whose Streamlit calls do not stop it still stops);
* :func:`still_current` is checked by the job right before it changes the
  session (e.g. registers a model): an interrupted job never adds anything;
* :func:`report_interrupted`, at the top of the page that owns a kind of job,
  turns a job record left behind by an interrupted run into a message
  ("Training cancelled …") and cancels its token;
* :func:`end` clears the record when the job finished (or failed) normally.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import streamlit as st

from aff_app.cancel import Cancelled, CancelToken

from aff_app.ui import state

Progress = Callable[[float, str], None]

#: What each kind of job is called in messages.
KIND_TEXT = {"training": "Training", "learning_curve": "Learning curves", "simulation": "Simulation",
             "conservation": "The conservation check", "design": "Sequential design",
             "md": "The MD run"}


def begin(kind: str, label: str) -> CancelToken:
    """Record a job of ``kind`` ('training', 'learning_curve', 'simulation') as running; return its token."""
    token = CancelToken(label)
    st.session_state[state.ACTIVE_JOB] = {"kind": kind, "label": label, "token": token}
    return token


def end(token: CancelToken) -> None:
    """The job of ``token`` finished (successfully or with an error that was shown): forget it."""
    job = st.session_state.get(state.ACTIVE_JOB)
    if isinstance(job, dict) and job.get("token") is token:
        st.session_state.pop(state.ACTIVE_JOB, None)


def still_current(token: CancelToken) -> bool:
    """True while ``token`` is the session's running job and was not cancelled."""
    job = st.session_state.get(state.ACTIVE_JOB)
    return (not token.cancelled) and isinstance(job, dict) and job.get("token") is token


def ensure_current(token: CancelToken, message: str = "saving the result") -> None:
    """Raise :class:`Cancelled` unless the job may still change the session (call right before it does)."""
    if not still_current(token):
        token.cancel()
        raise Cancelled(f"{token.what} cancelled (at: {message})")


def cancel_active() -> None:
    """``on_click`` of the Cancel button: ask the running job to stop."""
    job = st.session_state.get(state.ACTIVE_JOB)
    if isinstance(job, dict) and isinstance(job.get("token"), CancelToken):
        job["token"].cancel()
        job["cancel_clicked"] = True


def cancel_button(key: str, label: str = "Cancel") -> None:
    """A Cancel button for the job that is about to run in this script run.

    Clicking it reruns the page: Streamlit stops this run at the job's next
    progress report and :func:`report_interrupted` says so on the new run.
    """
    st.button(label, key=key, on_click=cancel_active, icon="⏹️",
              help="Stops the run at its next progress report; the data and the models of the session stay as they "
                   "were.")


def report_interrupted(kind: str, *, where=None) -> bool:
    """Show a message when a job of ``kind`` was interrupted; returns True if one was.

    A job record still present at the top of a new run means the run that
    started the job was stopped before the job finished (Cancel, another click,
    a page change). Its token is cancelled so that a still-running thread of
    the old run can never store a result.
    """
    job = st.session_state.get(state.ACTIVE_JOB)
    if not isinstance(job, dict) or job.get("kind") != kind:
        return False
    st.session_state.pop(state.ACTIVE_JOB, None)
    token = job.get("token")
    if isinstance(token, CancelToken):
        token.cancel()
    show_cancelled(kind, job.get("label", ""), where=where, clicked=bool(job.get("cancel_clicked")))
    return True


def show_cancelled(kind: str, label: str, *, where=None, clicked: bool = True) -> None:
    """The message of a cancelled job (``where``: a container, default the page)."""
    what = KIND_TEXT.get(kind, "The run")
    how = "cancelled" if clicked else "interrupted (the page was rerun before it finished)"
    tail = {
        "training": "no model was added; the data and the session's models are unchanged.",
        "learning_curve": "no curves were stored; the data and the session's models are unchanged.",
        "simulation": "no trajectory was stored; the loaded data and the session's models are unchanged.",
    }.get(kind, "the session is unchanged.")
    text = f"{what} {how}" + (f" ({label})" if label else "") + f": {tail}"
    (where or st).warning(text, icon="⏹️")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"


def progress_text(message: str, fraction: float, elapsed_s: float, estimate_s: float | None = None) -> str:
    """The bar's text: the step, the fraction, and (after 2 s) the elapsed and the likely remaining time.

    The remaining time extrapolates the elapsed time once a fifth is done
    (elapsed·(1 − f)/f); before that it is the estimate minus the elapsed time,
    when there is an estimate.
    """
    text = f"{message} ({fraction:.0%})"
    if elapsed_s < 2.0:
        return text
    text += f" · {_duration(elapsed_s)} elapsed"
    if fraction >= 0.2:
        left = elapsed_s * (1.0 - fraction) / fraction
    elif estimate_s is not None:
        left = max(estimate_s - elapsed_s, 0.0)
    else:
        return text
    return text + (", finishing" if left < 1.0 else f", about {_duration(left)} left")


def progress_callback(bar, token: CancelToken | None = None, *, estimate_s: float | None = None) -> Progress:
    """A ``progress(fraction, message)`` callback that drives ``bar`` (an ``st.progress``) and honours ``token``.

    Thread-safe: the library may report from worker threads (the per-set
    factorisations run in a thread pool), where Streamlit has no session
    context; those reports are kept and shown at the next report from the
    script's own thread. Every report first checks ``token`` (raising
    :class:`Cancelled` in whichever thread reported). Updating the bar is a
    Streamlit call, so it is also where Streamlit stops a run that a click has
    superseded. The text carries the elapsed and remaining time
    (:func:`progress_text`; ``estimate_s`` until a fifth is done).
    """
    owner = threading.get_ident()
    start = time.perf_counter()
    latest: list = [0.0, ""]

    def update(fraction: float, message: str) -> None:
        if token is not None:
            token.check(message)
        try:
            f = min(max(float(fraction), 0.0), 1.0)
        except (TypeError, ValueError):
            f = latest[0]
        latest[:] = [max(f, latest[0]), message]
        if threading.get_ident() != owner:
            return
        bar.progress(latest[0], text=progress_text(latest[1], latest[0], time.perf_counter() - start, estimate_s))

    return update
