"""The Fusion page's frontier: every fusion spec this session computed for a parent set, read back as points.

The session keeps the list of specs per parent set (specs only: each comparison is read again through
runs.fusion_run, memoised per server and cached on disk, so it returns at once). A comparison's points
are its rows (otcore.frontier), inference times included: nothing is timed again here.
"""
from __future__ import annotations

import dataclasses

import streamlit as st

from otcore import figures, pipeline
from otcore.config import FusionSpec
from otcore.frontier import FrontierPoint, frontier_points
from otcore.methods import ALIGNMENT_LABELS
from ui import errors, runs
from ui.state import ParentSet, Workspace

SPECS = "fusion.frontier.specs"  # parent keys -> [FusionSpec, ...] in the order computed this session


def remember(parent_set: ParentSet, spec: FusionSpec) -> None:
    """Add a computed spec to this session's frontier of these parents (once)."""
    specs = st.session_state.setdefault(SPECS, {}).setdefault(parent_set.keys, [])
    if spec not in specs:
        specs.append(spec)


def specs(parent_set: ParentSet) -> list[FusionSpec]:
    """The fusion specs this session computed for these parents, in order."""
    return list(st.session_state.get(SPECS, {}).get(parent_set.keys, []))


def finetune_epochs(page_epochs: int) -> int:
    """Epochs of the frontier's fine-tune click: the page's fine-tuning epochs when set, else 1."""
    return int(page_epochs) if page_epochs > 0 else 1


def finetuned(spec: FusionSpec, epochs: int) -> FusionSpec:
    """The same fusion fine-tuned for `epochs` with the spec's own retraining recipe."""
    return dataclasses.replace(spec, finetune_epochs=int(epochs))


def points(ws: Workspace, parent_set: ParentSet) -> list[FrontierPoint]:
    """Every point of this session's fusions of these parents: fused networks by spec, reference points once.

    A fine-tuning's comparison repeats its one-shot network: the same (label, parameters, accuracy) is
    shown once. Two settings with one label but other scores (e.g. REPAIR on and off) are numbered."""
    out: list[FrontierPoint] = []
    seen_references: set[str] = set()
    test_images = len(pipeline.dataset(parent_set.data).x_test)
    for spec in specs(parent_set):
        comparison = runs.fusion_run(ws, parent_set, spec)[0].comparison
        for point in frontier_points([comparison], test_images):
            if point.width is None:
                if point.method not in seen_references:
                    seen_references.add(point.method)
                    out.append(point)
                continue
            if point.kind != "fusion" and spec.finetune_epochs != 1:
                point = dataclasses.replace(point, label=f"{point.label} ({spec.finetune_epochs} epochs)")
            same = [p for p in out if p.label == point.label or p.label.startswith(point.label + " #")]
            if any((p.parameters, p.accuracy) == (point.parameters, point.accuracy) for p in same):
                continue
            if same:
                point = dataclasses.replace(point, label=f"{point.label} #{len(same) + 1}")
            out.append(point)
    return out


def _one_shot(parent_set: ParentSet) -> dict[str, FusionSpec]:
    """The fine-tune click's choices: each computed fusion as merged (label -> its one-shot spec)."""
    out: dict[str, FusionSpec] = {}
    for spec in specs(parent_set):
        base = dataclasses.replace(spec, finetune_epochs=0)
        if base in out.values():
            continue
        label = f"{ALIGNMENT_LABELS.get(spec.alignment, spec.alignment)} ×{spec.width:g}"
        taken = sum(1 for k in out if k == label or k.startswith(label + " #"))
        out[label if not taken else f"{label} #{taken + 1}"] = base
    return out


def draw_tab(ws: Workspace, parent_set: ParentSet, shown: list[FrontierPoint], page_epochs: int) -> None:
    """The Frontier tab: axis choice, the fine-tune click, the chart of `shown` (this session's points)."""
    epochs = finetune_epochs(page_epochs)
    choices = _one_shot(parent_set)
    chart_col, side = st.columns([5, 1.15], vertical_alignment="top")  # controls beside the chart, the button first
    picked = side.selectbox("Fine-tune a point", list(choices), key="fusion.frontier.pick",
                            help="a fusion computed in this session, as merged")
    where = "the page's fine-tuning epochs" if page_epochs > 0 else "1 epoch, as the page's fine-tuning is 0"
    if side.button(f"Fine-tune ({epochs} epoch{'s' if epochs != 1 else ''})", key="fusion.frontier.finetune",
                   disabled=picked is None, width="stretch",
                   help=f"the same fusion fine-tuned for {where}, with the retraining recipe it was fused "
                        "with; the fine-tuned network joins the chart"):
        spec = finetuned(choices[picked], epochs)
        try:
            with side:
                runs.fusion_run(ws, parent_set, spec)
        except Exception as err:  # noqa: BLE001 - shown beside the chart, never raised into the page
            with side:
                errors.show_error(err, "Fine-tuning failed")
        else:
            remember(parent_set, spec)
            st.rerun()  # drawn again with the new point
    against = side.radio("Against", ("parameters", "time"), key="fusion.frontier.against",
                         format_func={"parameters": "parameters", "time": "inference time"}.get,
                         help="parameters (count), or inference ms per 1000 test images")
    chart_col.plotly_chart(figures.frontier_chart(shown, against, height=290), theme=None, key="fusion.chart.frontier")
    chart_col.caption(f"{len(specs(parent_set))} settings fused for these parents in this session. The "
                      f"**{figures.ENSEMBLE_LABEL}** averages the parents' softmax outputs; a fused network at full "
                      "width computes the mean of their *logits*: on personalized splits the two differ by 4-8 "
                      "points. Inference: the comparison table's column, one warm prediction of the test split "
                      "when the network was made (a busy server slows it).")
