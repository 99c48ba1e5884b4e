"""Independent work on one machine or a Dask cluster: learning-curve points, reproduction fits,
and the independent parts of one fit (its search's γ grid, its large PE sets:
``aff_app.gp.force.fit_force_model(executor=)``).

The work that outgrows one machine is embarrassingly parallel: each point of a
learning curve and each fit of the reproduction is a function of plain,
picklable inputs (a :class:`~aff_app.io.trajectory.Trajectory`, index arrays,
settings dataclasses). An :class:`Executor` runs a list of :class:`Task` and
hands their results back **in the order of the list**, each as soon as it and
all tasks before it have finished, so a caller can keep (write, show) finished
results while later ones still run.

Two executors:

* :class:`SerialExecutor` (the default): today's behaviour, one task after the
  other in this process, with live progress; no Dask import.
* :class:`DaskExecutor`: ``dask.distributed`` — a ``LocalCluster`` started on
  demand (``n`` worker processes, one thread each, a memory limit per worker
  from our memory budget) or an existing scheduler (``tcp://host:8786``).
  Large inputs are scattered once (:meth:`Executor.scatter`) and tasks refer
  to them; a task whose worker dies is re-run by the scheduler, one that raises
  is retried ``retries`` times and then reported with its name
  (:class:`TaskFailedError`), the results finished by then kept on the error.

Choose with :func:`parse_scheduler` (the CLI's ``--scheduler`` text) or a
:class:`SchedulerChoice`, open with :func:`open_executor` and close the
executor (``with open_executor(choice) as ex: ...``, or ``ex.close()``), which
also stops a ``LocalCluster`` it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from aff_app.errors import AFFError

__all__ = [
    "SchedulerChoice",
    "SchedulerError",
    "TaskFailedError",
    "TaskUserError",
    "Task",
    "Executor",
    "SerialExecutor",
    "DaskExecutor",
    "parse_scheduler",
    "open_executor",
    "aligned",
    "SERIAL",
]

#: The scheduler text that means "no Dask" (the default everywhere).
SERIAL = "serial"
#: Default port of a Dask scheduler (``tcp://host`` without a port gets it).
DEFAULT_PORT = 8786


class SchedulerError(AFFError, ValueError):
    """A scheduler choice that cannot be used: bad text, Dask missing, or a scheduler that does not answer."""


class TaskFailedError(RuntimeError):
    """A task raised (after its retries) or lost its worker too often.

    Attributes
    ----------
    task : str
        The failed task's name (what it computes, e.g. ``"AFF M=200 (uracil/md17)"``).
    results : list
        One entry per task of the run, in the order given: the result of every task that
        finished (before or after the failure), ``None`` for the failed and unfinished ones.
    """

    def __init__(self, message: str, *, task: str, results: list):
        super().__init__(message)
        self.task = task
        self.results = results


class TaskUserError(TaskFailedError, AFFError):
    """A task failed with a user error (an :class:`~aff_app.errors.AFFError`): exit code 2 in the CLI."""


@dataclass(frozen=True)
class SchedulerChoice:
    """Where independent tasks run.

    Attributes
    ----------
    kind : {'serial', 'local', 'address'}
        In this process one after the other; a ``LocalCluster`` started on demand; an
        existing scheduler at ``address``.
    n_workers : int or None
        'local': worker processes (default: the CPU count); one thread each.
    address : str or None
        'address': ``tcp://host:port`` of a running ``dask scheduler``.
    memory_limit_bytes : int or None
        'local': memory limit of each worker (default: our memory budget,
        ``aff_app.gp.budget.default_budget_bytes()``, shared equally by the workers).
    retries : int
        Re-runs of a task that raised before it is reported (a lost worker's task is
        re-run by the scheduler regardless, up to its ``allowed-failures``).
    connect_timeout_s : float
        How long to wait for a scheduler at ``address`` to answer.
    """

    kind: str = SERIAL
    n_workers: int | None = None
    address: str | None = None
    memory_limit_bytes: int | None = None
    retries: int = 1
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in (SERIAL, "local", "address"):
            raise SchedulerError(f"scheduler kind must be 'serial', 'local' or 'address', got {self.kind!r}")
        if self.kind == "address" and not self.address:
            raise SchedulerError("a scheduler address is needed, e.g. tcp://host:8786")
        if self.n_workers is not None and int(self.n_workers) < 1:
            raise SchedulerError(f"the number of workers must be at least 1, got {self.n_workers}")
        if int(self.retries) < 0:
            raise SchedulerError(f"retries must be >= 0, got {self.retries}")

    @property
    def is_serial(self) -> bool:
        return self.kind == SERIAL

    def describe(self) -> str:
        """One line for logs and the JSON output."""
        if self.kind == SERIAL:
            return "serial (this process)"
        if self.kind == "local":
            return f"Dask LocalCluster, {self.n_workers or os.cpu_count() or 1} workers × 1 thread"
        return f"Dask scheduler at {self.address}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_workers": self.n_workers, "address": self.address,
                "memory_limit_bytes": self.memory_limit_bytes, "retries": self.retries,
                "description": self.describe()}


def parse_scheduler(text: str | None) -> SchedulerChoice:
    """The choice named by ``--scheduler``: ``serial`` (or empty), ``local``, ``local:N``, ``tcp://host[:port]``.

    Raises
    ------
    SchedulerError
        Text of none of these forms (the message lists them).
    """
    forms = "use 'serial', 'local', 'local:N' (N workers) or 'tcp://host:port'"
    t = (text or "").strip()
    if t in ("", SERIAL):
        return SchedulerChoice()
    if t == "local":
        return SchedulerChoice(kind="local")
    if t.startswith("local:"):
        n = t.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise SchedulerError(f"bad scheduler {text!r}: the number of workers after 'local:' must be a whole "
                                 f"number ≥ 1; {forms}")
        return SchedulerChoice(kind="local", n_workers=int(n))
    for scheme in ("tcp://", "tls://"):
        if t.startswith(scheme):
            hostport = t[len(scheme):]
            host, _, port = hostport.partition(":")
            if not host or "/" in hostport or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
                raise SchedulerError(f"bad scheduler address {text!r}: expected {scheme}host:port; {forms}")
            return SchedulerChoice(kind="address", address=f"{scheme}{host}:{port or DEFAULT_PORT}")
    raise SchedulerError(f"bad scheduler {text!r}: {forms}")


@dataclass(frozen=True)
class Task:
    """One independent piece of work: ``fn(*args, **kwargs)``.

    ``fn`` must be a module-level function and ``args``/``kwargs`` plain picklable values
    (arrays, dataclasses, handles from :meth:`Executor.scatter`): no closures over big state,
    so a task ships as a few bytes plus what it names.

    Attributes
    ----------
    name : str
        What it computes; names the task in errors and progress.
    fn : callable
    args : tuple
    kwargs : dict
    progress_kw : str or None
        Name of ``fn``'s progress-callback argument: the serial executor passes the
        ``progress`` of :meth:`Executor.run` scaled to this task; Dask workers get none
        (progress is then one step per finished task).
    weight : float
        Relative cost, for the progress fraction.
    """

    name: str
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    progress_kw: str | None = None
    weight: float = 1.0


Progress = Callable[[float, str], None]
OnResult = Callable[[int, Any], None]


class Executor:
    """Runs :class:`Task` lists; results come back in the order of the list. Close it when done."""

    choice: SchedulerChoice

    #: Whether tasks run in other processes (Dask): a fit then ships work to it only when this is True
    #: (on the serial executor a task is the same call made here, with nothing to gain).
    remote: bool = False

    def worker_memory_bytes(self) -> int | None:
        """The smallest worker's memory limit, bytes; None when unknown or unlimited (serial: this process)."""
        return None

    def scatter(self, obj):
        """A handle to ``obj`` for task arguments (Dask: sent to the cluster once; serial: ``obj`` itself)."""
        return obj

    def run(self, tasks: Sequence[Task], *, on_result: OnResult | None = None,
            progress: Progress | None = None) -> list:
        """Run ``tasks``; return their results in order.

        Parameters
        ----------
        on_result : callable(index, result), optional
            Called in the order of ``tasks``, for each as soon as it and all before it are done.
        progress : callable(fraction, message), optional

        Raises
        ------
        TaskFailedError (Dask) or the task's own exception (serial, today's behaviour)
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the cluster (stop a ``LocalCluster`` this executor started)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialExecutor(Executor):
    """One task after the other in this process (the default; no Dask)."""

    def __init__(self, choice: SchedulerChoice | None = None):
        self.choice = choice or SchedulerChoice()

    def run(self, tasks, *, on_result=None, progress=None) -> list:
        total = sum(max(t.weight, 0.0) for t in tasks) or 1.0
        done = 0.0
        out = []
        for i, t in enumerate(tasks):
            kwargs = dict(t.kwargs)
            if t.progress_kw is not None and progress is not None:
                base, share = done / total, max(t.weight, 0.0) / total

                def sub(f, msg, base=base, share=share, name=t.name):
                    progress(min(base + share * float(f), 1.0), f"{name}: {msg}")

                kwargs[t.progress_kw] = sub
            res = t.fn(*t.args, **kwargs)
            out.append(res)
            done += max(t.weight, 0.0)
            if on_result is not None:
                on_result(i, res)
            if progress is not None:
                progress(min(done / total, 1.0), f"{t.name}: done")
        return out


def _quiet_dask_logging() -> None:
    # Dask logs to stderr through `logging`; keep it to real problems so `--json` output and
    # the progress line stay readable (stdout is never written by Dask).
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.comm", "distributed.batched", "distributed.client"):
        logging.getLogger(name).setLevel(logging.ERROR)


class DaskExecutor(Executor):
    """Tasks on a ``dask.distributed`` cluster: a ``LocalCluster`` started here, or a scheduler's address.

    Raises
    ------
    SchedulerError
        Dask not installed, or the scheduler at the address does not answer within
        ``choice.connect_timeout_s`` (the message names the address).
    """

    def __init__(self, choice: SchedulerChoice):
        if choice.is_serial:
            raise SchedulerError("DaskExecutor needs a 'local' or 'address' choice")
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - dask is in requirements.txt
            raise SchedulerError(f"Dask is not installed ({exc}): pip install -r requirements.txt") from None
        _quiet_dask_logging()
        self.choice = choice
        self._cluster = None
        if choice.kind == "local":
            from aff_app.gp.budget import default_budget_bytes

            n = int(choice.n_workers or os.cpu_count() or 1)
            mem = choice.memory_limit_bytes or max(default_budget_bytes() // n, 2**28)
            # processes, not threads: the fits hold the GIL in numba/numpy stretches and each keeps
            # its own BLAS; one thread per worker, as the nanny already pins BLAS/OpenMP to one thread
            with _bare_main():
                self._cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                             memory_limit=int(mem), dashboard_address=":0",
                                             silence_logs=logging.ERROR)
            self.choice = SchedulerChoice(kind="local", n_workers=n, memory_limit_bytes=int(mem),
                                          retries=choice.retries, connect_timeout_s=choice.connect_timeout_s)
            try:
                self.client = Client(self._cluster, set_as_default=False)
            except Exception:
                self._cluster.close()
                raise
        else:
            try:
                self.client = Client(choice.address, timeout=choice.connect_timeout_s, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise SchedulerError(
                    f"no Dask scheduler answers at {choice.address} (waited {choice.connect_timeout_s:g} s: {exc}); "
                    "start one (`dask scheduler` and `dask worker ADDRESS`) or run without --scheduler"
                ) from None

    remote = True

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def worker_memory_bytes(self) -> int | None:
        # a worker past 95% of its limit is killed by its nanny (80%: paused), so a task whose
        # arrays would not fit must stay in the calling process; 0 is Dask's "no limit"
        try:
            limits = [int(w.get("memory_limit") or 0) for w in self.client.scheduler_info()["workers"].values()]
        except Exception:  # noqa: BLE001 - an old or odd scheduler: the limit is unknown
            return None
        limits = [m for m in limits if m > 0]
        return min(limits) if limits else None

    def scatter(self, obj):
        # broadcast: every worker holds a copy, so a lost worker loses no input (its tasks re-run
        # elsewhere); hash=False: two equal objects stay two keys, never one shared by accident
        return self.client.scatter(obj, hash=False, broadcast=True)

    def run(self, tasks, *, on_result=None, progress=None) -> list:
        from dask.distributed import as_completed

        if not tasks:
            return []
        futures = [self.client.submit(t.fn, *t.args, key=f"{_slug(t.name)}-{os.urandom(6).hex()}",
                                      retries=self.choice.retries, pure=False, **t.kwargs) for t in tasks]
        index = {f.key: i for i, f in enumerate(futures)}
        total = sum(max(t.weight, 0.0) for t in tasks) or 1.0
        done_w = 0.0
        results: list = [None] * len(tasks)
        finished = [False] * len(tasks)
        next_out = 0
        first_failure: tuple[int, BaseException] | None = None
        for fut in as_completed(futures, loop=self.client.loop):
            i = index[fut.key]
            try:
                results[i] = fut.result()
                finished[i] = True
            except Exception as exc:  # noqa: BLE001 - reported below with the task's name
                if first_failure is None or i < first_failure[0]:
                    first_failure = (i, exc)
                continue
            done_w += max(tasks[i].weight, 0.0)
            if progress is not None:
                progress(min(done_w / total, 1.0), f"{tasks[i].name}: done")
            # hand results out in task order, up to the first one still running (or failed)
            # (never past a failed task: what is handed out always precedes any failure)
            while next_out < len(tasks) and finished[next_out]:
                if on_result is not None:
                    on_result(next_out, results[next_out])
                next_out += 1
        if first_failure is not None:
            i, exc = first_failure
            kind = TaskUserError if isinstance(exc, AFFError) else TaskFailedError
            n_ok = sum(finished)
            raise kind(f"task {tasks[i].name!r} failed: {type(exc).__name__}: {exc} ({n_ok} of {len(tasks)} tasks "
                       "finished; their results are kept)", task=tasks[i].name, results=results) from exc
        return results

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None


@contextlib.contextmanager
def _bare_main():
    """Hide the ``__main__`` module from the worker processes' spawn while they start.

    ``multiprocessing``'s spawn re-runs the parent's main script in every child. Under Streamlit that
    script is the app (Streamlit installs each page run's module as ``__main__``), which must not run in
    a worker ("Nanny failed to start"). The tasks are functions of ``aff_app``, never of ``__main__``, so
    the workers need nothing from it.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def aligned(x):
    """``x`` with every numpy array in it aligned to its item size: arrays, and those in tuples,
    lists and dataclasses (rebuilt only where something was copied).

    Call it on a task's inputs where the task must give this process's numbers. Dask hands a
    task the arrays it deserialised from a message frame at whatever byte offset they had there
    (measured: the search frames' inverse distances, ``aligned`` False in the worker). numpy's
    matmul does not hand unaligned arrays to BLAS and sums in its own order instead (here the Gram
    matrix of the descriptor distances): a kernel built from them differed from this process's in
    the last bit of up to a quarter of its entries. A copy costs a few microseconds per array;
    already aligned arrays are returned as they are.
    """
    import dataclasses

    import numpy as np

    if isinstance(x, np.ndarray):
        return x if x.flags.aligned else np.array(x, order="K")
    if isinstance(x, (tuple, list)):
        items = [aligned(v) for v in x]
        return x if all(a is b for a, b in zip(items, x)) else type(x)(items)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        changed = {f.name: v for f in dataclasses.fields(x) if f.init
                   and (v := aligned(getattr(x, f.name))) is not getattr(x, f.name)}
        return dataclasses.replace(x, **changed) if changed else x
    return x


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=." else "_" for c in name)[:60]


def open_executor(choice: SchedulerChoice | str | None = None) -> Executor:
    """The executor for ``choice`` (a :class:`SchedulerChoice` or ``--scheduler`` text; None: serial).

    Close it when done (``with open_executor(...) as ex:``): that stops a ``LocalCluster``
    it started; a scheduler at an address is only disconnected from.
    """
    if choice is None or isinstance(choice, str):
        choice = parse_scheduler(choice)
    if choice.is_serial:
        return SerialExecutor(choice)
    return DaskExecutor(choice)
