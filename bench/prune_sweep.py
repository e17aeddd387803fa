"""Prune-fraction sweep on digits: accuracy of every method per fraction and pruning type.

Run: python -m bench.prune_sweep [--arch mlpnet]. Prints the table the Pruning page plots and
the time of one uncached point (prune two parents, fuse, evaluate every method, no retraining).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench.common import machine, table  # noqa: E402
from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, TrainSpec  # noqa: E402
from otcore.pipeline import ENSEMBLE, OT_FUSION, VANILLA, prune_and_compare, train_parents  # noqa: E402

FRACTIONS = [0.0, 0.3, 0.5, 0.7, 0.9]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="mlpnet")
    args = parser.parse_args()
    os.environ["OTCORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-prune-")
    data, model = DataSpec(), ModelSpec(args.arch)
    parents = train_parents(data, model, TrainSpec(), [0, 1])
    prune_and_compare(data, model, parents, PruneSpec(fraction=0.1), FusionSpec())  # warm-up (imports, POT)
    rows, point_seconds = [], []
    for kind in ("unstructured", "structured"):
        for fraction in FRACTIONS:
            start = time.perf_counter()
            c = prune_and_compare(data, model, parents, PruneSpec(fraction=fraction, type=kind), FusionSpec())
            point_seconds.append(time.perf_counter() - start)
            acc = {r.method: r.test.accuracy for r in c.rows}
            rows.append([kind, fraction, acc["parent 1"], acc["parent 2"], acc[VANILLA], acc[ENSEMBLE],
                         acc[OT_FUSION], c.extra["sparsity"][OT_FUSION], point_seconds[-1]])
    print(f"Prune-fraction sweep, {args.arch} on digits (test accuracy %), {machine()}\n")
    print(table(["type", "fraction", "parent 1", "parent 2", "vanilla avg", "ensemble", "OT fusion",
                 "OT sparsity", "point s"], rows))
    start = time.perf_counter()
    prune_and_compare(data, model, parents, PruneSpec(fraction=0.5), FusionSpec())
    cached = time.perf_counter() - start
    point_seconds.sort()
    print(f"\nOne uncached point: median {point_seconds[len(point_seconds) // 2]:.2f} s, "
          f"max {point_seconds[-1]:.2f} s; a cached point: {cached:.3f} s")


if __name__ == "__main__":
    main()
