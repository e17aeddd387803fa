"""The frame of every page: page config, the compact top margin, title and caption; the sidebar's page links."""
from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

APP_NAME = "OT Fusion Studio"
# The sidebar's page links: (script, title, icon); Home (app.py) comes first.
PAGES = (("pages/1_Parents.py", "Parents", ":material/group:"),
         ("pages/2_Fusion.py", "Fusion", ":material/merge:"),
         ("pages/3_Pruning.py", "Pruning", ":material/content_cut:"),
         ("pages/4_Hessian.py", "Hessian", ":material/ssid_chart:"),
         ("pages/5_Landscape.py", "Landscape", ":material/landscape:"),
         ("pages/6_Sweeps.py", "Sweeps", ":material/grid_on:"))
HOME = "app.py"
HOME_ICON = ":material/home:"


_PAGE_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding: 3rem 2.5rem 4rem; }
[data-testid="stSidebarUserContent"] { padding-top: 0.5rem; }
</style>"""


def page_setup(title: str) -> None:
    """Page config shared by every page: wide layout, tab title, compact top margin."""
    st.set_page_config(page_title=f"{title} · {APP_NAME}" if title != APP_NAME else APP_NAME, layout="wide",
                       initial_sidebar_state="expanded")
    st.html(_PAGE_CSS)



def header(title: str, caption: str) -> None:
    """The page's title and its one-line caption (what the user is looking at)."""
    st.title(title, anchor=False)
    st.caption(caption)


def page_links(container: Any) -> None:
    """Home and every page, titled and with icons (Streamlit's own list would call Home 'app')."""
    try:
        container.page_link(HOME, label="Home", icon=HOME_ICON)
    except StreamlitPageNotFoundError:
        return  # a page run on its own (AppTest.from_file): links resolve against app.py, which is not running
    for script, title, icon in PAGES:
        container.page_link(script, label=title, icon=icon)
    container.divider()
