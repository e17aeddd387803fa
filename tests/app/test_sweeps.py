"""Sweeps page through AppTest: define a grid, press Start, read the chart and the table; reopen it from the cache."""
from __future__ import annotations

import shutil

import pytest

from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, TrainSpec
from otcore.pipeline import prune_and_compare, train_parents

SWEEPS_PAGE = "pages/6_Sweeps.py"


@pytest.fixture
def sweep_cache(app_cache_dir, tmp_path, monkeypatch):
    """A cache of this test's own holding the default parents, so the sweep's entries touch no other test."""
    for entry in app_cache_dir.glob("*.safetensors"):
        shutil.copy2(entry, tmp_path)
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path))
    return DiskCache(tmp_path)


def test_a_two_point_sweep_shows_its_chart_and_table(page, sweep_cache):
    at = page(SWEEPS_PAGE).run()
    assert not at.exception
    assert any("press **Start**" in i.value for i in at.info)
    at.multiselect(key="sweeps.fractions").set_value([0.0, 0.5])
    at.button(key="sweeps.start").click().run()
    assert not at.exception and not at.error
    assert any("**2** of 2 points · 0 failed · finished · local executor" in c.value for c in at.main.caption)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[0].value
    assert sorted(set(table["prune.fraction"])) == [0.0, 0.5] and len(table) == 2 * 5
    # The numbers shown are the pipeline's: the dashboard's own call now hits the cache the sweep filled.
    parents = train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], "auto", cache=sweep_cache)
    half = prune_and_compare(DataSpec(), ModelSpec(), parents, PruneSpec(fraction=0.5), FusionSpec(), TrainSpec(),
                             cache=sweep_cache)
    assert half.cached
    shown = table[table["prune.fraction"] == 0.5].set_index("method")["test acc (%)"]
    assert {r.method: r.test.accuracy for r in half.rows} == pytest.approx(shown.to_dict())
    # Another metric against another swept field redraws without an error.
    at.selectbox(key="sweeps.metric").set_value("sparsity").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1

    # A new session finds the sweep in the cache and shows the same table.
    again = page(SWEEPS_PAGE).run()
    again.button(key="sweeps.show").click().run()
    assert not again.exception
    assert again.dataframe[0].value.equals(table)


def test_an_empty_grid_is_an_error_not_a_traceback(page, sweep_cache):
    at = page(SWEEPS_PAGE).run()
    at.multiselect(key="sweeps.types").set_value([])
    at.button(key="sweeps.start").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "'prune.type' has no values" in at.error[0].value


def test_malformed_sweep_records_are_skipped_with_a_warning(page, sweep_cache):
    from otcore.cache import CacheEntry
    from otcore.sweep import LocalExecutor, SweepSpec, run_sweep

    good = run_sweep(SweepSpec((("prune.fraction", (0.5,)),), device="cpu"), LocalExecutor(), sweep_cache)
    point = good.points[0]
    # A valid checksum over a record with no 'status' (the KeyError of issue 14), and one with a string count.
    record = sweep_cache.load(good.key)
    for key, edit in (("nostatus", lambda m: m.pop("status")), ("textdone", lambda m: m.update(done="1"))):
        metrics = dict(record.metrics)
        edit(metrics)
        sweep_cache.store(CacheEntry(key, "sweep", record.config, metrics))
    at = page(SWEEPS_PAGE).run()
    assert not at.exception
    assert len(at.warning) == 1 and at.warning[0].value.startswith("2 damaged or unreadable cache entries skipped")
    assert at.selectbox(key="sweeps.record").options == [at.selectbox(key="sweeps.record").format_func(good.key)]
    at.button(key="sweeps.show").click().run()
    assert not at.exception and not at.error
    shown = at.dataframe[0].value.set_index("method")["test acc (%)"]
    assert shown.to_dict() == pytest.approx({r.method: r.test.accuracy for r in point.comparison.rows})
