"""Fixtures of the AppTest suite: a cache folder holding the default parents, a page runner, and the
parents as the sidebar stores them."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from tests.support import copy_cache

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # a generous deadline, not a wait: run() returns when the script ends (seconds alone; minutes beside other work)


@pytest.fixture(scope="session")
def app_cache_dir(tmp_path_factory: pytest.TempPathFactory, digits_cli_train) -> Path:
    """A cache folder of the app tests' own, seeded with the session's one training of the default parents."""
    path = tmp_path_factory.mktemp("app-cache")
    copy_cache(digits_cli_train.cache, path)
    return path


@pytest.fixture(autouse=True)
def app_cache(app_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every app test reads and writes that folder (pages find the default parents on disk)."""
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(app_cache_dir))
    return app_cache_dir


@pytest.fixture
def page() -> Callable[..., AppTest]:
    """`page('pages/2_Fusion.py', **session_state)`: an AppTest of a page, session state seeded, not yet run."""

    def make(script: str, **state) -> AppTest:
        at = AppTest.from_file(str(REPO / script), default_timeout=TIMEOUT_S)
        for key, value in state.items():
            at.session_state[key] = value
        return at

    return make


@pytest.fixture
def parent_set(digits_parents: list):
    """The default parents (digits, mlpnet, seeds 0 and 1) as the sidebar's button stores them."""
    from otcore.config import DataSpec, ModelSpec, TrainSpec
    from ui.state import ParentSet

    return ParentSet(list(digits_parents), DataSpec(), ModelSpec(), "cpu", "trained", TrainSpec(), (0, 1))
