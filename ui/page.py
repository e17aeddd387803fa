"""The frame of every page: page config, the compact top margin, title and caption; the navigation's entries."""
from __future__ import annotations

import streamlit as st

APP_NAME = "OT Fusion Studio"
# The navigation: (script, title, icon, url path); app.py adds the Home page in front.
PAGES = (("app_pages/1_Parents.py", "Parents", ":material/group:", "Parents"),
         ("app_pages/2_Fusion.py", "Fusion", ":material/merge:", "Fusion"),
         ("app_pages/3_Pruning.py", "Pruning", ":material/content_cut:", "Pruning"),
         ("app_pages/4_Hessian.py", "Hessian", ":material/ssid_chart:", "Hessian"),
         ("app_pages/5_Landscape.py", "Landscape", ":material/landscape:", "Landscape"),
         ("app_pages/6_Sweeps.py", "Sweeps", ":material/grid_on:", "Sweeps"))
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
