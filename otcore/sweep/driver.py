"""The sweep's driver: runs the missing points on an executor, stores what returns, records the sweep, reads it back.

The driver is the cache's one writer: it stores what each task returns, so workers never need
the cache folder, and it skips points whose final key is already cached, so an interrupted sweep
resumes with what is missing. Tables and figures of a sweep live in otcore.figures.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Callable, Sequence

from otcore.cache import CacheEntry, DiskCache, Listing, default_cache
from otcore.config import spec_dict
from otcore.errors import UserError
from otcore.sweep.executors import Executor, LocalExecutor
from otcore.sweep.grid import LARGE_GRID, Point, Progress, SweepSpec, value_text
from otcore.sweep.owner import HEARTBEAT_S, record_status, stamp
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
    status: str = "finished"  # 'running', 'finished', 'interrupted[: why]', 'stopped: <why>' or 'failed: <error>'


class StopRequested(Exception):
    """Raised by a caller's callback to end a sweep between points; the record says 'stopped: <message>'."""


class SweepStoreError(UserError):
    """The cache could not store what a sweep computed (a full disk, a read-only folder): the sweep stops."""


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
    Points whose keys meet (SweepSpec.check_points keeps those) are computed once and each keeps its label.
    The record says what happened: 'finished', 'stopped: ...' (StopRequested), 'interrupted' (Ctrl-C),
    'failed: <error>' (anything else, a cache that cannot store included), and while it runs it names its
    owner and beats (otcore.sweep.owner), so a killed run reads as interrupted.
    """
    executor = executor or LocalExecutor()
    cache = cache or default_cache()
    report = progress or (lambda what, done: None)
    start = time.perf_counter()
    points = sweep.points()
    if sweep.size > LARGE_GRID:  # a small grid was checked when its spec was made
        sweep.check_points(points)
    swept = [name for name, _ in sweep.grid]
    done: dict[str, PointResult | PointFailure] = {}
    for p in points:  # a damaged or malformed entry is skipped (the cache warns once) and computed again
        if p.key not in done and (metrics := _verified_metrics(cache, p.key, sweep.step)) is not None:
            comparison = scores(p.key, metrics)
            if (curvature := curvature_of(cache, p, comparison)) is not None:  # else the task computes it
                done[p.key] = PointResult(dict(p.values), p.seeds, p.key, comparison, cached=True,
                                          curvature=curvature)
    todo = list({p.key: p for p in points if p.key not in done}.values())
    have = {j.key: e for j in {j for p in todo for j in p.parents()} if (e := cache.load(j.key)) is not None}
    status, owner, lock, beating = "running", stamp(), threading.Lock(), threading.Event()

    def record(into: DiskCache = cache) -> None:  # the sweep's record: what the dashboard lists and reads back
        with lock:  # the heartbeat writes it too
            into.store(_record(sweep, points, done, status, executor.name, owner))

    def heartbeat() -> None:  # rewrites the record while a long point runs, so readers see the run is alive
        while not beating.wait(HEARTBEAT_S):
            record()

    def store(entry: CacheEntry) -> None:
        cache.store(entry)
        if not cache.writable:  # the cache warns once and stops storing; a sweep that cannot resume stops
            error = cache.write_error
            raise SweepStoreError(f"cannot store {entry.kind} {entry.key[:12]} in the cache at {cache.root}: "
                                  f"{getattr(error, 'strerror', None) or error or 'the folder is not writable'} "
                                  f"(points already stored stay; rerun to resume)")

    def step(what: str, inner: float) -> None:
        finished = sum(1 for r in done.values() if not isinstance(r, PointResult) or not r.cached)
        report(f"{finished}/{len(todo)} points · {what}", (finished + inner) / max(len(todo), 1))

    record()
    beat = threading.Thread(target=heartbeat, name=f"sweep-heartbeat-{sweep.key[:8]}", daemon=True)
    beat.start()
    try:
        for event in executor.run(todo, have, task, step):
            if event.kind == "parent":
                store(event.value)
                continue
            point = event.point
            if event.kind == "failed":
                with lock:
                    done[point.key] = PointFailure(dict(point.values), point.seeds, point.key, event.value,
                                                   event.attempts or 0)
                log.warning("sweep point %s failed: %s", point.label(), event.value)
            else:
                for entry in event.value.entries:
                    store(entry)
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
                with lock:
                    done[point.key] = result
                if on_point is not None:  # every point of that key, each under its own label
                    for same in (p for p in points if p.key == point.key):
                        on_point(_labelled(result, same))
            step("done " + point.label(), 0.0)
            record()
        status = "finished"
    except BaseException as err:
        status = ("interrupted" if isinstance(err, KeyboardInterrupt) else f"stopped: {err}"
                  if isinstance(err, StopRequested) else f"failed: {error_text(err)}")
        raise
    finally:
        beating.set()
        beat.join()
        _final_record(record, cache, status)
    report(f"{len(points)} points: {_count(points, done, PointResult)} done, "
           f"{_count(points, done, PointFailure)} failed", 1.0)
    return _result(sweep.key, points, done, swept, executor.name, time.perf_counter() - start, status)


def _final_record(record: Callable[..., None], cache: DiskCache, status: str) -> None:
    """Write the record's last status; a cache that stopped storing (a full disk) gets one more try afresh."""
    try:
        record(cache if cache.writable else DiskCache(cache.root))  # a failed write freed its temp file's space
    except OSError as err:  # the stale heartbeat still tells readers the run ended
        log.error("could not record the sweep's status '%s': %s", status, err)


def _labelled(result: Any, point: Point) -> Any:
    """A point's outcome (PointResult or PointFailure) under its own values, where another point computed its key."""
    return result if dict(point.values) == result.values else replace(result, values=dict(point.values),
                                                                       seeds=point.seeds)


def _count(points: Sequence[Point], done: dict, kind: type) -> int:
    """Points (not keys: two points may share one) whose outcome is of `kind`."""
    return sum(isinstance(done.get(p.key), kind) for p in points)


def _result(key: str, points: Sequence[Point], done: dict, swept: list[str], executor_name: str, seconds: float,
            status: str) -> SweepResult:
    ordered = [_labelled(done[p.key], p) for p in points if p.key in done]
    return SweepResult(key, [r for r in ordered if isinstance(r, PointResult)],
                       [r for r in ordered if isinstance(r, PointFailure)], len(points), swept, executor_name,
                       seconds, status)


def _record(sweep: SweepSpec, points: Sequence[Point], done: dict, status: str, executor_name: str,
            owner: dict[str, Any]) -> CacheEntry:
    failed = [{"key": r.key, "error": r.error, "attempts": r.attempts} for r in done.values()
              if isinstance(r, PointFailure)]
    metrics = {"status": status, "executor": executor_name, "updated": time.time(), "total": len(points),
               "fields": [n for n, _ in sweep.grid], "done": _count(points, done, PointResult),
               "failed": failed, "owner": owner,
               "points": [{"values": {k: cell(v) for k, v in p.values}, "seeds": list(p.seeds), "key": p.key,
                           "analysis": {m: c["key"] for m, c in getattr(done.get(p.key), "curvature", {}).items()}}
                          for p in points]}
    config = {**spec_dict(sweep), "data": {**spec_dict(sweep.data), "root": sweep.data.root}}
    return CacheEntry(sweep.key, "sweep", config, metrics)


def sweep_records(cache: DiskCache | None = None) -> Listing:
    """The sweeps recorded in the cache, newest first (verified rows of kind 'sweep'), and the entries skipped."""
    return (cache or default_cache()).listing("sweep")


def load_sweep(key: str, cache: DiskCache | None = None) -> SweepResult:
    """A sweep as the cache holds it now (running, interrupted, failed or finished), read without computing.

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
    return SweepResult(key, points, failed, meta["total"], meta["fields"], meta["executor"], 0.0,
                       record_status(meta))

