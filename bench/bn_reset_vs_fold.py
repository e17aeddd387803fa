"""Batch norms after a merge that is not a permutation: re-estimated statistics (reset) or folding first.

Two torchvision resnet18 (seeds 0 and 1) trained briefly on digits are fused by soft OT (Sinkhorn,
on activations), CCA Merge and ZipIt!, and by exact OT (a permutation: the reference, where no
correction is made by default); each fusion's batch norms are left as the merge moved them
('moved'), re-estimated on the activation sample ('reset'), or folded into their convolutions before
the merge ('fold'). Prints test accuracies (%) as a Markdown table.

    PYTHONPATH=$PWD python bench/bn_reset_vs_fold.py [--epochs 1] [--sample 200]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from bench.common import machine, table
from otcore.config import TrainSpec
from otcore.data import load_dataset
from otcore.fusion import FusionOptions
from otcore.fusion.group_align import fuse_by_groups
from otcore.models import build_model
from otcore.train import evaluate, train

METHODS = {"OT exact (activations)": FusionOptions(mode="activations"),
           "OT Sinkhorn (activations)": FusionOptions(mode="activations", solver="sinkhorn", reg=0.05),
           "CCA Merge": FusionOptions(alignment="cca"), "ZipIt!": FusionOptions(alignment="zipit")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    x_tr, y_tr = data.split("train")
    x_te, y_te = data.split("test")
    start = time.perf_counter()
    parents = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_model("torchvision:resnet18", data.input_shape, data.num_classes)
        parents.append(train(net, x_tr, y_tr, TrainSpec(epochs=args.epochs, seed=seed)))
    trained = time.perf_counter() - start
    print(f"parents trained in {trained:.0f} s", file=sys.stderr, flush=True)
    sample = x_tr[torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(7))[:args.sample]]
    rows = [[f"parent {i}", *[evaluate(p, x_te, y_te).accuracy] * 3, ""] for i, p in enumerate(parents)]
    for name, opts in METHODS.items():
        row: list = [name]
        for norms in ("moved", "reset", "fold"):
            start = time.perf_counter()
            fused = fuse_by_groups(parents, opts, sample, norms=norms)[0]
            seconds = time.perf_counter() - start
            row.append(evaluate(fused, x_te, y_te).accuracy)
            print(f"{name} {norms}: {row[-1]:.2f} % ({seconds:.1f} s)", file=sys.stderr, flush=True)
        rows.append(row + [f"{seconds:.1f}"])
    print(f"resnet18 on digits, {args.epochs} epochs per parent ({trained:.0f} s), sample {args.sample}; {machine()}\n")
    print(table(["fusion", "moved stats %", "reset %", "fold %", "fold s"], rows))


if __name__ == "__main__":
    main()
