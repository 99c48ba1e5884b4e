"""A class under load, server side only (issue 19): N lightweight clients speak Streamlit's websocket protocol.

``benchmarks/load_test.py`` drives real browsers; on a 2-core machine twenty headless Chromium contexts take
the CPU from the server, so its end-to-end latency mostly measures the browsers. This test keeps the same
server (``bash scripts/start.sh`` through ``tests.e2e.helpers.serve``, a fresh ``AFF_WORKSPACE``, ``AFF_RUN_LOG``
on) and the same tour, but each user is a small asyncio client of ``/_stcore/stream`` that sends the BackMsgs
the browser's frontend sends and reads the ForwardMsgs without drawing anything:

* the handshake is the frontend's: subprotocol ``streamlit`` (the XSRF token and the session id to resume
  travel as the 2nd and 3rd subprotocol entries; neither is needed here: no auth cookie, a reload is a new
  session), then a ``rerun_script`` BackMsg with the query string and the page;
* a page switch is a ``rerun_script`` with the page's ``page_script_hash`` (from the ``navigation`` ForwardMsg
  that ``st.navigation`` sends) and, as the frontend does on a page change, no query string: the app puts its
  ``?s=`` key back (``page_info_changed``), and the client sends that query string on every other rerun;
* a widget change is a ``rerun_script`` with the page's widget states (the widget ids are read from the deltas:
  ``<...>-<user key>``): a button press is a ``trigger_value``, a number input an ``int_value``, the frame slider
  a ``double_array_value``;
* ``st.fragment(run_every=...)`` (the sidebar's job panel while a job is active) makes the frontend rerun that
  fragment every interval (``auto_rerun`` / ``stop_auto_rerun`` ForwardMsgs): the clients do the same, so the
  server gets the polling load twenty open tabs give it (``--no-auto-rerun`` turns it off).

The tour: the app opens on the benzene sample (Data) → Symmetry → Covariance → Train → press Train (defaults:
AFF, M = 200, γ and λ by the likelihood search; ``--m`` to change M, ``--distinct`` gives every user its own
split seed, so N fits are queued instead of one shared one). The Train page then waits for the job inside its
script run; the client does not wait for that run but switches page at once (Streamlit stops the waiting run
for the new one). Then, every ``--think`` seconds, a light interaction: a page switch among Data, Symmetry and
Covariance, or a move of the Data page's frame slider, each timed from the send to the run's
``script_finished`` (the slider lives in an ``st.fragment``: the move reruns that fragment, and it is answered
at the first successful run after the fragment's run started, since Streamlit may stop that run for the
sidebar's poll; a full run answers it too). An interaction not answered within ``--step-timeout`` is counted
in ``unanswered_interactions`` and the user goes on. When the sidebar says the job is done (or every 8 interactions), the client opens the Train
page (also timed, as a light interaction) and looks for the model table; once it is there: Predictions (the
model's Force MAE must be drawn), then a "reload": a new websocket, the Predictions address with the same
``?s=`` key, and the model must still be there.

Reported (JSON on the last stdout line, and ``--out``):

* ``latency_s.during_fit`` / ``latency_s.outside_fit``: p50/p95/max/n of the light interactions (send →
  script_finished, as a client on the same host sees it) made between the first Train press and the last model
  stored (the models table's ``created``, as load_test.py), and outside that window; also per page;
* ``server_run_s_during_fit``: the server's own time for the script runs (app.py and the page, from
  ``AFF_RUN_LOG``) in that window, per page and for the light pages;
* ``time_to_all_models_s``: from the first user's start until every user's session had its model;
* ``fits_computed`` (rows of the workspace's models table), ``users_with_model``, ``lost`` (users whose model
  was missing after the reload), ``errors`` per user, the load average before, during (max) and after.

    .venv/bin/python benchmarks/load_test_ws.py --users 20 --verbose --out docs/load_test_ws.json 2> docs/load_test_ws.log
    .venv/bin/python benchmarks/load_test_ws.py --users 20 --distinct --out docs/load_test_ws_distinct.json \
        2> docs/load_test_ws_distinct.log

Not a test (it takes minutes); the clients are cheap but run on the server's machine too (their CPU is in the
load average; see ``client_cpu_s`` in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from tests.e2e.helpers import free_port, serve  # noqa: E402

LIGHT_PAGES = ("Data", "Symmetry", "Covariance")
TRAIN_ANSWER = re.compile("Training AFF on|Waiting for the identical fit|Reused|This fit is in the session already")
#: Element types whose text the client keeps (to find messages such as "done in", "Reused", "Force MAE").
TEXT_FIELDS = {"markdown": ("body",), "alert": ("body",), "heading": ("body",), "text": ("body",),
               "progress": ("text",), "metric": ("label", "body"), "exception": ("type", "message")}
FULL_OK = ForwardMsg.FINISHED_SUCCESSFULLY
FRAGMENT_OK = ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY


class RunTimeout(Exception):
    pass


class Client:
    """One browser tab's worth of Streamlit protocol: one websocket, one Streamlit session."""

    def __init__(self, url: str, auto_rerun: bool = True) -> None:
        self.url = url.replace("http://", "ws://") + "/_stcore/stream"
        self.auto_rerun = auto_rerun
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.pages: dict[str, str] = {}  # page name (title) -> page_script_hash
        self.paths: dict[str, str] = {}  # page name -> url pathname
        self.query_string = ""
        self.page_hash = ""  # the page of the last full run that started
        self.widgets: dict[str, object] = {}  # user key -> the element proto (button, slider...) of the last full run
        self.widget_fragment: dict[str, str] = {}  # user key -> the fragment the widget is drawn in ('' if none)
        self.fragment_done: list[tuple[float, tuple[str, ...]]] = []  # (time, fragment ids) of fragment runs
        self.fragment_started: list[tuple[float, tuple[str, ...]]] = []  # (time, fragment ids) of fragment runs
        self.ok_finishes: list[float] = []  # times of every successful finish (full or fragment run)
        self.texts: list[str] = []  # texts of the current full run (and the fragment runs after it)
        self.types: set[str] = set()  # element types of the current full run
        self.seen: list[str] = []  # every text since the user loop last looked (sidebar included)
        self.states: dict[str, object] = {}  # widget states sent with every rerun of the current page
        self.finished: list[tuple[int, str, int]] = []  # (seq, page hash, status) of full runs
        self.seq = 0  # bumped on every full-run new_session
        self.changed = asyncio.Event()
        self.timers: dict[str, tuple[float, asyncio.Task]] = {}  # fragment id -> (interval, its task)
        self.fragment_runs = 0
        self.closed_error: str | None = None
        self.exceptions: list[str] = []  # st.exception elements drawn (an uncaught error in the page)

    # -- connection -------------------------------------------------------------------------------------
    async def open(self) -> None:
        self.ws = await connect(self.url, subprotocols=["streamlit"], max_size=None, open_timeout=60,
                                ping_interval=None)
        self.reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        for _, task in self.timers.values():
            task.cancel()
        self.timers.clear()
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):
                pass

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                msg = ForwardMsg()
                msg.ParseFromString(data)
                self._handle(msg)
        except Exception as exc:  # a dropped connection: every waiter learns it
            self.closed_error = f"{type(exc).__name__}: {exc}"
        else:
            self.closed_error = self.closed_error or "websocket closed"
        self.changed.set()

    def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            fragment = bool(msg.metadata.run.fragment_ids)
            if fragment:
                self.fragment_started.append((time.perf_counter(), tuple(msg.metadata.run.fragment_ids)))
            else:
                self.seq += 1
                self.page_hash = msg.new_session.page_script_hash
                self.widgets, self.texts, self.types, self.widget_fragment = {}, [], set(), {}
                self._stop_timers()  # the frontend's cleanupAutoReruns on a full run
                for page in msg.new_session.app_pages:
                    self.pages.setdefault(page.page_name, page.page_script_hash)
        elif kind == "navigation":
            for page in msg.navigation.app_pages:
                self.pages[page.page_name] = page.page_script_hash
                self.paths[page.page_name] = page.url_pathname
        elif kind == "page_info_changed":
            self.query_string = msg.page_info_changed.query_string
        elif kind == "delta":
            self._delta(msg.delta)
        elif kind == "auto_rerun":
            self._start_timer(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids:
                self._stop_timers(fid)
        elif kind == "script_finished":
            status = msg.script_finished
            if status in (FULL_OK, FRAGMENT_OK):
                self.ok_finishes.append(time.perf_counter())
            if status == FRAGMENT_OK:
                self.fragment_runs += 1
                self.fragment_done.append((time.perf_counter(), tuple(msg.metadata.run.fragment_ids)))
            else:
                self.finished.append((self.seq, self.page_hash, status))
            self.changed.set()

    def _delta(self, delta) -> None:
        what = delta.WhichOneof("type")
        if what == "add_block":
            block = delta.add_block
            if block.WhichOneof("type") == "expandable":
                self._text(block.expandable.label)
            return
        if what != "new_element":
            return
        element = delta.new_element
        etype = element.WhichOneof("type")
        if etype is None:
            return
        self.types.add(etype)
        inner = getattr(element, etype)
        if etype == "exception":
            self.exceptions.append(f"{inner.type}: {inner.message}"[:200])
        for name in TEXT_FIELDS.get(etype, ()):
            self._text(getattr(inner, name))
        wid = getattr(inner, "id", "") if hasattr(inner, "id") else ""
        if isinstance(wid, str) and "-" in wid:
            self.widgets[wid.rsplit("-", 1)[-1]] = inner
            self.widget_fragment[wid.rsplit("-", 1)[-1]] = delta.fragment_id
        if etype in ("button", "number_input", "slider", "radio", "selectbox", "checkbox", "text_input"):
            self._text(getattr(inner, "label", ""))

    def _text(self, text: str) -> None:
        if text:
            self.texts.append(text)
            self.seen.append(text)

    # -- fragment auto-reruns (the sidebar's job panel polls once a second while a job is active) --------------
    def _start_timer(self, fragment_id: str, interval: float) -> None:
        if not self.auto_rerun or not fragment_id:
            return
        old = self.timers.get(fragment_id)
        if old is not None and old[0] == interval:
            return
        self._stop_timers(fragment_id)
        self.timers[fragment_id] = (interval, asyncio.create_task(self._tick(fragment_id, interval)))

    def _stop_timers(self, fragment_id: str | None = None) -> None:
        for fid in [fragment_id] if fragment_id else list(self.timers):
            entry = self.timers.pop(fid, None)
            if entry is not None:
                entry[1].cancel()

    async def _tick(self, fragment_id: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._send(fragment_id=fragment_id, auto=True)
            except Exception:
                return

    # -- runs ------------------------------------------------------------------------------------------------
    async def _send(self, *, page_hash: str | None = None, page_name: str = "", query: str | None = None,
                    fragment_id: str = "", auto: bool = False, extra: dict | None = None) -> None:
        msg = BackMsg()
        rs = msg.rerun_script
        rs.query_string = self.query_string if query is None else query
        rs.page_script_hash = self.page_hash if page_hash is None else page_hash
        rs.page_name = page_name
        rs.fragment_id = fragment_id
        rs.is_auto_rerun = auto
        rs.context_info.timezone = "UTC"
        rs.context_info.timezone_offset = 0
        rs.context_info.locale = "en-US"
        rs.context_info.url = self.url
        for key, value in {**self.states, **(extra or {})}.items():
            wid = self.widget_id(key)
            if wid is None:
                continue
            ws = rs.widget_states.widgets.add()
            ws.id = wid
            kind, val = value
            if kind == "double_array_value":
                ws.double_array_value.data.extend(val)
            else:
                setattr(ws, kind, val)
        await self.ws.send(msg.SerializeToString())

    async def fragment_rerun(self, fragment_id: str, extra: dict, timeout: float) -> float:
        """A widget change inside a fragment: the frontend reruns only that fragment; seconds until it finished."""
        t0 = time.perf_counter()
        seq0 = self.seq
        await self._send(fragment_id=fragment_id, extra=extra)
        deadline = t0 + timeout
        while True:
            if any(t >= t0 and fragment_id in ids for t, ids in self.fragment_done):
                return time.perf_counter() - t0
            # Streamlit folds a fragment rerun into a full one requested meanwhile (which reruns the fragment too)
            if any(seq > seq0 and status == FULL_OK for seq, _, status in self.finished):
                return time.perf_counter() - t0
            # a run of the fragment started and was stopped for a newer request (e.g. the sidebar's auto-rerun,
            # whose widget states then win): the browser is idle again at the next successful finish
            started = [t for t, ids in self.fragment_started if t >= t0 and fragment_id in ids]
            if started and any(t > started[0] for t in self.ok_finishes):
                return time.perf_counter() - t0
            if self.closed_error:
                raise ConnectionError(self.closed_error)
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RunTimeout("the fragment run did not finish in time")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 5.0))
            except asyncio.TimeoutError:
                pass

    def widget_id(self, key: str) -> str | None:
        inner = self.widgets.get(key)
        return None if inner is None else inner.id

    async def rerun(self, *, page: str | None = None, page_name: str = "", query: str | None = None,
                    extra: dict | None = None, timeout: float = 600.0, wait: bool = True) -> float:
        """Send a rerun (a page switch when ``page`` is given); seconds until that run finished successfully."""
        if page is not None:
            target = self.pages[page]
            self._stop_timers()  # the frontend's onPageChange
            self.states = {}
            # the frontend drops the query string on a page change (filterParamsForPageChange): the app puts
            # its session key back through page_info_changed
            query = "" if query is None else query
        else:
            target = None
        seq0 = self.seq
        t0 = time.perf_counter()
        await self._send(page_hash=target, page_name=page_name, query=query, extra=extra)
        if not wait:
            return 0.0
        await self.wait_run(seq0, target, t0 + timeout)
        return time.perf_counter() - t0

    async def wait_run(self, seq0: int, target: str | None, deadline: float) -> None:
        """Until a full run started after ``seq0`` (of page ``target``, when given) finished successfully."""
        while True:
            for seq, page_hash, status in self.finished:
                if seq > seq0 and status == FULL_OK and (target is None or page_hash == target):
                    return
            if self.closed_error:
                raise ConnectionError(self.closed_error)
            left = deadline - time.perf_counter()
            if left <= 0:
                names = {h: n for n, h in self.pages.items()}
                after = [f"{names.get(h, h)}:{st}" for sq, h, st in self.finished if sq > seq0]
                raise RunTimeout(f"no run of {names.get(target, target)!s} finished in time; full runs after the "
                                 f"send (page:status): {after[-6:]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 5.0))
            except asyncio.TimeoutError:
                pass

    async def wait_text(self, pattern: re.Pattern, deadline: float) -> str | None:
        """Until a text of the current run matches ``pattern``; the text, or None at the deadline."""
        while time.perf_counter() < deadline:
            for text in self.texts:
                if pattern.search(text):
                    return text
            if self.closed_error:
                raise ConnectionError(self.closed_error)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=0.2)
            except asyncio.TimeoutError:
                pass
        return None

    def has_text(self, needle: str) -> bool:
        return any(needle in t for t in self.texts)


def say(i: int, t_start: float, what: str) -> None:
    print(f"[{time.perf_counter() - t_start:7.1f} s] user {i}: {what}", file=sys.stderr, flush=True)


def train_has_model(c: Client) -> bool:
    """Whether the Train page just drawn lists a model (the table, not 'None yet')."""
    return "dataframe" in c.types and not c.has_text("None yet: train one above")


async def user(i: int, url: str, args, results: dict, t_start: float, t_wall: float) -> None:
    await asyncio.sleep(i * args.stagger)
    rng = random.Random(1000 + i)
    record: dict = {"user": i, "latencies": [], "errors": [], "fragment_runs": 0, "unanswered": []}
    results[i] = record
    step = args.step_timeout

    async def light(c: Client, page: str | None = None, slider: bool = False) -> None:
        t_send = time.time()
        if slider:
            inner = c.widgets["data_frame"]
            current = list(inner.value) or list(inner.default)
            lo, hi = int(inner.min), int(inner.max)
            new = current[0] if current else lo
            while hi > lo and new == (current[0] if current else lo):
                new = rng.randint(lo, hi)
            value = ("double_array_value", [float(new)])
            fragment = c.widget_fragment.get("data_frame", "")
            what = "Data (frame slider)"
            try:
                c.states["data_frame"] = value  # sent with every later rerun of the page, as the frontend does
                if fragment:  # the frame explorer is an st.fragment: the frontend reruns just that
                    inner.ClearField("value")
                    inner.value.append(float(new))
                    s = await c.fragment_rerun(fragment, {"data_frame": value}, timeout=step)
                else:
                    s = await c.rerun(timeout=step)
            except RunTimeout:
                record["unanswered"].append({"t": t_send, "what": what})
                record["errors"].append(f"{what}: no answer within {step:.0f} s")
                return
        else:
            what = page
            try:
                s = await c.rerun(page=page, timeout=step)
            except RunTimeout:
                record["unanswered"].append({"t": t_send, "what": what})
                record["errors"].append(f"page switch to {what}: no answer within {step:.0f} s "
                                        f"({sys.exc_info()[1]})"[:400])
                return
        record["latencies"].append({"t": t_send, "s": s, "what": what})
        if args.verbose:
            say(i, t_start, f"{what}: {s:.2f} s")

    c = Client(url, auto_rerun=not args.no_auto_rerun)
    try:
        await c.open()
        t0 = time.perf_counter()
        await c.rerun(query="", timeout=step)
        record["first_run_s"] = time.perf_counter() - t0
        if not any("C6H6" in t for t in c.texts):
            record["errors"].append("first run: no C6H6 on the Data page")
        if not c.query_string.startswith("s="):
            record["errors"].append(f"first run: no session key in the query string ({c.query_string!r})")
        record["key"] = c.query_string
        say(i, t_start, f"opened on the benzene sample ({c.query_string})")
        for page in ("Symmetry", "Covariance", "Train"):
            await c.rerun(page=page, timeout=step)
        if args.m != 200:
            c.states["train_m"] = ("int_value", int(args.m))
            await c.rerun(timeout=step)
        if args.distinct:  # every user its own split: as many fits as users, queued
            c.states["train_seed"] = ("int_value", int(i))
            await c.rerun(timeout=step)
        # press Train; the press must register: the page then shows the fit, the wait for an identical one, or the reuse
        answer = None
        for attempt in range(3):
            seq0 = c.seq
            await c.rerun(extra={"train_run": ("trigger_value", True)}, wait=False)
            deadline = time.perf_counter() + 60
            while time.perf_counter() < deadline and c.seq == seq0 and not c.closed_error:
                await asyncio.sleep(0.05)
            answer = await c.wait_text(TRAIN_ANSWER, deadline)
            if answer:
                break
            record["errors"].append(f"Train press {attempt + 1} not answered within 60 s")
        record["train_clicked_s"] = time.perf_counter() - t_start
        record["train_clicked_t"] = time.time()
        record["train_answer"] = answer
        say(i, t_start, f"pressed Train: {answer!r}")
        reused = bool(answer and "Reused" in answer)
        if reused:  # the rerun after the reuse draws the model table: let it finish
            await c.wait_run(c.seq - 1, None, time.perf_counter() + step)
        # at once: another page (stops the Train page's waiting run), then light interactions until the model is in
        have = reused and train_has_model(c)
        c.seen = []
        await light(c, rng.choice(LIGHT_PAGES))
        k = 0
        while not have:
            await asyncio.sleep(args.think)
            done = any("done in" in t or "Reused" in t for t in c.seen)
            if done or (k + 1) % 8 == 0:
                c.seen = []
                await light(c, "Train")
                have = train_has_model(c)
            else:
                on_data = c.page_hash == c.pages.get("Data") and "data_frame" in c.widgets
                if on_data and rng.random() < 0.5:
                    await light(c, slider=True)
                else:
                    here = [p for p, h in c.pages.items() if h == c.page_hash]
                    await light(c, rng.choice([p for p in LIGHT_PAGES if p not in here]))
            k += 1
            if time.perf_counter() - t_start > args.limit:
                record["errors"].append("no model within the limit")
                break
        record["has_model"] = have
        record["model_s"] = time.perf_counter() - t_start
        record["interactions"] = k + 1
        say(i, t_start, f"model in the session after {k + 1} light interactions" if have else "no model")
        await c.rerun(page="Predictions", timeout=step)
        record["predictions_ok"] = c.has_text("Force MAE") and not c.has_text("No trained model")
        if not record["predictions_ok"]:
            record["errors"].append("Predictions: no Force MAE drawn")
        record["fragment_runs"] += c.fragment_runs
        record["page_exceptions"] = list(c.exceptions)
        key, path = c.query_string, c.paths.get("Predictions", "")
        await c.close()
        # a reload: a new websocket (a new Streamlit session) on the Predictions address with the session key
        say(i, t_start, f"reloading /{path}?{key}")
        c = Client(url, auto_rerun=not args.no_auto_rerun)
        await c.open()
        t0 = time.perf_counter()
        await c.rerun(query=key, page_name=path, timeout=step)
        record["reload_s"] = time.perf_counter() - t0
        kept = c.has_text("Force MAE") and not c.has_text("No trained model")
        if kept:
            await c.rerun(page="Train", timeout=step)
            kept = train_has_model(c)
        record["kept_after_reload"] = kept
        record["key_after_reload"] = c.query_string
        say(i, t_start, f"reloaded: model kept {kept}")
    except Exception as exc:  # report every user, even one that failed
        record["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
        say(i, t_start, f"failed: {record['errors'][-1]}")
        record["page_exceptions"] = record.get("page_exceptions", []) + c.exceptions
    finally:
        record["fragment_runs"] += c.fragment_runs
        await c.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict:
    r = lambda x: None if x is None else round(x, 3)  # noqa: E731
    return {"n": len(values), "p50": r(percentile(values, 0.5)), "p95": r(percentile(values, 0.95)),
            "max": r(max(values)) if values else None, "mean": r(statistics.fmean(values)) if values else None}


async def sample_load(samples: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(os.getloadavg()[0])
        try:
            await asyncio.wait_for(stop.wait(), timeout=5.0)
        except asyncio.TimeoutError:
            pass


async def main_async(args) -> dict:
    workspace = Path(tempfile.mkdtemp(prefix="aff_load_ws_"))
    log_dir = Path(tempfile.mkdtemp(prefix="aff_load_log_"))
    run_log = log_dir / "runs.jsonl"
    env = {"AFF_WORKSPACE": str(workspace), "AFF_RUN_LOG": str(run_log)}
    for item in args.server_env:  # diagnosis only, e.g. STREAMLIT_RUNNER_POST_SCRIPT_GC=false
        name, _, value = item.partition("=")
        env[name] = value
    log_path = log_dir / "server.log"
    print(f"workspace {workspace}, run log {run_log}, server log {log_path}", file=sys.stderr, flush=True)
    pid_file = os.environ.get("AFF_LOAD_PID_FILE")  # (diagnosis: where to write the server's pid, e.g. for py-spy)
    results: dict = {}
    load_before = os.getloadavg()
    loads: list[float] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with serve(free_port(), log_path, env) as (url, server):
        if pid_file:
            Path(pid_file).write_text(str(server.pid))
        t_start = time.perf_counter()
        t_wall = time.time()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_load(loads, stop))
        await asyncio.gather(*(user(i, url, args, results, t_start, t_wall) for i in range(args.users)))
        stop.set()
        await sampler
        t_end = time.time()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    runs = [json.loads(line) for line in run_log.read_text().splitlines() if line.strip()]
    clicked = [r["train_clicked_t"] for r in results.values() if "train_clicked_t" in r]
    with sqlite3.connect(workspace / "index.sqlite3") as con:
        stored = [row[0] for row in con.execute("SELECT created FROM models")]  # when each fit was stored
    window = (min(clicked), max(stored)) if clicked and stored else (t_wall, t_end)
    lat = [x for r in results.values() for x in r["latencies"]]
    during = [x for x in lat if window[0] <= x["t"] <= window[1]]
    outside = [x for x in lat if not window[0] <= x["t"] <= window[1]]

    def by_what(items):
        names = sorted({x["what"] for x in items})
        return {n: summary([x["s"] for x in items if x["what"] == n]) for n in names}

    in_window = [r for r in runs if window[0] <= r["t"] <= window[1]]
    ok_in = [r for r in in_window if r["outcome"] == "ok"]
    pages = sorted({r["page"] for r in runs})
    with_model = [r for r in results.values() if r.get("has_model")]
    server_errors = [line for line in log_path.read_text(errors="replace").splitlines()
                     if "Traceback" in line or "Error" in line or "Exception" in line]
    report = {
        "users": args.users, "m": args.m, "server_env": args.server_env, "distinct_seeds": args.distinct, "think_s": args.think,
        "stagger_s": args.stagger, "auto_rerun": not args.no_auto_rerun, "cpus": os.cpu_count(),
        "fit_window_s": round(window[1] - window[0], 1),
        "latency_s": {
            "during_fit": summary([x["s"] for x in during]),
            "outside_fit": summary([x["s"] for x in outside]),
            "during_fit_by_page": by_what(during),
        },
        "server_run_s_during_fit": {
            "light_pages": summary([r["s"] for r in ok_in if r["page"] in LIGHT_PAGES]),
            "light_pages_and_train": summary([r["s"] for r in ok_in if r["page"] in LIGHT_PAGES + ("Train",)]),
            "by_page": {p: summary([r["s"] for r in ok_in if r["page"] == p]) for p in pages
                        if any(r["page"] == p for r in ok_in)},
            "stopped_or_rerun": sum(1 for r in in_window if r["outcome"] != "ok"),
        },
        "server_run_s_all": {p: summary([r["s"] for r in runs if r["page"] == p and r["outcome"] == "ok"])
                             for p in pages},
        "time_to_all_models_s": (round(max(r["model_s"] for r in with_model), 1)
                                 if len(with_model) == args.users else None),
        "users_with_model": len(with_model),
        "fits_computed": len(stored),
        "users_reusing_a_stored_fit": sum(1 for r in results.values() if (r.get("train_answer") or "").startswith("Reused")),
        "lost": sum(1 for r in results.values() if not r.get("kept_after_reload")),
        "unanswered_interactions": [[r["user"], round(x["t"] - window[0], 1), x["what"]]
                                    for r in results.values() for x in r["unanswered"]],
        "first_run_s": summary([r["first_run_s"] for r in results.values() if "first_run_s" in r]),
        "reload_s": summary([r["reload_s"] for r in results.values() if "reload_s" in r]),
        "fragment_auto_reruns": sum(r["fragment_runs"] for r in results.values()),
        "errors": {r["user"]: r["errors"] for r in results.values() if r["errors"]},
        # every light interaction: [user, seconds after the first Train press at the send, latency s, what]
        "interactions": sorted([r["user"], round(x["t"] - window[0], 2), round(x["s"], 3), x["what"]]
                               for r in results.values() for x in r["latencies"]),
        "page_exceptions": {r["user"]: r["page_exceptions"] for r in results.values() if r.get("page_exceptions")},
        "server_log_error_lines": server_errors[:20],
        "load_average": {"before_1min": round(load_before[0], 2), "max_1min_during": max(loads) if loads else None,
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "client_cpu_s": round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 1),
        "wall_s": round(t_end - t_wall, 1),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--m", type=int, default=200, help="training frames (the Train page's default: 200)")
    parser.add_argument("--distinct", action="store_true",
                        help="each user trains with its own split seed (no identical requests: the queue's worst case)")
    parser.add_argument("--think", type=float, default=1.0, help="seconds between two light interactions")
    parser.add_argument("--stagger", type=float, default=0.2, help="seconds between two users' starts")
    parser.add_argument("--limit", type=float, default=1200.0, help="give up waiting for a model after this, s")
    parser.add_argument("--step-timeout", type=float, default=300.0,
                        help="longest wait for one script run, s (a light interaction not answered by then is "
                             "counted as unanswered and the user goes on)")
    parser.add_argument("--no-auto-rerun", action="store_true",
                        help="do not rerun the fragments that ask for it (the sidebar's job panel, once a second)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable for the server (diagnosis; repeatable)")
    parser.add_argument("--verbose", action="store_true", help="log every light interaction on stderr")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
