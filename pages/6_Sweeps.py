"""Sweeps: a grid of prune (or fusion) settings run here or on a Ray cluster, watched as it runs, plotted against any field."""
from __future__ import annotations

import datetime

import streamlit as st

from otcore import figures, report
from otcore import sweep as sweeps
from otcore.config import ALIGNMENTS, PRUNE_ORDERS, PRUNE_TYPES, FusionSpec, PruneSpec, RetrainSpec
from otcore.methods import ALIGNMENT_LABELS
from ui import errors, page, sidebar, state, sweep_jobs, widgets

FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
WIDTHS = [1.0, 1.25, 1.5, 1.75, 2.0]  # fused widths, x the anchor's (partial merging)
RESULT = "sweeps.result"  # the SweepResult on show: run by Start, or read back from the cache
JOB = "sweeps.job"  # the id of the job this session started, while it waits or runs in the server
PENDING = "sweeps.pending"  # a large grid's (spec, executor), waiting for the user's confirmation
FOLLOW_EVERY_S = 1.0  # how often the page redraws a running sweep's progress
# Above this many points Start asks first: one sweep runs at a time in this shared server, so a large one holds
# every session's queue (100 digits points take about half a minute; CIFAR-10 points with retraining, hours).
CONFIRM_ABOVE = 100

page.page_setup("Sweeps")
ws = sidebar.workspace()
page.header("Sweeps",
            "Every combination of the settings below is one point: the sidebar's parents pruned (a pruning sweep), "
            "fused and compared with every method. A sweep runs in the server, so other pages stay usable; points "
            "are cached as they finish, so a stopped sweep resumes where it was; the Ray executor runs them on a "
            "cluster.")
if ws is None:
    st.stop()

state.init_state({"sweeps.side_by_side": False, "sweeps.study_metric": "test accuracy",
                  "sweeps.fractions": [0.0, 0.3, 0.5, 0.7], "sweeps.types": ["unstructured"],
                  "sweeps.seed_sets": 1, "sweeps.order": PruneSpec().order, "sweeps.retrain_epochs": 0,
                  "sweeps.kind": "pruning", "sweeps.alignments": ["zipit"], "sweeps.widths": [1.0, 1.5, 2.0],
                  "sweeps.finetune_epochs": 0,
                  "sweeps.executor": "local", "sweeps.ray_address": "", "sweeps.gpus": 0.0, "sweeps.analyse": []})
kind = st.radio("Sweep over", ("pruning", "fusion"), horizontal=True, key="sweeps.kind",
                help="pruning: prune fractions and types, with the fusion the Fusion page's defaults; fusion: "
                     "alignments and fused widths (partial merging), nothing pruned")
with st.form("sweeps", border=False):
    if kind == "pruning":
        row = st.columns([1.9, 2.5, 0.8, 1.0, 0.9])  # both pruning types fit their box
        fractions = row[0].multiselect("Prune fractions", FRACTIONS, key="sweeps.fractions",
                                       help="share of weights (unstructured) or filters (structured) removed")
        types = row[1].multiselect("Pruning types", PRUNE_TYPES, key="sweeps.types")
        order = row[3].selectbox("Order", PRUNE_ORDERS, key="sweeps.order", help="prune then fuse, or fuse then prune")
        retrain = row[4].number_input("Retraining", 0, 1000, step=1, key="sweeps.retrain_epochs",
                                      help="epochs of masked retraining of the fused network at each point")
    else:
        row = st.columns([2.6, 2.2, 0.8, 1.1])
        alignments = row[0].multiselect("Alignments", ALIGNMENTS, format_func=ALIGNMENT_LABELS.get,
                                        key="sweeps.alignments", help="each alignment at each width")
        widths = row[1].multiselect("Fused widths", WIDTHS, key="sweeps.widths",
                                    help="× the anchor's width: above 1 only ZipIt! and PLeaS, which keep the "
                                         "least matched features side by side (the frontier below the chart)")
        retrain = row[3].number_input("Fine-tuning", 0, 1000, step=1, key="sweeps.finetune_epochs",
                                      help="epochs of fine-tuning of each fused network")
    seed_sets = row[2].number_input("Seed sets", 1, 20, step=1, key="sweeps.seed_sets",
                                    help="repeat over this many parent sets; set s shifts the sidebar's seeds by "
                                         "s × the number of parents (averaged in the chart)")
    analyse = st.multiselect("Hessian analysis at each point", list(sweeps.NETWORKS), key="sweeps.analyse",
                             help="top eigenvalues, trace, spectral density and perturbation curve of these networks "
                                  "at every point, each cached by its own key (the Hessian page's settings)")
    with st.expander("Retraining recipe"):
        retrain_lr, schedule, retrain_vanilla = widgets.retraining_widgets("sweeps", "every retraining at each point")
    row = st.columns([1, 2.4, 1, 0.9], vertical_alignment="bottom")
    executor = row[0].selectbox("Executor", sweeps.EXECUTORS, key="sweeps.executor",
                                help="local: in this server, one point after another; ray: each point a Ray task")
    address = row[1].text_input("Ray address", key="sweeps.ray_address",
                                placeholder="blank: a local Ray instance · auto: the running cluster",
                                help="ray only: 'auto', HOST:PORT or ray://HOST:10001; the cache stays on this server")
    gpus = row[2].number_input("GPUs per point", 0.0, 8.0, step=0.25, key="sweeps.gpus", help="ray only")
    pressed = row[3].form_submit_button("Start", type="primary", key="sweeps.start", width="stretch")

if pressed:
    try:
        recipe = RetrainSpec(lr=retrain_lr, schedule=schedule, retrain_vanilla=retrain_vanilla)
        seeds = ("seed", tuple(range(int(seed_sets))))
        if kind == "pruning":
            grid = (("prune.type", tuple(types)), seeds, ("prune.fraction", tuple(fractions)))
            prune, fusion = PruneSpec(order=order, retrain_epochs=int(retrain), retrain=recipe), FusionSpec()
        else:
            grid = (("fusion.alignment", tuple(alignments)), seeds, ("fusion.width", tuple(widths)))
            prune, fusion = PruneSpec(), FusionSpec(finetune_epochs=int(retrain), retrain=recipe)
        spec = sweeps.SweepSpec(grid, ws.data, ws.model, ws.train, prune, fusion, ws.seeds,
                                "prune" if kind == "pruning" else "fusion", ws.device, tuple(analyse),
                                widgets.hessian_spec())
        runner = sweeps.executor(executor, address.strip() or None,
                                 **({"gpus_per_task": float(gpus)} if executor == "ray" else {}))
    except Exception as err:  # noqa: BLE001 - shown, never raised into the page
        errors.show_error(err, "Check the sweep settings")
        st.stop()
    st.session_state.pop(PENDING, None)
    if spec.size > CONFIRM_ABOVE:
        st.session_state[PENDING] = (spec, runner)
    else:  # a job of this session's own, in a server thread: it outlives this script run
        st.session_state[JOB] = sweep_jobs.submit(spec, runner).id
        st.session_state.pop(RESULT, None)

if (pending := st.session_state.get(PENDING)) is not None:
    size = pending[0].size
    st.warning(f"This grid has **{size:,} points** (more than {CONFIRM_ABOVE}). Sweeps run one at a time in this "
               "server, so it holds every session's sweeps until it ends.", icon=":material/warning:")
    if st.button(f"Start all {size:,} points", key="sweeps.confirm", type="primary"):
        st.session_state.pop(PENDING)
        st.session_state[JOB] = sweep_jobs.submit(*pending).id
        st.session_state.pop(RESULT, None)
        st.rerun()  # drawn again without the question, following the sweep


@st.fragment(run_every=FOLLOW_EVERY_S)
def follow(job_id: str) -> None:
    """This session's sweep, waiting or running: redrawn from its job every FOLLOW_EVERY_S seconds."""
    job = sweep_jobs.get(job_id)
    if job is None or not (job.running or job.queued):
        st.rerun()  # ended (or left the queue) since the last redraw: the whole page shows the outcome
    bar, stop = st.columns([5, 1], vertical_alignment="bottom")
    place = sweep_jobs.position(job)
    if place is not None:
        bar.info(f"Waiting in the queue: **{place[0]}** in line, {place[1]} sweep running ahead (this server runs "
                 f"{sweep_jobs.MAX_RUNNING} at a time). {job.total} points on the {job.executor_name} executor.",
                 icon=":material/hourglass_top:")
    else:
        bar.progress(min(max(job.fraction, 0.0), 1.0),
                     text=f"{job.total} points on the {job.executor_name} executor · {job.what}")
    stopping = job.stop_requested.is_set()
    if stop.button("Stop", key="sweeps.stop", icon=":material/stop:", width="stretch", disabled=stopping,
                   help="your sweep only: leave the queue, or stop after the point being computed; finished "
                        "points stay cached, Start resumes"):
        job.stop()
        if job.state == sweep_jobs.CANCELLED:
            st.rerun()  # it left the queue: the page says so at once
        stopping = True
    if place is None:
        st.caption(("Stopping after the point being computed. " if stopping else "Running in the server: open "
                    "other pages meanwhile, this page follows it when you come back. ") +
                   f"{len(job.finished)} points done.")
    if job.finished:
        swept = [name for name, _ in job.spec.grid]
        widgets.show_table(figures.sweep_table(list(job.finished), swept).drop(columns="key"))


job = sweep_jobs.get(st.session_state.get(JOB))
if job is not None and (job.running or job.queued):
    follow(job.id)
    st.stop()
if job is not None:  # ended since the last run of this page: show its outcome once
    st.session_state.pop(JOB, None)
    if job.state == sweep_jobs.CANCELLED:
        st.info("Your sweep left the queue before it started.", icon=":material/cancel:")
    if job.error is not None:
        errors.show_error(job.error, "The sweep stopped")
    if job.result is not None:
        st.session_state[RESULT] = job.result

listing = sweeps.sweep_records()  # verified: damaged or malformed records are skipped with a warning
records = listing.rows
if listing.warning():
    st.warning(listing.warning(), icon=":material/warning:")
with st.expander(f"Sweeps in the cache ({len(records)}): reopen a finished one, or look at one running elsewhere"):
    st.caption("Show reads a sweep as the cache holds it now. A running one goes on: only the session (or "
               "command) that started it can stop it.")
    pick, button = st.columns([5, 1], vertical_alignment="bottom")
    labels = {r.key: f"{sweeps.record_status(r.metrics)} · {r.metrics['done']}/{r.metrics['total']} points · "
                     f"{', '.join(r.metrics['fields']) or 'no grid'} · {r.config['model']['arch']} on "
                     f"{r.config['data']['name']} · {r.metrics['executor']} · "
                     f"{datetime.datetime.fromtimestamp(r.metrics['updated']):%Y-%m-%d %H:%M}" for r in records}
    chosen = pick.selectbox("Sweep", list(labels), format_func=labels.get, key="sweeps.record")
    if button.button("Show", key="sweeps.show", disabled=chosen is None, width="stretch"):
        try:
            st.session_state[RESULT] = sweeps.load_sweep(chosen)
        except ValueError as err:  # damaged or removed since it was listed
            errors.show_error(err, "Cannot reopen this sweep")

result = st.session_state.get(RESULT)
if result is None:
    st.info("Choose the grid above and press **Start**; each finished point appears at once, and the chart plots any "
            "metric against any swept field.", icon=":material/grid_on:")
    st.stop()
st.caption(f"**{len(result.points)}** of {result.total} points · {len(result.failed)} failed · {result.status} · "
           f"{result.executor} executor" + (f" · {result.seconds:.1f} s" if result.seconds else "") +
           f" · sweep `{result.key[:12]}`")
for failure in result.failed:
    point = ", ".join(f"{k}={v}" for k, v in failure.values.items())
    st.error(f"**{point}** failed after {failure.attempts} tries: {failure.error}", icon=":material/error:")
table = figures.sweep_table(result.points, result.fields)
if table.empty or not result.fields:
    widgets.show_table(table.drop(columns="key"))
    st.stop()

methods = list(dict.fromkeys(table["method"]))
if st.session_state.get("sweeps.x") not in result.fields:  # a field that varies: one fraction is one column of dots
    varied = [f for f in ("prune.fraction", "fusion.width", *result.fields)
              if f in result.fields and table[f].nunique() > 1]
    st.session_state["sweeps.x"] = (varied or ["prune.fraction" if "prune.fraction" in result.fields
                                               else result.fields[0]])[0]
st.session_state["sweeps.methods"] = [m for m in st.session_state.get("sweeps.methods", methods) if m in methods]
metric_col, x_col, methods_col = st.columns([1, 1, 3])
metric = metric_col.selectbox("Metric", figures.sweep_metrics(table), key="sweeps.metric",
                              help="scores, and the curvature of the networks the sweep analysed")
x = x_col.selectbox("Against", result.fields, key="sweeps.x")
shown = methods_col.multiselect("Methods", methods, key="sweeps.methods")
apart = st.toggle("Initial and retrained side by side", key="sweeps.side_by_side",
                  help="two panels: the networks as fused or pruned, and after retraining")
st.plotly_chart(figures.sweep_figure(table, metric, x, shown or methods, side_by_side=apart), theme=None,
                key="sweeps.chart")
if "fusion.width" in result.fields:  # partial merging swept: the accuracy-versus-size frontier of its networks
    st.plotly_chart(figures.frontier_chart(figures.sweep_frontier_rows(result.points), height=340), theme=None,
                    key="sweeps.chart.frontier")
    st.caption(f"Each network of the sweep by its size (accuracies averaged over parent seed sets; a sweep keeps no "
               f"networks to time). The **{figures.ENSEMBLE_LABEL}** averages softmax outputs; a fused network at full "
               "width computes the parents' mean logits.")
constant = [c for c in (*result.fields, "seeds") if c in table and table[c].nunique() == 1]
if constant:  # said once above the table, so that the columns that vary fit the page
    st.caption("On every row: " + " · ".join(f"{c} = {table[c].iloc[0]}" for c in constant))
widgets.show_table(table.drop(columns=["key", *constant]),  # '34.91', not '34.9137' cut to '4.9137'
                   {**figures.CURVATURE_DECIMALS, **{f"λ{i}": 3 for i in range(1, 6)}})
record = next((r for r in records if r.key == result.key), None)
with st.container(horizontal=True):
    st.download_button("Table (CSV)", table.to_csv(index=False), f"sweep-{result.key[:12]}.csv", "text/csv",
                       key="sweeps.download.csv", on_click="ignore", icon=":material/table:")
    widgets.report_button(lambda: report.sweep_report(result, record.config if record else {}),
                          f"sweep-{result.key[:12]}.html", "sweeps.download.report")

with st.expander("The study's table: a metric per experiment and network (CSV, LaTeX with booktabs)"):
    offered = [m for m in (*figures.STUDY_METRICS, "λ1", "λ2", "λ3") if not figures.study_table(result.points, m).empty]
    state.keep_choice("sweeps.study_metric", offered, "test accuracy")
    study_metric = st.selectbox("Metric", offered, key="sweeps.study_metric")
    study = figures.study_table(result.points, study_metric)
    places = figures.STUDY_DECIMALS.get(study_metric, 3)  # as the LaTeX table prints it, not '96' beside '96.8889'
    widgets.show_table(study.reset_index(), {str(c): places for c in study.columns})
    with st.container(horizontal=True):
        for form, mime in (("csv", "text/csv"), ("latex", "application/x-latex")):
            st.download_button(f"Table ({form.upper() if form == 'csv' else 'LaTeX'})", figures.study_text(study, form),
                               f"study-{result.key[:12]}-{study_metric}.{'tex' if form == 'latex' else 'csv'}", mime,
                               key=f"sweeps.download.study.{form}", on_click="ignore", icon=":material/table:")
