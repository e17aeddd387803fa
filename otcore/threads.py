"""The process's torch thread policy, in one place: chosen from the cores it may use, set once at start-up.

`torch.set_num_threads` is process-wide: toggling it around a call races with every other thread
of a shared process (the dashboard serves all sessions from one). So each entry point (CLI,
dashboard server, Ray worker) calls `apply_policy` once before any tensor work, and no library
code changes the count afterwards. The count is the cores this process may run on (CPU affinity,
bounded by a cgroup's CPU quota) divided among its concurrent workers; small models get one
thread, as a second OpenMP thread only adds synchronisation to their tiny matrix products.
A library user (a notebook) gets the same policy at `import otcore` (apply_library_default) unless
they chose a count themselves.
"""
from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path

# Passive: an idle OpenMP thread sleeps instead of spinning, so threads of concurrent calls do not
# burn each other's cores. Read by the OpenMP runtime when it loads, hence set before torch is imported.
OMP_WAIT_POLICY = "PASSIVE"
THREADS_ENV = "OTCORE_THREADS"  # an explicit count overrides the policy (a positive integer)
# Sessions a dashboard server expects to compute at once: each gets its share of the cores.
DASHBOARD_WORKERS = 2

_lock = threading.Lock()
_applied: int | None = None
_library: int | None = None  # the count the library default chose at `import otcore`; None: it left torch alone


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup's CFS quota (v2 cpu.max or v1 cfs_quota_us/cfs_period_us); None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, bounded by the cgroup's CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def policy_threads(workers: int = 1, small_models: bool = False, cores: int | None = None) -> int:
    """Intra-op threads per worker: the available cores shared by `workers` concurrent workers, 1 for small models."""
    override = os.environ.get(THREADS_ENV, "").strip()
    if override.isdigit() and int(override) > 0:
        return int(override)
    if small_models:
        return 1
    return max(1, (cores if cores is not None else available_cores()) // max(1, workers))


def set_wait_policy() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the environment says otherwise (effective only before torch loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


def apply_policy(workers: int = 1, small_models: bool = False, cores: int | None = None) -> int:
    """Set the process's torch threads from the policy, once; later calls return the count set first.

    Before torch is imported the count goes to OMP_NUM_THREADS, which torch starts with (so a
    command that never needs torch does not pay for importing it); after, to torch.set_num_threads.
    """
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        threads = policy_threads(workers, small_models, cores)
        set_wait_policy()
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)
        _applied = threads
        return threads


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs under /sys: what torch's cpuinfo counts as cores; None off Linux."""
    cores = set()
    for topology in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return None
    return len(cores) or None


def torch_default_counts() -> set[int]:
    """The counts torch may start with here when nobody sets one (its build and version pick one of these)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {n for n in (affinity, os.cpu_count(), _physical_cores()) if n}


def user_set_threads() -> bool:
    """Whether the user chose a thread count: OMP_NUM_THREADS/MKL_NUM_THREADS, or torch.set_num_threads before now.

    torch has no query for "set explicitly", so a loaded torch whose count is none of its defaults here
    was set by someone; a count equal to a default is taken as the default (setting it changes nothing
    but where the cores are capped by a cgroup quota).
    """
    if any(os.environ.get(name, "").strip() for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and torch.get_num_threads() not in torch_default_counts()


def apply_library_default() -> int | None:
    """At `import otcore`: the CLI's policy for a library user (notebook, script) who set no count; None if they did.

    Runs once per process, never per call (several sessions may share the process). Before torch is
    imported it sets OMP_WAIT_POLICY=PASSIVE and OMP_NUM_THREADS, which torch starts with; after, only
    torch.set_num_threads, to one thread unless OMP_WAIT_POLICY=PASSIVE was set before torch loaded
    (the OpenMP runtime read it then). An entry point's apply_policy still sets its own count later;
    OTCORE_THREADS=N is a count the user set.
    """
    global _library
    with _lock:
        if _applied is not None or _library is not None:
            return _library
        torch = sys.modules.get("torch")
        spinning = torch is not None and os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != OMP_WAIT_POLICY
        set_wait_policy()
        explicit = os.environ.get(THREADS_ENV, "").strip()
        if not (explicit.isdigit() and int(explicit) > 0) and user_set_threads():
            return None
        # torch loaded first with OpenMP's active wait: its idle threads spin, and beside busy processes a
        # team of two waits a time slice at every parallel region (20x slower); one thread has no team
        threads = policy_threads(small_models=spinning)
        if torch is None:
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        elif torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        _library = threads
        return threads


def library_threads() -> int | None:
    """The count apply_library_default chose at `import otcore`, None where the user's count stood."""
    return _library


def applied_threads() -> int | None:
    """The count apply_policy set in this process, None before it ran."""
    return _applied


def apply_worker_policy(assigned_cpus: float | None) -> int:
    """In a Ray worker: threads from the CPUs Ray assigned to the task (a worker runs one task at a time)."""
    set_wait_policy()
    import torch

    threads = policy_threads(cores=max(1, int(assigned_cpus or 1)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
