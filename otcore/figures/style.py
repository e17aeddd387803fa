"""The house style of every figure and table: template, font, one colour per method, column names and decimals.

Used by the dashboard pages, the HTML report and the CLI alike, so one template, one colour per
method and one set of axis titles hold everywhere.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

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
    "weight matching": "#8C6D31",  # the other alignments' fused networks, as the frontier draws them too
    "CCA Merge": "#17BECF",
    "ZipIt!": "#2CA02C",
    "PLeaS": "#9467BD",
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


def percent(column: str) -> str:
    """The display name of a fraction's column shown in percent: 'sparsity' -> 'sparsity (%)'."""
    return f"{column} (%)"


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
