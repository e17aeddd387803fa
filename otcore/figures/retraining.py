"""Figures of one experiment's fused net before and after retraining, beside its parents.

The spectral densities on one chart and the perturbation curves on another: does retraining
the fused net bring its curvature back to the parents'? Built from otcore.figures' own charts.
And each retraining's validation curve (keep-best, otcore.train.retrain): which state was kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from otcore.figures.curvature import spectral_density_chart
from otcore.figures.landscape import perturbation_chart
from otcore.figures.style import METHOD, method_colour, style
from otcore.methods import Method, is_parent, label

OT_FINETUNED, OT_FUSION, OT_RETRAINED = label(Method.OT_FINETUNED), label(Method.OT_FUSION), label(Method.OT_RETRAINED)

RETRAINED = (OT_FINETUNED, OT_RETRAINED)  # the fused net after retraining: the Fusion page's, the Pruning page's


def retraining_networks(options: Sequence[str]) -> list[str]:
    """The parents, the fused net and its retrained versions among options, in that order ([] if none retrained)."""
    retrained = [o for o in options if o in RETRAINED]
    if not retrained or OT_FUSION not in options:
        return []
    return [o for o in options if is_parent(o)] + [OT_FUSION] + retrained


def retraining_charts(curvatures: Sequence[Any], height: int = 360) -> dict[str, go.Figure]:
    """{title: figure}: the spectral densities and the perturbation curves of the given networks, one chart each."""
    return {"Spectral density: the fused net before and after retraining, and the parents":
            spectral_density_chart(curvatures, height=height),
            "Loss along the top eigenvector (solid) and a random direction (dashed), before and after retraining":
            perturbation_chart(curvatures, height=height)}


def validation_frame(comparison: Any) -> pd.DataFrame:
    """One row per evaluation of each retrained network on its validation part (empty when nothing was retrained)."""
    labels = {r.id: r.method for r in comparison.rows}
    rows = [{METHOD: labels.get(method_id, method_id), "epoch": point["epoch"], "validation acc (%)": point["accuracy"],
             "validation loss": point["loss"], "kept": point["epoch"] == record["best_epoch"]}
            for method_id, record in comparison.extra.get("retraining", {}).items() for point in record["validation"]]
    return pd.DataFrame(rows, columns=[METHOD, "epoch", "validation acc (%)", "validation loss", "kept"])


def validation_chart(comparison: Any, height: int = 300) -> go.Figure:
    """Validation accuracy of each retrained network at each evaluation; a ring marks the state kept (the best)."""
    frame = validation_frame(comparison)
    fig = go.Figure()
    for method, curve in frame.groupby(METHOD, sort=False):
        colour = method_colour(method)
        fig.add_trace(go.Scatter(x=curve["epoch"].tolist(), y=curve["validation acc (%)"].tolist(),
                                 mode="lines+markers", name=method, line=dict(color=colour),
                                 customdata=[[loss] for loss in curve["validation loss"].tolist()],
                                 hovertemplate=f"<b>{method}</b><br>epoch %{{x:g}}<br>validation accuracy %{{y:.2f}} %"
                                               "<br>validation loss %{customdata[0]:.4f}<extra></extra>"))
        kept = curve[curve["kept"]]
        fig.add_trace(go.Scatter(x=kept["epoch"].tolist(), y=kept["validation acc (%)"].tolist(), mode="markers",
                                 showlegend=False,
                                 marker=dict(size=14, symbol="circle-open", color=colour, line=dict(width=2)),
                                 hovertemplate=f"<b>{method}</b>: kept (epoch %{{x:g}})<extra></extra>"))
    return style(fig, None, "Epochs of retraining (0: as it came in)", "Validation accuracy (%)", height)
