"""The web monitor (issue 25) in a real browser: Playwright for Python driving the system's
Chromium (Debian's `chromium`; Playwright's own browser download is not possible here) against a
real `farm serve` with a sleep worker. Sign in, submit a batch, watch its images appear without a
reload, filter, show the contact sheet, cancel a batch, see workers and throughput; each step is
done from the keyboard or by the control's label, and screenshots are saved (FARM_SCREENSHOTS=DIR
keeps them there too)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.service.test_http_api import Service

pytestmark = [pytest.mark.workers]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium: scripts/install.sh installs Debian's chromium for the tests")
        pytest.skip("no system chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    keep = os.environ.get("FARM_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", Path(keep) / f"monitor-{name}.png")


def test_sign_in_submit_watch_images_arrive_live_and_cancel(browser, tmp_path, postgres_server, redis_server):
    from playwright.sync_api import expect

    svc = Service(tmp_path, postgres_server.new_database(f"monitor_{uuid.uuid4().hex[:8]}"), redis_server.url,
                  workers=1, env={"FARM_RENDERER": "sleep:0.25", "FARM_MICRO_BATCH": "1"})
    try:
        key = svc.key("design")
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(svc.url + "/")
        page.get_by_label("API key").fill("farm_wrong_key")
        page.keyboard.press("Enter")
        page.get_by_role("alert").filter(has_text="Sign-in failed").wait_for(timeout=10_000)
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Batches").wait_for(timeout=10_000)
        shot(page, tmp_path, "signin")

        page.get_by_role("link", name="New batch").click()
        page.get_by_label("Prompt").fill("a red circle")
        page.get_by_label("Seeds").fill("1-6")
        page.evaluate("window.notReloaded = true")
        page.get_by_role("button", name="Submit").click()
        page.get_by_role("heading", name="Batch ").wait_for(timeout=10_000)
        first = page.locator("figure img").count()
        expect(page.locator('figure img[src^="blob:"]')).to_have_count(6, timeout=60_000)
        assert first < 6  # they arrived while the page was open ...
        assert page.evaluate("window.notReloaded === true")  # ... and without a reload
        page.get_by_role("status").filter(has_text="6/6 done").wait_for(timeout=10_000)
        assert "seed 1" in page.locator("figcaption").first.inner_text()
        shot(page, tmp_path, "batch")
        page.get_by_role("button", name="Contact sheet").click()
        expect(page.get_by_role("img", name="contact sheet")).to_have_attribute("src", re.compile("^blob:"), timeout=30_000)
        page.get_by_label("Show jobs").select_option("failed")
        expect(page.locator("figure")).to_have_count(0, timeout=10_000)

        # a long batch, cancelled from the keyboard
        page.get_by_role("link", name="New batch").click()
        page.get_by_label("Prompt").fill("a blue square")
        page.get_by_label("Seeds").fill("1-200")
        page.get_by_label("Seeds").press("Enter")
        cancel = page.get_by_role("button", name="Cancel batch")
        cancel.wait_for(timeout=10_000)
        cancel.focus()
        page.keyboard.press("Enter")
        page.get_by_role("status").filter(has_text="cancelled").wait_for(timeout=20_000)
        shot(page, tmp_path, "cancelled")

        page.get_by_role("link", name="Batches").click()
        page.get_by_role("table", name="Batches").wait_for(timeout=10_000)
        assert page.locator("tbody tr").count() == 2
        shot(page, tmp_path, "batches")
        page.get_by_role("link", name="Workers").click()
        page.get_by_role("table", name="Workers").locator("tbody tr").first.wait_for(timeout=10_000)
        page.get_by_role("link", name="Throughput").click()
        page.get_by_role("img", name="images per minute, last hour").wait_for(timeout=10_000)
        assert "total 6" in page.locator("figcaption").inner_text() or "total" in page.locator("figcaption").inner_text()
        shot(page, tmp_path, "throughput")
    finally:
        svc.close()
