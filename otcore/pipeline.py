"""The study, step by step: parents -> (prune) -> fuse -> baselines -> (retrain) -> analyse.

Every step is cached on disk by the hash of the specs (and input models) that determine it,
so the UI, the CLI and the tests run one code path and a setting seen before returns at once.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from otcore.cache import CacheEntry, DiskCache, default_cache
from otcore.checkpoints import load_checkpoint, load_into
from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec, spec_dict, spec_hash
from otcore.data import Dataset, load_dataset, sample_inputs
from otcore.device import resolve_device
from otcore.fusion.baselines import ensemble_log_probs, vanilla_average
from otcore.fusion.fuse import fuse
from otcore.models import FusableNet, build_model, count_parameters
from otcore.train import Evaluation, ProgressFn, TrainProgress, evaluate, init_model, predict_logits, score_logits, train

Progress = Callable[[str, float], None]  # (what is happening, fraction done in [0, 1])

PARENT = "parent"
OT_FUSION = "OT fusion"
OT_FINETUNED = "OT fusion fine-tuned"
VANILLA = "vanilla average"
ENSEMBLE = "prediction ensemble"


@dataclass
class Parent:
    """A trained parent network and where it came from."""

    name: str  # shown in tables: 'parent 1', ...
    key: str  # cache key, or a content hash for uploaded checkpoints
    model: FusableNet
    metrics: dict  # {'test': {'accuracy', 'loss'}, 'train': {...}, 'seconds': ...}
    source: str = "trained"  # 'trained' or the checkpoint's file name


@dataclass
class MethodResult:
    """One row of a comparison: a method's scores and, where it is one network, the network."""

    method: str
    test: Evaluation
    train: Evaluation
    parameters: int
    inference_ms: float  # time to predict the whole test split
    model: nn.Module | None = None  # None for the prediction ensemble
    key: str = ""  # identifies the network for later analysis steps


@dataclass
class Comparison:
    """Every method of one fusion (or pruning) setting, side by side."""

    key: str
    rows: list[MethodResult]
    plans: dict[str, torch.Tensor] = field(default_factory=dict)  # 'parent 2/fc1' -> plan (n_p, n_anchor)
    diagnostics: list[dict] = field(default_factory=list)  # one dict per (parent, group)
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # step-specific results (sparsity, ...)
    cached: bool = False

    def row(self, method: str) -> MethodResult:
        """The row of a method by name."""
        return next(r for r in self.rows if r.method == method)

    def accuracies(self) -> dict:
        """The headless contract: test accuracies in percent, parents in order."""
        out = {"parents": [r.test.accuracy for r in self.rows if r.method.startswith(PARENT)]}
        names = {OT_FUSION: "ot_fusion", VANILLA: "vanilla_average", ENSEMBLE: "prediction_ensemble",
                 OT_FINETUNED: "ot_fusion_finetuned"}
        out.update({names[r.method]: r.test.accuracy for r in self.rows if r.method in names})
        return out


def _report(progress: Progress | None, what: str, done: float) -> None:
    if progress is not None:
        progress(what, min(max(done, 0.0), 1.0))


def dataset(data: DataSpec) -> Dataset:
    """The dataset of a spec (memoised per process)."""
    return load_dataset(data.name, data.root, data.download)


def _build(data: DataSpec, model: ModelSpec, ds: Dataset | None = None) -> FusableNet:
    ds = ds or dataset(data)
    return build_model(model.arch, ds.input_shape, ds.num_classes)


def _state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
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
    key = spec_hash("parent", data, model, spec)
    dev = resolve_device(device)
    hit = True

    def compute() -> CacheEntry:
        nonlocal hit
        hit = False
        ds = dataset(data)
        net = init_model(_build(data, model, ds), spec.seed).to(dev)
        start = time.perf_counter()
        train(net, ds.x_train, ds.y_train, spec, progress)
        metrics = {**_scores(net, ds), "seconds": time.perf_counter() - start, "device": str(dev),
                   "input_shape": list(ds.input_shape), "num_classes": ds.num_classes}
        config = {"data": spec_dict(data), "model": spec_dict(model), "train": spec_dict(spec)}
        return CacheEntry(key, "parent", config, metrics, dict(net.state_dict()))

    entry = cache.get_or_compute(key, compute)
    # Built from the entry's shapes: a cache hit never loads the dataset.
    net = build_model(model.arch, tuple(entry.metrics["input_shape"]), entry.metrics["num_classes"])
    net.load_state_dict(entry.tensors)
    metrics = {**entry.metrics, "cached": hit}
    return Parent(f"{PARENT} {spec.seed}", key, net.to(dev).eval(), metrics)


def train_parents(data: DataSpec, model: ModelSpec, spec: TrainSpec, seeds: list[int], device: str = "auto",
                  progress: Progress | None = None, cache: DiskCache | None = None) -> list[Parent]:
    """Parents with the given seeds (cached), named 'parent 1', 'parent 2', ... in that order."""
    parents = []
    for i, seed in enumerate(seeds):
        def step(p: TrainProgress, i: int = i) -> None:
            done = (i + ((p.epoch - 1) * p.steps + p.step) / (p.epochs * p.steps)) / len(seeds)
            _report(progress, f"training parent {i + 1} of {len(seeds)}: epoch {p.epoch}/{p.epochs}, "
                              f"loss {p.loss:.3f}", done)
        parent = train_parent(data, model, replace(spec, seed=seed), device, step, cache)
        parent.name = f"{PARENT} {i + 1}"
        parents.append(parent)
    _report(progress, "parents ready", 1.0)
    return parents


def load_parent(source: str | Path | bytes, data: DataSpec, model: ModelSpec, name: str,
                device: str = "auto") -> Parent:
    """A parent from an untrusted checkpoint file (paper format, state_dict or safetensors)."""
    ds = dataset(data)
    checkpoint = load_checkpoint(source)
    net = load_into(_build(data, model, ds), checkpoint, arch_name=model.arch)
    net = net.to(resolve_device(device)).eval()
    label = Path(source).name if isinstance(source, (str, Path)) else "upload"
    return Parent(name, "ckpt-" + _state_hash(net), net, {**_scores(net, ds), "checkpoint": checkpoint.meta},
                  source=label)


def _timed_eval(model: nn.Module | list[nn.Module], ds: Dataset) -> tuple[Evaluation, Evaluation, float]:
    """Test and train scores, and the milliseconds the test-split prediction took."""
    if isinstance(model, list):
        start = time.perf_counter()
        test = score_logits(ensemble_log_probs(model, ds.x_test), ds.y_test)
        ms = 1000 * (time.perf_counter() - start)
        return test, score_logits(ensemble_log_probs(model, ds.x_train), ds.y_train), ms
    start = time.perf_counter()
    test = score_logits(predict_logits(model, ds.x_test), ds.y_test)
    ms = 1000 * (time.perf_counter() - start)
    return test, score_logits(predict_logits(model, ds.x_train), ds.y_train), ms


def method_row(method: str, model: nn.Module | list[nn.Module], ds: Dataset, key: str = "") -> MethodResult:
    """Scores of one method on a dataset."""
    test, train_scores, ms = _timed_eval(model, ds)
    if isinstance(model, list):
        return MethodResult(method, test, train_scores, sum(count_parameters(m) for m in model), ms, None, key)
    return MethodResult(method, test, train_scores, count_parameters(model), ms, model, key)


def fusion_inputs(data: DataSpec, spec: FusionSpec, device: torch.device) -> torch.Tensor:
    """The activation sample: act_samples inputs of the train split, drawn with act_seed."""
    x, _ = sample_inputs(dataset(data), "train", spec.act_samples, spec.act_seed)
    return x.to(device)


def fuse_and_compare(data: DataSpec, model: ModelSpec, parents: list[Parent], spec: FusionSpec,
                     finetune: TrainSpec | None = None, device: str = "auto",
                     progress: Progress | None = None, cache: DiskCache | None = None,
                     step_key: str = "fusion") -> Comparison:
    """Each parent, vanilla average, prediction ensemble, OT fusion and (if asked) its fine-tuning."""
    cache = cache or default_cache()
    finetune = finetune or TrainSpec(epochs=spec.finetune_epochs)
    finetune = replace(finetune, epochs=spec.finetune_epochs)
    key = spec_hash(step_key, data, model, spec, finetune, [p.key for p in parents])
    ds = dataset(data)
    dev = resolve_device(device)
    nets = [p.model.to(dev).eval() for p in parents]
    hit = True

    def compute() -> CacheEntry:
        nonlocal hit
        hit = False
        _report(progress, "fusing", 0.05)
        needs_sample = spec.mode == "activations" or spec.renormalize
        x_act = fusion_inputs(data, spec, dev) if needs_sample else None
        result = fuse(nets, spec, x_act)
        built = {OT_FUSION: result.model}
        tensors = {f"{OT_FUSION}/{k}": v for k, v in result.model.state_dict().items()}
        for i, plans in enumerate(result.plans):
            for group, plan in plans.items():
                if plan is not None:
                    tensors[f"plan/{parents[i].name}/{group}"] = plan
        if spec.finetune_epochs > 0:
            tuned = copy.deepcopy(result.model)
            total = spec.finetune_epochs

            def step(p: TrainProgress) -> None:
                _report(progress, f"fine-tuning: epoch {p.epoch}/{total}", 0.3 + 0.6 * p.epoch / total)

            start = time.perf_counter()
            train(tuned, ds.x_train, ds.y_train, finetune, step)
            result.seconds["finetune"] = time.perf_counter() - start
            tensors.update({f"{OT_FINETUNED}/{k}": v for k, v in tuned.state_dict().items()})
            built[OT_FINETUNED] = tuned
        _report(progress, "evaluating every method", 0.9)
        diagnostics = [{"parent": parents[i].name, **d.__dict__}
                       for i, per_parent in enumerate(result.diagnostics) for d in per_parent]
        config = {"data": spec_dict(data), "model": spec_dict(model), "fusion": spec_dict(spec),
                  "parents": [p.key for p in parents]}
        metrics = {"rows": score_methods(parents, nets, built, ds, key), "built": list(built),
                   "seconds": result.seconds, "diagnostics": diagnostics, "device": str(dev)}
        return CacheEntry(key, step_key, config, metrics, tensors)

    entry = cache.get_or_compute(key, compute)
    comparison = comparison_from_entry(entry, parents, nets, nets[spec.anchor % len(nets)], dev)
    comparison.cached = hit
    _report(progress, "done", 1.0)
    return comparison


def _unpack(entry: CacheEntry, prefix: str, template: FusableNet, dev: torch.device) -> FusableNet | None:
    state = {k[len(prefix) + 1:]: v for k, v in entry.tensors.items() if k.startswith(prefix + "/")}
    if not state:
        return None
    net = copy.deepcopy(template)
    net.load_state_dict(state)
    return net.to(dev).eval()


def score_methods(parents: list[Parent], nets: list[nn.Module], built: dict[str, nn.Module], ds: Dataset,
                  key: str) -> list[dict]:
    """Rows for every method: parents, vanilla average, prediction ensemble, then `built` in order."""
    rows = [method_row(p.name, n, ds, p.key) for p, n in zip(parents, nets)]
    try:
        rows.append(method_row(VANILLA, vanilla_average(nets), ds, f"{key}/{VANILLA}"))
    except ValueError:
        pass  # parents of different widths have no vanilla average
    rows.append(method_row(ENSEMBLE, list(nets), ds))
    rows += [method_row(name, net, ds, f"{key}/{name}") for name, net in built.items()]
    return [{"method": r.method, "test": r.test.__dict__, "train": r.train.__dict__, "parameters": r.parameters,
             "inference_ms": r.inference_ms, "key": r.key} for r in rows]


def comparison_from_entry(entry: CacheEntry, parents: list[Parent], nets: list[nn.Module], template: nn.Module,
                          dev: torch.device) -> Comparison:
    """Rebuild a comparison (scores, networks, plans) from its cache entry."""
    models: dict[str, nn.Module | None] = {p.name: n for p, n in zip(parents, nets)}
    for name in entry.metrics.get("built", []):
        models[name] = _unpack(entry, name, template, dev)
    rows = []
    for r in entry.metrics["rows"]:
        net = models.get(r["method"])
        if r["method"] == VANILLA:
            net = vanilla_average(nets)
        rows.append(MethodResult(r["method"], Evaluation(**r["test"]), Evaluation(**r["train"]), r["parameters"],
                                 r["inference_ms"], net, r["key"]))
    plans = {k[len("plan/"):]: v for k, v in entry.tensors.items() if k.startswith("plan/")}
    extra = {k: v for k, v in entry.metrics.items() if k not in ("rows", "built", "diagnostics", "seconds")}
    return Comparison(entry.key, rows, plans, entry.metrics.get("diagnostics", []), entry.metrics.get("seconds", {}),
                      extra)
