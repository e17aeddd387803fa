"""Latency under concurrency: 1, 2, 4 and 8 fusions or Hessian analyses at once in one process.

Workloads on random weights (shapes are what count): OT fusion of two mlpnet (784-400-200-100-10)
and of two vgg_tiny_nobias (3x32x32), and a light Hessian analysis of the mlpnet (top eigenvalue,
exact trace, 20 Lanczos steps) on 2 x 100 random inputs. Each concurrency level runs that many
threads, started together, each making --calls calls; every thread makes one untimed call before
the start line (first-call set-up is not the work), and --calls is large enough (20) that p95 is
not the max of a handful of samples. 'before' is torch's defaults (a thread per core, OpenMP's
default wait policy); 'after' is otcore.threads' policy as the dashboard sets it. Each runs in its
own child process, since the OpenMP settings are read when torch loads; the load average
(`uptime`) is printed before and after each, as other processes on the machine skew every figure.
'serial share' is calls/s at 1 divided by calls/s at 2 concurrent: the effective share of a call
that cannot overlap another (the GIL, on a machine with 2 free cores); 4 concurrent calls cannot
beat about 4 x that share in p95 / quiet p50. On a loaded machine the p95 column measures the
scheduler as much as the code (a single call's own p95 / p50 shows how much): read p50 / quiet p50 beside it.
Run: python -m bench.concurrency_speed [--calls 20] [--levels 1 2 4 8] [--policy before after]
     [--workloads "fuse vgg_tiny"]
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


WORKLOADS = ("fuse mlpnet", "fuse vgg_tiny", "hessian mlpnet")


def load() -> str:
    """The load averages of `uptime` (1, 5, 15 minutes)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def child(policy: str, levels: list[int], calls: int, names: list[str]) -> list[dict]:
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
    for name in names:
        call = workloads[name]
        for _ in range(3):
            call()  # warm-up: first-call set-up is not the work
        for level in levels:
            latencies: list[float] = []
            lock, start_line = threading.Lock(), threading.Barrier(level + 1)

            def worker() -> None:
                call()  # this thread's own first call, untimed
                start_line.wait()
                for _ in range(calls):
                    clock = time.perf_counter()
                    call()
                    with lock:
                        latencies.append(time.perf_counter() - clock)

            pool = [threading.Thread(target=worker) for _ in range(level)]
            for t in pool:
                t.start()
            start_line.wait()  # the clock starts when every thread is warm
            clock = time.perf_counter()
            for t in pool:
                t.join()
            wall = time.perf_counter() - clock
            q = statistics.quantiles(latencies, n=20, method="inclusive")
            rows.append({"policy": policy, "workload": name, "concurrent": level, "threads": torch.get_num_threads(),
                         "p50": statistics.median(latencies), "p95": q[18], "per_s": len(latencies) / wall})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per thread at each level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--policy", nargs="+", default=["before", "after"], choices=["before", "after"])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.levels, args.calls, args.workloads)))
        return
    rows, loads = [], []
    for policy in args.policy:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                 "OMP_WAIT_POLICY", "OTCORE_THREADS")}
        # The child runs as a script: it finds this checkout's otcore through PYTHONPATH, not an installed one.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        before = load()
        out = subprocess.run([sys.executable, __file__, "--child", policy, "--calls", str(args.calls), "--levels",
                              *map(str, args.levels), "--workloads", *args.workloads],
                             capture_output=True, text=True, env=env, check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
        loads.append(f"{policy}: load average {before} before, {load()} after")
    from bench.common import machine, table

    quiet = {(r["policy"], r["workload"]): r["p50"] for r in rows if r["concurrent"] == 1}
    rate = {(r["policy"], r["workload"], r["concurrent"]): r["per_s"] for r in rows}

    def serial(r: dict) -> str:
        one, two = rate.get((r["policy"], r["workload"], 1)), rate.get((r["policy"], r["workload"], 2))
        return f"{one / two:.2f}" if one and two and r["concurrent"] == 1 else ""

    print(machine())
    print("\n".join(loads) + f"; {args.calls} calls per thread\n")
    print(table(["policy", "workload", "concurrent", "torch threads", "p50 (ms)", "p95 (ms)", "calls/s",
                 "p50 / quiet p50", "p95 / quiet p50", "serial share"],
                [[r["policy"], r["workload"], r["concurrent"], r["threads"], 1000 * r["p50"], 1000 * r["p95"],
                  r["per_s"], r["p50"] / quiet[(r["policy"], r["workload"])],
                  r["p95"] / quiet[(r["policy"], r["workload"])], serial(r)] for r in rows]))


if __name__ == "__main__":
    main()
