"""`hessian`: curvature of parents and their fusion."""
from __future__ import annotations

import argparse
import math

from otcore.cli.flags import Bar, add_common, add_hessian, hessian_spec, parents_of, specs, train_spec
from otcore.cli.registry import command
from otcore.config import FusionSpec, SpecError, TrainSpec
from otcore.methods import Method, is_parent


def _hessian_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="cached parents to analyse")
    p.add_argument("--epochs", type=int, default=TrainSpec().epochs)
    p.add_argument("--lr", type=float, default=TrainSpec().lr)
    p.add_argument("--momentum", type=float, default=TrainSpec().momentum)
    p.add_argument("--weight-decay", type=float, default=TrainSpec().weight_decay)
    p.add_argument("--train-batch-size", dest="batch_size", type=int, default=TrainSpec().batch_size)
    p.add_argument("--parents", nargs="+", default=None, help="checkpoint files to analyse, in this order")
    p.add_argument("--paths", nargs="+", default=[], choices=["naive", "ot-weights", "ot-activations",
                                                              "weight-matching"],
                   help="also the loss barrier from parent 1 to parent 2 after aligning 2 to 1 these ways")
    p.add_argument("--path-repair", action="store_true", help="REPAIR every point of those paths")
    p.add_argument("--path-points", type=int, default=11, help="points along each path")
    d = TrainSpec()  # the cached parents it analyses saw the whole train split (train_spec reads these)
    p.set_defaults(partition=d.partition, choice=d.partition_classes, personal_class_idx=d.personal_class,
                   partition_fraction=d.partition_fraction, partition_seed=d.partition_seed)
    add_hessian(p)


@command("hessian", _hessian_args)
def run_hessian(args: argparse.Namespace) -> dict:
    """Top eigenvalues, trace, spectral density and loss along the top eigenvector of each model."""
    from otcore.analysis import curvatures
    from otcore.pipeline import fuse_and_compare, method_row

    spec = hessian_spec(args)
    data, model = specs(args)
    bar = Bar("hessian")
    parents = parents_of(args, bar)
    if args.parents:
        from otcore.pipeline import dataset

        rows = [method_row(p.name, p.model, dataset(data), p.key) for p in parents]
    else:  # the cached parents and their (default) OT fusion
        comparison = fuse_and_compare(data, model, parents, FusionSpec(), train_spec(args), args.device, bar)
        rows = [r for r in comparison.rows if r.model is not None and (is_parent(r.id) or r.id == Method.OT_FUSION)]
    smallest = min(sum(p.numel() for p in r.model.parameters()) for r in rows)
    if spec.top_k > smallest:  # deflation past the last eigenvalue only finds noise
        bar.close()
        raise SpecError(f"top-k {spec.top_k} exceeds the {smallest} parameters of the smallest network")
    if args.paths and len(parents) != 2:
        bar.close()
        raise SpecError(f"--paths needs exactly two parents, got {len(parents)}")
    results = curvatures(data, rows, spec, args.device, bar)
    bar.close()
    models = [{"name": c.name, "top_eigenvalues": c.top_eigenvalues, "trace": c.trace,
               "trace_std_error": c.trace_std_error if math.isfinite(c.trace_std_error) else None,  # one probe
               "trace_method": c.trace_method,
               "density": {"nodes": c.density_nodes, "weights": c.density_weights},
               "perturbation": {"lambdas": c.perturbation.lambdas, "loss": c.perturbation.loss,
                                "loss_std": c.perturbation.loss_std, "accuracy": c.perturbation.accuracy},
               "test_accuracy": c.test_accuracy, "train_accuracy": c.train_accuracy, "cached": c.cached}
              for c in results]
    text = "\n".join(f"{m['name']:24s} top eigenvalues {', '.join(f'{v:.4g}' for v in m['top_eigenvalues'])}  "
                     f"trace {m['trace']:.4g}" for m in models)
    if not args.paths:
        return {"models": models, "text": text}
    from otcore.aligned_paths import aligned_path

    paths = [aligned_path(data, parents, FusionSpec(), spec, how, args.path_repair, args.path_points, args.device)
             for how in args.paths]
    text += "".join(f"\nbarrier {p.barrier:.4f}  {p.label}" for p in paths)
    return {"models": models, "paths": [p.json() for p in paths], "text": text}
