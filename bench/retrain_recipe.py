"""Which recipe retrains best, over weak and strong starts, when the retraining split is smaller than the parents'.

Parents: mlpnet, the default from-scratch TrainSpec (10 epochs, SGD lr 0.05) on the whole train split,
seed pairs 0+1 and 2+3 (--pairs). Starts (each retrained by each recipe, keep-best on, as the pipeline does):
OT by weights (the paper's defaults; the weak start on real MNIST), OT by activations with REPAIR, CCA Merge with REPAIR,
ZipIt!, and parent 1 pruned 50 % and 70 % (unstructured, masks attached; the sparsity is checked after).
Retraining sees only --examples images of the train split (RetrainSpec.train_examples; 10 % of them
held out for keep-best), as when published checkpoints trained on all of MNIST are retrained on a
subset. Each cell: test accuracy after retraining minus the start's, in points. Datasets: digits (8x8),
and 'mnist-idx': the digits upsampled to 28x28 and written as MNIST IDX files, read through torchvision,
the train split 9x by shifted copies (random-pixel MNIST files would say nothing about accuracy).
Run: python -m bench.retrain_recipe
"""
from __future__ import annotations

import argparse
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import machine, table
from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, RetrainSpec, TrainSpec
from otcore.fusion import fuse
from otcore.pipeline import dataset, fusion_inputs, train_parents
from otcore.prune import copy_model, prunable_layers, prune_model, sparsity_report
from otcore.train import evaluate, retrain


def shifted(images: np.ndarray, shift: int) -> np.ndarray:
    """The images and their copies moved by +-shift pixels in x and y (zero fill): 9 x as many."""
    if shift == 0:
        return images
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))
    size = images.shape[1]
    return np.concatenate([padded[:, shift + dy:shift + dy + size, shift + dx:shift + dx + size]
                           for dy in (-shift, 0, shift) for dx in (-shift, 0, shift)])


def write_digits_idx(root: Path, train_n: int = 1437, shift: int = 0) -> str:
    """scikit-learn's digits upsampled (bilinear) to 28x28 uint8, as root/MNIST/raw/*-idx?-ubyte files.

    With shift > 0 the train split holds each image 9 times, moved by +-shift pixels (MNIST-sized
    epochs of a few hundred SGD steps, where a too-high retraining lr shows its harm).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float()[:, None] / 16.0
    big = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    pixels = (big[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(labels))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_x, train_y = shifted(pixels[order[:train_n]], shift), np.tile(labels[order[:train_n]], 9 if shift else 1)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", pixels[order[train_n:]], labels[order[train_n:]])):
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + np.ascontiguousarray(array).tobytes())
    return str(root)


FUSIONS = {"OT by weights": FusionSpec(),
           "OT by acts + REPAIR": FusionSpec(mode="activations", renormalize=True),
           "CCA Merge + REPAIR": FusionSpec(alignment="cca", renormalize=True),
           "ZipIt!": FusionSpec(alignment="zipit")}
PRUNED = (0.5, 0.7)  # fractions of parent 1 pruned (unstructured, all layers but the classifier)
RECIPES = {"lr 0.005, step (old default)": RetrainSpec(lr=0.005, schedule="step"),
           "lr 0.005, cosine": RetrainSpec(lr=0.005, schedule="cosine"),
           "lr 0.002, cosine": RetrainSpec(lr=0.002, schedule="cosine"),
           "lr 0.001, cosine (prototype)": RetrainSpec(lr=0.001, schedule="cosine"),
           "lr 0.001, constant": RetrainSpec(lr=0.001, schedule="constant")}


def starts(data: DataSpec, parents: list, device: str = "cpu") -> dict:
    """name -> (network to retrain, masked layers or None): the fused nets and the pruned parent."""
    nets = [p.model for p in parents]
    out = {}
    for name, spec in FUSIONS.items():
        options = spec.options(len(nets))
        out[name] = fuse(nets, options, fusion_inputs(data, spec, torch.device(device)) if options.needs_inputs
                         else None).model, None
    for fraction in PRUNED:
        spec = PruneSpec(fraction=fraction)
        out[f"pruned {100 * fraction:.0f} %"] = prune_model(nets[0], spec), prunable_layers(nets[0], spec.scope,
                                                                                          spec.keep_last_layer)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="1,3")
    parser.add_argument("--pairs", default="0+1,2+3", help="parent seed pairs, e.g. 0+1 (faster)")
    parser.add_argument("--shift", type=int, default=2, help="pixels of the train split's shifted copies (0: none)")
    parser.add_argument("--examples", default="500,5000",
                        help="train-split images retraining uses on digits, on mnist-idx (validation included)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budgets = [int(v) for v in args.epochs.split(",")]
    pairs = [tuple(int(s) for s in p.split("+")) for p in args.pairs.split(",")]
    examples = [int(v) for v in args.examples.split(",")]
    summary = {label: [] for label in RECIPES}
    with tempfile.TemporaryDirectory() as tmp:
        cache = DiskCache(Path(tmp) / "cache")
        datasets = (DataSpec(), DataSpec("mnist", write_digits_idx(Path(tmp) / "mnist", shift=args.shift)))
        for data, used in zip(datasets, examples):
            ds, model = dataset(data), ModelSpec("mlpnet")
            runs = []  # (pair, start name, net, masked layers, test accuracy before)
            for pair in pairs:
                parents = train_parents(data, model, TrainSpec(), list(pair), "cpu", cache=cache)
                for name, (net, layers) in starts(data, parents).items():
                    runs.append((pair, name, net, layers, evaluate(net, ds.x_test, ds.y_test).accuracy))
            name = "digits" if data.name == "digits" else f"mnist-idx (digits at 28x28, train x9 shifted {args.shift} px)"
            print(f"\n{name}: parents trained on {len(ds.x_train)} train images, retrained on {used} (10 % of them "
                  f"held out), {len(ds.x_test)} test; starts (pair {pairs[0][0]}+{pairs[0][1]}): "
                  + ", ".join(f"{n} {a:.2f} %" for p, n, _, _, a in runs if p == pairs[0]))
            rows = []
            for label, recipe in RECIPES.items():
                recipe = RetrainSpec(**{**recipe.__dict__, "train_examples": used})
                for epochs in budgets:
                    gains, kept = {}, []
                    for _, start, net, layers, before in runs:
                        out = retrain(copy_model(net), ds.x_train, ds.y_train, recipe, epochs)
                        if layers is not None:  # the kept state is a masked one
                            fraction = sparsity_report(out.model, layers).overall_fraction
                            assert abs(fraction - float(start.split()[1]) / 100) < 0.01, (start, fraction)
                        gains.setdefault(start, []).append(evaluate(out.model, ds.x_test, ds.y_test).accuracy - before)
                        kept.append(out.best_epoch)
                    means = [float(np.mean(g)) for g in gains.values()]
                    worst = float(min(min(g) for g in gains.values()))
                    rows.append([label, epochs, *means, float(np.mean(means)), worst,
                                 f"{sum(k == 0 for k in kept)}/{len(kept)}"])
                    summary[label].append((float(np.mean(means)), worst))
            headers = ["recipe", "epochs", *FUSIONS, *(f"pruned {100 * f:.0f} %" for f in PRUNED), "mean", "worst",
                       "kept start"]
            print(table(headers, rows))
    print("\nOver both datasets and budgets: mean gain, worst gain (points)")
    print(table(["recipe", "mean", "worst"], [[label, float(np.mean([m for m, _ in cells])), min(w for _, w in cells)]
                                              for label, cells in summary.items()]))
    print(f"\n{machine()}; gains are test-accuracy points over the start; 'kept start': retrainings whose best "
          "validation state was the start (best_epoch 0)")


if __name__ == "__main__":
    main()
