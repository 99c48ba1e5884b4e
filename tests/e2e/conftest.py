"""Browser-test fixtures: one Streamlit server and one headless Debian chromium per session.

Reusable by every browser test (``@pytest.mark.browser``):

- ``app_server``/``app_url``: the app served by ``bash scripts/start.sh`` (as the README says) on a free
  127.0.0.1 port: (url, server pid) / the url.
- ``browser``: Playwright chromium at ``/usr/bin/chromium`` (never ``playwright install``).
- ``page``: a fresh page (new context, 1400x1000) whose every request is recorded in
  ``request_log``; at teardown any request that left 127.0.0.1 fails the test.

Helpers (``goto_app``, ``is_local_url``, ``SCREENSHOT_DIR``) live in ``helpers.py``.

Missing chromium or playwright: skipped on a developer machine, but a hard
failure under ``CI=true`` (the browser tests must never silently skip in CI).
"""

from __future__ import annotations

import pytest

from .helpers import CHROMIUM, CHROMIUM_ARGS, free_port, is_local_url, serve, unavailable


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """Serve the app exactly as the README does (``bash scripts/start.sh``) on a free port; yield (url, pid).

    Only the port and headless mode are added: every other setting (the file watcher among them) is
    the one a user gets. ``start.sh`` execs Streamlit, so ``pid`` is the server's own process.
    """
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with serve(free_port(), log_path) as (url, proc):
        yield url, proc.pid


@pytest.fixture(scope="session")
def app_url(app_server) -> str:
    """Base URL of the served app."""
    return app_server[0]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright's sync API."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} not found (bash scripts/setup.sh --dev installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    from playwright.sync_api import expect

    # the 2-core CI machine is slow on a cold start: wait up to 30 s for each expectation
    expect.set_options(timeout=30_000)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def request_log() -> list[str]:
    """URLs of every request the page (and its iframes) made."""
    return []


@pytest.fixture
def page(browser, request_log):
    """A fresh browser page; fails the test at teardown if any request left 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.on("request", lambda req: request_log.append(req.url))
    pg.set_default_timeout(60_000)
    yield pg
    context.close()
    external = sorted({u for u in request_log if not is_local_url(u)})
    if external:
        pytest.fail(f"requests left 127.0.0.1: {external[:10]}")
