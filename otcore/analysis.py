"""Curvature and landscape steps of the study, cached per network and settings.

A network is identified by its key (a parent's cache key, or '<comparison key>/<method>'),
so the Hessian of 'OT fusion' at one setting is computed once, whichever page asks.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from otcore.cache import CacheEntry, DiskCache, default_cache
from otcore.config import DataSpec, HessianSpec, spec_dict, spec_hash
from otcore.device import on_device, resolve_device
from otcore.curves import InterpolationPath, LossSurface, PerturbationCurve
from otcore.keys import hessian_key  # noqa: F401  (re-exported: the analysis's key)
from otcore.hessian import analyse, fixed_batches, product_seconds, products_per_analysis
from otcore.landscape import Curve, barrier, filter_normalized_direction, path_curve, perturbation_curve, surface_2d
from otcore.pipeline import MethodResult, Progress, cached, dataset

MAX_STORED_EIGENVECTOR_ENTRIES = 20_000_000  # ~80 MB of float32: beyond that the surface step recomputes


@dataclass
class Curvature:
    """The Hessian analysis of one network, as the pages and the CLI show it."""

    name: str
    key: str
    top_eigenvalues: list[float]
    trace: float
    trace_std_error: float  # 0 when exact
    density_nodes: list[list[float]]  # [probes][m] Ritz values of stochastic Lanczos quadrature
    density_weights: list[list[float]]
    loss: float  # on the analysed batches
    test_accuracy: float | None
    train_accuracy: float | None
    perturbation: PerturbationCurve  # along the unit top eigenvector
    random_direction: PerturbationCurve  # along a random filter-normalised direction rescaled to unit length
    timings: dict[str, float]
    num_parameters: int
    cached: bool = False
    trace_method: str = "hutchinson"  # or 'exact'
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)


def curve_dict(curve: Curve) -> dict:
    """A Curve as the JSON-able dict a cache entry holds."""
    return PerturbationCurve.from_curve(curve).stored()


def analysis_batches(data: DataSpec, spec: HessianSpec, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches a spec analyses: the split's first examples in order, or a seeded draw."""
    x, y = dataset(data).split(spec.split)
    return [(xb.to(device), yb.to(device)) for xb, yb in fixed_batches(x, y, spec.batch_size, spec.batches, spec.seed)]


def curvature(data: DataSpec, name: str, key: str, model: nn.Module, spec: HessianSpec, device: str = "auto",
              progress: Progress | None = None, cache: DiskCache | None = None,
              scores: MethodResult | None = None) -> Curvature:
    """Top eigenvalues, trace, spectral density and perturbation curves of one network (cached)."""
    cache = cache or default_cache()
    entry_key = hessian_key(data, spec, key)
    dev = resolve_device(device)

    def compute() -> CacheEntry:
        net = on_device(model, dev)  # a shared model is never moved or switched
        batches = analysis_batches(data, spec, dev)
        if progress and spec.batches == "all":  # the whole split can take long: say how long before starting
            seconds = product_seconds(net, batches[0]) * len(batches) * products_per_analysis(spec)
            progress(f"{name}: {len(batches)} batches, about {seconds:.0f} s", 0.0)
        result = analyse(net, batches, spec, (lambda what, f: progress(f"{name}: {what}", 0.8 * f)) if progress else None)
        lambdas = torch.linspace(spec.lambda_min, spec.lambda_max, spec.lambda_points)
        if progress:
            progress(f"{name}: loss along the top eigenvector", 0.85)
        along_top = perturbation_curve(net, batches, result.top_eigenvectors[0], lambdas)
        random = filter_normalized_direction(net, seed=0)
        along_random = perturbation_curve(net, batches, random / random.norm(), lambdas)
        metrics = {
            "name": name, "top_eigenvalues": result.top_eigenvalues, "trace": result.trace,
            "trace_std_error": result.trace_std_error, "trace_method": result.trace_method,
            "density_nodes": result.density.nodes.tolist(),
            "density_weights": result.density.weights.tolist(), "loss": result.loss,
            "perturbation": curve_dict(along_top), "random_direction": curve_dict(along_random),
            "timings": result.timings, "num_parameters": result.num_parameters, "device": str(dev)}
        vectors = result.top_eigenvectors
        tensors = {"eigenvectors": vectors} if vectors.numel() <= MAX_STORED_EIGENVECTOR_ENTRIES else {}
        return CacheEntry(entry_key, "hessian", {"data": spec_dict(data), "hessian": spec_dict(spec), "network": key},
                          metrics, tensors)

    entry, hit = cached(cache, entry_key, compute)
    m = entry.metrics
    return Curvature(name, key, m["top_eigenvalues"], m["trace"], m["trace_std_error"], m["density_nodes"],
                     m["density_weights"], m["loss"], scores.test.accuracy if scores else None,
                     scores.train.accuracy if scores else None, PerturbationCurve.from_stored(m["perturbation"]),
                     PerturbationCurve.from_stored(m["random_direction"]),
                     m["timings"], m["num_parameters"], hit, m.get("trace_method", "hutchinson"),
                     entry.tensors.get("eigenvectors"))


def curvatures(data: DataSpec, rows: list[MethodResult], spec: HessianSpec, device: str = "auto",
               progress: Progress | None = None, cache: DiskCache | None = None) -> list[Curvature]:
    """curvature() of every row that is one network (the prediction ensemble has no single Hessian)."""
    singles = [r for r in rows if r.model is not None]
    out = []
    for i, row in enumerate(singles):
        def step(what: str, f: float, i: int = i) -> None:
            if progress:
                progress(what, (i + f) / len(singles))
        out.append(curvature(data, row.method, row.key, row.model, spec, device, step, cache, row))
    if progress:
        progress(f"{len(out)} networks analysed", 1.0)
    return out


def interpolation(data: DataSpec, path: list[MethodResult], spec: HessianSpec, points_per_segment: int = 11,
                  device: str = "auto", cache: DiskCache | None = None) -> InterpolationPath:
    """Loss and accuracy along the straight path through the given networks, and its barrier (cached)."""
    cache = cache or default_cache()
    entry_key = spec_hash("interpolation", data, spec, points_per_segment, [r.key for r in path])
    dev = resolve_device(device)

    def compute() -> CacheEntry:
        batches = analysis_batches(data, spec, dev)
        curve = path_curve([on_device(r.model, dev) for r in path], batches, points_per_segment)
        metrics = {"curve": curve_dict(curve), "barrier": barrier(curve), "path": [r.method for r in path]}
        return CacheEntry(entry_key, "interpolation", {"data": spec_dict(data), "networks": [r.key for r in path]},
                          metrics)

    entry, hit = cached(cache, entry_key, compute)
    return InterpolationPath.from_stored(entry.metrics, cached=hit)


def surface(data: DataSpec, row: MethodResult, spec: HessianSpec, directions: str = "hessian",
            span: float = 0.5, points: int = 21, device: str = "auto",
            cache: DiskCache | None = None) -> LossSurface:
    """Loss on the plane of the top two Hessian eigenvectors (or two random unit directions), cached."""
    cache = cache or default_cache()
    entry_key = spec_hash("surface", data, spec, directions, span, points, row.key)
    dev = resolve_device(device)

    def compute() -> CacheEntry:
        net = on_device(row.model, dev)
        batches = analysis_batches(data, spec, dev)
        if directions == "hessian":
            vectors = curvature(data, row.method, row.key, net, replace_top_k(spec), device, cache=cache).eigenvectors
            if vectors is None:  # too large to have been stored
                vectors = analyse(net, batches, replace_top_k(spec)).top_eigenvectors
            d1, d2 = vectors[0], vectors[1]
        else:
            d1, d2 = (filter_normalized_direction(net, seed=s) for s in (1, 2))
            d1, d2 = d1 / d1.norm(), d2 / d2.norm()
        grid = surface_2d(net, batches, d1.to(dev), d2.to(dev), (-span, span), (-span, span), points)
        metrics = {"alphas": grid.alphas.tolist(), "betas": grid.betas.tolist(), "loss": grid.loss.tolist(),
                   "accuracy": grid.accuracy.tolist(), "directions": directions}
        return CacheEntry(entry_key, "surface", {"data": spec_dict(data), "network": row.key}, metrics)

    return LossSurface.from_stored(cache.get_or_compute(entry_key, compute).metrics)


def replace_top_k(spec: HessianSpec) -> HessianSpec:
    """The spec with at least two top eigenpairs (a plane needs two directions)."""
    return spec if spec.top_k >= 2 else replace(spec, top_k=2)
