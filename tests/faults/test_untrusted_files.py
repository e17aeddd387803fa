"""Checkpoints from anywhere: refused with one clear message, never executed, nothing written."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from otcore.checkpoints import save_checkpoint
from otcore.models import build_model
from tests.faults.conftest import assert_one_line_error, cli

MNIST_SHAPE = (1, 8, 8)  # digits: the parents are checked against the digits mlpnet


class RunsACommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.checkpoint"
    save_checkpoint(build_model("mlpnet", MNIST_SHAPE, 10).state_dict(), path, format="paper")
    return path


def _bad_files(tmp_path) -> dict:
    marker = tmp_path / "command-ran"
    files = {}
    evil = tmp_path / "evil.checkpoint"
    torch.save({"model_state_dict": {"fc1.weight": RunsACommand(str(marker))}, "epoch": 1}, evil)
    files["code"] = (evil, ["evil.checkpoint"])
    (tmp_path / "empty.pt").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.pt", ["empty"])
    good = tmp_path / "cut.pt"
    save_checkpoint(build_model("mlpnet", MNIST_SHAPE, 10).state_dict(), good, format="paper")
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = (good, ["cut.pt"])
    (tmp_path / "noise.bin").write_bytes(os.urandom(4096))
    files["random"] = (tmp_path / "noise.bin", ["noise.bin"])
    nan = build_model("mlpnet", MNIST_SHAPE, 10).state_dict()
    nan["fc2.weight"][0, 0] = float("nan")
    save_checkpoint(nan, tmp_path / "nan.safetensors", format="safetensors")
    files["nan"] = (tmp_path / "nan.safetensors", ["fc2.weight", "NaN"])
    save_checkpoint(build_model("vgg_tiny_nobias", MNIST_SHAPE, 10).state_dict(), tmp_path / "vgg.pt", format="state_dict")
    files["architecture"] = (tmp_path / "vgg.pt", ["mlpnet", "fc1.weight"])
    wide = build_model("mlpnet_doub", MNIST_SHAPE, 10).state_dict()
    save_checkpoint(wide, tmp_path / "wide.pt", format="paper")
    files["shape"] = (tmp_path / "wide.pt", ["fc1.weight", "(800, 64)", "(400, 64)"])
    ints = {k: v.to(torch.int32) for k, v in build_model("mlpnet", MNIST_SHAPE, 10).state_dict().items()}
    torch.save(ints, tmp_path / "ints.pt")
    files["dtype"] = (tmp_path / "ints.pt", ["floating"])
    return files, marker


def test_every_bad_checkpoint_gets_one_message_and_leaves_nothing_behind(tmp_path, good, parents_cache):
    files, marker = _bad_files(tmp_path)
    before = sorted(p.name for p in parents_cache.iterdir())
    for _kind, (path, fragments) in files.items():
        done = cli("fuse", "--dataset", "digits", "--arch", "mlpnet", "--parents", str(good), str(path), "--json",
                   cache=parents_cache)
        assert_one_line_error(done, *fragments)
    assert not marker.exists()  # the pickle's command never ran
    assert sorted(p.name for p in parents_cache.iterdir()) == before  # no entry, no temp file


def test_an_oversize_upload_is_refused_before_it_is_parsed(tmp_path):
    from otcore.checkpoints import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="too large: 2,048 bytes, over the limit of 1,024 bytes"):
        load_checkpoint(b"\0" * 2048, max_bytes=1024)


def test_a_plain_pickle_of_a_state_dict_with_code_is_refused(tmp_path):
    from otcore.checkpoints import CheckpointError, load_checkpoint

    marker = tmp_path / "ran"
    data = pickle.dumps({"fc1.weight": RunsACommand(str(marker))})
    with pytest.raises(CheckpointError, match=r"carries code .*would call posix.system"):
        load_checkpoint(data)
    assert not marker.exists()
