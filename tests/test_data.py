"""Tests of otcore.data: the embedded digits split, seeded samples, and real torchvision file formats."""
from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import REPO
from otcore.data import DataError, list_datasets, load_dataset, sample_inputs

DIGITS_HASH = """
import hashlib, torch
from otcore.data import load_dataset
d = load_dataset("digits")
h = hashlib.sha256()
for t in (d.x_train, d.y_train, d.x_test, d.y_test):
    h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest())
"""


@pytest.fixture(autouse=True)
def fresh_dataset_memo():
    """load_dataset is memoised per process: each test reads its own files."""
    load_dataset.cache_clear()
    yield
    load_dataset.cache_clear()


def digits_hash() -> str:
    d = load_dataset("digits")
    h = hashlib.sha256()
    for t in (d.x_train, d.y_train, d.x_test, d.y_test):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- digits


def test_registry_lists_digits_first_and_the_real_datasets():
    assert list_datasets()[0] == "digits"
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100"} <= set(list_datasets())


def test_digits_shapes_dtypes_and_labels():
    d = load_dataset("digits")
    assert d.x_train.shape == (1347, 1, 8, 8) and d.x_test.shape == (450, 1, 8, 8)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    for y in (d.y_train, d.y_test):
        assert sorted(y.unique().tolist()) == list(range(10))
    assert d.split("train")[0] is d.x_train and d.split("test")[1] is d.y_test
    with pytest.raises(DataError, match="split"):
        d.split("validation")


def test_digits_split_is_stratified():
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    total = Counter(load_digits().target.tolist())
    test = Counter(d.y_test.tolist())
    for label, count in total.items():
        assert abs(test[label] - 0.25 * count) <= 1, (label, test[label], count)


def test_digits_train_split_is_normalised():
    d = load_dataset("digits")
    assert abs(d.x_train.mean().item()) < 1e-5
    assert abs(d.x_train.std().item() - 1.0) < 1e-4
    # The test split uses the train split's statistics, so it is only roughly normalised.
    assert abs(d.x_test.mean().item()) < 0.1 and abs(d.x_test.std().item() - 1.0) < 0.1


def test_digits_are_sklearns_images_under_one_affine_map():
    """Both splits together are exactly the 1,797 (image, label) pairs, with train and test scaled alike."""
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    values = torch.unique(d.x_train)
    scale = (1.0 / 16.0) / (values[1:] - values[:-1]).min().item()  # pixel values are k/16, k = 0..16
    offset = -values[0].item() * scale  # every split has black pixels
    found = Counter()
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        levels = (x * scale + offset) * 16
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        levels = levels.round().to(torch.uint8).squeeze(1).numpy()
        found.update((img.tobytes(), int(label)) for img, label in zip(levels, y.tolist()))
    bunch = load_digits()
    expected = Counter((img.astype(np.uint8).tobytes(), int(t)) for img, t in zip(bunch.images, bunch.target))
    assert found == expected


def test_digits_split_is_identical_across_calls_and_processes():
    first = digits_hash()
    load_dataset.cache_clear()
    assert digits_hash() == first
    out = subprocess.run([sys.executable, "-c", DIGITS_HASH], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == first


def test_load_dataset_is_memoised_and_refuses_unknown_names():
    assert load_dataset("digits") is load_dataset("digits")
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


# ---------------------------------------------------------------------------- sample_inputs


def test_sample_inputs_is_deterministic_per_seed_and_differs_across_seeds():
    d = load_dataset("digits")
    x1, y1 = sample_inputs(d, "train", 50, seed=3)
    x2, y2 = sample_inputs(d, "train", 50, seed=3)
    x3, _ = sample_inputs(d, "train", 50, seed=4)
    assert x1.shape == (50, 1, 8, 8) and y1.shape == (50,)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    # Every sampled example is one of the split's (distinct) examples, with its own label.
    flat = d.x_train.flatten(1)
    for x, y in zip(x1, y1):
        rows = (flat == x.flatten()).all(1).nonzero().flatten()
        assert len(rows) >= 1 and y.item() in d.y_train[rows].tolist()


def test_sample_inputs_can_take_a_whole_split_and_refuses_more():
    d = load_dataset("digits")
    x, y = sample_inputs(d, "test", 450, seed=0)
    pairs = lambda xs, ys: Counter((a.numpy().tobytes(), int(b)) for a, b in zip(xs, ys))  # noqa: E731
    assert pairs(x, y) == pairs(d.x_test, d.y_test)  # a permutation of the whole split
    assert not torch.equal(x, d.x_test)
    with pytest.raises(DataError, match="451 samples.*450"):
        sample_inputs(d, "test", 451, seed=0)


# ---------------------------------------------------------------------------- MNIST-like, real IDX files


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_idx_files_load_normalised(make_mnist_root, name, folder):
    root, arrays = make_mnist_root(folder)
    d = load_dataset(name, str(root))
    assert d.name == name and d.num_classes == 10 and d.input_shape == (1, 28, 28)
    for split in ("train", "test"):
        x, y = d.split(split)
        pixels = torch.from_numpy(arrays[f"{split}_x"]).float()[:, None] / 255.0
        assert x.shape == (len(arrays[f"{split}_x"]), 1, 28, 28) and x.dtype == torch.float32
        assert torch.allclose(x, (pixels - 0.1307) / 0.3081, atol=1e-6)
        assert y.dtype == torch.int64 and y.tolist() == arrays[f"{split}_y"].tolist()


def test_mnist_files_under_another_folder_are_not_found(make_mnist_root):
    root, _ = make_mnist_root("MNIST")
    with pytest.raises(DataError, match="fashion-mnist") as err:
        load_dataset("fashion-mnist", str(root))
    assert str(root) in str(err.value)


def test_idx_header_is_what_torchvision_parses(make_mnist_root):
    """The files are real IDX: magic 2051 (images) and 2049 (labels), big-endian dims."""
    root, arrays = make_mnist_root("MNIST")
    raw = root / "MNIST" / "raw"
    images, labels = (raw / "train-images-idx3-ubyte").read_bytes(), (raw / "train-labels-idx1-ubyte").read_bytes()
    assert int.from_bytes(images[:4], "big") == 2051 and int.from_bytes(labels[:4], "big") == 2049
    assert [int.from_bytes(images[4 * i:4 * i + 4], "big") for i in (1, 2, 3)] == [20, 28, 28]
    ds = torchvision.datasets.MNIST(str(root), train=True)
    assert np.array_equal(ds.data.numpy(), arrays["train_x"])


# ---------------------------------------------------------------------------- CIFAR, real pickled batches


def write_cifar(root: Path, hundred: bool, per_batch: int = 4) -> dict[str, np.ndarray]:
    """Random images in the CIFAR python layout: uint8 rows of 3072 (R plane, G, B), label lists."""
    rng = np.random.default_rng(1)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes = 100 if hundred else 10
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    rows = {"train": [], "test": []}
    labels = {"train": [], "test": []}
    for name, split in [(n, "train") for n in names] + [("test" if hundred else "test_batch", "test")]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        target = rng.integers(0, classes, per_batch).tolist()
        entry = {"data": data, "fine_labels": target, "coarse_labels": [t // 5 for t in target]} if hundred \
            else {"data": data, "labels": target, "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(entry))
        rows[split].append(data)
        labels[split] += target
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]} \
        if hundred else {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))
    return {"train_x": np.concatenate(rows["train"]).reshape(-1, 3, 32, 32),
            "test_x": np.concatenate(rows["test"]).reshape(-1, 3, 32, 32),
            "train_y": np.array(labels["train"]), "test_y": np.array(labels["test"])}


CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
               "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))}


@pytest.mark.parametrize("name, hundred", [("cifar10", False), ("cifar100", True)])
def test_cifar_batches_in_the_real_layout_load_with_the_papers_normalisation(tmp_path, name, hundred):
    arrays = write_cifar(tmp_path, hundred)
    load_dataset.cache_clear()
    data = load_dataset(name, str(tmp_path))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_STATS[name])
    for split in ("train", "test"):
        x, y = data.split(split)
        expected = (torch.from_numpy(arrays[f"{split}_x"]).float() / 255 - mean) / std
        assert x.shape[1:] == (3, 32, 32) and torch.allclose(x, expected, atol=1e-5)
        assert y.tolist() == arrays[f"{split}_y"].tolist()
    assert data.num_classes == (100 if hundred else 10)
    # The same files are what torchvision's own class parses (its md5 check aside).
    cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
    unchecked = type("Unchecked", (cls,), {"train_list": [[n, None] for n, _ in cls.train_list],
                                           "test_list": [[n, None] for n, _ in cls.test_list],
                                           "meta": {**cls.meta, "md5": None}})
    assert np.array_equal(unchecked(str(tmp_path), train=True).data, arrays["train_x"].transpose(0, 2, 3, 1))


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_cifar_batch_that_carries_code_is_refused_without_running_it(tmp_path):
    write_cifar(tmp_path, hundred=False)
    marker = tmp_path / "ran"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    load_dataset.cache_clear()
    with pytest.raises(DataError, match="refused posix.system|refused os.system"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


# ---------------------------------------------------------------------------- missing roots


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_a_real_dataset_without_root_names_the_data_root_flag(name):
    with pytest.raises(DataError, match="--data-root") as err:
        load_dataset(name)
    assert name in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_an_empty_root_is_a_data_error_naming_it(tmp_path, name):
    with pytest.raises(DataError) as err:
        load_dataset(name, str(tmp_path / "nothing-here"))
    assert str(tmp_path / "nothing-here") in str(err.value)
