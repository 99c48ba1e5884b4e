"""The main journey in a real browser: benzene sample -> Symmetry (2 PE sets) -> Train AFF on M = 200 with
estimated hyperparameters -> Predictions (interval bands, parity plots, force arrows in WebGL) -> Compare.

Screenshots of the three model pages go to docs/screenshots/{train,predictions,compare}.png.
"""

from __future__ import annotations

import time

import pytest

from .helpers import SCREENSHOT_DIR, goto_app, is_local_url

pytestmark = pytest.mark.browser

#: Training M = 200 with the hyperparameter search, then predicting the held-out frames:
#: about a minute on an idle 2-core machine, several under heavy load.
TRAIN_TIMEOUT_MS = 420_000
#: Held-out frames evaluated after training (fewer than the default 200 keeps the test short).
N_TEST = 50


def _expect():
    from playwright.sync_api import expect

    return expect


def _settle(page, ms: int = 800) -> None:
    """Wait for the script run to finish, then give WebGL/plotly a moment to paint."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(ms)


def _shot(page, name: str, height: int) -> None:
    page.set_viewport_size({"width": 1400, "height": height})
    _settle(page, 1500)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def _nav(page, name: str) -> None:
    """Switch page through the sidebar (same session; a URL would start a fresh one)."""
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True).click()


def _number_box(page, label: str):
    return page.locator('[data-testid="stNumberInput"]', has_text=label).first.locator("input")


def _set_number(page, label: str, value: int) -> None:
    box = _number_box(page, label)
    box.fill(str(value))
    box.press("Enter")
    _settle(page, 300)


def learning_curves(page) -> None:
    """On the Compare page: AFF and GDML at M = 50, 100 with γ, λ fixed (no search) on 50 test frames."""
    expect = _expect()
    page.get_by_text("fix γ and λ").click()
    _settle(page, 300)
    _set_number(page, "γ (1/Å)", 4)
    _set_number(page, "Test frames", N_TEST)
    sizes = page.locator('[data-testid="stMultiSelect"]', has_text="Training sizes")
    sizes.get_by_role("button", name="Remove 200").click()
    _settle(page, 300)
    expect(sizes.get_by_role("button", name="Remove 200")).to_have_count(0)
    expect(sizes.get_by_role("button", name="Remove 100")).to_be_visible()
    page.get_by_role("button", name="Compute learning curves").click()
    expect(page.locator("text.gtitle", has_text="Learning curves").first).to_be_visible(timeout=180_000)
    expect(page.locator("text.gtitle", has_text="Uncertainty").first).to_be_visible()
    expect(page.locator(".legendtext", has_text="GDML").first).to_be_attached()
    # the table of points (a canvas grid) is drawn
    expect(page.locator('[data-testid="stDataFrame"]').last.locator("canvas").first).to_be_attached()


def test_train_predict_compare_journey(page, app_url, request_log):
    expect = _expect()
    t0 = time.monotonic()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()  # a fresh session opens on the benzene sample

    # -- Symmetry: benzene has 2 PE sets (6 C, 6 H)
    _nav(page, "Symmetry")
    sets_metric = page.locator('[data-testid="stMetric"]', has_text="PE sets").first
    expect(sets_metric.locator('[data-testid="stMetricValue"]')).to_have_text("2")

    # -- Train: AFF, M = 200 (default), estimated hyperparameters (default); cost shown before the button
    _nav(page, "Train")
    expect(page.get_by_role("heading", name="Train").first).to_be_visible()
    expect(page.locator('[data-testid="stMetric"]', has_text="Cholesky work")).to_contain_text("31.1 GFLOP")
    expect(page.get_by_text("PE sets: 2").first).to_be_visible()
    m_box = _number_box(page, "Training frames M")
    expect(m_box).to_have_value("200")
    _set_number(page, "Test frames", N_TEST)
    t_train = time.monotonic()
    page.get_by_role("button", name="Train", exact=True).click()
    success = page.locator('[data-testid="stAlertContentSuccess"]', has_text="Trained")
    expect(success).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    train_s = time.monotonic() - t_train
    expect(success).to_contain_text("AFF M=200 seed 0")
    expect(success).to_contain_text("held-out force MAE")
    table = page.locator('[data-testid="stDataFrame"]').first
    expect(table).to_be_visible()
    _shot(page, "train", 1500)

    # -- Predictions: bands (filled), parity plots, calibration, arrows on a WebGL molecule
    _nav(page, "Predictions")
    expect(page.get_by_role("heading", name="Predictions").first).to_be_visible()
    expect(page.locator('[data-testid="stMetric"]', has_text="Force MAE")).to_be_visible(timeout=120_000)
    expect(page.get_by_text(f"{N_TEST} frames: the {N_TEST} test frames drawn").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Force F_x on C0").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Energy: prediction").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Parity, force components").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Parity, energy").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Calibration of the latent intervals").first).to_be_visible()
    # the band: a filled path between the lower and upper bound traces
    expect(page.locator(".scatterlayer .js-fill").first).to_be_attached()
    assert page.locator(".legendtext", has_text="95% interval (latent)").count() >= 1
    frame = page.frame_locator("iframe").first
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached(timeout=60_000)
    expect(frame.locator("canvas").first).to_be_visible()
    expect(frame.locator("#aff-legend")).to_contain_text("reference force")
    expect(frame.locator("#aff-legend")).to_contain_text("predicted force")
    expect(page.get_by_role("button", name="Predictions CSV", exact=False)).to_be_visible()
    _shot(page, "predictions", 3300)

    # -- Compare: the model is listed with its metrics
    _nav(page, "Compare")
    expect(page.get_by_role("heading", name="Compare").first).to_be_visible()
    cmp_table = page.locator('[data-testid="stDataFrame"]').first
    expect(cmp_table).to_be_visible()
    expect(page.get_by_text("Learning curves (Fig. 3)").first).to_be_visible()
    expect(page.get_by_role("button", name="Compute learning curves")).to_be_visible()
    learning_curves(page)
    _shot(page, "compare", 1900)

    external = [u for u in request_log if not is_local_url(u)]
    assert not external, f"requests left 127.0.0.1: {external[:10]}"
    print(f"journey {time.monotonic() - t0:.0f} s, of which training and evaluation {train_s:.0f} s")
