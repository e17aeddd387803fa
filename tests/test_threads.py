"""The thread policy: counted from the cores a process may use, set once by the entry point, never by a sweep."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.support import REPO
from otcore.cache import DiskCache
from otcore.config import DataSpec, ModelSpec, TrainSpec
from otcore.sweep import LocalExecutor, RayExecutor, SweepSpec, parse_grid, run_sweep
from otcore.threads import _cgroup_quota, policy_threads

CHILD = ("import sys, torch\n"
         "from otcore.cli import main\n"
         "main(sys.argv[1:])\n"  # a real dataset without its files: the policy has run, then one error line
         "print('threads', torch.get_num_threads(), file=sys.stderr)\n")
CIFAR = ["train", "--dataset", "cifar10", "--data-root", "/nonexistent"]
DIGITS = ["train", "--dataset", "digits", "--epochs", "-1"]


def cli_threads(argv: list[str], cpus: set[int], tmp_path: Path, **env: str) -> int:
    """torch's thread count after the CLI's policy ran in a child pinned to `cpus` (os.sched_setaffinity)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, cpus),
                          env={**os.environ, "OTCORE_CACHE_DIR": str(tmp_path), **env})
    assert proc.returncode == 0 and proc.stderr.startswith("error: "), proc.stderr
    return int(proc.stderr.strip().splitlines()[-1].split()[1])


def test_a_cli_pinned_to_one_core_uses_one_thread(tmp_path) -> None:
    # OMP_NUM_THREADS=8 as a container might set it: the policy counts the cores the process may use
    assert cli_threads(CIFAR, {0}, tmp_path, OMP_NUM_THREADS="8") == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin to")
def test_a_cli_with_two_cores_uses_two_threads_and_one_on_digits(tmp_path) -> None:
    assert cli_threads(CIFAR, {0, 1}, tmp_path, OMP_NUM_THREADS="1") == 2
    assert cli_threads(DIGITS, {0, 1}, tmp_path) == 1  # small models: one thread
    assert cli_threads(CIFAR, {0, 1}, tmp_path, OTCORE_THREADS="3") == 3


def test_the_policy_shares_cores_between_workers_and_reads_the_cgroup_quota(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OTCORE_THREADS", raising=False)
    assert [policy_threads(w, cores=8) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert policy_threads(1, small_models=True, cores=8) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of quota (cgroup v2)
    assert _cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(v1) == 2.0


@pytest.fixture(scope="module")
def parents_cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("thread-parents")
    from otcore.pipeline import train_parents

    train_parents(DataSpec(), ModelSpec(), TrainSpec(epochs=1), [0, 1], "cpu", cache=DiskCache(folder))
    return folder


def test_a_local_sweep_leaves_the_process_thread_count_alone(parents_cache) -> None:
    sweep = SweepSpec(parse_grid(["prune.fraction=0,0.5"]), train=TrainSpec(epochs=1), device="cpu")
    before = torch.get_num_threads()
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # another session's thread reading the count while the sweep runs
        while not stop.is_set():
            seen.append(torch.get_num_threads())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_sweep(sweep, LocalExecutor(), DiskCache(parents_cache), progress=lambda *_: seen.append(
            torch.get_num_threads()))
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not result.failed and len(result.points) == 2
    assert torch.get_num_threads() == before and set(seen) == {before}


@pytest.mark.ray
def test_two_sweeps_on_ray_at_once_share_the_connection(parents_cache, tmp_path) -> None:
    """Both start while neither has ended: neither calls ray.init twice nor loses Ray to the other's shutdown."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    both_running = threading.Barrier(2, timeout=240)
    results, errors = {}, []

    def one_sweep(fraction: float) -> None:
        def progress(what: str, done: float) -> None:
            if "starting Ray" not in what and not waited:
                waited.append(both_running.wait())  # the other sweep has its connection too

        waited: list[int] = []
        sweep = SweepSpec(parse_grid([f"prune.fraction={fraction}"]), train=TrainSpec(epochs=1), device="cpu")
        try:
            results[fraction] = run_sweep(sweep, RayExecutor(num_cpus=2), DiskCache(parents_cache), progress=progress)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=one_sweep, args=(f,)) for f in (0.25, 0.75)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert {f: (r.executor, len(r.points), r.failed) for f, r in results.items()} == {
        0.25: ("ray", 1, []), 0.75: ("ray", 1, [])}
    assert not ray.is_initialized()  # the last sweep out shut down the instance the first one started


LIBRARY_CHILD = ("import os, sys\n"
                 "if sys.argv[1] == 'torch-first':\n"
                 "    import torch\n"
                 "    if len(sys.argv) > 2:\n"
                 "        torch.set_num_threads(int(sys.argv[2]))  # the user's own choice, before otcore\n"
                 "import otcore.fusion\n"
                 "import torch\n"
                 "from otcore.threads import library_threads\n"
                 "print(torch.get_num_threads(), library_threads(), os.environ.get('OMP_WAIT_POLICY'))\n")


def library_threads_in_child(cpus: set[int], *argv: str, **env: str) -> tuple[int, str, str]:
    """(torch's threads, the library default's count, OMP_WAIT_POLICY) after a notebook-like import in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                                               "OTCORE_THREADS")}
    proc = subprocess.run([sys.executable, "-c", LIBRARY_CHILD, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, cpus), env={**clean, **env})
    assert proc.returncode == 0, proc.stderr
    threads, library, wait = proc.stdout.split()
    return int(threads), library, wait


TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin to")


@TWO_CORES
def test_importing_otcore_first_applies_the_policy_with_a_passive_wait() -> None:
    assert library_threads_in_child({0, 1}, "otcore-first") == (2, "2", "PASSIVE")
    # OTCORE_THREADS is the policy's own override: torch starts with it rather than its default of 2 here
    assert library_threads_in_child({0, 1}, "otcore-first", OTCORE_THREADS="1") == (1, "1", "PASSIVE")


@TWO_CORES
def test_the_library_leaves_a_count_the_user_set_alone() -> None:
    assert library_threads_in_child({0, 1}, "otcore-first", OMP_NUM_THREADS="1") == (1, "None", "PASSIVE")
    assert library_threads_in_child({0, 1}, "torch-first", "3") == (3, "None", "PASSIVE")
    assert library_threads_in_child({0, 1}, "torch-first", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == (
        1, "None", "ACTIVE")


@TWO_CORES
def test_torch_imported_first_gets_one_thread_unless_its_openmp_waits_passively() -> None:
    # loaded without OMP_WAIT_POLICY=PASSIVE, OpenMP's idle threads spin: a team thrashes beside busy processes
    assert library_threads_in_child({0, 1}, "torch-first") == (1, "1", "PASSIVE")
    assert library_threads_in_child({0, 1}, "torch-first", OMP_WAIT_POLICY="passive") == (2, "2", "passive")
