"""Tests of `python -m otcore` as a user runs it: real processes, real cache folders, real files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.support import REPO, copy_cache

FUSE_KEYS = {"parents", "ot_fusion", "vanilla_average", "prediction_ensemble", "seconds"}


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "otcore", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def one_json_object(proc: subprocess.CompletedProcess) -> dict:
    """stdout of a --json run: exactly one JSON object on one line, nothing else."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    return out


@pytest.fixture(scope="module")
def trained(digits_cli_train, tmp_path_factory):
    """`train` twice: the first run (the session's) trains, the second reads, in a copy of its cache folder (this
    module's fusions write there: other tests expect the session's folder to hold its two parents only)."""
    cache = copy_cache(digits_cli_train.cache, tmp_path_factory.mktemp("cli-cache"))
    args = ("train", "--dataset", "digits", "--arch", "mlpnet", "--json")
    second = run_cli(*args, cache=cache)
    return SimpleNamespace(cache=cache, first=digits_cli_train.proc, second=second)


def test_train_json_reports_two_freshly_trained_parents(trained):
    out = one_json_object(trained.first)
    parents = out["parents"]
    assert [p["name"] for p in parents] == ["parent 1", "parent 2"] and [p["seed"] for p in parents] == [0, 1]
    assert all(p["test_accuracy"] >= 95.0 for p in parents)
    assert [p["cached"] for p in parents] == [False, False]
    assert parents[0]["key"] != parents[1]["key"]


def test_train_again_reports_both_parents_cached(trained):
    first, second = one_json_object(trained.first)["parents"], one_json_object(trained.second)["parents"]
    assert [p["cached"] for p in second] == [True, True]
    assert [(p["key"], p["test_accuracy"]) for p in second] == [(p["key"], p["test_accuracy"]) for p in first]


HEAVY = {"torch", "torchvision", "numpy", "scipy", "ot", "pandas", "streamlit"}  # what a cached train must not import


@pytest.mark.parametrize("flags", [("--json",), ()], ids=["json", "text"])
def test_cached_train_never_imports_torch_and_prints_what_the_pipeline_prints(trained, monkeypatch, capsys, flags):
    args = ("train", "--dataset", "digits", "--arch", "mlpnet", *flags)
    env = {**os.environ, "OTCORE_CACHE_DIR": str(trained.cache)}
    fast = subprocess.run([sys.executable, "-X", "importtime", "-m", "otcore", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert fast.returncode == 0, fast.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in fast.stderr.splitlines() if line.startswith("import time:")}
    assert "otcore.cli" in imported and not {name.split(".")[0] for name in imported} & HEAVY
    # The same call through the pipeline (train_parents loading both parents), in this process.
    from otcore import cli

    monkeypatch.setenv("OTCORE_CACHE_DIR", str(trained.cache))
    monkeypatch.setattr(cli.train, "cached_parents", lambda args: None)  # the torch-free path, switched off
    assert cli.main(list(args)) == 0
    assert fast.stdout == capsys.readouterr().out
    if flags:
        assert [p["cached"] for p in json.loads(fast.stdout)["parents"]] == [True, True]


def test_train_retrains_only_a_damaged_parent(trained, tmp_path):
    first = one_json_object(trained.first)["parents"]
    cache = tmp_path / "cache"
    cache.mkdir()
    for p in first:
        shutil.copy(trained.cache / f"{p['key']}.safetensors", cache)
    damaged = cache / f"{first[1]['key']}.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0x01  # the last weight's last byte
    damaged.write_bytes(bytes(data))
    out = one_json_object(run_cli("train", "--dataset", "digits", "--arch", "mlpnet", "--json", cache=cache))
    assert [p["cached"] for p in out["parents"]] == [True, False]
    assert [p["key"] for p in out["parents"]] == [p["key"] for p in first]
    assert [p["cached"] for p in one_json_object(run_cli("train", "--json", cache=cache))["parents"]] == [True, True]


def test_progress_goes_to_stderr_not_stdout(trained):
    assert "training parent 2 of 2" in trained.first.stderr
    assert "training parent" not in trained.first.stdout
    assert "training parent" not in trained.second.stderr  # nothing was trained the second time


def test_list_json_shows_the_parent_entries_with_config_and_metrics(trained):
    out = one_json_object(run_cli("list", "--json", cache=trained.cache))
    parents = {p["key"]: p for p in one_json_object(trained.first)["parents"]}
    entries = [e for e in out["entries"] if e["kind"] == "parent"]
    assert sorted(e["key"] for e in entries) == sorted(parents)
    for entry in entries:
        config = entry["config"]
        assert config["data"]["name"] == "digits" and config["model"]["arch"] == "mlpnet"
        assert config["train"]["seed"] == parents[entry["key"]]["seed"] and config["train"]["epochs"] == 10
        assert entry["metrics"]["test"]["accuracy"] == parents[entry["key"]]["test_accuracy"]
        assert entry["bytes"] > 0


def test_fuse_json_on_the_cached_parents(trained):
    proc = run_cli("fuse", "--dataset", "digits", "--json", cache=trained.cache)
    out = one_json_object(proc)
    assert FUSE_KEYS <= set(out)
    parents = one_json_object(trained.first)["parents"]
    assert out["parents"] == [p["test_accuracy"] for p in parents]
    assert "training parent" not in proc.stderr  # the parents came from the cache
    for method in ("ot_fusion", "vanilla_average", "prediction_ensemble"):
        assert 0.0 <= out[method] <= 100.0
    assert out["ot_fusion"] > 50.0 and out["prediction_ensemble"] > 90.0  # percent, not fractions
    assert {"activations", "fusion"} <= set(out["seconds"])
    assert out["cached"] is False


@pytest.mark.parametrize("args, needle", [
    (("fuse", "--reg", "-1", "--json"), "reg"),
    (("train", "--epochs", "-1", "--json"), "epochs"),
    (("train", "--dataset", "mnist", "--json"), "--data-root"),
])
def test_bad_values_exit_2_with_one_error_line(tmp_path, args, needle):
    proc = run_cli(*args, cache=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_fuse_paper_checkpoints_on_real_mnist_files_by_activations(tmp_path, make_mnist_root):
    from otcore.checkpoints import save_checkpoint
    from otcore.data import load_dataset
    from otcore.models import build_model
    from otcore.train import evaluate

    root, _ = make_mnist_root("MNIST")
    paths, nets = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_model("mlpnet", (1, 28, 28), 10)
        path = tmp_path / f"mlpnet_seed{seed}.pth"
        save_checkpoint(net.state_dict(), path, format="paper")
        paths.append(str(path))
        nets.append(net)
    proc = run_cli("fuse", "--parents", *paths, "--dataset", "mnist", "--data-root", str(root), "--mode", "acts",
                   "--act-samples", "20", "--json", cache=tmp_path / "cache")
    out = one_json_object(proc)
    assert FUSE_KEYS <= set(out)
    assert {"activations", "fusion"} <= set(out["seconds"]) and out["seconds"]["activations"] > 0.0
    # The parents' scores are those of the saved networks on the 10 test images written above.
    load_dataset.cache_clear()
    data = load_dataset("mnist", str(root))
    load_dataset.cache_clear()
    expected = [evaluate(net, data.x_test, data.y_test).accuracy for net in nets]
    assert out["parents"] == pytest.approx(expected, abs=1e-4)
    for method in ("ot_fusion", "vanilla_average", "prediction_ensemble"):
        assert 0.0 <= out[method] <= 100.0
