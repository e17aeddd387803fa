"""Foundation benchmark: `python -m otcore train --dataset digits --arch mlpnet --json` from an
empty cache, then the same call answered from the cache (wall time of the whole process).

Run: python -m bench.train_cache
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench.common import machine, table  # noqa: E402

CMD = [sys.executable, "-m", "otcore", "train", "--dataset", "digits", "--arch", "mlpnet", "--json"]


def run(env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(CMD, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def main() -> None:
    env = {**os.environ, "OTCORE_CACHE_DIR": tempfile.mkdtemp(prefix="bench-train-")}
    rows = []
    for label in ("empty cache", "cached", "cached again"):
        seconds, out = run(env)
        accs = ", ".join(f"{p['test_accuracy']:.2f}" for p in out["parents"])
        rows.append([label, seconds, accs, all(p["cached"] for p in out["parents"])])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import otcore.pipeline"], check=True, cwd=ROOT)
    rows.append(["import only", time.perf_counter() - start, "", ""])
    print(f"`{' '.join(CMD[1:])}`, {machine()}\n")
    print(table(["run", "wall s", "test accuracy % (2 parents)", "from cache"], rows))


if __name__ == "__main__":
    main()
