"""The Hessian step of the study on digits: four mlpnets (two parents, vanilla average, OT fusion),
each with top-3 eigenvalues, trace, a 100-step Lanczos density and a 21-point curve.

Run: python -m bench.analysis [--threads N]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch  # noqa: E402

from bench.common import machine, table  # noqa: E402
from otcore.analysis import curvatures  # noqa: E402
from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, TrainSpec  # noqa: E402
from otcore.pipeline import ENSEMBLE, fuse_and_compare, train_parents  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OTCORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-analysis-")
    data, model = DataSpec(), ModelSpec()
    parents = train_parents(data, model, TrainSpec(), [0, 1])
    rows = [r for r in fuse_and_compare(data, model, parents, FusionSpec()).rows if r.method != ENSEMBLE]
    spec = HessianSpec(top_k=3, lanczos_iters=100, lambda_points=21)  # the test split: 450 images, one batch
    start = time.perf_counter()
    results = curvatures(data, rows, spec)
    total = time.perf_counter() - start
    start = time.perf_counter()
    curvatures(data, rows, spec)
    again = time.perf_counter() - start
    print(f"Hessian analysis of {len(rows)} digits mlpnets, {machine()}, {args.threads} torch threads\n")
    print(table(["network", "top eigenvalues", "trace", "analysis s", "top-3 s", "trace s", "density s",
                 "test acc %"],
                [[c.name, ", ".join(f"{v:.3f}" for v in c.top_eigenvalues), c.trace, c.timings["total"],
                  c.timings["top_eigenvalues"], c.timings["trace"], c.timings["density"], c.test_accuracy]
                 for c in results]))
    print(f"\nAll {len(rows)} networks: {total:.1f} s (curves included); the same again from the cache: {again:.3f} s")


if __name__ == "__main__":
    main()
