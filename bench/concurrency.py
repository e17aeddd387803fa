"""Stress: N threads of mixed actions on the same memoised digits parents; every result against the sequential one.

Actions (round-robin, each thread starting at its own offset): fuse by activations (100 samples),
prune 50 % and evaluate, exact Hessian trace, train a fresh parent for one epoch, plain prediction.
Each runs on the two parents every thread shares, as the dashboard's sessions share st.cache_resource
models. Reports actions per second, errors, and every result that differs from the sequential one.
Run: python -m bench.concurrency [--threads 2 4 8] [--seconds 60]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable

from otcore.threads import DASHBOARD_WORKERS, apply_policy  # noqa: E402

apply_policy(workers=DASHBOARD_WORKERS)  # as the dashboard server does, before torch is imported

import torch  # noqa: E402

from bench.common import machine, table  # noqa: E402
from otcore.cache import DiskCache  # noqa: E402
from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, TrainSpec  # noqa: E402
from otcore.fusion import fuse  # noqa: E402
from otcore.hessian import exact_trace, fixed_batches  # noqa: E402
from otcore.models import build_model  # noqa: E402
from otcore.pipeline import dataset, train_parents  # noqa: E402
from otcore.prune import prune_model  # noqa: E402
from otcore.train import evaluate, init_model, predict_logits, train  # noqa: E402


def actions(nets: list[torch.nn.Module]) -> dict[str, Callable[[], object]]:
    """Name -> a call returning a comparable result (floats, or a trace and its method)."""
    ds = dataset(DataSpec())
    inputs, batches = ds.x_train[:100], fixed_batches(ds.x_train, ds.y_train, 64, 2)
    score = lambda net: evaluate(net, ds.x_test, ds.y_test).accuracy  # noqa: E731

    def trained() -> float:
        net = init_model(build_model("mlpnet", ds.input_shape, ds.num_classes), 7)
        return score(train(net, ds.x_train, ds.y_train, TrainSpec(epochs=1, seed=7)))

    return {"fuse by activations": lambda: score(fuse(nets, FusionSpec(mode="activations", act_samples=100),
                                                      inputs).model),
            "prune": lambda: score(prune_model(nets[0], PruneSpec(fraction=0.5))),
            "exact trace": lambda: (lambda t: (t.mean, t.method))(exact_trace(nets[1], batches)),
            "train": trained,
            "predict": lambda: float(predict_logits(nets[0], ds.x_test).sum())}


def stress(calls: dict[str, Callable[[], object]], expected: dict[str, object], threads: int,
           seconds: float) -> tuple[Counter, Counter, list[str]]:
    """(done per action, errors per action, descriptions of differing results, then of the errors)."""
    done, errors, wrong, failures, lock = Counter(), Counter(), [], [], threading.Lock()
    names, deadline = list(calls), time.perf_counter() + seconds

    def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            name = names[i % len(names)]
            i += 1
            try:
                got = calls[name]()
            except Exception as err:  # noqa: BLE001 - counted and shown
                with lock:
                    errors[name] += 1
                    failures.append(f"{name}: {type(err).__name__}: {err}"[:160])
                continue
            with lock:
                done[name] += 1
                if got != expected[name]:
                    wrong.append(f"{name}: {got} instead of {expected[name]}")

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return done, errors, wrong + failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        parents = train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], "cpu", cache=DiskCache(folder))
        nets = [p.model for p in parents]
        calls = actions(nets)
        expected = {name: call() for name, call in calls.items()}  # sequential, also the warm-up
        rows, all_wrong = [], []
        for n in args.threads:
            done, errors, wrong = stress(calls, expected, n, args.seconds)
            total = sum(done.values())
            rows.append([n, args.seconds, total, total / args.seconds, sum(errors.values()),
                         len(wrong) - sum(errors.values()),
                         ", ".join(f"{k} {v}" for k, v in sorted(done.items()))])
            all_wrong += [f"N={n}: {w}" for w in wrong]
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for net in nets for m in net.modules())
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{machine()}; torch threads {torch.get_num_threads()}; OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}")
    print(f"uptime: {load}\n")
    print(table(["threads", "seconds", "actions", "actions/s", "errors", "differing", "done per action"], rows))
    print(f"\nsequential: {expected}")
    print(f"hooks left on the shared parents: {hooks}; parents in eval mode: {all(not n.training for n in nets)}")
    print("differing results and errors:" if all_wrong else "differing results and errors: none")
    for line in all_wrong[:50]:
        print("  " + line)


if __name__ == "__main__":
    main()
