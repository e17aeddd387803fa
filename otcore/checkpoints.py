"""Read and write network weights: the OT-fusion paper's format, plain state_dicts, safetensors.

Files are untrusted: torch files are read with the weights-only unpickler (plus the few numpy
globals the paper's files need) and safetensors never holds code, so loading never runs code
from a file. What a file declares (storages, strides, compressed entries, header nesting, tensor
counts) is checked first by `otcore.checkpoint_scan`, so loading never allocates more than the
file's honest size; only regular files are opened. Every problem surfaces as one `CheckpointError`
whose message is meant for the user.
"""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import safetensors.torch
import torch

from otcore.checkpoint_scan import WEIGHT_DTYPES, Corrupt, Refused, allowed_globals, scan_safetensors, scan_torch
from otcore.errors import UserError
from otcore.pickle_bounds import brief, brief_text
from otcore.atomic import write_atomic  # noqa: F401  (re-exported: save_checkpoint writes through it)

try:  # numpy >= 2 moved the scalar constructor; files written under numpy 1 name the old path
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar

FORMATS = ("paper", "state_dict", "safetensors")

# Exactly what unpickling a numpy int/float/bool scalar needs (the paper stores test_accuracy as
# numpy.float64); the dtype classes are instances built by np.dtype and must be allowlisted for BUILD.
_NUMPY_SAFE_GLOBALS: list[Any] = [
    (_np_scalar, "numpy._core.multiarray.scalar"),
    (_np_scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefd"}, key=lambda c: c.__name__),
]
# The same allowlist by name, for the declaration scan that runs before torch.load.
_SAFE_NAMES = allowed_globals(["numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar",
                               *(f"{c.__module__}.{c.__qualname__}" for c in _NUMPY_SAFE_GLOBALS[2:])])
# Weights-only unpickler messages that mean "the file asks to build objects or call functions".
_CODE_MARKERS = ("GLOBAL", "unrecognized function", "Can only create new object",
                 "Can only build", "persistent_load")
_MAX_HEADER = 100_000_000  # safetensors' own cap on the JSON header
# Tensors that hold learned or running floating values; integer buffers (num_batches_tracked) are fine.
_FLOAT_SUFFIXES = ("weight", "bias", "_orig", "_mask", "running_mean", "running_var")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is meant for the user."""


@dataclass
class Checkpoint:
    """Weights read from a file, with what the file says about them."""

    state_dict: dict[str, torch.Tensor]  # parameter name -> tensor, on the CPU, `module.` prefix stripped
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. test_accuracy, epoch
    format: str = "state_dict"  # 'paper', 'state_dict' or 'safetensors'


def load_checkpoint(source: str | Path | bytes, max_bytes: int = 512 * 2**20, model: torch.nn.Module | None = None,
                    arch_name: str | None = None) -> Checkpoint:
    """Read a checkpoint from a path or raw bytes, detecting its format from the content.

    With `model`, names and shapes are matched against it before any value is read (NaN checks,
    dtype casts), so a file for another network is refused at the cost of its declarations."""
    data, label = _read_source(source, max_bytes)
    if not data:
        raise CheckpointError(f"{label} is empty")
    if _looks_like_safetensors(data):
        state, meta, fmt = _parse_safetensors(data, label)
    elif data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":  # torch zip archive or legacy pickle
        state, meta, fmt = _interpret(_torch_load(data, label), label)
    else:
        raise CheckpointError(f"{label} is not a checkpoint: neither a torch file nor safetensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if model is not None:
        match_state_dict(model, state, arch_name)
    _validate(state, label)
    return Checkpoint(state_dict=state, meta=meta, format=fmt)


def checkpoint_bytes(state_dict: Mapping[str, torch.Tensor], format: str = "paper",
                     meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialise weights (and meta where the format keeps it) to the bytes of a checkpoint file."""
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format '{format}'; choose one of {', '.join(FORMATS)}")
    meta = dict(meta or {})
    # Plain contiguous CPU copies: safetensors refuses shared or strided storage.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    if format == "safetensors":
        return safetensors.torch.save(tensors, metadata={k: json.dumps(v, default=_json_default)
                                                              for k, v in meta.items()})
    if format == "paper":
        obj: Any = {"model_state_dict": tensors,
                    "test_accuracy": float(meta.get("test_accuracy", 0.0)),
                    "epoch": int(meta.get("epoch", 0))}
    else:
        obj = tensors
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | Path, format: str = "paper",
                    meta: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint atomically: a reader sees the old file or the whole new one, never a part."""
    write_atomic(Path(path), checkpoint_bytes(state_dict, format, meta))


def match_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                     arch_name: str | None = None) -> None:
    """Raise CheckpointError naming the first tensor that is missing, unexpected or misshapen."""
    name = arch_name or type(model).__name__
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"checkpoint does not fit {name}: {key} is missing from the checkpoint")
        got = tuple(state_dict[key].shape)
        if got != tuple(tensor.shape):
            raise CheckpointError(f"checkpoint does not fit {name}: {key} has shape {_shape(got)}, "
                                  f"the model expects {_shape(tuple(tensor.shape))}")
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(f"checkpoint does not fit {name}: {_name(key)} is not a tensor of the model")


def load_into(model: torch.nn.Module, checkpoint: Checkpoint | Mapping[str, torch.Tensor],
              arch_name: str | None = None) -> torch.nn.Module:
    """Check that the weights fit `model`, then load them, cast to the model's dtypes; returns `model`."""
    state = checkpoint.state_dict if isinstance(checkpoint, Checkpoint) else checkpoint
    match_state_dict(model, state, arch_name)
    target = model.state_dict()
    model.load_state_dict({k: v.to(dtype=target[k].dtype) for k, v in state.items()})
    return model


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _read_source(source: str | Path | bytes, max_bytes: int) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "the uploaded file"
        _check_size(len(data), max_bytes, label)
        return data, label
    path = Path(source)
    label = f"'{path.name}'"
    try:
        _check_file(os.stat(path), path, max_bytes, label)  # follows links: /dev/zero behind one is refused
        # O_NONBLOCK: a FIFO swapped in after the stat opens at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            size = _check_file(os.fstat(f.fileno()), path, max_bytes, label)
            data = f.read(size + 1)  # one byte more shows a file that grows while it is read
        if len(data) != size:
            raise CheckpointError(f"{label} changed while it was read; try again once it is written")
        return data, label
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {label}: {e.strerror or e}") from None


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_file(info: os.stat_result, path: Path, max_bytes: int, label: str) -> int:
    """The file's size, after refusing folders, devices, FIFOs, sockets and files over the limit."""
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
        raise CheckpointError(f"{label} is {kind}, not a checkpoint file")
    _check_size(info.st_size, max_bytes, label)  # before reading: never pull a huge file in
    return info.st_size


def _check_size(size: int, max_bytes: int, label: str) -> None:
    if size > max_bytes:
        raise CheckpointError(f"{label} is too large: {_size(size)}, over the limit of {_size(max_bytes)}")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _looks_like_safetensors(data: bytes) -> bool:
    # An 8-byte little-endian header length, then a JSON object; a cut header still counts (then fails).
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= _MAX_HEADER and data[8:9] == b"{"


def _parse_safetensors(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    try:
        raw_meta = scan_safetensors(data)  # header checked first: the Rust parser trusts its nesting
    except Refused as e:
        raise CheckpointError(f"{label} was refused: {e}") from None
    except Corrupt as e:
        raise CheckpointError(f"{label} is truncated or corrupt (unreadable safetensors: {e})") from None
    try:
        state = safetensors.torch.load(data)
    except Exception as e:  # the Rust parser raises its own type for every kind of damage
        raise CheckpointError(f"{label} is truncated or corrupt (unreadable safetensors: {e})") from None
    meta: dict[str, Any] = {}
    for key, value in raw_meta.items():
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError, RecursionError):  # metadata written by other tools is often plain text
            meta[key] = value
    return state, meta, "safetensors"


def _torch_load(data: bytes, label: str) -> Any:
    try:
        scan_torch(data, _SAFE_NAMES)
    except Refused as e:
        raise CheckpointError(f"{label} was refused: {e}") from None
    except Corrupt as e:
        raise CheckpointError(f"{label} is truncated or corrupt (unreadable torch file: {e})") from None
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        if any(marker in str(e) for marker in _CODE_MARKERS):
            raise CheckpointError(f"{label} was refused: it carries code or objects that are not plain "
                                  "tensors, and loading it could run that code") from None
        raise CheckpointError(f"{label} is truncated or corrupt (unreadable torch file: "
                              f"{type(e).__name__})") from None


def _interpret(obj: Any, label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{label} holds a {type(obj).__name__}, not a dict of tensors")
    if "model_state_dict" in obj:
        meta = {k: _plain_scalar(obj[k]) for k in ("test_accuracy", "epoch") if k in obj}
        meta = {k: v for k, v in meta.items() if _is_scalar(v)}  # informational: a structure there is not shown
        return _tensor_dict(obj["model_state_dict"], f"{label} (model_state_dict)"), meta, "paper"
    return _tensor_dict(obj, label), {}, "state_dict"


def _tensor_dict(obj: Any, label: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{label} holds no tensors")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{label} holds '{_name(key)}', a {type(value).__name__}, where a tensor is expected")
    return {str(k): v for k, v in obj.items()}


def _name(key: Any) -> str:
    return brief_text(key) if isinstance(key, str) else brief(key)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 1024)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"meta value {value!r} is not JSON-able")


def _plain_scalar(value: Any) -> Any:
    # numpy and 0-d torch scalars become Python numbers so meta is JSON-able.
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _validate(state: dict[str, torch.Tensor], label: str) -> None:
    if not state:
        raise CheckpointError(f"{label} holds no tensors")
    for key, tensor in state.items():
        if tensor.layout != torch.strided or tensor.is_meta or tensor.dtype not in WEIGHT_DTYPES:
            raise CheckpointError(f"{label}: {_name(key)} is not a dense tensor of weights ({tensor.layout}, "
                                  f"{str(tensor.dtype).removeprefix('torch.')}, {tensor.device})")
        if key.endswith(_FLOAT_SUFFIXES) and not tensor.is_floating_point():
            raise CheckpointError(f"{label}: {_name(key)} holds {str(tensor.dtype).removeprefix('torch.')} values "
                                  "where floating-point weights are expected")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            raise CheckpointError(f"{label}: tensor {_name(key)} contains {bad} values")
        if tensor.dtype == torch.float64 and not bool(torch.isfinite(tensor.to(torch.float32)).all()):
            # finite here, Inf in the float32 model: as useless as an Inf in the file
            raise CheckpointError(f"{label}: tensor {_name(key)} holds values beyond the float32 range "
                                  f"(largest {tensor.abs().max().item():.3g}), Inf once loaded into the model")

