"""Hostile dataset files, built byte for byte as an attacker would: pickles of CIFAR batches that
BUILD a structured dtype or repeat one array, Python 2 batches, IDX files with lying headers."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

PIXELS = 3072
OFFSET_ATTACK = 2_000_000_000  # a field offset far outside any array


class FakeDtype:
    """Pickles as numpy.dtype(typestr) followed by BUILD(state), whatever the state says."""

    def __init__(self, typestr: str, state: tuple) -> None:
        self.typestr, self.state = typestr, state

    def __reduce__(self):
        return (np.dtype, (self.typestr, False, True), self.state)


class FakeArray:
    """Pickles as numpy's _reconstruct(ndarray, (0,), b'b') followed by BUILD((1, shape, dtype, False, payload))."""

    def __init__(self, shape: tuple, dtype: object, payload: bytes) -> None:
        self.shape, self.dtype, self.payload = shape, dtype, payload

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.payload))


def structured_offset_batch(images: int = 4, typestr: str = "V8") -> bytes:
    """A batch whose data has a one-field structured dtype at offset 2e9: numpy reads foreign memory (or dies)."""
    state = (3, "|", None, ("f0",), {"f0": (np.dtype("u1"), OFFSET_ATTACK)}, 8, 1, 16)
    data = FakeArray((images, PIXELS), FakeDtype(typestr, state), b"\0" * 8 * images * PIXELS)
    return pickle.dumps({"data": data, "labels": [0] * images}, protocol=4)


def shared_reference_batch(copies: int = 10_000, images: int = 100) -> bytes:
    """One (images, 3072) array referenced `copies` times: 327 KB on disk, 3 GB once concatenated."""
    array = np.zeros((images, PIXELS), dtype=np.uint8)
    return pickle.dumps({"data": [array] * copies, "labels": [0] * images})


def cifar_batch(pixels: np.ndarray, labels: list, protocol: int = 4, label_key: str = "labels", **extra) -> bytes:
    """A batch as Python 3 pickles it (protocol 2: bytes via _codecs.encode; 5: pickle buffers)."""
    return pickle.dumps({"batch_label": b"batch", label_key: list(labels), "data": pixels,
                         "filenames": [f"img{i}.png".encode() for i in range(len(labels))], **extra},
                        protocol=protocol)


def python2_batch(pixels: np.ndarray, labels: list) -> bytes:
    """The published batches' bytes: a Python 2 cPickle (protocol 2) with BINSTRING payloads and memo puts."""
    rows, width = pixels.shape
    out = [b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04",
           b"K\x00\x85U\x01b\x87Rq\x05(K\x01", b"M" + struct.pack("<H", rows) + b"M" + struct.pack("<H", width),
           b"\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07",
           b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
           b"\x89T" + struct.pack("<I", pixels.size) + pixels.tobytes() + b"tbU\x06labelsq\x08](",
           b"".join(b"K" + bytes([v]) for v in labels), b"eU\x0bbatch_labelU\x05batchu."]
    return b"".join(out)


def write_cifar10(root: Path, test_batch: bytes, images: int = 4, seed: int = 0) -> Path:
    """A cifar-10-batches-py folder under root: five good train batches and the given test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        pixels = rng.integers(0, 256, (images, PIXELS), dtype=np.uint8)
        (folder / f"data_batch_{i}").write_bytes(cifar_batch(pixels, rng.integers(0, 10, images).tolist()))
    (folder / "test_batch").write_bytes(test_batch)
    return root


def idx_bytes(array: np.ndarray, type_code: int = 0x08, dims: tuple[int, ...] | None = None) -> bytes:
    """An IDX file whose header says type_code and dims (by default the array's own), then the array's bytes."""
    dims = array.shape if dims is None else dims
    return (bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
            + np.ascontiguousarray(array).tobytes())
