"""Plotly figures and display tables: results in, `go.Figure` or `DataFrame` out.

Used by the dashboard pages, the HTML report and the CLI alike, so one template, one colour per
method and one set of axis titles hold everywhere. Tensor work the pages must not do (a plan to
a numpy array, counting parameters) happens here. No Streamlit in this module.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from otcore.cache import config_field
from otcore.methods import is_parent

TEMPLATE = "plotly_white"
FONT = dict(family="Inter, 'Source Sans Pro', Helvetica, Arial, sans-serif", size=13, color="#262730")
HEATMAP_SCALE = "Blues"

# One colour per method, the same on every page, report and export (Tableau-like palette).
METHOD_COLOURS: dict[str, str] = {
    "parent 1": "#4C78A8",
    "parent 2": "#9ECAE9",
    "parent 3": "#72B7B2",
    "parent 4": "#54A24B",
    "vanilla average": "#F58518",
    "prediction ensemble": "#B279A2",
    "OT fusion": "#E45756",
    "OT fusion fine-tuned": "#9D2A2A",
}
_SPARE_COLOURS = ("#EECA3B", "#FF9DA6", "#9D755D", "#BAB0AC", "#439894", "#83BCB6", "#D67195", "#79706E")

# Column names of the comparison table; the report, the CSV download and the page share them.
METHOD = "method"
TEST_ACC = "test acc (%)"
TEST_LOSS = "test loss"
TRAIN_ACC = "train acc (%)"
TRAIN_LOSS = "train loss"
PARAMETERS = "parameters"
INFERENCE_MS = "inference (ms)"


def column_decimals(column: str) -> int | None:
    """Decimals a display column is shown with, by the house rules; None when the name says nothing."""
    name = column.lower()
    if "(%)" in name:
        return 2
    if "loss" in name or "cost" in name or "closeness" in name:
        return 4
    if name.endswith("(ms)") or name.endswith("(s)"):
        return 1
    if name == PARAMETERS:
        return 0
    return None


def method_colour(method: str) -> str:
    """The colour of a method (or parent) name; unknown names get a stable spare colour."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _SPARE_COLOURS[sum(map(ord, method)) % len(_SPARE_COLOURS)]


def style(fig: go.Figure, title: str | None, x_title: str, y_title: str, height: int = 360) -> go.Figure:
    """Apply the house style: template, font, margins, titled axes, legend on top."""
    fig.update_layout(
        template=TEMPLATE, font=FONT, height=height, margin=dict(l=60, r=20, t=50 if title else 20, b=50),
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=15)) if title else None,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0, title=None),
        hoverlabel=dict(font_size=12), bargap=0.25)
    fig.update_xaxes(title_text=x_title, automargin=True)
    fig.update_yaxes(title_text=y_title, automargin=True)
    return fig


# ---------------------------------------------------------------------------- tables


def comparison_table(comparison: Any) -> pd.DataFrame:
    """One row per method: test/train accuracy (%, 2 decimals), test loss (4), parameters, inference ms (1)."""
    rows = [{METHOD: r.method, TEST_ACC: round(r.test.accuracy, 2), TEST_LOSS: round(r.test.loss, 4),
             TRAIN_ACC: round(r.train.accuracy, 2), PARAMETERS: int(r.parameters),
             INFERENCE_MS: round(r.inference_ms, 1)} for r in comparison.rows]
    return pd.DataFrame(rows, columns=[METHOD, TEST_ACC, TEST_LOSS, TRAIN_ACC, PARAMETERS, INFERENCE_MS])


def best_parent_accuracy(comparison: Any) -> float:
    """The highest test accuracy (%) among the parents of a comparison."""
    return max(r.test.accuracy for r in comparison.rows if is_parent(r.method))


def parents_table(parents: Sequence[Any]) -> pd.DataFrame:
    """One row per parent: where it came from, test/train accuracy (%) and loss, parameters, time."""
    rows = []
    for p in parents:
        m = p.metrics
        seconds = m.get("seconds")
        rows.append({"parent": p.name, "source": _source(p), TEST_ACC: round(m["test"]["accuracy"], 2),
                     TEST_LOSS: round(m["test"]["loss"], 4), TRAIN_ACC: round(m["train"]["accuracy"], 2),
                     TRAIN_LOSS: round(m["train"]["loss"], 4),
                     PARAMETERS: int(sum(t.numel() for t in p.model.parameters())),
                     "training (s)": round(float(seconds), 1) if seconds is not None else None,
                     "key": p.key})
    return pd.DataFrame(rows)


def _source(parent: Any) -> str:
    if parent.source != "trained":
        return f"file {parent.source}"
    return "disk cache" if parent.metrics.get("cached") else "trained now"


def diagnostics_table(diagnostics: Iterable[dict]) -> pd.DataFrame:
    """Per (parent, layer) plan diagnostics, rounded for display."""
    rows = [{"parent": d["parent"], "layer": d["group"],
             "neurons (parent → anchor)": f"{d['n_parent']} → {d['n_anchor']}",
             "mean cost": round(d["cost_mean"], 4), "min cost": round(d["cost_min"], 4),
             "max cost": round(d["cost_max"], 4), "transport cost": round(d["transport_cost"], 4),
             "permutation closeness": round(d["permutation_closeness"], 4),
             "time (ms)": round(1000 * d["seconds"], 1)} for d in diagnostics]
    return pd.DataFrame(rows)


def manifest_table(rows: Iterable[Any]) -> pd.DataFrame:
    """The cache browser: kind, dataset, arch, key, headline metric, size, creation time."""
    out = []
    for r in rows:
        config = r.config if isinstance(r.config, dict) else {}
        out.append({"kind": r.kind, "dataset": config_field(config, "data", "name"),
                    "arch": config_field(config, "model", "arch"), "key": r.key,
                    "headline": headline(r.metrics), "size": human_size(r.size),
                    "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))})
    return pd.DataFrame(out, columns=["kind", "dataset", "arch", "key", "headline", "size", "created"])


def headline(metrics: dict) -> str:
    """One line that says what a cache entry achieved."""
    if not isinstance(metrics, dict):
        return ""
    if isinstance(metrics.get("test"), dict) and "accuracy" in metrics["test"]:
        return f"test acc {metrics['test']['accuracy']:.2f}%"
    rows = metrics.get("rows")
    if isinstance(rows, list) and rows:
        parents = [r["test"]["accuracy"] for r in rows if is_parent(r.get("method", ""))]
        last = rows[-1]
        text = f"{last['method']} {last['test']['accuracy']:.2f}%"
        return text + (f" (best parent {max(parents):.2f}%)" if parents else "")
    return ""


def human_size(n_bytes: int) -> str:
    """Bytes as B / KiB / MiB / GiB with one decimal."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# ---------------------------------------------------------------------------- figures


def accuracy_range(accuracies: Sequence[float]) -> tuple[float, float]:
    """A y range zoomed onto the accuracies so differences of a fraction of a point show."""
    low, high = min(accuracies), max(accuracies)
    pad = max(0.5, 0.2 * (high - low))
    bottom = max(0.0, math.floor(low - pad))
    return bottom, high + pad


def tick_label(name: str, width: int = 10) -> str:
    """A method name broken into lines of about `width` characters, for horizontal axis ticks."""
    lines: list[str] = []
    for word in name.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def comparison_bar(comparison: Any, title: str | None = None, height: int = 340) -> go.Figure:
    """Test accuracy per method, one colour per method; hover shows loss and train accuracy."""
    table = comparison_table(comparison)
    fig = go.Figure()
    for _, row in table.iterrows():
        fig.add_trace(go.Bar(
            x=[tick_label(row[METHOD])], y=[row[TEST_ACC]], name=row[METHOD], marker_color=method_colour(row[METHOD]),
            text=[f"{row[TEST_ACC]:.2f}"], textposition="outside", cliponaxis=False, showlegend=False,
            customdata=[[row[TEST_LOSS], row[TRAIN_ACC]]],
            hovertemplate=f"<b>{row[METHOD]}</b><br>test accuracy %{{y:.2f}} %"
                          "<br>test loss %{customdata[0]:.4f}"
                          "<br>train accuracy %{customdata[1]:.2f} %<extra></extra>"))
    bottom, top = accuracy_range(table[TEST_ACC].tolist())
    style(fig, title, "method", "Test accuracy (%)", height)
    fig.update_layout(margin=dict(l=55, r=10))
    fig.update_yaxes(range=[bottom, top])
    fig.update_xaxes(tickangle=0, tickfont=dict(size=10))
    if bottom > 0:
        fig.add_annotation(text=f"axis starts at {bottom:g} %", xref="paper", yref="paper", x=1.0, y=1.0,
                           xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=11, color="#808495"))
    return fig


def plan_array(plan: torch.Tensor | np.ndarray) -> np.ndarray:
    """A transport plan (n_parent, n_anchor) as a float64 numpy array on the CPU."""
    if isinstance(plan, torch.Tensor):
        return plan.detach().to("cpu", torch.float64).numpy()
    return np.asarray(plan, dtype=np.float64)


def plan_heatmap(plan: torch.Tensor | np.ndarray, title: str | None = None, order_by_match: bool = False,
                 height: int = 420) -> go.Figure:
    """Heatmap of one layer's transport plan: rows parent neurons, columns anchor neurons.

    With `order_by_match` the parent neurons are listed in the order of the anchor neuron that
    receives most of their mass, so a (near-)permutation shows as a diagonal.
    """
    z = plan_array(plan).astype(np.float32)  # float32 halves what the browser and reports carry
    rows = np.arange(z.shape[0])
    if order_by_match:
        rows = np.lexsort((-z.max(axis=1), z.argmax(axis=1)))
        z = z[rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(z.shape[1]), y=np.arange(z.shape[0]), colorscale=HEATMAP_SCALE, zmin=0.0,
        customdata=np.broadcast_to(rows[:, None], z.shape),
        colorbar=dict(title=dict(text="transport mass", side="right"), thickness=12),
        hovertemplate="anchor neuron %{x}<br>parent neuron %{customdata}<br>mass %{z:.4g}<extra></extra>"))
    y_title = "parent neuron (ordered by match)" if order_by_match else "parent neuron"
    style(fig, title, "anchor neuron", y_title, height)
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False, side="bottom")
    return fig


def diagnostics_chart(diagnostics: Sequence[dict], title: str | None = None, height: int = 320) -> go.Figure:
    """Permutation closeness of each layer's plan (1 = a permutation), one bar colour per parent.

    Closeness is the share of each parent neuron's mass on its largest anchor match, averaged.
    """
    fig = go.Figure()
    parents = list(dict.fromkeys(d["parent"] for d in diagnostics))
    for parent in parents:
        ds = [d for d in diagnostics if d["parent"] == parent]
        fig.add_trace(go.Bar(
            x=[d["group"] for d in ds], y=[d["permutation_closeness"] for d in ds], name=parent,
            marker_color=method_colour(parent),
            customdata=[[d["n_parent"], d["n_anchor"], d["transport_cost"], d["cost_mean"], 1000 * d["seconds"]]
                        for d in ds],
            hovertemplate=(f"<b>{parent}</b> · %{{x}}<br>permutation closeness %{{y:.3f}}"
                           "<br>neurons %{customdata[0]} → %{customdata[1]}<br>transport cost %{customdata[2]:.4g}"
                           "<br>mean cost %{customdata[3]:.4g}<br>solve %{customdata[4]:.1f} ms<extra></extra>")))
    style(fig, title, "layer (neuron group)", "permutation closeness", height)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(barmode="group", showlegend=len(parents) > 1)
    return fig


# ---------------------------------------------------------------------------- pruning


SPARSITY = "sparsity (%)"
FRACTION = "prune fraction (%)"


def prune_table(comparison: Any) -> pd.DataFrame:
    """Per method: test accuracy, loss, sparsity (% zero weights over the pruned layers, 2 decimals), train accuracy.

    The prediction ensemble is made of the pruned parents, so its sparsity is theirs (their mean). Parameter
    counts and timings are left out: masks keep every tensor's size.
    """
    table = comparison_table(comparison)
    sparsity = dict(comparison.extra.get("sparsity", {}))
    parents = [v for m, v in sparsity.items() if is_parent(m)]
    if parents:
        sparsity.setdefault("prediction ensemble", sum(parents) / len(parents))
    table.insert(3, SPARSITY, [round(100 * sparsity[m], 2) if m in sparsity else float("nan") for m in table[METHOD]])
    return table.drop(columns=[PARAMETERS, INFERENCE_MS])


def _by_fraction(points: Sequence[Any]) -> list[Any]:
    return sorted(points, key=lambda p: p.extra["fraction"])


def sweep_table(points: Sequence[Any]) -> pd.DataFrame:
    """One row per (prune fraction, method): test and train accuracy, test loss, sparsity."""
    rows = []
    for point in _by_fraction(points):
        for row in prune_table(point).to_dict("records"):
            rows.append({FRACTION: round(100 * point.extra["fraction"], 2), **row})
    return pd.DataFrame(rows)


def prune_sweep_chart(points: Sequence[Any], current: float | None = None, title: str | None = None,
                      height: int = 340) -> go.Figure:
    """Test accuracy (%) against prune fraction (%), one line per method; hover shows each network's sparsity.

    `current` (a fraction in [0, 1)) draws a dotted line where the comparison above stands.
    """
    table = sweep_table(points)
    fig = go.Figure()
    for method in dict.fromkeys(table[METHOD]):
        rows = table[table[METHOD] == method]
        sparsity = [f"{s:.2f} %" if pd.notna(s) else "n/a" for s in rows[SPARSITY]]
        fig.add_trace(go.Scatter(
            x=rows[FRACTION].tolist(), y=rows[TEST_ACC].tolist(), name=method, mode="lines+markers",
            line=dict(color=method_colour(method), width=2), marker=dict(size=7), customdata=sparsity,
            hovertemplate=f"<b>{method}</b><br>prune fraction %{{x:.0f}} %<br>test accuracy %{{y:.2f}} %"
                          "<br>sparsity %{customdata}<extra></extra>"))
    style(fig, title, "prune fraction (% of weights or filters removed)", "Test accuracy (%)", height)
    fig.update_layout(legend=dict(font=dict(size=11)))
    if current is not None:
        fig.add_vline(x=100 * current, line=dict(color="#808495", dash="dot", width=1))
    fig.update_xaxes(range=[-3, 100], ticksuffix=" %")
    return fig


def sparsity_chart(points: Sequence[Any], title: str | None = None, height: int = 340) -> go.Figure:
    """Measured sparsity (% zero weights over the pruned layers) against the prune fraction, per single network."""
    table = sweep_table(points).dropna(subset=[SPARSITY])
    fig = go.Figure()
    for method in dict.fromkeys(table[METHOD]):
        rows = table[table[METHOD] == method]
        fig.add_trace(go.Scatter(
            x=rows[FRACTION].tolist(), y=rows[SPARSITY].tolist(), name=method, mode="lines+markers", showlegend=False,
            line=dict(color=method_colour(method), width=2), marker=dict(size=6),
            hovertemplate=f"<b>{method}</b><br>prune fraction %{{x:.0f}} %<br>sparsity %{{y:.2f}} %<extra></extra>"))
    style(fig, title, "prune fraction (%)", "Sparsity (% zero weights)", height)
    fig.update_xaxes(range=[-3, 100], ticksuffix=" %")
    fig.update_yaxes(range=[-3, 100], ticksuffix=" %")
    return fig


# ---------------------------------------------------------------------------- Hessian


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
    from otcore.hessian import Density, default_grid, density_on_grid  # the figure needs torch, not the page

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


# ---------------------------------------------------------------------------- landscape


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, x: Sequence[float], mean: Sequence[float], spread: Sequence[float], colour: str,
          group: str) -> None:
    """A filled mean ± spread band, toggled with its line's legend entry; nothing when the spread is zero."""
    mean, spread = np.asarray(mean, dtype=float), np.asarray(spread, dtype=float)
    if not np.any(spread > 0):
        return
    fig.add_trace(go.Scatter(x=x, y=mean + spread, mode="lines", line=dict(width=0), showlegend=False,
                             legendgroup=group, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=mean - spread, mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor=_rgba(colour, 0.15), showlegend=False, legendgroup=group, hoverinfo="skip"))


def perturbation_chart(curvatures: Sequence[Any], title: str | None = None, height: int = 360) -> go.Figure:
    """Loss of θ + λ·v along the unit top eigenvector v (solid) and a random unit direction (dashed), per network.

    Bands: mean ± spread over the analysed batches (present when there is more than one batch).
    """
    fig = go.Figure()
    for c in curvatures:
        colour = method_colour(c.name)
        for curve, dash, what in ((c.perturbation, "solid", "top eigenvector"),
                                  (c.random_direction, "dash", "random direction")):
            _band(fig, curve["lambdas"], curve["loss_mean"], curve["loss_std"], colour, c.name)
            fig.add_trace(go.Scatter(
                x=curve["lambdas"], y=curve["loss_mean"], name=c.name, legendgroup=c.name, mode="lines",
                showlegend=dash == "solid", line=dict(color=colour, width=2, dash=dash),
                customdata=100 * np.asarray(curve["accuracy_mean"]),  # landscape accuracies are fractions
                hovertemplate=f"<b>{c.name}</b> · {what}<br>λ %{{x:.3f}}<br>loss %{{y:.4f}}"
                              "<br>accuracy %{customdata:.2f} %<extra></extra>"))
    style(fig, title, "step λ along the unit direction", "loss (cross-entropy)", height)
    fig.add_annotation(text="solid: top eigenvector · dashed: random direction", xref="paper", yref="paper",
                       x=1.0, y=1.0, xanchor="right", yanchor="top", showarrow=False,
                       font=dict(size=11, color="#808495"))
    return fig


def interpolation_chart(paths: Sequence[dict], title: str | None = None, height: int = 360) -> go.Figure:
    """Loss along straight paths between networks (A→B, A→C→B), position normalised to [0, 1]; models marked."""
    fig = go.Figure()
    for i, result in enumerate(paths):
        curve, names = result["curve"], result["path"]
        segments = len(names) - 1
        x = np.asarray(curve["lambdas"], dtype=float) / segments
        label = " → ".join(names)
        colour = "#262730" if segments == 1 else method_colour(names[1])
        _band(fig, x, curve["loss_mean"], curve["loss_std"], colour, label)
        accuracy = 100 * np.asarray(curve["accuracy_mean"])  # a fraction in otcore.landscape
        fig.add_trace(go.Scatter(
            x=x, y=curve["loss_mean"], name=f"{label} (barrier {result['barrier']:.4f})", legendgroup=label,
            mode="lines", line=dict(color=colour, width=2, dash="solid" if segments == 1 else "dash"),
            customdata=accuracy, hovertemplate=f"<b>{label}</b><br>position %{{x:.2f}}<br>loss %{{y:.4f}}"
                                               "<br>accuracy %{customdata:.2f} %<extra></extra>"))
        ends = [round(k * (len(x) - 1) / segments) for k in range(segments + 1)]
        fig.add_trace(go.Scatter(
            x=x[ends], y=np.asarray(curve["loss_mean"])[ends], mode="markers+text", legendgroup=label,
            text=names if i == 0 else [""] + names[1:-1] + [""],  # the ends are labelled once
            textposition=["top right"] + ["top center"] * (segments - 1) + ["top left"], showlegend=False,
            hoverinfo="skip", textfont=dict(size=11),
            marker=dict(size=9, color=[method_colour(n) for n in names], line=dict(width=1, color="white"))))
    style(fig, title, "position along the path (0 = A, 1 = B)", "loss (cross-entropy)", height)
    fig.update_xaxes(range=[-0.05, 1.05])
    return fig


def surface_contour(surface: dict, title: str | None = None, height: int = 420) -> go.Figure:
    """Loss on the plane θ + α·d1 + β·d2 as filled contours; the network itself at (0, 0)."""
    hessian = surface.get("directions", "hessian") == "hessian"
    loss = np.asarray(surface["loss"], dtype=float).T  # stored [alpha][beta]; plotly's z is [y][x]
    accuracy = 100 * np.asarray(surface["accuracy"], dtype=float).T  # a fraction in otcore.landscape
    fig = go.Figure(go.Contour(
        x=surface["alphas"], y=surface["betas"], z=loss, colorscale="Viridis", ncontours=24, customdata=accuracy,
        colorbar=dict(title=dict(text="loss", side="right"), thickness=12),
        hovertemplate="α %{x:.3f}<br>β %{y:.3f}<br>loss %{z:.4f}<br>accuracy %{customdata:.2f} %<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(symbol="star", size=13, color="white", line=dict(width=1, color="#262730"))))
    d1, d2 = ("top eigenvector", "second eigenvector") if hessian else ("random direction 1", "random direction 2")
    style(fig, title, f"α along the {d1}", f"β along the {d2}", height)
    fig.update_yaxes(scaleanchor="x", scaleratio=1, showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    return fig


def sharpness_table(records: Sequence[dict]) -> pd.DataFrame:
    """The sharpness scatter's points as rows: network, study, prune fraction, λ max, trace, accuracies."""
    rows = [{METHOD: r["method"], "study": r["study"], FRACTION: round(100 * r["fraction"], 2),
             LAMBDA_MAX: round(r["top_eigenvalue"], 3), TRACE: round(r["trace"], 2),
             TEST_ACC: None if r["test_accuracy"] is None else round(r["test_accuracy"], 2),
             GAP: None if r["gap"] is None else round(r["gap"], 2)} for r in records]
    return pd.DataFrame(rows, columns=[METHOD, "study", FRACTION, LAMBDA_MAX, TRACE, TEST_ACC, GAP])
