"""Which recipe retrains an OT-fused net best: lr x schedule x epochs -> test accuracy after retraining.

Parents: mlpnet, the default from-scratch TrainSpec (10 epochs, SGD lr 0.05), seed pairs 0+1 and 2+3;
fused by OT on weights (the paper's defaults). Each cell retrains a copy of the fused net with a
RetrainSpec and reports the test accuracy minus the fused net's, averaged over the pairs. The row
'from scratch' is the old behaviour: the parents' recipe (lr 0.05, constant). Datasets: digits (8x8),
and 'mnist-idx': the digits upsampled to 28x28 and written as MNIST IDX files, read through torchvision
(random-pixel MNIST files would say nothing about accuracy). Run: python -m bench.retrain_recipe
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
from otcore.config import DataSpec, FusionSpec, ModelSpec, RetrainSpec, TrainSpec
from otcore.fusion import fuse
from otcore.pipeline import dataset, train_parents
from otcore.prune import copy_model
from otcore.train import evaluate, train


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="0.05,0.02,0.01,0.005,0.001")
    parser.add_argument("--epochs", default="1,3")
    parser.add_argument("--shift", type=int, default=2, help="pixels of the train split's shifted copies (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lrs = [float(v) for v in args.lrs.split(",")]
    budgets = [int(v) for v in args.epochs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cache = DiskCache(Path(tmp) / "cache")
        for data in (DataSpec(), DataSpec("mnist", write_digits_idx(Path(tmp) / "mnist", shift=args.shift))):
            ds, model = dataset(data), ModelSpec("mlpnet")
            fused_nets = []
            for pair in ((0, 1), (2, 3)):
                parents = train_parents(data, model, TrainSpec(), list(pair), "cpu", cache=cache)
                fused = fuse([p.model for p in parents], FusionSpec()).model
                base = evaluate(fused, ds.x_test, ds.y_test).accuracy
                fused_nets.append((fused, base, [p.metrics["test"]["accuracy"] for p in parents]))
            name = "digits" if data.name == "digits" else f"mnist-idx (digits at 28x28, train x9 shifted {args.shift} px)"
            print(f"\n{name}: parents {', '.join(f'{a:.2f}' for _, _, accs in fused_nets for a in accs)} %, "
                  f"fused {', '.join(f'{b:.2f}' for _, b, _ in fused_nets)} % (pairs 0+1, 2+3); "
                  f"{len(ds.x_train)} train / {len(ds.x_test)} test")
            recipes = [("from scratch (lr 0.05, constant)", TrainSpec(lr=0.05))]
            recipes += [(f"lr {lr:g}, {schedule}", RetrainSpec(lr=lr, schedule=schedule))
                        for lr in lrs for schedule in ("constant", "cosine", "step")]
            rows = []
            for label, recipe in recipes:
                row = [label]
                for epochs in budgets:
                    gains = []
                    for fused, base, _ in fused_nets:
                        tuned = train(copy_model(fused), ds.x_train, ds.y_train, recipe, epochs=epochs)
                        gains.append(evaluate(tuned, ds.x_test, ds.y_test).accuracy - base)
                    row.append(float(np.mean(gains)))
                    row.append(float(min(gains)))
                rows.append(row)
            headers = ["recipe"] + [h for e in budgets for h in (f"{e} ep: mean gain (pp)", f"{e} ep: worst")]
            print(table(headers, rows))
    print(f"\n{machine()}; 'step' halves lr every epoch; gains are test-accuracy points over the fused net")


if __name__ == "__main__":
    main()
