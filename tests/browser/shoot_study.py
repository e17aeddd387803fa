"""Screenshots of the Pruning, Hessian, Landscape and Sweeps pages at 1280x800 after their buttons (a script).

    python tests/browser/shoot_study.py [--cache-dir DIR]

Writes tests/browser/screenshots/{pruning,hessian,landscape,sweeps}_*.png (git-ignored); one browser session goes
Pruning -> Hessian -> Landscape -> Sweeps through the sidebar links, so each page sees what the others set. Issue
13's controls are on: prune-fuse with 1 epoch of retraining, the Hessian of the fused net before and after it, the
aligned paths, and a sweep over both pruning types that analyses the fused net (study table, curvature chart).
"""
from __future__ import annotations

import time
from pathlib import Path

from tests.browser.streamlit_server import (
    SCREENSHOTS,
    browser_page,
    choose,
    click,
    fill_number,
    key,
    screenshot,
    screenshot_run,
    select,
    streamlit_server,
    wait_idle,
)

LONG_MS = 600_000  # a cold Hessian of four networks on a busy 2-core CPU


def settled(element) -> None:
    """Wait until the element's box holds still from one animation frame to the next (a scroll or a chart's
    transition finished), instead of a fixed time."""
    element.evaluate("e => new Promise(done => { let last = null; const tick = () => {"
                     " const b = e.getBoundingClientRect(), now = [b.top, b.left, b.width, b.height].join();"
                     " if (now === last) { done(); } else { last = now; requestAnimationFrame(tick); } }; tick(); })")


def main() -> None:
    cache_dir = screenshot_run(__doc__)
    start = time.perf_counter()

    def shot(page, name: str, full: bool = False, at: str | None = None) -> None:
        """The view (scrolled to `at`, a selector, first), or with full the whole page."""
        if at is not None:
            target = page.locator(at).first
            target.scroll_into_view_if_needed()
            settled(target)
        path = SCREENSHOTS / f"{name}.png"
        screenshot(page, path, 1700 if full else None)
        print(f"{path}  ({time.perf_counter() - start:.1f} s)", flush=True)

    def report(page, button: str, name: str) -> Path:
        """Download a page's report into the cache folder (checked: one self-contained HTML file)."""
        with page.expect_download(timeout=120_000) as download:
            click(page, button)
        path = Path(cache_dir) / f"{name}.html"
        download.value.save_as(path)
        html = path.read_text(encoding="utf-8")
        assert html.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in html and "<script src=" not in html
        print(f"{path}  ({len(html) / 2**20:.1f} MiB)", flush=True)
        return path

    def charts_drawn(page, *chart_keys: str) -> None:
        for chart in chart_keys:
            page.wait_for_selector(f"{key(chart)} .main-svg", timeout=LONG_MS)
            settled(page.locator(f"{key(chart)} .main-svg").first)

    with streamlit_server(cache_dir) as url, browser_page() as page:
        page.goto(f"{url}/Pruning")
        wait_idle(page, "text=No parents yet")
        click(page, "ws.load")
        wait_idle(page, "text=press **Prune**".replace("**", ""), timeout_ms=LONG_MS)
        fill_number(page, "pruning.retrain_epochs", 1)  # prune-fuse (the default order), retrained: 7 networks
        shot(page, "pruning_form")
        click(page, "pruning.prune")
        wait_idle(page, "[data-testid='stMetric']", timeout_ms=LONG_MS)
        charts_drawn(page, "pruning.chart.bar")
        shot(page, "pruning_result")
        shot(page, "pruning_cards", at="[data-testid='stCaptionContainer']:has-text('ran on')")
        page.get_by_role("tab", name="Sweep over fractions").click()
        click(page, "pruning.run_sweep")
        wait_idle(page, key("pruning.chart.sweep"), timeout_ms=LONG_MS)
        charts_drawn(page, "pruning.chart.sweep", "pruning.chart.sparsity")
        shot(page, "pruning_sweep")
        shot(page, "pruning_sweep_full", full=True)
        report(page, "pruning.download.report", "pruning-report")

        page.get_by_role("link", name="Hessian").click()
        wait_idle(page, "text=press Analyse", timeout_ms=LONG_MS)
        select(page, "analysis.study", "Pruning page (pruned 50 % (unstructured, prune-fuse))")
        page.get_by_text("Fused net before and after retraining").click()  # the pruned fusion, retrained
        wait_idle(page)
        shot(page, "hessian_form")
        click(page, "hessian.analyse")
        wait_idle(page, "[data-testid='stDataFrame']", timeout_ms=LONG_MS)
        charts_drawn(page, "hessian.chart.density", "hessian.chart.scatter", "hessian.chart.retraining")
        shot(page, "hessian_result")
        shot(page, "hessian_retrained", at=key("hessian.chart.retraining"))
        page.get_by_text("Hessian settings (SLQ)").click()
        wait_idle(page)
        shot(page, "hessian_settings_full", full=True)
        hessian_report = report(page, "hessian.download.report", "hessian-report")

        page.get_by_role("link", name="Landscape").click()
        wait_idle(page, "text=press Compute", timeout_ms=LONG_MS)
        click(page, "landscape.compute")
        wait_idle(page, "[data-testid='stMetric']", timeout_ms=LONG_MS)
        charts_drawn(page, "landscape.chart.directions", "landscape.chart.paths", "landscape.chart.aligned",
                     "landscape.chart.surface")
        shot(page, "landscape_result")
        shot(page, "landscape_aligned", at=key("landscape.chart.aligned"))
        shot(page, "landscape_full", full=True)
        page.get_by_text("Paths and surface").click()
        wait_idle(page)
        shot(page, "landscape_options")
        report(page, "landscape.download.report", "landscape-report")

        page.get_by_role("link", name="Sweeps").click()
        wait_idle(page, "text=Choose the grid above", timeout_ms=LONG_MS)
        choose(page, "sweeps.types", ["structured", "unstructured"])
        choose(page, "sweeps.fractions", ["0.3"])
        fill_number(page, "sweeps.retrain_epochs", 1)
        choose(page, "sweeps.analyse", ["OT fusion", "retrained fusion"])
        shot(page, "sweeps_form")
        click(page, "sweeps.start")
        page.wait_for_selector("text=The study's table", timeout=LONG_MS)
        wait_idle(page)
        charts_drawn(page, "sweeps.chart")
        shot(page, "sweeps_result")
        select(page, "sweeps.metric", "trace")
        select(page, "sweeps.x", "prune.type")
        page.get_by_text("Initial and retrained side by side").click()
        wait_idle(page)
        charts_drawn(page, "sweeps.chart")
        shot(page, "sweeps_curvature", at=key("sweeps.chart"))
        page.get_by_text("The study's table").click()
        wait_idle(page)
        shot(page, "sweeps_study", at="[data-testid='stExpander']:has-text(\"The study's table\")")
        shot(page, "sweeps_full", full=True)
        page.goto(hessian_report.as_uri())
        page.wait_for_selector(".main-svg", timeout=60_000)
        shot(page, "hessian_report", full=True)


if __name__ == "__main__":
    main()
