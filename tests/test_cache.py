"""Tests of otcore.cache with real files and real processes: damage, killed writers, races, no disk."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from otcore.cache import CacheEntry, DiskCache, default_cache
from otcore.config import TrainSpec, spec_hash

REPO = Path(__file__).resolve().parent.parent


def named(name: str) -> str:
    """A key for a test entry called `name` (a real CacheKey: entries store the settings their key hashes)."""
    return spec_hash("test-entry", name)


def make_entry(key: str, kind: str = "result", scale: float = 1.0) -> CacheEntry:
    torch.manual_seed(0)
    tensors = {"layer2.weight": torch.randn(8, 4) * scale, "layer1.weight": torch.randn(4, 3),
               "layer1.bias": torch.zeros(4, dtype=torch.float64), "steps": torch.tensor(12),
               "half": torch.ones(3, dtype=torch.bfloat16), "mask": torch.tensor([True, False])}
    return CacheEntry(key=key, kind=kind, config={"arch": "mlpnet", "widths": [4, 8], "seed": 0},
                      metrics={"test_accuracy": 0.93, "history": {"loss": [1.5, 0.7], "acc": [0.5, 0.9]},
                               "test": {"accuracy": 93.0, "loss": 0.25}, "train": {"accuracy": 97.5, "loss": 0.125}},
                      tensors=tensors)


def assert_same_entry(a: CacheEntry, b: CacheEntry) -> None:
    assert (a.key, a.kind, a.config, a.metrics, a.created) == (b.key, b.kind, b.config, b.metrics, b.created)
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        assert a.tensors[name].dtype == b.tensors[name].dtype and torch.equal(a.tensors[name], b.tensors[name])


class Counter:
    """A compute function that counts its calls in a file, as the racing processes do."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def __call__(self) -> CacheEntry:
        with open(self.path, "a") as f:
            f.write("computed\n")
        return make_entry(self.key)

    @property
    def calls(self) -> int:
        return len(self.path.read_text().splitlines()) if self.path.exists() else 0


def entry_path(cache: DiskCache, key: str) -> Path:
    return cache.root / f"{key}.safetensors"


@pytest.fixture
def key() -> str:
    return spec_hash("parent", TrainSpec())


def test_round_trip_keeps_tensors_order_and_metadata(tmp_path, key):
    cache = DiskCache(tmp_path / "cache")
    entry = make_entry(key)
    cache.store(entry)
    assert_same_entry(cache.load(key), entry)
    assert cache.writable


def test_empty_tensor_dict_round_trips(tmp_path):
    cache = DiskCache(tmp_path)
    entry = CacheEntry(key=named("curve"), kind="curve", config={}, metrics={"top": [3.0, 2.0]})
    cache.store(entry)
    assert_same_entry(cache.load(named("curve")), entry)


def test_miss_returns_none(tmp_path, key):
    assert DiskCache(tmp_path).load(key) is None


def test_loaded_tensors_are_private_copies(tmp_path, key):
    cache = DiskCache(tmp_path)
    cache.store(make_entry(key))
    cache.load(key).tensors["layer1.weight"].zero_()
    assert torch.equal(cache.load(key).tensors["layer1.weight"], make_entry(key).tensors["layer1.weight"])


def test_truncated_entry_is_removed_and_recomputed(tmp_path, key, caplog):
    cache = DiskCache(tmp_path)
    cache.store(make_entry(key))
    path = entry_path(cache, key)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        assert cache.load(key) is None
    assert "corrupt" in caplog.text and not path.exists()
    counter = Counter(tmp_path / "calls.txt", key)
    assert_same_entry(cache.get_or_compute(key, counter), cache.load(key))
    assert counter.calls == 1


def damage(path: Path, where: str, metric: bytes) -> None:
    """Damage a stored entry in place: flip one bit at `where` (in `metric`'s last digit for the header), or cut/pad it."""
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    if where == "truncated":
        del data[-3:]
    elif where == "appended":
        data += b"\0" * 8
    else:
        offset = {"last tensor byte": lambda: len(data) - 1, "first tensor byte": lambda: header_end,
                  "middle of the data": lambda: (header_end + len(data)) // 2,
                  "metrics in the header": lambda: data.index(metric) + len(metric) - 1,
                  "a tensor's shape": lambda: data.index(b'"shape":[3,5]') + 9}[where]()  # [3,5] -> [2,5]
        data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["last tensor byte", "middle of the data", "metrics in the header"])
def test_flipped_byte_is_detected_removed_and_recomputed(tmp_path, key, caplog, where):
    cache = DiskCache(tmp_path)
    cache.store(make_entry(key))
    path = entry_path(cache, key)
    damage(path, where, b"0.93")  # 0.93 -> 0.92, still valid JSON
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        listing = cache.listing()
        assert cache.entries() == [] and cache.load_record(key) is None  # checked again: no second warning
    assert listing.rows == [] and listing.skipped == [(key, "damaged (checksum mismatch)")]
    assert [r.getMessage() for r in caplog.records] == [f"cache entry {key} skipped: damaged (checksum mismatch)"]
    assert path.exists()  # a listing only reads; load() removes the damaged entry
    counter = Counter(tmp_path / "calls.txt", key)
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        recomputed = cache.get_or_compute(key, counter)
    assert "corrupt" in caplog.text
    assert [row.key for row in cache.entries()] == [key]
    assert counter.calls == 1
    assert_same_entry(recomputed, cache.load(key))
    assert torch.equal(cache.load(key).tensors["layer2.weight"], make_entry(key).tensors["layer2.weight"])


def every_dtype_entry(key: str) -> CacheEntry:
    """An entry holding a tensor of each dtype safetensors stores, scalars and an empty one among them."""
    torch.manual_seed(1)
    tensors = {"f32": torch.randn(3, 5), "f64": torch.randn(4, dtype=torch.float64),
               "f16": torch.randn(2, 2).half(), "bf16": torch.randn(7).bfloat16(),
               "i64": torch.arange(-3, 3), "i32": torch.tensor([[1, -2]], dtype=torch.int32),
               "i16": torch.tensor([300], dtype=torch.int16), "i8": torch.tensor([-5, 6], dtype=torch.int8),
               "u8": torch.arange(250, 256, dtype=torch.uint8), "mask": torch.tensor([True, False, True]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4)}
    return CacheEntry(key=key, kind="arrays", config={"seed": 1}, metrics={"values": [{"acc": 0.5}]}, tensors=tensors)


@pytest.mark.parametrize("make", [make_entry, every_dtype_entry])
def test_load_record_agrees_with_load(tmp_path, key, make):
    cache = DiskCache(tmp_path)
    cache.store(make(key))
    record, entry = cache.load_record(key), cache.load(key)
    assert (record.key, record.kind, record.config, record.metrics, record.created) == \
        (entry.key, entry.kind, entry.config, entry.metrics, entry.created)
    assert record.size == entry_path(cache, key).stat().st_size
    assert cache.load_record(named("other")) is None


def test_load_record_of_an_entry_without_tensors(tmp_path):
    cache = DiskCache(tmp_path)
    # A kind without a record schema (a 'hessian' entry must hold its real fields: otcore/records.py).
    cache.store(CacheEntry(key=named("curve1"), kind="curve", config={}, metrics={"top": [3.0, 2.0]}))
    assert cache.load_record(named("curve1")).metrics == {"top": [3.0, 2.0]}


@pytest.mark.parametrize("where", ["last tensor byte", "first tensor byte", "middle of the data",
                                   "metrics in the header", "a tensor's shape", "truncated", "appended"])
def test_load_record_of_a_damaged_entry_is_none_and_load_removes_it(tmp_path, key, where):
    cache = DiskCache(tmp_path)
    cache.store(every_dtype_entry(key))
    path = entry_path(cache, key)
    damage(path, where, b"0.5")  # 0.5 -> 0.4, still valid JSON
    assert cache.load_record(key) is None
    assert path.exists()  # the torch-free read leaves repairs to load()
    assert cache.load(key) is None and not path.exists()


def test_import_does_not_import_torch():
    code = "import sys, otcore.cache; print([m for m in ('torch', 'numpy', 'safetensors.torch') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_garbage_file_reads_as_a_miss(tmp_path, key):
    cache = DiskCache(tmp_path)
    entry_path(cache, key).write_bytes(os.urandom(300))
    assert cache.load(key) is None and cache.entries() == []
    assert not entry_path(cache, key).exists()


WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from otcore.cache import CacheEntry, DiskCache
    from otcore.config import spec_hash
    real_fsync = os.fsync
    def fsync_then_hang(fd):
        real_fsync(fd)
        print("written", flush=True)  # the temp file is complete, the rename has not happened
        time.sleep(600)
    os.fsync = fsync_then_hang
    cache = DiskCache(sys.argv[1])
    cache.store(CacheEntry(key=spec_hash("parent", sys.argv[2]), kind="parent", config={}, metrics={},
                           tensors={"w": torch.randn(4_000_000)}))
""")


def test_writer_killed_mid_write_leaves_no_entry(tmp_path, key):
    root = tmp_path / "cache"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root), "written"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    leftovers = list(root.glob(".*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 16_000_000  # it was killed mid-write
    cache = DiskCache(root)
    key = spec_hash("parent", "written")
    assert cache.load(key) is None and cache.entries() == [] and not entry_path(cache, key).exists()
    cache.clear()
    assert list(root.glob(".*.tmp")) == []


def test_stale_temp_files_are_swept_on_open(tmp_path):
    stale, fresh = tmp_path / ".abc.safetensors.x1.tmp", tmp_path / ".abc.safetensors.x2.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    DiskCache(tmp_path)
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a live writer


RACER = textwrap.dedent("""
    import hashlib, os, sys, time, torch
    from pathlib import Path
    from otcore.cache import CacheEntry, DiskCache
    from otcore.config import TrainSpec, spec_hash
    root, work, name = Path(sys.argv[1]), Path(sys.argv[3]), sys.argv[4]
    key = spec_hash("parent", TrainSpec())  # the test's key fixture, with its settings
    assert key == sys.argv[2]
    def compute():
        with open(work / "calls.txt", "a") as f:
            f.write(name + "\\n")
        time.sleep(1.0)  # a slow step: the others must wait, not compute
        torch.manual_seed(os.getpid())  # each process would produce different weights
        return CacheEntry(key=key, kind="result", config={}, metrics={"by": name},
                          tensors={"w": torch.randn(64, 64)})
    (work / f"ready-{name}").touch()
    while not (work / "go").exists():
        time.sleep(0.005)
    entry = DiskCache(root).get_or_compute(key, compute)
    digest = hashlib.sha256(entry.tensors["w"].numpy().tobytes()).hexdigest()
    (work / f"out-{name}").write_text(entry.metrics["by"] + " " + digest)
""")


def test_racing_processes_compute_once(tmp_path, key):
    root, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    names = [f"p{i}" for i in range(4)]
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(root), key, str(work), name], cwd=REPO, env=env)
             for name in names]
    try:
        deadline = time.time() + 60
        while not all((work / f"ready-{n}").exists() for n in names):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "racers did not start"
            time.sleep(0.02)
        (work / "go").touch()
        assert [p.wait(timeout=60) for p in procs] == [0] * 4
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert len((work / "calls.txt").read_text().splitlines()) == 1
    outputs = {(work / f"out-{n}").read_text() for n in names}
    assert len(outputs) == 1
    winner = outputs.pop().split()[0]
    assert DiskCache(root).load(key).metrics == {"by": winner}


def test_uncreatable_root_degrades_with_one_warning(tmp_path, key, caplog):
    (tmp_path / "afile").write_text("not a folder")
    counter = Counter(tmp_path / "calls.txt", key)
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        cache = DiskCache(tmp_path / "afile" / "cache")
        assert not cache.writable
        first = cache.get_or_compute(key, counter)
        second = cache.get_or_compute(key, counter)
        cache.store(make_entry(key))
        cache.delete(key)
        cache.clear()
    for got in (first, second):
        assert torch.equal(got.tensors["layer1.weight"], make_entry(key).tensors["layer1.weight"])
    assert counter.calls == 2  # nothing cached, everything still works
    assert cache.load(key) is None and cache.entries() == []
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_write_failure_after_open_degrades(tmp_path, key, caplog):
    root = tmp_path / "cache"
    cache = DiskCache(root)
    assert cache.writable
    shutil.rmtree(root)
    root.write_text("the folder went away")  # every write now fails with an OSError
    counter = Counter(tmp_path / "calls.txt", key)
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        cache.store(make_entry(named("other")))
        entry = cache.get_or_compute(key, counter)
    assert not cache.writable and counter.calls == 1
    assert torch.equal(entry.tensors["layer2.weight"], make_entry(key).tensors["layer2.weight"])
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_manifest_lists_entries_with_config_and_metrics(tmp_path):
    cache = DiskCache(tmp_path)
    keys = {kind: spec_hash(kind, TrainSpec(seed=1)) for kind in ("result", "arrays", "curve")}
    for kind, k in keys.items():
        cache.store(make_entry(k, kind=kind))
        time.sleep(0.01)
    rows = cache.entries()
    assert [r.key for r in rows] == [keys["curve"], keys["arrays"], keys["result"]]  # newest first
    for row in rows:
        assert row.config == {"arch": "mlpnet", "widths": [4, 8], "seed": 0}
        assert row.metrics["history"]["loss"] == [1.5, 0.7]
        assert row.size == entry_path(cache, row.key).stat().st_size
    assert [r.kind for r in cache.entries(kind="arrays")] == ["arrays"]
    cache.delete(keys["arrays"])
    assert {r.kind for r in cache.entries()} == {"result", "curve"}
    cache.clear()
    assert cache.entries() == [] and cache.load(keys["result"]) is None


def test_get_or_compute_hits_after_the_first_call(tmp_path, key):
    cache = DiskCache(tmp_path)
    counter = Counter(tmp_path / "calls.txt", key)
    first = cache.get_or_compute(key, counter)
    assert_same_entry(cache.get_or_compute(key, counter), first)
    assert counter.calls == 1
    with pytest.raises(ValueError, match="expected"):
        cache.get_or_compute(named("other"), counter)


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(ValueError, match="invalid cache key"):
        DiskCache(tmp_path).load("../outside")


def test_default_cache_reads_the_environment_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path / "first"))
    assert default_cache().root == tmp_path / "first"
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path / "second"))
    assert default_cache().root == tmp_path / "second" and (tmp_path / "second").is_dir()
    monkeypatch.delenv("OTCORE_CACHE_DIR")
    assert DiskCache(tmp_path / "explicit").root == tmp_path / "explicit"


def parent_like(key: str, accuracy=93.5) -> CacheEntry:
    """make_entry with a parent's record: every field its readers use (otcore.records.PARENT)."""
    entry = make_entry(key, kind="parent")
    entry.config = {"data": {"name": "digits"}, "model": {"arch": "mlpnet"}, "train": {"epochs": 1}}
    entry.metrics.update(test={"accuracy": accuracy, "loss": 0.25}, seconds=1.5, class_counts=[3, 4],
                         input_shape=[64], num_classes=10)
    return entry


def test_listing_skips_malformed_records_with_one_warning_each_and_keeps_the_good(tmp_path, caplog):
    cache = DiskCache(tmp_path)
    cache.store(parent_like(named("good")))
    cache.store(parent_like(named("text"), accuracy="93.5"))  # a string where a number belongs, checksum valid
    cache.store(CacheEntry(named("nostatus"), "sweep", {"data": {"name": "digits"}, "model": {"arch": "mlpnet"},
                                                        "step": "prune"}, {"done": 0, "total": 1}))
    cache.store(parent_like(named("future")))
    cache.store(CacheEntry(named("when"), "parent", {}, parent_like("x").metrics, created=1e300))  # no calendar shows it
    cache.store(parent_like(named("cut")))
    cut = entry_path(cache, named("cut"))
    cut.write_bytes(cut.read_bytes()[:50])  # a truncated header
    entry_path(cache, named("empty")).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        for _ in range(3):
            listing = cache.listing()
    assert [r.key for r in listing.rows] == [named("future"), named("good")]  # newest first
    reasons = dict(listing.skipped)
    assert sorted(reasons) == sorted(named(n) for n in ["cut", "empty", "nostatus", "text", "when"])
    assert reasons[named("text")] == "metrics.test.accuracy is the string '93.5', expected a number"
    assert reasons[named("nostatus")] == "metrics.status is missing"
    assert reasons[named("when")] == "created is 1e+300, expected a time in seconds since 1970"
    assert reasons[named("cut")].startswith("damaged (") and reasons[named("empty")].startswith("damaged (")
    assert len(caplog.records) == 5  # once per bad file, not once per listing
    assert listing.warning().startswith("5 damaged or unreadable cache entries skipped (")
    assert cache.load_record(named("text")) is None
    assert cache.load_record(named("good")).metrics["test"]["accuracy"] == 93.5


def test_each_file_version_is_hashed_once(tmp_path, monkeypatch):
    import otcore.cache as cache_module
    from otcore import entry_file

    hashed: list[int] = []
    real = entry_file.read_entry
    monkeypatch.setattr(entry_file, "read_entry", lambda f, size, with_tensors: hashed.append(size) or
                        real(f, size, with_tensors))
    cache = DiskCache(tmp_path)
    a, b = named("a"), named("b")
    cache.store(parent_like(a))
    time.sleep(0.01)
    cache.store(parent_like(b))
    for _ in range(3):
        assert [r.key for r in cache.listing().rows] == [b, a]
        assert cache.load_record(a) is not None
    assert len(hashed) == 2
    cache.store(parent_like(a, accuracy=90.0))  # a new version of one entry: hashed again, the other not
    assert cache.load_record(a).metrics["test"]["accuracy"] == 90.0 and len(cache.entries()) == 2
    assert len(hashed) == 3
    cache.delete(b)  # a removed entry leaves the memo at the next listing: it never outgrows the cache
    assert [r.key for r in cache.listing().rows] == [a]
    assert [name for name in cache_module._VERIFIED if name.startswith(str(tmp_path))] == [str(entry_path(cache, a))]


def test_verification_in_small_chunks_agrees_with_load(tmp_path, monkeypatch):
    from otcore import entry_file

    monkeypatch.setattr(entry_file, "CHUNK", 7)  # every tensor read in many uneven pieces
    cache = DiskCache(tmp_path)
    key = named("arrays")
    stored = every_dtype_entry(key)
    cache.store(stored)
    record, entry = cache.load_record(key), cache.load(key)
    assert (record.kind, record.metrics, record.created) == (entry.kind, entry.metrics, entry.created)
    assert_same_entry(entry, stored)  # loading reads in the same small chunks


def test_a_key_keeps_its_settings_through_pickle_copy_and_json():
    import copy
    import json
    import pickle

    from otcore.cache_key import CacheKey, settings_digest
    from otcore.config import DataSpec, ModelSpec
    from otcore.keys import parent_key

    key = parent_key(DataSpec(), ModelSpec(), TrainSpec(seed=3))
    assert isinstance(key, CacheKey) and settings_digest(key.settings) == key
    assert key.settings[1] == "parent" and key.settings[-1]["seed"] == 3
    for twin in (pickle.loads(pickle.dumps(key)), copy.deepcopy(key), CacheKey(json.loads(json.dumps(key.settings)))):
        assert twin == key and twin.settings == key.settings  # what a record stores re-derives the same key


def test_store_refuses_a_key_that_does_not_carry_its_settings(tmp_path, key):
    cache = DiskCache(tmp_path)
    with pytest.raises(ValueError, match="does not carry its settings"):
        cache.store(make_entry(str(key)))  # a plain string: its entry could not be checked on reading
    assert cache.keys() == []

