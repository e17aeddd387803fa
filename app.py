"""OT Fusion Studio (`streamlit run app.py`): the Home page: what the dashboard does, the shared workspace
(sidebar) and a browser of the cache. The other pages are the files of pages/ (the design card's layout);
the sidebar lists them, with Home first, through ui.sidebar's page links (st.navigation is not used: with a
pages/ folder Streamlit serves a deep link such as /Fusion from the folder directly, bypassing it).
"""
from __future__ import annotations

import streamlit as st

from otcore import figures
from otcore.cache import default_cache
from ui import page, sidebar, widgets

MAX_EXPANDERS = 30  # entries whose config and metrics are shown in full


def home() -> None:
    """What this is, the workspace, and a browser of cached_models/."""
    page.page_setup(page.APP_NAME)
    sidebar.workspace()
    st.title(page.APP_NAME, anchor=False)
    st.markdown(
        "Fuse trained networks by **optimal transport** (Singh & Jaggi, *Model Fusion via Optimal Transport*, "
        "NeurIPS 2020) and judge the result: each parent, vanilla weight averaging, the prediction ensemble, "
        "OT fusion and fine-tuned fusion side by side.\n"
        "- **Parents**: train parents on the workspace's dataset (one per seed) or load checkpoints, "
        "including the paper's.\n"
        "- **Fusion**: align neurons layer by layer with OT plans (from weights or activations, exact or "
        "Sinkhorn) or weight matching, average, compare; transport plans and a downloadable report.\n"
        "- **Pruning** and **Hessian**: prune before or after fusion, retrain, and measure how flat the "
        "fused network's loss is (top eigenvalues, trace, spectral density).\n\n"
        "Start in the sidebar: pick a dataset and architecture, press **Train / load parents**, then open a page.")

    cache = default_cache()
    listing = cache.listing()  # verified: a damaged or malformed entry is skipped, never shown
    rows = listing.rows
    st.subheader("Cache", anchor=False)
    if listing.warning():
        st.warning(f"{listing.warning()}; they are recomputed when next needed.", icon=":material/warning:")
    total = figures.human_size(sum(r.size for r in rows))
    st.caption(f"Every step that takes time is stored in `{cache.root}` by a hash of its settings; "
               f"{len(rows)} entries, {total}. A setting seen before returns at once.")
    if not rows:
        st.info("The cache is empty: trained parents and fusion results appear here once computed.",
                icon=":material/inventory_2:")
        return
    kinds = sorted({r.kind for r in rows})
    kind = st.segmented_control("Kind", ["all", *kinds], default="all", key="home.kind")
    shown = [r for r in rows if kind in (None, "all") or r.kind == kind]
    widgets.show_table(figures.manifest_table(shown))
    st.caption("Details, newest first" + (f" (the {MAX_EXPANDERS} newest)" if len(shown) > MAX_EXPANDERS else ""))
    for row in shown[:MAX_EXPANDERS]:
        table = figures.manifest_table([row]).iloc[0]
        with st.expander(f"{row.kind} · {table['dataset']} / {table['arch']} · {table['headline'] or row.key}"
                         f" · {table['created']}"):
            st.caption(f"key `{row.key}` · {table['size']}")
            config_col, metrics_col = st.columns(2)
            config_col.markdown("**config**")
            config_col.json(row.config, expanded=2)
            metrics_col.markdown("**metrics**")
            metrics_col.json(row.metrics, expanded=1)


home()
