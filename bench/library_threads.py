"""A bare library fusion beside two busy torch processes, against the same fusion quiet (issue 24, item 4).

A researcher's notebook: a fresh process that imports otcore.fusion (or torch first, then otcore) and
calls fuse() on two mlpnet parents (784-400-200-100-10, random init, seeds 0 and 1) by weights, with
nothing set by hand. "quiet" runs it alone; "busy" beside two processes that multiply 2,000 x 2,000
matrices in a loop with torch's default threads and wait policy. Each cell is the median of --runs
fresh processes, each the median of --calls warm fuse() calls; the ratio is busy / quiet (target: 4x).
The child imports otcore from PYTHONPATH, so the same script measures another checkout (before/after):
    PYTHONPATH=$PWD python -m bench.library_threads
    cd /tmp && PYTHONPATH=/other/checkout python /this/checkout/bench/library_threads.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from collections.abc import Iterator

from bench.common import machine, table

CHILD = """
import json, os, statistics, sys, time
if sys.argv[1] == "torch-first":
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")  # what the OpenMP runtime reads as torch loads it
    import torch
from otcore.fusion import FusionOptions, fuse
import torch
if sys.argv[1] != "torch-first":
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")  # otcore set it before it imported torch
import otcore
from otcore.models import MlpNet
from otcore.train import init_model

parents = [init_model(MlpNet(784, (400, 200, 100), 10), seed).eval() for seed in (0, 1)]
options = FusionOptions(alignment="ot", mode="weights")
fuse(parents, options)  # warm: first-call allocations and imports outside the clock
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    fuse(parents, options)
    times.append(time.perf_counter() - start)
print(json.dumps({"ms": 1000 * statistics.median(times), "threads": torch.get_num_threads(),
                  "wait": wait, "otcore": otcore.__file__}))
"""

BUSY = """
import torch
x = torch.randn(2000, 2000)
x @ x
print("busy", torch.get_num_threads(), flush=True)
while True:
    x @ x
"""

USER_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "OTCORE_THREADS")


def clean_env() -> dict[str, str]:
    """The environment with no thread setting: what a notebook started from a plain shell sees."""
    return {k: v for k, v in os.environ.items() if k not in USER_THREAD_VARS}


@contextmanager
def busy_processes(count: int) -> Iterator[list[int]]:
    """`count` torch processes multiplying matrices with default threads; yields once each has started its loop."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True, env=clean_env())
             for _ in range(count)]
    try:
        threads = [int(p.stdout.readline().split()[1]) for p in procs]  # each prints once its first product is done
        yield threads
    finally:
        for p in procs:
            p.kill()
            p.wait()


def child(order: str, calls: int) -> dict:
    """One fresh process's median fuse() time and the threads it ran with."""
    with tempfile.TemporaryDirectory() as cwd:  # not the repository: otcore comes from PYTHONPATH
        out = subprocess.run([sys.executable, "-c", CHILD, order, str(calls)], cwd=cwd, capture_output=True,
                             text=True, timeout=600, env={**clean_env(), "OTCORE_CACHE_DIR": cwd})
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_average() -> str:
    """The 1/5/15-minute load averages."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per cell")
    parser.add_argument("--calls", type=int, default=10, help="timed fuse() calls per process")
    parser.add_argument("--orders", default="otcore-first,torch-first")
    args = parser.parse_args()
    rows, where = [], ""
    for order in args.orders.split(","):
        quiet = [child(order, args.calls) for _ in range(args.runs)]
        quiet_load = load_average()
        with busy_processes(2) as busy_threads:
            busy = [child(order, args.calls) for _ in range(args.runs)]
            busy_load = load_average()
        where = quiet[0]["otcore"]
        q, b = statistics.median(r["ms"] for r in quiet), statistics.median(r["ms"] for r in busy)
        rows.append([order, quiet[0]["threads"], quiet[0]["wait"], f"{q:.1f}", quiet_load,
                     f"{b:.1f} ({min(r['ms'] for r in busy):.0f}-{max(r['ms'] for r in busy):.0f})",
                     f"{busy_threads[0]} each", busy_load, f"{b / q:.1f}x"])
    print(f"bare fuse() of two mlpnet parents by weights; {machine()}; otcore from {where}")
    print(table(["import order", "threads", "OMP_WAIT_POLICY at torch's load", "quiet ms", "load (quiet)",
                 "beside 2 busy ms (range)", "busy threads", "load (busy)", "ratio"], rows))


if __name__ == "__main__":
    main()
