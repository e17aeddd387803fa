"""The Streamlit side of OT Fusion Studio: session state, memo, widgets, sidebar, page frame, pipeline runs.

Pages import the modules (`from ui import runs, sidebar`); `otcore` never imports this package.
"""
from otcore.threads import DASHBOARD_WORKERS, apply_policy

apply_policy(workers=DASHBOARD_WORKERS)  # once per server process, before any tensor work of any session
