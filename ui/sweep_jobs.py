"""Sweeps that run in threads the server owns, one session's each, at most MAX_RUNNING at a time.

A script run stops when its user clicks anything; a sweep started from the Sweeps page must go on.
Each Start makes a job of its own (an id, never shared with another session, even for the same
grid), kept in `st.cache_resource` (one registry per server process); the page keeps only the id,
so a session stops only what it started. Jobs beyond MAX_RUNNING wait in a first-come queue whose
position the page shows; Stop on a waiting job takes it out of the queue. Stop on a running job
sets a flag the sweep checks between points.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from otcore import sweep as sweeps

log = logging.getLogger(__name__)
STOPPED = "the Stop button was pressed"
POINT_TASK = sweeps.run_point  # what each point runs; read at start, so a test can hold points back
# One sweep at a time: local points already use every core (torch's threads, set once at start-up), so two
# sweeps would each take about twice as long and the first results would come later, while every session's
# pages slowed down too. A queue gives the same total time, the first sweep's results sooner, and keeps the
# server's memory to one sweep's networks.
MAX_RUNNING = 1
KEEP_ENDED = 50  # ended jobs kept for their sessions to collect; older ones are forgotten
QUEUED, RUNNING, ENDED, CANCELLED = "queued", "running", "ended", "cancelled"


class SweepStopped(sweeps.StopRequested):
    """Raised between points once Stop was pressed; the record says 'stopped: the Stop button was pressed'."""


@dataclass
class _Server:
    """The server's jobs by id, the queue (ids, first in line first) and the lock over both."""

    jobs: dict[str, SweepJob] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class SweepJob:
    """One session's sweep: waiting, running in a server thread, or ended, with its progress and outcome."""

    spec: Any  # otcore.sweep.SweepSpec
    runner: Any  # the executor it runs on
    total: int  # points in the grid
    server: _Server = field(repr=False)  # the registry it is queued in (its thread has no script context to ask)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # what the session keeps; never shared
    state: str = QUEUED
    what: str = "waiting for its turn"  # the last progress message
    fraction: float = 0.0  # of the points still to compute, 0..1
    finished: list = field(default_factory=list)  # PointResult of each point computed by this run, in order
    result: Any = None  # SweepResult once the thread returns
    error: BaseException | None = None  # what stopped it, other than Stop
    submitted: float = field(default_factory=time.time)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)  # set when it ends or leaves the queue
    thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        """The sweep's cache key (two sessions' jobs may share it; their ids differ)."""
        return self.spec.key

    @property
    def executor_name(self) -> str:
        return self.runner.name

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def queued(self) -> bool:
        return self.state == QUEUED

    def stop(self) -> None:
        """Take it out of the queue, or ask it to stop after the point it is computing (done points stay cached)."""
        self.stop_requested.set()
        with self.server.lock:
            if self.state == QUEUED:
                self.server.waiting.remove(self.id)
                self.state = CANCELLED
                self.ended.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until it has ended or left the queue (tests and shutdown); True if it did."""
        return self.ended.wait(timeout_s)

    def _progress(self, what: str, fraction: float) -> None:
        self.what, self.fraction = what, float(fraction)

    def _on_point(self, point: Any) -> None:
        self.finished.append(point)
        if self.stop_requested.is_set():  # cooperative: checked between points, never inside one
            raise SweepStopped(STOPPED)

    def _run(self) -> None:
        try:
            self.result = sweeps.run_sweep(self.spec, self.runner, progress=self._progress, on_point=self._on_point,
                                           task=POINT_TASK)
        except SweepStopped:
            self.result = sweeps.load_sweep(self.key)  # as recorded: the points done, status 'stopped: ...'
        except BaseException as err:  # noqa: BLE001 - kept for the page to show; finished points are cached
            log.error("sweep %s stopped", self.key, exc_info=err)
            self.error = err
        finally:
            with self.server.lock:
                self.state = ENDED
                self.ended.set()
            _schedule(self.server)


@st.cache_resource(show_spinner=False)
def _server() -> _Server:
    """The one registry of this server process (shared by every session)."""
    return _Server()


def _schedule(server: _Server) -> None:
    """Start waiting jobs, first in line first, while fewer than MAX_RUNNING run."""
    with server.lock:
        while server.waiting and sum(j.state == RUNNING for j in server.jobs.values()) < MAX_RUNNING:
            job = server.jobs[server.waiting.pop(0)]
            job.state, job.what = RUNNING, "starting"
            job.thread = threading.Thread(target=job._run, name=f"sweep-{job.id[:8]}", daemon=True)
            job.thread.start()
        ended = [j.id for j in server.jobs.values() if j.state in (ENDED, CANCELLED)]
        for old in ended[:-KEEP_ENDED]:  # oldest first: dicts keep insertion order
            del server.jobs[old]


def submit(spec: Any, runner: Any) -> SweepJob:
    """A new job of this sweep for the calling session: it starts now, or waits in the queue for its turn."""
    server = _server()
    job = SweepJob(spec, runner, spec.size, server)
    with server.lock:
        server.jobs[job.id] = job
        server.waiting.append(job.id)
    _schedule(server)
    return job


def get(job_id: str | None) -> SweepJob | None:
    """The job of an id this server gave out, if it still keeps it."""
    return None if job_id is None else _server().jobs.get(job_id)


def position(job: SweepJob) -> tuple[int, int] | None:
    """(place in the queue from 1, jobs ahead of it that run now) of a waiting job; None once it runs or ended."""
    server = _server()
    with server.lock:
        if job.id not in server.waiting:
            return None
        return server.waiting.index(job.id) + 1, sum(j.state == RUNNING for j in server.jobs.values())
