"""Hostile pickle shapes (tests/faults/hostile_pickles.py) at growing sizes, in checkpoints (torch zip and legacy)
and CIFAR batches: each refused with one line, in a real process (a segfault is a return code, not a lost pytest),
with the peak memory of reading it bounded; and CIFAR folders holding them through `otcore train`. The largest
checkpoints of each kind are in tests/faults/hostile_files.py's HOSTILE, which the CLI and upload tests try."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.faults.conftest import REPO, assert_one_line_error, cli
from tests.faults.hostile_datasets import write_cifar10
from tests.faults.hostile_files import model_state
from tests.faults.hostile_pickles import CARRIERS, SHAPES, as_cifar_batch, as_legacy, as_torch_zip
from tests.faults.hostile_pickles import deep_tuple_key, memo_index, shared_key, shared_lists

# Above what the process held before the call (the file's bytes included): the pickles are a few hundred
# bytes to 115 MB, and the structures they would expand to are gigabytes to 2^60 items.
MEMORY_RISE = 64 * 2**20
HANG_S = 300  # a hang detector only: every refusal takes milliseconds (bench/hostile_checkpoints.py)

# Reads each file given and prints one JSON line per file: [path, message or "ACCEPTED", peak RSS rise in
# bytes]. The peak is reset per file through /proc/self/clear_refs (VmHWM, the process's own high-water mark;
# ru_maxrss would carry the parent's through fork and exec). "start" lines name the file a crash stopped in.
_READER = """
import json, sys
from otcore.checkpoints import CheckpointError, load_checkpoint
from otcore.cifar_pickle import read_batch
from otcore.datafiles import DataError
def status(field):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(field + ":")).split()[1]) * 1024
for path in sys.argv[2:]:
    raw = open(path, "rb").read()
    print(json.dumps(["start", path]), flush=True)
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    try:
        read_batch(raw, "labels", 10) if sys.argv[1] == "CIFAR batch" else load_checkpoint(raw)
        outcome = "ACCEPTED"
    except (CheckpointError, DataError) as err:
        outcome = str(err)
    print(json.dumps([path, outcome, status("VmHWM") - before]), flush=True)
"""


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_every_shape_at_every_size_is_refused_in_one_line_in_bounded_memory(carrier, tmp_path):
    files = {}
    for shape, (make, sizes, fragments) in SHAPES.items():
        for size in sizes:
            path = tmp_path / f"{shape.replace(' ', '-')}-{size}"
            path.write_bytes(CARRIERS[carrier](make(size)))
            files[str(path)] = (shape, size, fragments)
    done = subprocess.run([sys.executable, "-c", _READER, carrier, *files], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_S)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    started = [line[1] for line in lines if line[0] == "start"]
    assert done.returncode == 0, (done.returncode, started[-1:], done.stderr[-2000:])  # -11: a segfault
    results = {line[0]: line[1:] for line in lines if line[0] != "start"}
    assert sorted(results) == sorted(files)
    for path, (message, rise) in results.items():
        shape, size, fragments = files[path]
        assert message != "ACCEPTED" and "\n" not in message and len(message) < 300, (shape, size, message)
        assert any(fragment in message for fragment in fragments), (shape, size, message)
        assert rise < MEMORY_RISE, (shape, size, rise)


@pytest.mark.parametrize("raw", [as_torch_zip(deep_tuple_key(1_000_000)), as_legacy(shared_key(2_000))],
                         ids=["tuple key 10^6 deep", "shared key 2,000 levels"])
def test_a_shape_far_past_its_bound_is_refused_where_it_passes_the_bound(raw):
    """The refusal comes at the 65th level or the 22nd doubling, whatever follows in the file."""
    from otcore.checkpoints import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError, match="was refused: its pickle (nests|builds)"):
        load_checkpoint(raw)


@pytest.mark.parametrize("raw, fragment", [
    (as_cifar_batch(deep_tuple_key(300_000)), "levels deep"),
    (as_cifar_batch(shared_lists(60)), "shared references"),
    (memo_index(), "not a CIFAR batch"),
], ids=["tuple key 300,000 deep", "shared lists 60 levels", "memo index 250,000,000 (9 bytes)"])
def test_train_on_a_cifar_folder_with_a_hostile_batch_is_one_line(raw, fragment, tmp_path):
    root = write_cifar10(tmp_path / "data", raw)
    done = cli("train", "--dataset", "cifar10", "--data-root", str(root), "--arch", "mlpnet", "--epochs", "1",
               "--batch-size", "10", "--seeds", "0", "--json", cache=tmp_path / "cache", timeout=HANG_S)
    assert_one_line_error(done, "could not read cifar10", "test_batch", fragment)


def test_honest_batches_and_checkpoints_with_sharing_and_nesting_still_load():
    """What honest files do: share strings and storages, nest a few levels, use int and str keys."""
    import collections
    import io
    import pickle

    import torch

    from otcore.checkpoints import load_checkpoint
    from otcore.cifar_pickle import read_batch

    state = model_state()
    extra = {"optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"params": [0]}]},
             "hyper_parameters": {"a": {"b": {"c": [1, 2, {"d": (1, 2.0, "x")}]}}}, "size": torch.Size([3, 4]),
             "counts": collections.Counter({"a": 1})}
    buffer = io.BytesIO()
    torch.save({"model_state_dict": state, "test_accuracy": 90.0, "epoch": 1, **extra}, buffer)
    loaded = load_checkpoint(buffer.getvalue())
    assert loaded.meta == {"test_accuracy": 90.0, "epoch": 1} and set(loaded.state_dict) == set(state)
    pixels = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    name = b"shared_name.png"
    raw = pickle.dumps({"data": pixels, "labels": [1, 2, 3, 4], "filenames": [name] * 4}, protocol=2)
    x, y = read_batch(raw, "labels", 10)
    assert x.reshape(4, -1).tolist() == pixels.tolist() and y.tolist() == [1, 2, 3, 4]
