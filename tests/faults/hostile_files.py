"""Hostile checkpoint files, crafted byte by byte: torch zips assembled by hand (strides, storage sizes and
compression under our control), safetensors headers written as raw JSON, FIFOs and links to devices.

`HOSTILE[kind](folder)` writes one file into `folder` and returns its path and the fragments the
one-line refusal must name. Shared by the fault tests, the AppTest of uploads and bench/hostile_checkpoints.py.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import torch

REPO = Path(__file__).resolve().parents[2]
MNIST_SHAPE = (1, 8, 8)  # digits: files are checked against the digits mlpnet (fc1: 400 x 64)
_MIB = 2**20


@dataclass
class Entry:
    """One zip entry: its name, the bytes stored, how (0 stored, 8 deflated), and what they expand to."""

    name: str
    raw: bytes
    method: int = 0
    size: int = -1  # uncompressed bytes; -1: len(raw)
    crc: int = -1  # -1: crc32(raw)


def zip_archive(entries: list[Entry]) -> bytes:
    """A zip file, local headers, central directory and end record written with struct (no zip64)."""
    out, central = io.BytesIO(), io.BytesIO()
    for e in entries:
        size = len(e.raw) if e.size < 0 else e.size
        crc = zlib.crc32(e.raw) if e.crc < 0 else e.crc
        name, offset = e.name.encode(), out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, e.method, 0, 33, crc, len(e.raw), size,
                              len(name), 0) + name + e.raw)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, e.method, 0, 33, crc, len(e.raw),
                                  size, len(name), 0, 0, 0, 0, 0, offset) + name)
    start, directory = out.tell(), central.getvalue()
    out.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(directory),
                                      start, 0))
    return out.getvalue()


@dataclass
class Storage:
    """A storage as a torch pickle names it: its class (FloatStorage, ...), key and element count."""

    kind: str
    key: str
    numel: int


@dataclass
class Tensor:
    """A dense tensor as `_rebuild_tensor_v2` rebuilds it: any offset, size and stride, honest or not."""

    storage: Storage
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj: object):
        if isinstance(obj, Storage):  # the legacy format adds view metadata (None) to the storage id
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel, *([None] if self.legacy else []))
        return None


def torch_pickle(obj: object, legacy: bool = False) -> bytes:
    """What torch.save writes as data.pkl (or as the legacy format's object), for `Tensor` declarations."""
    buffer = io.BytesIO()
    pickler = _TorchPickler(buffer, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return buffer.getvalue()


def torch_zip(obj: object, storages: dict[str, bytes], deflated: dict[str, Entry] | None = None) -> bytes:
    """A torch zip checkpoint: data.pkl for `obj`, the storages' bytes (or prepared deflated entries)."""
    entries = [Entry("archive/data.pkl", torch_pickle(obj)), Entry("archive/byteorder", b"little")]
    for key, raw in storages.items():
        entries.append((deflated or {}).get(key) or Entry(f"archive/data/{key}", raw))
    return zip_archive([*entries, Entry("archive/version", b"3\n")])


def deflated_zeros(name: str, size: int) -> Entry:
    """A deflate entry of `size` zero bytes, ~1,000 times smaller: one compressed MiB, repeated."""
    chunk, packer = bytes(_MIB), zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)  # a full flush resets the window:
    assert packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH) == block  # every MiB compresses alike
    crc = 0
    for _ in range(size // _MIB):
        crc = zlib.crc32(chunk, crc)
    return Entry(name, block * (size // _MIB) + packer.flush(), method=zipfile.ZIP_DEFLATED, size=size, crc=crc)


def model_state() -> dict[str, torch.Tensor]:
    """An (untrained) digits mlpnet's state_dict: the honest shapes hostile files imitate."""
    from otcore.models import build_model

    return dict(build_model("mlpnet", MNIST_SHAPE, 10).state_dict())


def _declared(folder: Path, name: str, fc1: Tensor, storage_bytes: bytes,
              deflated: dict[str, Entry] | None = None) -> Path:
    """A paper-format file of the mlpnet whose fc1.weight is the declaration `fc1`."""
    state: dict[str, object] = dict(model_state())
    state["fc1.weight"] = fc1
    storages = {fc1.storage.key: storage_bytes}
    for i, (key, value) in enumerate(list(state.items())):
        if isinstance(value, torch.Tensor):  # the honest tensors, declared the way torch.save does
            storage = Storage({torch.float32: "FloatStorage", torch.int64: "LongStorage"}[value.dtype], f"h{i}",
                              value.numel())
            state[key] = Tensor(storage, tuple(value.shape), tuple(value.stride()))
            storages[storage.key] = value.contiguous().numpy().tobytes()
    path = folder / name
    path.write_bytes(torch_zip({"model_state_dict": state, "test_accuracy": 90.0, "epoch": 1}, storages, deflated))
    return path


def _saved(folder: Path, name: str, fc1: torch.Tensor) -> Path:
    """torch.save's own file of the mlpnet, fc1.weight replaced by `fc1` (sparse, meta, ...)."""
    state = model_state()
    state["fc1.weight"] = fc1
    path = folder / name
    torch.save({"model_state_dict": state, "test_accuracy": 90.0, "epoch": 1}, path)
    return path


def _safetensors(folder: Path, name: str, header: bytes, body: bytes = b"") -> Path:
    path = folder / name
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


def _tiny_tensors(count: int) -> bytes:
    return json.dumps({f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                       for i in range(count)}).encode()


def stride_zero(folder: Path) -> tuple[Path, list[str]]:
    """Under 1 KB: 2e9 elements declared over a 4-element storage with stride 0 (a 14 GB finite check)."""
    path = folder / "stride0.checkpoint"
    fc1 = Tensor(Storage("FloatStorage", "x", 4), (2_000_000_000,), (0,))
    path.write_bytes(torch_zip({"fc1.weight": fc1}, {"x": bytes(16)}))
    return path, ["fc1.weight", "stride 0"]


def stride_zero_model_shape(folder: Path) -> tuple[Path, list[str]]:
    """The model's own shape (400, 64), every row the same 64 stored values."""
    fc1 = Tensor(Storage("FloatStorage", "x", 64), (400, 64), (0, 1))
    return _declared(folder, "rows.checkpoint", fc1, bytes(256)), ["fc1.weight", "stride 0"]


def overlapping(folder: Path) -> tuple[Path, list[str]]:
    fc1 = Tensor(Storage("FloatStorage", "x", 463), (400, 64), (1, 1))
    return _declared(folder, "overlap.checkpoint", fc1, bytes(4 * 463)), ["fc1.weight", "overlapping strides"]


def beyond_storage(folder: Path) -> tuple[Path, list[str]]:
    fc1 = Tensor(Storage("FloatStorage", "x", 4), (400, 64), (64, 1))
    return _declared(folder, "beyond.checkpoint", fc1, bytes(16)), ["fc1.weight", "storage of 4"]


def storage_size_lie(folder: Path) -> tuple[Path, list[str]]:
    fc1 = Tensor(Storage("FloatStorage", "x", 10**9), (400, 64), (64, 1))
    path = _declared(folder, "lie.checkpoint", fc1, bytes(16))
    return path, ["4,000,000,000 bytes", "holds 16"]


def deflate_bomb(folder: Path, size: int = 2 * 2**30) -> tuple[Path, list[str]]:
    """~2 MB on disk, a 2 GiB storage once inflated (torch's reader inflates without asking)."""
    fc1 = Tensor(Storage("FloatStorage", "x", size // 4), (size // 4,), (1,))
    bomb = deflated_zeros("archive/data/x", size)
    return _declared(folder, "bomb.checkpoint", fc1, b"", {"x": bomb}), ["archive/data/x", "compressed"]


def many_torch_tensors(folder: Path, count: int = 20_000) -> tuple[Path, list[str]]:
    storage = Storage("FloatStorage", "x", 1)
    path = folder / "many.pt"
    path.write_bytes(torch_zip({f"t{i}": Tensor(storage, (1,), (1,)) for i in range(count)}, {"x": bytes(4)}))
    return path, ["over 16,384 tensors"]


def legacy_size_lie(folder: Path) -> tuple[Path, list[str]]:
    """torch's pre-zip format: the pickle declares 2.5e8 elements, the data section holds 4."""
    state: dict[str, object] = {"fc1.weight": Tensor(Storage("FloatStorage", "x", 250_000_000), (4,), (1,))}
    buffer = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, buffer, protocol=2)
    buffer.write(torch_pickle(state, legacy=True))
    pickle.dump(["x"], buffer, protocol=2)
    buffer.write(struct.pack("<q", 4) + bytes(16))
    path = folder / "legacy.pt"
    path.write_bytes(buffer.getvalue())
    return path, ["storage x", "1,000,000,000 bytes"]


def sparse(folder: Path) -> tuple[Path, list[str]]:
    return _saved(folder, "sparse.pt", torch.zeros(400, 64).to_sparse()), ["fc1.weight", "sparse"]


def meta(folder: Path) -> tuple[Path, list[str]]:
    return _saved(folder, "meta.pt", torch.empty(400, 64, device="meta")), ["fc1.weight", "meta"]


def nested(folder: Path) -> tuple[Path, list[str]]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "nested tensors are a prototype"
        value = torch.nested.nested_tensor([torch.zeros(200, 64), torch.zeros(200, 64)])
    return _saved(folder, "nested.pt", value), ["fc1.weight", "nested"]


def float8(folder: Path) -> tuple[Path, list[str]]:
    return _saved(folder, "float8.pt", torch.zeros(400, 64).to(torch.float8_e4m3fn)), ["fc1.weight", "float8"]


def float64_overflow(folder: Path) -> tuple[Path, list[str]]:
    """Finite in float64 (1e39), Inf once cast to the model's float32."""
    state = {k: v.double() if v.is_floating_point() else v for k, v in model_state().items()}
    state["fc1.weight"][3, 5] = 1e39
    path = folder / "huge.pt"
    torch.save({"model_state_dict": state, "test_accuracy": 90.0, "epoch": 1}, path)
    return path, ["fc1.weight", "float32 range", "1e+39"]


def deep_metadata(folder: Path, depth: int = 200_000) -> tuple[Path, list[str]]:
    header = b'{"__metadata__":{"a":' + b"[" * depth + b"]" * depth + b"}}"
    return _safetensors(folder, "deep.safetensors", header), [f"{depth + 2:,} levels"]


def deep_metadata_value(folder: Path, depth: int = 200_000) -> tuple[Path, list[str]]:
    """A metadata value (a string, as the format wants) holding JSON nested 200,000 deep: json.loads recursed."""
    header = json.dumps({"__metadata__": {"config": "[" * depth + "]" * depth}}).encode()
    return _safetensors(folder, "deep-value.safetensors", header), ["'config'", f"{depth:,} levels"]


def _pickle_shape(folder: Path, name: str, carrier: str, shape: str, size: int, *fragments: str) -> tuple[Path, list[str]]:
    from tests.faults import hostile_pickles  # it builds on this module's zip writer

    path = folder / name
    make = hostile_pickles.SHAPES[shape][0]
    path.write_bytes(hostile_pickles.CARRIERS[carrier](make(size)))
    return path, [name, *fragments]


def deep_key(folder: Path) -> tuple[Path, list[str]]:
    """300 KB: a dict key nested 300,000 deep (hashing it overflowed the C stack: SIGSEGV, exit 139)."""
    return _pickle_shape(folder, "deep-key.pt", "torch zip", "deep tuple key", 300_000, "64 levels deep")


def shared_key_legacy(folder: Path) -> tuple[Path, list[str]]:
    """Under 1 KB, legacy format: a key whose 60 levels each hold the level below twice (2^60 items to hash)."""
    return _pickle_shape(folder, "shared-key.pt", "legacy torch", "shared key", 60, "shared references")


def shared_lists_zip(folder: Path) -> tuple[Path, list[str]]:
    return _pickle_shape(folder, "shared-lists.pt", "torch zip", "shared lists", 60, "shared references")


def huge_memo_index(folder: Path) -> tuple[Path, list[str]]:
    """One memo put at index 250,000,000 (the C unpickler sized its memo array to it)."""
    return _pickle_shape(folder, "memo.pt", "torch zip", "memo index", 250_000_000, "not a dict of tensors")


def million_tensors(folder: Path, count: int = 1_000_000) -> tuple[Path, list[str]]:
    """10^6 one-float tensors: a 60 MB header the Rust parser took 44 s and 2.9 GB over."""
    return _safetensors(folder, "million.safetensors", _tiny_tensors(count), bytes(4 * count)), ["header", "limit"]


def many_safetensors(folder: Path, count: int = 20_000) -> tuple[Path, list[str]]:
    return _safetensors(folder, "many.safetensors", _tiny_tensors(count), bytes(4 * count)), ["20,000 tensors"]


def safetensors_float8(folder: Path) -> tuple[Path, list[str]]:
    header = json.dumps({"fc1.weight": {"dtype": "F8_E4M3", "shape": [400, 64], "data_offsets": [0, 25_600]}})
    return _safetensors(folder, "f8.safetensors", header.encode(), bytes(25_600)), ["fc1.weight", "F8_E4M3"]


def fifo(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "pipe.checkpoint"
    os.mkfifo(path)
    return path, ["pipe.checkpoint", "named pipe"]


def dev_zero_link(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "zero.checkpoint"
    path.symlink_to("/dev/zero")
    return path, ["zero.checkpoint", "character device"]


HOSTILE: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "stride 0": stride_zero, "stride 0, model shape": stride_zero_model_shape, "overlapping strides": overlapping,
    "beyond its storage": beyond_storage, "storage size lie": storage_size_lie, "deflate bomb": deflate_bomb,
    "20,000 torch tensors": many_torch_tensors, "legacy size lie": legacy_size_lie, "sparse": sparse,
    "meta": meta, "nested": nested, "float8": float8, "float64 1e39": float64_overflow,
    "metadata 200,000 deep": deep_metadata, "10^6 safetensors": million_tensors,
    "20,000 safetensors": many_safetensors, "safetensors float8": safetensors_float8,
    "metadata value 200,000 deep": deep_metadata_value, "tuple key 300,000 deep": deep_key,
    "legacy: shared key, 60 levels": shared_key_legacy, "shared lists, 60 levels": shared_lists_zip,
    "memo index 250,000,000": huge_memo_index, "FIFO": fifo, "link to /dev/zero": dev_zero_link,
}
# `python -m otcore` as runpy runs it, writing the process's peak RSS (VmHWM) to $PEAK_FILE at exit.
# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into a child's ru_maxrss through
# fork and exec, so a pytest process that has built a large file would inflate every figure.
_MEASURED_CLI = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
atexit.register(_peak)
sys.argv[0] = "otcore"
runpy.run_module("otcore", run_name="__main__", alter_sys=True)
"""


def fuse_measured(good: Path, other: Path | str, cache: Path,
                  timeout_s: float = 120) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m otcore fuse --parents good other`, and the process's peak RSS in bytes.

    The timeout turns a hang (a FIFO once blocked the loader forever) into a TimeoutExpired."""
    with tempfile.TemporaryDirectory() as folder:
        peak_file = Path(folder) / "peak"
        env = {**os.environ, "OTCORE_CACHE_DIR": str(cache), "PEAK_FILE": str(peak_file)}
        done = subprocess.run([sys.executable, "-c", _MEASURED_CLI, "fuse", "--dataset", "digits", "--arch",
                               "mlpnet", "--parents", str(good), str(other), "--json"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        return done, int(peak_file.read_text()) * 1024  # kB


UPLOADABLE = [kind for kind in HOSTILE if kind not in ("FIFO", "link to /dev/zero")]  # bytes, not paths
