"""Widgets more than one page draws: tables in the house number formats, downloads, shared settings."""
from __future__ import annotations

from typing import Any
from collections.abc import Callable

import pandas as pd
import streamlit as st

from otcore import figures
from otcore.checkpoints import checkpoint_bytes
from otcore.config import SCHEDULES, HessianSpec, RetrainSpec, SpecError
from ui.state import init_state

# The Hessian settings both analysis pages share: quick on digits/mlpnet on a 2-core CPU (the whole test split).
HESSIAN_DEFAULTS: dict[str, Any] = {
    "hessian.split": "test", "hessian.batches": 1, "hessian.all_batches": False, "hessian.batch_size": 450,
    "hessian.top_k": 2,
    "hessian.power_iters": 100, "hessian.lanczos_iters": 60, "hessian.density_probes": 1,
    "hessian.trace_method": "auto", "hessian.trace_probes": 30, "landscape.lambda": (-0.5, 0.5), "landscape.points": 21}


def show_table(frame: Any, decimals: dict[str, int] | None = None, height: int | str = "auto",
               row_height: int | None = None) -> None:
    """A dataframe with the house number formats (2 decimals for %, 4 for losses); `decimals` adds columns."""
    config: dict[Any, Any] = {}
    for i, column in enumerate(frame.columns):
        width = max(64, int(5.8 * len(str(column))) + 17)  # px: the header fits, the table stays narrow
        places = (decimals or {}).get(str(column), figures.column_decimals(str(column)))
        if i == 0 and not pd.api.types.is_numeric_dtype(frame[column]):
            config[column] = st.column_config.TextColumn(width=130)  # method / parent names
        elif places == 0:
            config[column] = st.column_config.NumberColumn(format="localized", width=width)
        elif places is not None:
            config[column] = st.column_config.NumberColumn(format=f"%.{places}f", width=width)
    st.dataframe(frame, hide_index=True, column_config=config, height=height, row_height=row_height)


def report_button(build: Callable[[], str], file_name: str, key: str, label: str = "Report (HTML)") -> None:
    """A download button whose HTML report is built only when clicked."""
    st.download_button(label, data=lambda: build().encode("utf-8"), file_name=file_name, mime="text/html",
                       key=key, on_click="ignore", icon=":material/description:",
                       help="A self-contained HTML file: settings, tables and interactive charts; opens offline.")


def checkpoint_button(model: Any, file_name: str, key: str, label: str, meta: dict | None = None) -> None:
    """A download button for a network in the paper's checkpoint format, serialised only when clicked."""
    st.download_button(label, data=lambda: checkpoint_bytes(model.state_dict(), "paper", meta or {}),
                       file_name=file_name, mime="application/octet-stream", key=key, on_click="ignore",
                       icon=":material/download:",
                       help="torch.save of {'model_state_dict', 'test_accuracy', 'epoch'}, as the paper's code writes")



def parse_numbers(text: str, what: str) -> tuple[float, ...] | None:
    """'0.5, 0.3 0.2' -> (0.5, 0.3, 0.2); blank -> None; anything else is a SpecError."""
    parts = text.replace(",", " ").split()
    if not parts:
        return None
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise SpecError(f"{what} must be numbers separated by commas, e.g. 0.5, 0.5; got '{text}'") from None



def hessian_settings(label: str = "Hessian settings (SLQ): batches, Lanczos iterations, probes, top-k") -> None:
    """The Hessian settings both analysis pages share, in an expander (their keys keep values across pages)."""
    init_state({k: v for k, v in HESSIAN_DEFAULTS.items() if k.startswith("hessian.")})
    with st.expander(label):
        row = st.columns(4)
        row[0].selectbox("Split", ("test", "train"), key="hessian.split", help="the examples the loss is taken on")
        row[1].number_input("Batches", 1, 100, step=1, key="hessian.batches",
                            disabled=st.session_state["hessian.all_batches"],
                            help="the loss averages these batches; more than one gives the landscape's spread band")
        row[1].checkbox("All (whole split)", key="hessian.all_batches",
                        help="every batch of the split, streamed one at a time; the time estimate shows first")
        row[2].number_input("Batch size", 1, 100_000, step=50, key="hessian.batch_size",
                            help="examples per batch (450: the whole digits test split)")
        row[3].number_input("Top-k eigenvalues", 1, 20, step=1, key="hessian.top_k",
                            help="power iteration with deflation; the 2D surface needs 2")
        row = st.columns(5)
        row[0].number_input("Power iterations", 1, 1000, step=10, key="hessian.power_iters",
                            help="at most, per eigenvalue (stops at relative tolerance 1e-4)")
        row[1].number_input("Lanczos iterations", 2, 1000, step=10, key="hessian.lanczos_iters",
                            help="steps of stochastic Lanczos quadrature: the density's resolution")
        row[2].number_input("Density probes", 1, 100, step=1, key="hessian.density_probes",
                            help="random probe vectors averaged by the spectral density")
        row[3].selectbox("Trace", ("auto", "hutchinson"), key="hessian.trace_method",
                         format_func={"auto": "exact", "hutchinson": "Hutchinson"}.get,
                         help="exact: the sum of the exact Hessian diagonal (every network of the zoo is piecewise "
                              "linear in each weight, which makes it computable); Hutchinson: PyHessian's estimate")
        row[4].number_input("Trace probes", 1, 1000, step=10, key="hessian.trace_probes",
                            disabled=st.session_state["hessian.trace_method"] != "hutchinson",
                            help="Rademacher probes of Hutchinson's trace estimator")


def hessian_spec() -> Any:
    """The HessianSpec of the shared settings and of the Landscape page's λ range (raises SpecError)."""
    s = {**HESSIAN_DEFAULTS, **{k: st.session_state[k] for k in HESSIAN_DEFAULTS if k in st.session_state}}
    low, high = s["landscape.lambda"]
    batches = "all" if s["hessian.all_batches"] else int(s["hessian.batches"])
    return HessianSpec(split=s["hessian.split"], batches=batches,
                       batch_size=int(s["hessian.batch_size"]), top_k=int(s["hessian.top_k"]),
                       power_iters=int(s["hessian.power_iters"]), lanczos_iters=int(s["hessian.lanczos_iters"]),
                       density_probes=int(s["hessian.density_probes"]), trace_method=s["hessian.trace_method"],
                       trace_probes=int(s["hessian.trace_probes"]),
                       lambda_min=float(low), lambda_max=float(high), lambda_points=int(s["landscape.points"]))



def retraining_widgets(prefix: str, what: str) -> tuple[float, str, bool]:
    """The retraining recipe's widgets (keys '<prefix>.retrain_lr', '.retrain_schedule', '.retrain_vanilla').

    One recipe for every retraining of a page, not the parents' from-scratch lr; `what` names
    what it retrains, for the help texts.
    """
    d = RetrainSpec()
    init_state({f"{prefix}.retrain_lr": d.lr, f"{prefix}.retrain_schedule": d.schedule,
                f"{prefix}.retrain_vanilla": d.retrain_vanilla})
    a, b, c = st.columns(3)
    lr = a.number_input("Retraining lr", min_value=0.0, step=0.001, format="%.4f", key=f"{prefix}.retrain_lr",
                        help=f"SGD learning rate of {what}; lower than training from scratch, as the net is trained")
    schedule = b.selectbox("Retraining schedule", SCHEDULES, key=f"{prefix}.retrain_schedule",
                           help="step: lr halved after every epoch; cosine: decays to 0 over the retraining; constant")
    vanilla = c.checkbox("Retrain the vanilla average too", key=f"{prefix}.retrain_vanilla",
                         help="same recipe and epochs, so retrained OT fusion is compared with a retrained baseline")
    return float(lr), schedule, vanilla



def retraining_curves(comparison: Any, key: str) -> None:
    """The validation curve of each retraining of a comparison (nothing when it retrained nothing)."""
    retraining = comparison.extra.get("retraining")
    if not retraining:
        return
    held = sorted({r["validation_examples"] for r in retraining.values()})
    kept = ", ".join(f"{r.method}: epoch {retraining[r.id]['best_epoch']:g}" for r in comparison.rows
                     if r.id in retraining)
    st.caption(f"Retraining keeps the best state on a validation part of the train split ({', '.join(map(str, held))} "
               f"held-out images, never retrained on), scored before retraining and at each checkpoint; a network "
               f"is never returned worse than it came in. Kept: {kept}.")
    st.plotly_chart(figures.validation_chart(comparison, height=260), theme=None, key=key)


def card_slots(count: int, most: int = 5) -> list:
    """Columns for `count` metric cards, at most `most` a row (7 in one row cut '97.56 %' to '97.…' at 1280 px)."""
    lines = -(-count // most)
    per_line = -(-count // lines)
    return [card for _ in range(lines) for card in st.columns(per_line)]
