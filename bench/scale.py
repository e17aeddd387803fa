"""The study at CIFAR-10 scale: time and peak memory of every step for vgg11_nobias and resnet18_nobias_nobn.

Data: synthetic images written in the real CIFAR-10 on-disk format (python pickle batches
cifar-10-batches-py/data_batch_1..5 of 10,000 images each, test_batch, batches.meta), read back by
otcore's own reader, so the shapes are the study's: 50,000 + 10,000 images of 3x32x32. Parents are
two seeded initialisations (the cost of every step depends on shapes, not on trained values).
Steps that take minutes on a busy CPU run on a measured fraction and are extrapolated linearly
(retraining epoch: --train-images of 50,000; evaluation: --eval-images of 10,000; Lanczos-based
Hessian parts: one measured Hessian-vector product on a batch of 1,000 times their product count);
the table marks those rows 'extrapolated'. Peak memory: the largest rise of the process's resident
set above its level before the step, sampled every 5 ms.
Run: python bench/scale.py [--root DIR] [--archs vgg11_nobias,resnet18_nobias_nobn] [--train-images 500]
     [--eval-images 1000] [--repeats 1] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

import numpy as np
import torch

from otcore.config import FusionSpec, HessianSpec, PruneSpec, RetrainSpec
from otcore.data import load_dataset
from otcore.fusion.baselines import vanilla_average
from otcore.fusion.fuse import fuse
from otcore.hessian import WARM_START, exact_trace, product_seconds
from otcore.models import build_model, count_parameters
from otcore.prune import prune_model
from otcore.train import evaluate, init_model, train

TRAIN_IMAGES, TEST_IMAGES, PIXELS = 50_000, 10_000, 3 * 32 * 32
PAGE = os.sysconf("SC_PAGE_SIZE")


def write_cifar10(root: Path, seed: int = 0) -> Path:
    """Synthetic CIFAR-10 in the published layout (5 train batches of 10,000, test_batch, batches.meta)."""
    folder = root / "cifar-10-batches-py"
    if (folder / "test_batch").exists():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        pixels = rng.integers(0, 256, (10_000, PIXELS), dtype=np.uint8)
        labels = rng.integers(0, 10, 10_000).tolist()
        batch = {"batch_label": name.encode(), "labels": labels, "data": pixels,
                 "filenames": [f"img{i}.png".encode() for i in range(10_000)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {"num_cases_per_batch": 10_000, "label_names": [f"class{i}" for i in range(10)], "num_vis": PIXELS}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return root


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def measured(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(best seconds, peak resident rise in bytes, last result) of fn over repeats, a warm-up excluded by caller."""
    best, peak_rise, result = float("inf"), 0, None
    for _ in range(repeats):
        base, peak, running = resident_bytes(), [resident_bytes()], [True]

        def sample() -> None:
            while running[0]:
                peak[0] = max(peak[0], resident_bytes())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        running[0] = False
        sampler.join()
        peak_rise = max(peak_rise, peak[0] - base)
    return best, peak_rise, result


def bench_arch(arch: str, data, args: argparse.Namespace) -> list[tuple[str, float, float, str]]:
    """Rows (step, seconds, peak MiB, note) for one architecture."""
    rows: list[tuple[str, float, float, str]] = []
    shape = tuple(data.x_train.shape[1:])
    parents = [init_model(build_model(arch, shape, 10), seed).eval() for seed in (0, 1)]
    acts = data.x_train[:200]

    def row(name: str, fn: Callable[[], object], note: str = "", scale: float = 1.0) -> object:
        seconds, peak, result = measured(fn, args.repeats)
        rows.append((name, seconds * scale, peak / 2**20, note))
        return result

    fused_w = row("fusion, weights (OT, emd)", lambda: fuse(parents, FusionSpec()).model)
    fused_a = row("fusion, activations (200 samples)",
                  lambda: fuse(parents, FusionSpec(mode="activations"), acts).model)
    vanilla = vanilla_average(parents)
    structured = row("prune structured 50% (ln, filters)",
                     lambda: prune_model(parents[0], PruneSpec(type="structured")))
    unstructured = row("prune unstructured 50% (l1)", lambda: prune_model(parents[0], PruneSpec()))

    n = min(args.train_images, TRAIN_IMAGES)
    factor = TRAIN_IMAGES / n
    row("retrain 1 epoch (batch 64)", lambda: train(prune_model(fused_w, PruneSpec(fraction=0.0)),
                                                     data.x_train[:n], data.y_train[:n], RetrainSpec(), epochs=1),
        f"extrapolated x{factor:.0f} from {n:,} images" if n < TRAIN_IMAGES else "measured", factor)

    m = min(args.eval_images, TEST_IMAGES)
    factor = TEST_IMAGES / m
    networks = {"parent": parents[0], "OT fusion (weights)": fused_w, "OT fusion (activations)": fused_a,
                "vanilla average": vanilla, "pruned structured": structured, "pruned unstructured": unstructured}
    evaluate(parents[0], data.x_test[:8], data.y_test[:8])  # warm-up outside the clock
    for name, net in networks.items():
        row(f"evaluate {name} (10,000 test)", lambda net=net: evaluate(net, data.x_test[:m], data.y_test[:m]),
            f"extrapolated x{factor:.0f} from {m:,} images" if m < TEST_IMAGES else "measured", factor)

    batch = (data.x_train[:1000], data.y_train[:1000])
    hvp = product_seconds(parents[0], batch, repeats=args.repeats)
    rows.append(("1 Hessian-vector product, batch 1,000", hvp, float("nan"), "best of repeats, warm"))
    spec = HessianSpec()
    top3 = WARM_START + 3 * 2  # Lanczos start, then about two power steps per eigenvalue (bench/hessian.py)
    rows.append(("top-3 eigenvalues", top3 * hvp, float("nan"), f"extrapolated: ~{top3} products"))
    rows.append((f"density, {spec.lanczos_iters} Lanczos steps", spec.lanczos_iters * hvp, float("nan"),
                 f"extrapolated: {spec.lanczos_iters} products (+<15% Lanczos, bench/hessian.py)"))
    if args.exact_trace:
        row("exact trace, batch 1,000", lambda: exact_trace(parents[0], [batch]))
    else:
        rows.append(("exact trace, batch 1,000", float("nan"), float("nan"), "skipped (--exact-trace)"))
    print(f"  {arch}: P = {count_parameters(parents[0]):,}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/otcore-scale-cifar")
    parser.add_argument("--archs", default="vgg11_nobias,resnet18_nobias_nobn")
    parser.add_argument("--train-images", type=int, default=500, help="images of the timed retraining (of 50,000)")
    parser.add_argument("--eval-images", type=int, default=1000, help="test images evaluated (of 10,000)")
    parser.add_argument("--exact-trace", action="store_true", help="also time the exact trace on a batch of 1,000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = write_cifar10(Path(args.root))
    seconds, peak, data = measured(lambda: load_dataset("cifar10", str(root)), 1)
    load_row = ("load CIFAR-10 (60,000 images, pickle batches)", seconds, peak / 2**20, "measured")
    print(f"uptime: {os.popen('uptime').read().strip()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for arch in args.archs.split(","):
        rows = [load_row] + bench_arch(arch, data, args)
        print(f"\n{arch}, synthetic CIFAR-10 (50,000 + 10,000 images, 3x32x32), best of {args.repeats}")
        header = f"{'step':<46} {'seconds':>9} {'peak MiB':>9}  note"
        print(header)
        print("-" * len(header))
        for name, secs, mib, note in rows:
            print(f"{name:<46} {secs:9.2f} {mib:9.0f}  {note}")
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
