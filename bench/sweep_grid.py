"""What a grid costs before any point runs: making its spec (values checked, points resolved and keyed for
the shared-key check), and its size alone, from 100 to 1,000,000 points.

Run: python -m bench.sweep_grid [--repeats 3]. Grids are prune.fraction (n values) x seed (n values) of
mlpnet on digits; nothing is trained. This is what chose LARGE_GRID (10,000):
below it the check before any work stays near a second on one core; above it, only the size is computed
until the user confirms (CLI --confirm-size N).
"""
from __future__ import annotations

import argparse
import statistics
import time

from bench.common import machine, table
from otcore.sweep import LARGE_GRID, SweepSpec, parse_grid


def grid(side: int) -> tuple:
    return parse_grid([f"prune.fraction={','.join(str(i / (side + 1)) for i in range(side))}",
                       f"seed={','.join(map(str, range(side)))}"])


def main() -> None:
    """Print a table of the time to make each grid's spec, and to resolve and key its points."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for side in (10, 32, 100, 1000):
        entries = grid(side)
        made = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            spec = SweepSpec(entries, device="cpu")
            made.append(time.perf_counter() - start)
        keyed = "not run" if spec.size > 100_000 else None
        if keyed is None:
            start = time.perf_counter()
            spec.check_points(spec.points())
            keyed = f"{time.perf_counter() - start:.2f}"
        rows.append([f"{spec.size:,}", "yes" if spec.size <= LARGE_GRID else "no (size only)",
                     statistics.median(made), keyed])
    print(f"Grid cost before any work ({machine()}); median of {args.repeats}, seconds.\n")
    print(table(["points", "checked when made", "SweepSpec(...) s", "resolve + key + check s"], rows))


if __name__ == "__main__":
    main()
