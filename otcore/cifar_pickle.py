"""A CIFAR python batch read without trusting pickle: only what the published batches hold.

A batch is a pickled dict {batch_label, labels (or fine_labels and coarse_labels), data,
filenames} whose `data` is a (N, 3072) uint8 numpy array. pickle.load would run whatever a file
names, and even numpy's own unpickling lets a file BUILD a structured dtype whose field offsets
point gigabytes outside the array (reading it segfaults or copies foreign memory into pixels).
Here pickle never reaches numpy: the few names a batch uses resolve to small recorders that accept
one dtype (uint8) and a payload of exactly the declared number of bytes, and the pixels are made
by np.frombuffer at the end. The unpickler is `otcore.pickle_bounds`' (pure Python, memo in a dict):
it runs only a batch's opcodes, no more of them than a batch of the file's size holds, and refuses
containers nested deeper or expanding larger (shared references counted each time) than a batch's,
before anything is hashed or printed, so a small file can neither expand nor crash the reader.
"""
from __future__ import annotations

import io
import pickletools
from typing import Any
from collections.abc import Callable

import numpy as np

from otcore.datafiles import DataError
from otcore.pickle_bounds import TEXT_UNIT, BoundedUnpickler, PickleRefused, brief, brief_text

PIXELS = 3 * 32 * 32  # bytes of one image, a row of `data`
MAX_TEXT = 1024  # longest batch label or file name
# Opcodes of binary pickles (protocols 2 to 5) of dicts, lists, tuples, strings, ints and the array's reduce.
_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
    "SHORT_BINSTRING", "BINSTRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
})
_OPS_PER_IMAGE = 16  # a real batch has at most ~6 (label, coarse label, file name as _codecs.encode(...))
_OPS_FIXED = 4096
_ITEMS_PER_OP = 4  # expanded items per operation: a batch shares nothing, so it expands to about its op count
_LABEL_KEYS = ("labels", "fine_labels", "coarse_labels")
_KNOWN_KEYS = frozenset({"batch_label", "data", "filenames", *_LABEL_KEYS})


class _Name:
    """What a GLOBAL of an allowed name becomes: a callable that pickle cannot BUILD into anything else."""

    __slots__ = ("label", "call")

    def __init__(self, label: str, call: Callable[..., Any] | None) -> None:
        self.label, self.call = label, call

    def __call__(self, *args: Any) -> Any:
        if self.call is None:
            raise DataError(f"{self.label} is not called in a CIFAR batch")
        return self.call(*args)

    def __setstate__(self, state: Any) -> None:
        raise DataError(f"refused a BUILD of {self.label}")


class _Dtype:
    """Stands in for numpy.dtype: accepts plain uint8 only, and never becomes a numpy dtype."""

    __slots__ = ("built",)

    def __init__(self, typestr: Any, align: Any = False, copy: Any = False) -> None:
        if typestr not in ("u1", "|u1", b"u1"):
            raise DataError(f"refused dtype {brief(typestr, 40)}: CIFAR pixels are uint8")
        self.built = False

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, sub-array, names, fields, item size, alignment, flags[, metadata]):
        # uint8 has no sub-array, names or fields; a state with any would make a structured dtype.
        plain = (type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4) and state[1] in ("|", b"|")
                 and state[2] is None and state[3] is None and state[4] is None and state[5] in (-1, 1)
                 and state[6] in (-1, 1) and state[7] == 0 and (len(state) == 8 or state[8] is None))
        if self.built or not plain:
            raise DataError("refused a dtype with fields, sub-arrays or a size other than one byte: "
                            "CIFAR pixels are plain uint8")
        self.built = True


def _shape_text(shape: Any) -> str:
    if type(shape) is tuple and len(shape) <= 4 and all(type(d) is int and d.bit_length() <= 64 for d in shape):
        return repr(shape)
    return brief(shape)


def _pixels(shape: Any, dtype: Any, payload: Any) -> np.ndarray:
    """A (N, 3072) uint8 array from a declared shape, dtype and payload, all checked first."""
    if not isinstance(dtype, _Dtype):
        raise DataError("the array's dtype is not uint8")
    if not (type(shape) is tuple and len(shape) == 2 and all(type(d) is int and d >= 0 for d in shape)):
        raise DataError(f"the array's shape {_shape_text(shape)} is not (images, 3072)")
    size = shape[0] * shape[1]
    if type(payload) is str:  # Python 2 strings, decoded as latin-1 by the unpickler
        if len(payload) != size:
            raise DataError(f"the array declares {size:,} bytes but holds {len(payload):,}")
        try:
            payload = payload.encode("latin1")
        except UnicodeEncodeError:
            raise DataError("the array's bytes are not bytes") from None
    if type(payload) not in (bytes, bytearray):
        raise DataError("the array's payload is not a byte string")
    if len(payload) != size:
        raise DataError(f"the array declares {size:,} bytes but holds {len(payload):,}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


class _Array:
    """Stands in for numpy.ndarray: BUILD once with (version, shape, dtype, fortran, bytes)."""

    __slots__ = ("pixels",)

    def __init__(self, pixels: np.ndarray | None = None) -> None:
        self.pixels = pixels

    def __setstate__(self, state: Any) -> None:
        if self.pixels is not None or type(state) is not tuple or len(state) != 5 or state[0] != 1 \
                or state[3] is not False:
            raise DataError("refused an array state other than (1, shape, uint8, False, bytes)")
        self.pixels = _pixels(state[1], state[2], state[4])


_NDARRAY = _Name("numpy.ndarray", None)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDARRAY:
        raise DataError("refused the reconstruction of anything but a numpy array")
    return _Array()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    if order != "C":
        raise DataError("refused an array not in C order")
    return _Array(_pixels(shape, dtype, buffer))


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise DataError("refused a _codecs.encode other than the latin-1 of a string")
    return text.encode("latin1")


_NAMES: dict[tuple[str, str], _Name] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Name("numpy.dtype", _Dtype),
    **{(module, "_reconstruct"): _Name("_reconstruct", _reconstruct)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _Name("_frombuffer", _frombuffer)
       for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("_codecs", "encode"): _Name("_codecs.encode", _encode),
}


class _BatchUnpickler(BoundedUnpickler):
    opcodes = frozenset(op.code.encode("latin1") for op in pickletools.opcodes if op.name in _OPCODES)

    def __init__(self, raw: bytes) -> None:
        self.budget = _OPS_FIXED + _OPS_PER_IMAGE * (len(raw) // PIXELS)
        super().__init__(io.BytesIO(raw), _ITEMS_PER_OP * self.budget + len(raw) // TEXT_UNIT)
        self.size = len(raw)

    def count_op(self) -> None:
        self.ops += 1
        if self.ops > self.budget:
            raise DataError(f"more than {self.budget:,} pickle operations, more than a batch of {self.size:,} bytes holds")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NAMES:
            raise DataError(f"refused {brief_text(module, 60)}.{brief_text(name, 60)}: a CIFAR batch holds only "
                            "arrays, lists and strings")
        return _NAMES[(module, name)]


def _text(value: Any, what: str) -> None:
    if type(value) not in (str, bytes) or len(value) > MAX_TEXT:
        raise DataError(f"{what} is not a string of at most {MAX_TEXT} characters")


def _labels(values: Any, key: str, count: int, classes: int) -> np.ndarray:
    if type(values) is not list or len(values) != count:
        size = len(values) if type(values) is list else "no list of"
        raise DataError(f"{count:,} images but {size} {key}")
    if any(type(v) is not int for v in values):
        raise DataError(f"{key} are not all integers")
    low, high = (min(values), max(values)) if values else (0, 0)
    if low < 0 or high >= classes:
        raise DataError(f"label {brief(low if low < 0 else high)} in {key} is outside 0..{classes - 1}")
    return np.asarray(values, dtype=np.int64)


def read_batch(raw: bytes, label_key: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one CIFAR python batch; DataError if it is anything else."""
    try:
        batch = _BatchUnpickler(raw).load()  # latin-1: the published files are Python 2 pickles
    except DataError:
        raise
    except PickleRefused as err:
        raise DataError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - whatever a malformed pickle raises, the file is not a batch
        raise DataError(f"not a CIFAR batch ({type(err).__name__}: {brief_text(str(err), 120)})") from None
    if type(batch) is not dict:
        raise DataError("not a CIFAR batch (a dict of data, labels and names)")
    entries = {}
    for key, value in batch.items():
        name = key.decode("latin1") if type(key) is bytes else key
        if type(name) is not str or name not in _KNOWN_KEYS:
            raise DataError(f"unexpected entry {brief(name, 40)} in a CIFAR batch")
        entries[name] = value
    data = entries.get("data")
    if not isinstance(data, _Array) or data.pixels is None or data.pixels.shape[1] != PIXELS:
        raise DataError(f"'data' is not one uint8 array of rows of {PIXELS} pixels")
    count = len(data.pixels)
    if label_key not in entries:
        raise DataError(f"no '{label_key}' in a CIFAR batch")
    labels = _labels(entries[label_key], label_key, count, classes)
    if "coarse_labels" in entries and label_key != "coarse_labels":
        _labels(entries["coarse_labels"], "coarse_labels", count, 20)
    if "filenames" in entries:
        names = entries["filenames"]
        if type(names) is not list or len(names) != count:
            raise DataError(f"{count:,} images but not as many file names")
        for value in names:
            _text(value, "a file name")
    if "batch_label" in entries:
        _text(entries["batch_label"], "the batch label")
    return data.pixels.reshape(count, 3, 32, 32), labels
