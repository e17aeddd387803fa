"""The sweep's driver: runs the missing points on an executor, stores what returns, records the sweep, reads it back.

The driver is the cache's one writer: it stores what each task returns, so workers never need
the cache folder, and it skips points whose final key is already cached, so an interrupted sweep
resumes with what is missing. Tables and figures of a sweep live in otcore.figures.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Sequence

from otcore.cache import CacheEntry, DiskCache, Listing, default_cache
from otcore.config import spec_dict
from otcore.sweep.executors import Executor, LocalExecutor
from otcore.sweep.grid import Point, Progress, SweepSpec, value_text
from otcore.sweep.tasks import PointTask, error_text, run_point
from otcore.comparison import Comparison, Evaluation, MethodResult
from otcore.keys import hessian_key

log = logging.getLogger(__name__)


@dataclass
class PointResult:
    """A finished point: its swept values and every method's scores (networks stay in the cache)."""

    values: dict[str, Any]  # swept field -> value
    seeds: tuple[int, ...]  # the parents' seeds
    key: str  # cache key of the comparison
    comparison: Comparison  # rows with model=None; load the key from the cache for the networks
    cached: bool  # already in the cache when the sweep started
    attempts: int | None = None  # tries it took (None: cached, or not known under Ray)
    seconds: float = 0.0  # task wall time
    curvature: dict[str, dict] = field(default_factory=dict)  # analysed method -> CURVATURE_FIELDS and 'key'


@dataclass
class PointFailure:
    """A point given up after its retries, with the last error."""

    values: dict[str, Any]
    seeds: tuple[int, ...]
    key: str
    error: str  # 'ExceptionType: message'
    attempts: int


@dataclass
class SweepResult:
    """A sweep's outcome in grid order: scored points, failures, and what is still missing."""

    key: str  # the sweep record's cache key
    points: list[PointResult]
    failed: list[PointFailure]
    total: int  # points in the grid
    fields: list[str]  # the swept fields, in grid order
    executor: str
    seconds: float  # wall time of the run (0 for a sweep read back from the cache)
    status: str = "finished"  # 'running', 'finished', 'interrupted' or 'stopped: <error>'


def cell(value: Any) -> Any:
    """A swept value as a record or table stores it: tuples (seed sets) as text, the rest as they are."""
    return value_text(value) if isinstance(value, tuple) else value


CURVATURE_FIELDS = ("top_eigenvalues", "trace", "trace_std_error", "trace_method", "loss")


def curvature_of(cache: DiskCache, point: Point, comparison: Comparison) -> dict[str, dict] | None:
    """The Hessian analysis of each network the point analyses, by method; None while any is not cached."""
    out = {}
    for row in comparison.rows:
        if point.analyses(row.method):
            key = hessian_key(point.data, point.hessian, row.key)
            record = cache.load_record(key)  # verified, its fields typed (otcore.records)
            if record is None or record.kind != "hessian":
                return None
            out[row.method] = {"key": key, **{f: record.metrics.get(f) for f in CURVATURE_FIELDS}}
    return out


def _stored_curvature(cache: DiskCache, keys: dict[str, str]) -> dict[str, dict]:
    """The analyses a sweep record names for one point (method -> entry key), those still readable."""
    out = {}
    for method, key in keys.items():
        record = cache.load_record(key) if isinstance(key, str) else None
        if record is not None and record.kind == "hessian":
            out[method] = {"key": key, **{f: record.metrics.get(f) for f in CURVATURE_FIELDS}}
    return out


def _verified_metrics(cache: DiskCache, key: str, step: str) -> dict | None:
    """The metrics of a point's entry if it is there, verified and of the step's kind; else None."""
    record = cache.load_record(key)  # checksum and shape (otcore.records) checked, once per file version
    return record.metrics if record is not None and record.kind == step else None


def scores(key: str, metrics: dict) -> Comparison:
    """A comparison's scores from its cache entry's metrics, without loading its networks."""
    rows = [MethodResult(r["method"], _evaluation(r["test"]), _evaluation(r["train"]), r["parameters"],
                                  r["inference_ms"], None, r["key"], r.get("id", "")) for r in metrics["rows"]]
    extra = {k: v for k, v in metrics.items() if k not in ("rows", "diagnostics", "seconds")}
    return Comparison(key, rows, {}, metrics.get("diagnostics", []), metrics.get("seconds", {}), extra,
                               cached=True)


def _evaluation(split: dict) -> Evaluation:
    return Evaluation(split["accuracy"], split["loss"])  # by name: a record may carry more fields


def run_sweep(sweep: SweepSpec, executor: Executor | None = None, cache: DiskCache | None = None,
              progress: Progress | None = None, on_point: Callable[[PointResult], None] | None = None,
              task: PointTask = run_point) -> SweepResult:
    """Run every point not yet cached on an executor (default: local); store what returns; report failures.

    `task` is what each point runs (default `run_point`; a wrapper may add logging or fault injection).
    """
    executor = executor or LocalExecutor()
    cache = cache or default_cache()
    report = progress or (lambda what, done: None)
    start = time.perf_counter()
    points = sweep.points()
    swept = [name for name, _ in sweep.grid]
    done: dict[str, PointResult | PointFailure] = {}
    for p in points:  # a damaged or malformed entry is skipped (the cache warns once) and computed again
        if (metrics := _verified_metrics(cache, p.key, sweep.step)) is not None:
            comparison = scores(p.key, metrics)
            if (curvature := curvature_of(cache, p, comparison)) is not None:  # else the task computes it
                done[p.key] = PointResult(dict(p.values), p.seeds, p.key, comparison, cached=True,
                                          curvature=curvature)
    todo = list({p.key: p for p in points if p.key not in done}.values())
    have = {j.key: e for j in {j for p in todo for j in p.parents()} if (e := cache.load(j.key)) is not None}
    status = "running"

    def record() -> None:  # the sweep's record in the cache: what the dashboard lists and reads back
        cache.store(_record(sweep, points, done, status, executor.name))

    def step(what: str, inner: float) -> None:
        finished = sum(1 for r in done.values() if not isinstance(r, PointResult) or not r.cached)
        report(f"{finished}/{len(todo)} points · {what}", (finished + inner) / max(len(todo), 1))

    record()
    try:
        for event in executor.run(todo, have, task, step):
            if event.kind == "parent":
                cache.store(event.value)
                continue
            point = event.point
            if event.kind == "failed":
                done[point.key] = PointFailure(dict(point.values), point.seeds, point.key, event.value,
                                               event.attempts or 0)
                log.warning("sweep point %s failed: %s", point.label(), event.value)
            else:
                for entry in event.value.entries:
                    cache.store(entry)
                entry = next((e for e in event.value.entries if e.key == point.key), None)
                if entry is None:  # the key formula drifted from the pipeline's: still correct, not resumable
                    log.warning("point %s was stored under %s, expected %s", point.label(), event.value.key,
                                point.key)
                    entry = next(e for e in event.value.entries if e.key == event.value.key)
                comparison = scores(point.key, entry.metrics)
                result = PointResult(dict(point.values), point.seeds, point.key, comparison, cached=False,
                                     attempts=event.attempts, seconds=event.value.seconds,
                                     curvature=curvature_of(cache, point, comparison) or {})
                result.comparison.cached = False
                done[point.key] = result
                if on_point is not None:
                    on_point(result)
            step("done " + point.label(), 0.0)
            record()
        status = "finished"
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else f"stopped: {error_text(err)}"
        raise
    finally:
        record()
    report(f"{len(points)} points: {len(done) - _failures(done)} done, {_failures(done)} failed", 1.0)
    return _result(sweep.key, points, done, swept, executor.name, time.perf_counter() - start, status)


def _failures(done: dict) -> int:
    return sum(isinstance(r, PointFailure) for r in done.values())


def _result(key: str, points: Sequence[Point], done: dict, swept: list[str], executor_name: str, seconds: float,
            status: str) -> SweepResult:
    ordered = [done[p.key] for p in points if p.key in done]
    return SweepResult(key, [r for r in ordered if isinstance(r, PointResult)],
                       [r for r in ordered if isinstance(r, PointFailure)], len(points), swept, executor_name,
                       seconds, status)


def _record(sweep: SweepSpec, points: Sequence[Point], done: dict, status: str, executor_name: str) -> CacheEntry:
    failed = [{"key": r.key, "error": r.error, "attempts": r.attempts} for r in done.values()
              if isinstance(r, PointFailure)]
    metrics = {"status": status, "executor": executor_name, "updated": time.time(), "total": len(points),
               "fields": [n for n, _ in sweep.grid], "done": sum(isinstance(r, PointResult) for r in done.values()),
               "failed": failed,
               "points": [{"values": {k: cell(v) for k, v in p.values}, "seeds": list(p.seeds), "key": p.key,
                           "analysis": {m: c["key"] for m, c in getattr(done.get(p.key), "curvature", {}).items()}}
                          for p in points]}
    config = {**spec_dict(sweep), "data": {**spec_dict(sweep.data), "root": sweep.data.root}}
    return CacheEntry(sweep.key, "sweep", config, metrics)


def sweep_records(cache: DiskCache | None = None) -> Listing:
    """The sweeps recorded in the cache, newest first (verified rows of kind 'sweep'), and the entries skipped."""
    return (cache or default_cache()).listing("sweep")


def load_sweep(key: str, cache: DiskCache | None = None) -> SweepResult:
    """A sweep as the cache holds it now (running, interrupted or finished), read without computing.

    Only verified points count: a point whose entry is damaged or malformed is skipped (and warned
    about once by the cache), as if not yet computed.
    """
    cache = cache or default_cache()
    record = cache.load_record(key)
    if record is None or record.kind != "sweep":
        raise ValueError(f"no readable sweep {key} in the cache at {cache.root}")
    meta = record.metrics
    step = record.config.get("step", "prune")
    errors = {f["key"]: f for f in meta["failed"]}
    points, failed = [], []
    for p in meta["points"]:
        values, seeds = p["values"], tuple(p["seeds"])
        if (metrics := _verified_metrics(cache, p["key"], step)) is not None:
            analysis = p.get("analysis") if isinstance(p.get("analysis"), dict) else {}
            points.append(PointResult(values, seeds, p["key"], scores(p["key"], metrics), cached=True,
                                      curvature=_stored_curvature(cache, analysis)))
        elif p["key"] in errors:
            failed.append(PointFailure(values, seeds, p["key"], errors[p["key"]]["error"],
                                       errors[p["key"]]["attempts"]))
    return SweepResult(key, points, failed, meta["total"], meta["fields"], meta["executor"], 0.0, meta["status"])

