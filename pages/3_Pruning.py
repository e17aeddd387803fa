"""Pruning: prune the parents and fuse them (or fuse, then prune), retrain, compare every method; sweep fractions."""
from __future__ import annotations

import dataclasses

import streamlit as st

from otcore import figures, report
from otcore.config import FUSED_MASKS, PRUNE_ORDERS, PRUNE_SCOPES, PRUNE_TYPES, PruneSpec, RetrainSpec, SpecError
from ui import errors, page, runs, sidebar, state, widgets

DEFAULT = PruneSpec()
ORDERS = {"prune-fuse": "prune, then fuse", "fuse-prune": "fuse, then prune"}
MASKS = {"reprune": "pruned again at the fraction", "own-zeros": "their own zeros"}
FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
SWEEP = "pruning.sweep"  # PruneSweepRequest of the last Run sweep

page.page_setup("Pruning")
ws = sidebar.workspace()
page.header("Pruning",
            "Prune, then fuse: the parents are pruned (and retrained with their masks), fused, and the fused nets "
            "pruned again at the same fraction (or masked at their own zeros). Fuse, then prune: the unpruned "
            "parents are fused and the fused nets pruned. Either way retraining keeps every mask, so pruned weights "
            "stay exactly zero.")
parent_set = sidebar.require_parents(ws, minimum=2)
fusion_spec, fusion_origin = runs.fusion_setting(parent_set)

state.init_state({
    "pruning.fraction": DEFAULT.fraction, "pruning.type": DEFAULT.type, "pruning.scope": DEFAULT.scope,
    "pruning.order": DEFAULT.order, "pruning.retrain_epochs": DEFAULT.retrain_epochs,
    "pruning.retrain_parents_epochs": DEFAULT.retrain_parents_epochs, "pruning.norm": DEFAULT.norm,
    "pruning.global_": DEFAULT.global_, "pruning.keep_last_layer": DEFAULT.keep_last_layer,
    "pruning.fused_masks": DEFAULT.fused_masks,
    "pruning.fractions": [0.0, 0.3, 0.5, 0.7, 0.9]})
slider_col, form_col = st.columns([2, 5.45], vertical_alignment="top")
# Outside the form, so that moving it reruns the page: a fraction computed before shows at once.
fraction = slider_col.slider("Prune fraction", 0.0, 0.95, step=0.05, key="pruning.fraction",
                             help="share of weights (unstructured) or output filters (structured) removed per layer")
slider_hint = slider_col.empty()
with form_col.form("pruning", border=False):
    row = st.columns([1.3, 0.9, 1.45, 1, 0.8], vertical_alignment="bottom")
    kind = row[0].selectbox("Type", PRUNE_TYPES, key="pruning.type",
                            help="unstructured: smallest |w|; structured: filters of smallest Ln norm")
    scope = row[1].selectbox("Scope", PRUNE_SCOPES, key="pruning.scope", help="which layers are pruned")
    order = row[2].selectbox("Order", PRUNE_ORDERS, format_func=ORDERS.get, key="pruning.order")
    retrain = row[3].number_input("Retraining", 0, 1000, step=1, key="pruning.retrain_epochs",
                                  help="epochs of masked retraining of the fused net (and of the vanilla average, "
                                       "unless unticked below); 0 skips it")
    pressed = row[4].form_submit_button("Prune", type="primary", key="pruning.prune", width="stretch")
    with st.expander("More options: retraining recipe, fused nets' masks, parents' retraining, filter norm, global "
                     "ranking, last layer"):
        retrain_lr, schedule, retrain_vanilla = widgets.retraining_widgets("pruning", "every retraining")
        a, b, c, d = st.columns(4)
        retrain_parents = a.number_input("Parents' retraining", 0, 1000, step=1, key="pruning.retrain_parents_epochs",
                                         help="epochs of masked retraining of each pruned parent")
        norm = b.number_input("Filter norm n (structured)", 1, 10, step=1, key="pruning.norm")
        global_ = c.checkbox("Global ranking (unstructured)", key="pruning.global_",
                             help="rank weights across all pruned layers instead of per layer")
        keep_last = d.checkbox("Keep last layer", key="pruning.keep_last_layer", help="never prune the classifier")
        fused_masks = a.selectbox("Fused nets' masks (prune, then fuse)", FUSED_MASKS, format_func=MASKS.get,
                                  key="pruning.fused_masks",
                                  help="fusing pruned parents mixes their masks: prune the fused nets again with "
                                       "the same type and fraction, or keep (and retrain around) their own zeros")

if pressed:
    try:
        spec = PruneSpec(fraction=float(fraction), type=kind, scope=scope, norm=int(norm), global_=global_,
                         keep_last_layer=keep_last, order=order, retrain_parents_epochs=int(retrain_parents),
                         retrain_epochs=int(retrain), fused_masks=fused_masks,
                         retrain=RetrainSpec(lr=retrain_lr, schedule=schedule, retrain_vanilla=retrain_vanilla))
    except SpecError as err:
        errors.show_error(err, "Check the pruning settings")
        st.session_state.pop(state.PRUNE_REQUEST, None)
        st.stop()
    st.session_state[state.PRUNE_REQUEST] = state.PruneRequest(spec, fusion_spec, parent_set.keys, fusion_origin)

request = state.current(state.PRUNE_REQUEST, parent_set)
if not pressed and request is not None and float(fraction) != request.prune.fraction:
    moved = dataclasses.replace(request.prune, fraction=float(fraction))
    if runs.prune_is_ready(ws, parent_set, moved, request.fusion):  # computed before: follow the slider
        request = dataclasses.replace(request, prune=moved)
        st.session_state[state.PRUNE_REQUEST] = request
    else:
        slider_hint.caption(f":material/pending: {100 * fraction:.0f} % is not computed yet: press **Prune**. "
                            f"Below: {100 * request.prune.fraction:.0f} %.")
if request is not None and float(fraction) == request.prune.fraction:
    slider_hint.caption("Fractions computed before show as the slider moves; others wait for **Prune**.")
if request is None:
    st.info(f"Set the options above and press **Prune**: the parents are pruned and fused with {fusion_origin}, "
            "then every method is scored.", icon=":material/content_cut:")
    st.stop()
spec, fusion_spec, fusion_origin = request.prune, request.fusion, request.fusion_origin
try:
    run, fresh = runs.prune_run(ws, parent_set, spec, fusion_spec)
except Exception as err:  # noqa: BLE001 - shown, never raised into the page
    errors.show_error(err, "Pruning failed")
    st.stop()
comparison = run.comparison

source = f"{run.source} ({run.wall_s:.2f} s)" if fresh else "from memory"
st.caption(f"{100 * spec.fraction:.0f} % {spec.type}, {ORDERS[spec.order]}, fused with {fusion_origin} · ran on "
           f"**{comparison.extra.get('device', run.device)}** · **{source}** · key `{comparison.key[:12]}`")
best = figures.best_parent_accuracy(comparison)
table = figures.prune_table(comparison)
sparsity = dict(zip(table[figures.METHOD], table[figures.percent(figures.SPARSITY)]))
for card, result in zip(widgets.card_slots(len(comparison.rows)), comparison.rows):
    zeros = f"{sparsity[result.method]:.1f} % zeros"
    card.metric(result.method, f"{result.test.accuracy:.2f} %", zeros, delta_color="off", delta_arrow="off",
                border=True, help=f"test accuracy ({result.test.accuracy - best:+.2f} pp against the best pruned "
                                  f"parent); sparsity: share of zero weights over the pruned layers")

tab_compare, tab_sweep = st.tabs(["Comparison", "Sweep over fractions"], key="pruning.tabs")
with tab_compare:
    left, right = st.columns([1.45, 1])
    with left:
        widgets.show_table(table, row_height=32)
    right.plotly_chart(figures.comparison_bar(comparison, height=260), theme=None, key="pruning.chart.bar")
    widgets.retraining_curves(comparison, "pruning.chart.validation")
with tab_sweep:
    controls, accuracy_col, sparsity_col = st.columns([1.2, 2.3, 1.2])
    fractions = controls.multiselect("Prune fractions", FRACTIONS, key="pruning.fractions",
                                     format_func=lambda f: f"{100 * f:.0f} %",
                                     help="each point is the comparison above at that fraction, cached on disk")
    if controls.button("Run sweep", key="pruning.run_sweep", type="primary", width="stretch", disabled=not fractions):
        st.session_state[SWEEP] = state.PruneSweepRequest(dataclasses.replace(spec, fraction=0.0), fusion_spec,
                                                          tuple(fractions), parent_set.keys)
    sweep = state.current(SWEEP, parent_set)
    points = []
    if sweep is None or (sweep.prune, sweep.fusion) != (dataclasses.replace(spec, fraction=0.0), fusion_spec):
        accuracy_col.info("Choose fractions and press **Run sweep**: the settings above at each fraction, every "
                          "method.", icon=":material/show_chart:")
    else:
        try:
            with accuracy_col:
                points = runs.prune_sweep_points(ws, parent_set, spec, fusion_spec, sweep.fractions)
        except Exception as err:  # noqa: BLE001
            errors.show_error(err, "Sweep failed", accuracy_col)
        if points:
            accuracy_col.plotly_chart(figures.prune_sweep_chart(points, spec.fraction, height=300), theme=None,
                                      key="pruning.chart.sweep")
            sparsity_col.plotly_chart(figures.sparsity_chart(points, height=300), theme=None,
                                      key="pruning.chart.sparsity")
        controls.caption("Dotted line: the fraction of the comparison above. Sparsity: zero weights over the pruned "
                         "layers, measured.")

stem = f"{parent_set.data.name}-{parent_set.model.arch}-pruned-{100 * spec.fraction:.0f}"
with st.container(horizontal=True):
    st.download_button("Table (CSV)", table.to_csv(index=False), f"{stem}.csv", "text/csv",
                       key="pruning.download.csv", on_click="ignore", icon=":material/table:")
    widgets.report_button(lambda: report.pruning_report(comparison, points, parent_set.data, parent_set.model,
                                                          parent_set.parents, spec, fusion_spec, run.device),
                            f"{stem}-report.html", "pruning.download.report")
