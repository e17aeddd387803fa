"""The loss landscape: loss along the top eigenvector and a random direction, along paths, on a plane."""
from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from otcore.figures.style import method_colour, style


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
    curvatures: otcore.analysis.Curvature, whose curves are otcore.curves.PerturbationCurve.
    """
    fig = go.Figure()
    for c in curvatures:
        colour = method_colour(c.name)
        for curve, dash, what in ((c.perturbation, "solid", "top eigenvector"),
                                  (c.random_direction, "dash", "random direction")):
            if curve.loss_std:
                _band(fig, curve.lambdas, curve.loss, curve.loss_std, colour, c.name)
            fig.add_trace(go.Scatter(
                x=curve.lambdas, y=curve.loss, name=c.name, legendgroup=c.name, mode="lines",
                showlegend=dash == "solid", line=dict(color=colour, width=2, dash=dash),
                customdata=100 * np.asarray(curve.accuracy or [np.nan] * len(curve.loss)),  # fractions
                hovertemplate=f"<b>{c.name}</b> · {what}<br>λ %{{x:.3f}}<br>loss %{{y:.4f}}"
                              "<br>accuracy %{customdata:.2f} %<extra></extra>"))
    style(fig, title, "step λ along the unit direction", "loss (cross-entropy)", height)
    fig.add_annotation(text="solid: top eigenvector · dashed: random direction", xref="paper", yref="paper",
                       x=1.0, y=1.0, xanchor="right", yanchor="top", showarrow=False,
                       font=dict(size=11, color="#808495"))
    return fig


def interpolation_chart(paths: Sequence[Any], title: str | None = None, height: int = 360) -> go.Figure:
    """Loss along straight paths between networks (A→B, A→C→B, A→aligned B), position in [0, 1]; models marked.

    paths: otcore.curves.InterpolationPath.
    """
    colours = {"naive": "#262730", "ot-weights": "#1f77b4", "ot-activations": "#17becf",
               "weight-matching": "#d62728"}  # one colour per alignment of B; REPAIR dotted
    fig = go.Figure()
    for i, path in enumerate(paths):
        names, x = path.networks, np.asarray(path.alphas, dtype=float)
        segments = len(names) - 1
        label = path.label
        if segments > 1:
            colour, dash = method_colour(names[1]), "dash"
        else:
            colour, dash = colours.get(path.alignment, "#262730"), "dot" if path.repair else "solid"
        if path.loss_std:
            _band(fig, x, path.loss, path.loss_std, colour, label)
        accuracy = 100 * np.asarray(path.accuracy or [np.nan] * len(path.loss))  # fractions in otcore.landscape
        fig.add_trace(go.Scatter(
            x=x, y=path.loss, name=f"{label} (barrier {path.barrier:.4f})", legendgroup=label,
            mode="lines", line=dict(color=colour, width=2, dash=dash),
            customdata=accuracy, hovertemplate=f"<b>{label}</b><br>position %{{x:.2f}}<br>loss %{{y:.4f}}"
                                               "<br>accuracy %{customdata:.2f} %<extra></extra>"))
        ends = [int(np.argmin(np.abs(x - k / segments))) for k in range(segments + 1)]
        fig.add_trace(go.Scatter(
            x=x[ends], y=np.asarray(path.loss)[ends], mode="markers+text", legendgroup=label,
            text=names if i == 0 else [""] + names[1:-1] + [""],  # the ends are labelled once
            textposition=["top right"] + ["top center"] * (segments - 1) + ["top left"], showlegend=False,
            hoverinfo="skip", textfont=dict(size=11),
            marker=dict(size=9, color=[method_colour(n) for n in names], line=dict(width=1, color="white"))))
    style(fig, title, "position along the path (0 = A, 1 = B)", "loss (cross-entropy)", height)
    fig.update_xaxes(range=[-0.05, 1.05])
    return fig


def surface_contour(surface: Any, title: str | None = None, height: int = 420) -> go.Figure:
    """Loss on the plane θ + α·d1 + β·d2 (an otcore.curves.LossSurface) as filled contours; the network at (0, 0)."""
    hessian = surface.directions == "hessian"
    loss = np.asarray(surface.loss, dtype=float).T  # stored [alpha][beta]; plotly's z is [y][x]
    accuracy = 100 * np.asarray(surface.accuracy, dtype=float).T  # a fraction in otcore.landscape
    fig = go.Figure(go.Contour(
        x=surface.alphas, y=surface.betas, z=loss, colorscale="Viridis", ncontours=24, customdata=accuracy,
        colorbar=dict(title=dict(text="loss", side="right"), thickness=12),
        hovertemplate="α %{x:.3f}<br>β %{y:.3f}<br>loss %{z:.4f}<br>accuracy %{customdata:.2f} %<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0], y=[0], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(symbol="star", size=13, color="white", line=dict(width=1, color="#262730"))))
    d1, d2 = ("top eigenvector", "second eigenvector") if hessian else ("random direction 1", "random direction 2")
    style(fig, title, f"α along the {d1}", f"β along the {d2}", height)
    fig.update_yaxes(scaleanchor="x", scaleratio=1, showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False, constrain="domain")
    return fig
