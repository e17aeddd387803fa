"""What one sweep point runs: a parent's training, or a point through the pipeline, in a private temporary cache.

A task writes nothing outside its temporary folder; it returns every cache entry it made, and the
driver (the cache's one writer) stores them. Executors call these functions and nothing else.
The pipeline (and torch) is imported by the tasks when they run, before their clocks start: a sweep
answered wholly from the cache never runs one, and so never imports torch.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

from otcore.cache import CacheEntry, DiskCache
from otcore.sweep.grid import ParentJob, Point, Progress


@dataclass
class PointOutput:
    """What a point's task returns to the driver: every cache entry it made, nothing written anywhere."""

    key: str  # the comparison's cache key
    entries: list[CacheEntry]
    seconds: float  # the task's wall time


def _new_entries(cache: DiskCache, given: set[str]) -> list[CacheEntry]:
    loaded = (cache.load(key) for key in cache.keys() if key not in given)
    return [entry for entry in loaded if entry is not None]


def train_parent_entry(job: ParentJob, progress: Progress | None = None) -> CacheEntry:
    """Train one parent with `pipeline.train_parents` in a temporary cache and return its entry."""
    from otcore import pipeline

    with tempfile.TemporaryDirectory(prefix="otcore-parent-") as folder:
        cache = DiskCache(folder)
        parent = pipeline.train_parents(job.data, job.model, job.train, [job.seed], job.device, progress, cache,
                                        parts=[job.part])[0]
        return cache.load(parent.key)


def run_point(point: Point, parents: Sequence[CacheEntry], progress: Progress | None = None) -> PointOutput:
    """Run one point through the pipeline in a temporary cache holding its parents; return what it made."""
    from otcore import pipeline
    from otcore.analysis import curvatures

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="otcore-point-") as folder:
        cache = DiskCache(folder)
        for entry in parents:
            cache.store(entry)
        nets = pipeline.train_parents(point.data, point.model, point.train, list(point.seeds), point.device,
                                      None, cache)
        if point.step == "prune":
            comparison = pipeline.prune_and_compare(point.data, point.model, nets, point.prune, point.fusion,
                                                    point.train, point.device, progress, cache)
        else:
            comparison = pipeline.fuse_and_compare(point.data, point.model, nets, point.fusion, point.train,
                                                   point.device, progress, cache)
        if point.analyse:  # each network's analysis is its own cache entry, keyed by the network's key
            curvatures(point.data, [r for r in comparison.rows if point.analyses(r.method)], point.hessian,
                       point.device, progress, cache)
        return PointOutput(comparison.key, _new_entries(cache, {e.key for e in parents}),
                           time.perf_counter() - start)


PointTask = Callable[..., PointOutput]  # run_point's signature: (point, parent entries, progress=None)


def error_text(err: BaseException) -> str:
    """'ValueError: message' of an exception, unwrapping Ray's task errors to the task's own."""
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError keeps the exception the task raised
    err = cause if isinstance(cause, BaseException) else err
    return f"{type(err).__name__}: {str(err).strip() or 'no message'}"

