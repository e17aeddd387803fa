"""Hessian page through AppTest: pick networks, press Analyse, read the table, the density chart and the scatter."""
from __future__ import annotations

import json

import pytest

from otcore.config import FusionSpec, PruneSpec
from ui import state

HESSIAN_PAGE = "pages/4_Hessian.py"
# Small SLQ settings: a second per network on 2 cores (the page's defaults take several).
QUICK = {"hessian.batch_size": 150, "hessian.lanczos_iters": 12,
         "hessian.power_iters": 20, "hessian.top_k": 2}


@pytest.fixture
def hessian(page, parent_set):
    """The Hessian page with the default parents loaded and quick settings, run once (before Analyse)."""
    at = page(HESSIAN_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    return at


def analyse(at, methods, **widgets):
    """Set the quick settings and any other widgets by key, pick the networks, press Analyse."""
    for key, value in {**QUICK, **widgets}.items():
        at.get_by_key(key).set_value(value)
    at.multiselect(key="hessian.methods").set_value(methods)
    at.button(key="hessian.analyse").click().run()
    return at


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_before_analyse_the_page_offers_every_single_network(hessian):
    assert any("press **Analyse**" in i.value for i in hessian.info)
    assert hessian.multiselect(key="hessian.methods").options == ["parent 1", "parent 2", "vanilla average",
                                                                   "OT fusion"]  # no ensemble: not one network
    assert hessian.number_input(key="hessian.batch_size").value == 450


def test_analyse_shows_a_row_per_network_a_log_density_and_the_scatter(hessian):
    at = analyse(hessian, ["parent 1", "OT fusion"])
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == ["parent 1", "OT fusion"]
    assert (table["λ max"] > 0).all() and (table["λ max"] >= table["λ2"]).all()
    assert (table["trace"] > 0).all() and (table["test acc (%)"] > 80).all()
    density, scatter = charts(at)
    assert density["layout"]["yaxis"]["type"] == "log"
    assert [t["name"] for t in density["data"]] == ["parent 1", "OT fusion"]
    assert density["layout"]["xaxis"]["title"]["text"] == "eigenvalue of the loss Hessian"
    markers = [t for t in scatter["data"] if t["showlegend"]]
    assert [t["name"] for t in markers] == ["parent 1", "OT fusion"]
    assert markers[0]["x"][0] == pytest.approx(table["λ max"][0], abs=1e-3)
    # The trace toggle switches the scatter's x to the traces.
    at.get_by_key("hessian.measure").set_value("trace").run()
    assert not at.exception
    scatter = charts(at)[1]
    assert next(t for t in scatter["data"] if t["name"] == "OT fusion")["x"][0] == pytest.approx(
        table["trace"][1], abs=0.01)
    assert at.get("download_button")[0].key == "hessian.download.report"
    # The trace is exact by default; Hutchinson's estimate adds its standard error and agrees within it.
    assert "trace std err" not in table and any("exact trace" in c.value for c in at.caption)
    assert at.number_input(key="hessian.trace_probes").disabled
    at.get_by_key("hessian.trace_method").set_value("hutchinson").run()
    at = analyse(at, ["parent 1", "OT fusion"], **{"hessian.trace_probes": 20})
    estimated = at.dataframe[0].value
    assert any("trace by Hutchinson, 20 probes" in c.value for c in at.caption)
    assert ((estimated["trace"] - table["trace"]).abs() <= 5 * estimated["trace std err"] + 0.01).all()


def test_pruned_networks_join_the_session_scatter(page, parent_set):
    prune_spec = PruneSpec(fraction=0.5)
    request = state.PruneRequest(prune_spec, FusionSpec(), parent_set.keys, "defaults")
    at = page(HESSIAN_PAGE, **{state.PARENTS: parent_set, state.PRUNE_REQUEST: request}).run()
    assert not at.exception
    at = analyse(at, ["OT fusion"])
    at.selectbox(key=state.STUDY).set_value("pruning").run()
    at = analyse(at, ["parent 1", "OT fusion"])
    assert not at.exception and not at.error
    assert any("pruned 50 % (unstructured, prune-fuse)" in c.value for c in at.caption)
    records = list(at.session_state[state.ANALYSED][parent_set.keys].values())
    assert sorted((r["method"], r["fraction"]) for r in records) == [("OT fusion", 0.0), ("OT fusion", 0.5),
                                                                      ("parent 1", 0.5)]
    scatter = charts(at)[1]
    fused = [t for t in scatter["data"] if t["name"] == "OT fusion" and t["showlegend"]][0]
    assert len(fused["x"]) == 2 and len(set(fused["marker"]["symbol"])) == 2  # one marker per fraction


def test_no_network_picked_is_an_error_not_a_traceback(hessian):
    at = analyse(hessian, [])
    assert not at.exception
    assert len(at.error) == 1 and "pick at least one network" in at.error[0].value
    assert not at.dataframe


def test_the_report_holds_the_curvature_table_and_both_charts(digits_parents):
    from otcore import analysis, figures, report
    from otcore.config import DataSpec, HessianSpec, ModelSpec, TrainSpec
    from otcore.pipeline import fuse_and_compare

    spec = HessianSpec(batch_size=150, lanczos_iters=12, trace_probes=5, power_iters=20, top_k=2)
    comparison = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(), TrainSpec(), "cpu")
    curvatures = analysis.curvatures(DataSpec(), comparison.rows[:1], spec, "cpu")
    records = [figures.curvature_record(c, "fusion", 0.0) for c in curvatures]
    html = report.hessian_report(curvatures, records, DataSpec(), ModelSpec(), "fusion", spec, "cpu")
    assert html.startswith("<!DOCTYPE html>") and "<th>λ max</th>" in html and "hessian · lanczos_iters" in html
    assert html.count("Plotly.newPlot") == 2


def test_before_and_after_retraining_overlays_the_parents_and_both_fused_nets(page, parent_set):
    fine_tuned = FusionSpec(finetune_epochs=1)
    at = page(HESSIAN_PAGE, **{state.PARENTS: parent_set,
                               state.FUSION_REQUEST: state.FusionRequest(fine_tuned, parent_set.keys)}).run()
    assert not at.exception
    at.toggle(key="hessian.retrained").set_value(True)
    at = analyse(at, ["parent 1"])  # the toggle picks the networks, whatever the multiselect holds
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    names = ["parent 1", "parent 2", "OT fusion", "OT fusion fine-tuned"]
    assert list(table["method"]) == names
    density, _, perturbation = charts(at)
    assert [t["name"] for t in density["data"]] == names
    assert perturbation["layout"]["title"]["text"].endswith("before and after retraining")
    lines = [t for t in perturbation["data"] if t.get("line", {}).get("width") == 2]
    assert [t["name"] for t in lines if t["line"]["dash"] == "solid"] == names
    # Retraining moves the fused net: its curve differs from the untrained fused net's.
    fused, tuned = (next(t for t in lines if t["name"] == n and t["line"]["dash"] == "solid")
                    for n in ("OT fusion", "OT fusion fine-tuned"))
    assert max(abs(a - b) for a, b in zip(fused["y"], tuned["y"])) > 1e-3


def test_before_and_after_retraining_without_a_retrained_net_is_an_error(hessian):
    hessian.toggle(key="hessian.retrained").set_value(True)
    at = analyse(hessian, ["parent 1"])
    assert not at.exception
    assert len(at.error) == 1 and "no retrained fused net" in at.error[0].value
    assert not at.dataframe


def test_the_report_overlays_before_and_after_retraining(digits_parents):
    from otcore import analysis, report
    from otcore.config import DataSpec, HessianSpec, ModelSpec, TrainSpec
    from otcore.figures import retraining_networks
    from otcore.pipeline import fuse_and_compare

    spec = HessianSpec(batch_size=150, lanczos_iters=12, trace_probes=5, power_iters=20, top_k=2)
    comparison = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(finetune_epochs=1),
                                  TrainSpec(), "cpu")
    names = retraining_networks([r.method for r in comparison.rows])
    assert names == ["parent 1", "parent 2", "OT fusion", "OT fusion fine-tuned"]
    curvatures = analysis.curvatures(DataSpec(), [comparison.row(n) for n in names], spec, "cpu")
    html = report.hessian_report(curvatures, [], DataSpec(), ModelSpec(), "fusion", spec, "cpu",
                                 retraining=curvatures)
    assert html.count("Plotly.newPlot") == 4 and "before and after retraining" in html
