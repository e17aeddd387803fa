"""Screenshots of the Fusion page's width slider and Frontier tab at 1280x800 (a script, not a test).

    python -m tests.browser.shoot_frontier [--cache-dir DIR]

Writes tests/browser/screenshots/frontier_*.png (git-ignored): ZipIt! at widths 1, 1.5 and 2 and PLeaS at
1 and 2 fused, the Frontier tab against parameters, after the fine-tune click, against inference time, and
the fusion report's frontier, and a Sweeps page fusion sweep over widths with its frontier.
"""
from __future__ import annotations

import time
from pathlib import Path

from tests.browser.streamlit_server import (
    SCREENSHOTS,
    browser_page,
    cards,
    choose,
    click,
    key,
    screenshot,
    screenshot_run,
    select,
    set_slider,
    streamlit_server,
    wait_idle,
)

LONG_MS = 600_000


def main() -> None:
    cache_dir = screenshot_run(__doc__)
    start = time.perf_counter()

    def shot(page, name: str, full: bool = False) -> None:
        path = SCREENSHOTS / f"frontier_{name}.png"
        screenshot(page, path, 1500 if full else None)
        print(f"{path}  ({time.perf_counter() - start:.1f} s)", flush=True)

    def chart_drawn(page) -> None:
        page.wait_for_selector(f"{key('fusion.chart.frontier')} .main-svg", timeout=LONG_MS)
        wait_idle(page)

    with streamlit_server(cache_dir) as url, browser_page() as page:
        page.goto(f"{url}/Fusion")
        wait_idle(page, "text=No parents yet")
        click(page, "ws.load")
        wait_idle(page, "text=Set the options above", timeout_ms=LONG_MS)
        for label, width in (("ZipIt!", "1.00"), ("ZipIt!", "1.50"), ("ZipIt!", "2.00"), ("PLeaS", "1.00"),
                             ("PLeaS", "2.00")):
            select(page, "fusion.alignment", label)
            set_slider(page, "fusion.width", width, LONG_MS)
            click(page, "fusion.fuse")
            wait_idle(page, "[data-testid='stMetric']", timeout_ms=LONG_MS)
            cards(page, contains={label})
        shot(page, "result")
        page.get_by_role("tab", name="Frontier").click()
        chart_drawn(page)
        shot(page, "tab")
        select(page, "fusion.frontier.pick", "ZipIt! ×1")
        click(page, "fusion.frontier.finetune")
        page.wait_for_selector(f"{key('fusion.chart.frontier')} .legendtext[data-unformatted='ZipIt! fine-tuned']",
                               state="attached", timeout=LONG_MS)
        chart_drawn(page)
        page.mouse.move(5, 5)  # away from the button, and its focus dropped: no tooltip over the view
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        wait_idle(page)
        shot(page, "finetuned")
        shot(page, "finetuned_full", full=True)
        page.locator(key("fusion.frontier.against")).get_by_text("inference time").click()
        wait_idle(page)
        chart_drawn(page)
        shot(page, "time")
        select(page, "fusion.alignment", "OT fusion")
        shot(page, "ot_width_disabled")
        page.get_by_role("tab", name="Comparison").click()
        with page.expect_download(timeout=120_000) as download:
            click(page, "fusion.download.report")
        report = Path(cache_dir) / "frontier-report.html"
        download.value.save_as(report)
        page.goto(report.as_uri())
        page.wait_for_selector(".main-svg", timeout=60_000)
        page.get_by_text("Accuracy against size").first.scroll_into_view_if_needed()
        shot(page, "report")
        # The Sweeps page's fusion grid: ZipIt! and PLeaS at widths 1 and 2, its chart and frontier.
        page.goto(f"{url}/Sweeps")
        wait_idle(page, "text=press **Start**".replace("**", ""))
        page.locator(key("sweeps.kind")).get_by_text("fusion").click()
        wait_idle(page)
        choose(page, "sweeps.alignments", ["ZipIt!", "PLeaS"])
        choose(page, "sweeps.widths", ["1.0", "2.0"])
        click(page, "sweeps.start")
        page.wait_for_selector(f"{key('sweeps.chart.frontier')} .main-svg", timeout=LONG_MS)
        wait_idle(page)
        shot(page, "sweep")
        shot(page, "sweep_full", full=True)


if __name__ == "__main__":
    main()
