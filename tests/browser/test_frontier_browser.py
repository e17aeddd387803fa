"""The width slider and the Frontier tab in a real browser: the chart's points are the cache's rows."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import copy_cache
from tests.browser.streamlit_server import (
    BROWSER_MARKS,
    SCREENSHOTS,
    browser_page,
    cards,
    click,
    plotly_figure,
    select,
    set_slider,
    streamlit_server,
    wait_idle,
)

pytestmark = BROWSER_MARKS
LONG_MS = 240_000  # a fusion on the shared, loaded 2-core CPU


@pytest.fixture
def browser_cache(tmp_path: Path, digits_cli_train) -> Path:
    """A cache folder for the server, holding the session's default parents (so nothing trains here)."""
    copy_cache(digits_cli_train.cache, tmp_path)
    return tmp_path


def fuse(page, alignment: str, width: str) -> None:
    select(page, "fusion.alignment", alignment)  # outside the form: enables the slider
    set_slider(page, "fusion.width", width, LONG_MS)
    click(page, "fusion.fuse")
    wait_idle(page, "[data-testid='stMetric']", timeout_ms=LONG_MS)
    cards(page, contains={alignment})


def fused_frontier(page, url: str) -> dict:
    """Load the default parents, fuse ZipIt! at width 2 and PLeaS at 1.5, open the Frontier tab: its figure."""
    from otcore.figures import ENSEMBLE_LABEL

    page.goto(f"{url}/Fusion")
    wait_idle(page, "text=No parents yet")
    click(page, "ws.load")
    wait_idle(page, "text=Set the options above", timeout_ms=LONG_MS)
    fuse(page, "ZipIt!", "2.00")
    fuse(page, "PLeaS", "1.50")
    page.get_by_role("tab", name="Frontier").click()
    return plotly_figure(page, "fusion.chart.frontier", names={"ZipIt!", "PLeaS", ENSEMBLE_LABEL})


def test_width_fuse_and_the_frontier_is_the_cached_rows(browser_cache: Path):
    from otcore.cache import DiskCache
    from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec
    from otcore.figures import ENSEMBLE_LABEL
    from otcore.pipeline import fuse_and_compare, train_parents

    with streamlit_server(browser_cache) as url, browser_page() as page:
        figure = fused_frontier(page, url)
        assert page.locator("[data-testid='stException']").count() == 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "test_browser_frontier.png"))
        page.get_by_role("tab", name="Comparison").click()
        with page.expect_download(timeout=LONG_MS) as download:  # built on click, with the session's frontier
            click(page, "fusion.download.report")
        html = Path(download.value.path()).read_text(encoding="utf-8")
        assert "Accuracy against size: every fusion computed for these parents (parameters)" in html
        assert ENSEMBLE_LABEL in html and "<title>OT fusion report: digits / mlpnet</title>" in html

    cache = DiskCache(browser_cache)  # what the server computed and stored
    parents = train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], "cpu", cache=cache)
    rows = {}
    for alignment, width in (("zipit", 2.0), ("pleas", 1.5)):
        comparison = fuse_and_compare(DataSpec(), ModelSpec(), parents, FusionSpec(alignment=alignment, width=width),
                                      TrainSpec(), "cpu", cache=cache)
        assert comparison.cached
        rows[alignment] = comparison
    drawn = {t["name"]: list(zip(t["x"], t["y"])) for t in figure["data"]}
    for name, alignment in (("ZipIt!", "zipit"), ("PLeaS", "pleas")):
        fused = rows[alignment].row("ot_fusion")
        assert drawn[name] == [(fused.parameters, fused.test.accuracy)]
    ensemble = rows["zipit"].row("prediction_ensemble")
    assert drawn[ENSEMBLE_LABEL] == [(ensemble.parameters, ensemble.test.accuracy)]
    assert figure["layout"]["xaxis"]["title"] == "Parameters (count)"
    assert figure["layout"]["yaxis"]["title"] == "Test accuracy (%)"
