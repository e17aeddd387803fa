"""Transport plans and their diagnostics: a plan as a heatmap, per-layer closeness to a permutation, the table."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from otcore.figures.style import HEATMAP_SCALE, method_colour, style

if TYPE_CHECKING:  # the figures load without torch: a cached `table` command never imports it
    import torch


def diagnostics_table(diagnostics: Iterable[dict]) -> pd.DataFrame:
    """Per (parent, layer) plan diagnostics, rounded for display."""
    rows = [{"parent": d["parent"], "layer": d["group"],
             "neurons (parent → anchor)": f"{d['n_parent']} → {d['n_anchor']}",
             "mean cost": round(d["cost_mean"], 4), "min cost": round(d["cost_min"], 4),
             "max cost": round(d["cost_max"], 4), "transport cost": round(d["transport_cost"], 4),
             "permutation closeness": round(d["permutation_closeness"], 4),
             "time (ms)": round(1000 * d["seconds"], 1)} for d in diagnostics]
    return pd.DataFrame(rows)


def plan_array(plan: torch.Tensor | np.ndarray) -> np.ndarray:
    """A transport plan (n_parent, n_anchor) as a float64 numpy array on the CPU."""
    if not isinstance(plan, np.ndarray) and hasattr(plan, "detach"):  # a torch tensor
        return plan.detach().cpu().double().numpy()
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
    # CCA/ZipIt! maps have negative entries: a diverging scale centred on 0 shows them, not a floor at 0.
    signed = dict(colorscale="RdBu", zmid=0.0) if (z < 0).any() else dict(colorscale=HEATMAP_SCALE, zmin=0.0)
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(z.shape[1]), y=np.arange(z.shape[0]), **signed,
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
