"""Issue 13's controls in a real browser: an analysed sweep and its study table, prune-fuse with retraining, aligned
paths. Each test drives `streamlit run app.py` in Debian's Chromium and checks the numbers shown against the cache."""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.streamlit_server import (
    BROWSER_MARKS,
    SCREENSHOTS,
    browser_page,
    choose,
    click,
    fill_number,
    grid_header,
    grid_rows,
    key,
    plotly_figure,
    select,
    streamlit_server,
    wait_idle,
)

pytestmark = BROWSER_MARKS

STUDY = "[data-testid='stExpander']:has-text(\"The study's table\")"
LONG_MS = 240_000  # a cold sweep or Hessian on the shared, loaded 2-core CPU


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, digits_cli_train) -> Path:
    """One cache folder for this module's server, holding the session's default parents (nothing trains here)."""
    folder = tmp_path_factory.mktemp("study-browser-cache")
    for entry in Path(digits_cli_train.cache).glob("*.safetensors"):
        shutil.copy2(entry, folder)
    return folder


@pytest.fixture(scope="module")
def server(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `streamlit run app.py` for the module's tests (each opens its own browser session on it)."""
    log = tmp_path_factory.mktemp("study-browser-log") / "server.log"
    with streamlit_server(cache_dir, log_path=log) as url:
        yield url


def shoot(page, name: str) -> None:
    """Keep the result state for a look (tests/browser/screenshots/, git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"test_study_{name}.png"))


def no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stAlertContentError']").count() == 0


def test_an_analysed_sweep_gives_the_study_table_the_cache_holds(server: str, cache_dir: Path):
    from otcore.cache import DiskCache
    from otcore.sweep import load_sweep, sweep_records

    with browser_page() as page:
        page.goto(f"{server}/Sweeps")
        wait_idle(page, "h1")
        choose(page, "sweeps.types", ["structured", "unstructured"])
        choose(page, "sweeps.fractions", ["0.3"])
        fill_number(page, "sweeps.retrain_epochs", 1)
        choose(page, "sweeps.analyse", ["OT fusion", "retrained fusion"])
        page.get_by_text("Retraining recipe").click()
        fill_number(page, "sweeps.retrain_lr", 0.01)
        click(page, "sweeps.start")
        page.wait_for_selector(STUDY, timeout=LONG_MS)
        wait_idle(page)
        no_exception(page)
        summary = page.locator("[data-testid='stCaptionContainer']:has-text('points ·')").first.inner_text()
        assert summary.startswith("2 of 2 points · 0 failed · finished · local executor"), summary

        # What the cache holds for this sweep, read by the library, not by the page.
        records = sweep_records(DiskCache(cache_dir)).rows
        assert len(records) == 1
        sweep = load_sweep(records[0].key, DiskCache(cache_dir))
        assert re.search(rf"sweep {sweep.key[:12]}\b", summary)
        points = {(p.values["prune.type"], p.values["prune.fraction"]): p for p in sweep.points}
        assert set(points) == {("structured", 0.3), ("unstructured", 0.3)}
        # The recipe typed in the browser reached the sweep's spec (lr 0.01, 1 epoch, vanilla retrained too).
        spec = records[0].config
        assert spec["prune"]["retrain"]["lr"] == 0.01 and spec["prune"]["retrain"]["retrain_vanilla"] is True
        assert spec["prune"]["retrain_epochs"] == 1 and spec["analyse"] == ["OT fusion", "retrained fusion"]
        structured = points["structured", 0.3]
        cached_acc = {r.method: r.test.accuracy for r in structured.comparison.rows}
        assert set(structured.curvature) == {"OT fusion", "OT fusion retrained"}

        # The curvature chart: trace against the pruning type, a line per analysed network, values from the cache.
        select(page, "sweeps.metric", "trace")
        select(page, "sweeps.x", "prune.type")
        wait_idle(page)
        figure = plotly_figure(page, "sweeps.chart")
        lines = {t["name"]: dict(zip(t["x"], t["y"])) for t in figure["data"]}
        assert set(lines) == {"OT fusion", "OT fusion retrained"}, figure
        for method, line in lines.items():
            assert set(line) == {"structured", "unstructured"}, figure
            for kind in ("structured", "unstructured"):
                assert line[kind] == pytest.approx(points[kind, 0.3].curvature[method]["trace"], rel=1e-9)
        assert figure["layout"]["yaxis"]["title"] == "Hessian trace"
        page.get_by_text("Initial and retrained side by side").click()
        wait_idle(page)
        figure = plotly_figure(page, "sweeps.chart")
        panels = {t["name"]: t["xaxis"] for t in figure["data"]}
        assert panels == {"OT fusion": "x", "OT fusion retrained": "x2"}  # initial left, retrained right
        shoot(page, "sweeps_curvature")

        # The study table: a row per experiment named as the study names it, a column per network.
        page.get_by_text("The study's table").click()
        wait_idle(page)
        header = grid_header(page, STUDY)
        rows = grid_rows(page, STUDY)
        assert header == ["experiment", *cached_acc]
        assert [r[0] for r in rows] == ["structured 30 %", "unstructured 30 %"]
        # The grid's cells hold the values it formats; they are the cache's, not recomputed ones.
        shown = dict(zip(header[1:], map(float, rows[0][1:])))
        assert shown == pytest.approx(cached_acc, abs=1e-9)
        assert shown["OT fusion retrained"] == pytest.approx(cached_acc["OT fusion retrained"], abs=1e-9)
        select(page, "sweeps.study_metric", "trace")
        wait_idle(page)
        assert grid_header(page, STUDY) == ["experiment", "OT fusion", "OT fusion retrained"]
        traces = {r[0]: [float(v) for v in r[1:]] for r in grid_rows(page, STUDY)}
        for kind in ("structured", "unstructured"):
            curvature = points[kind, 0.3].curvature
            assert traces[f"{kind} 30 %"] == pytest.approx(
                [curvature["OT fusion"]["trace"], curvature["OT fusion retrained"]["trace"]], rel=1e-9)
        shoot(page, "sweeps_study")

        # The downloads: LaTeX with booktabs rules and one row per experiment; CSV with the same numbers.
        with page.expect_download(timeout=60_000) as download:
            click(page, "sweeps.download.study.latex")
        latex = Path(download.value.path()).read_text(encoding="utf-8")
        assert download.value.suggested_filename == f"study-{sweep.key[:12]}-trace.tex"
        assert latex.count("\\toprule") == latex.count("\\midrule") == latex.count("\\bottomrule") == 1
        body = latex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
        assert [line.split("&")[0].strip() for line in body] == ["structured 30 \\%", "unstructured 30 \\%"]
        assert all(line.count("&") == 2 and line.endswith("\\\\") for line in body)  # two networks a row
        first = [float(v.strip(" \\")) for v in body[0].split("&")[1:]]
        assert first == pytest.approx(traces["structured 30 %"], abs=0.005)  # printed with 2 decimals
        with page.expect_download(timeout=60_000) as download:
            click(page, "sweeps.download.study.csv")
        csv = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
        assert csv[0] == "experiment,OT fusion,OT fusion retrained" and len(csv) == 3
        assert [float(v) for v in csv[1].split(",")[1:]] == pytest.approx(traces["structured 30 %"], rel=1e-12)
        no_exception(page)
