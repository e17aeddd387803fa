"""Hostile checkpoints (tests/faults/hostile_files.py): how fast and in how much memory each is refused.

Two measurements per file: `load_checkpoint(path, model=mlpnet)` in one warm process (seconds of the
call; rise of peak RSS above the RSS before it, the peak reset per file through /proc/self/clear_refs),
and the whole CLI `python -m otcore fuse --parents good FILE` (wall seconds; peak RSS above the same
command refusing a missing file).

Run: python -m bench.hostile_checkpoints
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench.common import machine, table  # noqa: E402
from otcore.checkpoints import save_checkpoint  # noqa: E402
from tests.faults.hostile_files import HOSTILE, fuse_measured, model_state  # noqa: E402

# Runs in a fresh process so that building the files (a 10^6-entry JSON) does not count.
_LOADER = """
import json, sys, time
from pathlib import Path
from otcore.checkpoints import CheckpointError, load_checkpoint
from otcore.models import build_model
def status(field):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(field + ":")).split()[1]) * 1024
model = build_model("mlpnet", (1, 8, 8), 10)
load_checkpoint(sys.argv[1], model=model)  # warm-up: first-call set-up is not the refusal's cost
for path in sys.argv[2:]:
    open("/proc/self/clear_refs", "w").write("5")
    rss, start = status("VmRSS"), time.perf_counter()
    try:
        load_checkpoint(path, model=model)
        outcome = "ACCEPTED"
    except CheckpointError as err:
        outcome = str(err)
    print(json.dumps([path, time.perf_counter() - start, status("VmHWM") - rss, outcome]), flush=True)
"""


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    good = folder / "good.checkpoint"
    save_checkpoint(model_state(), good, format="paper")
    files = {kind: make(folder)[0] for kind, make in HOSTILE.items()}
    done = subprocess.run([sys.executable, "-c", _LOADER, str(good), *map(str, files.values())], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={"PATH": ""})  # -c: cwd=ROOT is on sys.path
    loads = {Path(p).name: (s, rise, msg) for p, s, rise, msg in map(json.loads, done.stdout.splitlines())}
    _, baseline = fuse_measured(good, folder / "missing.checkpoint", folder / "cache")
    rows = []
    for kind, path in files.items():
        start = time.perf_counter()
        cli, peak = fuse_measured(good, path, folder / "cache")
        wall = time.perf_counter() - start
        seconds, rise, message = loads[path.name]
        size = path.stat().st_size if path.is_file() else 0
        rows.append([kind, f"{size:,}", f"{1000 * seconds:.1f}", f"{rise / 2**20:.1f}", wall,
                     f"{(peak - baseline) / 2**20:+.1f}", cli.returncode, message[:70]])
    print(f"Hostile checkpoints refused; {machine()}; CLI baseline peak {baseline / 2**20:.0f} MiB\n")
    print(table(["file", "bytes", "load ms", "load peak rise MiB", "CLI wall s", "CLI peak vs baseline MiB",
                 "exit", "message"], rows))


if __name__ == "__main__":
    main()
