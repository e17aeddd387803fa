"""Hessian: how sharp is each network's loss? Spectral density, top eigenvalues and trace, sharpness vs accuracy."""
from __future__ import annotations

import streamlit as st

from otcore import figures, report
from otcore.config import SpecError
from ui import errors, page, runs, sidebar, state, widgets

REQUEST = "hessian.request"  # HessianRequest of the last press of Analyse (before/after retraining included)

page.page_setup("Hessian")
ws = sidebar.workspace()
page.header("Hessian",
            "Curvature of the loss at each network: top eigenvalues (power iteration), the exact trace and the "
            "spectral density (SLQ). Do flatter networks generalise better? Curvature is taken in eval mode: "
            "batch norm uses its running statistics, not the batch's.")
parent_set = sidebar.require_parents(ws, minimum=2)

row = st.columns([1.5, 3.6, 0.9], vertical_alignment="bottom")
try:
    study, comparison = runs.choose_study(ws, parent_set, row[0])
except Exception as err:  # noqa: BLE001 - shown, never raised into the page
    errors.show_error(err, "Could not get the networks to analyse")
    st.stop()
options = runs.single_networks(comparison)
state.keep_choice("hessian.methods", options, options)
methods = row[1].multiselect("Networks", options, key="hessian.methods",
                             help="one Hessian each (several seconds per network on a CPU; cached afterwards)")
pressed = row[2].button("Analyse", type="primary", key="hessian.analyse", width="stretch")
retrained = st.toggle("Fused net before and after retraining", key="hessian.retrained",
                      help="analyse the parents, the fused net and the fused net retrained (fine-tune it on the "
                           "Fusion page, or retrain it on the Pruning page), overlaid on one chart each")
widgets.hessian_settings()

if pressed:
    try:
        spec = widgets.hessian_spec()
        if retrained:
            methods = runs.retraining_study(options)
        if not methods:
            raise SpecError("pick at least one network to analyse")
    except SpecError as err:
        errors.show_error(err, "Check the Hessian settings")
        st.session_state.pop(REQUEST, None)
        st.stop()
    st.session_state[REQUEST] = state.HessianRequest(study, tuple(methods), spec, parent_set.keys, retrained)

request = state.current(REQUEST, parent_set)
if request is None:
    st.info("Pick the networks and press **Analyse**: each network's top eigenvalues, trace and spectral density "
            "on the chosen split, then sharpness against accuracy.", icon=":material/ssid_chart:")
    st.stop()
study, methods, spec, retrained = request.study, request.methods, request.spec, request.retrained
try:
    rows = [runs.study_comparison(ws, parent_set, study).row(m) for m in methods]
    curvatures = runs.curvatures_of(ws, parent_set, study, rows, spec)
except Exception as err:  # noqa: BLE001
    errors.show_error(err, "The Hessian analysis failed")
    st.stop()

seconds = sum(c.timings.get("total", 0.0) for c in curvatures if not c.cached)
batches = "every batch of" if spec.batches == "all" else f"{spec.batches} ×"
st.caption(f"Networks of the **{study.label}** comparison · {spec.split} split, {batches} {spec.batch_size} "
           f"examples · {spec.lanczos_iters} Lanczos steps × {spec.density_probes} probe(s), "
           f"{figures.trace_description(curvatures, spec.trace_probes)} · "
           + (f"computed in {seconds:.1f} s" if seconds else "from the cache"))
left, right = st.columns([1.45, 1])
left.plotly_chart(figures.spectral_density_chart(curvatures, height=335), theme=None, key="hessian.chart.density")
with right:
    measure = st.segmented_control("Sharpness", list(figures.SHARPNESS), default="top eigenvalue",
                                   key="hessian.measure", label_visibility="collapsed") or "top eigenvalue"
    records = runs.analysed(parent_set)
    st.plotly_chart(figures.sharpness_scatter(records, measure, height=290), theme=None, key="hessian.chart.scatter")
widgets.show_table(figures.curvature_table(curvatures), figures.CURVATURE_DECIMALS)
if retrained:
    st.plotly_chart(figures.perturbation_chart(curvatures, "Loss along the top eigenvector (solid) and a random "
                                               "direction (dashed), before and after retraining", 340),
                    theme=None, key="hessian.chart.retraining")
widgets.report_button(lambda: report.hessian_report(curvatures, records, parent_set.data, parent_set.model,
                                                    study.label, spec, state.device_label(ws.device), measure,
                                                      curvatures if retrained else ()),
                        f"{parent_set.data.name}-{parent_set.model.arch}-hessian-report.html",
                        "hessian.download.report")
