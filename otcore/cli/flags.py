"""Flag builders shared by the subcommands, the specs they turn into, and the progress bar.

Only torch-free modules at the top: a `train` answered from the cache never imports torch.
"""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from otcore.config import (ARCHITECTURES, DATASETS, DEVICE_CHOICES, FUSED_MASKS, HEAD_MODES, PARTITIONS, SCHEDULES,
                           DataSpec,
                           FusionSpec, HessianSpec, ModelSpec, PruneSpec, RetrainSpec, TRACE_METHODS, TrainSpec,
                           parse_classes)


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
    p.add_argument("--arch", default=ModelSpec().arch, metavar="ARCH",
                   help=f"one of {', '.join(ARCHITECTURES)}; or torchvision:NAME, timm:NAME (any classifier of the "
                        "library, built for the dataset's classes), or file:PATH.py:NAME (your own nn.Module class or "
                        "builder taking num_classes: runs that file's code)")
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
    from otcore.user_paths import checked

    data, model = specs(args)
    if getattr(args, "parents", None):
        for i, path in enumerate(args.parents):  # every name checked before the first file is read
            checked(path, f"--parents: parent {i + 1}")
        return [load_parent(path, data, model, f"parent {i + 1}", args.device) for i, path in enumerate(args.parents)]
    return train_parents(data, model, train_spec(args), args.seeds, args.device, bar)


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
    p.add_argument("--renormalize", "--repair", action="store_true",
                   help="REPAIR: restore each fused neuron's statistics on the activation sample")
    p.add_argument("--repair-bias", action="store_true",
                   help="with --repair: bias-free layers gain a bias per neuron, so REPAIR restores the mean too")
    p.add_argument("--alignment", default="ot", choices=["ot", "weight-matching", "cca", "zipit", "pleas"],
                   help="ot: transport plans; weight-matching: Git Re-Basin; cca: CCA Merge; zipit: ZipIt!; "
                        "pleas: PLeaS (partial matching, then least-squares weights)")
    p.add_argument("--width", type=float, default=d.width,
                   help="fused width per layer as a multiple of the anchor's: 1 merges every feature, N (the number of "
                        "parents) none, so the fused net is the ensemble; above 1 only with zipit or pleas")
    p.add_argument("--heads", default=d.heads, choices=list(HEAD_MODES),
                   help="attention heads of a transformer: units (heads matched as blocks, then channels within them), "
                        "within (heads stay in place), flat (heads ignored); other networks have none")
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
    p.add_argument("--retrain-validation", type=float, default=d.validation_fraction,
                   help="share of the train split held out to keep the best retraining state (never retrained on)")
    p.add_argument("--retrain-validation-seed", type=int, default=d.validation_seed,
                   help="seeds which examples are held out (and used, with --retrain-examples)")
    p.add_argument("--retrain-examples", type=int, default=d.train_examples,
                   help="examples of the train split retraining uses, validation included (0: all)")


def retrain_spec(args: argparse.Namespace) -> RetrainSpec:
    """The RetrainSpec of the retraining flags."""
    return RetrainSpec(lr=args.retrain_lr, schedule=args.retrain_schedule, decay_epochs=args.retrain_decay_epochs,
                       decay_factor=args.retrain_decay_factor, retrain_vanilla=not args.retrain_fused_only,
                       validation_fraction=args.retrain_validation, validation_seed=args.retrain_validation_seed,
                       train_examples=args.retrain_examples)


def fusion_spec(args: argparse.Namespace) -> FusionSpec:
    """The FusionSpec of the fusion flags."""
    return FusionSpec(
        mode={"wts": "weights", "acts": "activations"}.get(args.mode, args.mode), act_samples=args.act_samples,
        act_seed=args.act_seed, solver=args.solver, reg=args.reg, ground_metric=args.ground_metric,
        squared=args.squared, normalize=args.normalize, past_correction=not args.no_past_correction,
        marginal_correction=not args.no_correction, marginals="importance" if args.importance else "uniform",
        ensemble_step=args.ensemble_step, weights=tuple(args.weights) if args.weights else None, anchor=args.anchor,
        skip_last_layer=not args.no_skip_last_layer, renormalize=args.renormalize, repair_bias=args.repair_bias,
        alignment=args.alignment.replace("-", "_"), width=args.width, heads=args.heads,
        finetune_epochs=args.finetune_epochs,
        retrain=retrain_spec(args))


def checked_fusion_spec(args: argparse.Namespace) -> FusionSpec:
    """fusion_spec, with its anchor and per-parent weights checked against the number of parents before any work."""
    spec = fusion_spec(args)
    spec.parent_weights(len(args.parents) if getattr(args, "parents", None) else len(args.seeds))
    return spec


def fuse_args(p: argparse.ArgumentParser) -> None:
    """Common, training and fusion flags: those of `fuse`."""
    add_common(p)
    add_training(p)
    add_fusion(p)


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
