"""Executors of a sweep's points: here, one after another, or as Ray tasks (https://docs.ray.io).

Both follow the `Executor` protocol: they run the tasks of otcore.sweep.tasks and yield the same
Events to the driver, which alone writes the cache. Ray is imported only by RayExecutor, so the
local executor works without it installed.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from collections.abc import Callable, Iterator, Sequence

from otcore.cache import CacheEntry
from otcore.config import SpecError
from otcore.sweep.grid import Point, Progress
from otcore.sweep.tasks import PointOutput, PointTask, error_text, train_parent_entry

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclass
class Event:
    """What an executor reports to the driver: a parent trained, a point done, or a point given up."""

    kind: str  # 'parent', 'point' or 'failed'
    point: Point | None
    value: Any  # CacheEntry (parent), PointOutput (point), the error's text (failed)
    attempts: int | None  # tries it took (None where the executor cannot tell)


class Executor(Protocol):
    """What the driver needs of an executor: a name for the sweep's record, and the points run as Events."""

    name: ClassVar[str]

    def run(self, points: Sequence[Point], have: dict[str, CacheEntry], task: PointTask,
            progress: Progress) -> Iterator[Event]:
        """Train the parents missing from `have`, run `task` on each point, and yield an Event per job."""
        ...


def _attempts(run: Callable[[], Any], retries: int, what: str) -> tuple[bool, Any, int]:
    """(succeeded, value or error text, tries); an exception is retried up to `retries` times."""
    for attempt in range(1, retries + 2):
        try:
            return True, run(), attempt
        except Exception as err:  # noqa: BLE001 - any failure of a point is retried, then reported
            message = error_text(err)
            log.warning("%s failed (attempt %d of %d): %s", what, attempt, retries + 1, message)
    return False, message, retries + 1


@dataclass(frozen=True)
class LocalExecutor:
    """Every job in this process, one after another; a failing job is tried again `retries` times.

    Jobs run with the process's thread count (otcore.threads, set once at start-up): changing it
    here would change it for every other thread of a shared process, such as the dashboard's sessions.
    """

    retries: int = 2
    name: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        _check_retries(self.retries)

    def run(self, points: Sequence[Point], have: dict[str, CacheEntry], task: PointTask,
            progress: Progress) -> Iterator[Event]:
        """Train the missing parents as points need them, then run each point."""
        parents, broken = dict(have), {}
        for point in points:
            jobs = list({j.key: j for j in point.parents() if j.key not in parents and j.key not in broken}.values())
            share = 0.5 if jobs else 0.0  # of the point's progress bar, spent training its parents
            for i, job in enumerate(jobs):
                report = _scaled(progress, f"parent seed {job.seed}", share * i / len(jobs), share / len(jobs))
                ok, value, tries = _attempts(lambda: train_parent_entry(job, report),
                                             self.retries, f"parent seed {job.seed}")
                if ok:
                    parents[job.key] = value
                    yield Event("parent", None, value, tries)
                else:
                    broken[job.key] = f"parent seed {job.seed} could not be trained: {value}"
            missing = [broken[j.key] for j in point.parents() if j.key in broken]
            if missing:
                yield Event("failed", point, missing[0], 0)
                continue
            inputs = [parents[j.key] for j in point.parents()]
            report = _scaled(progress, point.label(), share, 1 - share)
            ok, value, tries = _attempts(lambda: task(point, inputs, report), self.retries,
                                         point.label())
            yield Event("point" if ok else "failed", point, value, tries)


def _scaled(progress: Progress, label: str, offset: float, span: float) -> Progress:
    """A job's progress callback reporting into [offset, offset + span] of its point, labelled."""
    return lambda what, done: progress(f"{label}: {what}", offset + span * done)


def _check_retries(retries: int) -> None:
    if retries < 0:
        raise SpecError(f"retries must be >= 0, got {retries}")


def _in_worker(fn: Callable, *args: Any) -> Any:
    """fn(*args) in a Ray worker, its torch threads set from the CPUs Ray assigned to this task.

    A worker process runs one task at a time, so setting the count here races with nothing, and
    the calling process's own setting is never touched.
    """
    import ray

    from otcore.threads import apply_worker_policy

    apply_worker_policy(ray.get_runtime_context().get_assigned_resources().get("CPU"))
    return fn(*args)


def _ray_point(task: PointTask, point: Point, *parents: CacheEntry) -> PointOutput:
    """A point's task; Ray resolves the parents' object refs (top-level arguments) before it starts."""
    return _in_worker(task, point, list(parents))


@dataclass(frozen=True)
class RayExecutor:
    """Each parent and each point a Ray task; Ray schedules them, retries them and reports worker deaths."""

    address: str | None = None  # None starts a local Ray instance; 'auto' or 'ray://HOST:10001' joins a cluster
    num_cpus: int | None = None  # CPUs of a local instance (None: every core)
    cpus_per_task: float = 1.0  # CPUs Ray reserves per task; also its torch threads (at least 1)
    gpus_per_task: float = 0.0  # GPUs per task (fractions share a GPU); 'auto' device then picks CUDA
    retries: int = 2  # Ray's max_retries: covers exceptions and killed workers alike
    name: ClassVar[str] = "ray"

    def __post_init__(self) -> None:
        _check_retries(self.retries)
        if self.cpus_per_task <= 0 or self.gpus_per_task < 0:
            raise SpecError("a Ray task needs CPUs > 0 and GPUs >= 0")

    def run(self, points: Sequence[Point], have: dict[str, CacheEntry], task: PointTask,
            progress: Progress) -> Iterator[Event]:
        """Submit every job at once (points wait on their parents' tasks), then report each as it ends."""
        ray = _import_ray()
        with _ray_connection(ray, self, progress):
            yield from self._run(ray, points, have, task)

    def _run(self, ray: Any, points: Sequence[Point], have: dict[str, CacheEntry],
             task: PointTask) -> Iterator[Event]:
        resources = dict(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.retries,
                         retry_exceptions=True)
        remote_parent, remote_point = (ray.remote(f).options(**resources) for f in (_in_worker, _ray_point))
        pending: dict[Any, tuple[str, Any]] = {}
        try:
            parent_refs: dict[str, Any] = {}
            for point in points:
                for job in point.parents():
                    if job.key in parent_refs:
                        continue
                    if job.key in have:
                        parent_refs[job.key] = ray.put(have[job.key])
                    else:
                        parent_refs[job.key] = remote_parent.remote(train_parent_entry, job)
                        pending[parent_refs[job.key]] = ("parent", job)
                ref = remote_point.remote(task, point, *(parent_refs[j.key] for j in point.parents()))
                pending[ref] = ("point", point)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                kind, item = pending.pop(ready[0])
                try:
                    value = ray.get(ready[0])
                except Exception as err:  # noqa: BLE001 - Ray has retried; the point is reported as failed
                    if kind == "point":  # a failed parent fails its points, which report it
                        yield Event("failed", item, error_text(err), self.retries + 1)
                    continue
                yield Event(kind, item if kind == "point" else None, value, None)
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    def _init(self, ray: Any) -> None:
        if self.address is None:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False)
            return
        import otcore

        # A cluster's workers get this copy of otcore; torch and the other requirements must be installed there.
        ray.init(address=self.address, runtime_env={"py_modules": [otcore]})


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError("the ray executor needs Ray: pip install 'ray>=2.9' (the local executor does not)") from None
    return ray


_RAY_LOCK = threading.Lock()
_ray_users = 0  # sweeps of this process using the Ray connection it started
_ray_started: tuple[str | None, bool] | None = None  # (address, started here) while sweeps use it


@contextmanager
def _ray_connection(ray: Any, executor: RayExecutor, progress: Progress) -> Iterator[None]:
    """Ray connected for one sweep, shared by the process's concurrent sweeps.

    `ray.init` is once per process: the first sweep connects (or finds a connection made by the
    caller, which it leaves alone), later ones join it, and the last one out shuts down what the
    first started. A sweep asking for another cluster than the live connection is refused.
    """
    global _ray_users, _ray_started
    with _RAY_LOCK:
        if _ray_users == 0:
            started = not ray.is_initialized()
            if started:
                progress("starting Ray" if executor.address is None else
                         f"joining the Ray cluster at {executor.address}", 0.0)
                executor._init(ray)
            _ray_started = (executor.address, started)
        elif _ray_started is not None and _ray_started[1] and executor.address != _ray_started[0]:
            raise SpecError(f"this process is already connected to Ray at {_ray_started[0] or 'a local instance'}; "
                            f"a concurrent sweep cannot join {executor.address or 'a local instance'}")
        _ray_users += 1
    try:
        yield
    finally:
        with _RAY_LOCK:
            _ray_users -= 1
            if _ray_users == 0 and _ray_started is not None and _ray_started[1]:
                ray.shutdown()
            if _ray_users == 0:
                _ray_started = None


def executor(name: str = "local", ray_address: str | None = None, retries: int = 2, cpus_per_task: float = 1.0,
             **ray_options: Any) -> Executor:
    """An executor by name: 'local', or 'ray' with an address (None: a local Ray instance) and resources.

    `cpus_per_task` is what Ray reserves per task, and so each Ray task's torch threads; local jobs
    run with the process's thread policy.
    """
    if not 0 < cpus_per_task <= 1024:  # also refuses inf and NaN, before int() or Ray sees them
        raise SpecError(f"CPUs per task must be in (0, 1024], got {cpus_per_task}")
    if not 0 <= ray_options.get("gpus_per_task", 0.0) <= 64:
        raise SpecError(f"GPUs per task must be in [0, 64], got {ray_options['gpus_per_task']}")
    if not 0 <= retries <= 100:
        raise SpecError(f"retries must be in [0, 100], got {retries}")
    if name == "local":
        if ray_address or ray_options:
            raise SpecError(f"{', '.join(['address'] * bool(ray_address) + list(ray_options))} needs the ray executor")
        return LocalExecutor(retries)  # threads: the process's policy (otcore.threads)
    if name == "ray":
        return RayExecutor(ray_address or None, retries=retries, cpus_per_task=cpus_per_task, **ray_options)
    raise SpecError(f"executor must be one of {EXECUTORS}, got '{name}'")
