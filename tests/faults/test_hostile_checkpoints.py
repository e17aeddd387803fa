"""Hostile checkpoints through the real CLI (`otcore fuse --parents good hostile`): one `error:` line,
exit 2, nothing cached, and a peak memory that stays near that of refusing a missing file."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from otcore.checkpoints import save_checkpoint
from tests.faults.conftest import REPO, assert_one_line_error
from tests.faults.hostile_files import HOSTILE, model_state

# Above the baseline (the same command refusing a missing file: torch, the data, one good parent).
# Honest loads of these tiny networks take kilobytes; the files' declarations asked for 2-14 GB.
MEMORY_SLACK = 256 * 2**20
TIMEOUT_S = 120  # a FIFO once hung the loader forever; a bounded wait makes that a failure


# `python -m otcore` as runpy runs it, writing the process's peak RSS (VmHWM) to $PEAK_FILE at exit.
# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into a child's ru_maxrss through
# fork and exec, so a pytest process that has built a large file would inflate every figure.
_MEASURED_CLI = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
atexit.register(_peak)
sys.argv[0] = "otcore"
runpy.run_module("otcore", run_name="__main__", alter_sys=True)
"""


def fuse_measured(good: Path, other: Path | str, cache: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m otcore fuse --parents good other`, and the process's peak RSS in bytes."""
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak"
        env = {**os.environ, "OTCORE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), "PEAK_FILE": str(peak_file)}
        done = subprocess.run([sys.executable, "-c", _MEASURED_CLI, "fuse", "--dataset", "digits", "--arch",
                               "mlpnet", "--parents", str(good), str(other), "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        return done, int(peak_file.read_text()) * 1024  # kB


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.checkpoint"
    save_checkpoint(model_state(), path, format="paper")
    return path


@pytest.fixture(scope="module")
def baseline_rss(good: Path, tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of the same command when the second parent does not exist (the first one, loaded and
    scored before that refusal, is the control: the command gets as far as the second file)."""
    folder = tmp_path_factory.mktemp("baseline")
    done, peak = fuse_measured(good, folder / "missing.checkpoint", folder / "cache")
    assert_one_line_error(done, "does not exist")
    return peak


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_checkpoint_gets_one_line_in_bounded_memory(kind, tmp_path, good, baseline_rss):
    path, fragments = HOSTILE[kind](tmp_path)
    cache = tmp_path / "cache"
    done, peak = fuse_measured(good, path, cache)
    assert_one_line_error(done, *fragments)
    assert peak - baseline_rss < MEMORY_SLACK, (peak, baseline_rss)
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached, no temp file

