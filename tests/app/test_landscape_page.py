"""Landscape page through AppTest: press Compute, read the barriers and the curves; a bad λ range is an st.error."""
from __future__ import annotations

import base64
import json

import numpy as np

import pytest

from otcore.config import FusionSpec
from ui import state

LANDSCAPE_PAGE = "pages/5_Landscape.py"
# Small settings: quick Hessians, 7 points per curve, a 5 x 5 plane.
QUICK = {"hessian.batch_size": 150, "hessian.lanczos_iters": 12,
         "hessian.power_iters": 20, "hessian.top_k": 2, "landscape.points": 7, "landscape.grid": 5}


@pytest.fixture
def landscape(page, parent_set):
    """The Landscape page with the default parents loaded, run once (before Compute)."""
    at = page(LANDSCAPE_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    assert any("press **Compute**" in i.value for i in at.info)
    return at


def compute(at, **widgets):
    """Set the quick settings and any other widgets by key, press Compute."""
    for key, value in {**QUICK, **widgets}.items():
        at.get_by_key(key).set_value(value)
    at.button(key="landscape.compute").click().run()
    return at


def charts(at) -> dict[str, dict]:
    """The page's figures by their chart key without 'landscape.chart.' (directions, paths, aligned, surface, ...)."""
    return {chart.proto.id.split("landscape.chart.")[-1].split("-")[0]: json.loads(chart.proto.spec)
            for chart in at.get("plotly_chart")}


def values(array) -> list[float]:
    """A figure's array, whether a JSON list or Plotly's base64 typed array."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def test_compute_shows_barriers_curves_and_the_surface(landscape):
    at = compute(landscape, **{"landscape.methods": ["vanilla average", "OT fusion"]})
    assert not at.exception and not at.error
    barriers = {m.label: float(m.value) for m in at.metric}
    assert set(barriers) == {"Barrier A → B", "Barrier A → OT fusion → B", "naive", "OT (weights)"}
    assert all(b >= 0 for b in barriers.values())
    figs = charts(at)
    directions = figs["directions"]
    lines = [t for t in directions["data"] if t.get("line", {}).get("width") == 2]
    assert [(t["name"], t["line"]["dash"]) for t in lines] == [
        ("vanilla average", "solid"), ("vanilla average", "dash"), ("OT fusion", "solid"), ("OT fusion", "dash")]
    assert all(len(t["x"]) == 7 for t in lines) and lines[0]["x"][0] == pytest.approx(-0.5)
    paths = figs["paths"]
    assert sum(t["mode"] == "lines" for t in paths["data"]) == 2
    # Parent 2 aligned to parent 1 by OT: the barrier falls (digits, 150 test examples: naive ~0.9, OT ~0.02).
    naive, by_ot = barriers["naive"], barriers["OT (weights)"]
    assert naive == pytest.approx(barriers["Barrier A → B"], abs=1e-4)  # the same path, computed twice
    assert naive - by_ot > 0.5
    aligned = [t for t in figs["aligned"]["data"] if t["mode"] == "lines"]
    assert [t["name"].split(" (barrier")[0] for t in aligned] == [
        "parent 1 → parent 2", "parent 1 → parent 2 aligned by OT (weights)"]
    assert len(values(aligned[1]["x"])) == 11 and values(aligned[1]["x"])[5] == pytest.approx(0.5)
    surface = figs["surface"]
    assert surface["data"][0]["z"]["shape"] == "5, 5"
    assert surface["layout"]["xaxis"]["title"]["text"] == "α along the top eigenvector"
    assert at.get("download_button")[0].key == "landscape.download.report"


def test_random_plane_and_a_pruned_study(page, parent_set):
    from otcore.config import FusionSpec, PruneSpec

    request = state.PruneRequest(PruneSpec(fraction=0.3), FusionSpec(), parent_set.keys, "defaults")
    at = page(LANDSCAPE_PAGE, **{state.PARENTS: parent_set, state.STUDY: "pruning",
                                 state.PRUNE_REQUEST: request}).run()
    at = compute(at, **{"landscape.methods": ["OT fusion"], "landscape.directions": "random",
                        "landscape.lambda": (-1.0, 0.25)})
    assert not at.exception and not at.error
    assert any("pruned 30 %" in c.value for c in at.caption)
    surface = charts(at)["surface"]
    assert surface["layout"]["xaxis"]["title"]["text"] == "α along the random direction 1"


def test_weight_matching_and_repair_paths_and_no_aligned_path(landscape):
    at = compute(landscape, **{"landscape.methods": ["OT fusion"], "landscape.alignments": ["weight-matching"],
                               "landscape.repair": True})
    assert not at.exception and not at.error
    barriers = {m.label: float(m.value) for m in at.metric}
    assert 0 <= barriers["weight matching + REPAIR"] < 0.1 < barriers["Barrier A → B"]
    (line,) = [t for t in charts(at)["aligned"]["data"] if t["mode"] == "lines"]
    assert line["line"]["dash"] == "dot" and line["name"].startswith("parent 1 → parent 2 aligned by weight matching")
    at = compute(at, **{"landscape.alignments": []})
    assert not at.exception and "aligned" not in charts(at)
    assert all(m.label.startswith("Barrier A →") for m in at.metric)  # no aligned path's card


def test_before_and_after_retraining_adds_the_density_overlay(page, parent_set):
    at = page(LANDSCAPE_PAGE, **{state.PARENTS: parent_set,
                                 state.FUSION_REQUEST: state.FusionRequest(FusionSpec(finetune_epochs=1), parent_set.keys)}).run()
    at = compute(at, **{"landscape.retrained": True, "landscape.alignments": []})
    assert not at.exception and not at.error
    names = ["parent 1", "parent 2", "OT fusion", "OT fusion fine-tuned"]
    figs = charts(at)
    assert [t["name"] for t in figs["density"]["data"]] == names
    lines = [t for t in figs["directions"]["data"] if t.get("line", {}).get("width") == 2 and t["showlegend"]]
    assert [t["name"] for t in lines] == names


def test_before_and_after_retraining_without_a_retrained_net_is_an_error(landscape):
    at = compute(landscape, **{"landscape.retrained": True})
    assert not at.exception
    assert len(at.error) == 1 and "no retrained fused net" in at.error[0].value


def test_a_zero_length_lambda_range_is_an_error_not_a_traceback(landscape):
    at = compute(landscape, **{"landscape.lambda": (0.2, 0.2)})
    assert not at.exception
    assert len(at.error) == 1 and "lambda range must have positive length" in at.error[0].value
    assert not at.metric and not at.get("plotly_chart")


def test_the_same_network_as_a_and_b_is_an_error(landscape):
    at = compute(landscape, **{"landscape.a": "parent 2", "landscape.b": "parent 2"})
    assert not at.exception
    assert any("two different networks" in e.value for e in at.error)


def test_the_report_holds_the_barriers_and_three_charts(digits_parents):
    from otcore import analysis, report
    from otcore.aligned_paths import aligned_path
    from otcore.config import DataSpec, HessianSpec, ModelSpec, TrainSpec
    from otcore.pipeline import fuse_and_compare

    spec = HessianSpec(batch_size=150, lanczos_iters=12, trace_probes=5, power_iters=20, top_k=2, lambda_points=7)
    comparison = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(), TrainSpec(), "cpu")
    fused = comparison.row("OT fusion")
    curvatures = analysis.curvatures(DataSpec(), [fused], spec, "cpu")
    paths = [analysis.interpolation(DataSpec(), comparison.rows[:2], spec, 5, "cpu"),
             aligned_path(DataSpec(), digits_parents, FusionSpec(), spec, "ot-weights", points=5, device="cpu")]
    plane = analysis.surface(DataSpec(), fused, spec, "random", 0.5, 5, "cpu")
    html = report.landscape_report(curvatures, paths, plane, "OT fusion", DataSpec(), ModelSpec(), "fusion", spec,
                                   "cpu")
    assert html.startswith("<!DOCTYPE html>") and "<td>parent 1 → parent 2</td>" in html
    assert "<td>parent 1 → parent 2 aligned by OT (weights)</td>" in html and "<td>ot-weights</td>" in html
    assert html.count("Plotly.newPlot") == 3
