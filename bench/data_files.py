"""Cost of keying by content and of reading CIFAR safely, on a folder of CIFAR-10's size
(five 10,000-image train batches and a test batch of random pixels, 185 MB): the fingerprint
cold (every file hashed) and warm (memoised by each file's identity: stat calls only), a spec
built in a fresh process (what each CLI call pays), one batch through the checked reader
against plain pickle, and the whole dataset loaded.

Run: python -m bench.data_files
"""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from bench.common import machine, table  # noqa: E402
from otcore import datafiles  # noqa: E402
from otcore.cifar_pickle import read_batch  # noqa: E402
from otcore.config import DataSpec  # noqa: E402
from otcore.data import load_dataset  # noqa: E402


def write_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, 10_000).tolist(),
                 b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{i}.png".encode() for i in range(10_000)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    return folder


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    os.environ["OTCORE_CACHE_DIR"] = str(root / "cache")  # where the digests are kept between processes
    (root / "cache").mkdir()
    try:
        folder = write_folder(root)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        rows = [["fingerprint, cold (6 files hashed)", timed(lambda: DataSpec("cifar10", str(root)))],
                ["fingerprint, warm (memoised)", timed(lambda: DataSpec("cifar10", str(root)), repeat=100)]]
        code = f"from otcore.config import DataSpec; DataSpec('cifar10', {str(root)!r})"
        rows.append(["new process: import config + fingerprint",
                     timed(lambda: subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True))])
        rows.append(["new process: import config only", timed(lambda: subprocess.run(
            [sys.executable, "-c", "import otcore.config"], cwd=ROOT, check=True))])
        raw = (folder / "test_batch").read_bytes()
        rows.append(["one batch: plain pickle.loads (unsafe)", timed(lambda: pickle.loads(raw, encoding="latin1"), 3)])
        rows.append(["one batch: checked read_batch", timed(lambda: read_batch(raw, "labels", 10), 3)])
        load_dataset.cache_clear()
        rows.append(["load_dataset('cifar10'), whole", timed(lambda: load_dataset("cifar10", str(root)))])
        print(f"CIFAR-10-sized folder ({size:.0f} MB), {machine()}; files hashed: {datafiles.files_hashed}\n")
        print(table(["step", "seconds"], [[label, round(s, 4)] for label, s in rows]))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
