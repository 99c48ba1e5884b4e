"""Two browser sessions at once never see each other's data or models; a running training can be cancelled.

Session A loads the uracil sample and trains a tiny AFF model (M = 20, γ and λ set by hand); session B stays
on the benzene sample that a fresh session opens on. Each sees only its own data (the formula in the summary)
and B's model list stays empty. The second test starts a training with the hyperparameter search (a minute
or more) and presses "Cancel training": the page says so and the session keeps its data and has no model.
"""

from __future__ import annotations

import pytest

from .helpers import goto_app, is_local_url, load_sample

pytestmark = pytest.mark.browser

RUN_TIMEOUT_MS = 120_000


def _expect():
    from playwright.sync_api import expect

    return expect


def _settle(page, ms: int = 300) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(ms)


def _nav(page, name: str) -> None:
    """Switch page through the sidebar (same session; a URL would start a fresh one)."""
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True).click()
    _settle(page)


def _set_number(page, key: str, value) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _formula(page) -> str:
    metric = page.locator('[data-testid="stMetric"]', has_text="Formula").first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def _new_page(browser, log: list[str]):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("request", lambda req: log.append(req.url))
    page.set_default_timeout(60_000)
    return context, page


def test_two_sessions_see_only_their_own_data_and_models(browser, app_url):
    expect = _expect()
    log: list[str] = []
    ctx_a, a = _new_page(browser, log)
    ctx_b, b = _new_page(browser, log)
    try:
        goto_app(a, app_url)
        goto_app(b, app_url)
        expect(a.get_by_text("C6H6").first).to_be_visible()
        expect(b.get_by_text("C6H6").first).to_be_visible()

        # A loads uracil; B is not told about it
        load_sample(a, "uracil", "C4H4N2O2")
        _settle(a)
        _nav(b, "Symmetry")
        _nav(b, "Data")  # B reruns its pages after A's load: still its own benzene
        assert _formula(a) == "C4H4N2O2"
        assert _formula(b) == "C6H6"

        # A trains a tiny model with γ and λ set by hand
        _nav(a, "Train")
        a.locator(".st-key-train_hyper").get_by_text("set γ and λ by hand").click()
        _settle(a)
        _set_number(a, "train_m", 20)
        _set_number(a, "train_n_test", 20)
        expect(a.locator(".st-key-train_run button")).to_have_count(1, timeout=30_000)  # rerun settled
        a.locator(".st-key-train_run button").click()
        success = a.locator('[data-testid="stAlertContentSuccess"]', has_text="Trained")
        expect(success).to_be_visible(timeout=RUN_TIMEOUT_MS)
        expect(success).to_contain_text("AFF M=20 seed 0")
        expect(a.locator('[data-testid="stDataFrame"]').first).to_be_visible()

        # B: its own data, no model anywhere
        _nav(b, "Train")
        expect(b.get_by_text("None yet: train one above").first).to_be_visible()
        expect(b.get_by_text("PE sets: 2").first).to_be_visible()  # benzene's sets, not uracil's
        expect(b.locator('[data-testid="stDataFrame"]')).to_have_count(0)
        _nav(b, "Predictions")
        expect(b.get_by_text("No trained model for C6H6 yet").first).to_be_visible()
        expect(b.get_by_text("The session has")).to_have_count(0)
        _nav(b, "Data")
        assert _formula(b) == "C6H6"

        # A still has its model and its data
        _nav(a, "Predictions")
        expect(a.locator('[data-testid="stMetric"]', has_text="Force MAE")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        _nav(a, "Data")
        assert _formula(a) == "C4H4N2O2"
    finally:
        ctx_a.close()
        ctx_b.close()
    external = sorted({u for u in log if not is_local_url(u)})
    assert not external, f"requests left 127.0.0.1: {external[:10]}"


def test_cancel_a_running_training_keeps_the_session(page, app_url):
    expect = _expect()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()
    _nav(page, "Train")
    _set_number(page, "train_n_test", 50)
    # M = 200 with the hyperparameter search: long enough to press Cancel while it runs
    expect(page.locator(".st-key-train_run button")).to_have_count(1, timeout=30_000)  # rerun settled
    page.locator(".st-key-train_run button").click()
    cancel = page.get_by_role("button", name="Cancel training")
    expect(cancel).to_be_visible(timeout=30_000)
    page.wait_for_timeout(1500)
    cancel.click()
    warning = page.locator('[data-testid="stAlertContentWarning"]', has_text="Training cancelled")
    expect(warning).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(warning).to_contain_text("no model was added")
    _settle(page, 1000)
    expect(page.get_by_text("None yet: train one above").first).to_be_visible()
    expect(page.locator('[data-testid="stAlertContentSuccess"]', has_text="Trained")).to_have_count(0)
    _nav(page, "Data")
    assert _formula(page) == "C6H6"
