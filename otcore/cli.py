"""Command line: python -m otcore train|list|fuse|... [--json].

Every subcommand calls the same pipeline functions as the dashboard. With --json, stdout
carries exactly one JSON object; progress always goes to stderr. Bad input exits with code 2
and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import replace
from typing import Any, Callable

from tqdm import tqdm

# Only torch-free modules at the top: a `train` answered from the cache never imports torch.
from otcore.config import (ARCHITECTURES, DATASETS, DEVICE_CHOICES, FUSED_MASKS, PARTITIONS, SCHEDULES, DataSpec,
                           FusionSpec, HessianSpec, ModelSpec, PruneSpec, RetrainSpec, SpecError, TRACE_METHODS,
                           TrainSpec, check_partition_parents, parent_key, parse_classes)
from otcore.threads import apply_policy

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]]] = {}


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]) -> Callable:
    """Register a subcommand: its argument builder and its runner (returns the JSON result)."""

    def wrap(run: Callable[[argparse.Namespace], dict]) -> Callable:
        COMMANDS[name] = (add_args, run)
        return run

    return wrap


class Bar:
    """A tqdm bar on stderr fed by pipeline progress callbacks (what, fraction).

    Drawn at the first report, not before: an input error found before any work starts must
    leave stderr with its one `error:` line only.
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def __call__(self, what: str, done: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=1000, desc=self.desc, file=sys.stderr, leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self.bar.set_postfix_str(what[:60], refresh=False)
        self.bar.update(int(1000 * done) - self.bar.n)  # update() honours tqdm's mininterval

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_common(p: argparse.ArgumentParser) -> None:
    """Dataset, architecture, device and cache flags shared by every subcommand."""
    p.add_argument("--dataset", default=DataSpec().name, choices=DATASETS)
    p.add_argument("--arch", default=ModelSpec().arch, choices=ARCHITECTURES)
    p.add_argument("--data-root", default=None, help="torchvision root folder of a real dataset")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--cache-dir", default=None, help="cache folder (default: $OTCORE_CACHE_DIR or cached_models/)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_training(p: argparse.ArgumentParser) -> None:
    """Flags of TrainSpec; --seeds picks the parents."""
    d = TrainSpec()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one parent per seed")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--partition", default=d.partition, choices=PARTITIONS,
                   help="which part of the train split each parent sees (labels, personalized and small_big: two "
                        "parents, the first sees part 1)")
    p.add_argument("--choice", type=parse_classes, default=d.partition_classes, metavar="C,C,...",
                   help="labels: the first parent's classes, e.g. 0,2,4,6,8 (default: the even classes)")
    p.add_argument("--personal-class-idx", type=int, default=d.personal_class,
                   help="personalized: the class only the first parent sees")
    p.add_argument("--partition-fraction", "--personal-split-frac", type=float, default=d.partition_fraction,
                   help="personalized: share of the other classes the first parent also sees; small_big: the first "
                        "parent's share of the split")
    p.add_argument("--partition-seed", type=int, default=d.partition_seed,
                   help="seeds the shuffle of personalized and small_big")


def specs(args: argparse.Namespace) -> tuple[DataSpec, ModelSpec]:
    """The data and model specs of the common flags."""
    return DataSpec(args.dataset, args.data_root, args.download), ModelSpec(args.arch)


def train_spec(args: argparse.Namespace, epochs: int | None = None) -> TrainSpec:
    """The TrainSpec of the training flags."""
    return TrainSpec(epochs=args.epochs if epochs is None else epochs, batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum, weight_decay=args.weight_decay, partition=args.partition,
                     partition_classes=tuple(args.choice), personal_class=args.personal_class_idx,
                     partition_fraction=args.partition_fraction, partition_seed=args.partition_seed)


def parents_of(args: argparse.Namespace, bar: Bar) -> list:
    """Parents from --parents files, else the cached (or newly trained) parents of --seeds."""
    from otcore.pipeline import load_parent, train_parents

    data, model = specs(args)
    if getattr(args, "parents", None):
        return [load_parent(path, data, model, f"parent {i + 1}", args.device) for i, path in enumerate(args.parents)]
    return train_parents(data, model, train_spec(args), args.seeds, args.device, bar)


def _train_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_training(p)


@command("train", _train_args)
def run_train(args: argparse.Namespace) -> dict:
    """Train parents (one per seed), store them in the cache, report their test accuracy."""
    parents = cached_parents(args)
    if parents is None:
        bar = Bar("train")
        try:
            parents = [(p.name, p.key, p.metrics) for p in parents_of(args, bar)]
        finally:
            bar.close()
    return train_json(parents, args.seeds)


def cached_parents(args: argparse.Namespace) -> list[tuple[str, str, dict]] | None:
    """(name, key, metrics) of every parent of --seeds when all are verified cache hits, else None; torch-free.

    The fast path of `train`: reading the entries' records spares the import of torch, most of
    a cached call's time. Anything else (a miss, a damaged entry) is left to the pipeline.
    """
    if args.device == "cuda":  # only torch can tell whether the asked-for GPU is there
        return None
    from otcore.cache import default_cache

    data, model = specs(args)
    check_partition_parents(train_spec(args), len(args.seeds))
    cache, parents = default_cache(), []
    for i, seed in enumerate(args.seeds):
        key = parent_key(data, model, replace(train_spec(args), seed=seed, part=i))
        record = cache.load_record(key)
        if record is None or record.kind != "parent":
            return None
        parents.append((f"parent {i + 1}", key, {**record.metrics, "cached": True}))  # named as train_parents does
    return parents


def train_json(parents: list[tuple[str, str, dict]], seeds: list[int]) -> dict:
    """The headless contract of `train`: each parent's (name, key, metrics) with its seed, and the text lines."""
    out = {"parents": [{"name": name, "seed": s, "key": key, "test_accuracy": m["test"]["accuracy"],
                        "test_loss": m["test"]["loss"], "train_accuracy": m["train"]["accuracy"],
                        "cached": m["cached"], "seconds": m["seconds"],
                        "train_examples": sum(m["class_counts"]),
                        "classes": [c for c, n in enumerate(m["class_counts"]) if n]}
                       for (name, key, m), s in zip(parents, seeds)]}
    out["text"] = "\n".join(f"{p['name']} (seed {p['seed']}): test accuracy {p['test_accuracy']:.2f}%"
                            f"{' (cached)' if p['cached'] else ''}" for p in out["parents"])
    return out


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default=None, help="only entries of this kind (parent, fusion, prune, hessian)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", action="store_true")


@command("list", _list_args)
def run_list(args: argparse.Namespace) -> dict:
    """The cache's manifest: verified entries only (a damaged or malformed one is skipped with a warning)."""
    from otcore.cache import config_field, default_cache

    rows = default_cache().entries(args.kind)  # the cache logs one warning per skipped entry
    # A diverged run's entry may hold NaN (Python's json reads and writes it); strict JSON says null.
    entries = [{"key": r.key, "kind": r.kind, "config": _nulled(r.config), "metrics": _nulled(r.metrics),
                "created": r.created, "bytes": r.size} for r in rows]
    lines = [f"{r.key}  {r.kind:12s} {config_field(r.config, 'data', 'name'):8s} "
             f"{config_field(r.config, 'model', 'arch'):24s} {_headline(r.metrics)}" for r in rows]
    return {"entries": entries, "text": "\n".join(lines) or "the cache is empty"}


def _nulled(value: Any) -> Any:
    """value with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    return [_nulled(v) for v in value] if isinstance(value, list) else value


def _headline(metrics: dict) -> str:
    if "test" in metrics:
        return f"test accuracy {metrics['test']['accuracy']:.2f}%"
    if "rows" in metrics:
        return ", ".join(f"{r['method']} {r['test']['accuracy']:.1f}%" for r in metrics["rows"][-2:])
    return ""


def add_fusion(p: argparse.ArgumentParser) -> None:
    """Flags of FusionSpec, named as in the reference implementation where it had them."""
    d = FusionSpec()
    p.add_argument("--parents", nargs="+", default=None, help="checkpoint files (paper format, state_dict, safetensors)")
    p.add_argument("--mode", default="wts", choices=["wts", "acts", "weights", "activations"],
                   help="align by weights (wts) or pre-activations (acts)")
    p.add_argument("--act-samples", type=int, default=d.act_samples)
    p.add_argument("--act-seed", type=int, default=d.act_seed)
    p.add_argument("--solver", default=d.solver, choices=["emd", "sinkhorn"])
    p.add_argument("--reg", type=float, default=d.reg)
    p.add_argument("--ground-metric", default=d.ground_metric, choices=["euclidean", "cosine"])
    p.add_argument("--squared", action="store_true", help="square the ground metric")
    p.add_argument("--normalize", default=d.normalize, choices=["none", "max", "median", "mean"])
    p.add_argument("--no-past-correction", action="store_true")
    p.add_argument("--no-correction", action="store_true", help="no marginal correction of the plans")
    p.add_argument("--importance", action="store_true", help="importance-weighted (l1) marginals")
    p.add_argument("--ensemble-step", type=float, default=d.ensemble_step, help="weight of the anchor parent")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="per-parent weights (N parents)")
    p.add_argument("--anchor", type=int, default=d.anchor, help="index of the anchor parent (0-based)")
    p.add_argument("--no-skip-last-layer", action="store_true", help="align the output layer too")
    p.add_argument("--renormalize", action="store_true", help="REPAIR-style rescaling after fusion")
    p.add_argument("--alignment", default="ot", choices=["ot", "weight-matching", "cca", "zipit"],
                   help="ot: transport plans; weight-matching: Git Re-Basin; cca: CCA Merge; zipit: ZipIt!")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    add_retraining(p)


def add_retraining(p: argparse.ArgumentParser) -> None:
    """Flags of RetrainSpec: the one recipe of fine-tuning and of every retraining (not the parents' training)."""
    d = RetrainSpec()
    p.add_argument("--retrain-lr", type=float, default=d.lr, help="lr of fine-tuning / retraining (not --lr)")
    p.add_argument("--retrain-schedule", default=d.schedule, choices=SCHEDULES,
                   help="cosine: to 0 over the retraining; step: x --retrain-decay-factor every --retrain-decay-epochs")
    p.add_argument("--retrain-decay-epochs", type=int, default=d.decay_epochs)
    p.add_argument("--retrain-decay-factor", type=float, default=d.decay_factor)
    p.add_argument("--retrain-fused-only", action="store_true",
                   help="retrain the OT-fused net only, not the vanilla average (reference: --retrain-geometric-only)")


def retrain_spec(args: argparse.Namespace) -> RetrainSpec:
    """The RetrainSpec of the retraining flags."""
    return RetrainSpec(lr=args.retrain_lr, schedule=args.retrain_schedule, decay_epochs=args.retrain_decay_epochs,
                       decay_factor=args.retrain_decay_factor, retrain_vanilla=not args.retrain_fused_only)


def fusion_spec(args: argparse.Namespace) -> FusionSpec:
    """The FusionSpec of the fusion flags."""
    return FusionSpec(
        mode={"wts": "weights", "acts": "activations"}.get(args.mode, args.mode), act_samples=args.act_samples,
        act_seed=args.act_seed, solver=args.solver, reg=args.reg, ground_metric=args.ground_metric,
        squared=args.squared, normalize=args.normalize, past_correction=not args.no_past_correction,
        marginal_correction=not args.no_correction, marginals="importance" if args.importance else "uniform",
        ensemble_step=args.ensemble_step, weights=tuple(args.weights) if args.weights else None, anchor=args.anchor,
        skip_last_layer=not args.no_skip_last_layer, renormalize=args.renormalize,
        alignment=args.alignment.replace("-", "_"), finetune_epochs=args.finetune_epochs, retrain=retrain_spec(args))


def checked_fusion_spec(args: argparse.Namespace) -> FusionSpec:
    """fusion_spec, with its anchor and per-parent weights checked against the number of parents before any work."""
    spec = fusion_spec(args)
    spec.parent_weights(len(args.parents) if getattr(args, "parents", None) else len(args.seeds))
    return spec


def comparison_json(comparison: Any) -> dict:
    """The headless contract of a comparison: accuracies (percent), rows, seconds."""
    rows = [{"method": r.method, "test_accuracy": r.test.accuracy, "test_loss": r.test.loss,
             "train_accuracy": r.train.accuracy, "parameters": r.parameters, "inference_ms": r.inference_ms}
            for r in comparison.rows]
    text = "\n".join(f"{r['method']:24s} {r['test_accuracy']:6.2f}%  loss {r['test_loss']:.4f}" for r in rows)
    return {**comparison.accuracies(), "seconds": comparison.seconds, "rows": rows, "cached": comparison.cached,
            "text": text}


def _fuse_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_training(p)
    add_fusion(p)


@command("fuse", _fuse_args)
def run_fuse(args: argparse.Namespace) -> dict:
    """Fuse parents (files or cached) and compare with every baseline."""
    from otcore.pipeline import fuse_and_compare

    spec = checked_fusion_spec(args)
    bar = Bar("fuse")
    try:
        parents = parents_of(args, bar)
        data, model = specs(args)
        comparison = fuse_and_compare(data, model, parents, spec, train_spec(args, spec.finetune_epochs),
                                      args.device, bar)
    finally:
        bar.close()
    return comparison_json(comparison)


def _report_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_training(p)
    add_fusion(p)
    p.add_argument("--out", required=True, help="HTML file to write (self-contained, opens offline)")
    p.add_argument("--title", default=None, help="report title (default: 'OT fusion report: DATASET / ARCH')")


@command("report", _report_args)
def run_report(args: argparse.Namespace) -> dict:
    """Fuse as `fuse` does and write the Fusion page's HTML report (tables, interactive charts)."""
    from pathlib import Path

    from otcore.checkpoints import write_atomic
    from otcore.pipeline import fuse_and_compare
    from otcore.report import fusion_report

    spec = checked_fusion_spec(args)
    out = Path(args.out)
    # Checked before the work, not found out after it: a folder, a missing folder, a read-only one.
    if out.is_dir():
        raise SpecError(f"--out {out} is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    folder = out.parent
    if not folder.is_dir():
        raise SpecError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or out.exists() and not os.access(out, os.W_OK):
        raise SpecError(f"--out {out}: cannot write there (permission denied)")
    bar = Bar("report")
    parents = parents_of(args, bar)
    data, model = specs(args)
    comparison = fuse_and_compare(data, model, parents, spec, train_spec(args, spec.finetune_epochs), args.device, bar)
    bar.close()
    html = fusion_report(comparison, data, model, parents, spec, args.device, args.title)
    write_atomic(out, html.encode("utf-8"))
    result = comparison_json(comparison)
    result.update(out=str(out), bytes=out.stat().st_size, text=f"{result['text']}\nreport written to {out}")
    return result


def add_pruning(p: argparse.ArgumentParser) -> None:
    """Flags of PruneSpec."""
    d = PruneSpec()
    p.add_argument("--type", default=d.type, choices=["unstructured", "structured"])
    p.add_argument("--scope", default=d.scope, choices=["conv", "linear", "all"])
    p.add_argument("--norm", type=int, default=d.norm, help="n of the Ln norm ranking filters (structured)")
    p.add_argument("--global", dest="global_", action="store_true", help="rank weights across layers")
    p.add_argument("--prune-last-layer", action="store_true", help="prune the classifier layer too")
    p.add_argument("--order", default=d.order, choices=["prune-fuse", "fuse-prune"])
    p.add_argument("--retrain-parents-epochs", type=int, default=d.retrain_parents_epochs)
    p.add_argument("--retrain-epochs", type=int, default=d.retrain_epochs)
    p.add_argument("--fused-masks", default=d.fused_masks, choices=FUSED_MASKS,
                   help="prune-fuse: prune the fused nets again at --fraction (reprune) or keep their own zeros")


def prune_spec(args: argparse.Namespace, fraction: float) -> PruneSpec:
    """The PruneSpec of the pruning flags at one fraction."""
    return PruneSpec(fraction=fraction, type=args.type, scope=args.scope, norm=args.norm, global_=args.global_,
                     keep_last_layer=not args.prune_last_layer, order=args.order,
                     retrain_parents_epochs=args.retrain_parents_epochs, retrain_epochs=args.retrain_epochs,
                     retrain=retrain_spec(args), fused_masks=args.fused_masks)


def prune_json(comparison: Any) -> dict:
    """comparison_json plus sparsity: one value per single network, in row order."""
    out = comparison_json(comparison)
    sparsity = comparison.extra["sparsity"]
    out["sparsity"] = [sparsity[r.method] for r in comparison.rows if r.method in sparsity]
    out["sparsity_by_method"] = sparsity
    out["fraction"], out["type"] = comparison.extra["fraction"], comparison.extra["type"]
    return out


def _prune_args(p: argparse.ArgumentParser) -> None:
    _fuse_args(p)
    add_pruning(p)
    p.add_argument("--fraction", type=float, required=True, help="fraction pruned, in [0, 1)")


@command("prune", _prune_args)
def run_prune(args: argparse.Namespace) -> dict:
    """Prune the parents before or after fusion and compare every method at one fraction."""
    from otcore.pipeline import prune_and_compare

    spec, fusion = prune_spec(args, args.fraction), checked_fusion_spec(args)
    bar = Bar("prune")
    parents = parents_of(args, bar)
    data, model = specs(args)
    comparison = prune_and_compare(data, model, parents, spec, fusion, train_spec(args), args.device, bar)
    bar.close()
    return prune_json(comparison)


DEFAULT_FRACTIONS = "0,0.3,0.5,0.7"


def _sweep_args(p: argparse.ArgumentParser) -> None:
    _fuse_args(p)
    add_pruning(p)
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a swept field and its values; repeat for a grid (first varies slowest). FIELD: any field "
                        "of the prune, fusion or train specs (prune.fraction, prune.type, fusion.mode, train.epochs, "
                        "prune.retrain_epochs, ...), seed (parents' seeds shifted by seed x their count), seeds "
                        "(explicit sets, 0+1), arch, dataset")
    p.add_argument("--fractions", default=None,
                   help=f"comma-separated prune fractions in [0, 1), swept last (default {DEFAULT_FRACTIONS} "
                        "unless --grid sweeps prune.fraction)")
    p.add_argument("--seed-sets", nargs="+", default=None,
                   help="parent sets to repeat the sweep over, e.g. 0,1 2,3 (default: --seeds)")
    p.add_argument("--step", default="prune", choices=["prune", "fusion"],
                   help="what a point runs: prune then compare every method, or fuse only (no pruning)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: one point after another in this process; ray: each point a Ray task")
    p.add_argument("--ray-address", default=None,
                   help="'auto' joins the running Ray cluster, HOST:PORT or ray://HOST:10001 a given one; "
                        "none starts a local Ray instance")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: every core)")
    p.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs Ray reserves per point, and so its torch threads (local points run with "
                        "this process's thread policy)")
    p.add_argument("--gpus-per-task", type=float, default=0.0,
                   help="GPUs Ray reserves per point (0.5: two points share a GPU)")
    p.add_argument("--retries", type=int, default=2, help="tries after a point's first failure before it is reported")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError(f"{what} must be comma-separated numbers, got '{text}'") from None


def _sweep_spec(args: argparse.Namespace) -> Any:
    """The SweepSpec of the sweep flags: --grid entries, then --seed-sets, then --fractions."""
    from otcore.sweep import SweepSpec, parse_grid

    if getattr(args, "parents", None):
        raise SpecError("sweep trains its parents from --seeds (or --seed-sets, --grid seed=...); "
                        "checkpoint files (--parents) work with fuse and prune")
    grid = list(parse_grid(args.grid))
    if args.seed_sets:
        grid.append(("seeds", tuple(s.replace(",", "+") for s in args.seed_sets)))
    if args.step == "prune" and "prune.fraction" not in dict(grid):
        grid.append(("prune.fraction", tuple(_floats(args.fractions or DEFAULT_FRACTIONS, "--fractions"))))
    elif args.fractions is not None:
        raise SpecError("--fractions sweeps the prune step's fraction; it clashes with --step fusion and with "
                        "--grid prune.fraction=...")
    if args.executor == "local" and args.ray_address:
        raise SpecError("--ray-address needs --executor ray")
    data, model = specs(args)
    return SweepSpec(tuple(grid), data, model, train_spec(args), prune_spec(args, PruneSpec().fraction),
                     fusion_spec(args), tuple(args.seeds), args.step, args.device)


@command("sweep", _sweep_args)
def run_sweep(args: argparse.Namespace) -> dict:
    """A grid of settings run here or on a Ray cluster; every point cached, so a sweep resumes."""
    from otcore.executors import executor
    from otcore.sweep import run_sweep as sweep

    spec = _sweep_spec(args)
    runner = executor(args.executor, args.ray_address, args.retries, args.cpus_per_task,
                      **({"num_cpus": args.ray_cpus, "gpus_per_task": args.gpus_per_task}
                         if args.executor == "ray" else {}))
    bar = Bar(f"sweep ({args.executor})")
    try:
        result = sweep(spec, runner, progress=bar)
    finally:
        bar.close()
    rows, lines = [], []
    for point in result.points:
        row = prune_json(point.comparison) if spec.step == "prune" else comparison_json(point.comparison)
        row.pop("text", None)
        rows.append({**row, "seeds": list(point.seeds), "point": point.values, "key": point.key})
        label = ", ".join(f"{k}={v}" for k, v in point.values.items())
        lines.append(f"{label}: OT {row['ot_fusion']:.2f}%  vanilla {row.get('vanilla_average', float('nan')):.2f}%  "
                     f"ensemble {row['prediction_ensemble']:.2f}%{'  (cached)' if point.cached else ''}")
    failed = [{"point": f.values, "seeds": list(f.seeds), "key": f.key, "error": f.error, "attempts": f.attempts}
              for f in result.failed]
    lines += [f"FAILED {', '.join(f'{k}={v}' for k, v in f['point'].items())} after {f['attempts']} tries: "
              f"{f['error']}" for f in failed]
    return {"rows": rows, "failed": failed, "executor": result.executor, "seconds": result.seconds,
            "sweep": result.key, "status": result.status, "text": "\n".join(lines)}


def batches_count(text: str) -> int | str:
    """--batches: a whole number or 'all'."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'all', got '{text}'") from None


def add_hessian(p: argparse.ArgumentParser) -> None:
    """Flags of HessianSpec."""
    d = HessianSpec()
    p.add_argument("--split", default=d.split, choices=["train", "test"])
    p.add_argument("--batches", type=batches_count, default=d.batches,
                   help="batches the Hessian averages, or 'all': the whole split in batches, streamed")
    p.add_argument("--batch-size", dest="hessian_batch_size", type=int, default=d.batch_size)
    p.add_argument("--hessian-seed", type=int, default=None, help="draw the batches with this seed (default: in order)")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--power-iters", type=int, default=d.power_iters)
    p.add_argument("--tol", type=float, default=d.tol)
    p.add_argument("--trace-method", default=d.trace_method, choices=TRACE_METHODS,
                   help="exact: sum of the exact Hessian diagonal (nets piecewise linear in each weight, "
                        "as the whole model zoo); hutchinson: Rademacher estimate; auto: exact where possible")
    p.add_argument("--trace-probes", type=int, default=d.trace_probes, help="probes of the Hutchinson estimate")
    p.add_argument("--lanczos-iters", type=int, default=d.lanczos_iters)
    p.add_argument("--density-probes", type=int, default=d.density_probes)
    p.add_argument("--lambda-min", type=float, default=d.lambda_min)
    p.add_argument("--lambda-max", type=float, default=d.lambda_max)
    p.add_argument("--lambda-points", type=int, default=d.lambda_points)


def hessian_spec(args: argparse.Namespace) -> HessianSpec:
    """The HessianSpec of the Hessian flags."""
    return HessianSpec(split=args.split, batches=args.batches, batch_size=args.hessian_batch_size,
                       seed=args.hessian_seed, top_k=args.top_k, power_iters=args.power_iters, tol=args.tol,
                       trace_method=args.trace_method, trace_probes=args.trace_probes, lanczos_iters=args.lanczos_iters,
                       density_probes=args.density_probes, lambda_min=args.lambda_min, lambda_max=args.lambda_max,
                       lambda_points=args.lambda_points)


def _hessian_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="cached parents to analyse")
    p.add_argument("--epochs", type=int, default=TrainSpec().epochs)
    p.add_argument("--lr", type=float, default=TrainSpec().lr)
    p.add_argument("--momentum", type=float, default=TrainSpec().momentum)
    p.add_argument("--weight-decay", type=float, default=TrainSpec().weight_decay)
    p.add_argument("--train-batch-size", dest="batch_size", type=int, default=TrainSpec().batch_size)
    p.add_argument("--parents", nargs="+", default=None, help="checkpoint files to analyse, in this order")
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
        rows = [r for r in comparison.rows if r.model is not None and r.method in
                [p.name for p in parents] + ["OT fusion"]]
    smallest = min(sum(p.numel() for p in r.model.parameters()) for r in rows)
    if spec.top_k > smallest:  # deflation past the last eigenvalue only finds noise
        bar.close()
        raise SpecError(f"top-k {spec.top_k} exceeds the {smallest} parameters of the smallest network")
    results = curvatures(data, rows, spec, args.device, bar)
    bar.close()
    models = [{"name": c.name, "top_eigenvalues": c.top_eigenvalues, "trace": c.trace,
               "trace_std_error": c.trace_std_error if math.isfinite(c.trace_std_error) else None,  # one probe
               "trace_method": c.trace_method,
               "density": {"nodes": c.density_nodes, "weights": c.density_weights},
               "perturbation": {"lambdas": c.perturbation["lambdas"], "loss": c.perturbation["loss_mean"],
                                "loss_std": c.perturbation["loss_std"],
                                "accuracy": c.perturbation["accuracy_mean"]},
               "test_accuracy": c.test_accuracy, "train_accuracy": c.train_accuracy, "cached": c.cached}
              for c in results]
    text = "\n".join(f"{m['name']:24s} top eigenvalues {', '.join(f'{v:.4g}' for v in m['top_eigenvalues'])}  "
                     f"trace {m['trace']:.4g}" for m in models)
    return {"models": models, "text": text}


def main(argv: list[str] | None = None) -> int:
    """Parse, run, print; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m otcore", description="OT Fusion Studio, headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run) in COMMANDS.items():
        add_args(sub.add_parser(name, help=(run.__doc__ or "").strip()))
    args = parser.parse_args(argv)
    apply_policy(small_models=getattr(args, "dataset", None) == "digits")  # 8x8 inputs: one thread is fastest
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s")
    if getattr(args, "cache_dir", None):
        os.environ["OTCORE_CACHE_DIR"] = args.cache_dir
    try:
        result = COMMANDS[args.command][1](args)
    except (SpecError, ValueError, FileNotFoundError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = result.pop("text", None)
    if args.json or text is None:
        try:
            text = dumps(result)
        except ValueError as err:  # a non-finite number: a diverged computation, not valid JSON
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(text)
    return 0


def dumps(result: dict) -> str:
    """The result as strict JSON: NaN and infinity are refused (ValueError naming the field), never printed."""
    try:
        return json.dumps(result, allow_nan=False)
    except ValueError:
        raise ValueError(f"the result holds a non-finite number at {_non_finite(result, 'result')}, "
                         "which JSON cannot carry (did the computation diverge?)") from None


def _non_finite(value: Any, where: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} ({value})"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for name, item in items:
        if found := _non_finite(item, f"{where}[{name!r}]" if isinstance(name, str) else f"{where}[{name}]"):
            return found
    return ""
