"""The Hessian step of the study: the `hessian` command's contract, caching, curves that agree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.support import REPO
from otcore.config import DataSpec, HessianSpec

QUICK = ["--lanczos-iters", "12", "--trace-probes", "8", "--power-iters", "30", "--lambda-points", "5"]


def _hessian(*args: str, cache) -> dict:
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "otcore", "hessian", *args, *QUICK, "--json"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _check_model(entry: dict, top_k: int, points: int) -> None:
    values = entry["top_eigenvalues"]
    assert len(values) == top_k and values == sorted(values, reverse=True) and values[0] > 0
    assert entry["trace"] > 0 and entry["trace_method"] == "exact" and entry["trace_std_error"] == 0.0
    nodes, weights = entry["density"]["nodes"], entry["density"]["weights"]
    assert len(nodes) == len(weights) == 1 and abs(sum(weights[0]) - 1) < 1e-4
    assert max(nodes[0]) == pytest.approx(values[0], rel=0.05)  # SLQ's extreme Ritz value is the top eigenvalue
    curve = entry["perturbation"]
    assert curve["lambdas"][0] == -0.5 and curve["lambdas"][-1] == 0.5 and len(curve["loss"]) == points


def test_hessian_command_on_paper_checkpoints_and_real_mnist_files(tmp_path, make_mnist_root):
    from otcore.checkpoints import save_checkpoint
    from otcore.models import build_model
    from otcore.train import init_model

    root, _ = make_mnist_root("MNIST", n_train=20, n_test=30)
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"model_{seed}.checkpoint"
        save_checkpoint(init_model(build_model("mlpnet", (1, 28, 28), 10), seed).state_dict(), path, format="paper")
        paths.append(str(path))
    args = ["--arch", "mlpnet", "--dataset", "mnist", "--data-root", str(root), "--parents", *paths,
            "--split", "test", "--batches", "1", "--batch-size", "1000", "--top-k", "3"]
    out = _hessian(*args, cache=tmp_path / "cache")
    assert [m["name"] for m in out["models"]] == ["parent 1", "parent 2"]
    for entry in out["models"]:
        _check_model(entry, 3, 5)
        assert not entry["cached"]
    again = _hessian(*args, cache=tmp_path / "cache")
    assert all(m["cached"] for m in again["models"])
    assert [m["top_eigenvalues"] for m in again["models"]] == [m["top_eigenvalues"] for m in out["models"]]


def test_without_parents_it_analyses_the_cached_parents_and_their_fusion(digits_cli_train, tmp_path):
    for entry in digits_cli_train.cache.glob("*.safetensors"):  # a copy: other tests expect that cache untouched
        shutil.copy2(entry, tmp_path)
    out = _hessian("--dataset", "digits", "--arch", "mlpnet", "--top-k", "2", cache=tmp_path)
    assert [m["name"] for m in out["models"]] == ["parent 1", "parent 2", "OT fusion"]
    for entry in out["models"]:
        _check_model(entry, 2, 5)
        assert entry["test_accuracy"] > 90
    env = {**os.environ, "OTCORE_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    listed = subprocess.run([sys.executable, "-m", "otcore", "list"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and listed.stdout.count("hessian") == 3, listed.stderr


def test_the_loss_curve_passes_through_the_models_loss_and_rises_along_the_top_eigenvector(digits_parents):
    from otcore.analysis import curvature
    from otcore.pipeline import dataset
    from otcore.train import evaluate

    spec = HessianSpec(batch_size=450, lanczos_iters=12, trace_probes=8, lambda_points=11)
    parent = digits_parents[0]
    result = curvature(DataSpec(), parent.name, parent.key, parent.model, spec)
    x, y = dataset(DataSpec()).split("test")
    lambdas = result.perturbation["lambdas"]
    middle = min(range(len(lambdas)), key=lambda i: abs(lambdas[i]))
    assert lambdas[middle] == pytest.approx(0.0, abs=1e-6)
    assert result.perturbation["loss_mean"][middle] == pytest.approx(evaluate(parent.model, x, y).loss, rel=1e-4)
    # Along the sharpest direction the loss grows at least as fast as along a random unit direction.
    top, rand = result.perturbation["loss_mean"], result.random_direction["loss_mean"]
    assert top[0] + top[-1] >= rand[0] + rand[-1]
    assert result.eigenvectors is not None and torch.allclose(result.eigenvectors.norm(dim=1), torch.ones(3), atol=1e-4)
