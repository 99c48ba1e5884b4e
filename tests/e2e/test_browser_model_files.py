"""One model file for the app and the CLI, both ways, through the real page in a real browser.

* A model trained on the Train page and saved with its download button is evaluated by
  ``python -m aff_app evaluate``, which reports its energies too (the file carries the energy model).
* A model written by ``python -m aff_app train`` is uploaded on the Train page and added with its
  energy model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import REPO_ROOT, goto_app

pytestmark = pytest.mark.browser

SAMPLE = REPO_ROOT / "sample_data" / "benzene.npz"


def _cli(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "aff_app", *map(str, args), "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and out["ok"], (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return out


def _settle(page, ms: int = 300) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(ms)


def _set_number(page, label: str, value) -> None:
    box = page.locator('[data-testid="stNumberInput"]', has_text=label).first.locator("input")
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def test_page_download_evaluates_in_the_cli_and_cli_model_uploads_on_the_page(page, app_url, tmp_path):
    from playwright.sync_api import expect

    goto_app(page, app_url)
    expect(page.get_by_text("C6H6").first).to_be_visible()
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Train", exact=True).click()
    expect(page.get_by_role("heading", name="Train").first).to_be_visible()

    # -- train a small model on the page (γ, λ by hand: seconds), download its file
    page.get_by_text("set γ and λ by hand", exact=True).click()
    _settle(page)
    _set_number(page, "Training frames M", 30)
    _set_number(page, "Test frames", 40)
    _set_number(page, "γ (1/Å)", 4)
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.locator('[data-testid="stAlertContentSuccess"]', has_text="Trained")).to_be_visible(timeout=300_000)
    download = page.get_by_role("button", name="force and energy model, .npz", exact=False)
    expect(download).to_be_visible()
    with page.expect_download() as info:
        download.click()
    saved = tmp_path / "from_page.npz"
    info.value.save_as(saved)

    # -- the CLI reads it: forces and energies on the 40 test frames the page drew
    res = _cli("evaluate", saved, SAMPLE)
    assert res["model"] == "aff" and res["n_train"] == 30 and res["n_test"] == 40
    assert res["test_selection"] == "recorded at training"
    assert res["energy_model"] == "energy GP" and res["energy_mae"] > 0 and 0 <= res["energy_pci"] <= 1
    assert 0 < res["force_mae"] < res["reference_force_std"]

    # -- the other way: a CLI model uploaded on the page
    cli_model = tmp_path / "cli_model.npz"
    out = _cli("train", SAMPLE, "--n-train", "25", "--gamma", "4", "--lam", "1e-8", "--out", cli_model)
    assert out["energy_model"] == "energy GP"
    page.get_by_text("Upload a saved model (.npz)").click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(cli_model))
    add = page.get_by_role("button", name="Add uploaded model")
    expect(add).to_be_enabled(timeout=30_000)
    add.click()
    added = page.locator('[data-testid="stAlertContentSuccess"]', has_text="cli_model (uploaded)")
    expect(added).to_be_visible(timeout=60_000)
    expect(added).to_contain_text("M = 25")
    expect(added).to_contain_text("with its energy model")
