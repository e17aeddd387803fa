"""Dataset registry: the embedded digits, and MNIST / Fashion-MNIST / CIFAR from a local root.

Every dataset is held as normalised tensors (N, C, H, W) so batches are slices on the device,
not a DataLoader per step. The real datasets' files are untrusted input, read in torchvision's
layout by parsers that check every size and value before using it (`read_idx`, and
`otcore.cifar_pickle` for the pickled CIFAR batches); torchvision only downloads. Each Dataset
carries the fingerprint of the bytes it was read from (`otcore.datafiles`), the value every
cache key that depends on data holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import numpy as np
import torch

from otcore.cifar_pickle import read_batch
from otcore.datafiles import (DataError, combine, dataset_files, dataset_fingerprint, need_root, read_data_file,
                              split_files)

# Normalisations of the checkpoints published with the OT fusion paper.
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class Dataset:
    """A dataset as tensors: normalised float inputs (N, C, H, W) and int64 labels (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    fingerprint: str = ""  # content hash of the files read (otcore.datafiles.combine)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, labels) of 'train' or 'test'."""
        if name == "train":
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise DataError(f"split must be 'train' or 'test', got '{name}'")


_REGISTRY: dict[str, Callable[[str | None, bool], Dataset]] = {}


def register_dataset(name: str) -> Callable:
    """Decorator: register a loader `(root, download) -> Dataset` under a name."""

    def wrap(fn: Callable[[str | None, bool], Dataset]) -> Callable:
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Names of the registered datasets, the embedded default first."""
    return list(_REGISTRY)


@lru_cache(maxsize=4)
def _load(name: str, root: str | None, download: bool, fingerprint: str) -> Dataset:
    return _REGISTRY[name](root, download)  # fingerprint keys the memo: changed files are read again


def load_dataset(name: str = "digits", root: str | None = None, download: bool = False,
                 fingerprint: str | None = None) -> Dataset:
    """Load a registered dataset, memoised per process by the content of its files.

    With `fingerprint` (a DataSpec's), the files must still hold what the spec's keys were made
    from: a result is never stored under the key of other data.
    """
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(list_datasets())}")
    current = dataset_fingerprint(name, root, download)
    pending = (fingerprint or current).startswith("download:")
    if fingerprint and not pending and fingerprint != current:
        raise DataError(f"the {name} files under {root} changed after the settings were read; run again")
    data = _load(name, root, download, current)
    if data.fingerprint and not pending and data.fingerprint != current:
        _load.cache_clear()
        raise DataError(f"the {name} files under {root} changed while they were read; run again")
    return data


load_dataset.cache_clear = _load.cache_clear  # type: ignore[attr-defined]


def _normalise(x: torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    """(x - mean) / std per channel, in place: x is the loader's own fresh float tensor (CIFAR-10: 614 MB a copy)."""
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


@register_dataset("digits")
def _digits(root: str | None, download: bool) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), a fixed seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels)
    x_tr, x_te = torch.from_numpy(x_tr)[:, None], torch.from_numpy(x_te)[:, None]
    mean, std = float(x_tr.mean()), float(x_tr.std())  # stats of the train split only
    stats = ((mean,), (std,))
    return Dataset("digits", _normalise(x_tr, stats), torch.from_numpy(y_tr),
                   _normalise(x_te, stats), torch.from_numpy(y_te), 10, dataset_fingerprint("digits", None))


def _downloaded(cls_name: str, name: str, root: str | None) -> None:
    """Let torchvision fetch the published files (it checks their md5 sums) when some are missing."""
    if all(p.is_file() for p in dataset_files(name, root)):
        return
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        cls(need_root(name, root), train=True, download=True), cls(root, train=False, download=True)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataError(f"could not download {name} into {root}: {err}") from err


def _read(name: str, root: str | None, path: Path, parse: Callable[[bytes], Any]) -> tuple[Any, tuple[str, str]]:
    """parse(bytes of path), and the file's (name, sha256) for the dataset's fingerprint; errors name the folder."""
    try:
        raw, digest = read_data_file(path)
        return parse(raw), (path.name, digest)
    except DataError as err:
        raise DataError(f"could not read {name} from {root}: {path.name}: {err}") from None


IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "16-bit integers", 0x0C: "32-bit integers",
             0x0D: "32-bit floats", 0x0E: "64-bit floats"}


def read_idx(raw: bytes, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes (LeCun's MNIST format: magic 0x0000 08 ndim, big-endian dims, data).

    Written here rather than read by torchvision's MNIST class because that class trusts the
    header: float data, zero dimensions or a size that disagrees with the file all get through.
    """
    if len(raw) < 4 or raw[0] or raw[1]:
        raise DataError("not an IDX file (its first two bytes are not zero)")
    if raw[2] != 0x08:
        raise DataError(f"holds {IDX_TYPES.get(raw[2], f'type 0x{raw[2]:02x}')} data; MNIST files hold unsigned bytes")
    if raw[3] != ndim:
        raise DataError(f"has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"is {len(raw)} bytes, shorter than its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if 0 in dims:
        raise DataError(f"has shape {dims}: no examples")
    expected = header + int(np.prod(dims, dtype=object))
    if len(raw) != expected:
        raise DataError(f"is {len(raw):,} bytes but its header {dims} says {expected:,}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_split(name: str, root: str | None, images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor, list]:
    x, x_digest = _read(name, root, images, lambda raw: read_idx(raw, 3))
    y, y_digest = _read(name, root, labels, lambda raw: read_idx(raw, 1))
    if len(x) != len(y):
        raise DataError(f"could not read {name} from {root}: {images.name} has {len(x):,} images but "
                        f"{labels.name} has {len(y):,} labels")
    if int(y.max()) >= 10:
        raise DataError(f"could not read {name} from {root}: {labels.name} has label {int(y.max())}; "
                        f"{name} has 10 classes (0..9)")
    pixels = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]
    return _normalise(pixels, MNIST_STATS), torch.from_numpy(y.astype(np.int64)), [x_digest, y_digest]


def _mnist_like(cls_name: str, name: str) -> Callable[[str | None, bool], Dataset]:
    def load(root: str | None, download: bool) -> Dataset:
        if download:
            _downloaded(cls_name, name, root)
        train, test = split_files(name, root)
        x_train, y_train, train_digests = _mnist_split(name, root, *train)
        x_test, y_test, test_digests = _mnist_split(name, root, *test)
        return Dataset(name, x_train, y_train, x_test, y_test, 10, combine(name, train_digests + test_digests))

    return load


# The torchvision class that downloads each CIFAR archive, and the batches' label key.
CIFAR_LAYOUT = {"cifar10": ("CIFAR10", "labels"), "cifar100": ("CIFAR100", "fine_labels")}


def _cifar_batches(name: str, root: str | None, files: list[Path], label_key: str, classes: int
                   ) -> tuple[torch.Tensor, torch.Tensor, list]:
    images, labels, digests = [], [], []
    for path in files:
        (x, y), digest = _read(name, root, path, lambda raw: read_batch(raw, label_key, classes))
        images.append(x)
        labels.append(y)
        digests.append(digest)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), digests


def _cifar(name: str, stats: tuple, classes: int) -> Callable[[str | None, bool], Dataset]:
    cls_name, label_key = CIFAR_LAYOUT[name]

    def load(root: str | None, download: bool) -> Dataset:
        if download:
            _downloaded(cls_name, name, root)
        train, test = split_files(name, root)
        x_train, y_train, train_digests = _cifar_batches(name, root, train, label_key, classes)
        x_test, y_test, test_digests = _cifar_batches(name, root, test, label_key, classes)
        prep = lambda x: _normalise(x.float().div_(255.0), stats)  # noqa: E731  (one float copy, then in place)
        return Dataset(name, prep(x_train), y_train, prep(x_test), y_test, classes,
                       combine(name, train_digests + test_digests))

    return load


register_dataset("mnist")(_mnist_like("MNIST", "mnist"))
register_dataset("fashion-mnist")(_mnist_like("FashionMNIST", "fashion-mnist"))
register_dataset("cifar10")(_cifar("cifar10", CIFAR10_STATS, 10))
register_dataset("cifar100")(_cifar("cifar100", CIFAR100_STATS, 100))


def sample_inputs(data: Dataset, split: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded sample of n examples of a split (same seed, same sample)."""
    x, y = data.split(split)
    if n > len(x):
        raise DataError(f"asked for {n} samples but the {split} split of {data.name} has {len(x)}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of (x, y); shuffled when a generator is given, in order otherwise."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size].to(x.device)
            yield x[idx], y[idx]
