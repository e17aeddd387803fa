"""Content-addressed disk cache of step results (weights, arrays, metrics) in `cached_models/`.

One safetensors file per entry, `<key>.safetensors`; its string metadata holds the entry's
kind, config, metrics and creation time as JSON, and a sha256 over that JSON and the tensors,
so damaged entries are detected, removed and recomputed. Writes are atomic (temp file, fsync,
rename) and a per-key file lock makes racing processes compute a key once. A cache that cannot
write (read-only, missing, full disk) logs one warning and works on without caching.

Importing this module does not import torch: `load_record` and `listing` verify an entry from the
file's bytes alone, so a CLI call answered from the cache skips torch's two-second import. Listings
show or hand out only entries whose checksum verifies and whose record has its kind's shape
(otcore.records); the rest are skipped with one warning each. Each file version is hashed once
per process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from collections.abc import Callable, Iterable

from filelock import FileLock

from otcore.atomic import write_atomic
from otcore.records import record_problem

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # keys name files: no separators, no hidden names
_STALE_TEMP_S = 3600.0  # temp files older than this are left by killed writers
_MAX_HEADER = 100_000_000  # bytes of a safetensors header; ours are kilobytes
_CHUNK = 1 << 22  # bytes hashed per read when an entry is verified from its file
# safetensors' dtype codes -> (torch's dtype name, which the checksum has always hashed; bytes per element)
_DTYPES = {"F64": ("torch.float64", 8), "F32": ("torch.float32", 4), "F16": ("torch.float16", 2),
           "BF16": ("torch.bfloat16", 2), "I64": ("torch.int64", 8), "I32": ("torch.int32", 4),
           "I16": ("torch.int16", 2), "I8": ("torch.int8", 1), "U8": ("torch.uint8", 1), "BOOL": ("torch.bool", 1)}


@dataclass
class CacheEntry:
    """One cached result: what produced it and what it holds."""

    key: str  # spec_hash(kind, *specs)
    kind: str  # 'parent', 'fusion', 'prune', 'hessian', ...
    config: dict[str, Any]  # JSON-able description of the specs behind the key
    metrics: dict[str, Any]  # JSON-able results, may be nested
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # a state_dict or arrays; may be empty
    created: float = field(default_factory=time.time)  # seconds since the epoch


@dataclass
class ManifestRow:
    """One entry without its tensors: what the cache browser shows, and what `load_record` returns."""

    key: str
    kind: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    created: float
    size: int  # bytes on disk


@dataclass
class Listing:
    """A verified listing: the rows that may be shown or reused, and the entries left out with why."""

    rows: list[ManifestRow]
    skipped: list[tuple[str, str]]  # (key, why), in key order

    def warning(self) -> str | None:
        """One line naming the skipped entries, or None when none was."""
        if not self.skipped:
            return None
        named = "; ".join(f"{key[:12]}: {why}" for key, why in self.skipped[:3])
        more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return f"{len(self.skipped)} damaged or unreadable cache entries skipped ({named}{more})"


# Verified records by file path: (signature of the file version, its row or why it was skipped).
_VERIFIED: dict[str, tuple[tuple[int, ...], ManifestRow | str]] = {}
_VERIFIED_LOCK = threading.Lock()  # Streamlit lists from several threads


def config_field(config: dict[str, Any], part: str, name: str) -> str:
    """config[part][name] of a manifest row, or '' where that part is absent or not a spec."""
    value = config.get(part)
    return str(value.get(name, "")) if isinstance(value, dict) else ""


def default_root() -> Path:
    """The cache folder: $OTCORE_CACHE_DIR if set, else the repository's cached_models/."""
    env = os.environ.get("OTCORE_CACHE_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "cached_models"


def default_cache() -> DiskCache:
    """A cache at the default root, read from the environment now (not at import)."""
    return DiskCache()


class DiskCache:
    """Atomic, locked, checksummed store of `CacheEntry`s keyed by spec hash."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.writable = True
        self.write_error: OSError | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # os.access lies to root; creating a file does not. A unique name: other processes probe too.
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            self._degrade(e)
        else:
            self._remove_stale_temps()

    def load(self, key: str) -> CacheEntry | None:
        """The entry stored under `key`, or None on a miss; a damaged entry is removed and is a miss."""
        import safetensors  # here, not at the top: reading a record must not import torch

        path = self._path(key)
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            record = json.loads(header["entry"])
            if _checksum(header["entry"], _tensor_items(tensors)) != header["sha256"]:
                raise ValueError("checksum mismatch")
        except FileNotFoundError:
            return None
        except Exception as e:  # the Rust parser raises its own types; any failure means damage
            if not path.exists():
                return None
            log.warning("cache entry %s is corrupt (%s); removing it", path.name, e)
            self.delete(key)
            return None
        order = [n for n in record.get("names", []) if n in tensors]  # the writer's order, not sorted
        tensors = {n: tensors[n] for n in order + sorted(set(tensors) - set(order))}
        return CacheEntry(key=key, kind=record["kind"], config=record["config"],
                          metrics=record["metrics"], tensors=tensors, created=record["created"])

    def load_record(self, key: str) -> ManifestRow | None:
        """An entry's kind, config, metrics and time, checksum- and shape-verified without torch; None if not.

        A damaged entry is left in place: `load` removes it, and the caller goes on to `load`.
        """
        row = _verified_row(self._path(key))
        return row if isinstance(row, ManifestRow) else None

    def store(self, entry: CacheEntry) -> None:
        """Write an entry atomically; on a write error, warn once and stop caching."""
        path = self._path(entry.key)
        if not self.writable:
            return
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in entry.tensors.items()}
        record = json.dumps({"kind": entry.kind, "config": entry.config, "metrics": entry.metrics,
                             "created": entry.created, "names": list(tensors)}, default=_json_default)
        header = {"entry": record, "sha256": _checksum(record, _tensor_items(tensors))}
        try:
            write_atomic(path, _safetensors_bytes(tensors, header))
        except OSError as e:
            self._degrade(e)

    def get_or_compute(self, key: str, compute: Callable[[], CacheEntry]) -> CacheEntry:
        """The cached entry for `key`, else compute and store it, once across racing processes."""
        entry = self.load(key)
        if entry is not None:
            return entry
        lock = FileLock(str(self.root / f".{key}.lock")) if self.writable else None
        if lock is not None:
            try:
                lock.acquire()
            except OSError as e:
                self._degrade(e)
                lock = None
        try:
            # Another process may have stored the entry while this one waited for the lock.
            entry = self.load(key) if lock is not None else None
            if entry is None:
                entry = compute()
                if entry.key != key:
                    raise ValueError(f"compute() returned an entry for key {entry.key}, expected {key}")
                self.store(entry)
            return entry
        finally:
            if lock is not None:
                lock.release()

    def listing(self, kind: str | None = None) -> Listing:
        """Every entry (of `kind`) whose checksum and record shape verify, newest first, and those skipped.

        Each file is hashed once per version (memoised by inode, size and times); a damaged or
        malformed entry is logged once and skipped, never fatal, and left for `load` to remove.
        """
        rows, skipped = [], []
        paths = sorted(self.root.glob(f"*{SUFFIX}")) if self.root.is_dir() else []
        _forget_all_but(self.root, paths)
        for path in paths:
            row = _verified_row(path)
            if row is None:  # vanished while listed
                continue
            if isinstance(row, str):
                skipped.append((path.name[:-len(SUFFIX)], row))
            elif kind is None or row.kind == kind:
                rows.append(row)
        return Listing(sorted(rows, key=lambda r: r.created, reverse=True), skipped)

    def entries(self, kind: str | None = None) -> list[ManifestRow]:
        """The verified manifest, newest first (`listing(kind).rows`): what may be shown or reused."""
        return self.listing(kind).rows

    def keys(self) -> list[str]:
        """The key of every entry file, unverified (`load` verifies each)."""
        return sorted(p.name[:-len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}")) if self.root.is_dir() else []

    def delete(self, key: str) -> None:
        """Remove one entry if present."""
        path = self._path(key)
        if not self.writable:  # already warned once; a read-only cache cannot remove anything
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not remove cache entry %s: %s", key, e)

    def clear(self) -> None:
        """Remove every entry and leftover temp file (lock files stay: others may hold them)."""
        for path in [*self.root.glob(f"*{SUFFIX}"), *self.root.glob(".*.tmp")] if self.root.is_dir() else []:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("could not remove %s: %s", path, e)

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"invalid cache key {key!r}")
        return self.root / f"{key}{SUFFIX}"

    def _degrade(self, error: OSError) -> None:
        self.write_error = error  # why it stopped storing: a sweep's record says so (otcore.sweep.driver)
        if self.writable:
            log.warning("cannot write to cache folder %s (%s); continuing without caching",
                        self.root, error.strerror or error)
        self.writable = False

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for path in self.root.glob(".*.tmp"):
            try:
                if now - path.stat().st_mtime > _STALE_TEMP_S:
                    path.unlink()
            except OSError:
                pass


TensorItem = tuple[str, str, tuple[int, ...], Any]  # name, torch dtype name, shape, raw bytes (a buffer)


def _checksum(record: str, items: Iterable[TensorItem]) -> str:
    # Covers the entry JSON and every tensor's name, dtype, shape and bytes, in sorted name order.
    digest = hashlib.sha256(record.encode())
    for name, dtype, shape, data in sorted(items, key=lambda item: item[0]):
        digest.update(f"\0{name}\0{dtype}\0{shape}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _safetensors_bytes(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> bytes:
    """The entry's file; one without tensors (a sweep's record) is written without importing torch."""
    if not tensors:  # the same bytes safetensors.torch writes for no tensors
        import safetensors.numpy

        return safetensors.numpy.save({}, metadata=header)
    import safetensors.torch  # here, not at the top: reading a record must not import torch

    return safetensors.torch.save(tensors, metadata=header)


def _tensor_items(tensors: dict[str, torch.Tensor]) -> list[TensorItem]:
    if not tensors:
        return []
    import torch

    items = []
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        items.append((name, str(tensor.dtype), tuple(tensor.shape), tensor.reshape(-1).view(torch.uint8).numpy()))
    return items


def _verified_row(path: Path) -> ManifestRow | str | None:
    """The entry at path as a manifest row if it verifies, else why not; None if there is no file.

    Memoised per file version, so a listing hashes each entry once per change, not once per page run.
    """
    try:
        stat = path.stat()
        with _VERIFIED_LOCK:
            memo = _VERIFIED.get(str(path))
        if memo is not None and memo[0] == _signature(stat):
            return memo[1]
        with open(path, "rb") as f:  # fstat of the open file: the signature of exactly the bytes read
            stat = os.fstat(f.fileno())
            try:
                record = _verified_record(f, stat.st_size)
                problem = record_problem(record)
            except Exception as e:  # the file's content is untrusted: any failure to parse it is damage
                record, problem = None, f"damaged ({str(e) or type(e).__name__})"
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    key = path.name[:-len(SUFFIX)]
    row: ManifestRow | str = problem or ManifestRow(key=key, kind=record["kind"], config=record["config"],
                                                     metrics=record["metrics"], created=record["created"],
                                                     size=stat.st_size)
    if problem:
        log.warning("cache entry %s skipped: %s", key, problem)
    with _VERIFIED_LOCK:
        _VERIFIED[str(path)] = (_signature(stat), row)
    return row


def _forget_all_but(root: Path, paths: list[Path]) -> None:
    # Entries removed from the folder leave the memo too, so it never outgrows the cache.
    keep, prefix = {str(p) for p in paths}, str(root / "x")[:-1]
    with _VERIFIED_LOCK:
        for stale in [name for name in _VERIFIED if name.startswith(prefix) and name not in keep]:
            del _VERIFIED[stale]


def _signature(stat: os.stat_result) -> tuple[int, ...]:
    # Any rewrite (even one restoring the size and mtime) gets a new inode or a new ctime.
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _verified_record(f: BinaryIO, size: int) -> dict[str, Any]:
    """The entry JSON of an open safetensors file after checking its checksum; raises ValueError if damaged.

    Reads the tensors in chunks, so verifying a large entry never holds it in memory.
    """
    # Layout: an 8-byte little-endian header length, the header JSON ({name: {dtype, shape, data_offsets}},
    # '__metadata__'), then the tensors' bytes, offsets counted from the end of the header.
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(size - 8, _MAX_HEADER):
        raise ValueError("header length exceeds the file")
    header = json.loads(f.read(n))
    metadata = header.pop("__metadata__")
    spans, end = [], 0
    for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
        dtype, itemsize = _DTYPES[info["dtype"]]
        shape = tuple(int(d) for d in info["shape"])
        start, stop = info["data_offsets"]
        # As safetensors itself checks: tensors tile the data exactly, each as long as its shape says.
        if start != end or stop - start != itemsize * math.prod(shape):
            raise ValueError(f"tensor {name} has inconsistent offsets")
        spans.append((name, dtype, shape, start, stop))
        end = stop
    if end != size - 8 - n:
        raise ValueError("data length does not match the header")
    # _checksum's digest, fed from the file: the entry JSON, then each tensor in sorted name order.
    digest = hashlib.sha256(metadata["entry"].encode())
    for name, dtype, shape, start, stop in sorted(spans):
        digest.update(f"\0{name}\0{dtype}\0{shape}\0".encode())
        f.seek(8 + n + start)
        for offset in range(start, stop, _CHUNK):
            chunk = f.read(min(_CHUNK, stop - offset))
            if len(chunk) != min(_CHUNK, stop - offset):
                raise ValueError("the file ended early")
            digest.update(chunk)
    if digest.hexdigest() != metadata["sha256"]:
        raise ValueError("checksum mismatch")
    return json.loads(metadata["entry"])


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return value.tolist()
    raise TypeError(f"cache config and metrics must be JSON-able, got {type(value).__name__}")
