"""The Sequential design page in a real browser (issue 17, item 3): on the default sample (benzene), a small run of
both strategies from the file's labels; the learning curves, the sentence with the answer and the chosen frames on
the energy trace are drawn.

Screenshot: docs/screenshots/design.png.
"""

from __future__ import annotations

import pytest

from .helpers import goto_app
from .test_browser_journey import _expect, _nav, _settle, _shot
from .test_browser_md import _set_keyed_number

pytestmark = pytest.mark.browser

RUN_TIMEOUT_MS = 240_000


def test_design_page_compares_variance_and_random_frames(page, app_url):
    expect = _expect()
    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()

    _nav(page, "Sequential design")
    expect(page.get_by_role("heading", name="Sequential design").first).to_be_visible()
    _set_keyed_number(page, "design_initial", 10)
    _set_keyed_number(page, "design_batch", 10)
    _set_keyed_number(page, "design_budget", 50)
    _set_keyed_number(page, "design_n_test", 200)
    page.get_by_role("button", name="Run sequential design").click()

    expect(page.locator("text.gtitle", has_text="held-out force error").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text("random selection").first).to_be_visible()
    expect(page.locator(".xtitle", has_text="training frames M").first).to_be_attached()
    expect(page.get_by_role("button", name="Download the chosen frames (CSV)")).to_be_visible()
    _shot(page, "design", 2600)
