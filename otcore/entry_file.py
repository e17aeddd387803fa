"""The file of one cache entry: safetensors whose metadata holds the entry's record and a sha256 over it all.

The checksum covers the record JSON and every tensor's name, dtype, shape and bytes. `read_entry`
parses and verifies a file in one pass from an open descriptor, without torch unless tensors are
asked for, so a record is verified torch-free and a load hands out exactly the bytes it checked.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import TYPE_CHECKING, Any, BinaryIO
from collections.abc import Iterable

if TYPE_CHECKING:
    import torch

MAX_HEADER = 100_000_000  # bytes of a safetensors header; ours are kilobytes
CHUNK = 1 << 22  # bytes hashed per read when an entry is verified from its file
# safetensors' dtype codes -> (torch's dtype name, which the checksum has always hashed; bytes per element)
DTYPES = {"F64": ("torch.float64", 8), "F32": ("torch.float32", 4), "F16": ("torch.float16", 2),
          "BF16": ("torch.bfloat16", 2), "I64": ("torch.int64", 8), "I32": ("torch.int32", 4),
          "I16": ("torch.int16", 2), "I8": ("torch.int8", 1), "U8": ("torch.uint8", 1), "BOOL": ("torch.bool", 1)}
TensorItem = tuple[str, str, tuple[int, ...], Any]  # name, torch dtype name, shape, raw bytes (a buffer)


def checksum(record: str, items: Iterable[TensorItem]) -> str:
    """sha256 (hex) of the entry JSON and every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256(record.encode())
    for name, dtype, shape, data in sorted(items, key=lambda item: item[0]):
        digest.update(f"\0{name}\0{dtype}\0{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def entry_bytes(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> bytes:
    """The entry's file; one without tensors (a sweep's record) is written without importing torch."""
    if not tensors:  # the same bytes safetensors.torch writes for no tensors
        import safetensors.numpy

        return safetensors.numpy.save({}, metadata=header)
    import safetensors.torch  # here, not at the top: reading a record must not import torch

    return safetensors.torch.save(tensors, metadata=header)


def tensor_items(tensors: dict[str, torch.Tensor]) -> list[TensorItem]:
    """(name, dtype name, shape, bytes) of each tensor, as `checksum` hashes them."""
    if not tensors:
        return []
    import torch

    items = []
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        items.append((name, str(tensor.dtype), tuple(tensor.shape), tensor.reshape(-1).view(torch.uint8).numpy()))
    return items


def read_entry(f: BinaryIO, size: int, with_tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(entry JSON, tensors) of an open safetensors file after checking its checksum; raises ValueError if damaged.

    One pass over the bytes: each tensor is hashed as it is read, and kept only `with_tensors` (a record
    alone is verified in chunks, never held in memory). Reading from the verified descriptor itself means
    the tensors handed out are exactly the bytes checked.
    """
    # Layout: an 8-byte little-endian header length, the header JSON ({name: {dtype, shape, data_offsets}},
    # '__metadata__'), then the tensors' bytes, offsets counted from the end of the header.
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(size - 8, MAX_HEADER):
        raise ValueError("header length exceeds the file")
    header = json.loads(f.read(n))
    metadata = header.pop("__metadata__")
    spans, end = [], 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        dtype, itemsize = DTYPES[info["dtype"]]
        shape = tuple(int(d) for d in info["shape"])
        start, stop = info["data_offsets"]
        # As safetensors itself checks: tensors tile the data exactly, each as long as its shape says.
        if start != end or stop - start != itemsize * math.prod(shape) or min(shape, default=0) < 0:
            raise ValueError(f"tensor {name} has inconsistent offsets")
        spans.append((name, dtype, shape, start, stop))
        end = stop
    if end != size - 8 - n:
        raise ValueError("data length does not match the header")
    # checksum()'s digest, fed from the file: the entry JSON, then each tensor in sorted name order.
    digest = hashlib.sha256(metadata["entry"].encode())
    raw: dict[str, tuple[str, tuple[int, ...], bytearray]] = {}
    for name, dtype, shape, start, stop in sorted(spans):
        digest.update(f"\0{name}\0{dtype}\0{shape}\0".encode())
        f.seek(8 + n + start)
        kept = bytearray(stop - start) if with_tensors else None
        for offset in range(start, stop, CHUNK):
            want = min(CHUNK, stop - offset)
            chunk = f.read(want)
            if len(chunk) != want:
                raise ValueError("the file ended early")
            digest.update(chunk)
            if kept is not None:
                kept[offset - start:offset - start + want] = chunk
        if kept is not None:
            raw[name] = (dtype, shape, kept)
    if digest.hexdigest() != metadata["sha256"]:
        raise ValueError("checksum mismatch")
    return json.loads(metadata["entry"]), _tensors(raw) if with_tensors else {}


def _tensors(raw: dict[str, tuple[str, tuple[int, ...], bytearray]]) -> dict[str, torch.Tensor]:
    """Tensors over the bytes read, one buffer each (safetensors is little-endian, as is every machine torch runs on)."""
    if not raw:
        return {}
    import torch

    out = {}
    for name, (dtype_name, shape, data) in raw.items():
        dtype = getattr(torch, dtype_name.removeprefix("torch."))
        if not data:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        out[name] = torch.frombuffer(data, dtype=dtype).reshape(shape)  # shares the buffer, which it keeps alive
    return out
