"""Helpers shared by the browser tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"data", "blob", "about"}
SCREENSHOT_DIR = REPO_ROOT / "docs" / "screenshots"


def unavailable(reason: str) -> None:
    """Skip locally; fail loudly in CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def is_local_url(url: str) -> bool:
    """True for 127.0.0.1/localhost URLs and data:, blob:, about: URLs."""
    parsed = urlparse(url)
    if parsed.scheme in LOCAL_SCHEMES:
        return True
    return parsed.scheme in ("http", "https", "ws", "wss") and (parsed.hostname or "") in LOCAL_HOSTS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def goto_app(page, app_url: str, path: str = "") -> None:
    """Open ``app_url/path`` and wait until the app has finished its first run."""
    page.goto(f"{app_url}/{path.lstrip('/')}")
    page.wait_for_selector('[data-testid="stApp"]')
    # Streamlit shows a "running" status widget while the script runs.
    page.wait_for_selector('[data-testid="stMainBlockContainer"]')
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000
    )


def load_sample(page, name: str, formula: str) -> None:
    """Choose a bundled sample on the Data page, load it and wait for its formula."""
    from playwright.sync_api import expect

    page.locator(".st-key-data_sample_choice input").click()
    page.get_by_role("option", name=name).click()
    # choosing a sample reruns the page; while it does, the old and new tab panels
    # can both be in the DOM: wait for the rerun to settle on one button
    load = page.locator(".st-key-data_sample_load button")
    for attempt in range(20):
        expect(load).to_have_count(1, timeout=30_000)
        try:
            load.click(timeout=10_000)
            break
        except Exception as exc:  # playwright's Error: the stale panel came back between count and click
            if "strict mode violation" not in str(exc) or attempt == 19:
                raise
            page.wait_for_timeout(250)
    expect(page.get_by_text(formula).first).to_be_visible()


@contextlib.contextmanager
def serve(port: int, log_path: Path, env: dict | None = None):
    """Serve the app exactly as the README does (``bash scripts/start.sh``) on ``port``; yield (url, process).

    Only the port and headless mode are added. ``start.sh`` execs Streamlit, so the process is the server.
    """
    cmd = ["bash", "scripts/start.sh", "--server.headless", "true", "--server.port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=None if env is None else {**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health within 90 s:\n"
                            f"{log_path.read_text(errors='replace')}")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
