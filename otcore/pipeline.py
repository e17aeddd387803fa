"""The study, step by step: parents -> (prune) -> fuse -> baselines -> (retrain) -> analyse.

Every step is cached on disk by the hash of the specs (and input models) that determine it,
so the UI, the CLI and the tests run one code path and a setting seen before returns at once.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable

import torch
from torch import nn

from otcore.cache import CacheEntry, DiskCache, default_cache
from otcore.checkpoints import load_checkpoint, load_into
from otcore.comparison import Comparison, MethodResult  # re-exported: results of the steps
from otcore.config import (DataSpec, FusionSpec, ModelSpec, PruneSpec, RetrainSpec, SpecError, TrainSpec,
                           arch_family, check_partition_parents, spec_dict)
from otcore.data import Dataset, load_dataset, sample_inputs
from otcore.device import on_device, resolve_device
from otcore.keys import fusion_key, fusion_only, keyed_model, parent_key, prune_key  # noqa: F401  (re-exported: the steps' keys)
from otcore.fusion import (FusionError, ensemble_log_probs, fuse, gained_biases, resized_copy, vanilla_average,
                           with_biases)
from otcore.methods import Method, label, parent_id
from otcore.models import FusableNet, build_model, count_parameters
from otcore.partition import class_counts, part_indices
from otcore.prune import copy_model, finalize, mask_zeros, prunable_layers, prune_model, sparsity_report
from otcore.train import (Evaluation, ProgressFn, TrainProgress, evaluate, init_model, predict_logits, retrain,
                          score_logits, train)

Progress = Callable[[str, float], None]  # (what is happening, fraction done in [0, 1])

# Display labels of the default (OT) alignment, for callers that look rows up by label; ids: otcore.methods.
PARENT = Method.PARENT.value
OT_FUSION = label(Method.OT_FUSION)
OT_FINETUNED = label(Method.OT_FINETUNED)
OT_RETRAINED = label(Method.OT_RETRAINED)
VANILLA = label(Method.VANILLA)
VANILLA_RETRAINED = label(Method.VANILLA_RETRAINED)  # same recipe and epochs as the fused net's (the reference's)
ENSEMBLE = label(Method.ENSEMBLE)


@dataclass
class Parent:
    """A trained parent network and where it came from."""

    name: str  # shown in tables: 'parent 1', ...
    key: str  # cache key, or a content hash for uploaded checkpoints
    model: FusableNet
    metrics: dict  # {'test': {'accuracy', 'loss'}, 'train': {...}, 'seconds': ...}
    source: str = "trained"  # 'trained' or the checkpoint's file name


def _report(progress: Progress | None, what: str, done: float) -> None:
    if progress is not None:
        progress(what, min(max(done, 0.0), 1.0))


def cached(cache: DiskCache, key: str, compute: Callable[[], CacheEntry]) -> tuple[CacheEntry, bool]:
    """cache.get_or_compute, and whether the entry came from the cache (False: computed now)."""
    computed = []
    entry = cache.get_or_compute(key, lambda: computed.append(True) or compute())
    return entry, not computed


def dataset(data: DataSpec) -> Dataset:
    """The dataset of a spec (memoised per process)."""
    return load_dataset(data.name, data.root, data.download, data.fingerprint)


def _build(data: DataSpec, model: ModelSpec, ds: Dataset | None = None) -> FusableNet:
    ds = ds or dataset(data)
    return build_model(model.arch, ds.input_shape, ds.num_classes)


def _structure(data: DataSpec, model: ModelSpec) -> str:
    """'' for the zoo (their checkpoints' keys stay as they were); else the architecture as keys hold it, so a
    checkpoint's key (and every key after it: fusion, Hessian, paths) changes with the network's structure."""
    return "" if arch_family(model.arch) == "zoo" else json.dumps(keyed_model(data, model), sort_keys=True)


def _state_hash(model: nn.Module, structure: str = "") -> str:
    digest = hashlib.sha256(structure.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _scores(model: nn.Module, ds: Dataset) -> dict:
    return {"test": evaluate(model, ds.x_test, ds.y_test).__dict__,
            "train": evaluate(model, ds.x_train, ds.y_train).__dict__}


def train_parent(data: DataSpec, model: ModelSpec, spec: TrainSpec, device: str = "auto",
                 progress: ProgressFn | None = None, cache: DiskCache | None = None) -> Parent:
    """One parent trained from the seed in spec, from the cache when it was trained before."""
    cache = cache or default_cache()
    key = parent_key(data, model, spec)
    dev = resolve_device(device)

    def compute() -> CacheEntry:
        ds = dataset(data)
        net = init_model(_build(data, model, ds), spec.seed).to(dev)
        seen = part_indices(ds.y_train, spec, ds.num_classes)
        if len(seen) == 0:
            raise SpecError(f"part {spec.part + 1} of the '{spec.partition}' partition of {data.name} is empty")
        start = time.perf_counter()
        train(net, ds.x_train[seen], ds.y_train[seen], spec, progress)
        metrics = {**_scores(net, ds), "seconds": time.perf_counter() - start, "device": str(dev),
                   "input_shape": list(ds.input_shape), "num_classes": ds.num_classes,
                   "class_counts": class_counts(ds.y_train[seen], ds.num_classes)}
        config = {"data": spec_dict(data), "model": spec_dict(model), "train": spec_dict(spec)}
        return CacheEntry(key, "parent", config, metrics, dict(net.state_dict()))

    entry, hit = cached(cache, key, compute)
    # Built from the entry's shapes: a cache hit never loads the dataset.
    net = build_model(model.arch, tuple(entry.metrics["input_shape"]), entry.metrics["num_classes"])
    net.load_state_dict(entry.tensors)
    metrics = {**entry.metrics, "cached": hit}
    return Parent(f"{PARENT} {spec.seed}", key, net.to(dev).eval(), metrics)


def train_parents(data: DataSpec, model: ModelSpec, spec: TrainSpec, seeds: list[int], device: str = "auto",
                  progress: Progress | None = None, cache: DiskCache | None = None,
                  parts: list[int] | None = None) -> list[Parent]:
    """Parents with the given seeds (cached), named 'parent 1', 'parent 2', ... in that order.

    Parent i trains on part i of the spec's partition of the train split (all of it for 'iid'),
    or on part parts[i] where given (a sweep trains one parent of a pair at a time).
    """
    if parts is None:
        check_partition_parents(spec, len(seeds))
    parents = []
    for i, seed in enumerate(seeds):
        def step(p: TrainProgress, i: int = i) -> None:
            done = (i + ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps)) / len(seeds)
            _report(progress, f"training parent {i + 1} of {len(seeds)}: epoch {p.epoch}/{p.epochs}, "
                              f"loss {p.loss:.3f}", done)
        part = i if parts is None else parts[i]
        parent = train_parent(data, model, replace(spec, seed=seed, part=part), device, step, cache)
        parent.name = f"{PARENT} {i + 1}"
        parents.append(parent)
    _report(progress, "parents ready", 1.0)
    return parents


def load_parent(source: str | Path | bytes, data: DataSpec, model: ModelSpec, name: str,
                device: str = "auto") -> Parent:
    """A parent from an untrusted checkpoint file (paper format, state_dict or safetensors)."""
    ds = dataset(data)
    net = _build(data, model, ds)
    checkpoint = load_checkpoint(source, model=net, arch_name=model.arch)  # shapes checked before values
    net = load_into(net, checkpoint, arch_name=model.arch)
    net = net.to(resolve_device(device)).eval()
    label = Path(source).name if isinstance(source, (str, Path)) else "upload"
    scores = _scores(net, ds)
    if not all(math.isfinite(scores[split]["loss"]) for split in ("test", "train")):  # finite weights, overflowing
        raise FusionError(f"{name} ({label}): its outputs on the data are not finite (test loss "
                          f"{scores['test']['loss']}); its weights are too large or damaged: check the parents' weights")
    return Parent(name, "ckpt-" + _state_hash(net, _structure(data, model)), net, {**scores, "checkpoint": checkpoint.meta},
                  source=label)


def _timed_eval(model: nn.Module | list[nn.Module], ds: Dataset) -> tuple[Evaluation, Evaluation, float]:
    """Test and train scores, and the milliseconds the test-split prediction took."""
    for net in model if isinstance(model, list) else [model]:
        predict_logits(net, ds.x_test[:1])  # warm-up: the first call pays one-off set-up, not inference
    if isinstance(model, list):
        start = time.perf_counter()
        test = score_logits(ensemble_log_probs(model, ds.x_test), ds.y_test)
        ms = 1000 * (time.perf_counter() - start)
        return test, score_logits(ensemble_log_probs(model, ds.x_train), ds.y_train), ms
    start = time.perf_counter()
    test = score_logits(predict_logits(model, ds.x_test), ds.y_test)
    ms = 1000 * (time.perf_counter() - start)
    return test, score_logits(predict_logits(model, ds.x_train), ds.y_train), ms


def method_row(method: str, model: nn.Module | list[nn.Module], ds: Dataset, key: str = "",
               method_id: str = "") -> MethodResult:
    """Scores of one method (display label `method`, stable id `method_id`) on a dataset."""
    test, train_scores, ms = _timed_eval(model, ds)
    if isinstance(model, list):
        return MethodResult(method, test, train_scores, sum(count_parameters(m) for m in model), ms, None, key,
                            method_id)
    return MethodResult(method, test, train_scores, count_parameters(model), ms, model, key, method_id)


def fusion_inputs(data: DataSpec, spec: FusionSpec, device: torch.device) -> torch.Tensor:
    """The activation sample: act_samples inputs of the train split, drawn with act_seed."""
    x, _ = sample_inputs(dataset(data), "train", spec.act_samples, spec.act_seed)
    return x.to(device)


def _fine_tuned(net: nn.Module, ds: Dataset, recipe: RetrainSpec, epochs: int, label: str,
                progress: Progress | None, span: tuple[float, float]) -> tuple[nn.Module, float, dict]:
    """A copy of net retrained by the recipe for `epochs`, keeping the best on validation (masks stay in force),
    its seconds, and its retraining record (best_epoch, validation curve; otcore.train.Retrained.record)."""
    tuned = copy_model(net)

    def step(p: TrainProgress) -> None:
        done = ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps)
        _report(progress, f"{label}: epoch {p.epoch}/{p.epochs}", span[0] + (span[1] - span[0]) * done)

    start = time.perf_counter()
    result = retrain(tuned, ds.x_train, ds.y_train, recipe, epochs, step)
    return result.model, time.perf_counter() - start, result.record()


def _ot_fusion(nets: list[FusableNet], spec: FusionSpec, data: DataSpec, dev: torch.device, names: list[str],
               tensors: dict[str, torch.Tensor]) -> tuple[FusableNet, dict, list[dict]]:
    """Fuse, store the plans into tensors, return (fused net, seconds, diagnostics rows)."""
    options = spec.options(len(nets))
    result = fuse(nets, options, fusion_inputs(data, spec, dev) if options.needs_inputs else None)
    for name, plans in zip(names, result.plans):
        tensors.update({f"plan/{name}/{g}": t for g, t in plans.items() if t is not None})
    diagnostics = [{"parent": names[i], **d.__dict__} for i, per in enumerate(result.diagnostics) for d in per]
    return result.model, result.seconds, diagnostics


def _scored_entry(key: str, kind: str, config: dict, models: dict[str, nn.Module | list[nn.Module]],
                  labels: dict[str, str], ds: Dataset, row_keys: dict[str, str], tensors: dict[str, torch.Tensor],
                  metrics: dict) -> CacheEntry:
    """A cache entry holding every method's scores and the networks not already held elsewhere.

    models and row_keys are keyed by method id, which also prefixes the stored tensors ('ot_fusion/fc1.weight');
    labels maps each id to the label its row shows."""
    rows = []
    for method_id, net in models.items():
        row = method_row(labels[method_id], net, ds, row_keys.get(method_id, f"{key}/{method_id}"), method_id)
        rows.append({"method": row.method, "id": method_id, "test": row.test.__dict__, "train": row.train.__dict__,
                     "parameters": row.parameters, "inference_ms": row.inference_ms, "key": row.key})
        if isinstance(net, nn.Module) and method_id not in row_keys:
            tensors.update({f"{method_id}/{k}": v for k, v in net.state_dict().items()})
    return CacheEntry(key, kind, config, {"rows": rows, **metrics}, tensors)


def _labels(parents: list[Parent], alignment: str) -> dict[str, str]:
    """Every method id of a comparison -> the label its row shows (parents keep their own names)."""
    out = {parent_id(i): p.name for i, p in enumerate(parents)}
    out.update({m.value: label(m, alignment) for m in Method if m is not Method.PARENT})
    return out


def fuse_and_compare(data: DataSpec, model: ModelSpec, parents: list[Parent], spec: FusionSpec,
                     finetune: TrainSpec | None = None, device: str = "auto",
                     progress: Progress | None = None, cache: DiskCache | None = None) -> Comparison:
    """Each parent, vanilla average, prediction ensemble, OT fusion and (if asked) its fine-tuning.

    Fine-tuning follows spec.retrain for spec.finetune_epochs; with spec.retrain.retrain_vanilla the
    vanilla average gets the same recipe and budget, so both retrained rows compare fairly.
    `finetune` (the parents' from-scratch recipe) is no longer used; it stays for existing callers.
    """
    cache = cache or default_cache()
    key = fusion_key(data, model, spec, finetune, [p.key for p in parents])
    dev = resolve_device(device)
    nets = [on_device(p.model, dev) for p in parents]  # shared models: never moved or switched

    def compute() -> CacheEntry:
        ds = dataset(data)
        _report(progress, "fusing", 0.05)
        tensors: dict[str, torch.Tensor] = {}
        fused, seconds, diagnostics = _ot_fusion(nets, spec, data, dev, [p.name for p in parents], tensors)
        models: dict[str, nn.Module | list[nn.Module]] = {parent_id(i): n for i, n in enumerate(nets)}
        models.update(_baselines(nets))
        models[Method.OT_FUSION.value] = fused
        retraining: dict[str, dict] = {}  # method id -> its retraining record
        if spec.finetune_epochs > 0:
            if spec.retrain.retrain_vanilla and Method.VANILLA.value in models:
                (models[Method.VANILLA_RETRAINED.value], seconds["finetune vanilla"],
                 retraining[Method.VANILLA_RETRAINED.value]) = _fine_tuned(
                    models[Method.VANILLA.value], ds, spec.retrain, spec.finetune_epochs, "retraining the vanilla average",
                    progress, (0.2, 0.55))
            (models[Method.OT_FINETUNED.value], seconds["finetune"],
             retraining[Method.OT_FINETUNED.value]) = _fine_tuned(
                fused, ds, spec.retrain, spec.finetune_epochs, "fine-tuning the fused net", progress, (0.55, 0.9))
        _report(progress, "evaluating every method", 0.9)
        config = {"data": spec_dict(data), "model": spec_dict(model), "fusion": spec_dict(spec),
                  "parents": [p.key for p in parents]}
        return _scored_entry(key, "fusion", config, models, _labels(parents, spec.alignment), ds,
                             {parent_id(i): p.key for i, p in enumerate(parents)}, tensors,
                             {"seconds": seconds, "diagnostics": diagnostics, "device": str(dev),
                              "alignment": spec.alignment, "width": spec.width, "retraining": retraining})

    entry, hit = cached(cache, key, compute)
    comparison = comparison_from_entry(entry, {parent_id(i): n for i, n in enumerate(nets)},
                                       nets[spec.anchor % len(nets)], dev)
    comparison.cached = hit
    _report(progress, "done", 1.0)
    return comparison


def _baselines(nets: list[nn.Module]) -> dict[str, nn.Module | list[nn.Module]]:
    """Vanilla average (only for parents of one width) and the prediction ensemble."""
    out: dict[str, nn.Module | list[nn.Module]] = {}
    try:
        out[Method.VANILLA.value] = vanilla_average(nets)
    except FusionError:
        pass  # parents of different widths have no vanilla average
    out[Method.ENSEMBLE.value] = list(nets)
    return out


def comparison_from_entry(entry: CacheEntry, in_memory: dict[str, nn.Module], template: nn.Module,
                          dev: torch.device) -> Comparison:
    """Rebuild a comparison (scores, networks, plans) from its cache entry; in_memory: networks by method id."""
    rows = []
    for r in entry.metrics["rows"]:
        method_id = r["id"]
        net = in_memory.get(method_id)
        if net is None and method_id != Method.ENSEMBLE:
            prefix = method_id + "/"
            state = {k[len(prefix):]: v for k, v in entry.tensors.items() if k.startswith(prefix)}
            gained = gained_biases(template, state)  # REPAIR's --repair-bias gave the fused net biases the anchor lacks
            net = with_biases(template, gained) if gained else copy_model(template)
            own = net.state_dict()
            if all(k in own and own[k].shape == v.shape for k, v in state.items()):
                net.load_state_dict(state)
            else:  # partial merging (fusion.width > 1): the fused net is wider than the anchor
                net = resized_copy(net, state)
            net = net.to(dev).eval()
        test, train_scores = (Evaluation(r[s]["accuracy"], r[s]["loss"], r[s].get("per_class"))  # records.EVALUATION
                              for s in ("test", "train"))
        rows.append(MethodResult(r["method"], test, train_scores, r["parameters"],
                                 r["inference_ms"], net, r["key"], method_id))
    plans = {k[len("plan/"):]: v for k, v in entry.tensors.items() if k.startswith("plan/")}
    extra = {k: v for k, v in entry.metrics.items() if k not in ("rows", "diagnostics", "seconds")}
    return Comparison(entry.key, rows, plans, entry.metrics.get("diagnostics", []), entry.metrics.get("seconds", {}),
                      extra)


def prune_and_compare(data: DataSpec, model: ModelSpec, parents: list[Parent], prune: PruneSpec,
                      fusion: FusionSpec, retrain: TrainSpec | None = None, device: str = "auto",
                      progress: Progress | None = None, cache: DiskCache | None = None) -> Comparison:
    """Every method at one prune setting, in the spec's order (prune then fuse, or fuse then prune).

    prune-fuse (the seed study): parents pruned (and optionally retrained with their masks), then
    OT fusion and vanilla average of the pruned parents. Fusing mixes the parents' masks, so each
    fused net is pruned again with the same type and fraction (`fused_masks='reprune'`) or masked
    at its own zeros (`'own-zeros'`); the OT fusion and vanilla rows are those masked nets.
    fuse-prune: OT fusion and vanilla average of the unpruned parents, each then pruned; parents
    and ensemble use the pruned parents. Either order: retraining (prune.retrain, prune.retrain_epochs)
    keeps every mask, so pruned weights stay exactly zero; with `retrain.retrain_vanilla` the
    vanilla average is retrained too. `extra['sparsity']` maps each single network to its measured
    fraction of zero weights over the pruned layers. `retrain` is no longer used (kept for callers).
    """
    cache = cache or default_cache()
    fusion = fusion_only(fusion)  # prune.retrain_epochs is this step's retraining
    recipe = prune.retrain
    key = prune_key(data, model, prune, fusion, retrain, [p.key for p in parents])
    dev = resolve_device(device)
    nets = [on_device(p.model, dev) for p in parents]  # shared models: never moved or switched
    names = [p.name for p in parents]
    layers = prunable_layers(nets[0], prune.scope, prune.keep_last_layer)

    def masked(net: nn.Module) -> nn.Module:
        if prune.order == "fuse-prune" or prune.fused_masks == "reprune":
            return prune_model(net, prune)
        return mask_zeros(net, layers)

    def compute() -> CacheEntry:
        ds = dataset(data)
        tensors: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        _report(progress, "pruning the parents", 0.05)
        pruned = [prune_model(n, prune) for n in nets]
        retraining: dict[str, dict] = {}  # method id -> its retraining record
        if prune.retrain_parents_epochs > 0:
            for i, net in enumerate(pruned):
                pruned[i], _, retraining[parent_id(i)] = _fine_tuned(
                    net, ds, recipe, prune.retrain_parents_epochs, f"retraining pruned {names[i]}", progress, (0.1, 0.4))
        pruned = [finalize(n) for n in pruned]
        seconds["prune"] = time.perf_counter() - start
        _report(progress, "fusing", 0.4)
        sources = pruned if prune.order == "prune-fuse" else nets
        fused, fuse_seconds, diagnostics = _ot_fusion(sources, fusion, data, dev, names, tensors)
        seconds.update(fuse_seconds)
        vanilla = _baselines(sources).get(Method.VANILLA.value)
        fused = masked(fused)  # masks kept for the retraining below
        vanilla = masked(vanilla) if vanilla is not None else None
        models: dict[str, nn.Module | list[nn.Module]] = {parent_id(i): n for i, n in enumerate(pruned)}
        if vanilla is not None:
            models[Method.VANILLA.value] = finalize(vanilla)
        models[Method.ENSEMBLE.value] = list(pruned)
        models[Method.OT_FUSION.value] = finalize(fused)
        if prune.retrain_epochs > 0:
            if vanilla is not None and recipe.retrain_vanilla:
                tuned, seconds["retrain vanilla"], retraining[Method.VANILLA_RETRAINED.value] = _fine_tuned(
                    vanilla, ds, recipe, prune.retrain_epochs, "retraining the vanilla average", progress, (0.45, 0.65))
                models[Method.VANILLA_RETRAINED.value] = finalize(tuned)
            tuned, seconds["retrain"], retraining[Method.OT_RETRAINED.value] = _fine_tuned(
                fused, ds, recipe, prune.retrain_epochs, "retraining the fused net", progress, (0.65, 0.9))
            models[Method.OT_RETRAINED.value] = finalize(tuned)
        _report(progress, "evaluating every method", 0.9)
        labels = _labels(parents, fusion.alignment)
        sparsity = {labels[i]: sparsity_report(m, layers).overall_fraction for i, m in models.items()
                    if isinstance(m, nn.Module)}  # keyed by label, as the tables show it
        config = {"data": spec_dict(data), "model": spec_dict(model), "prune": spec_dict(prune),
                  "fusion": spec_dict(fusion), "parents": [p.key for p in parents]}
        return _scored_entry(key, "prune", config, models, labels, ds, {}, tensors,
                             {"seconds": seconds, "diagnostics": diagnostics, "sparsity": sparsity,
                              "fraction": prune.fraction, "type": prune.type, "device": str(dev),
                              "alignment": fusion.alignment, "width": fusion.width, "retraining": retraining})

    entry, hit = cached(cache, key, compute)
    comparison = comparison_from_entry(entry, {}, nets[fusion.anchor % len(nets)], dev)
    comparison.cached = hit
    _report(progress, "done", 1.0)
    return comparison


def prune_sweep(data: DataSpec, model: ModelSpec, parents: list[Parent], prune: PruneSpec, fusion: FusionSpec,
                fractions: list[float], retrain: TrainSpec | None = None, device: str = "auto",
                progress: Progress | None = None, cache: DiskCache | None = None) -> list[Comparison]:
    """prune_and_compare at each fraction; every point is cached, so an interrupted sweep resumes."""
    specs = [replace(prune, fraction=f) for f in fractions]  # validates every fraction before any work
    points = []
    for i, spec in enumerate(specs):
        _report(progress, f"point {i + 1} of {len(specs)}: fraction {spec.fraction:g}", i / len(specs))
        points.append(prune_and_compare(data, model, parents, spec, fusion, retrain, device, None, cache))
    _report(progress, f"{len(specs)} points done", 1.0)
    return points
