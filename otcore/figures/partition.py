"""Figures of parents trained on different parts of the data: what each saw, and which skills fusion kept.

A class histogram per parent (what the partition gave it), a methods x classes heatmap of test
accuracy, and a table of each method's accuracy on each parent's own classes: together they
show whether a fused network kept skills that only one parent had.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from otcore.config import TrainSpec
from otcore.figures.style import METHOD, method_colour, style
from otcore.partition import own_classes


def class_histogram(parents: Sequence[Any], height: int = 320) -> go.Figure:
    """Training examples per class, one bar series per parent (from each parent's `class_counts`)."""
    fig = go.Figure()
    for p in parents:
        counts = p.metrics.get("class_counts")
        if counts is None:
            continue  # a parent loaded from a checkpoint: what it was trained on is unknown
        fig.add_bar(x=list(range(len(counts))), y=counts, name=p.name, marker_color=method_colour(p.name),
                    hovertemplate=f"{p.name}<br>class %{{x}}: %{{y}} examples<extra></extra>")
    style(fig, None, "class", "training examples", height)
    fig.update_layout(barmode="group")
    fig.update_xaxes(dtick=1)
    return fig


def per_class_frame(comparison: Any) -> pd.DataFrame:
    """Test accuracy (%, 2 decimals) of every method on every class: rows methods, columns classes."""
    rows = {r.method: r.test.per_class for r in comparison.rows if r.test.per_class is not None}
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(float).round(2)
    frame.columns = [str(c) for c in frame.columns]
    frame.index.name = METHOD
    return frame


def per_class_heatmap(comparison: Any, height: int = 360) -> go.Figure:
    """Heatmap of per-class test accuracy: rows methods (in table order), columns classes."""
    frame = per_class_frame(comparison)
    fig = go.Figure(go.Heatmap(
        z=frame.to_numpy(), x=list(frame.columns), y=list(frame.index), colorscale="Blues", zmin=0.0, zmax=100.0,
        text=frame.to_numpy(), texttemplate="%{text:.0f}", textfont=dict(size=11),
        colorbar=dict(title=dict(text="test accuracy (%)", side="right"), thickness=12),
        hovertemplate="%{y}<br>class %{x}: %{z:.2f} %<extra></extra>"))
    style(fig, None, "class", "method", height)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False, type="category")
    return fig


def own_classes_table(comparison: Any, spec: TrainSpec) -> pd.DataFrame:
    """Each method's mean per-class test accuracy (%) on each parent's own classes, and on those one never saw.

    The parents were trained with spec's partition. Class groups that repeat (under 'labels' the
    classes parent 1 never saw are parent 2's) appear once; for iid parents there are none.
    """
    frame = per_class_frame(comparison)
    every = {int(c) for c in frame.columns}
    own = [set(classes) & every for classes in own_classes(spec, len(every))]
    groups: dict[frozenset[int], str] = {}
    for i, classes in enumerate(own):
        if classes != every:
            groups.setdefault(frozenset(classes), f"parent {i + 1}'s classes (%)")
    for i, classes in enumerate(own):
        if classes != every:
            groups.setdefault(frozenset(every - classes), f"classes parent {i + 1} never saw (%)")
    table = pd.DataFrame(index=frame.index)
    for classes, label in groups.items():
        table[label] = frame[[str(c) for c in sorted(classes)]].mean(axis=1).round(2)
    return table.reset_index()
