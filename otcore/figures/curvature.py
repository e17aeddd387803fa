"""Curvature of the loss: Hessian eigenvalues and traces as tables, spectral densities, sharpness scatters."""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from otcore.figures.style import METHOD, TEST_ACC, method_colour, style
from otcore.figures.sweeps import FRACTION

LAMBDA_MAX = "λ max"
TRACE = "trace"
GAP = "gap (pp)"  # generalisation gap: train minus test accuracy, in percentage points
# Decimals of the curvature table's columns that the house rules (column_decimals) do not name.
CURVATURE_DECIMALS = {LAMBDA_MAX: 3, "λ2": 3, "λ3": 3, "λ4": 3, "λ5": 3, TRACE: 2, "trace std err": 2, GAP: 2}
SHARPNESS = {"top eigenvalue": ("top_eigenvalue", "top Hessian eigenvalue λ max"),
             "trace": ("trace", "Hessian trace (sum of eigenvalues)")}


def curvature_table(curvatures: Sequence[Any]) -> pd.DataFrame:
    """One row per network: top eigenvalues (3 decimals), trace (2) and its standard error where estimated,
    loss (4), accuracies."""
    rows = []
    estimated = any(c.trace_method != "exact" for c in curvatures)
    for c in curvatures:
        row: dict[str, Any] = {METHOD: c.name}
        for i, value in enumerate(c.top_eigenvalues[:5]):
            row[LAMBDA_MAX if i == 0 else f"λ{i + 1}"] = round(float(value), 3)
        row[TRACE] = round(float(c.trace), 2)
        if estimated:
            row["trace std err"] = round(float(c.trace_std_error), 2)
        row["loss"] = round(float(c.loss), 4)
        if c.test_accuracy is not None:
            row[TEST_ACC] = round(c.test_accuracy, 2)
        if c.test_accuracy is not None and c.train_accuracy is not None:
            row[GAP] = round(c.train_accuracy - c.test_accuracy, 2)
        row["time (s)"] = round(float(c.timings.get("total", sum(c.timings.values()))), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def trace_description(curvatures: Sequence[Any], probes: int) -> str:
    """How the traces were found, for a caption: 'exact trace' or the Hutchinson probe count."""
    if all(c.trace_method == "exact" for c in curvatures):
        return "exact trace"
    return f"trace by Hutchinson, {probes} probes" + (" (exact where possible)" if any(
        c.trace_method == "exact" for c in curvatures) else "")


def curvature_record(curvature: Any, study: str, fraction: float) -> dict:
    """What the sharpness scatter keeps of an analysed network: its name, where from, sharpness, accuracies."""
    test, train = curvature.test_accuracy, curvature.train_accuracy
    return {"key": curvature.key, "method": curvature.name, "study": study, "fraction": float(fraction),
            "top_eigenvalue": float(curvature.top_eigenvalues[0]), "trace": float(curvature.trace),
            "test_accuracy": test, "gap": None if test is None or train is None else train - test}


def spectral_density_chart(curvatures: Sequence[Any], title: str | None = None, height: int = 360,
                           points: int = 2000, floor: float = 1e-7) -> go.Figure:
    """Eigenvalue spectral density of each network's Hessian (SLQ), on one grid, log y axis.

    ρ(t) = mean over probes of Σ_j w_j N(t; λ_j, σ²), with PyHessian's σ² = 1e-5 · max(1, span of the
    grid) and `floor` added as PyHessian's plot does, so the log axis shows the gaps between Ritz values.
    """
    import torch  # the figure needs torch; the tables (and a cached `table` command) do not

    from otcore.hessian import Density, default_grid, density_on_grid

    densities = [Density(torch.tensor(c.density_nodes, dtype=torch.float64),
                         torch.tensor(c.density_weights, dtype=torch.float64)) for c in curvatures]
    fig = go.Figure()
    if densities:
        grid = default_grid(densities, points)
        sigma = math.sqrt(1e-5 * max(1.0, float(grid[-1] - grid[0])))
        for c, d in zip(curvatures, densities):
            rho = density_on_grid(d.nodes, d.weights, grid, sigma).numpy() + floor
            fig.add_trace(go.Scatter(x=grid.numpy(), y=rho, name=c.name, mode="lines",
                                     line=dict(color=method_colour(c.name), width=1.5),
                                     hovertemplate=f"<b>{c.name}</b><br>eigenvalue %{{x:.3f}}"
                                                   "<br>density %{y:.3g}<extra></extra>"))
    style(fig, title, "eigenvalue of the loss Hessian", "density (log scale)", height)
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


_STUDY_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x", "star", "cross", "triangle-down")


def sharpness_scatter(records: Sequence[dict], measure: str = "top eigenvalue", title: str | None = None,
                      height: int = 380) -> go.Figure:
    """Sharpness against test accuracy (top) and generalisation gap (bottom), one marker per network analysed.

    Colour: the method; symbol: the study it came from (the fusion setting or a prune fraction).
    """
    from plotly.subplots import make_subplots

    field, x_title = SHARPNESS[measure]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1)
    studies = list(dict.fromkeys(r["study"] for r in records))
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        symbols = [_STUDY_SYMBOLS[studies.index(r["study"]) % len(_STUDY_SYMBOLS)] for r in mine]
        hover = [f"<b>{method}</b> · {r['study']}<br>{measure} %{{x:.3f}}" for r in mine]
        for row, field_y, label in ((1, "test_accuracy", "test accuracy %{y:.2f} %"), (2, "gap", "gap %{y:.2f} pp")):
            fig.add_trace(go.Scatter(
                x=[r[field] for r in mine], y=[r[field_y] for r in mine], mode="markers", name=method,
                legendgroup=method, showlegend=row == 1, hovertext=[h for h in hover],
                marker=dict(color=method_colour(method), size=10, symbol=symbols, line=dict(width=1, color="white")),
                hovertemplate=[f"{h}<br>{label}<extra></extra>" for h in hover]), row=row, col=1)
    style(fig, title, "", "", height)
    fig.update_layout(legend=dict(font=dict(size=11), itemwidth=30), margin=dict(l=60, r=10))
    fig.update_xaxes(title_text=x_title, row=2, col=1)
    fig.update_yaxes(title_text="test acc (%)", title_font_size=12, row=1, col=1)
    fig.update_yaxes(title_text="gap (pp)", title_font_size=12, row=2, col=1)
    return fig


def sharpness_table(records: Sequence[dict]) -> pd.DataFrame:
    """The sharpness scatter's points as rows: network, study, prune fraction, λ max, trace, accuracies."""
    rows = [{METHOD: r["method"], "study": r["study"], FRACTION: round(100 * r["fraction"], 2),
             LAMBDA_MAX: round(r["top_eigenvalue"], 3), TRACE: round(r["trace"], 2),
             TEST_ACC: None if r["test_accuracy"] is None else round(r["test_accuracy"], 2),
             GAP: None if r["gap"] is None else round(r["gap"], 2)} for r in records]
    return pd.DataFrame(rows, columns=[METHOD, "study", FRACTION, LAMBDA_MAX, TRACE, TEST_ACC, GAP])
