"""Latency of the dashboard's pages, server side, from an empty cache (digits, mlpnet, defaults).

Every page is run through Streamlit's AppTest in this process (the same script runs a real
server does, without the browser): a first render of each page, the cold steps (training the
two default parents, the first Fuse), then the same configuration again, served from memory
(this server has seen it) and from the disk cache (a new server process: `st.cache_resource`
cleared). Each warm timing is the median of --repeats runs (time.perf_counter).

Run: python -m bench.app_latency [--repeats 3] [--epochs 10] (or python -m bench.app_latency).
Prints one Markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(action: Callable[[], object]) -> float:
    """Seconds one call of `action` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per warm timing (median)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the parents (sidebar default 10)")
    args = parser.parse_args()
    cache_dir = tempfile.mkdtemp(prefix="otcore-app-latency-")
    os.environ["OTCORE_CACHE_DIR"] = cache_dir  # before otcore reads it
    try:
        run(args)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    """Every timing, then the table."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def app(script: str, state: dict | None = None) -> AppTest:
        at = AppTest.from_file(str(REPO / script), default_timeout=1200)
        for k, v in (state or {}).items():
            at.session_state[k] = v
        return at

    def check(at: AppTest) -> AppTest:
        problems = [e.value for e in at.exception] + [e.value for e in at.error] + [e.value for e in at.sidebar.error]
        if problems:
            raise SystemExit(f"the page failed: {problems[0]}")
        return at

    def warm(action: Callable[[], object]) -> float:
        return statistics.median(timed(action) for _ in range(args.repeats))

    rows: list[list] = []
    home = app("app.py", {"ws.epochs": args.epochs})
    rows.append(["Home", "first render in a fresh process (imports torch, otcore, plotly), empty cache",
                 timed(lambda: check(home.run()))])
    from bench.common import machine, table  # imports torch: after the first render, which must pay for it
    rows.append(["Home", "render again", warm(lambda: check(home.run()))])
    home.button(key="ws.load").click()
    rows.append(["sidebar", f"Train / load parents, cold: trains 2 parents x {args.epochs} epochs",
                 timed(lambda: check(home.run()))])
    parent_set = home.session_state["parents"]
    state = {"parents": parent_set, "ws.epochs": args.epochs}

    parents = app("pages/1_Parents.py", state)
    rows.append(["Parents", "first render", timed(lambda: check(parents.run()))])
    rows.append(["Parents", "render again", warm(lambda: check(parents.run()))])

    fusion = app("pages/2_Fusion.py", state)
    rows.append(["Fusion", "first render (settings, no result)", timed(lambda: check(fusion.run()))])
    fusion.button(key="fusion.fuse").click()
    rows.append(["Fusion", "Fuse, cold: fuse + score 5 methods + store", timed(lambda: check(fusion.run()))])
    rows.append(["Fusion", "re-render with the result (same configuration, from memory)",
                 warm(lambda: check(fusion.run()))])

    def press_again() -> None:
        fusion.button(key="fusion.fuse").click()
        check(fusion.run())

    rows.append(["Fusion", "Fuse again, same configuration (from memory)", warm(press_again)])
    layers = fusion.selectbox(key="fusion.plan_layer").options

    def pick_layer() -> None:
        fusion.selectbox(key="fusion.plan_layer").set_value(layers[-1].split("  (")[0])
        check(fusion.run())

    rows.append(["Fusion", "pick another transport-plan layer", warm(pick_layer)])

    def new_server() -> None:
        st.cache_resource.clear()
        st.cache_data.clear()

    def load_from_disk() -> None:
        new_server()
        at = app("app.py", {"ws.epochs": args.epochs}).run()
        at.button(key="ws.load").click()
        check(at.run())

    rows.append(["sidebar", "Train / load parents, seen before (disk cache, memory cleared)", warm(load_from_disk)])

    def fuse_from_disk() -> None:
        new_server()
        at = app("pages/2_Fusion.py", state).run()
        at.button(key="fusion.fuse").click()
        check(at.run())

    rows.append(["Fusion", "render + Fuse, seen before (disk cache, memory cleared)", warm(fuse_from_disk)])
    home_full = app("app.py")
    rows.append(["Home", "render with the cache browser filled (3 entries)", warm(lambda: check(home_full.run()))])

    print(f"App latency, server side (AppTest), digits / mlpnet, seconds; {machine()}; "
          f"warm rows: median of {args.repeats}\n")
    print(table(["page", "what", "seconds"], rows))


if __name__ == "__main__":
    main()
