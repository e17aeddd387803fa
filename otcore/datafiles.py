"""The files each dataset reads, opened safely, and the content fingerprint that keys every result on them.

A dataset folder is untrusted input: a data file must be a regular file of bounded size (a FIFO
would block the reader for ever, /dev/zero would never end), and every cache key that depends on
data holds the fingerprint of the bytes, so parents trained on one folder are never served for
another. Hashing is memoised per process by each file's identity (path, device, inode, size,
mtime and ctime), and kept in a small file of the cache folder, so a fingerprint costs a few
`stat` calls once a file has been hashed, in this process or an earlier one. This module imports
only the standard library: the CLI answers a cached `train` by key without torch
or numpy.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections import OrderedDict
from importlib.util import find_spec
from pathlib import Path

from otcore.errors import UserError
from otcore.regular_files import read_regular
from otcore.user_paths import checked, shown

MAX_FILE_BYTES = 1 << 30  # no dataset file is larger (CIFAR-100's train batch, the largest, is 155 MB)
_CHUNK = 1 << 20
_MEMO_SIZE = 256
_STORE = ".fingerprints.json"  # the memo, in the cache folder: a CLI call re-hashes nothing unchanged
_STORE_MAX_BYTES = 1 << 20
_STORE_MIN_FILE = 1 << 20  # smaller files hash in under a millisecond: not worth a write into the cache folder

# Where each dataset's files lie under its root (torchvision's layout): (folder, train files, test files).
_MNIST_FILES = (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "mnist": ("MNIST/raw", *_MNIST_FILES),
    "fashion-mnist": ("FashionMNIST/raw", *_MNIST_FILES),
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)),
    "cifar100": ("cifar-100-python", ("train",), ("test",)),
}

files_hashed = 0  # files read to compute a digest in this process (the memo's misses), for tests and benches
_digests: OrderedDict[tuple, str] = OrderedDict()
_store_read = False


class DataError(UserError):
    """A dataset that cannot be loaded; the message says what to do."""


def need_root(name: str, root: str | None) -> str:
    """The root folder of a real dataset, or a DataError naming the flag and the field that give it."""
    if not root:
        raise DataError(f"dataset '{name}' is read from a local folder: give its root "
                        "(--data-root DIR, or the Data root field) in torchvision's layout")
    return root


def digits_file() -> Path:
    """scikit-learn's bundled digits (what `load_digits` reads), found without importing scikit-learn."""
    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset needs scikit-learn (pip install scikit-learn)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def split_files(name: str, root: str | None) -> tuple[list[Path], list[Path]]:
    """(train files, test files) the loader of a real dataset reads, in order."""
    folder, train, test = LAYOUT[name]
    base, info = checked(need_root(name, root), f"could not read {name} from the data root", DataError)
    if info is None or not stat.S_ISDIR(info.st_mode):
        raise DataError(f"could not read {name} from {shown(base)}: no such folder "
                        "(--data-root names the folder that holds torchvision's layout)")
    return [base / folder / f for f in train], [base / folder / f for f in test]


def dataset_files(name: str, root: str | None) -> list[Path]:
    """Every file the loader of `name` reads, in a fixed order (empty for a layout this module does not know)."""
    if name == "digits":
        return [digits_file()]
    if name not in LAYOUT:
        return []
    train, test = split_files(name, root)
    return train + test


def _open(path: Path) -> tuple[int, os.stat_result]:
    """A descriptor of a regular file within the size limit, and its stat; never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{shown(path)} is missing") from None
    except OSError as err:
        raise DataError(f"cannot open {shown(path)}: {err.strerror or err}") from None
    info = os.fstat(fd)  # of what was opened, so a file swapped after a check cannot slip through
    problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"is {info.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,}" if info.st_size > MAX_FILE_BYTES
               else "")
    if problem:
        os.close(fd)
        raise DataError(f"{path} {problem}")
    return fd, info


def _identity(path: Path, info: os.stat_result) -> tuple:
    # ctime too: touch can set an mtime back, nothing but the kernel sets ctime.
    return (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _store_path() -> Path:
    from otcore.cache import default_root  # torch-free; read now, as the cache itself does

    return default_root() / _STORE


def _read_store() -> None:
    """Digests hashed by earlier processes (once per process); a missing or malformed store is ignored."""
    global _store_read
    if _store_read:
        return
    _store_read = True
    try:
        # A regular file only, opened without blocking: a FIFO there must not hang every call (a miss instead).
        entries = json.loads(read_regular(_store_path(), _STORE_MAX_BYTES))
        for identity, digest in entries[-_MEMO_SIZE:]:
            if (len(identity) == 6 and isinstance(identity[0], str) and all(type(v) is int for v in identity[1:])
                    and isinstance(digest, str) and len(digest) == 64):
                _digests.setdefault(tuple(identity), digest)
    except (OSError, ValueError, TypeError):
        pass


def _write_store() -> None:
    """The memo, written atomically; a read-only cache folder only costs the next process a re-hash."""
    try:
        path = _store_path()
        # Not '.tmp': the cache removes stray '.*.tmp' files as its own.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".fingerprints.", suffix=".part")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump([[list(k), v] for k, v in _digests.items() if k[3] >= _STORE_MIN_FILE], handle)
        os.replace(temp, path)
    except OSError:
        Path(temp).unlink(missing_ok=True)


def _remember(identity: tuple, digest: str) -> None:
    _digests[identity] = digest
    _digests.move_to_end(identity)
    while len(_digests) > _MEMO_SIZE:
        _digests.popitem(last=False)
    if identity[3] >= _STORE_MIN_FILE:  # identity[3] is the size
        _write_store()


def file_digest(path: Path) -> str:
    """sha256 of a data file's bytes, memoised by the file's identity: unchanged files are not read again."""
    global files_hashed
    _read_store()
    fd, info = _open(path)
    try:
        identity = _identity(path, info)
        if identity in _digests:
            return _digests[identity]
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        files_hashed += 1
    finally:
        os.close(fd)
    _remember(identity, digest.hexdigest())
    return digest.hexdigest()


def read_data_file(path: Path) -> tuple[bytes, str]:
    """(bytes, sha256) of a regular data file within the size limit; refuses a file that changes while read."""
    fd, info = _open(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(info.st_size + 1)
    finally:
        os.close(fd)
    if len(raw) != info.st_size:
        raise DataError(f"{path} changed while it was read")
    digest = hashlib.sha256(raw).hexdigest()
    _remember(_identity(path, info), digest)
    return raw, digest


def combine(name: str, digests: list[tuple[str, str]]) -> str:
    """The fingerprint of a dataset from its files' (name, sha256) pairs."""
    return hashlib.sha256(json.dumps([name, digests]).encode()).hexdigest()[:32]


def dataset_fingerprint(name: str, root: str | None, download: bool = False) -> str:
    """Content fingerprint of the files a dataset's loader reads (cheap when they were hashed before).

    Raises DataError, naming the folder, when a file is missing or unusable; with `download` and
    files missing, 'download:NAME' stands for the published files torchvision fetches (checked
    against their md5 sums).
    """
    try:
        files = dataset_files(name, root)
        if download and not all(checked(p, "data file", DataError)[1] is not None for p in files):
            return f"download:{name}"
        return combine(name, [(p.name, file_digest(p)) for p in files]) if files else ""
    except DataError as err:
        if name == "digits" or str(err).startswith(("could not read", "dataset '")):
            raise
        hint = (f" (expected torchvision's layout, {shown(Path(root or '') / LAYOUT[name][0])}/...; --download "
                "fetches it when online)") if str(err).endswith("is missing") else ""
        raise DataError(f"could not read {name} from {shown(root or '')}: {err}{hint}") from None
