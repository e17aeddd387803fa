"""Parents: the networks to fuse, trained per seed or loaded from checkpoints; scores and downloads."""
from __future__ import annotations

import streamlit as st

from otcore import figures
from ui import arch_check, page, sidebar, widgets

page.page_setup("Parents")
ws = sidebar.workspace()
page.header("Parents",
            "The networks to fuse: trained on the workspace's dataset, one per seed, or loaded from checkpoint "
            "files. Set them up in the sidebar; training reports its progress there and is cached.")

if ws is not None:
    arch_check.show(ws.data, ws.model)
parent_set = sidebar.require_parents(ws)
st.markdown(f"**{parent_set.describe()}**, on device `{parent_set.device_label}`.")

best = max(p.metrics["test"]["accuracy"] for p in parent_set.parents)
for card, parent in zip(st.columns(max(len(parent_set.parents), 4)), parent_set.parents):
    test, train = parent.metrics["test"], parent.metrics["train"]
    gap = test["accuracy"] - best
    card.metric(parent.name, f"{test['accuracy']:.2f} %", "best" if gap == 0 else f"{gap:+.2f} pp",
                delta_color="off" if gap == 0 else "normal", delta_arrow="off" if gap == 0 else "auto", border=True,
                help=f"test accuracy; test loss {test['loss']:.4f}, train accuracy {train['accuracy']:.2f} %")
widgets.show_table(figures.parents_table(parent_set.parents))

if any("class_counts" in p.metrics for p in parent_set.parents):
    st.subheader("What each parent saw", anchor=False)
    split = parent_set.train.partition
    st.caption("Training examples per class. " + ("Every parent saw the whole train split." if split == "iid" else
               f"'{split}' partition: each parent saw its own part of the train split (set in the sidebar)."))
    st.plotly_chart(figures.class_histogram(parent_set.parents, height=280), theme=None,
                    key="parents.chart.classes")

st.subheader("Downloads", anchor=False)
st.caption("Each parent in the paper's checkpoint format (`model_state_dict`, `test_accuracy`, `epoch`); it loads "
           "back here, in `python -m otcore fuse --parents`, and in the reference code.")
buttons = st.columns(max(len(parent_set.parents), 4))
for button, parent in zip(buttons, parent_set.parents):
    with button:
        widgets.checkpoint_button(
            parent.model, f"{parent_set.data.name}-{parent_set.model.arch}-{parent.name.replace(' ', '')}.checkpoint",
            key=f"parents.download.{parent.name}", label=parent.name,
            meta={"test_accuracy": parent.metrics["test"]["accuracy"], "epoch": parent_set.train.epochs})
