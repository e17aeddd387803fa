"""The study at CIFAR-10 scale: time and peak memory of every step for vgg11_nobias and resnet18_nobias_nobn.

Data: synthetic images written in the real CIFAR-10 on-disk format (python pickle batches
cifar-10-batches-py/data_batch_1..5 of 10,000 images each, test_batch, batches.meta), read back by
otcore's own reader, so the shapes are the study's: 50,000 + 10,000 images of 3x32x32. Parents are
two seeded initialisations (the cost of every step depends on shapes, not on trained values).

Each step runs in its own fresh process: imports, data, parents and the networks it needs are made
first, a warm-up pays one-off set-up, then the kernel's peak-RSS mark is reset (/proc/self/clear_refs)
and the step runs. seconds: best of --repeats; peak MiB: VmHWM minus VmRSS just before the step,
i.e. what the step itself adds at its highest. Flags reduce the number of examples, never a shape
(batch sizes, image size, widths): a retraining epoch runs --train-images of 50,000, evaluation
--eval-images of 10,000, the Hessian-vector product a batch of --hessian-images and the exact trace
--trace-images of the study's batch of 1,000; their seconds are scaled linearly to the full count
(time is linear in examples at fixed shapes) and the note says so, while the memory is the one measured.
Rows derived from the product's time (top-3, density, trace by P products) are marked 'estimated'.
Run: python bench/scale.py [--root DIR] [--archs vgg11_nobias,resnet18_nobias_nobn] [--train-images 500]
     [--eval-images 1000] [--hessian-images 1000] [--trace-images 20] [--repeats 1] [--threads 1] [--device cuda]
With --device cuda every step's networks and data live on the GPU, the clock waits for the GPU's queued work,
and the peak is the GPU memory torch allocates during the step (torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

import numpy as np
import torch

from bench.common import table
from otcore.config import FusionSpec, HessianSpec, PruneSpec, RetrainSpec
from otcore.data import load_dataset
from otcore.fusion.baselines import vanilla_average
from otcore.fusion.fuse import fuse
from otcore.hessian import WARM_START, exact_trace, product_seconds
from otcore.models import build_model, count_parameters
from otcore.prune import copy_model, prune_model
from otcore.threads import THREADS_ENV, apply_policy
from otcore.train import evaluate, init_model, train

TRAIN_IMAGES, TEST_IMAGES, PIXELS, SHAPE = 50_000, 10_000, 3 * 32 * 32, (3, 32, 32)
ACT_SAMPLES, HESSIAN_BATCH = 200, 1000  # the study's activation sample and Hessian batch
NETWORKS = ("parent", "OT fusion (weights)", "OT fusion (activations)", "vanilla average",
            "pruned structured", "pruned unstructured")
STEPS = ("load", "fuse-weights", "fuse-activations", "prune-structured", "prune-unstructured", "retrain",
         *(f"evaluate:{n}" for n in NETWORKS), "hvp", "exact-trace")
LABELS = {"fuse-weights": "fusion, weights (OT, emd)", "fuse-activations": f"fusion, activations ({ACT_SAMPLES} samples)",
          "prune-structured": "prune structured 50% (ln, filters)", "prune-unstructured": "prune unstructured 50% (l1)",
          "retrain": "retrain 1 epoch (batch 64)", "hvp": f"1 Hessian-vector product, batch {HESSIAN_BATCH:,}",
          "exact-trace": f"exact trace, batch {HESSIAN_BATCH:,}",
          **{f"evaluate:{n}": f"evaluate {n} (10,000 test)" for n in NETWORKS}}
KIB = 1024


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


# ---------------------------------------------------------------------------- one step, in a worker process


def status_kib(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


DEVICE = torch.device("cpu")  # the worker's device (--device), set once in main before any step


def measured(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best seconds, peak MiB the step adds) of fn over repeats; set-up is done by the caller.

    On the CPU the peak is the process's (VmHWM); on CUDA it is the GPU memory torch allocates (the clock
    waits for the device's queued work before it stops)."""
    best, peak = float("inf"), 0.0
    cuda = DEVICE.type == "cuda"
    for _ in range(repeats):
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / KIB
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is this run's
            base = status_kib("VmRSS")
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        top = torch.cuda.max_memory_allocated() / KIB if cuda else status_kib("VmHWM")
        peak = max(peak, (top - base) / KIB)
    return best, peak


def slices_path(args: argparse.Namespace) -> Path:
    return Path(args.root) / f"slices-{args.train_images}-{args.eval_images}.pt"


def network(name: str, parents: list, acts: torch.Tensor) -> torch.nn.Module:
    """One of the study's networks, made outside the clock."""
    if name == "parent":
        return parents[0]
    if name.startswith("OT fusion"):
        spec = FusionSpec(mode="activations") if "activations" in name else FusionSpec()
        return fuse(parents, spec, acts).model
    if name == "vanilla average":
        return vanilla_average(parents)
    return prune_model(parents[0], PruneSpec(type="structured") if name == "pruned structured" else PruneSpec())


def run_step(step: str, args: argparse.Namespace) -> dict[str, object]:
    """Seconds, peak MiB and a note for one step of one architecture, measured in this process."""
    if step == "load":
        seconds, peak = measured(lambda: load_dataset("cifar10", args.root), 1)
        data = load_dataset("cifar10", args.root)  # memoised: the loaded tensors
        keep = max(args.train_images, HESSIAN_BATCH, ACT_SAMPLES)
        torch.save({"x_train": data.x_train[:keep].clone(), "y_train": data.y_train[:keep].clone(),
                    "x_test": data.x_test[:args.eval_images].clone(), "y_test": data.y_test[:args.eval_images].clone()},
                   slices_path(args))
        return {"seconds": seconds, "peak": peak, "note": "measured, 60,000 images"}
    data = {k: v.to(DEVICE) for k, v in torch.load(slices_path(args), weights_only=True).items()}
    parents = [init_model(build_model(args.arch, SHAPE, 10), seed).to(DEVICE).eval() for seed in (0, 1)]
    acts = data["x_train"][:ACT_SAMPLES]
    tiny = [init_model(build_model("vgg_tiny_nobias", SHAPE, 10), seed).to(DEVICE).eval() for seed in (0, 1)]
    note, scale = "measured", 1.0
    if step.startswith("fuse-"):
        spec = FusionSpec(mode="activations") if step == "fuse-activations" else FusionSpec()
        fuse(tiny, spec, acts[:4])  # warm-up: POT, scipy and first-call set-up
        seconds_of: dict[str, float] = {}
        seconds, peak = measured(lambda: seconds_of.update(fuse(parents, spec, acts).seconds), args.repeats)
        if step == "fuse-activations":
            note = f"measured; capture {seconds_of['activations']:.2f} s, OT {seconds_of['fusion']:.2f} s"
    elif step.startswith("prune-"):
        spec = PruneSpec(type="structured") if step == "prune-structured" else PruneSpec()
        prune_model(tiny[0], spec)
        seconds, peak = measured(lambda: prune_model(parents[0], spec), args.repeats)
    elif step == "retrain":
        fused = fuse(parents, FusionSpec()).model
        n = min(args.train_images, TRAIN_IMAGES)
        train(copy_model(tiny[0]), data["x_train"][:64], data["y_train"][:64], RetrainSpec(), epochs=1)
        seconds, peak = measured(lambda: train(copy_model(fused), data["x_train"][:n], data["y_train"][:n],
                                               RetrainSpec(), epochs=1), args.repeats)
        scale = TRAIN_IMAGES / n
        note = f"{n:,} images measured, time x{scale:.0f}" if n < TRAIN_IMAGES else note
    elif step.startswith("evaluate:"):
        net = network(step.split(":", 1)[1], parents, acts)
        m = min(args.eval_images, TEST_IMAGES)
        evaluate(net, data["x_test"][:8], data["y_test"][:8])
        seconds, peak = measured(lambda: evaluate(net, data["x_test"][:m], data["y_test"][:m]), args.repeats)
        scale = TEST_IMAGES / m
        note = f"{m:,} images measured, time x{scale:.0f}" if m < TEST_IMAGES else note
    elif step == "hvp":
        k = min(args.hessian_images, HESSIAN_BATCH)
        batch = (data["x_train"][:k], data["y_train"][:k])
        product_seconds(tiny[0], (data["x_train"][:8], data["y_train"][:8]), repeats=1)
        # product_seconds runs a warm-up product, then times the best of `repeats`: the peak covers both.
        products: list[float] = []
        _, peak = measured(lambda: products.append(product_seconds(parents[0], batch, args.repeats)), 1)
        seconds = products[-1]
        scale = HESSIAN_BATCH / k
        note = "streamed (graph recomputed per product); " + (
            f"batch of {k:,} measured, time x{scale:.0f}, memory at {k:,}" if k < HESSIAN_BATCH
            else "warm, best of repeats")
    elif step == "exact-trace":
        k = min(args.trace_images, HESSIAN_BATCH)
        exact_trace(tiny[0], [(data["x_train"][:8], data["y_train"][:8])])
        seconds, peak = measured(lambda: exact_trace(parents[0], [(data["x_train"][:k], data["y_train"][:k])]),
                                 args.repeats)
        scale = HESSIAN_BATCH / k
        note = (f"diagonal formula; {k:,} images measured, time x{scale:.0f}, memory at {k:,}" if k < HESSIAN_BATCH
                else "diagonal formula")
    else:
        raise ValueError(f"unknown step {step}")
    return {"seconds": seconds * scale, "peak": peak, "note": note, "parameters": count_parameters(parents[0])}


# ---------------------------------------------------------------------------- the table, from the parent process


def in_subprocess(step: str, arch: str, args: argparse.Namespace) -> dict[str, object]:
    """run_step in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--worker", step, "--arch", arch, "--root", args.root,
               "--train-images", str(args.train_images), "--eval-images", str(args.eval_images),
               "--hessian-images", str(args.hessian_images), "--trace-images", str(args.trace_images),
               "--repeats", str(args.repeats), "--device", args.device]
    env = {**os.environ, THREADS_ENV: str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"seconds": float("nan"), "peak": float("nan"), "note": f"failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(seconds: float) -> str:
    """A long duration in the unit that reads best."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.1f} s"


def estimated_rows(hvp: dict[str, object], parameters: int) -> list[tuple[str, float, float, str]]:
    """Rows derived from one product's time and memory: top-3, density, and the trace by P products.

    Memory: the product's, as measured (at --hessian-images), plus the float32 vectors the method keeps
    (the Lanczos basis of all its steps, allocated up front: partial reorthogonalisation reads it all)."""
    spec = HessianSpec()
    seconds, peak = float(hvp["seconds"]), float(hvp["peak"])
    vector_mib = parameters * 4 / 2**20
    top3 = WARM_START + 3 * spec.top_k  # Lanczos warm start, then about 3 power steps per eigenvalue
    density = spec.lanczos_iters
    return [
        ("top-3 eigenvalues", top3 * seconds, peak + WARM_START * vector_mib,
         f"estimated: ~{top3} products; memory + Lanczos basis of {WARM_START} vectors"),
        (f"density, {density} Lanczos steps", density * seconds, peak + density * vector_mib,
         f"estimated: {density} products (+ reorthogonalisation, memory-bound passes over the basis: "
         f"seconds here); memory + basis of {density} vectors"),
        ("exact trace by P products (not run)", parameters * seconds, peak + vector_mib,
         f"estimated: P = {parameters:,} products = {describe(parameters * seconds)}"),
    ]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/otcore-scale-cifar")
    parser.add_argument("--archs", default="vgg11_nobias,resnet18_nobias_nobn")
    parser.add_argument("--steps", default=",".join(STEPS), help="a subset of: " + ", ".join(STEPS))
    parser.add_argument("--train-images", type=int, default=500, help="images of the timed retraining (of 50,000)")
    parser.add_argument("--eval-images", type=int, default=1000, help="test images evaluated (of 10,000)")
    parser.add_argument("--hessian-images", type=int, default=1000, help="batch of the timed product (of 1,000)")
    parser.add_argument("--trace-images", type=int, default=20, help="images of the timed exact trace (of 1,000)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every step's process")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where every step's tensors live")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.worker:
        apply_policy()  # the thread count the parent put in OTCORE_THREADS, set once before any tensor work
        global DEVICE
        DEVICE = torch.device(args.device)
        print(json.dumps(run_step(args.worker, args)))
        return
    write_cifar10(Path(args.root))
    steps = [s for s in args.steps.split(",") if s]
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    print(f"torch {torch.__version__}, {args.device} ({where}), {args.threads} thread(s) per step; {uptime()}", flush=True)
    load = in_subprocess("load", args.archs.split(",")[0], args)
    for arch in args.archs.split(","):
        rows = [("load CIFAR-10 (60,000 images, pickle batches)", load["seconds"], load["peak"], load["note"])]
        parameters, hvp = 0, None
        for step in steps:
            if step == "load":
                continue
            result = in_subprocess(step, arch, args)
            parameters = int(result.get("parameters", parameters))
            rows.append((LABELS.get(step, step), float(result["seconds"]), float(result["peak"]), str(result["note"])))
            hvp = result if step == "hvp" else hvp
            print(f"  {arch} {step}: {result['seconds']:.2f} s, {result['peak']:.0f} MiB ({uptime()})", flush=True)
        if hvp is not None and parameters:
            rows += estimated_rows(hvp, parameters)
        print(f"\n{arch} (P = {parameters:,}), synthetic CIFAR-10 (50,000 + 10,000 images, 3x32x32), "
              f"best of {args.repeats}, {args.threads} thread(s)")
        print(table(["step", "seconds", "GPU peak MiB" if args.device == "cuda" else "peak MiB", "note"],
                    [[name, f"{secs:.2f}", f"{mib:.0f}", note] for name, secs, mib, note in rows]))
    print(f"\n{uptime()}")


if __name__ == "__main__":
    main()
