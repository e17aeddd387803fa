"""Vision Transformers on digits: fusion by every alignment, heads as units or in place, two widths, curvature.

Two parents of `vit_tiny` (seeds 0 and 1) and one of `vit_tiny_doub` (seed 2) are trained with the studio's
default recipe (otcore.config.TrainSpec: SGD lr 0.05, momentum 0.9, 10 epochs, batch 64). Then the test
accuracy (%) of the parents, the prediction ensemble, the vanilla average and each fusion (OT on weights
with heads aligned as units, kept in place, or ignored ('flat'); OT on activations; weight matching;
CCA Merge; ZipIt!; OT by Sinkhorn), one-shot and after one epoch of the studio's retraining recipe (otcore.config.RetrainSpec),
with seconds per fusion; `vit_tiny` fused with `vit_tiny_doub` into each width; and the curvature the
Hessian page computes (otcore.hessian.analyse with HessianSpec's defaults on the test split: top
eigenvalues, Hutchinson trace, spectral density; plus the two perturbation curves) with its seconds.

    python -m bench.transformers [--epochs 10] [--sample 300] [--keep DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import machine, table
from otcore.config import HessianSpec, RetrainSpec, TrainSpec
from otcore.data import load_dataset
from otcore.fusion import FusionOptions, fuse
from otcore.fusion.baselines import ensemble_log_probs, vanilla_average
from otcore.hessian import analyse, fixed_batches
from otcore.landscape import filter_normalized_direction, perturbation_curve
from otcore.models import build_model, count_parameters
from otcore.train import evaluate, init_model, retrain, score_logits, train

METHODS = {"OT weights, heads as units": FusionOptions(), "OT weights, heads in place": FusionOptions(heads="within"),
           "OT weights, heads ignored (flat)": FusionOptions(heads="flat"),
           "OT weights, Sinkhorn (reg 0.01), heads as units": FusionOptions(solver="sinkhorn"),
           "OT activations, heads as units": FusionOptions(mode="activations"),
           "weight matching": FusionOptions(alignment="weight_matching"), "CCA Merge": FusionOptions(alignment="cca"),
           "ZipIt!": FusionOptions(alignment="zipit")}
WIDTHS = {"OT weights": FusionOptions(), "OT activations": FusionOptions(mode="activations")}


def vit_parents(data, archs_seeds: tuple[tuple[str, int], ...], epochs: int = 10, keep: str | None = None) -> list:
    """Networks trained on digits by the default recipe (epochs aside); keep: a folder to store them in."""
    x, y = data.split("train")
    nets = []
    for arch, seed in archs_seeds:
        net = init_model(build_model(arch, data.input_shape, data.num_classes), seed)
        stored = Path(keep) / f"{arch}-{seed}-{epochs}.pt" if keep else None
        if stored is not None and stored.exists():  # a rerun of the bench reads the parents it trained
            net.load_state_dict(torch.load(stored, weights_only=True))
        else:
            train(net, x, y, replace(TrainSpec(seed=seed), epochs=epochs))
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), stored)
        nets.append(net.eval())
    return nets


def activation_sample(data, n: int) -> torch.Tensor:
    x, _ = data.split("train")
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(7))[:n]]


def retrained(net, data) -> float:
    """Test accuracy after one epoch of the studio's retraining recipe (keep-best on a held-out tenth)."""
    x, y = data.split("train")
    return evaluate(retrain(net, x, y, RetrainSpec(), 1).model, *data.split("test")).accuracy


def fusion_rows(parents: list, data, sample: torch.Tensor, methods: dict[str, FusionOptions] = METHODS) -> dict:
    """method -> (one-shot %, after one epoch %, seconds of the fusion, the one-shot network or None)."""
    x_te, y_te = data.split("test")
    out = {f"parent {i + 1}": (evaluate(p, x_te, y_te).accuracy, "", "", p) for i, p in enumerate(parents)}
    with torch.no_grad():
        out["ensemble"] = (score_logits(ensemble_log_probs(parents, x_te), y_te).accuracy, "", "", None)
    average = vanilla_average(parents)
    out["vanilla average"] = (evaluate(average, x_te, y_te).accuracy, retrained(average, data), "", average)
    for name, opts in methods.items():
        start = time.perf_counter()
        fused = fuse(parents, opts, sample).model
        seconds = time.perf_counter() - start
        out[name] = (evaluate(fused, x_te, y_te).accuracy, retrained(fused, data), seconds, fused)
        print(f"  {name}: {out[name][0]:.2f} / {out[name][1]:.2f} % ({seconds:.2f} s)", file=sys.stderr, flush=True)
    return out


def width_rows(small, wide, data, sample: torch.Tensor) -> list[list]:
    """vit_tiny and vit_tiny_doub fused into each one's width."""
    x_te, y_te = data.split("test")
    rows = []
    for anchor, label in ((0, "vit_tiny"), (1, "vit_tiny_doub")):
        for name, opts in WIDTHS.items():
            start = time.perf_counter()
            fused = fuse([small, wide], replace(opts, anchor=anchor), sample).model
            seconds = time.perf_counter() - start
            rows.append([f"{name} into {label}", count_parameters(fused), evaluate(fused, x_te, y_te).accuracy,
                         retrained(fused, data), seconds])
    return rows


def curvature_row(name: str, net, data) -> list:
    """The Hessian page's analysis of one network on the test split, with its seconds."""
    spec = HessianSpec()
    x_te, y_te = data.split("test")
    batches = fixed_batches(x_te, y_te, spec.batch_size, spec.batches)
    result = analyse(net, batches, spec)
    start = time.perf_counter()
    lambdas = torch.linspace(spec.lambda_min, spec.lambda_max, spec.lambda_points)
    perturbation_curve(net, batches, result.top_eigenvectors[0], lambdas)
    direction = filter_normalized_direction(net, seed=0)
    perturbation_curve(net, batches, direction / direction.norm(), lambdas)
    curves = time.perf_counter() - start
    t = result.timings
    return [name, *(f"{v:.2f}" for v in result.top_eigenvalues), f"{result.trace:.1f} ± {result.trace_std_error:.1f}",
            t["top_eigenvalues"], t["trace"], t["density"], curves, t["total"] + curves]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--keep", default=None, help="folder to store the trained parents in (a rerun reads them)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    start = time.perf_counter()
    first, second, wide = vit_parents(data, (("vit_tiny", 0), ("vit_tiny", 1), ("vit_tiny_doub", 2)), args.epochs,
                                      args.keep)
    trained = time.perf_counter() - start
    print(f"parents trained in {trained:.0f} s", file=sys.stderr, flush=True)
    sample = activation_sample(data, args.sample)
    found = fusion_rows([first, second], data, sample)
    print(f"\n### vit_tiny on digits: two parents (seeds 0, 1), {args.epochs} epochs of the default recipe each "
          f"(three parents: {trained:.0f} s), activation sample {args.sample}; {machine()}\n")
    print(table(["method", "one-shot %", "after 1 epoch %", "fusion s"],
                [[name, acc, tuned, seconds] for name, (acc, tuned, seconds, _) in found.items()]))
    print(f"\n### vit_tiny (seed 0) with vit_tiny_doub (seed 2: {evaluate(wide, *data.split('test')).accuracy:.2f} %) "
          "into each width\n")
    print(table(["fusion", "parameters", "one-shot %", "after 1 epoch %", "fusion s"], width_rows(first, wide, data,
                                                                                                 sample)))
    print("\n### curvature (HessianSpec defaults, test split): top eigenvalues, trace, seconds per part\n")
    analysed = [curvature_row(name, found[name][3], data) for name in
                ("parent 1", "OT weights, heads as units")]
    print(table(["network", "λ1", "λ2", "λ3", "trace", "top eig. s", "trace s", "density s", "curves s", "total s"],
                analysed), flush=True)


if __name__ == "__main__":
    main()
