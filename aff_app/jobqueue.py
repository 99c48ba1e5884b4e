"""A process-wide queue of long jobs (fits, learning curves, MD) shared by all app sessions.

A Streamlit server runs every browser session in one process. A long job run
inside a page script dies with that script run (any click reruns it), and ten
sessions each starting a fit at once would oversubscribe the cores and the
memory. :class:`JobQueue` runs each job in its own worker thread, independent
of the script that submitted it, and decides when it may start:

* at most ``max_running`` jobs run at once (default: one per core, because a
  fit keeps a core busy with dense linear algebra);
* a job starts only when its ``cost_bytes`` fits next to what the running jobs
  already hold (``memory_budget_bytes``); the head of the queue is never
  overtaken by a smaller job, so a big job cannot be starved — but when nothing
  runs it always starts (its cost alone was checked against the budget at
  submission);
* the queue is fair across sessions: jobs start round robin over the sessions
  that own them, so one session's ten jobs do not delay another session's one
  (see :meth:`JobQueue._order_locked` for the exact rule);
* identical requests (same ``key``) while the first is still active share one
  job: the second session subscribes to it instead of computing it again;
* a job can be cancelled while queued (it never runs) or running (it stops at
  its next progress report through its :class:`aff_app.cancel.CancelToken`).
  A job with several subscribers goes on until the last one cancels.

Pure library: no Streamlit. The task a job runs is ``task(job)``; it reports
with :meth:`Job.report` (the usual ``progress(fraction, message)`` callback,
which raises :class:`aff_app.cancel.Cancelled` once the job is cancelled) and
may store what it has finished so far with :meth:`Job.keep`.

Examples
--------
>>> q = JobQueue(max_running=1, memory_budget_bytes=2**30)
>>> job = q.submit("session-a", "training", "AFF, M = 10", lambda job: 42)
>>> q.wait(job, timeout=5)
True
>>> job.state, job.result
('done', 42)
>>> q.close()
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any, Callable

from aff_app.cancel import Cancelled, CancelToken
from aff_app.errors import AFFError

__all__ = ["JOB_STATES", "QueueError", "Job", "JobQueue"]

log = logging.getLogger(__name__)

#: Every state a job can be in; the first two are "active".
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
_ACTIVE = ("queued", "running")


class QueueError(AFFError, ValueError):
    """A request the queue refuses (over the memory budget, unknown job id, bad arguments)."""


def _duration(s: float) -> str:
    """'12 s', '3 min 05 s' (same format as the in-page progress text of ``aff_app.ui.jobs``)."""
    s = max(float(s), 0.0)
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"


def _gb(n_bytes: float) -> str:
    """'1.5 GB', '0.0012 GB': three significant digits (GB = 2**30 bytes, as ``AFF_MEMORY_BUDGET_GB``)."""
    return f"{n_bytes / 2**30:.3g} GB"


def _notify(job: "Job", event: str) -> None:
    """Call the job's ``on_change`` hook; a failing hook is logged and never stops the job."""
    if job.on_change is None:
        return
    try:
        job.on_change(job, event)
    except Exception:  # noqa: BLE001 - a record that cannot be written must not cost the user the job
        log.exception("the on_change hook of job %s (%s) failed at %r", job.id, job.label, event)


def _describe(partial: Any) -> str:
    """A few words for a kept partial result: its own ``describe()``, a short string as is, a collection by its size."""
    describe = getattr(partial, "describe", None)
    if callable(describe):
        try:
            return str(describe())
        except Exception:  # noqa: BLE001 - a status text never fails because of the task's object
            return f"a partial {type(partial).__name__}"
    if isinstance(partial, str):
        return partial if len(partial) <= 60 else partial[:57] + "..."
    if isinstance(partial, Sized):
        n = len(partial)
        return f"{n} item" + ("" if n == 1 else "s")
    return f"a partial {type(partial).__name__}"


@dataclass(eq=False)
class Job:
    """One long job: what it is, who waits for it, and how far it got.

    ``eq=False`` because a job is an identity (compared and hashed by object),
    never a value. The queue changes ``state``, ``started``, ``finished``,
    ``result`` and ``error``; the task changes ``fraction``/``message`` (through
    :meth:`report`) and ``partial`` (through :meth:`keep`).

    Attributes
    ----------
    id : str
        uuid4 hex.
    kind : str
        'training', 'learning_curve', 'md', ...
    label : str
        Short human name, e.g. 'AFF, M = 200'.
    key : str or None
        Deduplication key: an active job with the same key is shared.
    cost_bytes : int
        Memory the job holds while running (checked against the queue's budget).
    sessions : list of str
        Subscribed sessions; the first is the one that submitted (it owns the
        job's place in the fair order).
    submitted : float
        ``time.time()`` at submission.
    estimate_s : float or None
        Expected run time, used for the remaining time until a fifth is done.
    state : str
        One of :data:`JOB_STATES`.
    fraction : float
        Progress in [0, 1], never decreasing.
    message : str
        The task's latest progress message.
    started, finished : float or None
        ``time.time()`` when the job started running / reached a final state.
    result : Any
        The task's return value (set before ``on_done`` runs).
    error : str or None
        Why the job failed: the message of an :class:`AFFError`, else
        ``"internal error (TypeName): message"``.
    partial : Any
        The last value the task passed to :meth:`keep` (kept after a cancel or failure).
    token : CancelToken
        Set by :meth:`JobQueue.cancel`; checked by every :meth:`report`.
    """

    id: str
    kind: str
    label: str
    key: str | None
    cost_bytes: int
    sessions: list[str]
    submitted: float
    estimate_s: float | None = None
    state: str = "queued"
    fraction: float = 0.0
    message: str = ""
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    partial: Any = None
    token: CancelToken = field(default_factory=CancelToken)
    # The exception a failed task raised (a page that waits for the job re-raises a bug as a bug).
    exception: BaseException | None = field(default=None, repr=False)
    # Submission order: the tie-breaker of the fair order (time.time() can repeat).
    seq: int = field(default=0, repr=False)
    # Guards fraction/message: the task may report from several threads (thread pools).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # on_change(job, event) with event 'submitted', 'started', 'partial' or 'finished' (e.g. writes a record
    # that outlives the server); never called under the queue's lock, its errors are logged, not raised.
    on_change: Callable[["Job", str], None] | None = field(default=None, repr=False, compare=False)

    def report(self, fraction: float, message: str) -> None:
        """The task's progress callback: stop if cancelled, else record the progress.

        Raises :class:`aff_app.cancel.Cancelled` once the job was cancelled, so a
        task stops at its next report. The fraction is clipped to [0, 1] and
        never goes back (parallel parts may report out of order); a
        non-numeric or non-finite fraction keeps the previous one.
        """
        self.token.check(message)
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            f = math.nan
        with self._lock:
            if math.isfinite(f):
                self.fraction = max(self.fraction, min(max(f, 0.0), 1.0))
            self.message = str(message)

    def keep(self, partial: Any) -> None:
        """Store what the task has finished so far (survives a cancel or a failure)."""
        self.partial = partial
        _notify(self, "partial")

    @property
    def active(self) -> bool:
        """True while queued or running."""
        return self.state in _ACTIVE

    def elapsed_s(self, now: float | None = None) -> float:
        """Seconds spent running: until ``now`` while running, until the end once finished, 0 if it never ran."""
        if self.started is None:
            return 0.0
        end = self.finished if self.finished is not None else (time.time() if now is None else now)
        return max(end - self.started, 0.0)

    def remaining_s(self, now: float | None = None) -> float | None:
        """Likely seconds left, or None when unknown.

        Running: once a fifth is done, the elapsed time extrapolated
        (elapsed·(1 − f)/f); before that, the estimate minus the elapsed time
        (None without an estimate). Queued: the whole estimate (None without
        one). Finished: 0.
        """
        if self.state == "queued":
            return None if self.estimate_s is None else max(float(self.estimate_s), 0.0)
        if self.state != "running":
            return 0.0
        elapsed = self.elapsed_s(now)
        f = self.fraction
        if f >= 0.2:
            return elapsed * (1.0 - f) / f
        if self.estimate_s is not None:
            return max(float(self.estimate_s) - elapsed, 0.0)
        return None

    def status_text(self, position: int | None = None, now: float | None = None) -> str:
        """Short human text of the job's state.

        Examples: 'queued (position 2)', 'running 40% · 12 s elapsed, about 18 s
        left · fitting set 3', 'done in 31 s', 'failed: <error>', 'cancelled
        after 5 s (kept: 3 items)'.
        """
        if self.state == "queued":
            return "queued" if position is None else f"queued (position {position})"
        if self.state == "running":
            text = f"running {self.fraction:.0%} · {_duration(self.elapsed_s(now))} elapsed"
            left = self.remaining_s(now)
            if left is not None:
                text += ", finishing" if left < 1.0 else f", about {_duration(left)} left"
            return text + (f" · {self.message}" if self.message else "")
        if self.state == "done":
            return f"done in {_duration(self.elapsed_s(now))}"
        if self.state == "failed":
            return f"failed: {self.error}"
        # cancelled
        text = ("cancelled before it started" if self.started is None
                else f"cancelled after {_duration(self.elapsed_s(now))}")
        return text + (f" (kept: {_describe(self.partial)})" if self.partial is not None else "")


class JobQueue:
    """Runs jobs of many sessions in worker threads with bounded concurrency and memory.

    Parameters
    ----------
    max_running : int, optional
        Jobs running at once; default ``os.cpu_count()`` (one heavy job per core).
    memory_budget_bytes : int, optional
        What running jobs may hold together; default
        :func:`aff_app.gp.budget.default_budget_bytes`.
    keep_finished : int
        Finished jobs kept in memory (newest first); older ones are forgotten.

    Notes
    -----
    All state lives under one :class:`threading.Condition`; tasks and
    ``on_done`` callbacks never run under it (a task reporting progress
    touches only its own job).
    """

    def __init__(self, max_running: int | None = None, memory_budget_bytes: int | None = None,
                 keep_finished: int = 500) -> None:
        if max_running is None:
            max_running = os.cpu_count() or 1
        if memory_budget_bytes is None:
            # Imported here: aff_app.gp pulls in the numerical stack, which a
            # queue with an explicit budget (tests, tools) does not need.
            from aff_app.gp.budget import default_budget_bytes

            memory_budget_bytes = default_budget_bytes()
        if int(max_running) < 1:
            raise QueueError(f"max_running must be at least 1, got {max_running}")
        if int(memory_budget_bytes) <= 0:
            raise QueueError(f"the memory budget must be positive, got {memory_budget_bytes} bytes")
        if int(keep_finished) < 0:
            raise QueueError(f"keep_finished must be 0 or more, got {keep_finished}")
        self.max_running = int(max_running)
        self.budget_bytes = int(memory_budget_bytes)
        self.keep_finished = int(keep_finished)
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}                  # every known job, submit order
        self._queued: list[Job] = []                     # submit order
        self._running: list[Job] = []
        self._finished: deque[Job] = deque()             # finish order, for trimming
        self._calls: dict[str, tuple[Callable, Callable | None]] = {}   # id -> (task, on_done) until started
        self._threads: dict[str, threading.Thread] = {}
        self._seq = 0
        self._starts = 0
        # owner session -> number of the latest start of one of its jobs (the round-robin memory);
        # only sessions with an active job are kept, so it does not grow with every visitor.
        self._last_start: dict[str, int] = {}
        self._closed = False

    # ------------------------------------------------------------------ submit
    def submit(self, session: str, kind: str, label: str, task: Callable[[Job], Any], *,
               key: str | None = None, cost_bytes: int = 0, estimate_s: float | None = None,
               on_done: Callable[[Job], None] | None = None,
               on_change: Callable[[Job, str], None] | None = None) -> Job:
        """Queue ``task(job)`` for ``session``, or subscribe to the active job with the same ``key``.

        Parameters
        ----------
        session : str
            The submitting session (owns the job's place in the fair order).
        kind, label : str
            What the job is ('training', ...) and its short human name.
        task : callable
            ``task(job) -> result``, run in a worker thread; reports with
            ``job.report(fraction, message)`` and may call ``job.keep(partial)``.
        key : str, optional
            Identical requests share one job while it is active; the later
            submitter's ``task``, ``cost_bytes``, ``estimate_s`` and
            ``on_done`` are ignored (the work is done once, by the first).
        cost_bytes : int
            Memory the job holds while running.
        estimate_s : float, optional
            Expected run time (for the remaining time before a fifth is done).
        on_done : callable, optional
            ``on_done(job)`` in the worker after the task returned (e.g. saves
            the result); the job is 'done' only once it returned, and 'failed'
            if it raised.
        on_change : callable, optional
            ``on_change(job, event)`` when the job is submitted, starts, keeps a
            partial result and finishes (see :attr:`Job.on_change`).

        Returns
        -------
        Job

        Raises
        ------
        QueueError
            ``cost_bytes`` above the memory budget, bad arguments, or the queue is closed.
        """
        if not callable(task):
            raise QueueError(f"the task of a job must be callable, got {type(task).__name__}")
        if on_done is not None and not callable(on_done):
            raise QueueError(f"on_done must be callable, got {type(on_done).__name__}")
        if on_change is not None and not callable(on_change):
            raise QueueError(f"on_change must be callable, got {type(on_change).__name__}")
        try:
            cost = int(cost_bytes)
        except (TypeError, ValueError):
            raise QueueError(f"cost_bytes must be a whole number of bytes, got {cost_bytes!r}") from None
        if cost < 0:
            raise QueueError(f"cost_bytes must be 0 or more, got {cost}")
        if estimate_s is not None:
            try:
                estimate_s = float(estimate_s)
            except (TypeError, ValueError):
                raise QueueError(f"estimate_s must be a number of seconds, got {estimate_s!r}") from None
            if not math.isfinite(estimate_s) or estimate_s < 0:
                estimate_s = None    # an unusable estimate is no estimate, not a reason to refuse the job
        session = str(session)
        with self._cond:
            if self._closed:
                raise QueueError("the job queue is shut down (the server is stopping); try again after a restart")
            if key is not None:
                shared = self._find_locked(key)
                if shared is not None:
                    if session not in shared.sessions:
                        shared.sessions.append(session)
                    return shared
            # Checked after the key: subscribing to a job that already passed costs nothing more.
            if cost > self.budget_bytes:
                raise QueueError(
                    f"{label} needs about {_gb(cost)} of memory while it runs, more than the server's "
                    f"memory budget of {_gb(self.budget_bytes)}: ask for a smaller job (e.g. fewer training "
                    "frames) or raise the budget (AFF_MEMORY_BUDGET_GB)."
                )
            self._seq += 1
            job = Job(id=uuid.uuid4().hex, kind=str(kind), label=str(label), key=key, cost_bytes=cost,
                      sessions=[session], submitted=time.time(), estimate_s=estimate_s,
                      token=CancelToken(str(label)), seq=self._seq, on_change=on_change)
            self._jobs[job.id] = job
            self._queued.append(job)
            self._calls[job.id] = (task, on_done)
            self._dispatch_locked()
            self._cond.notify_all()
        _notify(job, "submitted")  # (it may have started already: a hook reads the job's state, not the event)
        return job

    # ------------------------------------------------------------------ cancel
    def cancel(self, job_id: str, session: str) -> Job:
        """``session`` no longer wants job ``job_id``.

        With other subscribers the session only unsubscribes and the job goes
        on. Otherwise a queued job is cancelled at once (it never runs) and a
        running one is asked to stop (its state becomes 'cancelled' at the
        task's next report). A finished job, or a session that does not
        subscribe, is left as it is.

        Raises
        ------
        QueueError
            Unknown ``job_id``.
        """
        session = str(session)
        with self._cond:
            job = self._get_locked(job_id)
            if not job.active or session not in job.sessions:
                return job
            if len(job.sessions) > 1:
                job.sessions.remove(session)
                self._cond.notify_all()
                return job
            self._cancel_locked(job)
            ended = not job.active  # a queued job ends here; a running one when its task stops
        if ended:
            _notify(job, "finished")
        return job

    def _cancel_locked(self, job: Job) -> None:
        job.token.cancel()
        if job.state == "queued":
            self._queued.remove(job)
            self._calls.pop(job.id, None)
            self._finish_locked(job, "cancelled")
            # The cancelled job may have been the head that blocked the others.
            self._dispatch_locked()
        self._cond.notify_all()

    # ------------------------------------------------------------------ queries
    def get(self, job_id: str) -> Job:
        """The job ``job_id``; :class:`QueueError` when unknown (or already forgotten)."""
        with self._cond:
            return self._get_locked(job_id)

    def _get_locked(self, job_id: str) -> Job:
        job = self._jobs.get(str(job_id))
        if job is None:
            raise QueueError(f"no job with id {job_id!r} (it may have finished long ago and been forgotten)")
        return job

    def jobs_for(self, session: str, *, active_only: bool = False) -> list[Job]:
        """The jobs ``session`` subscribes to, in submit order (only queued/running ones with ``active_only``)."""
        session = str(session)
        with self._cond:
            return [j for j in self._jobs.values()
                    if session in j.sessions and (j.active or not active_only)]

    def find(self, key: str) -> Job | None:
        """The active job with ``key``, or None."""
        with self._cond:
            return self._find_locked(key)

    def _find_locked(self, key: str) -> Job | None:
        for job in self._running + self._queued:
            # a job asked to stop is still 'running' until its next report: never join it
            if job.key == key and not job.token.cancelled:
                return job
        return None

    def position(self, job: Job) -> int | None:
        """1-based place of ``job`` among the queued jobs in dispatch order; None when not queued."""
        with self._cond:
            order = self._order_locked()
            for i, j in enumerate(order):
                if j is job:
                    return i + 1
            return None

    def running(self) -> list[Job]:
        """The running jobs, in start order."""
        with self._cond:
            return list(self._running)

    def queued(self) -> list[Job]:
        """The queued jobs, in dispatch order."""
        with self._cond:
            return self._order_locked()

    def reserved_bytes(self) -> int:
        """Memory held by the running jobs (sum of their ``cost_bytes``)."""
        with self._cond:
            return self._reserved_locked()

    def _reserved_locked(self) -> int:
        return sum(j.cost_bytes for j in self._running)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` is finished (or ``timeout`` seconds passed); True if it finished."""
        with self._cond:
            return self._cond.wait_for(lambda: not job.active, timeout)

    # ------------------------------------------------------------------ close
    def close(self, *, cancel_running: bool = True, timeout: float = 10.0) -> None:
        """Stop the queue: cancel the queued jobs, cancel (or let finish) the running ones, join the workers.

        New submissions are refused afterwards. Workers still running after
        ``timeout`` seconds (a task that never reports) are left behind as
        daemon threads.
        """
        with self._cond:
            self._closed = True
            dropped = list(self._queued)
            for job in dropped:
                self._cancel_locked(job)
            if cancel_running:
                for job in self._running:
                    job.token.cancel()
            threads = list(self._threads.values())
        for job in dropped:
            _notify(job, "finished")
        deadline = time.monotonic() + max(float(timeout), 0.0)
        for thread in threads:
            if thread is threading.current_thread():
                continue    # close() called from a task or on_done: it cannot wait for itself
            thread.join(max(deadline - time.monotonic(), 0.0))

    # ------------------------------------------------------------------ internals
    def _order_locked(self) -> list[Job]:
        """Queued jobs in dispatch order: round robin over the owning sessions, oldest first within each.

        Sort key: (rank of the job among its owner's queued jobs, 0 for the
        oldest; when the owner last had a job started, never first; submit
        order). The middle term makes the round robin hold over time, not
        only in a snapshot: without it, once session A's first job starts,
        A's second becomes rank 0 and, being older, goes before session B's
        only job again, so A's jobs would all start before B's. The owner is
        ``sessions[0]``.
        """
        rank: dict[str, int] = {}
        keyed = []
        for job in self._queued:           # submit order, so rank 0 is the session's oldest queued job
            owner = job.sessions[0] if job.sessions else ""
            r = rank.get(owner, 0)
            rank[owner] = r + 1
            keyed.append(((r, self._last_start.get(owner, 0), job.seq), job))
        keyed.sort(key=lambda kj: kj[0])
        return [job for _, job in keyed]

    def _dispatch_locked(self) -> None:
        """Start queued jobs while a slot is free and the head of the order fits the memory left."""
        if self._closed:
            return
        while self._queued and len(self._running) < self.max_running:
            head = self._order_locked()[0]
            # Head-of-line: a job that does not fit waits, and nothing overtakes it,
            # so the memory it needs is freed for it; alone it always fits (checked at submit).
            if self._running and self._reserved_locked() + head.cost_bytes > self.budget_bytes:
                break
            self._start_locked(head)

    def _start_locked(self, job: Job) -> None:
        task, on_done = self._calls.pop(job.id)
        self._queued.remove(job)
        job.state = "running"
        job.started = time.time()
        self._starts += 1
        self._last_start[job.sessions[0] if job.sessions else ""] = self._starts
        self._running.append(job)
        thread = threading.Thread(target=self._work, args=(job, task, on_done),
                                  name=f"aff-job-{job.kind}", daemon=True)
        self._threads[job.id] = thread
        try:
            thread.start()
        except RuntimeError as exc:     # the process cannot start another thread
            self._threads.pop(job.id, None)
            self._running.remove(job)
            job.error = f"internal error ({type(exc).__name__}): {exc}"
            self._finish_locked(job, "failed")

    def _work(self, job: Job, task: Callable[[Job], Any], on_done: Callable[[Job], None] | None) -> None:
        """The worker thread: run the task and on_done, then record the outcome and start the next job."""
        state, error = "failed", "internal error: the job ended without an outcome"
        _notify(job, "started")
        try:
            job.token.check("starting")     # cancelled between dispatch and this thread starting
            result = task(job)
            # A task that finished without reporting after a cancel still counts as
            # cancelled: the user asked to stop, so its result is not saved.
            job.token.check("finishing")
            job.result = result
            if on_done is not None:
                on_done(job)
            state, error = "done", None
        except Cancelled:
            state, error = "cancelled", None
        except AFFError as exc:
            state, error = "failed", str(exc)
            job.exception = exc
        except Exception as exc:
            log.exception("job %s (%s, %s) failed", job.id, job.kind, job.label)
            state, error = "failed", f"internal error ({type(exc).__name__}): {exc}"
            job.exception = exc
        except BaseException as exc:        # SystemExit/KeyboardInterrupt in a worker: record it, then let it go
            state, error = "failed", f"internal error ({type(exc).__name__}): {exc}"
            raise
        finally:
            with self._cond:
                if job in self._running:
                    self._running.remove(job)
                self._threads.pop(job.id, None)
                if state == "done":
                    with job._lock:
                        job.fraction = 1.0
                job.error = error
                self._finish_locked(job, state)
                self._dispatch_locked()
                self._cond.notify_all()
            _notify(job, "finished")

    def _finish_locked(self, job: Job, state: str) -> None:
        job.state = state
        job.finished = time.time()
        self._finished.append(job)
        owners = {j.sessions[0] if j.sessions else "" for j in self._running + self._queued}
        for owner in [o for o in self._last_start if o not in owners]:
            # An idle session needs no memory: when it comes back it has waited longest anyway.
            del self._last_start[owner]
        while len(self._finished) > self.keep_finished:
            old = self._finished.popleft()
            self._jobs.pop(old.id, None)
