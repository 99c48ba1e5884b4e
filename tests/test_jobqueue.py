"""aff_app.jobqueue: concurrency, fair order, dedup, cancel, failures, memory budget, progress text.

Real worker threads; tasks are held with threading.Event so every state is
observed deterministically (no timing guesses beyond short polling deadlines).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from aff_app.cancel import Cancelled
from aff_app.errors import AFFError
from aff_app.jobqueue import JOB_STATES, Job, JobQueue, QueueError

T = 5.0  # generous deadline for anything that should happen "at once"


@pytest.fixture
def queue_factory():
    """Make queues and close them all after the test (cancelling anything left)."""
    made: list[JobQueue] = []

    def make(**kwargs) -> JobQueue:
        kwargs.setdefault("memory_budget_bytes", 10**12)
        q = JobQueue(**kwargs)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close(timeout=T)


def held(gate: threading.Event, started: threading.Event | None = None, result=None):
    """A task that waits for ``gate`` (reporting meanwhile, so it can be cancelled) and returns ``result``."""

    def task(job: Job):
        if started is not None:
            started.set()
        while not gate.wait(0.005):
            job.report(0.1, "holding")
        return result

    return task


def until(predicate, timeout: float = T) -> bool:
    """Poll ``predicate`` until true or the deadline (state changes happen in worker threads)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_states_and_simple_job(queue_factory):
    assert JOB_STATES == ("queued", "running", "done", "failed", "cancelled")
    q = queue_factory(max_running=1)
    job = q.submit("a", "training", "AFF, M = 10", lambda job: 42)
    assert q.wait(job, timeout=T)
    assert (job.state, job.result, job.fraction, job.error) == ("done", 42, 1.0, None)
    assert not job.active and job.finished is not None and job.started is not None
    assert len(job.id) == 32 and job.sessions == ["a"]
    assert q.get(job.id) is job
    with pytest.raises(QueueError):
        q.get("nope")
    assert issubclass(QueueError, AFFError) and issubclass(QueueError, ValueError)


def test_worker_thread_is_named_daemon(queue_factory):
    q = queue_factory(max_running=1)
    seen = {}

    def task(job):
        t = threading.current_thread()
        seen.update(name=t.name, daemon=t.daemon)

    job = q.submit("a", "learning_curve", "curves", task)
    assert q.wait(job, T)
    assert seen == {"name": "aff-job-learning_curve", "daemon": True}


def test_bounded_concurrency_and_positions(queue_factory):
    q = queue_factory(max_running=2)
    gate = threading.Event()
    jobs = [q.submit(f"s{i}", "training", f"job {i}", held(gate)) for i in range(4)]
    assert [j.state for j in jobs] == ["running", "running", "queued", "queued"]
    assert q.running() == jobs[:2] and q.queued() == jobs[2:]
    assert [q.position(j) for j in jobs] == [None, None, 1, 2]
    assert jobs[2].status_text(q.position(jobs[2])) == "queued (position 1)"
    gate.set()
    for j in jobs:
        assert q.wait(j, T)
    assert all(j.state == "done" for j in jobs)
    assert q.running() == [] and q.queued() == []


def test_never_more_than_max_running_at_once(queue_factory):
    q = queue_factory(max_running=3)
    lock = threading.Lock()
    now, peak = [0], [0]

    def task(job):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1

    jobs = [q.submit(f"s{i % 4}", "training", str(i), task) for i in range(12)]
    for j in jobs:
        assert q.wait(j, T)
    assert peak[0] == 3 and all(j.state == "done" for j in jobs)


def test_fair_order_across_sessions(queue_factory):
    q = queue_factory(max_running=1)
    gate = threading.Event()
    blocker = q.submit("x", "training", "blocker", held(gate))
    a = [q.submit("A", "training", f"A{i}", held(gate)) for i in range(3)]
    b = q.submit("B", "training", "B0", held(gate))
    assert blocker.state == "running"
    assert q.position(b) == 2                       # not 4: round robin over sessions
    assert q.queued() == [a[0], b, a[1], a[2]]
    assert [q.position(j) for j in a] == [1, 3, 4]
    # Start order follows the dispatch order.
    order: list[str] = []
    q2 = queue_factory(max_running=1)
    gate2 = threading.Event()
    q2.submit("x", "md", "blocker", held(gate2))

    def rec(name):
        return lambda job: order.append(name)

    jobs = [q2.submit("A", "md", n, rec(n)) for n in ("A0", "A1", "A2")]
    jobs.append(q2.submit("B", "md", "B0", rec("B0")))
    gate2.set()
    for j in jobs:
        assert q2.wait(j, T)
    assert order == ["A0", "B0", "A1", "A2"]
    gate.set()


def test_dedup_by_key_shares_one_job(queue_factory):
    q = queue_factory(max_running=2)
    gate = threading.Event()
    calls = []

    def task(job):
        calls.append(job.id)
        gate.wait(T)
        return "model"

    j1 = q.submit("A", "training", "AFF, M = 200", task, key="k1")
    j2 = q.submit("B", "training", "AFF, M = 200", task, key="k1")
    j3 = q.submit("B", "training", "AFF, M = 200", task, key="k1")   # same session again: subscribed once
    assert j1 is j2 is j3
    assert j1.sessions == ["A", "B"]
    assert q.find("k1") is j1 and q.find("other") is None
    assert q.jobs_for("A") == [j1] and q.jobs_for("B") == [j1]
    gate.set()
    assert q.wait(j1, T)
    assert calls == [j1.id] and j1.result == "model"
    assert q.find("k1") is None                      # only active jobs are shared
    j4 = q.submit("A", "training", "AFF, M = 200", lambda job: "again", key="k1")
    assert j4 is not j1 and q.wait(j4, T) and j4.result == "again"


def test_cancel_queued_never_runs(queue_factory):
    q = queue_factory(max_running=1)
    gate = threading.Event()
    ran = []
    first = q.submit("A", "training", "first", held(gate))
    second = q.submit("A", "training", "second", lambda job: ran.append(1))
    assert q.cancel(second.id, "A") is second
    assert second.state == "cancelled" and second.started is None and second.finished is not None
    assert second.status_text() == "cancelled before it started"
    assert q.queued() == [] and q.position(second) is None
    gate.set()
    assert q.wait(first, T) and first.state == "done"
    assert ran == []
    with pytest.raises(QueueError):
        q.cancel("unknown", "A")
    assert q.cancel(first.id, "A").state == "done"     # finished: no-op


def test_cancel_running_stops_and_keeps_partial(queue_factory):
    q = queue_factory(max_running=1)
    started = threading.Event()
    done_called = []

    def task(job):
        points = []
        for i in range(10**6):
            points.append(i)
            job.keep(list(points))
            started.set()
            job.report(min(i / 1000, 0.9), f"point {i}")
            time.sleep(0.001)
        return points

    job = q.submit("A", "learning_curve", "curves", task, on_done=lambda j: done_called.append(1))
    assert started.wait(T)
    q.cancel(job.id, "A")
    assert q.wait(job, T)
    assert job.state == "cancelled" and job.result is None and job.error is None
    assert isinstance(job.partial, list) and len(job.partial) >= 1
    assert done_called == []
    text = job.status_text()
    assert text.startswith("cancelled after ") and "(kept: " in text and "item" in text


def test_task_returning_after_cancel_is_cancelled(queue_factory):
    q = queue_factory(max_running=1)
    gate, started = threading.Event(), threading.Event()

    def task(job):
        started.set()
        gate.wait(T)        # never reports
        return "late"

    saved = []
    job = q.submit("A", "md", "run", task, on_done=lambda j: saved.append(j.result))
    assert started.wait(T)
    q.cancel(job.id, "A")
    assert job.state == "running"                     # it stops only when it reports or returns
    gate.set()
    assert q.wait(job, T)
    assert job.state == "cancelled" and saved == []


def test_cancel_by_one_of_two_subscribers(queue_factory):
    q = queue_factory(max_running=1)
    gate, started = threading.Event(), threading.Event()
    job = q.submit("A", "training", "shared", held(gate, started, "m"), key="k")
    assert q.submit("B", "training", "shared", held(gate), key="k") is job
    assert started.wait(T)
    q.cancel(job.id, "A")
    assert job.sessions == ["B"] and not job.token.cancelled and job.state == "running"
    assert q.jobs_for("A") == [] and q.jobs_for("B") == [job]
    q.cancel(job.id, "A")                             # no longer subscribed: nothing happens
    assert not job.token.cancelled
    gate.set()
    assert q.wait(job, T) and job.state == "done" and job.result == "m"


def test_cancel_queued_shared_job_by_one_subscriber_keeps_it(queue_factory):
    q = queue_factory(max_running=1)
    gate = threading.Event()
    q.submit("x", "training", "blocker", held(gate))
    job = q.submit("A", "training", "shared", lambda job: 1, key="k")
    q.submit("B", "training", "shared", lambda job: 2, key="k")
    q.cancel(job.id, "A")
    assert job.state == "queued" and job.sessions == ["B"]
    gate.set()
    assert q.wait(job, T) and job.result == 1


def test_failures_are_recorded_and_next_job_starts(queue_factory, caplog):
    q = queue_factory(max_running=1)
    gate = threading.Event()

    def user_error(job):
        gate.wait(T)
        job.keep("half the curve")
        raise AFFError("more training frames than the trajectory holds")

    def bug(job):
        raise KeyError("oops")

    j1 = q.submit("A", "training", "bad input", user_error)
    j2 = q.submit("A", "training", "bug", bug)
    j3 = q.submit("A", "training", "fine", lambda job: "ok")
    assert j2.state == "queued" and j3.state == "queued"
    with caplog.at_level(logging.ERROR, logger="aff_app.jobqueue"):
        gate.set()
        for j in (j1, j2, j3):
            assert q.wait(j, T)
    assert j1.state == "failed" and j1.error == "more training frames than the trajectory holds"
    assert j1.partial == "half the curve"
    assert j1.status_text() == "failed: more training frames than the trajectory holds"
    assert j2.state == "failed" and j2.error.startswith("internal error (KeyError): ")
    assert "oops" in j2.error
    assert any("bug" in r.getMessage() and r.exc_info for r in caplog.records)
    assert j3.state == "done" and j3.result == "ok"


def test_memory_budget_head_of_line(queue_factory):
    q = queue_factory(max_running=4, memory_budget_bytes=10)
    gate1, gate2 = threading.Event(), threading.Event()
    big1 = q.submit("A", "training", "big 1", held(gate1), cost_bytes=6)
    big2 = q.submit("B", "training", "big 2", held(gate2), cost_bytes=6)
    small = q.submit("C", "training", "small", held(gate2), cost_bytes=1)
    assert big1.state == "running" and q.reserved_bytes() == 6
    assert big2.state == "queued" and q.position(big2) == 1   # slot free, memory not
    assert small.state == "queued"                            # no overtaking of the head
    with pytest.raises(QueueError, match="GB"):
        q.submit("A", "training", "huge", lambda job: None, cost_bytes=11)
    gate1.set()
    assert until(lambda: big2.state == "running")
    assert until(lambda: small.state == "running")
    assert q.reserved_bytes() == 7
    gate2.set()
    assert q.wait(big2, T) and q.wait(small, T)
    assert q.reserved_bytes() == 0


def test_job_at_the_budget_starts_when_nothing_runs(queue_factory):
    q = queue_factory(max_running=2, memory_budget_bytes=10)
    job = q.submit("A", "training", "whole budget", lambda job: "x", cost_bytes=10)
    assert q.wait(job, T) and job.result == "x"


def test_over_budget_message_has_gb_numbers(queue_factory):
    q = queue_factory(max_running=1, memory_budget_bytes=2 * 2**30)
    with pytest.raises(QueueError) as info:
        q.submit("A", "training", "GDML, M = 900", lambda job: None, cost_bytes=3 * 2**30)
    assert "3 GB" in str(info.value) and "2 GB" in str(info.value) and "GDML, M = 900" in str(info.value)
    assert q.jobs_for("A") == []


def test_on_done_runs_before_done_and_its_error_fails_the_job(queue_factory):
    q = queue_factory(max_running=1)
    seen = []

    def save(job):
        seen.append((job.state, job.result))

    ok = q.submit("A", "training", "ok", lambda job: "model", on_done=save)
    assert q.wait(ok, T)
    assert seen == [("running", "model")] and ok.state == "done"

    def broken_save(job):
        raise OSError("disk full")

    bad = q.submit("A", "training", "bad save", lambda job: "model", on_done=broken_save)
    assert q.wait(bad, T)
    assert bad.state == "failed" and bad.error == "internal error (OSError): disk full"

    def refused_save(job):
        raise AFFError("the workspace is read-only")

    bad2 = q.submit("A", "training", "refused", lambda job: "model", on_done=refused_save)
    assert q.wait(bad2, T) and bad2.state == "failed" and bad2.error == "the workspace is read-only"


def test_report_is_monotone_clipped_and_checks_token():
    job = Job(id="x", kind="training", label="l", key=None, cost_bytes=0, sessions=["a"], submitted=0.0)
    job.report(0.5, "half")
    job.report(0.3, "late report from another thread")
    assert job.fraction == 0.5 and job.message == "late report from another thread"
    job.report(7, "over")
    assert job.fraction == 1.0
    job.report(float("nan"), "nan")
    job.report("bad", "bad")
    assert job.fraction == 1.0
    job.token.cancel()
    with pytest.raises(Cancelled):
        job.report(1.0, "after cancel")


def test_progress_and_remaining_text():
    job = Job(id="x", kind="training", label="l", key=None, cost_bytes=0, sessions=["a"],
              submitted=100.0, estimate_s=30.0)
    assert job.elapsed_s() == 0.0 and job.remaining_s() == 30.0
    assert job.status_text() == "queued" and job.status_text(position=2) == "queued (position 2)"
    job.state, job.started = "running", 100.0
    job.report(0.5, "fitting")
    assert job.elapsed_s(now=110.0) == 10.0
    assert job.remaining_s(now=110.0) == pytest.approx(10.0)
    assert job.status_text(now=110.0) == "running 50% · 10 s elapsed, about 10 s left · fitting"
    # Before a fifth is done: the estimate minus the elapsed time.
    early = Job(id="y", kind="md", label="l", key=None, cost_bytes=0, sessions=["a"], submitted=0.0,
                estimate_s=30.0, state="running", started=100.0)
    early.report(0.1, "")
    assert early.remaining_s(now=112.0) == pytest.approx(18.0)
    assert early.status_text(now=112.0) == "running 10% · 12 s elapsed, about 18 s left"
    early.estimate_s = None
    assert early.remaining_s(now=112.0) is None
    assert early.status_text(now=112.0) == "running 10% · 12 s elapsed"
    job.report(0.999, "")
    assert job.status_text(now=110.0).startswith("running 100% · 10 s elapsed, finishing")
    job.state, job.finished = "done", 131.0
    assert job.elapsed_s(now=500.0) == 31.0 and job.remaining_s() == 0.0
    assert job.status_text() == "done in 31 s"
    job.state, job.finished = "cancelled", 105.0
    job.partial = [1, 2, 3]
    assert job.status_text() == "cancelled after 5 s (kept: 3 items)"

    class Frames:
        def __init__(self, fail):
            self.fail = fail

        def describe(self):
            if self.fail:
                raise RuntimeError("no snapshot")
            return "12 frames of the model run"

    job.partial = Frames(fail=False)
    assert job.status_text() == "cancelled after 5 s (kept: 12 frames of the model run)"
    job.partial = Frames(fail=True)  # the task's object never breaks the status line
    assert job.status_text() == "cancelled after 5 s (kept: a partial Frames)"


def test_keep_finished_trims_oldest(queue_factory):
    q = queue_factory(max_running=1, keep_finished=3)
    jobs = []
    for i in range(6):
        j = q.submit("A", "training", str(i), lambda job, i=i: i)
        assert q.wait(j, T)
        jobs.append(j)
    assert q.jobs_for("A") == jobs[3:]
    with pytest.raises(QueueError):
        q.get(jobs[0].id)
    assert q.get(jobs[5].id).result == 5


def test_jobs_for_active_only(queue_factory):
    q = queue_factory(max_running=1)
    gate = threading.Event()
    done = q.submit("A", "training", "done", lambda job: 1)
    assert q.wait(done, T)
    running = q.submit("A", "training", "running", held(gate))
    queued = q.submit("A", "training", "queued", held(gate))
    other = q.submit("B", "training", "other", held(gate))
    assert q.jobs_for("A") == [done, running, queued]
    assert q.jobs_for("A", active_only=True) == [running, queued]
    assert q.jobs_for("B") == [other] and q.jobs_for("nobody") == []
    gate.set()


def test_close_stops_everything(queue_factory):
    q = queue_factory(max_running=2)
    gate = threading.Event()          # never set: only the cancel can stop the tasks
    started = [threading.Event(), threading.Event()]
    running = [q.submit("A", "md", f"r{i}", held(gate, started[i])) for i in range(2)]
    queued = q.submit("B", "md", "q", held(gate))
    assert all(e.wait(T) for e in started)
    t0 = time.monotonic()
    q.close(timeout=T)
    assert time.monotonic() - t0 < T
    assert [j.state for j in running] == ["cancelled", "cancelled"]
    assert queued.state == "cancelled" and queued.started is None
    assert q.running() == [] and q.queued() == []
    with pytest.raises(QueueError):
        q.submit("A", "md", "after close", lambda job: None)


def test_close_without_cancel_lets_running_finish(queue_factory):
    q = queue_factory(max_running=1)
    gate, started = threading.Event(), threading.Event()
    job = q.submit("A", "md", "r", held(gate, started, "ok"))
    waiting = q.submit("A", "md", "w", held(gate))
    assert started.wait(T)
    threading.Timer(0.05, gate.set).start()
    q.close(cancel_running=False, timeout=T)
    assert job.state == "done" and job.result == "ok"
    assert waiting.state == "cancelled"


def test_wait_times_out(queue_factory):
    q = queue_factory(max_running=1)
    gate = threading.Event()
    job = q.submit("A", "md", "r", held(gate))
    assert q.wait(job, timeout=0.02) is False
    gate.set()
    assert q.wait(job, timeout=T) is True


def test_bad_arguments(queue_factory):
    with pytest.raises(QueueError):
        JobQueue(max_running=0, memory_budget_bytes=10)
    with pytest.raises(QueueError):
        JobQueue(max_running=1, memory_budget_bytes=0)
    q = queue_factory(max_running=1, memory_budget_bytes=10)
    with pytest.raises(QueueError):
        q.submit("A", "md", "neg", lambda job: None, cost_bytes=-1)
    with pytest.raises(QueueError):
        q.submit("A", "md", "not callable", "task")


def test_defaults_from_machine(monkeypatch):
    monkeypatch.setenv("AFF_MEMORY_BUDGET_GB", "2")
    q = JobQueue()
    try:
        assert q.budget_bytes == 2 * 2**30 and q.max_running >= 1
    finally:
        q.close()


def test_many_sessions_stress(queue_factory):
    """Submits, cancels and dedups from several threads at once end in a consistent state."""
    q = queue_factory(max_running=3, memory_budget_bytes=100)
    all_jobs: list[Job] = []
    lock = threading.Lock()

    def session(name: str):
        for i in range(15):
            job = q.submit(name, "training", f"{name}{i}", lambda job: job.report(0.5, "x") or job.label,
                           key=f"k{i % 5}" if i % 3 == 0 else None, cost_bytes=(i % 4) * 10)
            with lock:
                all_jobs.append(job)
            if i % 4 == 1:
                q.cancel(job.id, name)

    threads = [threading.Thread(target=session, args=(f"s{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    for j in all_jobs:
        assert q.wait(j, T)
    assert all(j.state in ("done", "cancelled") for j in all_jobs)
    assert q.running() == [] and q.queued() == [] and q.reserved_bytes() == 0


def test_a_request_never_joins_a_job_that_was_asked_to_stop(queue_factory):
    q = queue_factory(max_running=2)
    gate, started = threading.Event(), threading.Event()

    def slow_to_notice(job):  # a long step between two reports: the cancel is noticed late
        started.set()
        gate.wait(T)
        job.report(0.5, "after the long step")
        return "first"

    first = q.submit("A", "training", "fit", slow_to_notice, key="k")
    assert started.wait(T)
    q.cancel(first.id, "A")
    assert first.state == "running"  # still running until its next report
    second = q.submit("B", "training", "fit", lambda job: "second", key="k")
    assert second is not first and q.wait(second, T) and second.result == "second"
    gate.set()
    assert q.wait(first, T) and first.state == "cancelled"


def test_on_change_sees_every_transition_and_a_failing_hook_never_stops_the_job(queue_factory):
    q = queue_factory(max_running=1)
    seen, gate = [], threading.Event()

    def hook(job, event):
        seen.append((event, job.state))

    def task(job):
        job.keep([1])
        gate.wait(5)
        return "ok"

    job = q.submit("a", "md", "one", task, on_change=hook)
    waiting = q.submit("b", "md", "two", lambda j: "x", on_change=hook)  # queued behind the first
    q.cancel(waiting.id, "b")
    gate.set()
    assert q.wait(job, timeout=5) and job.state == "done"
    deadline = time.monotonic() + 5
    while ("finished", "done") not in seen and time.monotonic() < deadline:
        time.sleep(0.01)  # the hook runs after the waiters are woken
    events = [e for e, _ in seen]
    assert events.count("submitted") == 2 and events.count("started") == 1 and events.count("partial") == 1
    assert ("finished", "cancelled") in seen and ("finished", "done") in seen
    assert seen.index(("started", "running")) < seen.index(("partial", "running")) < seen.index(("finished", "done"))

    def broken(job, event):
        raise RuntimeError("disk full")

    survivor = q.submit("a", "md", "three", lambda j: (j.keep("half"), "done")[1], on_change=broken)
    assert q.wait(survivor, timeout=5) and survivor.state == "done" and survivor.result == "done"
    with pytest.raises(QueueError, match="on_change must be callable"):
        q.submit("a", "md", "four", lambda j: None, on_change="nope")
