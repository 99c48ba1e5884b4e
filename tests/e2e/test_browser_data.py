"""The Data page in a real browser: plots drawn, 3D view rendered by WebGL, nothing fetched from outside."""

from __future__ import annotations

import time

import pytest

from .helpers import SCREENSHOT_DIR, goto_app, is_local_url, load_sample

pytestmark = pytest.mark.browser


def test_is_local_url_classifies_hosts():
    assert is_local_url("http://127.0.0.1:8501/_stcore/health")
    assert is_local_url("ws://localhost:8501/_stcore/stream")
    assert is_local_url("data:image/png;base64,AAAA")
    assert is_local_url("blob:http://127.0.0.1:8501/abc")
    assert is_local_url("about:srcdoc")
    assert not is_local_url("https://cdn.jsdelivr.net/npm/3dmol@2.5.5/build/3Dmol-min.js")
    assert not is_local_url("https://fonts.googleapis.com/css")
    assert not is_local_url("http://127.0.0.1.evil.example/")


def _expect():
    from playwright.sync_api import expect

    return expect


def test_data_page_sample_plots_and_3d_view(page, app_url, request_log):
    expect = _expect()
    goto_app(page, app_url)

    # a fresh session opens on the bundled benzene sample
    expect(page.get_by_text("C6H6").first).to_be_visible()

    # pick another bundled sample and load it
    load_sample(page, "uracil", "C4H4N2O2")

    # energy and force plots drawn by plotly, with unit-bearing axis titles
    expect(page.locator(".main-svg").first).to_be_visible()
    expect(page.locator("text.ytitle", has_text="energy (kcal/mol)").first).to_be_visible()
    expect(page.locator("text.ytitle", has_text="max |F| (kcal/mol/Å)").first).to_be_visible()

    # the 3D view: 3Dmol.js (inlined) ran and drew into a WebGL canvas
    frame = page.frame_locator("iframe").first
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached()
    expect(frame.locator("canvas").first).to_be_visible()
    expect(frame.locator("#aff-legend")).to_contain_text("kcal/mol/Å")

    # the frame slider moves the selection and redraws the view
    slider = page.locator('.st-key-data_frame input[type="range"]')
    expect(slider).to_have_value("0")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(slider).to_have_value("1")
    expect(frame.locator("#aff-legend")).to_contain_text("frame 1")
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached()
    # the early frames start from a relaxed geometry (tiny forces): show the last one
    last = slider.get_attribute("max")
    page.keyboard.press("End")
    expect(slider).to_have_value(last)
    expect(frame.locator("#aff-legend")).to_contain_text(f"frame {last}")

    # Streamlit scrolls inside its own container: a tall viewport shows the whole page
    page.set_viewport_size({"width": 1400, "height": 1500})
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached()
    page.wait_for_timeout(800)  # let WebGL present the last frame before the screenshot
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "data.png"), full_page=True)

    assert any("/_stcore/" in u for u in request_log), "the page made no requests to the local server?"
    external = [u for u in request_log if not is_local_url(u)]
    assert not external, f"requests left 127.0.0.1: {external[:10]}"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads, s (Linux /proc)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_open_tab_leaves_the_server_idle(app_server, page):
    """With a tab open and nothing happening, the server (started as the README does) burns no core.

    Streamlit's file watcher used to walk .venv endlessly: 0.86 of a core and fits twice as slow.
    """
    from playwright.sync_api import expect

    url, pid = app_server
    goto_app(page, url)
    expect(page.get_by_text("C6H6").first).to_be_visible()
    page.wait_for_timeout(2000)  # let the first run's work settle
    t0, c0 = time.monotonic(), _cpu_seconds(pid)
    page.wait_for_timeout(8000)
    used = (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    assert used < 0.1, f"the idle server used {used:.2f} of a core"
