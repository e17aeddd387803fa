"""Fault-injection helpers: run the real CLI as a user would, in a cache of its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cache: Path | str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m otcore ARGS` with OTCORE_CACHE_DIR=cache; returns the finished process."""
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "otcore", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, nothing on stdout, one 'error: ...' line naming every fragment, no traceback."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def parents_cache(digits_cli_train) -> Path:
    """The cache folder holding the session's two trained digits parents."""
    assert digits_cli_train.proc.returncode == 0, digits_cli_train.proc.stderr
    return digits_cli_train.cache
