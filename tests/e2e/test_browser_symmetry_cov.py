"""The Symmetry and Covariance pages in a real browser: PE sets on a WebGL molecule, heatmaps drawn by plotly."""

from __future__ import annotations

import pytest

from .helpers import SCREENSHOT_DIR, goto_app, is_local_url

pytestmark = pytest.mark.browser


def _expect():
    from playwright.sync_api import expect

    return expect


def test_symmetry_and_covariance_pages(page, app_url, request_log):
    expect = _expect()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()  # a fresh session opens on benzene

    # -- Symmetry: 2 PE sets for benzene, drawn in colour on the 3D molecule
    page.get_by_role("link", name="Symmetry").click()
    expect(page.get_by_role("heading", name="Symmetry").first).to_be_visible()
    sets_metric = page.locator('[data-testid="stMetric"]', has_text="PE sets").first
    expect(sets_metric.locator('[data-testid="stMetricValue"]')).to_have_text("2")
    perms_metric = page.locator('[data-testid="stMetric"]', has_text="Permutations S").first
    expect(perms_metric.locator('[data-testid="stMetricValue"]')).to_have_text("12")
    frame = page.frame_locator("iframe").first
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached()
    expect(frame.locator("canvas").first).to_be_visible()
    legend = page.locator(".aff-pe-legend")
    expect(legend).to_contain_text("set 1")
    expect(legend).to_contain_text("set 2")
    expect(page.get_by_text("GFLOP").first).to_be_visible()
    page.set_viewport_size({"width": 1400, "height": 1700})
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached()
    page.wait_for_timeout(800)  # let WebGL present before the screenshot
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "symmetry.png"), full_page=True)

    # -- Covariance: heatmaps drawn, with colour bars and unit-bearing titles
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.get_by_role("link", name="Covariance").click()
    expect(page.get_by_role("heading", name="Force covariance").first).to_be_visible()
    expect(page.locator(".heatmaplayer").first).to_be_attached()
    expect(page.locator(".main-svg .heatmaplayer image").first).to_be_attached()
    expect(page.locator(".colorbar").first).to_be_attached()
    expect(page.locator(".colorbar", has_text="correlation (unitless)").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Empirical force correlation").first).to_be_visible()
    # kernel, empirical, one PE set: wait for the third (plotly draws them one after another)
    page.locator(".heatmaplayer").nth(2).wait_for(state="attached", timeout=30_000)
    page.set_viewport_size({"width": 1400, "height": 1900})
    page.wait_for_timeout(800)
    page.screenshot(path=str(SCREENSHOT_DIR / "covariance.png"), full_page=True)

    external = [u for u in request_log if not is_local_url(u)]
    assert not external, f"requests left 127.0.0.1: {external[:10]}"
