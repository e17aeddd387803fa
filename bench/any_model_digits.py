"""torchvision's resnet18 and vgg11_bn on digits: every alignment with and without REPAIR, and the barriers.

Per architecture, two parents (seeds 0 and 1) are trained on digits (resized to 32x32, 1 channel into the
stem, as the studio adapts them); then the test accuracy (%) of the parents, the prediction ensemble, the
vanilla average and each fusion (OT on weights and on activations, weight matching, CCA Merge, ZipIt!)
one-shot: as merged (batch-norm statistics moved with their channels), with the batch norms re-estimated
on the sample (REPAIR's reset; the studio's default after a merge that is not a permutation), and with
full REPAIR (reset, then each neuron's mean and std restored), with seconds per REPAIRed fusion. Then the
test-loss barrier along the naive path A -> B and along the weight-matching path with REPAIR at every
point (Jordan et al., 2022), 11 points each.

    python -m bench.any_model_digits [--archs resnet18 vgg11_bn] [--epochs 5] [--lr 0.01] [--sample 300]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from dataclasses import replace

import torch

from bench.common import machine, table
from otcore.aligned_paths import aligned_parent, repaired_points
from otcore.config import TrainSpec
from otcore.data import load_dataset
from otcore.fusion import FusionOptions
from otcore.fusion.batch_norm import reset_batch_norm
from otcore.fusion.baselines import ensemble_log_probs, vanilla_average
from otcore.fusion.group_align import fuse_by_groups
from otcore.landscape import barrier, barrier_of, path_curve
from otcore.models import build_model
from otcore.train import evaluate, init_model, score_logits, train

METHODS = {"OT (weights)": FusionOptions(), "OT (activations)": FusionOptions(mode="activations"),
           "weight matching": FusionOptions(alignment="weight_matching"), "CCA Merge": FusionOptions(alignment="cca"),
           "ZipIt!": FusionOptions(alignment="zipit")}


def parents_on_digits(arch: str, epochs: int, lr: float, seeds: tuple[int, ...] = (0, 1),
                      keep: str | None = None) -> tuple[list, object]:
    """Two parents of torchvision:<arch> trained on digits (and the dataset); keep: a folder to store them in."""
    data = load_dataset("digits")
    x, y = data.split("train")
    nets = []
    for seed in seeds:
        net = init_model(build_model(f"torchvision:{arch}", data.input_shape, data.num_classes), seed)
        stored = Path(keep) / f"{arch}-{seed}-{epochs}-{lr}.pt" if keep else None
        if stored is not None and stored.exists():  # a rerun of the bench reads the parents it trained
            net.load_state_dict(torch.load(stored, weights_only=True))
        else:
            train(net, x, y, TrainSpec(epochs=epochs, lr=lr, seed=seed))
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), stored)
        nets.append(net.eval())
    return nets, data


def activation_sample(data, n: int) -> torch.Tensor:
    x, _ = data.split("train")
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(7))[:n]]


def accuracy_table(parents: list, data, sample: torch.Tensor, methods: tuple[str, ...] = tuple(METHODS)) -> list[list]:
    x_te, y_te = data.split("test")
    rows = [[f"parent {i + 1}", evaluate(p, x_te, y_te).accuracy, "", "", ""] for i, p in enumerate(parents)]
    with torch.no_grad():
        rows.append(["ensemble", score_logits(ensemble_log_probs(parents, x_te), y_te).accuracy, "", "", ""])
    average = vanilla_average(parents)
    rows.append(["vanilla average", evaluate(average, x_te, y_te).accuracy,
                 evaluate(reset_batch_norm(average, sample), x_te, y_te).accuracy, "", ""])
    for name in methods:
        opts = METHODS[name]
        merged = fuse_by_groups(parents, opts, sample, norms="moved")[0]
        start = time.perf_counter()
        repaired = fuse_by_groups(parents, replace(opts, renormalize=True), sample)[0]
        seconds = time.perf_counter() - start
        row = [name, *(evaluate(net, x_te, y_te).accuracy for net in
                       (merged, reset_batch_norm(merged, sample), repaired)), f"{seconds:.1f}"]
        print(f"  {name}: {row[1]:.2f} / {row[2]:.2f} / {row[3]:.2f} % ({seconds:.1f} s)", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def barriers(parents: list, data, sample: torch.Tensor, points: int = 11) -> tuple[float, float]:
    """(naive barrier, weight matching + REPAIR barrier) of the test loss from parent 1 to parent 2."""
    x_te, y_te = data.split("test")
    batches = [(x_te, y_te)]
    naive = barrier(path_curve(parents, batches, points))
    moved, plans = aligned_parent(parents, FusionOptions(alignment="weight_matching"), sample)
    alphas = torch.linspace(0, 1, points, dtype=torch.float64)
    # One point at a time, each scored and dropped: eleven vgg11_bn points at once took 18 GB with their path.
    losses = [evaluate(repaired_points(parents[0], parents[1], moved, plans, [t], sample)[0], x_te, y_te).loss
              for t in alphas.tolist()]
    return naive, barrier_of(alphas, torch.tensor(losses, dtype=torch.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "vgg11_bn"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--keep", default=None, help="folder to store the trained parents in (a rerun reads them)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                        help="the fusions to score (none: only the barriers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for arch in args.archs:
        start = time.perf_counter()
        parents, data = parents_on_digits(arch, args.epochs, args.lr, keep=args.keep)
        trained = time.perf_counter() - start
        print(f"{arch}: parents trained in {trained:.0f} s", file=sys.stderr, flush=True)
        sample = activation_sample(data, args.sample)
        print(f"  parents: {[round(evaluate(p, *data.split('test')).accuracy, 2) for p in parents]} %", file=sys.stderr,
              flush=True)
        rows = accuracy_table(parents, data, sample, tuple(args.methods))
        naive, repaired = barriers(parents, data, sample)
        print(f"\n### torchvision {arch} on digits, {args.epochs} epochs at lr {args.lr} per parent ({trained:.0f} s), "
              f"sample {args.sample}; {machine()}\n")
        print(table(["method", "as merged %", "BN reset %", "REPAIR %", "REPAIR s"], rows))
        print(f"\ntest-loss barrier: naive {naive:.3f}, weight matching + REPAIR {repaired:.3f}", flush=True)


if __name__ == "__main__":
    main()
