"""Fusion: every option of OT fusion, one press of Fuse, every method side by side."""
from __future__ import annotations

import streamlit as st

from otcore import figures, report
from otcore.config import (
    ALIGN_MODES,
    GROUND_METRICS,
    HEAD_MODES,
    MARGINALS,
    NORMALIZATIONS,
    SOLVERS,
    FusionSpec,
    RetrainSpec,
    SpecError,
)
from otcore.methods import ALIGNMENT_LABELS, Method, is_parent, parent_id
from ui import errors, frontier, page, runs, sidebar, state, widgets

DEFAULT = FusionSpec()
ALIGNMENTS = ALIGNMENT_LABELS
ACTIVATION_ONLY = ("cca", "zipit", "pleas")  # alignments that always use activations: "Align by" does not apply
WIDENING = ("zipit", "pleas")  # alignments that can keep unmatched features side by side (fusion.width > 1)

page.page_setup("Fusion")
ws = sidebar.workspace()
page.header("Fusion",
            "Align each parent's neurons to the anchor's, layer by layer, then average (Singh & Jaggi, 2020). "
            "Defaults are the paper's.")
parent_set = sidebar.require_parents(ws, minimum=2)
n_parents = len(parent_set.parents)

state.init_state({
    "fusion.alignment": DEFAULT.alignment, "fusion.mode": DEFAULT.mode, "fusion.solver": DEFAULT.solver,
    "fusion.reg": DEFAULT.reg, "fusion.ground_metric": DEFAULT.ground_metric,
    "fusion.finetune_epochs": DEFAULT.finetune_epochs, "fusion.ensemble_step": DEFAULT.ensemble_step,
    "fusion.weights": "", "fusion.anchor": DEFAULT.anchor, "fusion.normalize": DEFAULT.normalize,
    "fusion.marginals": DEFAULT.marginals, "fusion.act_samples": DEFAULT.act_samples,
    "fusion.act_seed": DEFAULT.act_seed, "fusion.squared": DEFAULT.squared,
    "fusion.past_correction": DEFAULT.past_correction, "fusion.marginal_correction": DEFAULT.marginal_correction,
    "fusion.skip_last_layer": DEFAULT.skip_last_layer, "fusion.renormalize": DEFAULT.renormalize,
    "fusion.repair_bias": DEFAULT.repair_bias, "fusion.width": DEFAULT.width,
    "fusion.heads": DEFAULT.heads})
if st.session_state["fusion.anchor"] >= n_parents:
    st.session_state["fusion.anchor"] = 0
if st.session_state["fusion.alignment"] not in WIDENING:  # the slider shows the width these alignments fuse at
    st.session_state["fusion.width"] = 1.0
st.session_state["fusion.width"] = min(float(st.session_state["fusion.width"]), float(n_parents))

align_col, form_col = st.columns([1.15, 6.25], vertical_alignment="top")
# Outside the form, so that "Align by" is enabled or not as soon as the alignment changes.
alignment = align_col.selectbox("Alignment", list(ALIGNMENTS), format_func=ALIGNMENTS.get, key="fusion.alignment",
                                help="OT: layer-wise transport plans (the paper); weight matching: Git Re-Basin; "
                                     "CCA Merge, ZipIt! and PLeaS: linear maps from activations (the zoo's ResNets "
                                     "excepted); PLeaS then fits each layer by least squares")
by_activations = alignment in ACTIVATION_ONLY
widening = alignment in WIDENING
# REPAIR outside the form too: its bias option is enabled as soon as REPAIR is ticked.
repair = align_col.checkbox("REPAIR", key="fusion.renormalize",
                            help="restore each fused neuron's mean and std (where it has a bias or a norm; its std "
                                 "alone where it has neither) to the parents' on the activation sample")
repair_bias = align_col.checkbox("+ biases", key="fusion.repair_bias", disabled=not repair,
                                 help="REPAIR with biases: bias-free layers gain one bias per repaired neuron, so "
                                      "REPAIR restores their mean too; the fused network then has that many more parameters")
with form_col.form("fusion", border=False):
    row = st.columns([1.05, 0.9, 1.05, 1.2, 0.95, 1.0, 0.65], vertical_alignment="bottom")
    mode = row[0].selectbox("Align by", ALIGN_MODES, key="fusion.mode", disabled=by_activations,
                            help=f"{ALIGNMENTS[alignment]} always matches neurons by their activations on a sample "
                                 "of inputs (see Activation samples)" if by_activations else
                            "neuron features: incoming weights, or pre-activations on a sample of inputs")
    solver = row[1].selectbox("OT solver", SOLVERS, key="fusion.solver", help="emd: exact; sinkhorn: entropic")
    reg = row[2].number_input("Sinkhorn reg", min_value=0.0, step=0.005, format="%.4f", key="fusion.reg",
                              help="entropic regularisation, relative to the largest cost (Sinkhorn only)")
    metric = row[3].selectbox("Ground metric", GROUND_METRICS, key="fusion.ground_metric")
    finetune = row[4].number_input("Fine-tuning", min_value=0, max_value=1000, step=1, key="fusion.finetune_epochs",
                                   help="epochs of fine-tuning of the fused network (and of the vanilla average, "
                                        "unless unticked below) with the retraining recipe; 0 skips it")
    width = row[5].slider("Width", 1.0, float(n_parents), step=0.25, key="fusion.width", disabled=not widening,
                          help="the fused network's width, a multiple of the anchor's: 1 merges every feature, "
                               f"{n_parents} keeps every parent's (the ensemble of logits); partial merging keeps the "
                               "worst-matched features side by side" if widening else
                          f"{ALIGNMENTS[alignment]} fuses into the anchor's width (1): only ZipIt! and PLeaS keep "
                          "unmatched features side by side, so only they widen the fused network")
    pressed = row[6].form_submit_button("Fuse", type="primary", key="fusion.fuse", width="stretch")
    with st.expander("More options: fine-tuning recipe, anchor, weights, cost, marginals, activations, heads, "
                     "corrections"):
        retrain_lr, schedule, retrain_vanilla = widgets.retraining_widgets("fusion", "fine-tuning")
        a, b, c, d = st.columns(4)
        step = a.slider("Ensemble step (anchor's weight)", 0.0, 1.0, step=0.05, key="fusion.ensemble_step",
                        help="with two parents: the anchor's share of the average")
        weights_text = a.text_input("Per-parent weights", key="fusion.weights", placeholder="e.g. 0.5, 0.3, 0.2",
                                    help="one weight per parent; overrides the ensemble step; blank: not used")
        anchor = b.selectbox("Anchor", list(range(n_parents)), format_func=lambda i: f"parent {i + 1}",
                             key="fusion.anchor", help="the parent whose neuron order and widths the fused net keeps")
        normalize = b.selectbox("Cost normalisation", NORMALIZATIONS, key="fusion.normalize")
        marginals = b.selectbox("Marginals", MARGINALS, key="fusion.marginals",
                                help="neuron masses: uniform, or by importance (l1 norm of their weights)")
        act_samples = c.number_input("Activation samples", min_value=1, step=50, key="fusion.act_samples",
                                     help="inputs of the train split used by activation alignment and REPAIR")
        act_seed = c.number_input("Activation seed", min_value=0, step=1, key="fusion.act_seed")
        heads = c.selectbox("Attention heads", HEAD_MODES, key="fusion.heads",
                            help="transformers only: units matches heads as blocks, then channels within them; "
                                 "within keeps each head in place; flat ignores the heads (Imfeld et al. compare them)")
        squared = d.checkbox("Squared distance", key="fusion.squared")
        past = d.checkbox("Past correction", key="fusion.past_correction",
                          help="align each layer's inputs with the previous layer's plan")
        correction = d.checkbox("Marginal correction", key="fusion.marginal_correction",
                                help="rescale each plan so every anchor neuron receives unit mass")
        skip_last = d.checkbox("Skip last layer", key="fusion.skip_last_layer",
                               help="average the output layer without a plan (its classes are aligned)")

if pressed:
    try:
        spec = FusionSpec(mode=mode, act_samples=int(act_samples), act_seed=int(act_seed), solver=solver,
                          reg=float(reg), ground_metric=metric, squared=squared, normalize=normalize,
                          past_correction=past, marginal_correction=correction, marginals=marginals,
                          ensemble_step=float(step),
                          weights=widgets.parse_numbers(weights_text, "per-parent weights"), anchor=int(anchor),
                          skip_last_layer=skip_last, renormalize=repair, repair_bias=repair and repair_bias,
                          alignment=alignment, width=float(width) if widening else 1.0, heads=heads,
                          finetune_epochs=int(finetune),
                          retrain=RetrainSpec(lr=retrain_lr, schedule=schedule, retrain_vanilla=retrain_vanilla))
        spec.parent_weights(n_parents)  # checks the weights' count against the parents
    except SpecError as err:
        errors.show_error(err, "Check the fusion settings")
        st.session_state.pop(state.FUSION_REQUEST, None)
        st.stop()
    st.session_state[state.FUSION_REQUEST] = state.FusionRequest(spec, parent_set.keys)

request = state.current(state.FUSION_REQUEST, parent_set)
if request is None:
    st.info("Set the options above and press **Fuse**: each parent, vanilla averaging, the prediction ensemble and "
            "OT fusion are scored on the test and train splits.", icon=":material/merge:")
    st.stop()
spec = request.spec
try:
    run, fresh = runs.fusion_run(ws, parent_set, spec)
except Exception as err:  # noqa: BLE001 - shown, never raised into the page
    errors.show_error(err, "Fusion failed")
    st.stop()
comparison = run.comparison
frontier.remember(parent_set, spec)

# ---- result: one status line, a card per method, then tabs (comparison first, downloads under it)
source = f"{run.source} ({run.wall_s:.2f} s)" if fresh else "from memory (seen earlier on this server)"
timing = ", ".join(f"{k} {v:.2f} s" for k, v in comparison.seconds.items())
device = comparison.extra.get("device", run.device)  # where it was computed, also for a cached result
fused_size, anchor_size = (comparison.row(m).parameters for m in (Method.OT_FUSION, parent_id(spec.anchor % n_parents)))
gained = (f", REPAIR gave it **{fused_size - anchor_size:,} biases** (one per repaired neuron)" if spec.repair_bias
          and spec.width == 1 else ", a bias per repaired neuron gained by REPAIR" if spec.repair_bias else "")
st.caption(f"Ran on **{device}** · result **{source}** · {timing} · key `{comparison.key[:12]}`  \n"  # one block
           f"Fused network at width ×{spec.width:g}: **{fused_size:,} parameters**, the anchor parent "
           f"{anchor_size:,} (×{fused_size / anchor_size:.2f}){gained}")
best = figures.best_parent_accuracy(comparison)
for card, result in zip(widgets.card_slots(len(comparison.rows)), comparison.rows):
    gap = result.test.accuracy - best
    is_best = is_parent(result.method) and gap == 0
    card.metric(result.method, f"{result.test.accuracy:.2f} %", "best parent" if is_best else f"{gap:+.2f} pp",
                delta_color="off" if is_best else "normal", delta_arrow="off" if is_best else "auto", border=True,
                help=f"test accuracy; test loss {result.test.loss:.4f}; delta in points against the best parent "
                     f"({best:.2f} %)")
table = figures.comparison_table(comparison)

points = frontier.points(ws, parent_set)  # this session's fusions of these parents (memoised: times nothing twice)
# Keyed and tracked: a rerun (the frontier's fine-tune click) keeps the tab the user is on.
tab_compare, tab_frontier, tab_classes, tab_plans, tab_diag = st.tabs(
    ["Comparison", "Frontier", "Per class", "Transport plans", "Per-layer diagnostics"], key="fusion.tab",
    on_change="rerun")
with tab_compare:
    left, right = st.columns([1.62, 1])
    with left:
        widgets.show_table(table, row_height=32)
    right.plotly_chart(figures.comparison_bar(comparison, height=260), theme=None, key="fusion.chart.bar")
    widgets.retraining_curves(comparison, "fusion.chart.validation")
    fused = comparison.row(Method.OT_FUSION)  # by id: its label follows the alignment
    stem = f"{parent_set.data.name}-{parent_set.model.arch}-ot-fusion"
    with st.container(horizontal=True):
        widgets.checkpoint_button(fused.model, f"{stem}.checkpoint", "fusion.download.model", "Fused checkpoint",
                                    {"test_accuracy": fused.test.accuracy, "epoch": 0})
        st.download_button("Table (CSV)", table.to_csv(index=False), f"{stem}.csv", "text/csv",
                           key="fusion.download.csv", on_click="ignore", icon=":material/table:")
        widgets.report_button(lambda: report.fusion_report(comparison, parent_set.data, parent_set.model,
                                                             parent_set.parents, spec, run.device, frontier=points),
                                f"{stem}-report.html", "fusion.download.report")
with tab_frontier:
    frontier.draw_tab(ws, parent_set, points, int(finetune))
with tab_classes:
    if parent_set.origin == "trained" and parent_set.train.partition != "iid":
        st.caption(f"The parents saw different parts of the data ('{parent_set.train.partition}' partition): mean "
                   "per-class test accuracy on the classes each parent was trained on, and on those it never saw.")
        widgets.show_table(figures.own_classes_table(comparison, parent_set.train))
    st.plotly_chart(figures.per_class_heatmap(comparison, height=60 + 36 * len(comparison.rows)),
                    theme=None, key="fusion.chart.per_class")
with tab_plans:
    if not comparison.plans:
        st.info("This setting produced no transport plans: every layer was averaged as it is.")
    else:
        names = list(comparison.plans)
        if st.session_state.get("fusion.plan_layer") not in names:
            st.session_state.pop("fusion.plan_layer", None)  # the last result had other layers
        pick, order = st.columns([2, 1], vertical_alignment="bottom")
        layer = pick.selectbox("Layer", names, key="fusion.plan_layer",
                               format_func=lambda n: f"{n}  ({' × '.join(map(str, comparison.plans[n].shape))})")
        ordered = order.toggle("Order parent neurons by their match", value=True, key="fusion.plan_order",
                               help="a permutation then shows as the diagonal")
        st.plotly_chart(figures.plan_heatmap(comparison.plans[layer], f"Transport plan · {layer}", ordered),
                        theme=None, key="fusion.chart.plan")
with tab_diag:
    if not comparison.diagnostics:
        st.info("Per-layer diagnostics come from OT alignment; this setting reported none.")
    else:
        st.caption("Permutation closeness: the share of each parent neuron's mass sent to its best anchor match, "
                   "averaged over the layer (1 = the plan is a permutation). Costs are ground-metric distances.")
        st.plotly_chart(figures.diagnostics_chart(comparison.diagnostics, height=300), theme=None,
                        key="fusion.chart.diag")
        widgets.show_table(figures.diagnostics_table(comparison.diagnostics))
