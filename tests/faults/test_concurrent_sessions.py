"""Load: eight browser sessions on one local server press Fuse at the same moment and all read the right result.

The server's cache already holds the parents and the default fusion (computed in-process first), so the
test measures the dashboard's sharing under concurrency (memo locks, the disk cache, Streamlit's sessions),
not training. Bounded: every step has a timeout, the whole run one more, and the server is always stopped.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support import copy_cache

from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec
from otcore.pipeline import OT_FUSION, fuse_and_compare, train_parents
from tests.browser.streamlit_server import BROWSER_MARKS, CHROMIUM_ARGS, VIEWPORT, chromium_path, key, streamlit_server

SESSIONS = 8
STEP_MS = 90_000  # one step of one session (page load, parents, fusion) on 2 busy cores
WHOLE_S = 150.0  # every session, start to finish

pytestmark = BROWSER_MARKS


@pytest.fixture
def fused_cache(tmp_path: Path, digits_cli_train) -> tuple[Path, float]:
    """A cache folder holding the default parents and their default fusion; and OT fusion's test accuracy (%)."""
    copy_cache(digits_cli_train.cache, tmp_path)
    cache = DiskCache(tmp_path)
    parents = train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], "cpu", cache=cache)
    comparison = fuse_and_compare(DataSpec(), ModelSpec(), parents, FusionSpec(), TrainSpec(), "cpu", cache=cache)
    return tmp_path, comparison.row(OT_FUSION).test.accuracy


async def fuse_in_a_session(browser, url: str, ready: asyncio.Barrier) -> tuple[str, int]:
    """Open the Fusion page, load the parents, wait for the others, press Fuse; (OT fusion's cell, exceptions)."""
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        page = await context.new_page()
        await page.goto(f"{url}/Fusion", timeout=STEP_MS)
        await page.wait_for_selector("text=No parents yet", state="attached", timeout=STEP_MS)
        await page.locator(f"{key('ws.load')} button").first.click()
        await page.wait_for_selector("text=Set the options above", state="attached", timeout=STEP_MS)
        await asyncio.wait_for(ready.wait(), STEP_MS / 1000)  # all eight press Fuse together
        await page.locator(f"{key('fusion.fuse')} button").first.click()
        await page.wait_for_selector("[data-testid='stDataFrame'] [role='gridcell']", state="attached",
                                     timeout=STEP_MS)
        cells = await page.locator("[data-testid='stDataFrame']").first.locator("[role='gridcell']").all_text_contents()
        accuracy = cells[cells.index(OT_FUSION) + 1]  # the column after the method: test acc (%)
        return accuracy, await page.locator("[data-testid='stException']").count()
    finally:
        await context.close()


async def eight_sessions(url: str) -> list[tuple[str, int]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            ready = asyncio.Barrier(SESSIONS)
            return await asyncio.wait_for(
                asyncio.gather(*(fuse_in_a_session(browser, url, ready) for _ in range(SESSIONS))), WHOLE_S)
        finally:
            await browser.close()


@pytest.mark.timeout(240)
def test_eight_concurrent_sessions_fuse_and_agree(fused_cache, tmp_path_factory: pytest.TempPathFactory):
    cache_dir, expected = fused_cache
    log = tmp_path_factory.mktemp("streamlit-log") / "server.log"
    with streamlit_server(cache_dir, log_path=log) as url:
        results = asyncio.run(eight_sessions(url))
    assert len(results) == SESSIONS
    assert all(exceptions == 0 for _, exceptions in results), results
    assert [float(shown) for shown, _ in results] == [round(expected, 2)] * SESSIONS
    assert "Traceback" not in log.read_text(encoding="utf-8")
