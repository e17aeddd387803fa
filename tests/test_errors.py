"""The error family: what a user can fix exits 2 with one line; a bug exits 1 with its traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from otcore.checkpoints import CheckpointError
from otcore.config import SpecError, TrainSpec
from otcore.data import DataError
from otcore.errors import FusionError, UserError
from otcore.fusion import MergeMethodError, TransportError
from otcore.hessian import HessianError


def python(code: str, cache: Path) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh interpreter with its own cache folder."""
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_user_facing_error_is_a_user_error_and_still_a_value_error():
    for error in (SpecError, DataError, CheckpointError, HessianError, FusionError, MergeMethodError, TransportError):
        assert issubclass(error, UserError) and issubclass(error, ValueError), error
    with pytest.raises(UserError, match="epochs must be in"):
        TrainSpec(epochs=-1)


def test_a_user_mistake_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "otcore", "train", "--epochs", "5000"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OTCORE_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: epochs must be in [0, 1000], got 5000"]


@pytest.mark.parametrize("error", ["ValueError", "RuntimeError"])
def test_a_bug_exits_1_with_its_traceback_even_a_value_error(tmp_path, error):
    # A bug inside the train command (its cache look-up), in a real `main` of a fresh interpreter:
    # before the error family, any ValueError was reported as if the user had made a mistake.
    code = ("import sys, otcore.cli.train as t\n"
            f"def broken(args): raise {error}('internal invariant broken')\n"
            "t.cached_parents = broken\n"
            "from otcore.cli import main\n"
            "sys.exit(main(['train', '--json']))\n")
    done = python(code, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"{error}: internal invariant broken"
    assert "error: internal" not in done.stderr


def test_fusion_refuses_one_parent_with_a_user_error():
    from otcore.fusion import FusionOptions, fuse
    from otcore.models import build_model

    with pytest.raises(FusionError, match="at least two parents"):
        fuse([build_model("mlpnet", (1, 8, 8), 10)], FusionOptions())
