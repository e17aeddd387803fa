"""What the pages show and export: figure builders, tables, the HTML report and `python -m otcore report`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
import pytest
import torch

from otcore import figures, report
from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec
from otcore.pipeline import fuse_and_compare


@pytest.fixture
def comparison(digits_parents):
    return fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(), TrainSpec(), "cpu")


def test_comparison_table_and_bar_chart(comparison):
    table = figures.comparison_table(comparison)
    assert list(table.columns) == ["method", "test acc (%)", "test loss", "train acc (%)", "parameters",
                                   "inference (ms)"]
    assert len(table) == len(comparison.rows)
    for (_, row), result in zip(table.iterrows(), comparison.rows):
        assert row["test acc (%)"] == round(result.test.accuracy, 2)
        assert row["test loss"] == round(result.test.loss, 4)
    fig = figures.comparison_bar(comparison)
    assert fig.layout.yaxis.title.text == "Test accuracy (%)" and fig.layout.xaxis.title.text == "method"
    low, high = fig.layout.yaxis.range
    accuracies = table["test acc (%)"]
    assert 0 < low < accuracies.min() and high > accuracies.max()  # zoomed so differences show
    colours = {trace.name: trace.marker.color for trace in fig.data}
    assert colours["OT fusion"] == figures.METHOD_COLOURS["OT fusion"]


def test_plan_heatmap_orders_a_permutation_onto_the_diagonal():
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    plan = torch.eye(6)[perm]
    fig = figures.plan_heatmap(plan, order_by_match=True)
    assert np.array_equal(np.asarray(fig.data[0].z), np.eye(6, dtype=np.float32))
    assert fig.layout.xaxis.title.text == "anchor neuron"
    assert fig.layout.yaxis.title.text.startswith("parent neuron")
    assert fig.data[0].colorbar.title.text == "transport mass"
    unordered = figures.plan_heatmap(plan)
    assert np.array_equal(np.asarray(unordered.data[0].z), plan.numpy())


def test_diagnostics_chart(comparison):
    fig = figures.diagnostics_chart(comparison.diagnostics)
    assert fig.layout.yaxis.title.text == "permutation closeness"
    assert list(fig.data[0].x) == [d["group"] for d in comparison.diagnostics]
    assert all(0.0 <= y <= 1.0 + 1e-9 for y in fig.data[0].y)


def test_write_report_is_self_contained_and_escaped():
    frame = pd.DataFrame({"method": ["a<b>", "c"], "acc (%)": [97.5, 96.25], "n": [1000, 2]})
    fig = go.Figure(go.Bar(x=["a", "c"], y=[1, 2]))
    html = report.write_report("T <script>alert(1)</script>", {"root": "/x & <y>"}, {"Table": frame},
                               {"One": fig, "Two": fig})
    assert html.startswith("<!DOCTYPE html>")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html and "/x &amp; &lt;y&gt;" in html
    assert html.count(plotly.offline.get_plotlyjs()[:300]) == 1  # the bundle once, for both figures
    assert html.count("Plotly.newPlot") == 2
    assert ">97.50<" in html and ">96.25<" in html and ">1,000<" in html  # decimals per column
    assert "<script src=" not in html


def test_cli_report_writes_the_fusion_pages_report(tmp_path, capsys):
    from otcore.cli import main

    out = tmp_path / "report.html"
    assert main(["report", "--dataset", "digits", "--arch", "mlpnet", "--out", str(out), "--title", "Digits <1>",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["out"] == str(out) and result["bytes"] == out.stat().st_size
    assert [r["method"] for r in result["rows"]][-1] == "OT fusion"
    html = out.read_text(encoding="utf-8")
    assert "<title>Digits &lt;1&gt;</title>" in html and "fusion · solver" in html
    assert "Transport plan · parent 2/fc1" in html and "Test accuracy per method" in html
    assert "Accuracy against size" in html  # the frontier of this fusion, as the page's report has it
    assert main(["report", "--out", str(tmp_path / "missing-folder" / "r.html")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")


def test_the_fusion_report_draws_the_frontier_it_is_given(comparison, digits_parents):
    from otcore.frontier import frontier_points
    from otcore.pipeline import dataset

    wide = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(alignment="zipit", width=2.0),
                            TrainSpec(), "cpu")
    points = frontier_points([comparison, wide], len(dataset(DataSpec()).x_test))
    charts = report.frontier_figures(points)
    drawn = {t.name: list(zip(t.x, t.y)) for t in next(iter(charts.values())).data}
    assert drawn["ZipIt!"] == [(wide.row("ot_fusion").parameters, wide.row("ot_fusion").test.accuracy)]
    assert drawn[figures.ENSEMBLE_LABEL] == [(comparison.row("prediction_ensemble").parameters,
                                             comparison.row("prediction_ensemble").test.accuracy)]
    html = report.fusion_report(comparison, DataSpec(), ModelSpec(), digits_parents, FusionSpec(), "cpu",
                                frontier=points)
    without = report.fusion_report(comparison, DataSpec(), ModelSpec(), digits_parents, FusionSpec(), "cpu")
    assert html.count("Plotly.newPlot") == without.count("Plotly.newPlot") + len(charts) == 7  # both frontiers more
    assert "Accuracy against size: every fusion computed for these parents (inference time)" in html
    assert "Parameters (count)" in html and "Inference (ms per 1000 test images)" in html
    assert "mean of their logits" in html and "<script src=" not in html  # still one self-contained file
    table = figures.frontier_frame(points)
    assert list(table["width"].dropna()) == [1.0, 2.0] and table["test acc (%)"].map(lambda v: round(v, 2) == v).all()
