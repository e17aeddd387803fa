"""Screenshots of every page at 1280x800 in headless Chromium (a script, not a test).

    python -m tests.browser.shoot [--cache-dir DIR]

Writes tests/browser/screenshots/*.png (git-ignored): Home, Parents, Fusion before and after
Fuse, the plan and diagnostics tabs, and full-page views of each.
"""
from __future__ import annotations

import time
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.streamlit_server import (
    SCREENSHOTS,
    browser_page,
    click,
    screenshot,
    screenshot_run,
    streamlit_server,
    wait_idle,
)


def main() -> None:
    cache_dir = screenshot_run(__doc__)

    def shot(page, name: str, full: bool = False) -> None:
        path = SCREENSHOTS / f"{name}.png"
        screenshot(page, path, 2000 if full else None)
        print(f"{path}  ({time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    with streamlit_server(cache_dir) as url, browser_page() as page:
        page.goto(f"{url}/Fusion")
        wait_idle(page)
        shot(page, "fusion_empty")
        page.goto(url)
        wait_idle(page)
        shot(page, "home_before")
        click(page, "ws.load")
        try:  # on a cold cache the parents train: catch the sidebar's progress bar
            page.wait_for_selector("[data-testid='stProgress']", timeout=5_000)
            # a state, not a time: the bar has moved past its start, so the shot shows training under way
            page.wait_for_function("() => [...document.querySelectorAll(\"[data-testid='stProgress'] [role='progressbar']\")]"
                                   ".some(bar => Number(bar.getAttribute('aria-valuenow')) > 0)", timeout=30_000)
            shot(page, "home_training")
        except PlaywrightTimeout:
            pass  # the parents came from the cache at once
        wait_idle(page, "text=test accuracy", timeout_ms=600_000)
        shot(page, "home")
        shot(page, "home_full", full=True)
        page.get_by_role("link", name="Parents").click()
        wait_idle(page)
        shot(page, "parents")
        page.get_by_role("link", name="Fusion").click()
        wait_idle(page)
        shot(page, "fusion_form")
        click(page, "fusion.fuse")
        wait_idle(page, "[data-testid='stMetric']", timeout_ms=600_000)
        page.wait_for_selector("[data-testid='stPlotlyChart'] .main-svg", timeout=60_000)
        shot(page, "fusion_result")
        shot(page, "fusion_result_full", full=True)
        page.get_by_role("tab", name="Transport plans").click()
        wait_idle(page, "[data-testid='stTabPanel'] .st-key-fusion-chart-plan .main-svg")
        shot(page, "fusion_plans", full=True)
        page.get_by_role("tab", name="Per-layer diagnostics").click()
        wait_idle(page)
        shot(page, "fusion_diagnostics", full=True)
        page.get_by_text("More options").click()
        wait_idle(page)
        shot(page, "fusion_more_options")
        page.get_by_role("tab", name="Comparison").click()
        with page.expect_download() as download:
            click(page, "fusion.download.report")
        report_path = Path(cache_dir) / download.value.suggested_filename
        download.value.save_as(report_path)
        page.goto(report_path.as_uri())
        page.wait_for_selector(".main-svg", timeout=60_000)
        shot(page, "report", full=True)
        page.goto(url)
        wait_idle(page, "[data-testid='stExpander']")
        shot(page, "home_after", full=True)


if __name__ == "__main__":
    main()
