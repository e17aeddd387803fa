"""The accuracy-versus-size frontier: test accuracy against parameters (or inference time), one point per network.

Points are otcore.frontier's rows (FrontierPoint or its dict: label, method, width, parameters, accuracy,
seconds_per_1000, kind). Fused networks are drawn by alignment colour, a line through their widths (against parameters);
fine-tuned ones dashed with diamonds; the parents, the prediction ensemble and the vanilla average
as reference markers of their own. A sweep's points (no networks kept, so no timing) come through
sweep_frontier_rows.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from otcore.figures.style import PARAMETERS, TEST_ACC, accuracy_range, method_colour, style
from otcore.methods import ALIGNMENT_LABELS, Method, is_parent

# The studio's prediction ensemble averages the parents' probabilities; a fused network at full width
# computes the mean of their logits, which is another ensemble (4-8 points apart on personalized splits).
ENSEMBLE_LABEL = "prediction ensemble (mean probabilities)"
AXES = {"parameters": "Parameters (count)", "time": "Inference (ms per 1000 test images)"}
INFERENCE_PER_1000 = "inference per 1000 images (ms)"
_REFERENCE = {"parent": dict(symbol="circle", color="#808495"), "ensemble": dict(symbol="star", color="#B279A2"),
              "vanilla": dict(symbol="square", color="#F58518")}
_FUSED_IDS = {Method.OT_FUSION.value: "", Method.OT_FINETUNED.value: " fine-tuned", Method.OT_RETRAINED.value: " retrained"}
_REFERENCE_IDS = (Method.ENSEMBLE.value, Method.VANILLA.value, Method.VANILLA_RETRAINED.value)


def _as_dict(point: Any) -> dict:
    return dataclasses.asdict(point) if dataclasses.is_dataclass(point) else dict(point)


def point_label(point: dict) -> str:
    """What the chart and its table call a point: its own label, the ensemble's saying how it averages."""
    return ENSEMBLE_LABEL if point["kind"] == "ensemble" else point["label"]


def _x(point: dict, against: str) -> float | None:
    if against == "parameters":
        return point["parameters"]
    seconds = point.get("seconds_per_1000")
    return None if seconds is None else 1000 * seconds


def _hover(point: dict) -> list:
    width = "—" if point["width"] is None else f"×{point['width']:g}"
    seconds = point.get("seconds_per_1000")
    timing = "not measured" if seconds is None else f"{1000 * seconds:.1f} ms per 1000 images"
    return [point_label(point), width, f"{point['parameters']:,}", f"{point['accuracy']:.2f} %", timing]


_TEXT_AT = ("top center", "bottom center", "top left", "bottom right")  # where each line's width labels go
_HOVER = ("<b>%{customdata[0]}</b><br>width %{customdata[1]}<br>%{customdata[2]} parameters<br>"
          "test accuracy %{customdata[3]}<br>inference %{customdata[4]}<extra></extra>")


def frontier_chart(points: Sequence[Any], against: str = "parameters", title: str | None = None,
                   height: int = 380) -> go.Figure:
    """Test accuracy (%) against parameters (count) or inference time (ms per 1000 test images), a point each.

    Each point's x and y are its row's own numbers (parameters, accuracy); hover names it with its width."""
    if against not in AXES:
        raise ValueError(f"the frontier is drawn against one of {', '.join(AXES)}, got '{against}'")
    rows = [p for p in map(_as_dict, points) if _x(p, against) is not None]
    fig = go.Figure()
    fused: dict[tuple[str, str], list[dict]] = {}
    for p in rows:
        if p["kind"] in ("fusion", "fine-tuned fusion"):
            fused.setdefault((p["method"], p["kind"]), []).append(p)
    for index, ((method, kind), group) in enumerate(fused.items()):
        group = sorted(group, key=lambda p: (p["width"] or 0.0, p["parameters"]))
        tuned = kind != "fusion"
        name = ALIGNMENT_LABELS.get(method, method) + (" fine-tuned" if tuned else "")
        colour = method_colour(ALIGNMENT_LABELS.get(method, method))  # as on the comparison's bars
        fig.add_trace(go.Scatter(
            x=[_x(p, against) for p in group], y=[p["accuracy"] for p in group], name=name,
            mode=("lines+" if against == "parameters" else "") + "markers+text", text=[f"×{p['width']:g}" for p in group],
            textposition="middle right" if tuned else _TEXT_AT[index % len(_TEXT_AT)], textfont=dict(size=11, color=colour),
            line=dict(color=colour, width=1.5, dash="dash" if tuned else "solid"),
            marker=dict(size=10 if tuned else 9, symbol="diamond" if tuned else "circle", color=colour,
                        line=dict(color="white", width=1)),
            customdata=[_hover(p) for p in group], hovertemplate=_HOVER))
    for p in rows:
        if p["kind"] in _REFERENCE:
            look = dict(_REFERENCE[p["kind"]])
            if p["kind"] == "parent":  # each parent in its house colour, as on every other chart
                look["color"] = method_colour(p["label"])
            retrained = "retrained" in p["label"]
            fig.add_trace(go.Scatter(
                x=[_x(p, against)], y=[p["accuracy"]], name=point_label(p), mode="markers",
                marker=dict(size=12 if p["kind"] == "ensemble" else 10, symbol=look["symbol"] + ("-open" if retrained else ""),
                            color=look["color"], line=dict(color=look["color"], width=1.5)),
                customdata=[_hover(p)], hovertemplate=_HOVER))
    style(fig, title, AXES[against], "Test accuracy (%)", height)
    if rows:
        fig.update_yaxes(range=accuracy_range([p["accuracy"] for p in rows]))
    fig.update_xaxes(tickformat=",d" if against == "parameters" else ".1f", rangemode="tozero")
    # A vertical legend on the right: the reference names are long, and a legend above would take the plot's rows.
    fig.update_layout(legend=dict(font=dict(size=11), orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02),
                      margin=dict(t=40 if title else 10, r=10))
    return fig


def frontier_frame(points: Sequence[Any]) -> pd.DataFrame:
    """The frontier's points as a table: network, width, parameters, test accuracy (%), inference per 1000 images."""
    rows = []
    for p in map(_as_dict, points):
        seconds = p.get("seconds_per_1000")
        rows.append({"network": point_label(p), "width": p["width"], PARAMETERS: int(p["parameters"]),
                     TEST_ACC: round(p["accuracy"], 2),
                     INFERENCE_PER_1000: math.nan if seconds is None else round(1000 * seconds, 1)})
    return pd.DataFrame(rows, columns=["network", "width", PARAMETERS, TEST_ACC, INFERENCE_PER_1000])


def sweep_frontier_rows(points: Sequence[Any]) -> list[dict]:
    """The frontier of a sweep's points (otcore.sweep.PointResult): each (network, width) once, accuracy averaged.

    A sweep keeps scores, not networks: no inference time (seconds_per_1000 is None). Points of several
    parent seed sets are averaged into one (their parameter counts are the same)."""
    merged: dict[tuple, dict] = {}
    for point in points:
        alignment = point.comparison.extra.get("alignment", "ot")
        width = float(point.comparison.extra.get("width", point.values.get("fusion.width", 1.0)))
        for row in point.comparison.rows:
            if row.id in _FUSED_IDS:
                label = f"{ALIGNMENT_LABELS.get(alignment, alignment)} ×{width:g}{_FUSED_IDS[row.id]}"
                entry = dict(label=label, method=alignment, width=width,
                             kind="fusion" if row.id == Method.OT_FUSION.value else "fine-tuned fusion")
            elif is_parent(row.id) or row.id in _REFERENCE_IDS:
                kind = "parent" if is_parent(row.id) else "ensemble" if row.id == Method.ENSEMBLE.value else "vanilla"
                entry = dict(label=row.method, method=row.id, width=None, kind=kind)
            else:
                continue
            slot = merged.setdefault((entry["label"], entry["kind"]), {**entry, "parameters": row.parameters,
                                                                       "seconds_per_1000": None, "scores": []})
            slot["scores"].append(row.test.accuracy)
    return [{**{k: v for k, v in m.items() if k != "scores"}, "accuracy": sum(m["scores"]) / len(m["scores"])}
            for m in merged.values()]
