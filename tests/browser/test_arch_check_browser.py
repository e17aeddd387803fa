"""The Parents page's architecture check in Chromium: a torchvision network chosen in the sidebar, its check's
table drawn, and a screenshot of it (tests/browser/screenshots/parents_check.png)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.streamlit_server import (
    BROWSER_MARKS,
    SCREENSHOTS,
    browser_page,
    click,
    expect,
    key,
    screenshot,
    select,
    streamlit_server,
    wait_idle,
)

pytestmark = [*BROWSER_MARKS, pytest.mark.slow]  # `otcore check` of a torchvision network: a minute or more beside other work


def test_parents_page_checks_a_torchvision_network(tmp_path: Path):
    with streamlit_server(tmp_path / "cache") as url, browser_page() as page:
        page.goto(f"{url}/Parents")
        wait_idle(page, "text=No parents yet")
        page.locator(key("ws.arch_family")).get_by_text("torchvision", exact=True).click()
        wait_idle(page, key("ws.arch.torchvision"))
        entry = page.locator(key("ws.arch.torchvision")).get_by_role("combobox")
        entry.click()
        entry.fill("shufflenet_v2_x0")  # the list is long: the search narrows it, as a user types
        select(page, "ws.arch.torchvision", "shufflenet_v2_x0_5")
        click(page, "parents.check")
        wait_idle(page, "text=Will torchvision:shufflenet_v2_x0_5 fuse?", timeout_ms=600_000)
        section = page.locator("[data-testid='stExpander']").filter(has_text="shufflenet_v2_x0_5")
        expect(section).to_contain_text("channel groups", timeout=60_000)
        expect(section.locator("[data-testid='stDataFrame']")).to_be_visible(timeout=60_000)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        screenshot(page, SCREENSHOTS / "parents_check.png")
        assert "passed" in section.locator("summary").inner_text()
