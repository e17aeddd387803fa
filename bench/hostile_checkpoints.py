"""Hostile checkpoints (tests/faults/hostile_files.py): how fast and in how much memory each is refused.

First table, two measurements per file: `load_checkpoint(path, model=mlpnet)` in one warm process (seconds of the
call; rise of peak RSS above the RSS before it, the peak reset per file through /proc/self/clear_refs),
and the whole CLI `python -m otcore fuse --parents good FILE` (wall seconds; peak RSS above the same
command refusing a missing file).

Second table: the hostile pickle shapes of tests/faults/hostile_pickles.py (deep keys and values, shared-reference
DAGs, containers grown after sharing, huge memo indices, colliding keys) at growing sizes, in a torch zip, a legacy
torch file and a CIFAR batch: milliseconds and peak RSS rise of refusing each in one warm process.

Run: python -m bench.hostile_checkpoints [--shapes-only]
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
from tests.faults.hostile_pickles import CARRIERS, SHAPES  # noqa: E402

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


# The same per file for pickle shapes: argv[1] is the carrier; a warm-up reads an honest file of that kind first.
_SHAPE_READER = """
import io, json, pickle, sys, time
import numpy as np, torch
from otcore.checkpoints import CheckpointError, load_checkpoint
from otcore.cifar_pickle import read_batch
from otcore.datafiles import DataError
def status(field):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(field + ":")).split()[1]) * 1024
cifar = sys.argv[1] == "CIFAR batch"
read = (lambda raw: read_batch(raw, "labels", 10)) if cifar else load_checkpoint
buffer = io.BytesIO()
torch.save({"w": torch.ones(3)}, buffer, _use_new_zipfile_serialization=sys.argv[1] == "torch zip")
read(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}) if cifar else buffer.getvalue())
for path in sys.argv[2:]:
    raw = open(path, "rb").read()
    open("/proc/self/clear_refs", "w").write("5")
    rss, start = status("VmRSS"), time.perf_counter()
    try:
        read(raw)
        outcome = "ACCEPTED"
    except (CheckpointError, DataError) as err:
        outcome = str(err)
    print(json.dumps([path, time.perf_counter() - start, status("VmHWM") - rss, outcome]), flush=True)
"""


def shapes_table(folder: Path) -> str:
    """Refusing each pickle shape at each size in each carrier: ms and peak RSS rise, one warm process a carrier."""
    rows = []
    for carrier, wrap in CARRIERS.items():
        files = {}
        for shape, (make, sizes, _) in SHAPES.items():
            for size in sizes:
                path = folder / f"{carrier}-{shape}-{size}".replace(" ", "-")
                path.write_bytes(wrap(make(size)))
                files[str(path)] = (shape, size)
        done = subprocess.run([sys.executable, "-c", _SHAPE_READER, carrier, *files], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env={"PATH": ""})
        if done.returncode:
            raise SystemExit(f"{carrier}: the reader exited with {done.returncode}: {done.stderr[-1000:]}")
        for path, seconds, rise, message in map(json.loads, done.stdout.splitlines()):
            shape, size = files[path]
            rows.append([carrier, shape, f"{size:,}", f"{Path(path).stat().st_size:,}", f"{1000 * seconds:.1f}",
                         f"{rise / 2**20:.1f}", message.split(": ", 1)[-1][:70]])
    return table(["file", "shape", "size", "bytes", "ms", "peak rise MiB", "message"], rows)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    if "--shapes-only" not in sys.argv[1:]:
        checkpoints_table(folder)
    print(f"\nHostile pickle shapes refused; {machine()}\n")
    print(shapes_table(folder))


def checkpoints_table(folder: Path) -> None:
    """The first table: every HOSTILE file through load_checkpoint and through the CLI."""
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
