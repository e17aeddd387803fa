"""The dashboard in a real browser: `streamlit run app.py` on localhost, driven by Debian's Chromium."""
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
    expect,
    key,
    read_grid,
    settled,
    streamlit_server,
    texts,
    wait_idle,
)

pytestmark = BROWSER_MARKS


@pytest.fixture
def browser_cache(tmp_path: Path, digits_cli_train) -> Path:
    """A cache folder for the server, holding the session's default parents (so nothing trains here)."""
    copy_cache(digits_cli_train.cache, tmp_path)
    return tmp_path


def test_fuse_with_defaults_in_chromium(browser_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("streamlit-log") / "server.log"
    with streamlit_server(browser_cache, log_path=log) as url, browser_page() as page:
        page.goto(f"{url}/Fusion")  # a deep link on a fresh server
        wait_idle(page, "text=No parents yet")
        click(page, "ws.load")
        wait_idle(page, "text=Set the options above")
        expect(page.locator("[data-testid='stSidebar']")).to_contain_text("2 parents of mlpnet on digits",
                                                                          timeout=60_000)
        click(page, "fusion.fuse")
        wait_idle(page, "[data-testid='stDataFrame'] [role='gridcell']")
        methods = ["parent 1", "parent 2", "vanilla average", "prediction ensemble", "OT fusion"]
        header, rows = read_grid(page, "body", first_column=methods)
        assert len(header) == 6 and [r[0] for r in rows] == methods
        shown = cards(page, contains={"OT fusion"})
        assert "%" in shown["OT fusion"][0], shown
        assert page.locator("[data-testid='stException']").count() == 0
        page.wait_for_selector(f"{key('fusion.chart.bar')} .main-svg")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "test_browser_fusion.png"))
        # The report is built when its button is clicked, and is one self-contained HTML file.
        with page.expect_download(timeout=60_000) as download:
            click(page, "fusion.download.report")
        html = Path(download.value.path()).read_text(encoding="utf-8")
        assert download.value.suggested_filename == "digits-mlpnet-ot-fusion-report.html"
        assert html.startswith("<!DOCTYPE html>") and "OT fusion" in html and "Plotly.newPlot" in html
        assert "<script src=" not in html and "<script charset=\"utf-8\" src=" not in html  # no CDN: opens offline


PAGES = ["Parents", "Fusion", "Pruning", "Hessian", "Landscape", "Sweeps"]


def test_every_page_opens_by_deep_link_and_home_is_named(browser_cache: Path):
    with streamlit_server(browser_cache) as url, browser_page() as page:
        for title in PAGES:  # each a first request to its URL, as a bookmark would be
            page.goto(f"{url}/{title}")
            wait_idle(page, "h1")
            expect(page.locator("h1").first).to_have_text(title, timeout=60_000)
            assert page.locator("[data-testid='stException']").count() == 0
        # The sidebar's own page links (Streamlit's list is hidden: it would call Home 'app').
        links = "[data-testid='stSidebar'] [data-testid='stPageLink-NavLink']"
        shown = texts(page, links, lambda t: len(t) == len(PAGES) + 1, "the sidebar's page links")
        assert [text.splitlines()[-1].strip() for text in shown] == ["Home", *PAGES]
        assert page.locator("[data-testid='stSidebarNav']").count() == 0
        page.goto(url)
        wait_idle(page, "h1")
        expect(page.locator("h1").first).to_have_text("OT Fusion Studio", timeout=60_000)


def test_a_sweep_runs_on_while_other_pages_are_open_and_stops(browser_cache: Path):
    with streamlit_server(browser_cache) as url, browser_page() as page:
        page.goto(f"{url}/Sweeps")
        wait_idle(page, "h1")
        page.locator(f"{key('sweeps.seed_sets')} input").fill("3")  # 3 seed sets x 4 fractions: 12 points
        click(page, "sweeps.start")
        page.wait_for_selector(f"{key('sweeps.stop')} button", timeout=60_000)
        page.get_by_role("link", name="Fusion").click()
        page.wait_for_selector("h1:has-text('Fusion')", timeout=60_000)
        page.get_by_role("link", name="Sweeps").click()
        page.wait_for_selector("h1:has-text('Sweeps')", timeout=60_000)
        # Still running (the page follows it from the server), or finished meanwhile: never lost.
        page.wait_for_selector(f"{key('sweeps.stop')} button, [data-testid='stCaptionContainer']:has-text('0 failed')",
                               timeout=60_000)
        assert page.locator(f"{key('sweeps.stop')} button").count() >= 1, "12 points ended before the page was back"
        # Polled without waiting for an idle page: the page follows the running sweep with reruns of its own.
        settled(lambda: page.locator("[data-testid='stCaptionContainer']").all_inner_texts(),
                lambda shown: any("points done" in c for c in shown), "the sweep's 'points done' caption")
        click(page, "sweeps.stop")
        page.wait_for_selector("text=stopped: the Stop button was pressed", timeout=300_000)
        summary = texts(page, "[data-testid='stCaptionContainer']:has-text('0 failed')",
                        lambda shown: bool(shown) and "stopped" in shown[0], "the stopped sweep's summary")[0]
        done = int(summary.split(" of ")[0].strip("* "))
        assert done >= 1 and done < 12 and "of 12 points" in summary  # stopped part-way
        assert page.locator("[data-testid='stException']").count() == 0
