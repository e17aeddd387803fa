"""What an untrusted checkpoint declares, checked before torch or safetensors builds anything from it.

A torch file's pickle declares storages (dtype, element count) and tensors over them (offset, size,
stride); a safetensors header declares dtypes, shapes and byte ranges. An honest file declares what
it holds; a hostile one declares 2e9 elements over a 4-element storage (stride 0), a zip entry that
inflates from 1 MB to gigabytes, a header nested 200,000 deep or a million tensors. Each scan here
reads only the declarations (a pure-Python unpickler that builds placeholders, never tensors, and
runs no code) and bounds everything loading will allocate by the file's own size, so a refusal
costs milliseconds and kilobytes. The unpickler is `otcore.pickle_bounds`': containers nested over
64 deep or expanding past MAX_EXPANDED items (shared references counted each time they are reached),
and dict keys that are not names or numbers, are refused as they are built, before anything hashes
them. Refusals raise `Refused`, whose message completes "<file> was refused: ".
"""
from __future__ import annotations

import io
import json
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable

import numpy as np
import torch
from torch._weights_only_unpickler import _get_allowed_globals

from otcore.pickle_bounds import BoundedUnpickler, PickleRefused, brief, brief_text, check_key

MAX_TENSORS = 16_384  # a ResNet-152 state_dict has ~1,000; a file with more is not a network of ours
MAX_PICKLE_OPS = 1_000_000  # ~25 per tensor in an honest file; bounds the placeholder objects built
# Items of the largest structure, shared references counted as often as they are reached: an honest
# file expands to about its operation count (it shares storages and strings, not containers).
MAX_EXPANDED = 4 * MAX_PICKLE_OPS
MAX_NDIM = 8
MAX_SAFETENSORS_HEADER = 8 * 2**20  # ~100 bytes a tensor: room for MAX_TENSORS many times over
MAX_METADATA_DEPTH = 32  # a metadata value holding JSON (our meta, a training config) nests a few levels
BUDGET_FACTOR = 4  # declared tensor bytes per file byte; above 1 only where tensors share a storage
WEIGHT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16,
                 torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
SAFETENSORS_DTYPES = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                      "U8": 1, "BOOL": 1}
# How torch rebuilds tensors that are not plain dense arrays in CPU memory, and what we call them.
_OTHER_LAYOUTS = {
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch._utils._rebuild_meta_tensor_no_storage": "a tensor without data (device 'meta')",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass",
    "torch._tensor._rebuild_from_type_v2": "a tensor subclass",
    "torch._utils._rebuild_device_tensor_from_numpy": "a tensor rebuilt from a numpy array",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a tensor rebuilt on a device",
}
_TENSOR_REBUILDS = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
                    "torch._utils._rebuild_tensor_v3")
_PARAMETER_REBUILDS = ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state")
# Opcodes of protocols 0-4 that torch's weights-only unpickler reads, plus the byte-string ones;
# the others (INST, OBJ, EXT*, ...) build objects in ways no checkpoint needs.
_OPCODES = frozenset((
    pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.NEWOBJ, pickle.REDUCE, pickle.BUILD, pickle.APPEND,
    pickle.APPENDS, pickle.SETITEM, pickle.SETITEMS, pickle.MARK, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2,
    pickle.TUPLE3, pickle.NONE, pickle.NEWFALSE, pickle.NEWTRUE, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST,
    pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.ADDITEMS, pickle.BININT, pickle.BININT1, pickle.BININT2,
    pickle.BINFLOAT, pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.SHORT_BINSTRING, pickle.BINSTRING,
    pickle.SHORT_BINBYTES, pickle.BINBYTES, pickle.BINPERSID, pickle.BINGET, pickle.LONG_BINGET, pickle.BINPUT,
    pickle.LONG_BINPUT, pickle.MEMOIZE, pickle.LONG1, pickle.PROTO, pickle.FRAME, pickle.STOP))
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Refused(ValueError):
    """A declaration that loading must not act on; the message completes '<file> was refused: '."""


class Corrupt(ValueError):
    """Declarations that cannot be read at all (cut, damaged, not the format)."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: torch.dtype
    numel: int  # elements of `dtype`; bytes for an untyped storage


@dataclass(frozen=True)
class _Tensor:
    nbytes: int


@dataclass(frozen=True)
class _Bad:
    reason: str  # completes "tensor 'name' ..." or "a tensor ..."


class _Inert:
    """What an allowed non-tensor global (numpy scalar, dtype, complex, ...) stands for while scanning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Dict(dict):
    """An OrderedDict while scanning; torch pickles some with a BUILD state (attributes) to ignore."""

    def __setstate__(self, state: Any) -> None:
        pass


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: torch.dtype | None  # None: complex, quantized or packed storages, which hold no weights


# torch's typed storage classes by name (reading `torch.FloatStorage.dtype` warns of a deprecation)
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool, "UntypedStorage": torch.uint8}


class _Declarations(BoundedUnpickler):
    """Unpickles a torch pickle into placeholders, recording every storage and tensor it declares."""

    opcodes = _OPCODES

    def __init__(self, file: io.BytesIO, allowed: frozenset[str]) -> None:
        super().__init__(file, MAX_EXPANDED)
        self.allowed = allowed
        self.storages: dict[str, _Storage] = {}
        self.tensors: list[_Tensor | _Bad] = []
        self.result: Any = None  # the unpickled structure, placeholders in place of tensors

    def count_op(self) -> None:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise Refused(f"its pickle runs over {MAX_PICKLE_OPS:,} operations; a checkpoint needs a few per tensor")

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _OTHER_LAYOUTS:
            return lambda *args, **kwargs: self._record(_Bad(f"is {_OTHER_LAYOUTS[full]}; only dense weights load"))
        if full in _TENSOR_REBUILDS:
            return self._rebuild
        if full in _PARAMETER_REBUILDS:
            return lambda data, *args: data
        if full not in self.allowed:
            raise Refused("it carries code or objects that are not plain tensors (loading it would call "
                          f"{brief_text(full, 120)})")
        if name.endswith("Storage"):
            return _StorageType(name, _STORAGE_DTYPES.get(name))
        value = getattr(torch, name, None) if module == "torch" else None
        if isinstance(value, torch.dtype):
            return value
        return {"collections.OrderedDict": _new_dict, "collections.Counter": _new_dict, "builtins.set": _new_set,
                "torch.Size": tuple}.get(full, _Inert)

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int) and pid[4] >= 0):
            if isinstance(pid, tuple) and pid and pid[0] == "module":
                raise Refused("it holds a pickled module, not weights")
            raise Corrupt("a storage reference is malformed")
        if len(pid) == 6 and pid[5] is not None:
            raise Refused("it uses storage views, which no checkpoint of ours needs")
        if pid[1].dtype is None:
            raise Refused(f"it holds a {pid[1].name}; weights are float16/32/64, bfloat16 or integers")
        if type(pid[2]) is not str:
            raise Corrupt("a storage key is not a string")
        key = pid[2]
        storage = _Storage(key, pid[1].dtype, pid[4])
        if self.storages.setdefault(key, storage) != storage:
            raise Corrupt(f"storage {brief_text(key)} is declared twice, differently")
        return storage

    def _record(self, item: _Tensor | _Bad) -> _Tensor | _Bad:
        self.tensors.append(item)
        if len(self.tensors) > MAX_TENSORS:
            raise Refused(f"it declares over {MAX_TENSORS:,} tensors")
        return item

    def _rebuild(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _Tensor | _Bad:
        dtype = rest[2] if len(rest) >= 3 and isinstance(rest[2], torch.dtype) else getattr(storage, "dtype", None)
        return self._record(_check_layout(storage, dtype, offset, size, stride))


def _check_layout(storage: Any, dtype: torch.dtype | None, offset: Any, size: Any, stride: Any) -> _Tensor | _Bad:
    """A dense tensor's declaration, checked: dtype, shape, strides neither zero nor overlapping, in bounds."""
    if not isinstance(storage, _Storage) or dtype is None:
        return _Bad("is not built over a storage of the file")
    if dtype not in WEIGHT_DTYPES:
        return _Bad(f"has dtype {str(dtype).removeprefix('torch.')}; weights are float16/32/64, bfloat16 or integers")
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if not ints or not all(type(i) is int and 0 <= i < 2**48 for i in ints) or len(size) != len(stride) \
            or len(size) > MAX_NDIM:
        layout = f"size {_brief(size)}, stride {_brief(stride)}, offset {_brief(offset)}"
        return _Bad(f"declares an impossible layout ({layout})")
    numel = math.prod(size)
    if numel == 0:
        return _Tensor(0)
    extent = 1  # one past the furthest element reached, dims taken from the innermost stride out
    for length, step in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda p: p[1]):
        if step == 0:
            return _Bad(f"declares {numel:,} elements with stride 0, the same stored values read over and over")
        if step < extent:
            return _Bad(f"declares overlapping strides {stride} for size {size}")
        extent += step * (length - 1)
    available = storage.numel if storage.dtype == dtype else storage.numel * storage.dtype.itemsize // dtype.itemsize
    if offset + extent > available:
        return _Bad(f"declares {numel:,} elements reaching element {offset + extent:,} of a storage of {available:,}")
    return _Tensor(numel * dtype.itemsize)


def _brief(value: Any) -> str:
    """A layout value for a message: a short tuple of integers as itself, anything else by `brief`."""
    if type(value) is tuple and len(value) <= MAX_NDIM and all(type(i) is int and i.bit_length() <= 64 for i in value):
        return repr(value)
    return brief(value)


def _new_dict(*args: Any) -> _Dict:
    """OrderedDict(), OrderedDict(pairs) or Counter(mapping), each key checked before it is hashed."""
    if len(args) > 1:
        raise Corrupt("a dict is built from more than one argument")
    source = args[0] if args else ()
    pairs = list(source.items()) if isinstance(source, dict) else source
    if not isinstance(pairs, (list, tuple)) or not all(type(p) is tuple and len(p) == 2 for p in pairs):
        raise Corrupt("a dict is built from something other than key-value pairs")
    for key, _ in pairs:
        check_key(key)
    return _Dict(pairs)


def _new_set(items: Any = ()) -> set:
    """set(items), each item checked before it is hashed."""
    if not isinstance(items, (list, tuple)):
        raise Corrupt("a set is built from something other than a list")
    for item in items:
        check_key(item)
    return set(items)


def allowed_globals(extra: Iterable[str]) -> frozenset[str]:
    """The names torch's weights-only unpickler accepts, plus `extra` (e.g. numpy scalars)."""
    return frozenset(_get_allowed_globals()) | frozenset(extra)


def scan_torch(data: bytes, allowed: frozenset[str]) -> None:
    """Check a torch file (zip or legacy pickle) against everything torch.load would allocate for it."""
    if data[:2] == b"PK":
        decl, storage_bytes = _scan_zip(data, allowed)
    else:
        decl, storage_bytes = _scan_legacy(data, allowed)
    _check_tensors(decl, len(data))
    for key, storage in decl.storages.items():
        held = storage_bytes.get(key)
        want = storage.numel * storage.dtype.itemsize
        if held is None:
            raise Corrupt(f"storage {brief_text(key)} is declared but not in the file")
        if held != want:
            raise Refused(f"storage {brief_text(key)} declares {want:,} bytes but the file holds {held:,}")


def _check_tensors(decl: _Declarations, file_bytes: int) -> None:
    bad = next((t for t in decl.tensors if isinstance(t, _Bad)), None)
    if bad is not None:
        name = _name_of(decl.result, bad)
        raise Refused(f"tensor '{name}' {bad.reason}" if name is not None else f"a tensor {bad.reason}")
    total = sum(t.nbytes for t in decl.tensors if isinstance(t, _Tensor))
    if total > BUDGET_FACTOR * file_bytes:
        raise Refused(f"its tensors declare {total:,} bytes, over {BUDGET_FACTOR}x the file's {file_bytes:,}")


def _name_of(root: Any, target: Any) -> str | None:
    """The dict key under which `target` sits in the unpickled structure (iterative: no recursion limit)."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, (list, tuple)) else ()
        for key, value in items:
            if value is target:
                return brief_text(key) if type(key) is str else brief(key, 80)
            stack.append(value)
    return None


def _unpickle(decl: _Declarations) -> Any:
    try:
        return decl.load()
    except (Refused, Corrupt):
        raise
    except PickleRefused as e:
        raise Refused(str(e)) from None
    except Exception as e:  # cut or damaged pickle: the loader would fail on it too
        raise Corrupt(f"its pickle is unreadable ({type(e).__name__})") from None


def _scan_zip(data: bytes, allowed: frozenset[str]) -> tuple[_Declarations, dict[str, int]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise Corrupt(f"not a readable zip archive ({e})") from None
    names = [info.filename for info in infos]
    if not names or len(set(names)) != len(names):
        raise Corrupt("the archive is empty or names an entry twice")
    for info in infos:  # torch writes every entry uncompressed; a compressed one can inflate a thousandfold
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise Refused(f"its entry {info.filename} is compressed; torch files store entries uncompressed")
    if sum(info.file_size for info in infos) > len(data):
        raise Refused("its entries declare more bytes than the file holds")
    prefix = names[0].split("/", 1)[0]  # as torch's reader: the first entry's folder
    try:
        pickled = archive.read(f"{prefix}/data.pkl")
    except (KeyError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise Corrupt(f"no readable data.pkl ({type(e).__name__})") from None
    decl = _Declarations(io.BytesIO(pickled), allowed)
    decl.result = _unpickle(decl)
    sizes = {info.filename[len(prefix) + 6:]: info.file_size for info in infos
             if info.filename.startswith(f"{prefix}/data/")}
    return decl, sizes


def _scan_legacy(data: bytes, allowed: frozenset[str]) -> tuple[_Declarations, dict[str, int]]:
    """torch's pre-1.6 layout: pickles of magic, protocol, sys_info, the object, the storage keys;
    then per key an int64 element count and the raw bytes."""
    stream = io.BytesIO(data)
    decl = _Declarations(stream, allowed)
    decl.result = _unpickle(decl)
    if decl.result != _LEGACY_MAGIC:
        _check_tensors(decl, len(data))  # a plain pickle of tensors is still judged by its declarations
        raise Corrupt("not a torch file (no torch magic number)")
    if _unpickle(decl) != 1001 or not isinstance(_unpickle(decl), dict):  # protocol version, sys_info
        raise Corrupt("unknown legacy torch protocol")
    decl.result = _unpickle(decl)
    keys = _unpickle(decl)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise Corrupt("the storage key list is malformed")
    sizes, position = {}, stream.tell()
    for key in keys:
        storage = decl.storages.get(key)
        if storage is None or position + 8 > len(data):
            raise Corrupt(f"storage {brief_text(key)} is missing")
        (numel,) = struct.unpack("<q", data[position:position + 8])
        sizes[key] = numel * storage.dtype.itemsize if numel >= 0 else -1
        position += 8 + max(sizes[key], 0)
        if position > len(data):
            raise Refused(f"storage {brief_text(key)} declares {sizes[key]:,} bytes past the end of the file")
    return decl, sizes


def scan_safetensors(data: bytes, max_tensors: int = MAX_TENSORS) -> dict[str, str]:
    """Check a safetensors header (size, nesting, dtypes, shapes, byte ranges); returns its metadata."""
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_SAFETENSORS_HEADER:
        raise Refused(f"its header is {length:,} bytes, over the limit of {MAX_SAFETENSORS_HEADER:,}")
    if 8 + length > len(data):
        raise Corrupt("the header runs past the end of the file")
    raw = data[8:8 + length]
    depth = _json_depth(raw)
    if depth > 3:  # {name: {"shape": [..]}} is the deepest the format has
        raise Refused(f"its header nests {depth:,} levels deep; the format has 3")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise Corrupt(f"the header is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise Corrupt("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise Refused("its __metadata__ is not a flat map of strings, as the safetensors format requires")
    for key, value in meta.items():  # values written as JSON text are parsed when the file is read
        nesting = _json_depth(value.encode("utf-8", "surrogatepass")) if "[" in value or "{" in value else 0
        if nesting > MAX_METADATA_DEPTH:
            raise Refused(f"its __metadata__ value '{brief_text(key)}' nests {nesting:,} levels deep, over the "
                          f"limit of {MAX_METADATA_DEPTH}")
    if len(header) > max_tensors:
        raise Refused(f"it declares {len(header):,} tensors, over the limit of {max_tensors:,}")
    body, spans = len(data) - 8 - length, []
    for name, entry in header.items():
        spans.append((*_check_entry(brief_text(name), entry, body), name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin < end:
            raise Refused(f"tensor '{brief_text(name)}' overlaps another tensor's bytes")
        end = stop
    return meta


def _check_entry(name: str, entry: Any, body: int) -> tuple[int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise Corrupt(f"tensor '{name}' has a malformed header entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if type(dtype) is not str or dtype not in SAFETENSORS_DTYPES:
        raise Refused(f"tensor '{name}' has dtype {brief(dtype)}; weights are F16/F32/F64, BF16 or integers")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise Refused(f"tensor '{name}' declares an impossible shape or byte range ({brief(shape)}, {brief(offsets)})")
    if offsets[1] > body:
        raise Corrupt(f"tensor '{name}' ends at byte {offsets[1]:,} of a {body:,}-byte body")
    if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        raise Refused(f"tensor '{name}' declares shape {shape} over {offsets[1] - offsets[0]:,} bytes")
    return offsets[0], offsets[1]


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of [ and { outside strings, counted without parsing (vectorised, linear: 8 MiB in ms).

    A quote opens or closes a string unless an odd run of backslashes precedes it; a regex that skipped
    strings failed at every quote of an unterminated one and took minutes on 80 KB of escaped quotes."""
    codes = np.frombuffer(raw, dtype=np.uint8)
    index = np.arange(len(codes), dtype=np.int32)  # headers are under MAX_SAFETENSORS_HEADER bytes
    slash = codes == ord("\\")
    last_other = np.maximum.accumulate(np.where(slash, np.int32(-1), index))  # last non-backslash at or before i
    odd_run = np.zeros(len(codes), dtype=bool)
    odd_run[1:] = (index[:-1] - last_other[:-1]) & 1  # an odd run of backslashes just before i
    quote = (codes == ord('"')) & ~odd_run
    outside = (np.cumsum(quote, dtype=np.int32) & 1) == 0  # a closing quote is outside too, and is not a bracket
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    step = (opens.astype(np.int32) - closes) * outside
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))
