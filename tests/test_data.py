"""Tests of otcore.data: the digits split, seeded samples, real file formats, hostile files, content fingerprints."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.support import REPO
from otcore.config import DataSpec, ModelSpec, SpecError, TrainSpec
from otcore.keys import parent_key
from otcore.data import DataError, list_datasets, load_dataset, sample_inputs
from tests.support import write_idx, write_mnist_like
from tests.faults.hostile_datasets import (FakeArray, FakeDtype, cifar_batch, idx_bytes, python2_batch,
                                        shared_reference_batch, structured_offset_batch, write_cifar10)

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


# ---------------------------------------------------------------------------- hostile CIFAR batches


def test_python2_and_python3_batches_of_every_protocol_read_alike(tmp_path):
    """The published files are Python 2 pickles; files re-saved by Python 3 use protocols 2 to 5."""
    from otcore.cifar_pickle import read_batch

    pixels = np.random.default_rng(3).integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [9, 0, 3, 3, 7]
    for raw in [python2_batch(pixels, labels)] + [cifar_batch(pixels, labels, protocol=p) for p in (2, 3, 4, 5)]:
        x, y = read_batch(raw, "labels", 10)
        assert x.dtype == np.uint8 and x.shape == (5, 3, 32, 32)
        assert np.array_equal(x.reshape(5, -1), pixels) and y.tolist() == labels


@pytest.mark.parametrize("raw, message", [
    (structured_offset_batch(), "refused dtype 'V8'"),
    (structured_offset_batch(typestr="u1"), "refused a dtype with fields"),
    (shared_reference_batch(), "shared references are counted as often as they are reached"),
    (shared_reference_batch(copies=3, images=4), "'data' is not one uint8 array"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}), "refused dtype 'f4'"),
    (pickle.dumps({"data": np.zeros((2, 3, 1024), np.uint8), "labels": [0, 1]}), "is not (images, 3072)"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, -1]}), "label -1 in labels"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}), "label 10 in labels"),
    (pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}), "3 images but 2 labels"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1.5]}), "not all integers"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "extra": 1}), "unexpected entry 'extra'"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "filenames": [b"x" * 5000] * 2}),
     "a file name is not a string"),
    (pickle.dumps([1, 2]), "not a CIFAR batch"),
    (b"\x80\x04garbage", "not a CIFAR batch"),
], ids=lambda v: v if isinstance(v, str) else "batch")
def test_a_hostile_batch_is_refused_by_name_before_numpy_sees_it(raw, message):
    from otcore.cifar_pickle import read_batch

    with pytest.raises(DataError, match=re.escape(message)):
        read_batch(raw, "labels", 10)


def test_an_array_payload_that_lies_about_its_size_is_refused():
    from otcore.cifar_pickle import read_batch

    u1 = FakeDtype("u1", (3, "|", None, None, None, -1, -1, 0))
    short = FakeArray((4, 3072), u1, b"\0" * (4 * 3072 - 1))
    with pytest.raises(DataError, match="declares 12,288 bytes but holds 12,287"):
        read_batch(pickle.dumps({"data": short, "labels": [0] * 4}, protocol=2), "labels", 10)
    huge = FakeArray((2**40, 3072), u1, b"\0" * 3072)
    with pytest.raises(DataError, match="declares"):
        read_batch(pickle.dumps({"data": huge, "labels": [0]}, protocol=2), "labels", 10)


def test_a_structured_dtype_batch_in_a_cifar_folder_is_a_data_error(tmp_path):
    write_cifar10(tmp_path, structured_offset_batch())
    with pytest.raises(DataError, match=r"could not read cifar10 from .*test_batch: refused dtype 'V8'"):
        load_dataset("cifar10", str(tmp_path))


# ---------------------------------------------------------------------------- hostile IDX files


def _replace(root: Path, folder: str, name: str, raw: bytes) -> None:
    (root / folder / "raw" / name).write_bytes(raw)


@pytest.mark.parametrize("name, raw, message", [
    ("train-labels-idx1-ubyte", idx_bytes(np.full(20, 10, np.uint8)), "has label 10; mnist has 10 classes"),
    ("train-labels-idx1-ubyte", idx_bytes(np.zeros(19, np.uint8)), "has 20 images but train-labels-idx1-ubyte has 19"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((20, 28, 28), np.float32), type_code=0x0D),
     "holds 32-bit floats data; MNIST files hold unsigned bytes"),
    ("train-images-idx3-ubyte", bytes([0, 0, 8, 0]), "has 0 dimensions, expected 3"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros(0, np.uint8), dims=(0, 28, 28)), "no examples"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((2, 28, 28), np.uint8), dims=(60000, 28, 28)),
     "is 1,584 bytes but its header (60000, 28, 28) says 47,040,016"),
    ("t10k-images-idx3-ubyte", b"\x1f\x8b\x08\x00", "not an IDX file"),
], ids=["label 10", "count", "floats", "0 dims", "no examples", "size", "gzip"])
def test_a_hostile_idx_file_is_one_data_error_naming_it(make_mnist_root, name, raw, message):
    root, _ = make_mnist_root("MNIST")
    _replace(root, "MNIST", name, raw)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        load_dataset("mnist", str(root))
    assert str(root) in str(err.value) and name in str(err.value)


def test_a_fifo_or_a_device_as_a_data_file_is_refused_without_blocking(make_mnist_root):
    root, _ = make_mnist_root("MNIST")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.unlink()
    os.mkfifo(images)  # opening it for reading would wait for a writer for ever
    with pytest.raises(DataError, match="train-images-idx3-ubyte is not a regular file"):
        load_dataset("mnist", str(root))
    with pytest.raises(SpecError, match="is not a regular file"):
        DataSpec("mnist", str(root))
    images.unlink()
    images.symlink_to("/dev/zero")  # endless
    with pytest.raises(SpecError, match="is not a regular file"):
        DataSpec("mnist", str(root))


def test_an_oversize_data_file_is_refused_before_it_is_read(make_mnist_root, monkeypatch):
    from otcore import datafiles

    root, _ = make_mnist_root("MNIST")
    monkeypatch.setattr(datafiles, "MAX_FILE_BYTES", 1000)  # the train images are 15,696 bytes
    hashed = datafiles.files_hashed
    with pytest.raises(SpecError, match="train-images-idx3-ubyte is 15,696 bytes, over the limit of 1,000"):
        DataSpec("mnist", str(root))
    assert datafiles.files_hashed == hashed


# ---------------------------------------------------------------------------- content fingerprints


def test_specs_of_different_folders_have_different_keys_and_same_content_the_same(make_mnist_root, tmp_path):
    """Keys hold what the files say, not where they are: a copy of a folder shares its parents."""
    root_a, _ = make_mnist_root("MNIST", seed=0)
    root_b = tmp_path / "other"
    write_mnist_like(root_b, "MNIST", seed=1)
    copy = tmp_path / "copy"
    shutil.copytree(root_a, copy)
    a, b, c = (DataSpec("mnist", str(r)) for r in (root_a, root_b, copy))
    assert len(a.fingerprint) == 32 and a.fingerprint != b.fingerprint and a.fingerprint == c.fingerprint
    keys = [parent_key(s, ModelSpec(), TrainSpec()) for s in (a, b, c)]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert load_dataset("mnist", str(root_a)).fingerprint == a.fingerprint  # what was read is what was keyed
    assert DataSpec("fashion-mnist", str(make_mnist_root("FashionMNIST")[0])).fingerprint != a.fingerprint


def test_parents_of_two_folders_are_two_trainings_and_a_copy_is_a_cache_hit(make_mnist_root, tmp_path,
                                                                            one_torch_thread):
    from otcore.cache import DiskCache
    from otcore.pipeline import train_parents

    root_a, _ = make_mnist_root("MNIST", seed=0)
    root_b = tmp_path / "other"
    write_mnist_like(root_b, "MNIST", seed=1)
    cache, spec = DiskCache(tmp_path / "cache"), TrainSpec(epochs=1, batch_size=10)
    first = train_parents(DataSpec("mnist", str(root_a)), ModelSpec(), spec, [0], "cpu", cache=cache)[0]
    other = train_parents(DataSpec("mnist", str(root_b)), ModelSpec(), spec, [0], "cpu", cache=cache)[0]
    assert first.key != other.key and not first.metrics["cached"] and not other.metrics["cached"]
    assert not torch.equal(first.model.fc1.weight, other.model.fc1.weight)  # same seed, other images
    shutil.copytree(root_a, tmp_path / "copy")
    again = train_parents(DataSpec("mnist", str(tmp_path / "copy")), ModelSpec(), spec, [0], "cpu", cache=cache)[0]
    assert again.key == first.key and again.metrics["cached"]
    assert torch.equal(again.model.fc1.weight, first.model.fc1.weight)


def test_the_fingerprint_is_hashed_once_per_file_version(make_mnist_root):
    from otcore import datafiles

    root, arrays = make_mnist_root("MNIST")
    start = datafiles.files_hashed
    first = DataSpec("mnist", str(root)).fingerprint
    assert datafiles.files_hashed == start + 4  # four files read once
    for _ in range(3):
        assert DataSpec("mnist", str(root)).fingerprint == first
    assert datafiles.files_hashed == start + 4  # unchanged size and times: no file is read again
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))  # touched only
    assert DataSpec("mnist", str(root)).fingerprint == first  # same bytes, same fingerprint
    assert datafiles.files_hashed == start + 5  # but that file was read again to know it
    relabelled = arrays["test_y"].copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    write_idx(labels, relabelled)  # same size, one label changed
    changed = DataSpec("mnist", str(root)).fingerprint
    assert changed != first and datafiles.files_hashed == start + 6


def test_files_changed_after_the_spec_was_made_are_refused_not_keyed_wrongly(make_mnist_root):
    from otcore.pipeline import dataset

    root, arrays = make_mnist_root("MNIST")
    spec = DataSpec("mnist", str(root))
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", (arrays["test_y"] + 1) % 10)
    with pytest.raises(DataError, match="changed after the settings were read"):
        dataset(spec)
    fresh = DataSpec("mnist", str(root))
    assert dataset(fresh).y_test.tolist() == ((arrays["test_y"] + 1) % 10).tolist()


def test_digits_are_fingerprinted_without_importing_scikit_learn_or_numpy():
    code = ("import sys\nfrom otcore.config import DataSpec\n"
            "print(DataSpec().fingerprint, [m for m in ('sklearn', 'numpy', 'torch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    fingerprint, imported = proc.stdout.split(" ", 1)
    assert proc.returncode == 0 and imported.strip() == "[]", proc.stderr
    assert fingerprint == DataSpec().fingerprint == load_dataset("digits").fingerprint and len(fingerprint) == 32


def test_a_missing_root_is_a_spec_error_and_an_absent_one_waits_for_the_loader(tmp_path):
    with pytest.raises(SpecError, match=f"could not read mnist from {tmp_path / 'nope'}: no such folder"):
        DataSpec("mnist", str(tmp_path / "nope"))
    assert DataSpec("mnist").fingerprint == ""  # the loader asks for the root
    with pytest.raises(SpecError, match=r"cifar-10-batches-py/data_batch_1 is missing \(expected torchvision"):
        DataSpec("cifar10", str(tmp_path))


def test_a_new_process_reuses_the_digests_of_an_earlier_one(make_mnist_root, tmp_path):
    """The memo is kept in the cache folder: each CLI call pays stat calls, not a hash of the dataset."""
    root, _ = make_mnist_root("MNIST")
    code = ("from otcore import datafiles\nfrom otcore.config import DataSpec\n"
            "datafiles._STORE_MIN_FILE = 0\n"  # these files are small; real ones are kept from 1 MiB up
            f"print(DataSpec('mnist', {str(root)!r}).fingerprint, datafiles.files_hashed)")
    env = {**os.environ, "OTCORE_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "cache").mkdir()
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == [DataSpec("mnist", str(root)).fingerprint, "4"] and runs[1] == [runs[0][0], "0"]
    (tmp_path / "cache" / ".fingerprints.json").write_text("[[1, 2], {]")  # damaged: ignored, rebuilt
    again = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60, check=True).stdout.split()
    assert again == [runs[0][0], "4"]
