"""Pruning page through AppTest: set the prune settings by key, press Prune, read the cards, table and sweep chart."""
from __future__ import annotations

import json

import pytest

from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, RetrainSpec, TrainSpec
from otcore.pipeline import OT_RETRAINED, VANILLA_RETRAINED, prune_and_compare
from ui import state

PRUNING_PAGE = "pages/3_Pruning.py"
METHODS = ["parent 1", "parent 2", "vanilla average", "prediction ensemble", "OT fusion"]


@pytest.fixture
def pruning(page, parent_set):
    """The Pruning page with the default parents loaded, run once (before any press of Prune)."""
    at = page(PRUNING_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    return at


def prune(at, **widgets):
    """Set widgets by key ('pruning.<field>'), press Prune, return the app."""
    for key, value in widgets.items():
        at.get_by_key(f"pruning.{key}").set_value(value)
    at.button(key="pruning.prune").click().run()
    return at


def test_before_prune_the_page_says_what_to_press(pruning):
    assert any("press **Prune**" in i.value and "default fusion options" in i.value for i in pruning.info)
    assert not pruning.metric and not pruning.dataframe


def test_prune_30_percent_shows_every_method_and_the_parents_sparsity(pruning, digits_parents):
    at = prune(pruning, fraction=0.3)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS
    sparsity = table.set_index("method")["sparsity (%)"]
    assert sparsity["parent 1"] == pytest.approx(30.0, abs=0.5)
    assert sparsity["parent 2"] == pytest.approx(30.0, abs=0.5)
    # Prune, then fuse: the fused nets are pruned again, so they are as sparse as the parents.
    assert sparsity["OT fusion"] == sparsity["vanilla average"] == sparsity["parent 1"]
    # The numbers shown are the pipeline's (a disk-cache hit of the page's own computation).
    expected = prune_and_compare(DataSpec(), ModelSpec(), digits_parents, PruneSpec(fraction=0.3), FusionSpec(),
                                 TrainSpec(), "cpu")
    assert expected.cached
    for row in expected.rows:
        shown = table[table["method"] == row.method].iloc[0]
        assert shown["test acc (%)"] == round(row.test.accuracy, 2)
    cards = {m.label: m for m in at.metric}
    assert cards["OT fusion"].value == f"{expected.row('OT fusion').test.accuracy:.2f} %"
    assert cards["parent 1"].delta == "30.0 % zeros"
    assert any("30 % unstructured, prune, then fuse" in c.value for c in at.caption)
    bar = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(bar["data"]) == len(METHODS) and bar["layout"]["yaxis"]["title"]["text"] == "Test accuracy (%)"
    assert [b.key for b in at.get("download_button")] == ["pruning.download.csv", "pruning.download.report"]


def test_structured_fuse_then_prune_with_retraining(pruning, digits_parents):
    at = prune(pruning, fraction=0.5, type="structured", scope="linear", order="fuse-prune", retrain_epochs=1,
               retrain_lr=0.01, retrain_schedule="cosine")
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS + [VANILLA_RETRAINED, OT_RETRAINED]
    sparsity = table.set_index("method")["sparsity (%)"]
    assert 0 < sparsity["OT fusion"] <= 50.5 and 0 < sparsity["parent 1"] <= 50.5  # filters of the hidden layers
    assert sparsity[OT_RETRAINED] == sparsity["OT fusion"] and sparsity[VANILLA_RETRAINED] == sparsity["OT fusion"]
    spec = PruneSpec(fraction=0.5, type="structured", scope="linear", order="fuse-prune", retrain_epochs=1,
                     retrain=RetrainSpec(lr=0.01, schedule="cosine"))
    assert at.session_state[state.PRUNE_REQUEST].prune == spec
    expected = prune_and_compare(DataSpec(), ModelSpec(), digits_parents, spec, FusionSpec(), TrainSpec(), "cpu")
    assert expected.cached  # the page computed exactly this recipe
    shown = table.set_index("method")["test acc (%)"]
    assert shown[OT_RETRAINED] == round(expected.row(OT_RETRAINED).test.accuracy, 2)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    curve = next(c for c in charts if c["layout"]["yaxis"]["title"]["text"] == "Validation accuracy (%)")
    assert {t["name"] for t in curve["data"] if t.get("mode") == "lines+markers"} == {VANILLA_RETRAINED, OT_RETRAINED}


def test_prune_then_fuse_may_keep_the_fused_nets_own_zeros(pruning):
    at = prune(pruning, fraction=0.5, type="structured", retrain_epochs=1, fused_masks="own-zeros",
               retrain_vanilla=False)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS + [OT_RETRAINED]
    sparsity = table.set_index("method")["sparsity (%)"]
    # The fused nets keep the zeros fusion gave them, fewer than the parents', and retraining keeps them.
    assert sparsity["parent 1"] >= sparsity["OT fusion"] > sparsity["vanilla average"] > 0
    assert sparsity[OT_RETRAINED] == sparsity["OT fusion"]
    assert at.session_state[state.PRUNE_REQUEST].prune.fused_masks == "own-zeros"


def test_the_sweep_draws_one_line_per_method(pruning):
    at = prune(pruning, fraction=0.5)
    assert any("press **Run sweep**" in i.value for i in at.info)
    at.multiselect(key="pruning.fractions").set_value([0.0, 0.5, 0.9])
    at.button(key="pruning.run_sweep").click().run()
    assert not at.exception and not at.error
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    sweep = next(c for c in charts if c["layout"]["yaxis"]["title"]["text"] == "Test accuracy (%)"
                 and c["data"][0]["type"] == "scatter")
    assert [t["name"] for t in sweep["data"]] == METHODS
    assert all(list(t["x"]) == [0.0, 50.0, 90.0] for t in sweep["data"])
    sparsity = next(c for c in charts if c["layout"]["yaxis"]["title"]["text"].startswith("Sparsity"))
    parent = next(t for t in sparsity["data"] if t["name"] == "parent 1")
    assert list(parent["y"]) == pytest.approx([0.0, 50.0, 90.0], abs=0.5)
    # The comparison above still shows the page's fraction; the sweep stays on a rerun (from memory).
    at.run()
    assert not at.exception and len(at.get("plotly_chart")) == 3


def test_fusion_options_come_from_the_fusion_page(page, parent_set):
    spec = FusionSpec(solver="sinkhorn", reg=0.05)
    at = page(PRUNING_PAGE, **{state.PARENTS: parent_set,
                               state.FUSION_REQUEST: state.FusionRequest(spec, parent_set.keys)}).run()
    at = prune(at, fraction=0.2)
    assert not at.exception and not at.error
    assert any("fused with the Fusion page's setting" in c.value for c in at.caption)
    assert at.session_state[state.PRUNE_REQUEST].fusion == spec
    assert list(at.dataframe[0].value["method"]) == METHODS


def test_the_report_holds_the_table_the_sweep_and_three_charts(digits_parents):
    from otcore import report

    spec = PruneSpec(fraction=0.3)
    points = [prune_and_compare(DataSpec(), ModelSpec(), digits_parents, PruneSpec(fraction=f), FusionSpec(),
                                TrainSpec(), "cpu") for f in (0.0, 0.3)]
    html = report.pruning_report(points[1], points, DataSpec(), ModelSpec(), digits_parents, spec, FusionSpec(), "cpu")
    assert html.startswith("<!DOCTYPE html>") and "<script src=" not in html
    assert "Pruning report: digits / mlpnet, 30 % unstructured" in html and "prune · order" in html
    assert "<th>sparsity (%)</th>" in html and "<th>prune fraction (%)</th>" in html
    assert html.count("Plotly.newPlot") == 3  # accuracy per method, the sweep, sparsity


def test_the_slider_follows_fractions_computed_before_and_waits_for_prune_otherwise(pruning):
    at = prune(pruning, fraction=0.45)
    assert any("45 % unstructured" in c.value for c in at.caption)
    at.slider(key="pruning.fraction").set_value(0.85).run()  # never computed: the comparison stays at 45 %
    assert not at.exception
    assert any("85 % is not computed yet: press **Prune**" in c.value for c in at.caption)
    assert at.session_state[state.PRUNE_REQUEST].prune.fraction == 0.45
    assert at.dataframe[0].value.set_index("method")["sparsity (%)"]["parent 1"] == pytest.approx(45.0, abs=0.5)
    at = prune(at)  # now 85 % is computed
    assert at.dataframe[0].value.set_index("method")["sparsity (%)"]["parent 1"] == pytest.approx(85.0, abs=0.5)
    at.slider(key="pruning.fraction").set_value(0.45).run()  # computed before: shown without pressing Prune
    assert not at.exception and not any("not computed yet" in c.value for c in at.caption)
    assert at.session_state[state.PRUNE_REQUEST].prune.fraction == 0.45
    assert any("45 % unstructured" in c.value for c in at.caption)
    assert at.dataframe[0].value.set_index("method")["sparsity (%)"]["parent 1"] == pytest.approx(45.0, abs=0.5)
