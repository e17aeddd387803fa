"""Sweeps: a grid of overrides on the study's specs, run point by point here or as Ray tasks.

A point is one combination of the grid's values applied to base specs; it runs through the
pipeline functions the dashboard uses (`train_parents`, then `prune_and_compare` or
`fuse_and_compare`) with a temporary, task-local cache, and returns every cache entry it made.
The driver is the cache's one writer: it stores what each task returns, so workers never need
the cache folder, and it skips points whose final key (predictable from the specs) is already
cached, so an interrupted sweep resumes with what is missing. Ray (https://docs.ray.io) is
imported only by the Ray executor: the local executor works without it.
"""
from __future__ import annotations

import itertools
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Sequence

import pandas as pd
import plotly.graph_objects as go

from otcore import pipeline
from otcore.cache import CacheEntry, DiskCache, Listing, default_cache
from otcore.config import (DataSpec, FusionSpec, ModelSpec, PruneSpec, SpecError, TrainSpec, check_partition_parents,
                           not_keyed, spec_dict, spec_hash)
from otcore.figures import (INFERENCE_MS, METHOD, PARAMETERS, TEST_ACC, TEST_LOSS, TRAIN_ACC, method_colour,
                            style)
from otcore.train import Evaluation

log = logging.getLogger(__name__)

STEPS = ("prune", "fusion")  # the pipeline step each point runs: prune_and_compare or fuse_and_compare
EXECUTORS = ("local", "ray")
Progress = Callable[[str, float], None]  # (what is happening, fraction done in [0, 1])

# ---------------------------------------------------------------------------- the grid

_SPECS = {"prune": PruneSpec, "fusion": FusionSpec, "train": TrainSpec}
_NOT_SWEPT = {"train.seed": "sweep 'seed' (offsets of the parents' seeds) or 'seeds' instead",
              "train.part": "each parent trains on its own part of train.partition",
              "fusion.weights": "per-parent weights are a list; sweep fusion.ensemble_step instead"}
_ALIASES = {"fusion.mode": {"wts": "weights", "acts": "activations"},
            "fusion.alignment": {"weight-matching": "weight_matching"}}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def sweep_fields() -> dict[str, str]:
    """Every field a grid may sweep and the kind of its values ('float', 'int', 'bool', 'str', 'seeds')."""
    out = {"seed": "int", "seeds": "seeds", "arch": "str", "dataset": "str"}
    for prefix, spec in _SPECS.items():
        for f in fields(spec):
            name = f"{prefix}.{f.name.rstrip('_')}"
            if f.metadata.get("keyed", True) and name not in _NOT_SWEPT:
                out[name] = type(f.default).__name__
    return out


def _coerce(name: str, value: Any) -> Any:
    """A grid value as its field's type; text (from the CLI or a form) is parsed."""
    kind = sweep_fields()[name]
    text = str(value).strip()
    try:
        if kind in ("seeds", "tuple"):  # non-negative whole numbers joined by '+' (seeds, a partition's classes)
            parts = value if isinstance(value, (tuple, list)) else text.replace("+", " ").split()
            numbers = tuple(int(v) for v in parts)
            if (kind == "seeds" and not numbers) or min(numbers, default=0) < 0:
                raise ValueError
            return numbers
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer() or isinstance(value, bool):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(text)
        if kind == "float":
            number = float(value) if not isinstance(value, str) else float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
    except (TypeError, ValueError):
        wanted = {"seeds": "seeds joined by '+', e.g. 0+1", "tuple": "classes joined by '+', e.g. 0+2+4",
                  "bool": "true or false",
                  "int": "a whole number", "float": "a number"}[kind]
        raise SpecError(f"{name}: '{text}' is not {wanted}") from None
    return _ALIASES.get(name, {}).get(text, text)


def parse_grid(entries: Sequence[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """['prune.fraction=0,0.3', 'seed=0,1'] -> (('prune.fraction', (0.0, 0.3)), ('seed', (0, 1)))."""
    grid = []
    for entry in entries:
        name, sep, values = entry.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"a grid entry looks like field=value1,value2,...; got '{entry}'")
        grid.append((name.strip(), tuple(v for v in values.split(",") if v.strip())))
    return tuple(grid)


@dataclass(frozen=True)
class ParentJob:
    """One parent network to train: the specs of its cache entry."""

    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    seed: int
    device: str = "auto"
    part: int = 0  # which part of train.partition it trains on: its place among the point's parents

    @property
    def key(self) -> str:
        """Its cache key, as `pipeline.train_parent` computes it."""
        return pipeline.parent_key(self.data, self.model, replace(self.train, seed=self.seed, part=self.part))


@dataclass(frozen=True)
class Point:
    """One grid point: the swept values and the specs they resolve to."""

    values: tuple[tuple[str, Any], ...]  # (field, value) in grid order
    step: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec  # the parents' training (seed replaced per parent) and the retraining's settings
    prune: PruneSpec
    fusion: FusionSpec
    seeds: tuple[int, ...]  # one parent per seed
    device: str = "auto"

    def label(self) -> str:
        """'prune.fraction=0.3, seed=1' (or 'base settings' for an empty grid)."""
        return ", ".join(f"{k}={_text(v)}" for k, v in self.values) or "base settings"

    def parents(self) -> list[ParentJob]:
        """The parents this point fuses, in order."""
        return [ParentJob(self.data, self.model, self.train, s, self.device, i) for i, s in enumerate(self.seeds)]

    @property
    def key(self) -> str:
        """The cache key of the point's comparison, as the pipeline step computes it (known before any work)."""
        parents = [p.key for p in self.parents()]
        if self.step == "prune":
            return pipeline.prune_key(self.data, self.model, self.prune, self.fusion, self.train, parents)
        return pipeline.fusion_key(self.data, self.model, self.fusion, self.train, parents)


def _text(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) \
        else str(value)


@dataclass(frozen=True)
class SweepSpec:
    """A grid over spec fields: every combination of its values is one point of the study."""

    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (field, values); the first field varies slowest
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)  # parents' training; retraining uses its batch size, lr...
    prune: PruneSpec = field(default_factory=PruneSpec)  # unused by the fusion step
    fusion: FusionSpec = field(default_factory=FusionSpec)
    seeds: tuple[int, ...] = (0, 1)  # parents' seeds; grid 'seed' s shifts each by s * len(seeds)
    step: str = "prune"  # 'prune' (prune_and_compare) or 'fusion' (fuse_and_compare)
    device: str = not_keyed("auto")  # where each point computes ('auto': CUDA when the worker sees a GPU)

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise SpecError(f"step must be one of {STEPS}, got '{self.step}'")
        if len(self.seeds) < 2 or min(self.seeds) < 0:
            raise SpecError(f"a sweep fuses at least two parents with seeds >= 0, got seeds {self.seeds}")
        known, grid = sweep_fields(), []
        for name, values in self.grid:
            name = {"prune.global_": "prune.global"}.get(name, name)
            if name in _NOT_SWEPT:
                raise SpecError(f"sweep field '{name}' cannot be swept: {_NOT_SWEPT[name]}")
            if name not in known:
                raise SpecError(f"unknown sweep field '{name}'; choose one of {', '.join(known)}")
            if name in dict(grid):
                raise SpecError(f"sweep field '{name}' appears twice in the grid")
            if self.step == "fusion" and name.startswith("prune."):
                raise SpecError(f"'{name}' is a pruning field; the fusion step does not prune (use step 'prune')")
            values = tuple(_coerce(name, v) for v in values)
            if not values:
                raise SpecError(f"sweep field '{name}' has no values")
            if len(set(values)) < len(values):
                raise SpecError(f"sweep field '{name}' lists a value twice: {', '.join(map(_text, values))}")
            for value in values:  # each value alone, so the message names the one at fault
                self._resolve(((name, value),))
            grid.append((name, values))
        if {"seed", "seeds"} <= set(dict(grid)):
            raise SpecError("sweep either 'seed' (offsets of the base seeds) or 'seeds' (explicit sets), not both")
        object.__setattr__(self, "grid", tuple(grid))
        self.points()  # combinations of valid values can still clash; say so before any work

    @property
    def key(self) -> str:
        """The cache key of the sweep's record (its grid and base specs)."""
        return spec_hash("sweep", self)

    def points(self) -> list[Point]:
        """Every combination of the grid's values, the last field varying fastest."""
        names = [name for name, _ in self.grid]
        combos = itertools.product(*(values for _, values in self.grid))
        return [self._resolve(tuple(zip(names, combo))) for combo in combos]

    def _resolve(self, values: tuple[tuple[str, Any], ...]) -> Point:
        changes: dict[str, dict[str, Any]] = {name: {} for name in _SPECS}
        data, model, seeds = self.data, self.model, self.seeds
        try:
            for name, value in values:
                if name == "dataset":
                    data = DataSpec(value, self.data.root, self.data.download)
                elif name == "arch":
                    model = ModelSpec(value)
                elif name == "seed":
                    seeds = tuple(s + value * len(self.seeds) for s in self.seeds)
                elif name == "seeds":
                    seeds = value
                else:
                    spec, attr = name.split(".", 1)
                    changes[spec]["global_" if attr == "global" else attr] = value
            specs = {name: replace(getattr(self, name), **changes[name]) for name in _SPECS}
            if len(seeds) < 2 or min(seeds) < 0:
                raise SpecError(f"a point fuses at least two parents with seeds >= 0, got seeds {seeds}")
            specs["fusion"].parent_weights(len(seeds))
            check_partition_parents(specs["train"], len(seeds))
        except SpecError as err:
            raise SpecError(f"{', '.join(f'{k}={_text(v)}' for k, v in values)}: {err}") from None
        return Point(values, self.step, data, model, specs["train"], specs["prune"], specs["fusion"], seeds,
                     self.device)


# ---------------------------------------------------------------------------- what a task runs


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
    with tempfile.TemporaryDirectory(prefix="otcore-parent-") as folder:
        cache = DiskCache(folder)
        parent = pipeline.train_parents(job.data, job.model, job.train, [job.seed], job.device, progress, cache,
                                        parts=[job.part])[0]
        return cache.load(parent.key)


def run_point(point: Point, parents: Sequence[CacheEntry], progress: Progress | None = None) -> PointOutput:
    """Run one point through the pipeline in a temporary cache holding its parents; return what it made."""
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
        return PointOutput(comparison.key, _new_entries(cache, {e.key for e in parents}),
                           time.perf_counter() - start)


PointTask = Callable[..., PointOutput]  # run_point's signature: (point, parent entries, progress=None)


# ---------------------------------------------------------------------------- the driver (executors: otcore.executors)


def error_text(err: BaseException) -> str:
    """'ValueError: message' of an exception, unwrapping Ray's task errors to the task's own."""
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError keeps the exception the task raised
    err = cause if isinstance(cause, BaseException) else err
    return f"{type(err).__name__}: {str(err).strip() or 'no message'}"


@dataclass
class PointResult:
    """A finished point: its swept values and every method's scores (networks stay in the cache)."""

    values: dict[str, Any]  # swept field -> value
    seeds: tuple[int, ...]  # the parents' seeds
    key: str  # cache key of the comparison
    comparison: pipeline.Comparison  # rows with model=None; load the key from the cache for the networks
    cached: bool  # already in the cache when the sweep started
    attempts: int | None = None  # tries it took (None: cached, or not known under Ray)
    seconds: float = 0.0  # task wall time


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

    def table(self) -> pd.DataFrame:
        """One row per (point, method): swept values, seeds, method, scores and sparsity."""
        return sweep_table(self.points, self.fields)


SPARSITY = "sparsity"  # share of zero weights over the pruned layers
SEEDS = "seeds"
METRICS = (TEST_ACC, TEST_LOSS, TRAIN_ACC, SPARSITY, PARAMETERS, INFERENCE_MS)


def sweep_table(points: Sequence[PointResult], swept: Sequence[str]) -> pd.DataFrame:
    """Long format, one row per point and method, the columns the Sweeps page and sweep_figure read."""
    rows = []
    for p in points:
        sparsity = p.comparison.extra.get("sparsity", {})
        for r in p.comparison.rows:
            rows.append({**{name: _cell(p.values.get(name)) for name in swept}, SEEDS: _text(tuple(p.seeds)),
                         METHOD: r.method, TEST_ACC: r.test.accuracy, TEST_LOSS: r.test.loss,
                         TRAIN_ACC: r.train.accuracy, SPARSITY: sparsity.get(r.method, math.nan),
                         PARAMETERS: r.parameters, INFERENCE_MS: r.inference_ms, "key": p.key})
    return pd.DataFrame(rows, columns=[*swept, *([SEEDS] if SEEDS not in swept else []), METHOD, *METRICS, "key"])


def _cell(value: Any) -> Any:
    return _text(value) if isinstance(value, tuple) else value


def _verified_metrics(cache: DiskCache, key: str, step: str) -> dict | None:
    """The metrics of a point's entry if it is there, verified and of the step's kind; else None."""
    record = cache.load_record(key)  # checksum and shape (otcore.records) checked, once per file version
    return record.metrics if record is not None and record.kind == step else None


def scores(key: str, metrics: dict) -> pipeline.Comparison:
    """A comparison's scores from its cache entry's metrics, without loading its networks."""
    rows = [pipeline.MethodResult(r["method"], _evaluation(r["test"]), _evaluation(r["train"]), r["parameters"],
                                  r["inference_ms"], None, r["key"], r.get("id", "")) for r in metrics["rows"]]
    extra = {k: v for k, v in metrics.items() if k not in ("rows", "diagnostics", "seconds")}
    return pipeline.Comparison(key, rows, {}, metrics.get("diagnostics", []), metrics.get("seconds", {}), extra,
                               cached=True)


def _evaluation(split: dict) -> Evaluation:
    return Evaluation(split["accuracy"], split["loss"])  # by name: a record may carry more fields


def run_sweep(sweep: SweepSpec, executor: Any = None, cache: DiskCache | None = None,
              progress: Progress | None = None, on_point: Callable[[PointResult], None] | None = None,
              task: PointTask = run_point) -> SweepResult:
    """Run every point not yet cached on an executor (default: local); store what returns; report failures.

    `task` is what each point runs (default `run_point`; a wrapper may add logging or fault injection).
    """
    if executor is None:
        from otcore.executors import LocalExecutor  # executors import this module

        executor = LocalExecutor()
    cache = cache or default_cache()
    report = progress or (lambda what, done: None)
    start = time.perf_counter()
    points = sweep.points()
    swept = [name for name, _ in sweep.grid]
    done: dict[str, PointResult | PointFailure] = {}
    for p in points:  # a damaged or malformed entry is skipped (the cache warns once) and computed again
        if (metrics := _verified_metrics(cache, p.key, sweep.step)) is not None:
            done[p.key] = PointResult(dict(p.values), p.seeds, p.key, scores(p.key, metrics), cached=True)
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
                result = PointResult(dict(point.values), point.seeds, point.key, scores(point.key, entry.metrics),
                                     cached=False, attempts=event.attempts, seconds=event.value.seconds)
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
               "points": [{"values": {k: _cell(v) for k, v in p.values}, "seeds": list(p.seeds), "key": p.key}
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
            points.append(PointResult(values, seeds, p["key"], scores(p["key"], metrics), cached=True))
        elif p["key"] in errors:
            failed.append(PointFailure(values, seeds, p["key"], errors[p["key"]]["error"],
                                       errors[p["key"]]["attempts"]))
    return SweepResult(key, points, failed, meta["total"], meta["fields"], meta["executor"], 0.0, meta["status"])


# ---------------------------------------------------------------------------- figure

_X_TITLES = {"prune.fraction": "prune fraction (share of weights removed)",
             "prune.retrain_epochs": "retraining of the fused net (epochs)",
             "prune.retrain_parents_epochs": "retraining of the pruned parents (epochs)",
             "train.epochs": "training of the parents (epochs)", "train.lr": "learning rate",
             "fusion.finetune_epochs": "fine-tuning of the fused net (epochs)",
             "fusion.act_samples": "activation samples (inputs)", "fusion.reg": "Sinkhorn regularisation",
             "seed": "parent seed set (offset)", "arch": "architecture", "dataset": "dataset"}
_Y_TITLES = {TEST_ACC: "test accuracy (%)", TRAIN_ACC: "train accuracy (%)", TEST_LOSS: "test loss (nats)",
             SPARSITY: "sparsity (share of zero weights)", PARAMETERS: "parameters (count)",
             INFERENCE_MS: "inference on the test split (ms)"}
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def sweep_figure(table: pd.DataFrame, metric: str = TEST_ACC, x: str = "prune.fraction",
                 methods: Sequence[str] | None = None, title: str | None = None, height: int = 400) -> go.Figure:
    """A metric against a swept field: a line per method and per value of the other (varied) swept fields.

    `table` is `SweepResult.table()`. Repeats over parent seeds are averaged, their standard deviation
    drawn as error bars. Lives here rather than in otcore.figures so the table and its chart change together.
    """
    frame = table if methods is None else table[table[METHOD].isin(list(methods))]
    swept = frame.columns[:list(frame.columns).index(METHOD)]
    others = [c for c in swept if c not in (x, "seed", SEEDS) and frame[c].nunique(dropna=False) > 1]
    fig = go.Figure()
    styles = {combo: _DASHES[i % len(_DASHES)] for i, combo in
              enumerate(dict.fromkeys(map(tuple, frame[others].astype(str).values)))} if others else {(): "solid"}
    for (method, *rest), group in frame.groupby([METHOD, *others], sort=False, dropna=False):
        stats = group.groupby(x, sort=True)[metric].agg(["mean", "std", "count"]).reset_index()
        name = " · ".join([method, *(f"{k}={v}" for k, v in zip(others, rest))])
        fig.add_trace(go.Scatter(
            x=stats[x], y=stats["mean"], name=name, mode="lines+markers",
            line=dict(color=method_colour(method), dash=styles[tuple(map(str, rest))]),
            error_y=dict(type="data", array=stats["std"].fillna(0), visible=bool((stats["count"] > 1).any())),
            hovertemplate=f"{name}<br>{x}=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>"))
    return style(fig, title, _X_TITLES.get(x, x), _Y_TITLES.get(metric, metric), height)
