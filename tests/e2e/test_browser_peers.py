"""The peers in a real browser (issue 16): on the benzene sample, train AFF (γ, λ fixed), the DCF-style network and
the sgdml package on the Train page; Predictions of the network say it has no interval and draw no band; Compare
runs the conservation check of all three.

Screenshots: docs/screenshots/{predictions_dcf,compare_peers}.png.
"""

from __future__ import annotations

import pytest

from .helpers import goto_app
from .test_browser_journey import N_TEST, _expect, _nav, _set_number, _settle, _shot

pytestmark = pytest.mark.browser

#: Each fit here takes seconds to a minute on an idle 2-core machine (the package's σ search the longest).
FIT_TIMEOUT_MS = 300_000


def _train(page, model_label: str, m: int, name: str) -> None:
    expect = _expect()
    _nav(page, "Train")
    expect(page.get_by_role("heading", name="Train").first).to_be_visible()
    page.locator('[data-testid="stRadio"]', has_text="Model").first.get_by_text(model_label, exact=True).click()
    _settle(page, 300)
    _set_number(page, "Training frames M", m)
    _set_number(page, "Test frames", N_TEST)
    page.get_by_role("button", name="Train", exact=True).click()
    success = page.locator('[data-testid="stAlertContentSuccess"]', has_text=name)
    expect(success).to_be_visible(timeout=FIT_TIMEOUT_MS)


def test_peers_train_predict_and_conservation(page, app_url):
    expect = _expect()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()

    # -- AFF with γ and λ by hand (fast), then the two peers
    _nav(page, "Train")
    page.locator('[data-testid="stRadio"]', has_text="Hyperparameters").first.get_by_text(
        "set γ and λ by hand", exact=True).click()
    _settle(page, 300)
    _train(page, "AFF", 100, "AFF M=100 seed 0")
    _train(page, "DCF-style net", 200, "DCF-style net M=200 seed 0")
    expect(page.locator('[data-testid="stAlertContentSuccess"]')).to_contain_text("no predictive interval")
    _train(page, "sgdml package", 100, "sgdml package M=100 seed 0")

    # -- Predictions of the network: means, no band, no calibration curve, said so
    _nav(page, "Predictions")
    sel = page.locator('[data-testid="stSelectbox"]', has_text="Model").first
    sel.click()
    page.get_by_role("option", name="DCF-style net M=200 seed 0", exact=False).click()
    _settle(page, 500)
    expect(page.get_by_text("no predictive interval").first).to_be_visible(timeout=120_000)
    expect(page.get_by_text("No calibration curve").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="no interval").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Calibration")).to_have_count(0)
    _shot(page, "predictions_dcf", 2600)

    # -- Compare: the three models in the table, the conservation check of all of them
    _nav(page, "Compare")
    expect(page.get_by_role("heading", name="Conservation check").first).to_be_visible()
    _set_number(page, "MD steps", 400)
    page.get_by_role("button", name="Run the conservation check").click()
    chart = page.locator("text.gtitle", has_text="energy")
    expect(page.locator(".legendtext", has_text="AFF M=100 seed 0 (conservative)").first).to_be_attached(
        timeout=FIT_TIMEOUT_MS)
    expect(page.locator(".legendtext", has_text="sgdml package M=100 seed 0").first).to_be_attached()
    expect(chart.first).to_be_visible()
    _shot(page, "compare_peers", 2600)
