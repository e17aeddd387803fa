"""A 12-point digits sweep on the local executor and on a local Ray instance: wall times and start-up.

Run: python -m bench.sweep [--epochs 10] [--retrain-epochs 2] [--cpus 2] [--repeats 1]. The grid is
prune.fraction 0.3,0.5,0.7 x prune.type unstructured,structured x seed 0,1 of mlpnet (4 parents, 12
points); each run starts from an empty cache, so it trains the parents and computes every point.
Ray's start-up is timed apart from the sweep: `ray.init` of a local instance, then a warm-up task per
CPU until every worker has imported torch and otcore. Both executors run 1 torch thread per point.
Target: Ray sweep <= 1.3 x local sweep, start-up apart.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from bench.common import machine, table  # noqa: E402
from otcore.cache import DiskCache  # noqa: E402
from otcore.config import PruneSpec, TrainSpec  # noqa: E402
from otcore.figures import sweep_table  # noqa: E402
from otcore.sweep import LocalExecutor, RayExecutor, SweepResult, SweepSpec, parse_grid, run_sweep  # noqa: E402

GRID = ("prune.fraction=0.3,0.5,0.7", "prune.type=unstructured,structured", "seed=0,1")
SAME = ["method", "test acc (%)", "train acc (%)", "sparsity", "parameters", "key"]


def timed(sweep: SweepSpec, executor: object) -> tuple[SweepResult, float]:
    """A sweep from an empty cache, and its wall time."""
    cache = DiskCache(tempfile.mkdtemp(prefix="bench-sweep-"))
    start = time.perf_counter()
    result = run_sweep(sweep, executor, cache)
    return result, time.perf_counter() - start


def warm_worker() -> int:
    """Import what a point needs (torch, otcore) in a Ray worker, and hold it a moment so each worker gets one."""
    import importlib
    import os

    importlib.import_module("otcore.pipeline")

    time.sleep(1.0)
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=TrainSpec().epochs, help="training epochs of each parent")
    parser.add_argument("--retrain-epochs", type=int, default=2, help="masked retraining of the fused net per point")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each executor; the fastest is reported")
    args = parser.parse_args()
    sweep = SweepSpec(parse_grid(GRID), train=TrainSpec(epochs=args.epochs),
                      prune=PruneSpec(retrain_epochs=args.retrain_epochs), device="cpu")
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    workers = set(ray.get([ray.remote(warm_worker).remote() for _ in range(args.cpus)]))
    warm_s = time.perf_counter() - start
    runs: dict[str, list[tuple[SweepResult, float]]] = {"local": [], "ray": []}
    try:
        for _ in range(args.repeats):  # alternated, so a busy spell of the machine hits both
            runs["local"].append(timed(sweep, LocalExecutor()))
            runs["ray"].append(timed(sweep, RayExecutor(cpus_per_task=1)))
    finally:
        start = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - start

    (local, local_s), (on_ray, ray_s) = (min(runs[name], key=lambda r: r[1]) for name in ("local", "ray"))
    expected = sweep_table(local.points, local.fields)[SAME]
    same = all(sweep_table(r.points, r.fields)[SAME].equals(expected) for name in runs for r, _ in runs[name])
    rows = []
    for name, result, wall, startup in (("local", local, local_s, 0.0), ("ray", on_ray, ray_s, init_s + warm_s)):
        per_point = statistics.median(p.seconds for p in result.points)
        rows.append([name, startup, wall, wall + startup, len(result.points), len(result.failed), per_point,
                     wall / local_s])
    print(f"12-point digits sweep (mlpnet, parents {args.epochs} epochs, retraining {args.retrain_epochs} epochs "
          f"per point; 1 torch thread per point on both), fastest of {args.repeats}, {machine()}\n")
    print(table(["executor", "start-up (s)", "sweep (s)", "total (s)", "points", "failed", "median point task (s)",
                 "sweep / local"], rows))
    verdict = "met" if ray_s <= 1.3 * local_s else "NOT met"
    print(f"\nRay start-up: ray.init of a local {args.cpus}-CPU instance {init_s:.1f} s, then {warm_s:.1f} s until "
          f"{len(workers)} workers had imported torch and otcore; shut-down {shutdown_s:.1f} s.\n"
          f"Target, Ray sweep <= 1.3 x local sweep (start-up apart): {ray_s:.1f} s vs 1.3 x {local_s:.1f} s = "
          f"{1.3 * local_s:.1f} s, {verdict}. Same rows on both executors, every run: {'yes' if same else 'NO'}.")


if __name__ == "__main__":
    main()
