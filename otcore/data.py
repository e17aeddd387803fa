"""Dataset registry: the embedded digits, and MNIST / Fashion-MNIST / CIFAR from a local root.

Every dataset is held as normalised tensors (N, C, H, W) so batches are slices on the device,
not a DataLoader per step; the real datasets are read by torchvision's own classes.
"""
from __future__ import annotations

from dataclasses import dataclass
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

# Normalisations of the checkpoints published with the OT fusion paper.
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25


class DataError(ValueError):
    """A dataset that cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Dataset:
    """A dataset as tensors: normalised float inputs (N, C, H, W) and int64 labels (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

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
def load_dataset(name: str = "digits", root: str | None = None, download: bool = False) -> Dataset:
    """Load a registered dataset (memoised per process: datasets are read-only tensors)."""
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(list_datasets())}")
    return _REGISTRY[name](root, download)


def _normalise(x: torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    return (x - mean) / std


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
                   _normalise(x_te, stats), torch.from_numpy(y_te), 10)


def _need_root(name: str, root: str | None) -> str:
    if not root:
        raise DataError(f"dataset '{name}' is read from a local folder: give its root "
                        "(--data-root DIR, or the Data root field) in torchvision's layout")
    return root


def _torchvision_pair(cls: type, name: str, root: str | None, download: bool) -> tuple:
    root = _need_root(name, root)
    try:
        return cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataError(f"could not read {name} from {root}: {err} "
                        "(expected torchvision's on-disk layout; --download fetches it when online)") from err


def _mnist_like(cls_name: str, name: str) -> Callable[[str | None, bool], Dataset]:
    def load(root: str | None, download: bool) -> Dataset:
        import torchvision

        train, test = _torchvision_pair(getattr(torchvision.datasets, cls_name), name, root, download)
        prep = lambda d: _normalise(d.data.float().div(255.0)[:, None], MNIST_STATS)  # noqa: E731
        return Dataset(name, prep(train), train.targets.long(), prep(test), test.targets.long(), 10)

    return load


# Where torchvision puts each CIFAR archive, and the batch files inside it.
CIFAR_LAYOUT = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels"),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train"], ["test"], "fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, lists and uint8 arrays) and refuses everything else.

    torchvision reads these files with plain pickle.load, which runs any code a file carries;
    a dataset folder is untrusted input, so only numpy's array reconstruction is allowed.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR batch holds only arrays and lists")
        return super().find_class(module, name)


def _cifar_batches(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()  # the published files are Python 2 pickles
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(v) for v in batch[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def _cifar(name: str, stats: tuple, classes: int) -> Callable[[str | None, bool], Dataset]:
    cls_name, subdir, train_files, test_files, label_key = CIFAR_LAYOUT[name]

    def load(root: str | None, download: bool) -> Dataset:
        folder = Path(_need_root(name, root)) / subdir
        if download and not folder.is_dir():
            import torchvision  # torchvision downloads and checks the official archive's md5

            _torchvision_pair(getattr(torchvision.datasets, cls_name), name, root, True)
        try:
            x_train, y_train = _cifar_batches(folder, train_files, label_key)
            x_test, y_test = _cifar_batches(folder, test_files, label_key)
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, AttributeError, TypeError) as err:
            raise DataError(f"could not read {name} from {folder}: {err} "
                            "(expected torchvision's on-disk layout; --download fetches it when online)") from err
        if int(y_train.max()) >= classes or int(y_test.max()) >= classes:
            raise DataError(f"{name} labels in {folder} exceed its {classes} classes")
        prep = lambda x: _normalise(x.float().div(255.0), stats)  # noqa: E731
        return Dataset(name, prep(x_train), y_train, prep(x_test), y_test, classes)

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
