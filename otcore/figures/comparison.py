"""Comparison tables and bars: one row per method or parent, the cache browser's listing, the accuracy bar chart."""
from __future__ import annotations

import time
from typing import Any
from collections.abc import Iterable, Sequence

import pandas as pd
import plotly.graph_objects as go

from otcore.cache import config_field
from otcore.figures.style import (
    INFERENCE_MS,
    METHOD,
    PARAMETERS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_LOSS,
    accuracy_range,
    method_colour,
    style,
    tick_label,
)
from otcore.methods import is_parent


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


def comparison_bar(comparison: Any, title: str | None = None, height: int = 340) -> go.Figure:
    """Test accuracy per method, one colour per method; hover shows loss and train accuracy."""
    table = comparison_table(comparison)
    crowded = len(table) > 5  # fine-tuned or retrained rows: slanted one-line labels, or they run into each other
    fig = go.Figure()
    for _, row in table.iterrows():
        fig.add_trace(go.Bar(
            x=[row[METHOD] if crowded else tick_label(row[METHOD])], y=[row[TEST_ACC]], name=row[METHOD],
            marker_color=method_colour(row[METHOD]),
            text=[f"{row[TEST_ACC]:.2f}"], textposition="outside", cliponaxis=False, showlegend=False,
            customdata=[[row[TEST_LOSS], row[TRAIN_ACC]]],
            hovertemplate=f"<b>{row[METHOD]}</b><br>test accuracy %{{y:.2f}} %"
                          "<br>test loss %{customdata[0]:.4f}"
                          "<br>train accuracy %{customdata[1]:.2f} %<extra></extra>"))
    bottom, top = accuracy_range(table[TEST_ACC].tolist())
    style(fig, title, "method", "Test accuracy (%)", height)
    fig.update_layout(margin=dict(l=55, r=10))
    fig.update_yaxes(range=[bottom, top])
    fig.update_xaxes(tickangle=-40 if crowded else 0, tickfont=dict(size=10))
    if bottom > 0:
        fig.add_annotation(text=f"axis starts at {bottom:g} %", xref="paper", yref="paper", x=1.0, y=1.0,
                           xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=11, color="#808495"))
    return fig
