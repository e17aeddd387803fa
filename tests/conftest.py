"""Shared fixtures: a session cache folder, digits parents trained once, real-format MNIST files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import REPO, write_mnist_like


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test caches into one session folder, never into the repository's cached_models/."""
    path = tmp_path_factory.mktemp("otcore-cache")
    previous = os.environ.get("OTCORE_CACHE_DIR")
    os.environ["OTCORE_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("OTCORE_CACHE_DIR", None)
    else:
        os.environ["OTCORE_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def digits_cli_train(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`python -m otcore train --dataset digits --arch mlpnet --json` run once into an empty cache folder.

    The session's only training of the default parents (mlpnet, default TrainSpec, seeds 0 and 1):
    `cache` is the folder, `proc` the finished process (stdout, stderr, returncode).
    """
    cache = tmp_path_factory.mktemp("digits-parents")
    proc = subprocess.run([sys.executable, "-m", "otcore", "train", "--dataset", "digits", "--arch", "mlpnet",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OTCORE_CACHE_DIR": str(cache)})
    return SimpleNamespace(cache=cache, proc=proc)


@pytest.fixture(scope="session")
def digits_parents(digits_cli_train: SimpleNamespace) -> list:
    """The two default digits parents as `pipeline.Parent`s, read from the CLI run's cache."""
    from otcore.cache import DiskCache
    from otcore.config import DataSpec, ModelSpec, TrainSpec
    from otcore.pipeline import train_parents

    return train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], device="cpu",
                         cache=DiskCache(digits_cli_train.cache))


@pytest.fixture
def make_mnist_root(tmp_path: Path):
    """A factory: `make(folder='MNIST', n_train=20, n_test=10, seed=0) -> (root, arrays written)`."""

    def make(folder: str = "MNIST", n_train: int = 20, n_test: int = 10, seed: int = 0):
        root = tmp_path / f"{folder.lower()}-root"
        return root, write_mnist_like(root, folder, n_train, n_test, seed)

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronisation (20x slower on a busy shared CPU)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
