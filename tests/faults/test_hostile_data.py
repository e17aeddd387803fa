"""Dataset folders from anywhere: one clear message for every bad file, no crash, no blow-up, no stale answer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.support import write_idx, write_mnist_like
from tests.faults.conftest import REPO, assert_one_line_error, cli
from tests.faults.hostile_datasets import (cifar_batch, idx_bytes, shared_reference_batch, structured_offset_batch,
                                        write_cifar10)

TINY = ("--arch", "mlpnet", "--epochs", "1", "--batch-size", "10", "--seeds", "0")


def train(root: Path, cache: Path, dataset: str = "mnist") -> subprocess.CompletedProcess:
    """`python -m otcore train` on a folder, in a process of its own."""
    return cli("train", "--dataset", dataset, "--data-root", str(root), *TINY, "--json", cache=cache)


@pytest.fixture
def train_here(tmp_path, monkeypatch, capsys):
    """`train` on a folder through otcore.cli.main in this process (torch imported once, not per call)."""
    from otcore.cli import main

    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path / "cache"))

    def run(root: Path, dataset: str = "mnist") -> subprocess.CompletedProcess:
        code = main(["train", "--dataset", dataset, "--data-root", str(root), *TINY, "--json"])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["train"], code, out.out, out.err)

    return run


def run_measured(args: list[str], cache: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m otcore ARGS` and the peak resident memory of that process alone, in bytes (os.wait4)."""
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "otcore", *args], cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    return done, usage.ru_maxrss * 1024  # Linux reports kilobytes


def test_a_structured_dtype_batch_is_one_error_line_not_a_segfault(tmp_path):
    """numpy's own unpickling would BUILD a dtype with a field 2e9 bytes away and die reading it (exit 139)."""
    write_cifar10(tmp_path / "data", structured_offset_batch())
    done = train(tmp_path / "data", tmp_path / "cache", "cifar10")
    assert_one_line_error(done, "could not read cifar10", "test_batch", "refused dtype 'V8'")


def test_one_array_referenced_10000_times_is_refused_in_bounded_memory(tmp_path):
    """A 327 KB batch that would expand to 3 GB: refused, with the peak memory of an ordinary refusal."""
    benign = write_cifar10(tmp_path / "benign", cifar_batch(np.zeros((4, 3072), np.uint8), [0, 1, 2, -1]))
    attack = write_cifar10(tmp_path / "attack", shared_reference_batch())
    assert (attack / "cifar-10-batches-py" / "test_batch").stat().st_size == 327_607
    args = ["train", "--dataset", "cifar10", *TINY]
    refused, benign_rss = run_measured([*args, "--data-root", str(benign)], tmp_path / "cache")
    assert_one_line_error(refused, "label -1 in labels")
    done, attack_rss = run_measured([*args, "--data-root", str(attack)], tmp_path / "cache")
    assert_one_line_error(done, "test_batch", "shared references are counted")
    assert attack_rss < benign_rss + 64 * 2**20, (attack_rss, benign_rss)  # the expansion would add 3 GB


def _hostile_roots(base: Path) -> dict[str, tuple[str, Path, list[str]]]:
    """name -> (dataset, root, fragments of the one error line) for each kind of bad folder."""
    roots = {}

    def mnist(kind: str, file: str, raw: bytes | None, *fragments: str) -> None:
        root = base / kind
        write_mnist_like(root, "MNIST")
        path = root / "MNIST" / "raw" / file
        path.unlink()
        if raw is None:
            os.mkfifo(path)  # a reader that opened it would wait for a writer for ever
        else:
            path.write_bytes(raw)
        roots[kind] = ("mnist", root, [file, *fragments])

    mnist("label 10", "t10k-labels-idx1-ubyte", idx_bytes(np.full(10, 12, np.uint8)), "label 12", "10 classes")
    mnist("count", "train-labels-idx1-ubyte", idx_bytes(np.zeros(21, np.uint8)), "20 images", "21 labels")
    mnist("0 dims", "train-images-idx3-ubyte", bytes([0, 0, 8, 0]), "0 dimensions")
    mnist("floats", "train-images-idx3-ubyte", idx_bytes(np.zeros((20, 28, 28), np.float32), type_code=0x0D),
          "32-bit floats")
    mnist("fifo", "train-images-idx3-ubyte", None, "not a regular file")
    negative = cifar_batch(np.zeros((2, 3072), np.uint8), [0, -1])
    roots["cifar -1"] = ("cifar10", write_cifar10(base / "cifar -1", negative), ["test_batch", "label -1"])
    short = cifar_batch(np.zeros((3, 3072), np.uint8), [0, 1])
    roots["cifar count"] = ("cifar10", write_cifar10(base / "cifar count", short),
                            ["test_batch", "3 images but 2 labels"])
    return roots


def test_every_hostile_folder_gives_one_error_line_and_stores_nothing(tmp_path, train_here):
    for dataset, root, fragments in _hostile_roots(tmp_path).values():
        assert_one_line_error(train_here(root, dataset), f"could not read {dataset} from {root}", *fragments)
    assert not list((tmp_path / "cache").glob("*.safetensors"))
    fifo = _hostile_roots(tmp_path / "again")["fifo"][1]
    assert_one_line_error(train(fifo, tmp_path / "cache"), "not a regular file")  # and as its own process


def test_parents_follow_the_folders_content_never_its_name(tmp_path, make_mnist_root, train_here):
    """Trained on A: B (other images) trains anew, a copy of A is a cache hit, a missing folder is an error."""
    cache = tmp_path / "cache"
    root_a, _ = make_mnist_root("MNIST", seed=0)
    root_b = tmp_path / "b"
    write_mnist_like(root_b, "MNIST", seed=1)
    first = json.loads(train_here(root_a).stdout)["parents"][0]
    assert first["cached"] is False
    other = json.loads(train_here(root_b).stdout)["parents"][0]
    assert other["cached"] is False and other["key"] != first["key"]
    shutil.copytree(root_a, tmp_path / "copy")
    copy = json.loads(train(tmp_path / "copy", cache).stdout)["parents"][0]  # the CLI's torch-free cached path
    assert copy["cached"] is True and copy["key"] == first["key"]
    assert copy["test_accuracy"] == first["test_accuracy"]
    assert_one_line_error(train(Path("/nonexistent/folder"), cache), "could not read mnist from /nonexistent/folder",
                          "no such folder")
    # Same size, one label changed: the fingerprint sees it, so the cached parent is not served.
    labels = tmp_path / "copy" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    write_idx(labels, (np.arange(20) + 1) % 10)
    changed = json.loads(train_here(tmp_path / "copy").stdout)["parents"][0]
    assert changed["cached"] is False and changed["key"] not in (first["key"], other["key"])


@pytest.mark.parametrize("kind", ["fifo", "label 10"])
def test_the_dashboard_shows_one_message_for_a_hostile_folder(tmp_path, kind):
    from streamlit.testing.v1 import AppTest

    _, root, fragments = _hostile_roots(tmp_path)[kind]
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["ws.dataset"] = "mnist"
    at.session_state["ws.root"] = str(root)
    at.run()
    if kind != "fifo":  # a file that is not a file is seen as the workspace is read; bad contents once loaded
        at.button(key="ws.load").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and all(f in errors[0] for f in fragments), errors
    assert "parents" not in at.session_state
