"""Issue 13's controls in a real browser: an analysed sweep and its study table, prune-fuse with retraining, aligned
paths. Each test drives `streamlit run app.py` in Debian's Chromium and checks the numbers shown against the cache."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import copy_cache
from tests.browser.streamlit_server import (
    BROWSER_MARKS,
    SCREENSHOTS,
    browser_page,
    cards,
    choose,
    click,
    expect,
    fill_number,
    key,
    plotly_figure,
    read_grid,
    select,
    settled,
    streamlit_server,
    texts,
    wait_idle,
)

pytestmark = BROWSER_MARKS

STUDY = "[data-testid='stExpander']:has-text(\"The study's table\")"
LONG_MS = 240_000  # a cold sweep or Hessian on the shared, loaded 2-core CPU
# Small Hessian settings (as tests/app/test_landscape_page.py): quick on a loaded CPU, same code paths.
QUICK_HESSIAN = (("hessian.batch_size", 150), ("hessian.lanczos_iters", 12), ("hessian.power_iters", 20))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory, digits_cli_train) -> Path:
    """One cache folder for this module's server, holding the session's default parents (nothing trains here)."""
    folder = tmp_path_factory.mktemp("study-browser-cache")
    copy_cache(digits_cli_train.cache, folder)
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


def caption(page, contains: str, ready=lambda text: True) -> str:
    """The first caption holding `contains`, once `ready(text)` holds and the page is settled."""
    selector = f"[data-testid='stCaptionContainer']:has-text('{contains}')"
    return texts(page, selector, lambda shown: bool(shown) and ready(shown[0]), f"a caption '{contains}'")[0]


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
        summary = caption(page, "points ·", lambda text: "finished" in text)
        no_exception(page)
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
        # One fraction, two types: the chart is drawn against the field that varies, not a single column of dots.
        expect(page.locator(key("sweeps.x")).get_by_role("combobox")).to_have_value("prune.type")
        select(page, "sweeps.metric", "trace")
        figure = plotly_figure(page, "sweeps.chart", {"OT fusion", "OT fusion retrained"},
                               lambda f: f["layout"].get("yaxis", {}).get("title") == "Hessian trace")
        lines = {t["name"]: dict(zip(t["x"], t["y"])) for t in figure["data"]}
        assert set(lines) == {"OT fusion", "OT fusion retrained"}, figure
        for method, line in lines.items():
            assert set(line) == {"structured", "unstructured"}, figure
            for kind in ("structured", "unstructured"):
                assert line[kind] == pytest.approx(points[kind, 0.3].curvature[method]["trace"], rel=1e-9)
        assert figure["layout"]["yaxis"]["title"] == "Hessian trace"
        page.get_by_text("Initial and retrained side by side").click()
        figure = plotly_figure(page, "sweeps.chart", ready_when=lambda f: {t["xaxis"] for t in f["data"]} == {"x", "x2"})
        panels = {t["name"]: t["xaxis"] for t in figure["data"]}
        assert panels == {"OT fusion": "x", "OT fusion retrained": "x2"}  # initial left, retrained right
        shoot(page, "sweeps_curvature")

        # The study table: a row per experiment named as the study names it, a column per network.
        page.get_by_text("The study's table").click()
        header, rows = read_grid(page, STUDY, ["experiment", *cached_acc], first_column=["structured 30 %",
                                                                                         "unstructured 30 %"])
        assert header == ["experiment", *cached_acc]
        assert [r[0] for r in rows] == ["structured 30 %", "unstructured 30 %"]
        # The grid's accessible cells hold the values the canvas formats (2 decimals): the cache's, in full.
        shown = dict(zip(header[1:], map(float, rows[0][1:])))
        assert shown == pytest.approx(cached_acc, rel=1e-9)
        select(page, "sweeps.study_metric", "trace")
        _, trace_rows = read_grid(page, STUDY, ["experiment", "OT fusion", "OT fusion retrained"], exact=True,
                                  min_rows=2)
        traces = {r[0]: [float(v) for v in r[1:]] for r in trace_rows}
        for kind in ("structured", "unstructured"):
            curvature = points[kind, 0.3].curvature
            assert traces[f"{kind} 30 %"] == pytest.approx(
                [curvature["OT fusion"]["trace"], curvature["OT fusion retrained"]["trace"]], rel=1e-9)
        page.locator(f"{STUDY} [data-testid='stDataFrame']").first.scroll_into_view_if_needed()
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
        assert [v.strip(" \\") for v in body[0].split("&")[1:]] == [f"{t:.2f}" for t in traces["structured 30 %"]]
        with page.expect_download(timeout=60_000) as download:
            click(page, "sweeps.download.study.csv")
        csv = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
        assert csv[0] == "experiment,OT fusion,OT fusion retrained" and len(csv) == 3
        structured_traces = [structured.curvature[m]["trace"] for m in ("OT fusion", "OT fusion retrained")]
        assert [float(v) for v in csv[1].split(",")[1:]] == pytest.approx(structured_traces, rel=1e-12)  # in full
        no_exception(page)


def load_parents(page, server: str, title: str, ready: str) -> None:
    """Open a page by its URL and load the sidebar's default parents (from the cache: nothing trains)."""
    page.goto(f"{server}/{title}")
    wait_idle(page, "text=No parents yet")
    click(page, "ws.load")
    wait_idle(page, ready, timeout_ms=LONG_MS)


def test_prune_fuse_with_retraining_keeps_the_fraction_and_the_hessian_page_compares_before_and_after(server: str):
    with browser_page() as page:
        load_parents(page, server, "Pruning", "text=press Prune")
        slider = page.locator(f"{key('pruning.fraction')} input[type='range']")  # react-aria's hidden range input
        thumb = page.locator(f"{key('pruning.fraction')} [data-testid='stSliderThumbValue']")
        deadline = time.monotonic() + LONG_MS / 1000
        # 0.50 -> 0.30 in steps of 0.05, one arrow key at a time until the thumb shows it: a key pressed while
        # the page redraws can be lost, so the value read decides, never the count of presses.
        while thumb.inner_text() != "0.30" and time.monotonic() < deadline:
            slider.focus()
            slider.press("ArrowLeft" if float(thumb.inner_text()) > 0.30 else "ArrowRight")
            expect(thumb).not_to_have_text("", timeout=LONG_MS)
            wait_idle(page)
        expect(thumb).to_have_text("0.30", timeout=LONG_MS)
        wait_idle(page)
        select(page, "pruning.order", "prune, then fuse")
        fill_number(page, "pruning.retrain_epochs", 1)
        page.get_by_text("More options: retraining recipe").click()
        fill_number(page, "pruning.retrain_lr", 0.01)
        select(page, "pruning.fused_masks", "pruned again at the fraction")
        click(page, "pruning.prune")
        wait_idle(page, "[data-testid='stMetric']", timeout_ms=LONG_MS)
        ran = caption(page, "ran on", lambda text: text.startswith("30 %"))
        no_exception(page)
        assert ran.startswith("30 % unstructured, prune, then fuse"), ran

        # The cards: every single network, its accuracy and '30.0 % zeros' for the fused ones, retrained included.
        fused = ["vanilla average", "OT fusion", "vanilla average retrained", "OT fusion retrained"]
        shown = cards(page, ["parent 1", "parent 2", "vanilla average", "prediction ensemble", "OT fusion",
                             "vanilla average retrained", "OT fusion retrained"])
        for method in fused:
            value, zeros = shown[method]
            assert re.fullmatch(r"\d{1,3}\.\d\d %", value), value
            assert zeros == "30.0 % zeros", (method, zeros)
        # The table's sparsity column holds the measured share (2 decimals): the fraction, for every fused net.
        table = "[data-testid='stTabs']"
        header, grid = read_grid(page, table, ["sparsity (%)", "test acc (%)"], min_rows=len(fused))
        rows = {r[0]: dict(zip(header, r)) for r in grid}
        for method in fused:
            assert float(rows[method]["sparsity (%)"]) == pytest.approx(30.0, abs=0.05), rows[method]
        accuracy = float(rows["OT fusion retrained"]["test acc (%)"])
        assert shown["OT fusion retrained"][0] == f"{accuracy:.2f} %"  # the card and the table agree
        page.wait_for_selector(f"{key('pruning.chart.bar')} .main-svg")
        page.locator("[data-testid='stCaptionContainer']:has-text('ran on')").first.scroll_into_view_if_needed()
        shoot(page, "pruning_prune_fuse")

        # The Hessian page on that comparison: the fused net before and after retraining, beside its parents.
        page.get_by_role("link", name="Hessian").click()
        wait_idle(page, "text=press Analyse", timeout_ms=LONG_MS)
        select(page, "analysis.study", "Pruning page (pruned 30 % (unstructured, prune-fuse))")
        page.get_by_text("Fused net before and after retraining").click()
        page.get_by_text("Hessian settings (SLQ)").click()
        for setting, value in QUICK_HESSIAN:
            fill_number(page, setting, value)
        wait_idle(page)
        click(page, "hessian.analyse")
        wait_idle(page, f"{key('hessian.chart.retraining')} .main-svg", timeout_ms=LONG_MS)
        header, grid = settled(lambda: read_grid(page, "body", ["trace", "λ2", "test acc (%)"], min_rows=4),
                               lambda table: "OT fusion retrained" in [r[0] for r in table[1]],
                               "the Hessian table with the retrained fusion", LONG_MS)
        no_exception(page)
        analysed = {r[0]: dict(zip(header, r)) for r in grid}
        assert list(analysed)[:3] == ["parent 1", "parent 2", "OT fusion"] and "OT fusion retrained" in analysed
        for row in analysed.values():  # a minimum: positive curvature, eigenvalues in descending order
            assert float(row["trace"]) > 0 and float(row[header[1]]) >= float(row["λ2"]) > 0, row
        for method in ("OT fusion", "OT fusion retrained"):  # the networks the Pruning page scored, not others
            assert float(analysed[method]["test acc (%)"]) == pytest.approx(float(rows[method]["test acc (%)"]),
                                                                            abs=0.005)
        figure = plotly_figure(page, "hessian.chart.retraining", {"OT fusion", "OT fusion retrained"})
        assert {"OT fusion", "OT fusion retrained"} <= {t["name"] for t in figure["data"]}


def test_the_ot_aligned_path_has_a_lower_barrier_than_the_naive_one(server: str):
    with browser_page() as page:
        load_parents(page, server, "Landscape", "text=press Compute")
        choose(page, "landscape.methods", ["OT fusion"])
        fill_number(page, "landscape.points", 7)
        page.get_by_text("Paths and surface:").click()
        fill_number(page, "landscape.grid", 5)
        page.get_by_text("Hessian settings (SLQ)").click()
        for setting, value in QUICK_HESSIAN:
            fill_number(page, setting, value)
        page.get_by_text("Parent 1 → parent 2 after aligning").click()
        choose(page, "landscape.alignments", ["naive", "OT (weights)"])
        click(page, "landscape.compute")
        wait_idle(page, "[data-testid='stMetric']", timeout_ms=LONG_MS)
        page.wait_for_selector(f"{key('landscape.chart.aligned')} .main-svg", timeout=LONG_MS)
        shown = {label: float(lines[0])
                 for label, lines in cards(page, contains={"naive", "OT (weights)", "Barrier A → B"}).items()}
        no_exception(page)
        naive, by_ot = shown["naive"], shown["OT (weights)"]
        # Digits parents, 150 test examples: naive ~0.9, OT-aligned ~0.02 (tests/app/test_landscape_page.py).
        assert 0 <= by_ot < 0.2 < 0.5 < naive, shown
        assert naive == pytest.approx(shown["Barrier A → B"], abs=1e-4)  # the same path, drawn twice
        # Each barrier is the chart's own curve: the largest excess of the loss over the line between its ends.
        figure = plotly_figure(page, "landscape.chart.aligned",
                               ready_when=lambda f: sum("barrier" in (t["name"] or "") for t in f["data"]) == 2)
        curves = [t for t in figure["data"] if "barrier" in (t["name"] or "")]
        assert len(curves) == 2, [t["name"] for t in figure["data"]]
        for curve, barrier in zip(curves, (naive, by_ot)):
            t, loss = curve["x"], curve["y"]
            excess = max(y - ((1 - s) * loss[0] + s * loss[-1]) for s, y in zip(t, loss))
            assert excess == pytest.approx(barrier, abs=1e-4), curve["name"]
        page.locator(key("landscape.chart.aligned")).scroll_into_view_if_needed()
        shoot(page, "landscape_aligned")
