"""Cache faults seen from the user's side: the CLI keeps working and never serves a damaged result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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
    env = {**os.environ, "OTCORE_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
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
