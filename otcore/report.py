"""Self-contained HTML reports: settings, tables and interactive Plotly charts in one file.

plotly.js is embedded once in the document's head, so a report opens offline and its charts
stay interactive. The Fusion page's download and `python -m otcore report` write the same
report through `fusion_report`. No Streamlit in this module.
"""
from __future__ import annotations

import dataclasses
import html
import math
import numbers
import time
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from otcore import figures
from otcore.figures.frontier import INFERENCE_PER_1000

_CSS = """
body { font-family: Inter, 'Source Sans Pro', Helvetica, Arial, sans-serif; color: #262730; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2rem; }
.meta { color: #6b6f80; font-size: .9rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
th, td { border-bottom: 1px solid #e6e9ef; padding: .3rem .75rem; text-align: left; white-space: nowrap; }
.table { overflow-x: auto; }
th { background: #f5f6fa; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.settings td:first-child { color: #6b6f80; } table.settings td { white-space: normal; }
.figure { margin: .5rem 0 1.5rem; }
"""


def write_report(title: str, settings: Mapping[str, Any], tables: Mapping[str, pd.DataFrame],
                 figures_: Mapping[str, go.Figure]) -> str:
    """A complete HTML document (str): title, a settings table, each table, each figure (interactive)."""
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class='meta'>Written {_esc(time.strftime('%Y-%m-%d %H:%M'))} by OT Fusion Studio</p>"]
    if settings:
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_plain(v))}</td></tr>" for k, v in settings.items())
        parts.append(f"<h2>Settings</h2><table class='settings'>{rows}</table>")
    for name, table in tables.items():
        parts.append(f"<h2>{_esc(name)}</h2>{frame_html(table)}")
    for name, fig in figures_.items():
        div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
        parts.append(f"<h2>{_esc(name)}</h2><div class='figure'>{div}</div>")
    # The full plotly.js bundle, once, before any figure's script runs.
    script = f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>" if figures_ else ""
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style>{script}</head><body>{''.join(parts)}</body></html>\n")


def frame_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table; each float column printed with the decimals it was rounded to."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    formats = {c: _decimals(frame[c], str(c)) for c in frame.columns}
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            value, places = row[c], formats[c]
            if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and not pd.isna(value):
                text = f"{value:,.{places}f}" if places is not None else f"{value:,}"
                cells.append(f"<td class='num'>{_esc(text)}</td>")
            else:
                missing = value is None or (isinstance(value, float) and pd.isna(value))
                cells.append(f"<td>{_esc('' if missing else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _decimals(column: pd.Series, name: str) -> int | None:
    """Decimals of a float column: the house rule for its name, else what its values need (at most 6)."""
    if not pd.api.types.is_float_dtype(column):
        return None
    if figures.column_decimals(name) is not None:
        return figures.column_decimals(name)
    places = 0
    for value in column.dropna():
        for d in range(7):
            if math.isclose(value, round(value, d), rel_tol=0, abs_tol=1e-9):
                break
        places = max(places, d)
    return places


def _plain(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return ", ".join(f"{k}=({_plain(v)})" if isinstance(v, dict) else f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------- the fusion report


def fusion_settings(data: Any, model: Any, parents: Sequence[Any], spec: Any, device: str,
                    comparison: Any) -> dict[str, Any]:
    """The settings block of a fusion report: data, model, parents, every fusion option, timings."""
    settings: dict[str, Any] = {"dataset": data.name, "architecture": model.arch,
                                "device": comparison.extra.get("device", device),
                                "parents": "; ".join(f"{p.name} ({p.source}, key {p.key})" for p in parents)}
    for f in dataclasses.fields(spec):
        settings[f"fusion · {f.name}"] = getattr(spec, f.name)
    for step, seconds in comparison.seconds.items():
        settings[f"time · {step} (s)"] = round(float(seconds), 3)
    settings["result key"] = comparison.key
    settings["from the disk cache"] = "yes" if comparison.cached else "no"
    return settings


def fusion_figures(comparison: Any, max_plans: int = 6) -> dict[str, go.Figure]:
    """The report's charts: accuracy per method, permutation closeness, and the first plans."""
    out = {"Test accuracy per method": figures.comparison_bar(comparison)}
    if comparison.diagnostics:
        out["Permutation closeness per layer"] = figures.diagnostics_chart(comparison.diagnostics)
    out.update(retraining_figures(comparison))
    for name in list(comparison.plans)[:max_plans]:
        out[f"Transport plan · {name}"] = figures.plan_heatmap(comparison.plans[name], order_by_match=True)
    return out


def retraining_figures(comparison: Any) -> dict[str, go.Figure]:
    """The validation curve of every retraining (keep-best), when the comparison retrained anything."""
    if not comparison.extra.get("retraining"):
        return {}
    return {"Retraining: validation accuracy at each evaluation (ring: the state kept)":
            figures.validation_chart(comparison)}


def retraining_tables(comparison: Any) -> dict[str, pd.DataFrame]:
    """The validation curves as a table, when the comparison retrained anything."""
    frame = figures.validation_frame(comparison)
    return {"Retraining: validation curve (the state kept is the best, never worse than the start)": frame} \
        if len(frame) else {}


def fusion_report(comparison: Any, data: Any, model: Any, parents: Sequence[Any], spec: Any, device: str,
                  title: str | None = None, frontier: Sequence[Any] = ()) -> str:
    """The HTML report of one fusion comparison, as the Fusion page and `otcore report` write it.

    frontier: otcore.frontier points (every fusion computed for these parents), drawn and tabled when given."""
    tables = {"Comparison": figures.comparison_table(comparison)}
    if comparison.diagnostics:
        tables["Per-layer diagnostics"] = figures.diagnostics_table(comparison.diagnostics)
    tables.update(retraining_tables(comparison))
    charts = fusion_figures(comparison)
    settings = fusion_settings(data, model, parents, spec, device, comparison)
    if frontier:
        tables.update(frontier_tables(frontier))
        charts = {**frontier_figures(frontier), **charts}
        settings["frontier · ensemble"] = FRONTIER_NOTE
    return write_report(title or f"OT fusion report: {data.name} / {model.arch}", settings, tables, charts)


FRONTIER_TITLE = "Accuracy against size: every fusion computed for these parents"
FRONTIER_NOTE = (f"the {figures.ENSEMBLE_LABEL} averages the parents' softmax outputs; a fused network at full width "
                 "computes the mean of their logits (on personalized splits the two differ by 4-8 points)")


def frontier_figures(points: Sequence[Any]) -> dict[str, go.Figure]:
    """The frontier against parameters, and against inference time where the points were timed."""
    out = {f"{FRONTIER_TITLE} (parameters)": figures.frontier_chart(points, "parameters")}
    if figures.frontier_frame(points)[INFERENCE_PER_1000].notna().all():
        out[f"{FRONTIER_TITLE} (inference time)"] = figures.frontier_chart(points, "time")
    return out


def frontier_tables(points: Sequence[Any]) -> dict[str, pd.DataFrame]:
    """The frontier's points as a table."""
    return {FRONTIER_TITLE: figures.frontier_frame(points)}


# ---------------------------------------------------------------------------- pruning, Hessian and landscape reports


def _study_settings(data: Any, model: Any, parents: Sequence[Any], device: str) -> dict[str, Any]:
    return {"dataset": data.name, "architecture": model.arch, "device": device,
            "parents": "; ".join(f"{p.name} ({p.source}, key {p.key})" for p in parents)}


def _spec_settings(prefix: str, spec: Any) -> dict[str, Any]:
    return {f"{prefix} · {f.name}": getattr(spec, f.name) for f in dataclasses.fields(spec)}


def pruning_report(comparison: Any, points: Sequence[Any], data: Any, model: Any, parents: Sequence[Any],
                   prune: Any, fusion: Any, device: str) -> str:
    """The HTML report of one prune setting (every method, sparsity) and, if run, its sweep over fractions."""
    settings = {**_study_settings(data, model, parents, comparison.extra.get("device", device)),
                **_spec_settings("prune", prune), **_spec_settings("fusion", fusion)}
    settings.update({f"time · {step} (s)": round(float(s), 3) for step, s in comparison.seconds.items()})
    settings["result key"] = comparison.key
    tables = {"Comparison": figures.prune_table(comparison), **retraining_tables(comparison)}
    charts = {"Test accuracy per method": figures.comparison_bar(comparison), **retraining_figures(comparison)}
    if points:
        tables["Sweep over prune fractions"] = figures.fraction_table(points)
        charts["Test accuracy against prune fraction"] = figures.prune_sweep_chart(points, prune.fraction)
        charts["Sparsity against prune fraction"] = figures.sparsity_chart(points)
    return write_report(f"Pruning report: {data.name} / {model.arch}, {100 * prune.fraction:.0f} % {prune.type}",
                        settings, tables, charts)


def hessian_report(curvatures: Sequence[Any], records: Sequence[dict], data: Any, model: Any, study: str,
                   spec: Any, device: str, measure: str = "top eigenvalue", retraining: Sequence[Any] = ()) -> str:
    """The HTML report of the Hessian page: curvature table, spectral densities, sharpness against accuracy.

    retraining: the curvatures of the fused net before and after retraining and of the parents, overlaid."""
    settings = {"dataset": data.name, "architecture": model.arch, "device": device, "networks of": study,
                **_spec_settings("hessian", spec)}
    tables = {"Curvature": figures.curvature_table(curvatures)}
    if records:
        tables["Every network analysed in the session"] = figures.sharpness_table(records)
    charts = {"Eigenvalue spectral density": figures.spectral_density_chart(curvatures),
              f"Sharpness ({measure}) against test accuracy and generalisation gap":
                  figures.sharpness_scatter(records, measure)}
    if retraining:
        from otcore.figures import retraining_charts

        charts.update(retraining_charts(retraining))
    return write_report(f"Hessian report: {data.name} / {model.arch} ({study})", settings, tables, charts)


def landscape_report(curvatures: Sequence[Any], paths: Sequence[Any], surface: Any | None, surface_of: str,
                     data: Any, model: Any, study: str, spec: Any, device: str, retraining: Sequence[Any] = ()) -> str:
    """The HTML report of the Landscape page: perturbation curves, interpolation barriers, the 2D surface.

    paths: otcore.curves.InterpolationPath (naive and aligned); retraining: as in hessian_report."""
    settings = {"dataset": data.name, "architecture": model.arch, "device": device, "networks of": study,
                **_spec_settings("hessian", spec)}
    barriers = pd.DataFrame([{"path": p.label, "B aligned by": p.alignment, "REPAIR": p.repair,
                              "barrier (loss)": round(p.barrier, 4), "midpoint loss": round(p.midpoint_loss, 4)}
                             for p in paths])
    charts = {"Loss along the top eigenvector (solid) and a random direction (dashed)":
              figures.perturbation_chart(curvatures)}
    if paths:
        charts["Loss along straight paths between networks"] = figures.interpolation_chart(paths)
    if surface is not None:
        charts[f"Loss surface around {surface_of}"] = figures.surface_contour(surface)
    if retraining:
        from otcore.figures import retraining_charts

        charts.update(retraining_charts(retraining))
    return write_report(f"Landscape report: {data.name} / {model.arch} ({study})", settings,
                        {"Barriers": barriers} if paths else {}, charts)


# ---------------------------------------------------------------------------- the sweep (study) report


def sweep_report(result: Any, config: Mapping[str, Any], curvature_metrics: Sequence[str] = ("trace", "λ1")) -> str:
    """The HTML report of a sweep: the study's tables (a metric per experiment and network) and its charts.

    result: otcore.sweep.SweepResult; config: its record's config (the base specs), shown as settings.
    """
    settings = {"sweep": result.key, "status": result.status, "executor": result.executor,
                "points": f"{len(result.points)} of {result.total} ({len(result.failed)} failed)",
                "swept fields": ", ".join(result.fields) or "none",
                **{k: _without_types(v) for k, v in config.items() if k != "_type"}}
    tables = {}
    for metric in (*figures.STUDY_METRICS, *curvature_metrics):
        table = figures.study_table(result.points, metric)
        if not table.empty:
            decimals = figures.STUDY_DECIMALS.get(metric, 3)  # as the LaTeX and CSV tables print them
            title = metric[:1].upper() + metric[1:] if metric.isascii() else metric  # 'Trace', but 'λ1'
            tables[f"{title} per experiment and network"] = table.round(decimals).reset_index()
    charts = {}
    if result.fields and result.points:
        rows = figures.sweep_table(result.points, result.fields)
        x = "prune.fraction" if "prune.fraction" in result.fields else result.fields[0]
        for metric in [figures.TEST_ACC, *(m for m in curvature_metrics if m in figures.sweep_metrics(rows))]:
            charts[f"{metric} against {x}"] = figures.sweep_figure(rows, metric, x, side_by_side=metric != figures.TEST_ACC)
    if "fusion.width" in result.fields and result.points:
        charts[FRONTIER_TITLE.replace("computed for these parents", "of the sweep")] = figures.frontier_chart(
            figures.sweep_frontier_rows(result.points), "parameters")
    return write_report(f"Sweep report: {len(result.points)} points over {', '.join(result.fields) or 'no grid'}",
                        settings, tables, charts)


def _without_types(value: Any) -> Any:
    """A record's spec dict without its '_type' tags (the settings table names the spec already)."""
    return {k: _without_types(v) for k, v in value.items() if k != "_type"} if isinstance(value, dict) else value
