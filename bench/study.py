"""The study end to end, as a user runs it: a 6-point sweep (structured and unstructured pruning at 30, 50
and 70 %) on digits with mlpnet, 2 retraining epochs per retrained network, and the Hessian analysis
(top-3 eigenvalues, exact trace, a 100-step density, the perturbation curve) of 5 networks per point;
from an empty cache, then again from the cache, then its LaTeX table of traces.

Each row is the wall time of a whole `python -m otcore ...` process, imports included: a sweep
answered from the cache never imports torch (about 2 s of a process that computes).

Run: python -m bench.study
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, table

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = ["parents", "vanilla", "OT fusion", "retrained fusion", "retrained vanilla"]
SWEEP = [sys.executable, "-m", "otcore", "sweep", "--dataset", "digits", "--arch", "mlpnet",
         "--grid", "prune.type=structured,unstructured", "--fractions", "0.3,0.5,0.7", "--retrain-epochs", "2",
         "--analyse", *NETWORKS, "--lanczos-iters", "100", "--top-k", "3", "--json"]


def run(args: list[str], env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[2:5])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    env = {**os.environ, "OTCORE_CACHE_DIR": tempfile.mkdtemp(prefix="bench-study-")}
    imports = {}
    for module in ("otcore.pipeline", "otcore.cli"):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], env=env, cwd=ROOT, check=True)
        imports[module] = time.perf_counter() - start
    cold, first = run(SWEEP, env)
    warm, again = run(SWEEP, env)
    latex_s, latex = run([sys.executable, "-m", "otcore", "table", first["sweep"][:12], "--metric", "trace",
                          "--format", "latex", "--json"], env)
    text = subprocess.run([sys.executable, "-m", "otcore", "table", first["sweep"][:12], "--metric", "trace",
                           "--format", "latex"], capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
    rows = [["sweep, empty cache", f"{cold:.1f}", len(first["rows"]), len(first["failed"])],
            ["sweep, from the cache", f"{warm:.2f}", len(again["rows"]), len(again["failed"])],
            ["table --metric trace --format latex", f"{latex_s:.2f}", len(latex["rows"]), 0],
            *([f"(a process importing {m} only)", f"{t:.2f}", "", ""] for m, t in imports.items())]
    print(f"# The study's sweep on digits (mlpnet)\n\nMachine: {machine()}; load average "
          f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print(table(["run", "wall s", "points", "failed"], rows))
    same = [r["ot_fusion"] for r in first["rows"]] == [r["ot_fusion"] for r in again["rows"]]
    print(f"\nSame OT fusion accuracies from the cache: {same}.\n\nThe trace table (LaTeX):\n\n{text}")


if __name__ == "__main__":
    main()
