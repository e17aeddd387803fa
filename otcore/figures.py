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
    return max(r.test.accuracy for r in comparison.rows if r.method.startswith("parent"))


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
        out.append({"kind": r.kind, "dataset": (config.get("data") or {}).get("name", ""),
                    "arch": (config.get("model") or {}).get("arch", ""), "key": r.key,
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
        parents = [r["test"]["accuracy"] for r in rows if str(r.get("method", "")).startswith("parent")]
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
