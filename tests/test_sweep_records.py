"""A sweep's record says what happened: points that share a key, a killed run, a full disk, a grid too large
to start without a word, and the CLI's --analyse with no names.

Real processes (SIGKILL), a real full file system (a tmpfs of a few pages, mounted where the sandbox lets
root mount one), real torch; parents as in tests/test_sweep.py, trained once per module.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from otcore.cache import DiskCache
from otcore.config import SpecError
from otcore.sweep import (LARGE_GRID, STUDY_NETWORKS, LocalExecutor, load_sweep, record_status, run_point, run_sweep,
                          sweep_records)
from otcore.sweep import driver
from tests.support import REPO
from tests.test_sweep import cache_with, parents_dir, spec  # noqa: F401 - parents_dir is a fixture

TIMEOUT_S = 300


def wait_for(condition, what: str) -> None:
    """Poll until `condition()` holds, failing after TIMEOUT_S (a subprocess or thread gets there on its own)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def cli(*args: str, cache: Path, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "otcore", *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout, check=False)


# ---------------------------------------------------------------------------- values that give one key


@pytest.mark.parametrize("grid, first, second", [
    (["prune.retrain.lr=0.01,0.02"], "prune.retrain.lr=0.01", "prune.retrain.lr=0.02"),
    (["train.partition_classes=0+2,2+0"], "train.partition_classes=0+2", "train.partition_classes=2+0"),
    (["train.partition=labels", "train.partition_classes=1+3,0+2,2+0"], "train.partition_classes=0+2",
     "train.partition_classes=2+0"),
    (["fusion.retrain.lr=0.01,0.03", "prune.fraction=0,0.5"], "fusion.retrain.lr=0.01", "fusion.retrain.lr=0.03"),
    (["prune.retrain.schedule=step,cosine", "seed=0,1"], "prune.retrain.schedule=step",
     "prune.retrain.schedule=cosine"),
])
def test_values_that_give_one_cache_key_everywhere_are_refused_in_one_line_naming_them(grid, first, second):
    with pytest.raises(SpecError) as info:
        spec(*grid)
    message = str(info.value)
    assert message.startswith(f"{first} and {second} give the same result at every point (one cache key)")
    assert "\n" not in message


def test_the_cli_refuses_them_with_exit_2_before_any_work(tmp_path):
    proc = cli("sweep", "--grid", "prune.retrain.lr=0.01,0.02", "--fractions", "0.3", "--json", cache=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: prune.retrain.lr=0.01 and prune.retrain.lr=0.02 give the same result at "
                                   "every point (one cache key): the settings make them one; keep one of them")
    assert not list(tmp_path.glob("*.safetensors"))


def test_points_that_share_a_key_only_somewhere_keep_their_labels_and_the_record_counts_every_point(
        parents_dir, tmp_path):  # noqa: F811 - the fixture
    cache = cache_with(parents_dir, tmp_path / "cache")
    # Without retraining epochs the lr changes nothing; with one epoch it does: 4 points, 3 computations.
    sweep = spec("prune.retrain_epochs=0,1", "prune.retrain.lr=0.001,0.01", "prune.fraction=0.5")
    assert len({p.key for p in sweep.points()}) == 3
    computed: list[str] = []

    def counting(point, parents, progress=None):
        computed.append(point.label())
        return run_point(point, parents, progress)

    seen: list[dict] = []
    result = run_sweep(sweep, LocalExecutor(), cache, task=counting, on_point=lambda p: seen.append(p.values))
    assert len(computed) == 3 and result.status == "finished" and result.total == 4 and not result.failed
    labels = [(p.values["prune.retrain_epochs"], p.values["prune.retrain.lr"]) for p in result.points]
    assert labels == [(0, 0.001), (0, 0.01), (1, 0.001), (1, 0.01)]  # each point under its own values
    assert sorted((v["prune.retrain_epochs"], v["prune.retrain.lr"]) for v in seen) == sorted(labels)
    shared = [p.comparison.accuracies() for p in result.points[:2]]
    assert shared[0] == shared[1] and result.points[0].key == result.points[1].key
    record = cache.load_record(sweep.key).metrics
    assert (record["status"], record["done"], record["total"]) == ("finished", 4, 4)
    again = load_sweep(sweep.key, cache)
    assert [(p.values["prune.retrain_epochs"], p.values["prune.retrain.lr"]) for p in again.points] == labels
    assert (again.status, len(again.points), again.total) == ("finished", 4, 4)


# ---------------------------------------------------------------------------- what a record says


def test_a_cli_sweep_killed_with_sigkill_reads_as_interrupted_not_running(parents_dir, tmp_path):  # noqa: F811
    cache = cache_with(parents_dir, tmp_path / "cache")
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache.root), "PYTHONPATH": str(REPO)}
    # Parents of 300 epochs: the sweep is still training them when it is killed.
    proc = subprocess.Popen([sys.executable, "-m", "otcore", "sweep", "--epochs", "300", "--fractions", "0.3",
                             "--device", "cpu", "--json"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sweep_records(cache).rows, "the sweep's first record")
        [row] = sweep_records(cache).rows
        assert row.metrics["status"] == "running" and row.metrics["owner"]["pid"] == proc.pid
        assert record_status(row.metrics) == "running"  # alive: its process runs and beats
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(TIMEOUT_S) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    [row] = sweep_records(cache).rows
    assert row.metrics["status"] == "running"  # what the dead process left on disk
    expected = f"interrupted: its process (pid {proc.pid}) ended without finishing"
    assert record_status(row.metrics) == expected
    assert load_sweep(row.key, cache).status == expected


def test_a_running_sweep_beats_and_a_record_without_a_beat_reads_as_interrupted(parents_dir, tmp_path,  # noqa: F811
                                                                                monkeypatch):
    cache = cache_with(parents_dir, tmp_path / "cache")
    monkeypatch.setattr(driver, "HEARTBEAT_S", 0.05)
    release = threading.Event()

    def held(point, parents, progress=None):
        assert release.wait(TIMEOUT_S)
        return run_point(point, parents, progress)

    sweep = spec("prune.fraction=0.3")
    thread = threading.Thread(target=run_sweep, args=(sweep, LocalExecutor(), cache), kwargs={"task": held})
    thread.start()
    try:
        wait_for(lambda: cache.load_record(sweep.key) is not None, "the first record")
        first = cache.load_record(sweep.key).metrics["updated"]
        # Inside one long point the record is rewritten: a reader sees the run alive.
        wait_for(lambda: cache.load_record(sweep.key).metrics["updated"] > first, "a heartbeat")
        metrics = cache.load_record(sweep.key).metrics
        assert record_status(metrics) == "running"
        # The same record, read by a host that cannot see the process, a minute after its last beat.
        elsewhere = {**metrics, "owner": {**metrics["owner"], "host": "another-host"}}
        assert record_status(elsewhere, now=metrics["updated"] + 30) == "running"
        assert record_status(elsewhere, now=metrics["updated"] + 61).startswith("interrupted: no sign of life since ")
    finally:
        release.set()
        thread.join(TIMEOUT_S)
    assert load_sweep(sweep.key, cache).status == "finished"


def test_an_exception_in_the_driver_marks_the_record_failed(parents_dir, tmp_path):  # noqa: F811
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("prune.fraction=0.3,0.5")

    def broken_progress(what: str, done: float) -> None:
        if what.startswith("1/2 points"):
            raise RuntimeError("the progress display broke")

    with pytest.raises(RuntimeError):
        run_sweep(sweep, LocalExecutor(), cache, progress=broken_progress)
    assert load_sweep(sweep.key, cache).status == "failed: RuntimeError: the progress display broke"


@pytest.fixture
def full_disk(tmp_path, parents_dir):  # noqa: F811
    """A cache folder on a tmpfs that holds the parents and a record, but not a point's networks (2.8 MB)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    parents = cache_with(parents_dir, tmp_path / "parents")
    size = sum(f.stat().st_size for f in parents.root.glob("*.safetensors")) + 256 * 1024
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"otcore-full-{uuid.uuid4().hex[:6]}",
                           str(mount)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root in a sandbox that allows it): {proc.stderr.strip()}")
    try:
        for f in parents.root.glob("*.safetensors"):
            (mount / f.name).write_bytes(f.read_bytes())
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_sweep_that_runs_out_of_disk_says_so_and_its_record_says_failed(full_disk):
    proc = cli("sweep", "--epochs", "3", "--fractions", "0.3", "--device", "cpu", "--json", cache=full_disk)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "No space left on device" in line and f"in the cache at {full_disk}" in line
    [row] = sweep_records(DiskCache(full_disk)).rows
    assert row.metrics["status"].startswith("failed: SweepStoreError: cannot store ")
    assert "No space left on device (points already stored stay; rerun to resume)" in row.metrics["status"]
    assert load_sweep(row.key, DiskCache(full_disk)).status == row.metrics["status"]


# ---------------------------------------------------------------------------- large grids


def test_the_grid_size_is_known_without_resolving_a_million_points():
    values = ",".join(str(i / 1000) for i in range(1000))
    big = spec(f"prune.fraction={values}", "seeds=" + ",".join(f"{2 * i}+{2 * i + 1}" for i in range(1000)))
    assert big.size == 1_000_000 > LARGE_GRID
    assert spec("prune.fraction=0,0.5", "seed=0,1,2").size == 6 and spec().size == 1


def test_the_cli_refuses_a_large_grid_unless_its_size_is_confirmed(parents_dir, tmp_path):  # noqa: F811
    cache = cache_with(parents_dir, tmp_path / "cache")
    values = ",".join(str(i / 1000) for i in range(1000))
    seeds = ",".join(str(i) for i in range(1000))
    proc = cli("sweep", "--grid", f"prune.fraction={values}", "--grid", f"seed={seeds}", "--json", cache=cache.root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: the grid has 1,000,000 points (more than 10,000): to start it, rerun "
                                   "with --confirm-size 1000000")
    wrong = cli("sweep", "--grid", f"prune.fraction={values}", "--grid", f"seed={seeds}", "--confirm-size", "999999",
                cache=cache.root)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "error: --confirm-size 999999 does not match the grid, which has 1,000,000 points"
    assert not sweep_records(cache).rows  # nothing started
    small = cli("sweep", "--epochs", "3", "--fractions", "0.3", "--device", "cpu", "--confirm-size", "1", "--json",
                cache=cache.root)
    assert small.returncode == 0, small.stderr
    assert json.loads(small.stdout)["status"] == "finished"
    assert "10,000" in cli("sweep", "--help", cache=cache.root).stdout


def test_a_large_grid_is_checked_point_by_point_when_it_runs(parents_dir, tmp_path, monkeypatch):  # noqa: F811
    from otcore.sweep import grid

    monkeypatch.setattr(grid, "LARGE_GRID", 1)
    monkeypatch.setattr(driver, "LARGE_GRID", 1)
    inert = spec("prune.retrain.lr=0.01,0.02")  # over the threshold: made without resolving its points
    with pytest.raises(SpecError, match="prune.retrain.lr=0.01 and prune.retrain.lr=0.02 give the same result"):
        run_sweep(inert, LocalExecutor(), cache_with(parents_dir, tmp_path / "cache"))


# ---------------------------------------------------------------------------- --analyse with no names


def test_analyse_with_no_names_analyses_the_studys_networks():
    import argparse

    from otcore.cli import COMMANDS
    from otcore.cli.sweep import _sweep_spec

    parser = argparse.ArgumentParser(prog="sweep")
    COMMANDS["sweep"][0](parser)

    def analysed(*flags: str) -> tuple[str, ...]:
        return _sweep_spec(parser.parse_args(["--fractions", "0.3", *flags])).analyse

    assert STUDY_NETWORKS == ("parents", "vanilla", "OT fusion", "retrained fusion", "retrained vanilla")
    assert analysed("--analyse") == STUDY_NETWORKS  # argparse used to refuse a bare --analyse
    assert analysed("--analyse", "--step", "prune") == STUDY_NETWORKS
    assert analysed() == ()
    assert analysed("--analyse", "OT fusion", "vanilla") == ("OT fusion", "vanilla")
    help_text = " ".join(parser.format_help().split())
    assert "with no names, the study's networks: parents, vanilla, 'OT fusion', 'retrained fusion', " \
           "'retrained vanilla'" in help_text


def test_a_bare_analyse_runs_the_analysis_on_the_studys_networks(parents_dir, tmp_path):  # noqa: F811
    cache = cache_with(parents_dir, tmp_path / "cache")
    proc = cli("sweep", "--epochs", "3", "--fractions", "0.3", "--retrain-epochs", "1", "--device", "cpu",
               "--analyse", "--hessian-batch-size", "100", "--top-k", "1", "--power-iters", "10", "--lanczos-iters", "4",
               "--lambda-points", "3", "--json", cache=cache.root)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)["rows"]
    assert sorted(row["curvature"]) == sorted(["parent 1", "parent 2", "vanilla average", "OT fusion",
                                               "OT fusion retrained", "vanilla average retrained"])
    assert all(c["trace"] > 0 for c in row["curvature"].values())
