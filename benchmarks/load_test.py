"""A class under load (issue 19): N users take the default tour at once, in real browsers, on one server.

The server is started as the README does (``bash scripts/start.sh``) on a fresh workspace folder. Each
user is its own Playwright browser context (its own Streamlit session) in one headless Debian chromium,
and takes the tour a student would: the app opens on the benzene sample → Symmetry → Covariance →
Train with the defaults (AFF, M = 200, γ and λ by the likelihood search) → while the fit runs, light
interactions (page switches Data ↔ Symmetry) → Predictions → a reload, to check nothing was lost.
Users start a little apart (``--stagger``), as a room does.

Reported (JSON on the last line, and ``--out``):

* ``latency_s``: p50/p95/max of the light interactions made while a fit was running (click → the new
  page drawn and the script finished, as the user's browser sees it), and their count;
* ``server_run_s_light_pages_during_fit``: the server's own time for those runs (``AFF_RUN_LOG``: app.py
  and the page, without the browser's rendering), from the first Train click to the end of the fit;
* ``time_to_all_models_s``: from the first user's start until every user's session had its model;
* ``fits_computed``: model files stored in the workspace (identical requests should give 1);
* ``lost``: users whose data or model was missing after the reload (target 0).

The browsers run on the same machine as the server (2 cores here), so they compete with it for CPU:
the figures are an upper bound on what users on their own machines would see. Not a test (the unit
tests keep a small version: tests/test_app_jobs.py).

    .venv/bin/python benchmarks/load_test.py --users 20 --out docs/load_test.json 2> docs/load_test.log
    .venv/bin/python benchmarks/load_test.py --users 20 --distinct --out docs/load_test_distinct.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.helpers import CHROMIUM, CHROMIUM_ARGS, free_port, serve  # noqa: E402

STATUS = '[data-testid="stStatusWidget"]'
TITLES = {"Data": "Data", "Symmetry": "Symmetry", "Covariance": "Force covariance (Fig. 1)", "Train": "Train",
          "Predictions": "Predictions"}


async def settle(page) -> None:
    """Until the script run in progress has finished (Streamlit's status widget gone)."""
    await page.wait_for_function(f"() => !document.querySelector('{STATUS}')")


async def switch(page, name: str) -> float:
    """Click the sidebar link ``name``; seconds until that page's title is drawn and its run finished."""
    t0 = time.perf_counter()
    await page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True).click()
    await page.get_by_role("heading", name=TITLES[name], exact=True).first.wait_for()
    await settle(page)
    return time.perf_counter() - t0


async def has_model(page) -> bool:
    """Whether the Train page lists a model (waits until it shows the table or says there is none)."""
    table = page.locator('[data-testid="stDataFrame"]')
    await table.or_(page.get_by_text("None yet: train one above")).first.wait_for()
    return await table.count() > 0


def say(i: int, t_start: float, what: str) -> None:
    print(f"[{time.perf_counter() - t_start:7.1f} s] user {i}: {what}", file=sys.stderr, flush=True)


async def user(i: int, browser, url: str, args, results: dict, t_start: float) -> None:
    await asyncio.sleep(i * args.stagger)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(args.step_timeout * 1000)
    record = {"user": i, "latencies": [], "errors": []}
    results[i] = record
    try:
        await page.goto(url)
        await page.wait_for_selector('[data-testid="stMainBlockContainer"]')
        await settle(page)
        await page.get_by_text("C6H6").first.wait_for()
        say(i, t_start, "opened on the benzene sample")
        await switch(page, "Symmetry")
        await switch(page, "Covariance")
        await switch(page, "Train")
        m_box = page.locator(".st-key-train_m input")
        if args.m != 200:
            await m_box.fill(str(args.m))
            await m_box.press("Enter")
            await settle(page)
        if args.distinct:  # every user its own split: as many fits as users, queued
            seed_box = page.locator(".st-key-train_seed input")
            await seed_box.fill(str(i))
            await seed_box.press("Enter")
            await settle(page)
        # the press must register: the page then shows the fit, the wait for an identical one, or the reuse
        answer = page.get_by_text(re.compile("Training AFF|Waiting for the identical fit|Reused"))
        for attempt in range(3):
            await page.locator(".st-key-train_run button").click()
            try:
                await answer.first.wait_for(timeout=60_000)
                break
            except Exception:  # a click that landed while the page was redrawn: press again
                record["errors"].append(f"Train press {attempt + 1} not answered within 60 s")
        record["train_clicked_s"] = time.perf_counter() - t_start
        say(i, t_start, "pressed Train")
        # the fit runs in the server's queue: move around while it does (light interactions)
        sidebar = page.get_by_test_id("stSidebar")
        await asyncio.sleep(1.0)
        pages = ["Data", "Symmetry"]
        k = 0
        while True:
            # over when the job is done, or when there was none (the fit was reused from the workspace)
            reused = await page.get_by_text("Reused").count()
            done = await sidebar.get_by_text("done in").count()
            no_job = k > 0 and await sidebar.get_by_text("Jobs", exact=True).count() == 0
            if reused or done or no_job:
                record["reused"] = bool(reused or no_job)
                break
            record["latencies"].append(await switch(page, pages[k % 2]))
            k += 1
            await asyncio.sleep(args.think)
            if time.perf_counter() - t_start > args.limit:
                record["errors"].append("no model within the limit")
                break
        say(i, t_start, f"fit over after {k} light interactions")
        await switch(page, "Train")
        record["has_model"] = await has_model(page)
        record["model_s"] = time.perf_counter() - t_start
        await switch(page, "Predictions")
        await page.locator('[data-testid="stMetric"]', has_text="Force MAE").first.wait_for()
        # a reload: same address (with the session key), a new Streamlit session
        say(i, t_start, f"reloading {page.url}")
        await page.reload()
        await page.wait_for_selector('[data-testid="stMainBlockContainer"]')
        await settle(page)
        await switch(page, "Train")
        record["kept_after_reload"] = await has_model(page)
        if not record["kept_after_reload"]:
            await page.screenshot(path=f"/tmp/load_user{i}.png")
        say(i, t_start, f"reloaded: model kept {record['kept_after_reload']}")
    except Exception as exc:  # report every user, even one that failed
        record["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
        say(i, t_start, f"failed: {record['errors'][-1]}")
    finally:
        await context.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def main_async(args) -> dict:
    from playwright.async_api import async_playwright

    workspace = Path(tempfile.mkdtemp(prefix="aff_load_ws_"))
    log_dir = Path(tempfile.mkdtemp(prefix="aff_load_log_"))
    run_log = log_dir / "runs.jsonl"
    env = {"AFF_WORKSPACE": str(workspace), "AFF_RUN_LOG": str(run_log)}
    log_path = log_dir / "server.log"
    results: dict = {}
    if args.pin:
        env["AFF_MAX_JOBS"] = "1"  # the server gets one core: one fit at a time
    with serve(free_port(), log_path, env) as (url, server):
        if args.pin:
            # the server (every thread) on the first core, this driver and the browsers it starts on the rest
            cores = sorted(os.sched_getaffinity(0))
            subprocess.run(["taskset", "-a", "-p", "-c", str(cores[0]), str(server.pid)], check=True,
                           capture_output=True)
            os.sched_setaffinity(0, set(cores[1:]))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            t_start = time.perf_counter()
            t_wall = time.time()
            await asyncio.gather(*(user(i, browser, url, args, results, t_start) for i in range(args.users)))
            await browser.close()
    # the server's own time per script run (app.py + page), for runs of the light pages while the fit ran
    runs = [json.loads(line) for line in run_log.read_text().splitlines() if line.strip()]
    clicked = [t_wall + r["train_clicked_s"] for r in results.values() if "train_clicked_s" in r]
    with sqlite3.connect(workspace / "index.sqlite3") as con:
        stored = [row[0] for row in con.execute("SELECT created FROM models")]  # when each fit was stored
    window = (min(clicked), max(stored)) if clicked and stored else (t_wall, time.time())
    light = [r["s"] for r in runs if r["page"] in ("Data", "Symmetry") and r["outcome"] == "ok"
             and window[0] <= r["t"] <= window[1]]
    every = [r["s"] for r in runs if r["outcome"] == "ok"]
    fits = len(stored)
    latencies = [x for r in results.values() for x in r["latencies"]]
    with_model = [r for r in results.values() if r.get("has_model")]
    report = {
        "users": args.users, "m": args.m, "distinct_seeds": args.distinct, "pinned": args.pin, "stagger_s": args.stagger, "cpus": os.cpu_count(),
        "latency_s": {"n": len(latencies), "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
                      "max": max(latencies) if latencies else None,
                      "mean": statistics.fmean(latencies) if latencies else None},
        "server_run_s_light_pages_during_fit": {"n": len(light), "p50": percentile(light, 0.5),
                                                "p95": percentile(light, 0.95), "max": max(light) if light else None},
        "fit_window_s": window[1] - window[0],
        "server_run_s_all": {"n": len(every), "p50": percentile(every, 0.5), "p95": percentile(every, 0.95)},
        "time_to_all_models_s": (max(r["model_s"] for r in with_model) if len(with_model) == args.users else None),
        "users_with_model": len(with_model),
        "fits_computed": fits,
        "users_reusing_a_stored_fit": sum(1 for r in results.values() if r.get("reused")),
        "lost": sum(1 for r in results.values() if not r.get("kept_after_reload")),
        "errors": {r["user"]: r["errors"] for r in results.values() if r["errors"]},
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--m", type=int, default=200, help="training frames (the Train page's default: 200)")
    parser.add_argument("--distinct", action="store_true",
                        help="each user trains with its own split seed (no identical requests: the queue's worst case)")
    parser.add_argument("--pin", action="store_true",
                        help="server on the first core, browsers on the others (their rendering off the server's CPU)")
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between two users' starts")
    parser.add_argument("--think", type=float, default=0.5, help="seconds between two light interactions")
    parser.add_argument("--limit", type=float, default=1200.0, help="give up waiting for a model after this, s")
    parser.add_argument("--step-timeout", type=float, default=600.0, help="longest wait for one step, s")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
