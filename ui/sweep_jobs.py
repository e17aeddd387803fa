"""Sweeps that run in a thread the server owns, not in a page's script run.

A script run stops when its user clicks anything; a sweep started from the Sweeps page must go on.
The job lives in `st.cache_resource` (one registry per server process), the page keeps only its key
and follows the job's recorded progress; Stop sets a flag the sweep checks between points.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from otcore import sweep as sweeps

log = logging.getLogger(__name__)
STOPPED = "the Stop button was pressed"
POINT_TASK = sweeps.run_point  # what each point runs; read at start, so a test can hold points back


class SweepStopped(Exception):
    """Raised between points once Stop was pressed; the record says 'stopped: SweepStopped: the Stop button ...'."""


@dataclass
class SweepJob:
    """One sweep running (or run) in a server thread: its progress, and its outcome once done."""

    spec: Any  # otcore.sweep.SweepSpec
    executor_name: str
    total: int  # points in the grid
    what: str = "starting"  # the last progress message
    fraction: float = 0.0  # of the points still to compute, 0..1
    finished: list = field(default_factory=list)  # PointResult of each point computed by this run, in order
    result: Any = None  # SweepResult once the thread returns
    error: BaseException | None = None  # what stopped it, other than Stop
    started: float = field(default_factory=time.time)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        """Ask the sweep to stop after the point it is computing (points already done stay cached)."""
        self.stop_requested.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the thread returns (tests and shutdown); True if it did."""
        if self.thread is not None:
            self.thread.join(timeout_s)
        return not self.running

    def _progress(self, what: str, fraction: float) -> None:
        self.what, self.fraction = what, float(fraction)

    def _on_point(self, point: Any) -> None:
        self.finished.append(point)
        if self.stop_requested.is_set():  # cooperative: checked between points, never inside one
            raise SweepStopped(STOPPED)

    def _run(self, runner: Any) -> None:
        try:
            self.result = sweeps.run_sweep(self.spec, runner, progress=self._progress, on_point=self._on_point,
                                           task=POINT_TASK)
        except SweepStopped:
            self.result = sweeps.load_sweep(self.key)  # as recorded: the points done, status 'stopped: ...'
        except BaseException as err:  # noqa: BLE001 - kept for the page to show; finished points are cached
            log.error("sweep %s stopped", self.key, exc_info=err)
            self.error = err


@st.cache_resource(show_spinner=False)
def _registry() -> dict[str, SweepJob]:
    """The server's sweep jobs by sweep key (shared by every session)."""
    return {}


_LOCK = threading.Lock()  # one start per sweep key at a time


def start(spec: Any, runner: Any) -> SweepJob:
    """The job of this sweep: the running one if the same grid already runs, else a new thread."""
    jobs = _registry()
    with _LOCK:
        job = jobs.get(spec.key)
        if job is not None and job.running:
            return job
        job = SweepJob(spec, runner.name, len(spec.points()))
        job.thread = threading.Thread(target=job._run, args=(runner,), name=f"sweep-{spec.key[:8]}", daemon=True)
        jobs[spec.key] = job
        job.thread.start()
    return job


def get(key: str | None) -> SweepJob | None:
    """The job of a sweep key started in this server, if any."""
    return None if key is None else _registry().get(key)
