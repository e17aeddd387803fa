"""Figures of one experiment's fused net before and after retraining, beside its parents.

The spectral densities on one chart and the perturbation curves on another: does retraining
the fused net bring its curvature back to the parents'? Built from otcore.figures' own charts.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from otcore.figures.curvature import spectral_density_chart
from otcore.figures.landscape import perturbation_chart
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
