"""Landscape page through AppTest: press Compute, read the barriers and the curves; a bad λ range is an st.error."""
from __future__ import annotations

import json

import pytest

from ui import state

LANDSCAPE_PAGE = "app_pages/5_Landscape.py"
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
    """The page's figures by their y axis title (directions, paths) or type (the contour)."""
    out = {}
    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        out["surface" if fig["data"][0]["type"] == "contour" else fig["layout"]["xaxis"]["title"]["text"]] = fig
    return out


def test_compute_shows_barriers_curves_and_the_surface(landscape):
    at = compute(landscape, **{"landscape.methods": ["vanilla average", "OT fusion"]})
    assert not at.exception and not at.error
    barriers = {m.label: float(m.value) for m in at.metric}
    assert set(barriers) == {"Barrier A → B", "Barrier A → OT fusion → B"}
    assert all(b >= 0 for b in barriers.values())
    figs = charts(at)
    directions = figs["step λ along the unit direction"]
    lines = [t for t in directions["data"] if t.get("line", {}).get("width") == 2]
    assert [(t["name"], t["line"]["dash"]) for t in lines] == [
        ("vanilla average", "solid"), ("vanilla average", "dash"), ("OT fusion", "solid"), ("OT fusion", "dash")]
    assert all(len(t["x"]) == 7 for t in lines) and lines[0]["x"][0] == pytest.approx(-0.5)
    paths = figs["position along the path (0 = A, 1 = B)"]
    assert sum(t["mode"] == "lines" for t in paths["data"]) == 2
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
    from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, TrainSpec
    from otcore.pipeline import fuse_and_compare

    spec = HessianSpec(batch_size=150, lanczos_iters=12, trace_probes=5, power_iters=20, top_k=2, lambda_points=7)
    comparison = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(), TrainSpec(), "cpu")
    fused = comparison.row("OT fusion")
    curvatures = analysis.curvatures(DataSpec(), [fused], spec, "cpu")
    paths = [analysis.interpolation(DataSpec(), comparison.rows[:2], spec, 5, "cpu")]
    plane = analysis.surface(DataSpec(), fused, spec, "random", 0.5, 5, "cpu")
    html = report.landscape_report(curvatures, paths, plane, "OT fusion", DataSpec(), ModelSpec(), "fusion", spec,
                                   "cpu")
    assert html.startswith("<!DOCTYPE html>") and "<td>parent 1 → parent 2</td>" in html
    assert html.count("Plotly.newPlot") == 3
