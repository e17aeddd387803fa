"""Landscape: the loss around each network (top eigenvector vs a random direction), between networks, on a plane."""
from __future__ import annotations

import streamlit as st

from otcore import figures, report
from otcore.aligned_paths import ALIGNMENTS, aligned_path
from otcore.config import SpecError
from otcore.methods import is_parent
from otcore.pipeline import OT_FUSION, VANILLA
from ui import errors, memo, page, runs, sidebar, state, widgets

REQUEST = "landscape.request"  # LandscapeRequest of the last press of Compute
DIRECTIONS = {"hessian": "top two Hessian eigenvectors", "random": "two random directions"}

page.page_setup("Landscape")
ws = sidebar.workspace()
page.header("Landscape",
            "The loss around each network along its top Hessian eigenvector and a random direction, along straight "
            "paths between networks, and on a plane.")
parent_set = sidebar.require_parents(ws, minimum=2)
state.init_state(widgets.HESSIAN_DEFAULTS | {"landscape.directions": "hessian", "landscape.span": 0.5,
                                             "landscape.grid": 21, "landscape.alignments": ["naive", "ot-weights"]})

row = st.columns([1.3, 2.9, 1.5, 0.7, 0.9], vertical_alignment="bottom")
try:
    study, comparison = runs.choose_study(ws, parent_set, row[0])
except Exception as err:  # noqa: BLE001 - shown, never raised into the page
    errors.show_error(err, "Could not get the networks")
    st.stop()
options = runs.single_networks(comparison)
state.keep_choice("landscape.methods", options, ["parent 1", VANILLA, OT_FUSION])
for key, default in (("landscape.a", "parent 1"), ("landscape.via", OT_FUSION), ("landscape.b", "parent 2"),
                     ("landscape.surface", OT_FUSION)):
    state.keep_choice(key, options, default)
methods = row[1].multiselect("Networks", options, key="landscape.methods", help="one curve pair per network")
row[2].slider("λ range", -2.0, 2.0, step=0.05, key="landscape.lambda", help="steps along each unit direction")
row[3].number_input("Points", 2, 201, step=2, key="landscape.points")
pressed = row[4].button("Compute", type="primary", key="landscape.compute", width="stretch")
with st.expander("Paths and surface: the networks A, B and the one between; the plane's network, directions, span"):
    row = st.columns([1, 1, 1, 1.2, 1.6, 0.8, 0.8])
    a = row[0].selectbox("A", options, key="landscape.a")
    via = row[1].selectbox("Via", options, key="landscape.via", help="the second path goes A → this → B")
    b = row[2].selectbox("B", options, key="landscape.b")
    surface_of = row[3].selectbox("Surface of", options, key="landscape.surface")
    directions = row[4].selectbox("Plane", list(DIRECTIONS), format_func=DIRECTIONS.get, key="landscape.directions")
    span = row[5].number_input("Span ±", 0.05, 5.0, step=0.05, key="landscape.span")
    grid = row[6].number_input("Grid", 3, 61, step=2, key="landscape.grid", help="points per side of the plane")
with st.expander("Parent 1 → parent 2 after aligning parent 2 to the anchor (Git Re-Basin's plot); before and "
                 "after retraining"):
    row = st.columns([3, 1.2, 1.8], vertical_alignment="bottom")
    alignments = row[0].multiselect("Align B by", list(ALIGNMENTS), format_func=ALIGNMENTS.get,
                                    key="landscape.alignments", help="one path per choice; OT fusion with ensemble "
                                    "step 0.5 is the midpoint of the OT-aligned path")
    repair = row[1].toggle("REPAIR", key="landscape.repair", help="renormalise every point of the aligned paths "
                           "on the activation sample (Jordan et al., 2022)")
    retrained = row[2].toggle("Fused net before and after retraining", key="landscape.retrained",
                              help="the networks: the parents, the fused net and the fused net retrained")
widgets.hessian_settings()

if pressed:
    try:
        spec = widgets.hessian_spec()
        if retrained:
            methods = runs.retraining_study(options)
        if not methods:
            raise SpecError("pick at least one network")
        if a == b:
            raise SpecError("paths need two different networks A and B")
    except SpecError as err:
        errors.show_error(err, "Check the landscape settings")
        st.session_state.pop(REQUEST, None)
        st.stop()
    st.session_state[REQUEST] = state.LandscapeRequest(study, tuple(methods), spec, (a, via, b), surface_of, directions,
                                                       float(span), int(grid), parent_set.keys, tuple(alignments),
                                                       bool(repair), retrained)

request = state.current(REQUEST, parent_set)
if request is None:
    st.info("Pick the networks and press **Compute**: loss curves along directions and paths, and a 2D surface "
            "(Hessians come from the cache when the Hessian page computed them with the same settings).",
            icon=":material/landscape:")
    st.stop()
study, methods, spec, (a, via, b) = request.study, request.methods, request.spec, request.path
surface_of, directions, span, grid = request.surface_of, request.directions, request.span, request.grid
alignments, repair, retrained = request.alignments, request.repair, request.retrained
try:
    compared = runs.study_comparison(ws, parent_set, study)
    curvatures = runs.curvatures_of(ws, parent_set, study, [compared.row(m) for m in methods], spec)
    paths = [runs.interpolation_of(ws, parent_set, [compared.row(a), compared.row(b)], spec, 21)]
    if via not in (a, b):
        paths.append(runs.interpolation_of(ws, parent_set, [compared.row(n) for n in (a, via, b)], spec, 11))
    plane = runs.surface_of(ws, parent_set, compared.row(surface_of), spec, directions, span, grid)
    pair = [r for r in compared.rows if is_parent(r.id)]
    aligned = []
    if len(pair) == 2 and alignments:
        bar = memo.ProgressBar("Loss along parent 1 → parent 2 after aligning parent 2 (cached afterwards)")
        try:
            aligned = [aligned_path(parent_set.data, pair, study.fusion, spec, how, repair, 11, ws.device, None, bar)
                       for how in alignments]
        finally:
            bar.close()
except Exception as err:  # noqa: BLE001
    errors.show_error(err, "The landscape could not be computed")
    st.stop()

st.caption(f"Networks of the **{study.label}** comparison · loss on the {spec.split} split ({spec.batches} × "
           f"{spec.batch_size} examples; bands: ± spread over batches) · A = {a}, B = {b}")
left, right = st.columns(2)
left.plotly_chart(figures.perturbation_chart(curvatures, height=360), theme=None, key="landscape.chart.directions")
with right:
    for card, path in zip(st.columns(len(paths)), paths):
        label = "Barrier A → B" if len(path.networks) == 2 else f"Barrier A → {via} → B"
        card.metric(label, f"{path.barrier:.4f}", border=True,
                    help=f"{path.label}: the largest excess of the loss over the straight line between "
                         "the end losses (0: no bump). OT fusion keeps the anchor's neuron order, so its path to the "
                         "other parent crosses unaligned weights.")
    st.plotly_chart(figures.interpolation_chart(paths, height=265), theme=None, key="landscape.chart.paths")
if aligned:
    left, right = st.columns([1, 1.6])
    left.markdown("**Barrier along A → B, B aligned to A** (A: the anchor)")
    for card, path in zip(left.columns(2) * len(aligned), aligned):
        card.metric(ALIGNMENTS[path.alignment] + (" + REPAIR" if path.repair else ""),
                    f"{path.barrier:.4f}", border=True, help=f"{path.label}; midpoint loss {path.midpoint_loss:.4f}")
    # The title sits beside the chart, not in it: a legend of several paths would grow over it.
    right.plotly_chart(figures.interpolation_chart(aligned, height=300), theme=None, key="landscape.chart.aligned")
if retrained:
    st.plotly_chart(figures.spectral_density_chart(curvatures, "Spectral density before and after retraining", 320),
                    theme=None, key="landscape.chart.density")
left, right = st.columns([1.3, 1])
left.plotly_chart(figures.surface_contour(plane, f"Loss around {surface_of} ({DIRECTIONS[directions]})", 420),
                  theme=None, key="landscape.chart.surface")
with right:
    st.caption("The star is the network itself; the axes are steps along unit directions in weight space. Narrow "
               "contours along α mean a sharp top eigendirection; compare them with two random directions.")
    widgets.report_button(lambda: report.landscape_report(curvatures, paths + aligned, plane, surface_of,
                                                          parent_set.data, parent_set.model, study.label, spec,
                                                          state.device_label(ws.device),
                                                          curvatures if retrained else ()),
                            f"{parent_set.data.name}-{parent_set.model.arch}-landscape-report.html",
                            "landscape.download.report")
