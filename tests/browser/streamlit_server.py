"""Start `streamlit run app.py` on a free localhost port and drive Debian's Chromium with Playwright.

Shared by the browser test and the screenshot script (tests/browser/shoot.py); not a test itself.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 800}
T = TypeVar("T")


def screenshot_run(description: str) -> str:
    """Parse a screenshot script's `--cache-dir` flag, make the screenshots folder; the server's cache folder."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache-dir", default=None, help="OTCORE_CACHE_DIR for the server (default: a new temp dir)")
    args = parser.parse_args()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return args.cache_dir or tempfile.mkdtemp(prefix="otcore-shoot-")


def chromium_path() -> str | None:
    """Debian's Chromium (Playwright cannot download its own browser here)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Every browser test's marks: `browser`, and a skip where Chromium is missing, except in CI (CI=true), where a
# missing browser must fail the run rather than pass it untested.
BROWSER_MARKS = [pytest.mark.browser,
                 pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"),
                                    reason="Debian's chromium is not installed (apt-get install chromium); Playwright "
                                           "cannot download its own browser here")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(cache_dir: str | Path, timeout_s: float = 60.0,
                     log_path: str | Path | None = None) -> Iterator[str]:
    """Serve the dashboard on localhost with OTCORE_CACHE_DIR=cache_dir; yields its URL; always stops it."""
    port = free_port()
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    log_path = log_path or Path(tempfile.gettempdir()) / f"otcore-streamlit-{port}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "localhost", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer /_stcore/health within {timeout_s:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group, started above
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def browser_page(viewport: dict | None = None) -> Iterator:
    """A Playwright page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=viewport or VIEWPORT, accept_downloads=True)
            yield context.new_page()
        finally:
            browser.close()


def key(name: str) -> str:
    """CSS selector of the element Streamlit drew for a widget key (it writes '.' as '-'), not a stale copy."""
    return ".st-key-" + name.replace(".", "-") + ":not([data-stale='true'])"


def click(page, widget_key: str) -> None:
    """Click the button drawn for a widget key."""
    page.locator(f"{key(widget_key)} button").first.click()


IDLE_MS = 240_000  # generous: a page's script run on a loaded 2-core CPU beside other work
SETTLE_MS = 1_000  # how long the page must stay idle before it counts as done (a rerun may start just after a click)


def wait_idle(page, selector: str = "h1", timeout_ms: int = IDLE_MS, settle_ms: int = SETTLE_MS) -> None:
    """Wait until `selector` is drawn and the app has finished its script run: no 'Running' status and no stale
    (greyed, about to be redrawn) element, continuously for `settle_ms`."""
    page.wait_for_selector(selector, state="attached", timeout=timeout_ms)
    page.evaluate("() => { window.__otIdleSince = null; }")  # an earlier wait's quiet spell does not count
    page.wait_for_function(
        "(settle) => { const w = document.querySelector(\"[data-testid='stStatusWidget']\");"
        " const busy = (w && /Running|Stop/.test(w.innerText)) || document.querySelector(\"[data-stale='true']\");"
        " const now = performance.now();"
        " if (busy) { window.__otIdleSince = null; return false; }"
        " if (window.__otIdleSince == null) { window.__otIdleSince = now; }"
        " return now - window.__otIdleSince >= settle; }", arg=settle_ms, polling=100, timeout=timeout_ms)


def settled(read: Callable[[], T], ready: Callable[[T], bool], what: str, timeout_ms: int = IDLE_MS,
            page: Any = None) -> T:
    """Poll `read()` until `ready(value)` holds for two reads in a row that agree (the page is not mid-redraw),
    with the page idle in between when `page` is given; raises AssertionError with the last value at the deadline.

    A read may fail while Streamlit swaps an element (detached, not yet drawn): that is a read to retry."""
    deadline = time.monotonic() + timeout_ms / 1000
    last: Any = None
    previous: Any = _UNSET
    while True:
        if page is not None:
            wait_idle(page, "body", timeout_ms=max(1_000, int(1000 * (deadline - time.monotonic()))))
        try:
            value = read()
        except Exception as err:  # noqa: BLE001 - an element mid-redraw: read again
            value, ok = err, False
        else:
            ok = ready(value)
        if ok and previous is not _UNSET and value == previous:
            return value
        previous = value if ok else _UNSET
        last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout_ms / 1000:.0f} s; last read {last!r}")
        time.sleep(0.2)


_UNSET = object()


def cards(page: Any, labels: list[str] | None = None, contains: set[str] | None = None,
          timeout_ms: int = IDLE_MS) -> dict[str, list[str]]:
    """The metric cards, label -> the lines under it (value, delta), once the labels are exactly `labels` (in
    order) or include `contains`, and two reads agree."""
    def read() -> dict[str, list[str]]:
        shown = {}
        for text in page.locator("[data-testid='stMetric']").all_inner_texts():
            label, *lines = [line.strip() for line in text.splitlines() if line.strip()]
            shown[label] = lines
        return shown

    def ready(shown: dict[str, list[str]]) -> bool:
        return bool(shown) and (labels is None or list(shown) == labels) and (contains is None or contains <= set(shown))

    return settled(read, ready, f"the metric cards {labels or contains}", timeout_ms, page)


def screenshot(page: Any, path: Path, full_height: int | None = None) -> None:
    """The 1280x800 view, or with full_height the whole page (Streamlit scrolls inside the app: a tall window)."""
    if full_height:
        page.set_viewport_size({"width": 1280, "height": full_height})
        wait_idle(page, "body")  # laid out again at the new size: no running script, nothing stale
    page.screenshot(path=str(path))
    if full_height:
        page.set_viewport_size({"width": 1280, "height": 800})
        wait_idle(page, "body")


# ---------------------------------------------------------------------------- setting widgets, reading results
# Streamlit 1.67 draws multiselects and selectboxes as react-aria comboboxes: an input with role 'combobox'
# whose options appear in a listbox at the end of the document (role 'option').


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (imported late: the module loads where Playwright is missing)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _pick(page: Any, entry: Any, label: str) -> None:
    """Open a combobox's list and click the option shown as `label` (a few tries: the list can close, or draw an
    empty 'No results' frame, while Streamlit redraws the widget)."""
    offered: list[str] = []
    for _ in range(4):
        if page.get_by_role("option").count() == 0:
            entry.click()
            try:
                page.get_by_role("option").first.wait_for(timeout=3_000)
            except Exception:  # noqa: BLE001 - an empty frame: close it and open it again
                pass
        offered = [t.strip() for t in page.get_by_role("option").all_inner_texts()]
        if label in offered:
            page.get_by_role("option").nth(offered.index(label)).click()
            return
        entry.press("Escape")
        try:  # wait for the list to close (not a fixed time), so the next try opens a fresh one
            page.get_by_role("option").first.wait_for(state="detached", timeout=3_000)
        except Exception:  # noqa: BLE001 - a list that stays open is opened again by the click above
            pass
    raise AssertionError(f"no option '{label}' among {offered}")


def choose(page: Any, widget_key: str, labels: list[str]) -> None:
    """Set a multiselect to exactly `labels`, in that order: Clear all, then pick each option from the open list.

    Tried up to three times: a click that lands while the page still redraws can be undone by the redraw.
    """
    box = page.locator(key(widget_key))
    tags = box.locator("[data-tag] [title]")
    entry = box.get_by_role("combobox")
    for _ in range(3):
        wait_idle(page)
        if tags.all_inner_texts() == labels:
            return
        if tags.count():
            box.get_by_role("button", name="Clear all").first.click()
            wait_idle(page)  # outside a form each change reruns the page and redraws the list
        for label in labels:
            if label not in tags.all_inner_texts():
                _pick(page, entry, label)
                wait_idle(page)
        entry.press("Escape")
    settled(tags.all_inner_texts, lambda chosen: chosen == labels, f"{widget_key} showing {labels}", page=page)


def select(page: Any, widget_key: str, label: str) -> None:
    """Pick one option of a selectbox by its shown text, and wait until the box shows it."""
    box = page.locator(key(widget_key))
    _pick(page, box.get_by_role("combobox"), label)
    expect(box.get_by_role("combobox")).to_have_value(label, timeout=10_000)  # the locator follows redraws
    wait_idle(page)


def fill_number(page: Any, widget_key: str, value: float) -> None:
    """Type a value into a number input, leave it (Tab commits it, as a user's would), wait for the rerun."""
    entry = page.locator(f"{key(widget_key)} input")
    entry.fill(str(value))
    entry.press("Tab")
    wait_idle(page, "body")  # the rerun the new value starts, finished


def set_slider(page: Any, widget_key: str, value: str, timeout_ms: int = IDLE_MS) -> None:
    """Move a slider one arrow key at a time until its thumb shows `value` (a key lost in a redraw is pressed
    again: the value read decides, never the count of presses)."""
    slider = page.locator(f"{key(widget_key)} input[type='range']")  # react-aria's hidden range input
    thumb = page.locator(f"{key(widget_key)} [data-testid='stSliderThumbValue']")
    deadline = time.monotonic() + timeout_ms / 1000
    while thumb.inner_text() != value and time.monotonic() < deadline:
        slider.focus()
        slider.press("ArrowLeft" if float(thumb.inner_text()) > float(value) else "ArrowRight")
        expect(thumb).not_to_have_text("", timeout=timeout_ms)
    expect(thumb).to_have_text(value, timeout=timeout_ms)


def _grid(page: Any, container: str) -> Any:
    return page.locator(f"{container} [data-testid='stDataFrame']").first


def grid_rows(page: Any, container: str) -> list[list[str]]:
    """The cells of the first dataframe inside `container` (a CSS selector), row by row, as the grid shows them,
    read once: use `read_grid` to wait for a table.

    Glide's canvas grid keeps an accessible table of role 'row'/'gridcell' in the DOM; the header row is left out.
    """
    rows = _grid(page, container).locator("[role='row']:has([role='gridcell'])")
    return [row.locator("[role='gridcell']").all_inner_texts() for row in rows.all()]


def grid_header(page: Any, container: str) -> list[str]:
    """The column names of the first dataframe inside `container`, read once (see `read_grid`)."""
    return [t.strip() for t in _grid(page, container).locator("[role='columnheader']").all_inner_texts()]


def read_grid(page: Any, container: str, columns: list[str] | tuple[str, ...] = (), min_rows: int = 1,
              first_column: list[str] | None = None, exact: bool = False,
              timeout_ms: int = IDLE_MS) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first dataframe inside `container`, once the page is idle, the header holds
    `columns` (exactly those, in order, with `exact`), there are `min_rows` rows (or exactly the rows named by
    `first_column`), each as wide as the header, and two reads in a row agree: never a table caught mid-redraw."""
    def ready(table: tuple[list[str], list[list[str]]]) -> bool:
        header, rows = table
        if header != list(columns) if exact else not set(columns) <= set(header):
            return False
        if len(rows) < min_rows or any(len(r) != len(header) for r in rows):
            return False
        return first_column is None or [r[0] for r in rows] == first_column

    return settled(lambda: (grid_header(page, container), grid_rows(page, container)), ready,
                   f"the table in {container} with columns {list(columns)}", timeout_ms, page)


def texts(page: Any, selector: str, ready: Callable[[list[str]], bool], what: str,
          timeout_ms: int = IDLE_MS) -> list[str]:
    """The inner texts of every element matching `selector`, once `ready(texts)` holds and the page is settled."""
    return settled(lambda: page.locator(selector).all_inner_texts(), ready, what, timeout_ms, page)


def plotly_figure(page: Any, chart_key: str, names: set[str] | None = None,
                  ready_when: Callable[[dict], bool] | None = None, timeout_ms: int = IDLE_MS) -> dict:
    """The traces (name, x, y, axes) and axis titles Plotly drew for a chart key, read from the plot's own div,
    once the page is settled, the traces named `names` are all drawn and `ready_when(figure)` holds (a chart
    that changes in place, e.g. a new metric, is told apart by its axes), with the same data twice.

    `_fullData`, not `data`: Plotly keeps a figure's arrays base64-encoded in `data` and decoded in `_fullData`.
    """
    def ready(figure: dict) -> bool:
        drawn = {t["name"] for t in figure["data"]}
        return bool(drawn) and (names is None or names <= drawn) and (ready_when is None or ready_when(figure))

    page.wait_for_selector(f"{key(chart_key)} .js-plotly-plot .main-svg", timeout=timeout_ms)
    return settled(lambda: _figure(page, chart_key), ready, f"the chart {chart_key} with traces {names}",
                   timeout_ms, page)


def _figure(page: Any, chart_key: str) -> dict:
    return page.locator(f"{key(chart_key)} .js-plotly-plot").first.evaluate(
        "el => JSON.parse(JSON.stringify({data: el._fullData.map(t => ({name: t.name, x: Array.from(t.x || []), "
        "y: Array.from(t.y || []), xaxis: t.xaxis, yaxis: t.yaxis})), layout: el._fullLayout ? "
        "Object.fromEntries(Object.entries(el._fullLayout).filter(([k]) => /^(xaxis|yaxis)\\d*$/.test(k))"
        ".map(([k, v]) => [k, {title: v.title && v.title.text}])) : {}}))")
