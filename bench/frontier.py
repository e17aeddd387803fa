"""The accuracy-versus-size frontier on digits: every alignment at widths 1, 1.25, 1.5, 2, one-shot and retrained.

Parents: the default TrainSpec (10 epochs) on digits, mlpnet and vgg_tiny_nobias; pairs of seeds 0+1
and 2+3 on the whole train split (iid), and seeds 0+1 on the personalized split (parent 1 sees class 9
and 10 % of the rest, parent 2 the other 90 % without class 9). Each fusion runs through
fuse_and_compare (a fresh cache: nothing is read back) with 1 epoch of fine-tuning by the default
retraining recipe (RetrainSpec: keep-best on a held-out tenth). OT (by weights), weight matching and
CCA Merge only at width 1 (they refuse wider); ZipIt! and PLeaS at every width. Columns: test accuracy
one-shot and after the epoch, the parameter count, inference ms per 1000 test images (median of 3 warm
runs; the studio's frontier shows the comparison rows' one run), seconds of the fusion itself
(activations + merge, not the evaluation).
Run: python -m bench.frontier [--archs mlpnet vgg_tiny_nobias] [--splits iid-01 iid-23 personalized]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from bench.common import machine, table
from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, ModelSpec, RetrainSpec, TrainSpec
from otcore.activations import predict_logits
from otcore.pipeline import dataset, fuse_and_compare, train_parents

SPLITS = {"iid-01": ("iid", [0, 1]), "iid-23": ("iid", [2, 3]), "personalized": ("personalized", [0, 1])}
SETTINGS = [("ot", 1.0), ("weight_matching", 1.0), ("cca", 1.0)] + [
    (a, w) for a in ("zipit", "pleas") for w in (1.0, 1.25, 1.5, 2.0)]


@torch.no_grad()
def inference_seconds_per_1000(model: nn.Module | list[nn.Module], x: torch.Tensor, repeats: int = 3) -> float:
    """Median over `repeats` warm runs of the seconds to predict x (every parent, for an ensemble), per 1000 images."""
    nets = model if isinstance(model, list) else [model]
    for net in nets:
        predict_logits(net, x[:1])  # warm-up: one-off set-up is not inference
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for net in nets:
            predict_logits(net, x)
        runs.append(time.perf_counter() - start)
    return 1000 * statistics.median(runs) / max(len(x), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mlpnet", "vgg_tiny_nobias"])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    args = parser.parse_args()
    data = DataSpec()
    x_test = dataset(data).x_test
    cache = DiskCache(tempfile.mkdtemp(prefix="frontier-bench-"))
    rows = []
    start_all = time.perf_counter()
    for arch in args.archs:
        for split in args.splits:
            partition, seeds = SPLITS[split]
            parents = train_parents(data, ModelSpec(arch), TrainSpec(partition=partition), seeds, "cpu", cache=cache)
            first = True
            for alignment, width in SETTINGS:
                spec = FusionSpec(alignment=alignment, width=width, finetune_epochs=1,
                                  retrain=RetrainSpec(retrain_vanilla=False))
                comparison = fuse_and_compare(data, ModelSpec(arch), parents, spec, device="cpu", cache=cache)
                if first:
                    for r in comparison.rows:
                        if r.id != "ot_fusion" and r.id != "ot_fusion_finetuned":
                            net = [p.model for p in parents] if r.model is None else r.model
                            rows.append([arch, split, r.method, "", r.parameters, r.test.accuracy, "",
                                         1000 * inference_seconds_per_1000(net, x_test), ""])
                    first = False
                fused, tuned = comparison.row("ot_fusion"), comparison.row("ot_fusion_finetuned")
                seconds = comparison.seconds.get("activations", 0.0) + comparison.seconds.get("fusion", 0.0)
                rows.append([arch, split, fused.method, width, fused.parameters, fused.test.accuracy,
                             tuned.test.accuracy, 1000 * inference_seconds_per_1000(fused.model, x_test), seconds])
    print(f"{machine()}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; "
          f"total {time.perf_counter() - start_all:.0f} s\n")
    print(table(["arch", "split", "method", "width", "parameters", "test % one-shot", "test % +1 epoch",
                 "ms / 1000 images", "fusion s"], rows))


if __name__ == "__main__":
    main()
