"""The MD page in a real browser (issue 17, item 1): on the benzene sample train a small AFF (γ, λ by hand), go to
MD, run 200 NVE steps with the GFN2-xTB reference from the same start; the stop message, the traces, the 3D
playback (WebGL, offline) and the distributions against the reference are drawn.

Screenshot: docs/screenshots/md.png.
"""

from __future__ import annotations

import pytest

from .helpers import goto_app
from .test_browser_journey import _expect, _nav, _settle, _shot
from .test_browser_peers import _train

pytestmark = pytest.mark.browser

#: 200 steps of AFF and of GFN2-xTB (a few ms per step on one core) take seconds; the page's first run longer.
RUN_TIMEOUT_MS = 180_000


def _set_keyed_number(page, key: str, value) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")
    _settle(page, 300)


def test_md_page_runs_a_model_and_the_xtb_reference(page, app_url):
    expect = _expect()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()

    _nav(page, "Train")
    page.locator('[data-testid="stRadio"]', has_text="Hyperparameters").first.get_by_text(
        "set γ and λ by hand", exact=True).click()
    _settle(page, 300)
    _train(page, "AFF", 100, "AFF M=100 seed 0")

    _nav(page, "MD")
    expect(page.get_by_role("heading", name="MD").first).to_be_visible()
    _set_keyed_number(page, "md_steps", 200)
    _set_keyed_number(page, "md_record_every", 2)
    page.locator(".st-key-md_use_threshold label").click()
    _settle(page, 300)
    _set_keyed_number(page, "md_sd_threshold", 20)
    page.locator(".st-key-md_with_reference label").click()
    _settle(page, 300)
    page.get_by_role("button", name="Run MD").click()

    success = page.locator('[data-testid="stAlertContentSuccess"]', has_text="completed 200 steps")
    expect(success.first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(success).to_have_count(2)  # the model run and the reference
    expect(page.locator("text.gtitle", has_text="MD run: energies").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Bond lengths per kind").first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="Potential-energy fluctuations").first).to_be_visible()
    expect(page.locator(".legendtext", has_text="GFN2-xTB: E_total").first).to_be_attached()
    expect(page.get_by_text("not the gradient of any energy").first).to_be_visible()
    expect(page.get_by_role("button", name="Download the trajectory (extxyz)")).to_be_visible()
    frame = page.frame_locator("iframe").first
    expect(frame.locator('body[data-3dmol-ready="1"]')).to_be_attached(timeout=60_000)
    expect(frame.locator('body[data-frames="101"]')).to_be_attached()
    expect(frame.locator("#aff-info")).to_contain_text("ps")
    _shot(page, "md", 3500)


def test_an_md_run_goes_on_while_the_user_is_on_another_page(page, app_url):
    """The run is a job of the server: the user leaves the MD page while it runs; the sidebar of the Data page shows
    it running, then done, and the MD page then shows the whole run."""
    import re

    expect = _expect()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()
    _nav(page, "Train")
    page.locator('[data-testid="stRadio"]', has_text="Hyperparameters").first.get_by_text(
        "set γ and λ by hand", exact=True).click()
    _settle(page, 300)
    _train(page, "AFF", 200, "AFF M=200 seed 0")
    _nav(page, "MD")
    expect(page.get_by_role("heading", name="MD").first).to_be_visible()
    page.locator(".st-key-md_ensemble").get_by_text("NVT (Langevin thermostat)", exact=True).click()
    _settle(page, 300)
    _set_keyed_number(page, "md_steps", 100000)  # ~1 min at ~1 ms per step: still running when the user leaves
    _set_keyed_number(page, "md_record_every", 100)
    page.get_by_role("button", name="Run MD").click()
    # the page waits for the job in place (progress bar) while the user stays
    expect(page.locator('[data-testid="stProgress"]', has_text=re.compile(r"running \d+%")).first).to_be_visible(
        timeout=60_000)
    _nav(page, "Data")
    expect(page.get_by_role("heading", name="Data").first).to_be_visible()
    sidebar = page.get_by_test_id("stSidebar")
    # (the name may carry a suffix: the e2e server's workspace is shared with the other browser tests; and a
    # run that stops early may already be done — the AppTest test_app_jobs.py holds a run to prove it goes on)
    job = re.compile(r"MD: AFF M=200 seed 0( \(\d+\))?, NVT, 100,000 steps: ")
    expect(sidebar.get_by_text(re.compile(job.pattern + "(running|done in)"))).to_be_visible(timeout=30_000)
    _shot(page, "md_job_sidebar", 900)
    expect(sidebar.get_by_text(re.compile(job.pattern + "done in"))).to_be_visible(timeout=RUN_TIMEOUT_MS * 2)
    _nav(page, "MD")
    expect(page.get_by_role("heading", name="Run: AFF M=200 seed 0").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"(completed 100000 steps|stopped at step \d+)")).first).to_be_visible()
    expect(page.locator("text.gtitle", has_text="MD run: energies").first).to_be_visible()
