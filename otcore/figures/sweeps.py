"""Pruning and sweeps: the prune table, accuracy and sparsity against the prune fraction, a sweep's table and chart."""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from otcore.figures.comparison import comparison_table
from otcore.figures.style import (
    INFERENCE_MS,
    METHOD,
    PARAMETERS,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    method_colour,
    percent,
    style,
)
from otcore.methods import is_parent
from otcore.sweep import PointResult, cell, value_text

# The one sparsity column: the share of zero weights over the pruned layers, a fraction in [0, 1]; display
# tables show it as percent(SPARSITY), 'sparsity (%)'.
SPARSITY = "sparsity"
FRACTION = percent("prune fraction")


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
    table.insert(3, percent(SPARSITY),
                 [round(100 * sparsity[m], 2) if m in sparsity else float("nan") for m in table[METHOD]])
    return table.drop(columns=[PARAMETERS, INFERENCE_MS])


def _by_fraction(points: Sequence[Any]) -> list[Any]:
    return sorted(points, key=lambda p: p.extra["fraction"])


def fraction_table(points: Sequence[Any]) -> pd.DataFrame:
    """The Pruning page's display table: one row per (prune fraction, method), prune_table's columns, in percent."""
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
    table = fraction_table(points)
    fig = go.Figure()
    for method in dict.fromkeys(table[METHOD]):
        rows = table[table[METHOD] == method]
        sparsity = [f"{s:.2f} %" if pd.notna(s) else "n/a" for s in rows[percent(SPARSITY)]]
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
    table = fraction_table(points).dropna(subset=[percent(SPARSITY)])
    fig = go.Figure()
    for method in dict.fromkeys(table[METHOD]):
        rows = table[table[METHOD] == method]
        fig.add_trace(go.Scatter(
            x=rows[FRACTION].tolist(), y=rows[percent(SPARSITY)].tolist(), name=method, mode="lines+markers",
            showlegend=False,
            line=dict(color=method_colour(method), width=2), marker=dict(size=6),
            hovertemplate=f"<b>{method}</b><br>prune fraction %{{x:.0f}} %<br>sparsity %{{y:.2f}} %<extra></extra>"))
    style(fig, title, "prune fraction (%)", "Sparsity (% zero weights)", height)
    fig.update_xaxes(range=[-3, 100], ticksuffix=" %")
    fig.update_yaxes(range=[-3, 100], ticksuffix=" %")
    return fig


# ---------------------------------------------------------------------------- sweeps (otcore.sweep)

SEEDS = "seeds"
METRICS = (TEST_ACC, TEST_LOSS, TRAIN_ACC, SPARSITY, PARAMETERS, INFERENCE_MS)
HESSIAN_TRACE = "trace"  # and 'λ1', 'λ2', ...: columns of a sweep that analysed its networks (NaN elsewhere)


def sweep_table(points: Sequence[PointResult], swept: Sequence[str]) -> pd.DataFrame:
    """Long format, one row per point and method, the columns the Sweeps page and sweep_figure read."""
    rows = []
    for p in points:
        sparsity = p.comparison.extra.get("sparsity", {})
        for r in p.comparison.rows:
            rows.append({**{name: cell(p.values.get(name)) for name in swept}, SEEDS: value_text(tuple(p.seeds)),
                         METHOD: r.method, TEST_ACC: r.test.accuracy, TEST_LOSS: r.test.loss,
                         TRAIN_ACC: r.train.accuracy, SPARSITY: sparsity.get(r.method, math.nan),
                         PARAMETERS: r.parameters, INFERENCE_MS: r.inference_ms, "key": p.key,
                         **_curvature_cells(p.curvature.get(r.method))})
    top_k = max((len(c["top_eigenvalues"]) for p in points for c in p.curvature.values()), default=0)
    curvature = [HESSIAN_TRACE, *(f"λ{i + 1}" for i in range(top_k))] if top_k else []
    return pd.DataFrame(rows, columns=[*swept, *([SEEDS] if SEEDS not in swept else []), METHOD, *METRICS,
                                       *curvature, "key"])


def _curvature_cells(curvature: dict | None) -> dict[str, float]:
    if curvature is None:
        return {}
    return {HESSIAN_TRACE: curvature["trace"], **{f"λ{i + 1}": v for i, v in enumerate(curvature["top_eigenvalues"])}}


def sweep_metrics(table: pd.DataFrame) -> list[str]:
    """The metrics a sweep's table can plot: the scores, and the curvature columns when it analysed networks."""
    return [c for c in table.columns[list(table.columns).index(METHOD) + 1:] if c != "key"]


def retrained(method: str) -> bool:
    """Whether a method is a network trained again after fusion or pruning (drawn apart from the initial ones)."""
    return "retrained" in method or "fine-tuned" in method


_X_TITLES = {"prune.fraction": "prune fraction (share of weights removed)",
             "prune.retrain_epochs": "retraining of the fused net (epochs)",
             "prune.retrain_parents_epochs": "retraining of the pruned parents (epochs)",
             "train.epochs": "training of the parents (epochs)", "train.lr": "learning rate",
             "fusion.finetune_epochs": "fine-tuning of the fused net (epochs)",
             "fusion.act_samples": "activation samples (inputs)", "fusion.reg": "Sinkhorn regularisation",
             "seed": "parent seed set (offset)", "arch": "architecture", "dataset": "dataset",
             "prune.type": "pruning type", "prune.order": "order of pruning and fusion",
             "prune.retrain.lr": "retraining learning rate", "fusion.mode": "alignment by", "fusion.alignment": "alignment",
             "fusion.width": "fused width (a multiple of the anchor's)"}
_Y_TITLES = {TEST_ACC: "test accuracy (%)", TRAIN_ACC: "train accuracy (%)", TEST_LOSS: "test loss (nats)",
             SPARSITY: "sparsity (share of zero weights)", PARAMETERS: "parameters (count)",
             INFERENCE_MS: "inference on the test split (ms)", HESSIAN_TRACE: "Hessian trace",
             "λ1": "top Hessian eigenvalue λ1"}
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _fields_that_matter(group: pd.DataFrame, metric: str, fields: Sequence[str], swept: Sequence[str]) -> list[str]:
    """The fields among `fields` whose value changes the metric of these rows (one method's) with every other
    swept field held."""
    out = []
    for field in fields:
        held = [c for c in swept if c != field]
        if group.groupby(held, sort=False, dropna=False)[metric].nunique(dropna=False).gt(1).any():
            out.append(field)
    return out


def sweep_figure(table: pd.DataFrame, metric: str = TEST_ACC, x: str = "prune.fraction",
                 methods: Sequence[str] | None = None, title: str | None = None, height: int = 400,
                 side_by_side: bool = False) -> go.Figure:
    """A metric against a swept field: a line per method and per value of the other (varied) swept fields.

    `table` is `sweep_table` of a sweep's points. Repeats over parent seeds are averaged, their standard deviation
    drawn as error bars. Methods without the metric (networks not analysed, for a curvature column) are left out;
    `side_by_side` draws initial networks left and retrained ones right, on one y axis.
    """
    frame = table if methods is None else table[table[METHOD].isin(list(methods))]
    frame = frame[frame[metric].notna()]
    panels = side_by_side and frame[METHOD].map(retrained).nunique() == 2
    swept = frame.columns[:list(frame.columns).index(METHOD)]
    others = [c for c in swept if c not in (x, "seed", SEEDS) and frame[c].nunique(dropna=False) > 1]
    if panels:
        from plotly.subplots import make_subplots

        # spacing wide enough that the panels' category ticks ('unstructured' | 'structured') do not touch
        fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.1,
                            subplot_titles=("initial networks", "retrained networks"))
    else:
        fig = go.Figure()
    styles = {combo: _DASHES[i % len(_DASHES)] for i, combo in
              enumerate(dict.fromkeys(map(tuple, frame[others].astype(str).values)))} if others else {(): "solid"}
    # A field that does not move a method's metric (a parent's score across alignments) gives it one line, not
    # the same line once per value: its first value's rows stand for all.
    matter = {method: _fields_that_matter(group, metric, others, list(swept))
              for method, group in frame.groupby(METHOD, sort=False)}
    first = {method: group[others].iloc[0].to_dict() for method, group in frame.groupby(METHOD, sort=False)}
    for (method, *rest), group in frame.groupby([METHOD, *others], sort=False, dropna=False):
        values = dict(zip(others, rest))
        if any(values[c] != first[method][c] for c in others if c not in matter[method]):
            continue  # the same line as the first value's
        shown = [c for c in others if c in matter[method]]
        stats = group.groupby(x, sort=True)[metric].agg(["mean", "std", "count"]).reset_index()
        name = " · ".join([method, *(f"{c}={values[c]}" for c in shown)])
        fig.add_trace(go.Scatter(
            x=stats[x], y=stats["mean"], name=name, mode="lines+markers",
            line=dict(color=method_colour(method), dash=styles[tuple(map(str, rest))] if shown else "solid"),
            error_y=dict(type="data", array=stats["std"].fillna(0), visible=bool((stats["count"] > 1).any())),
            hovertemplate=f"{name}<br>{x}=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>"),
            **({"row": 1, "col": 2 if retrained(method) else 1} if panels else {}))
    style(fig, title, _X_TITLES.get(x, x), _Y_TITLES.get(metric, metric), height)
    if panels:
        fig.update_yaxes(title_text=None, col=2)
        # the legend above the panels' titles (style puts it just over the plot, where those titles are)
        fig.update_layout(legend_y=1.1, margin_t=max(fig.layout.margin.t or 0, 70))
    return fig


# ---------------------------------------------------------------------------- the study's tables

# Metrics of a study table: a comparison's scores, or the Hessian analysis of the networks a sweep analysed
# ('λ1', 'λ2', ... are the top eigenvalues, largest first).
STUDY_METRICS = ("test accuracy", "test loss", "train accuracy", "generalisation gap", "trace")
STUDY_DECIMALS = {"test accuracy": 2, "train accuracy": 2, "generalisation gap": 2, "test loss": 4, "trace": 2}
TABLE_FORMATS = ("csv", "latex", "markdown")


def experiment_label(values: dict[str, Any]) -> str:
    """A point's row name in a study table: its swept values but the parents' seeds ('base settings' if none).

    Pruning reads as the study's tables name it ('structured 30 %'); other fields as 'field=value'.
    """
    shown = {k: v for k, v in values.items() if k not in ("seed", SEEDS)}
    kind, fraction = shown.pop("prune.type", None), shown.pop("prune.fraction", None)
    pruning = " ".join([*([str(kind)] if kind is not None else []),
                        *([f"{100 * float(fraction):g} %"] if fraction is not None else [])])
    parts = ([f"{pruning} pruned" if kind is None else pruning] if pruning else []) + \
        [f"{k}={cell(v)}" for k, v in shown.items()]
    return ", ".join(parts) or "base settings"


def _study_value(point: PointResult, row: Any, metric: str) -> float:
    eigen = metric[1:] if metric.startswith("λ") else None
    if metric in ("test accuracy", "test loss", "train accuracy", "generalisation gap"):
        return {"test accuracy": row.test.accuracy, "test loss": row.test.loss, "train accuracy": row.train.accuracy,
                "generalisation gap": row.train.accuracy - row.test.accuracy}[metric]
    curvature = point.curvature.get(row.method)
    if curvature is None:
        return math.nan
    if eigen is not None:
        values = curvature["top_eigenvalues"]
        return float(values[int(eigen) - 1]) if int(eigen) <= len(values) else math.nan
    return float(curvature["trace"])


def check_study_metric(metric: str) -> str:
    """The metric if a study table can show it ('trace', 'λ2' or 'lambda2', ...); else ValueError."""
    metric = f"λ{metric[6:]}" if metric.startswith("lambda") else metric
    if metric in STUDY_METRICS or (metric.startswith("λ") and metric[1:].isdigit() and int(metric[1:]) >= 1):
        return metric
    raise ValueError(f"unknown metric '{metric}'; choose one of {', '.join(STUDY_METRICS)}, λ1, λ2, ...")


def study_table(points: Sequence[PointResult], metric: str) -> pd.DataFrame:
    """One metric of a sweep: a row per experiment (repeats over parent seeds averaged), a column per network.

    Networks with no value anywhere (not analysed, for a curvature metric) are left out.
    """
    metric = check_study_metric(metric)
    cells: dict[str, dict[str, list[float]]] = {}
    for p in points:
        row_cells = cells.setdefault(experiment_label(p.values), {})
        for r in p.comparison.rows:
            row_cells.setdefault(r.method, []).append(_study_value(p, r, metric))
    methods = list(dict.fromkeys(m for row in cells.values() for m in row))
    frame = pd.DataFrame([[_mean(cells[e].get(m, [])) for m in methods] for e in cells], index=list(cells),
                         columns=methods, dtype=float)
    frame.index.name, frame.columns.name = "experiment", metric
    return frame.dropna(axis=1, how="all")


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def study_text(table: pd.DataFrame, form: str = "csv") -> str:
    """A study table as CSV, Markdown, or LaTeX with booktabs rules (\\toprule, \\midrule, \\bottomrule)."""
    decimals = STUDY_DECIMALS.get(str(table.columns.name), 3)
    if form == "csv":
        return table.to_csv()
    if form == "markdown":  # by hand: pandas' to_markdown needs the tabulate package
        head = [table.index.name or "", *map(str, table.columns)]
        rows = [[str(e), *("--" if math.isnan(v) else f"{v:.{decimals}f}" for v in values)]
                for e, values in zip(table.index, table.to_numpy())]
        lines = [head, ["---"] + ["---:"] * len(table.columns), *rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"
    if form == "latex":  # Styler.to_latex: hrules=True draws booktabs rules; names escaped for LaTeX
        styler = table.style.format(precision=decimals, na_rep="--", escape="latex")
        styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
        latex = styler.to_latex(hrules=True, column_format="l" + "r" * len(table.columns))
        return latex.replace("λ", "$\\lambda$")  # ASCII only: compiles with pdflatex's defaults, no inputenc
    raise ValueError(f"table format must be one of {', '.join(TABLE_FORMATS)}, got '{form}'")
