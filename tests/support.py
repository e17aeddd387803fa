"""Helpers the tests share (not fixtures): the repository's root and writers of real-format dataset files."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as LeCun's MNIST: big-endian magic 0x08_00_0000 + ndim (uint8 data), then the dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def write_mnist_like(root: Path, folder: str = "MNIST", n_train: int = 20, n_test: int = 10,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 images and labels as torchvision's raw files `root/<folder>/raw/*-idx?-ubyte`."""
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_y": (np.arange(n_train) % 10).astype(np.uint8),
              "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_y": ((np.arange(n_test) * 3) % 10).astype(np.uint8)}
    raw = root / folder / "raw"
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"{split}_x"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"{split}_y"])
    return arrays


def copy_cache(source: Path, folder: Path) -> Path:
    """Copy a cache folder's entries into `folder` (the session's parents, in a cache of a test's own); return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in Path(source).glob("*.safetensors"):
        shutil.copy2(entry, folder)
    return folder
