"""Tests of otcore.checkpoints: round trips, refusal of hostile or damaged files, shape matching."""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import struct
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from otcore.checkpoints import (Checkpoint, CheckpointError, checkpoint_bytes, load_checkpoint, load_into,
                                match_state_dict, save_checkpoint)
from tests.faults.hostile_files import (HOSTILE, Entry, Storage, Tensor, model_state, torch_pickle, torch_zip,
                                        zip_archive)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def torch_bytes(obj: object, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)  # safetensors keeps names, not their order
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


class RunsShell:
    """A pickle payload that runs a shell command when unpickled by an unrestricted loader."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("fmt, meta, expected_meta", [
    ("paper", {"test_accuracy": 91.25, "epoch": 7}, {"test_accuracy": 91.25, "epoch": 7}),
    ("state_dict", {"test_accuracy": 91.25}, {}),
    ("safetensors", {"test_accuracy": 91.25, "epoch": 7, "arch": "mlpnet", "widths": [16, 4]},
     {"test_accuracy": 91.25, "epoch": 7, "arch": "mlpnet", "widths": [16, 4]}),
])
def test_round_trip_each_format(tmp_path, fmt, meta, expected_meta):
    state = small_model().state_dict()
    path = tmp_path / f"net.{fmt}"
    save_checkpoint(state, path, format=fmt, meta=meta)
    from_file = load_checkpoint(path)
    from_bytes = load_checkpoint(checkpoint_bytes(state, fmt, meta))
    for loaded in (from_file, from_bytes):
        assert isinstance(loaded, Checkpoint) and loaded.format == fmt
        assert_same_tensors(loaded.state_dict, dict(state))
        assert loaded.meta == expected_meta
        if fmt != "safetensors":
            assert list(loaded.state_dict) == list(state)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "net.pt"
    save_checkpoint({"w": torch.zeros(3)}, path, format="state_dict")
    save_checkpoint({"w": torch.ones(3)}, path, format="state_dict")
    assert torch.equal(load_checkpoint(path).state_dict["w"], torch.ones(3))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        save_checkpoint({"w": torch.zeros(3)}, tmp_path / "x", format="onnx")


def test_paper_file_with_numpy_scalars_and_extra_keys_loads(tmp_path):
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "model_0.checkpoint"
    torch.save({"model_state_dict": model.state_dict(), "test_accuracy": np.float64(0.9731),
                "epoch": np.int64(300), "optimizer_state_dict": optimizer.state_dict()}, path)
    loaded = load_checkpoint(path)
    assert loaded.format == "paper"
    assert loaded.meta == {"test_accuracy": 0.9731, "epoch": 300}
    assert type(loaded.meta["test_accuracy"]) is float and type(loaded.meta["epoch"]) is int
    assert_same_tensors(loaded.state_dict, dict(model.state_dict()))


def test_paper_file_written_under_numpy_1_loads():
    # numpy 1 pickled its scalars as numpy.core.multiarray.scalar; the legacy format is a raw pickle.
    state = {"w": torch.ones(2, 2)}
    data = torch_bytes({"model_state_dict": state, "test_accuracy": np.float64(0.5), "epoch": 3},
                       _use_new_zipfile_serialization=False)
    assert b"numpy._core.multiarray" in data
    loaded = load_checkpoint(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert loaded.meta == {"test_accuracy": 0.5, "epoch": 3}


def test_legacy_torch_format_loads():
    state = small_model().state_dict()
    loaded = load_checkpoint(torch_bytes(dict(state), _use_new_zipfile_serialization=False))
    assert loaded.format == "state_dict"
    assert_same_tensors(loaded.state_dict, dict(state))


def test_dataparallel_prefix_is_stripped():
    state = {f"module.{k}": v for k, v in small_model().state_dict().items()}
    loaded = load_checkpoint(torch_bytes({"model_state_dict": state, "test_accuracy": 0.5, "epoch": 1}))
    assert list(loaded.state_dict) == list(small_model().state_dict())


def test_payload_really_runs_code_when_unrestricted(tmp_path):
    # Control: proves the payload used below is live, so its refusal means something.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsShell(f"touch {marker}")))
    assert marker.exists()


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle", "safetensors_name"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"model_state_dict": {"w": torch.ones(2)}, "test_accuracy": RunsShell(f"touch {marker}")}
    path = tmp_path / "evil.pt"
    if writer == "torch_zip":
        torch.save(payload, path)
    elif writer == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:  # a pickle disguised by its file name
        path = tmp_path / "evil.safetensors"
        path.write_bytes(torch_bytes(payload))
    with pytest.raises(CheckpointError, match="was refused: it carries code or objects that are not plain tensors"):
        load_checkpoint(path)
    assert not marker.exists()


def test_pickled_module_object_is_refused():
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(torch_bytes(small_model()))


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(path)


@pytest.mark.parametrize("fmt", ["paper", "state_dict", "safetensors"])
def test_truncated_file_is_refused(fmt):
    data = checkpoint_bytes(small_model().state_dict(), fmt, {"test_accuracy": 0.5, "epoch": 1})
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(data[: len(data) // 2])


def test_truncated_legacy_file_is_refused():
    data = torch_bytes(dict(small_model().state_dict()), _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(data[: len(data) // 2])


def test_random_bytes_are_refused():
    data = bytes([0x13]) + random.Random(0).randbytes(4096)  # a first byte no format starts with
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(data)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_behind_a_pickle_opcode_are_refused(seed):
    with pytest.raises(CheckpointError):
        load_checkpoint(b"\x80" + random.Random(seed).randbytes(4096))


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
@pytest.mark.parametrize("fmt", ["paper", "safetensors"])
def test_non_finite_weights_are_refused_naming_the_tensor(bad, word, fmt):
    state = dict(small_model().state_dict())
    state["3.weight"] = state["3.weight"].clone()
    state["3.weight"][1, 2] = bad
    with pytest.raises(CheckpointError, match=rf"3\.weight contains {word}"):
        load_checkpoint(checkpoint_bytes(state, fmt))


def test_oversize_file_is_refused(tmp_path):
    path = tmp_path / "big.pt"
    save_checkpoint(small_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="too large"):
        load_checkpoint(path, max_bytes=1024)
    with pytest.raises(CheckpointError, match="too large"):
        load_checkpoint(path.read_bytes(), max_bytes=1024)


@pytest.mark.parametrize("obj, message", [
    ({"lr": 0.1, "epoch": 3}, "holds no tensors"),
    ({}, "holds no tensors"),
    ({"model_state_dict": {}, "test_accuracy": 0.5}, "holds no tensors"),
    ({"w": torch.ones(2), "epoch": 3}, "'epoch', a int, where a tensor is expected"),
    ([torch.ones(2)], "holds a list, not a dict of tensors"),
    ({"0.weight": torch.ones(2, 2, dtype=torch.int64)}, "0.weight holds int64 values where floating-point"),
])
def test_files_without_usable_weights_are_refused(obj, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(torch_bytes(obj))


def test_integer_buffers_are_allowed():
    state = small_model().state_dict()
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert "1.num_batches_tracked" in load_checkpoint(checkpoint_bytes(state, "state_dict")).state_dict


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_match_names_first_wrong_shape_in_model_order():
    model = small_model()
    state = dict(model.state_dict())
    state["3.weight"] = torch.zeros(5, 16)  # later in model order
    state["0.weight"] = torch.zeros(32, 8)  # first in model order, inserted last in the dict
    with pytest.raises(CheckpointError) as caught:
        match_state_dict(model, state, arch_name="tiny_mlp")
    assert str(caught.value) == ("checkpoint does not fit tiny_mlp: 0.weight has shape (32, 8), "
                                 "the model expects (16, 8)")


def test_match_names_first_missing_tensor():
    model = small_model()
    state = dict(model.state_dict())
    del state["3.bias"], state["1.running_var"]
    with pytest.raises(CheckpointError, match=r"^checkpoint does not fit Sequential: 1\.running_var is missing"):
        match_state_dict(model, state)


def test_match_names_unexpected_tensor():
    model = small_model()
    state = {**model.state_dict(), "9.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"9\.weight is not a tensor of the model"):
        match_state_dict(model, state)


def test_load_into_checks_and_casts_dtype(tmp_path):
    source = small_model()
    with torch.no_grad():
        source[0].weight.add_(1.0)
    path = tmp_path / "net.safetensors"
    save_checkpoint({k: v.double() if v.is_floating_point() else v for k, v in source.state_dict().items()},
                    path, format="safetensors")
    target = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    assert load_into(target, load_checkpoint(path)) is target
    assert target[0].weight.dtype == torch.float32
    assert_same_tensors(dict(target.state_dict()), dict(source.state_dict()))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_into(nn.Sequential(nn.Linear(8, 4)), load_checkpoint(path))


# --- Declarations checked before loading: files crafted byte by byte (tests/faults/hostile_files.py) ---


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_file_is_refused_naming_what_it_declares(tmp_path, kind):
    path, fragments = HOSTILE[kind](tmp_path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_hand_built_zip_loads_when_honest():
    # Control for the crafted files: the same builder with honest declarations gives a loadable file,
    # so each refusal above is the declaration's doing. A transposed (strided, non-overlapping) tensor
    # and two tensors sharing one storage are honest too.
    values = torch.arange(12, dtype=torch.float32)
    storage = Storage("FloatStorage", "0", 12)
    data = torch_zip({"w": Tensor(storage, (3, 4), (4, 1)), "t": Tensor(storage, (4, 3), (1, 4)),
                      "tail": Tensor(storage, (2,), (1,), offset=10)}, {"0": values.numpy().tobytes()})
    loaded = load_checkpoint(data).state_dict
    assert torch.equal(loaded["w"], values.reshape(3, 4))
    assert torch.equal(loaded["t"], values.reshape(3, 4).T)
    assert torch.equal(loaded["tail"], torch.tensor([10.0, 11.0]))


def test_hand_built_legacy_file_loads_when_honest():
    buffer = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, buffer, protocol=2)
    buffer.write(torch_pickle({"w": Tensor(Storage("DoubleStorage", "k", 3), (3,), (1,))}, legacy=True))
    pickle.dump(["k"], buffer, protocol=2)
    buffer.write(struct.pack("<q", 3) + np.array([1.0, 2.0, 3.0]).tobytes())
    loaded = load_checkpoint(buffer.getvalue()).state_dict
    assert loaded["w"].dtype == torch.float64 and loaded["w"].tolist() == [1.0, 2.0, 3.0]


def test_hand_built_safetensors_loads_when_honest():
    header = json.dumps({"__metadata__": {"epoch": "3"},
                         "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    data = struct.pack("<Q", len(header)) + header + np.array([1, 2, 3, 4], dtype=np.float32).tobytes()
    loaded = load_checkpoint(data)
    assert loaded.meta == {"epoch": 3} and loaded.state_dict["w"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_views_declaring_more_than_four_times_the_file_are_refused():
    storage = Storage("FloatStorage", "0", 2**16)  # 256 KiB, viewed whole by 20 tensors: 5 MiB declared
    data = torch_zip({f"v{i}": Tensor(storage, (2**16,), (1,)) for i in range(20)}, {"0": bytes(2**18)})
    with pytest.raises(CheckpointError, match=r"tensors declare 5,242,880 bytes, over 4x the file's"):
        load_checkpoint(data)


def test_a_compressed_copy_of_an_honest_file_is_refused(tmp_path):
    honest = checkpoint_bytes(small_model().state_dict(), "paper")
    with zipfile.ZipFile(io.BytesIO(honest)) as src, zipfile.ZipFile(tmp_path / "z.pt", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="is compressed; torch files store entries uncompressed"):
        load_checkpoint(tmp_path / "z.pt")


def test_parameters_and_optimizer_state_still_load():
    model = small_model()
    params = {name: nn.Parameter(p.detach().clone()) for name, p in model.named_parameters()}
    loaded = load_checkpoint(torch_bytes({"model_state_dict": params, "epoch": 2}))
    assert loaded.format == "paper" and sorted(loaded.state_dict) == sorted(params)


def test_model_given_shapes_are_checked_before_values(tmp_path):
    from otcore.models import build_model

    state = model_state()
    state["fc2.weight"] = torch.full((5, 400), float("nan"))  # wrong shape and NaN: the shape speaks first
    with pytest.raises(CheckpointError, match=r"does not fit mlpnet: fc2\.weight has shape \(5, 400\)"):
        load_checkpoint(checkpoint_bytes(state, "paper"), model=build_model("mlpnet", (1, 8, 8), 10),
                        arch_name="mlpnet")


def test_float64_within_float32_range_loads():
    state = {"w": torch.tensor([3.0e38, -3.0e38, 1e-300], dtype=torch.float64)}
    assert load_checkpoint(checkpoint_bytes(state, "state_dict")).state_dict["w"].dtype == torch.float64


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_a_symlink_to_an_honest_file_loads(tmp_path):
    save_checkpoint(small_model().state_dict(), tmp_path / "real.pt")
    (tmp_path / "link.pt").symlink_to(tmp_path / "real.pt")
    assert load_checkpoint(tmp_path / "link.pt").format == "paper"


@pytest.mark.parametrize("size, stride, shown", [
    ((1,) * 20, (1,) * 20, "size <20 items>, stride <20 items>"),
    ((-1,), (1,), "size (-1,), stride (1,)"),
    ((3,), (1, 1), "size (3,), stride (1, 1)"),
])
def test_impossible_layouts_are_refused_briefly(size, stride, shown):
    data = torch_zip({"w": Tensor(Storage("FloatStorage", "x", 4), size, stride)}, {"x": bytes(16)})
    with pytest.raises(CheckpointError, match=rf"tensor 'w' declares an impossible layout \({re.escape(shown)}"):
        load_checkpoint(data)


def test_a_pickle_of_a_million_operations_is_refused():
    pickled = b"\x80\x02]" + b"K\x01a" * 600_000 + b"."  # a list of 600,000 ones: 1.2e6 opcodes, 1.8 MB
    data = zip_archive([Entry("archive/data.pkl", pickled), Entry("archive/version", b"3\n")])
    with pytest.raises(CheckpointError, match="runs over 1,000,000 operations"):
        load_checkpoint(data)
