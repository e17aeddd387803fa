"""Cache faults seen from the user's side: the CLI keeps working and never serves a damaged result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from otcore.config import spec_hash
from tests.faults.conftest import REPO, cli

TRAIN = ["train", "--dataset", "digits", "--arch", "mlpnet", "--epochs", "3", "--json"]


def test_an_unwritable_cache_degrades_to_no_caching_with_a_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = cli(*TRAIN, cache=blocker / "cache")
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "cach" in done.stderr.lower()
    out = json.loads(done.stdout)
    assert len(out["parents"]) == 2 and all(p["test_accuracy"] > 80 for p in out["parents"])


def test_a_process_killed_mid_training_leaves_nothing_that_reads_as_valid(tmp_path):
    env = {**os.environ, "OTCORE_CACHE_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "otcore", *TRAIN], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*.lock")):
        time.sleep(0.05)  # the lock file appears when the first parent's computation starts
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(tmp_path.glob("*.safetensors"))  # no half-written entry became visible
    done = cli(*TRAIN, cache=tmp_path)
    assert done.returncode == 0 and not any(p["cached"] for p in json.loads(done.stdout)["parents"])


def test_a_corrupted_entry_is_detected_and_recomputed_to_the_same_answer(tmp_path):
    first = json.loads(cli(*TRAIN, cache=tmp_path).stdout)
    for entry in tmp_path.glob("*.safetensors"):
        data = bytearray(entry.read_bytes())
        data[-100] ^= 0xFF  # one flipped byte in the weights
        entry.write_bytes(bytes(data))
    done = cli(*TRAIN, cache=tmp_path)
    second = json.loads(done.stdout)
    assert "corrupt" in done.stderr
    assert not any(p["cached"] for p in second["parents"])
    assert [p["test_accuracy"] for p in second["parents"]] == [p["test_accuracy"] for p in first["parents"]]


def _flip_leading_digit(path, value: float) -> None:
    data, text = path.read_bytes(), json.dumps(value).encode()
    assert data.count(text) == 1
    path.write_bytes(data.replace(text, (b"1" if text[:1] == b"9" else b"9") + text[1:]))


def test_list_skips_tampered_and_malformed_entries_with_one_warning_each(parents_cache, tmp_path):
    import shutil

    from otcore.cache import DiskCache

    for entry in parents_cache.glob("*.safetensors"):
        shutil.copy2(entry, tmp_path)
    trained = {e["key"]: e for e in json.loads(cli("list", "--json", cache=tmp_path).stdout)["entries"]}
    assert len(trained) == 2
    tampered, good = sorted(trained)
    _flip_leading_digit(tmp_path / f"{tampered}.safetensors", trained[tampered]["metrics"]["test"]["accuracy"])
    cache = DiskCache(tmp_path)
    text = cache.load(good)
    text.key, text.metrics["test"]["accuracy"] = spec_hash("parent", "textaccuracy"), "97.5"
    cache.store(text)  # a checksum that verifies over a string where a number belongs
    (tmp_path / "truncated.safetensors").write_bytes((tmp_path / f"{good}.safetensors").read_bytes()[:300])
    done = cli("list", "--json", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [e["key"] for e in json.loads(done.stdout)["entries"]] == [good]
    assert json.loads(done.stdout)["entries"][0]["metrics"] == trained[good]["metrics"]
    warnings = sorted(line for line in done.stderr.splitlines() if line.strip())
    assert warnings == sorted([f"WARNING: cache entry {tampered} skipped: damaged (checksum mismatch)",
                               f"WARNING: cache entry {text.key} skipped: metrics.test.accuracy is the string '97.5', "
                               "expected a number",
                               "WARNING: cache entry truncated skipped: damaged (header length exceeds the file)"])
    text_mode = cli("list", cache=tmp_path)
    assert text_mode.returncode == 0 and text_mode.stdout.count("\n") == 1 and good in text_mode.stdout
    # train takes the tampered parent as a miss: it is trained again, to its true accuracy.
    again = json.loads(cli("train", "--dataset", "digits", "--arch", "mlpnet", "--json", cache=tmp_path).stdout)
    assert {p["key"]: p["test_accuracy"] for p in again["parents"]} == \
           {k: e["metrics"]["test"]["accuracy"] for k, e in trained.items()}
    assert [p["cached"] for p in again["parents"] if p["key"] == tampered] == [False]


def test_list_json_stays_strict_json_over_a_diverged_entry(tmp_path):
    from otcore.cache import CacheEntry, DiskCache

    metrics = {"test": {"accuracy": 10.0, "loss": float("nan")}, "train": {"accuracy": 9.9, "loss": float("inf")},
               "seconds": 1.0, "class_counts": [5, 5], "input_shape": [64], "num_classes": 10}
    config = {"data": {"name": "digits"}, "model": {"arch": "mlpnet"}, "train": {}}
    DiskCache(tmp_path).store(CacheEntry(spec_hash("parent", "diverged"), "parent", config, metrics))
    done = cli("list", "--json", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "NaN" not in done.stdout and "Infinity" not in done.stdout
    [entry] = json.loads(done.stdout)["entries"]
    assert entry["metrics"] == {**metrics, "test": {"accuracy": 10.0, "loss": None}, "train": {"accuracy": 9.9, "loss": None}}
