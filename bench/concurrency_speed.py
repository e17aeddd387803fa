"""Latency under concurrency: 1, 2, 4 and 8 fusions or Hessian analyses at once in one process.

Workloads on random weights (shapes are what count): OT fusion of two mlpnet (784-400-200-100-10)
and of two vgg_tiny_nobias (3x32x32), and a light Hessian analysis of the mlpnet (top eigenvalue,
exact trace, 20 Lanczos steps) on 2 x 100 random inputs. Each concurrency level runs that many
threads, started together, each making --calls calls. 'before' is torch's defaults (a thread per
core, OpenMP's default wait policy); 'after' is otcore.threads' policy as the dashboard sets it.
Each runs in its own child process, since the OpenMP settings are read when torch loads.
Run: python -m bench.concurrency_speed [--calls 4] [--levels 1 2 4 8] [--policy before after]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(policy: str, levels: list[int], calls: int) -> list[dict]:
    """Measure every workload at every level under one policy (run in a fresh process)."""
    if policy == "after":
        from otcore.threads import DASHBOARD_WORKERS, apply_policy

        apply_policy(workers=DASHBOARD_WORKERS)
    import torch

    from otcore.config import FusionSpec, HessianSpec
    from otcore.fusion import fuse
    from otcore.hessian import analyse
    from otcore.models import build_model
    from otcore.train import init_model

    def pair(arch: str, shape: tuple[int, ...]) -> list[torch.nn.Module]:
        return [init_model(build_model(arch, shape, 10), s).eval() for s in (0, 1)]

    mlps, vggs = pair("mlpnet", (1, 28, 28)), pair("vgg_tiny_nobias", (3, 32, 32))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g))
               for _ in range(2)]
    light = HessianSpec(top_k=1, power_iters=20, trace_method="exact", lanczos_iters=20)
    workloads = {"fuse mlpnet": lambda: fuse(mlps, FusionSpec()),
                 "fuse vgg_tiny": lambda: fuse(vggs, FusionSpec()),
                 "hessian mlpnet": lambda: analyse(mlps[0], batches, light)}
    rows = []
    for name, call in workloads.items():
        call()  # warm-up: first-call set-up is not the work
        for level in levels:
            latencies: list[float] = []
            lock, start_line = threading.Lock(), threading.Barrier(level)

            def worker() -> None:
                start_line.wait()
                for _ in range(calls):
                    clock = time.perf_counter()
                    call()
                    with lock:
                        latencies.append(time.perf_counter() - clock)

            pool = [threading.Thread(target=worker) for _ in range(level)]
            clock = time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            wall = time.perf_counter() - clock
            q = statistics.quantiles(latencies, n=20, method="inclusive")
            rows.append({"policy": policy, "workload": name, "concurrent": level, "threads": torch.get_num_threads(),
                         "p50": statistics.median(latencies), "p95": q[18], "per_s": len(latencies) / wall})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4, help="calls per thread at each level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--policy", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.levels, args.calls)))
        return
    rows = []
    for policy in args.policy:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                 "OMP_WAIT_POLICY", "OTCORE_THREADS")}
        out = subprocess.run([sys.executable, __file__, "--child", policy, "--calls", str(args.calls), "--levels",
                              *map(str, args.levels)], capture_output=True, text=True, env=env, check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    from bench.common import machine, table

    quiet = {(r["policy"], r["workload"]): r["p50"] for r in rows if r["concurrent"] == 1}
    print(machine())
    print("uptime: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() + "\n")
    print(table(["policy", "workload", "concurrent", "torch threads", "p50 (ms)", "p95 (ms)", "calls/s",
                 "p95 / quiet p50"],
                [[r["policy"], r["workload"], r["concurrent"], r["threads"], 1000 * r["p50"], 1000 * r["p95"],
                  r["per_s"], r["p95"] / quiet[(r["policy"], r["workload"])]] for r in rows]))


if __name__ == "__main__":
    main()
