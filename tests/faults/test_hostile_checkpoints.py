"""Hostile checkpoints through the real CLI (`otcore fuse --parents good hostile`): one `error:` line,
exit 2, nothing cached, and a peak memory that stays near that of refusing a missing file."""
from __future__ import annotations

from pathlib import Path

import pytest

from otcore.checkpoints import save_checkpoint
from tests.faults.conftest import assert_one_line_error
from tests.faults.hostile_files import HOSTILE, fuse_measured, model_state

# Above the baseline (the same command refusing a missing file: torch, the data, one good parent).
# Honest loads of these tiny networks take kilobytes; the files' declarations asked for 2-14 GB.
MEMORY_SLACK = 256 * 2**20


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

