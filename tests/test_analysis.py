"""The Hessian step of the study: the `hessian` command's contract, caching, curves that agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support import copy_cache, REPO
from otcore.config import DataSpec, HessianSpec

QUICK = ["--lanczos-iters", "12", "--trace-probes", "8", "--power-iters", "30", "--lambda-points", "5"]


def _hessian(*args: str, cache) -> dict:
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache)}
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
    copy_cache(digits_cli_train.cache, tmp_path)  # a copy: other tests expect that cache untouched
    out = _hessian("--dataset", "digits", "--arch", "mlpnet", "--top-k", "2", "--paths", "naive", "ot-weights",
                   cache=tmp_path)
    assert [m["name"] for m in out["models"]] == ["parent 1", "parent 2", "OT fusion"]
    for entry in out["models"]:
        _check_model(entry, 2, 5)
        assert entry["test_accuracy"] > 90
    naive, aligned = out["paths"]
    assert [naive["alignment"], aligned["alignment"]] == ["naive", "ot-weights"] and len(aligned["loss"]) == 11
    # Measured on the digits test split (all of it): naive 0.906, OT-aligned 0.019.
    assert naive["barrier"] > 0.5 and aligned["barrier"] < 0.1
    assert aligned["midpoint_loss"] == pytest.approx(aligned["loss"][5])
    env = {**os.environ, "OTCORE_CACHE_DIR": str(tmp_path)}
    listed = subprocess.run([sys.executable, "-m", "otcore", "list"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and listed.stdout.count("hessian") == 3, listed.stderr
    assert listed.stdout.count("interpolation") == 2


def test_the_loss_curve_passes_through_the_models_loss_and_rises_along_the_top_eigenvector(digits_parents):
    from otcore.analysis import curvature
    from otcore.pipeline import dataset
    from otcore.train import evaluate

    spec = HessianSpec(batch_size=450, lanczos_iters=12, trace_probes=8, lambda_points=11)
    parent = digits_parents[0]
    result = curvature(DataSpec(), parent.name, parent.key, parent.model, spec)
    x, y = dataset(DataSpec()).split("test")
    lambdas = result.perturbation.lambdas
    middle = min(range(len(lambdas)), key=lambda i: abs(lambdas[i]))
    assert lambdas[middle] == pytest.approx(0.0, abs=1e-6)
    assert result.perturbation.loss[middle] == pytest.approx(evaluate(parent.model, x, y).loss, rel=1e-4)
    # Along the sharpest direction the loss grows at least as fast as along a random unit direction.
    top, rand = result.perturbation.loss, result.random_direction.loss
    assert top[0] + top[-1] >= rand[0] + rand[-1]
    assert result.eigenvectors is not None and torch.allclose(result.eigenvectors.norm(dim=1), torch.ones(3), atol=1e-4)


def test_the_ot_aligned_path_has_a_smaller_barrier_and_the_fused_net_is_its_midpoint(digits_parents):
    from otcore.aligned_paths import aligned_path
    from otcore.analysis import analysis_batches
    from otcore.config import FusionSpec
    from otcore.fusion.fuse import fuse
    from otcore.landscape import path_curve
    from otcore.pipeline import fusion_inputs

    spec, fusion = HessianSpec(batch_size=450), FusionSpec()
    naive = aligned_path(DataSpec(), digits_parents, fusion, spec, "naive", points=11, device="cpu")
    aligned = aligned_path(DataSpec(), digits_parents, fusion, spec, "ot-weights", points=11, device="cpu")
    # The ends are the parents themselves, so both paths start and end at the same losses.
    assert naive.loss[0] == pytest.approx(aligned.loss[0], abs=1e-6)
    assert naive.loss[-1] == pytest.approx(aligned.loss[-1], abs=1e-6)
    # Measured on the digits test split: naive 0.906, OT-aligned 0.019 (weight matching 0.010).
    assert naive.barrier - aligned.barrier > 0.8 and aligned.barrier < 0.05
    batches = analysis_batches(DataSpec(), spec, torch.device("cpu"))
    fused = fuse([p.model for p in digits_parents], fusion).model
    assert aligned.alphas[5] == 0.5
    assert aligned.midpoint_loss == pytest.approx(float(path_curve([fused, fused], batches, 2).loss_mean[0]), abs=1e-5)
    # REPAIR at every point: the midpoint is the fused net renormalised the way fusion does it.
    repaired = aligned_path(DataSpec(), digits_parents, fusion, spec, "ot-weights", repair=True, points=5,
                            device="cpu")
    sample = fusion_inputs(DataSpec(), fusion, torch.device("cpu"))
    fused_repaired = fuse([p.model for p in digits_parents], FusionSpec(renormalize=True), sample).model
    assert repaired.repair and repaired.label == "parent 1 → parent 2 aligned by OT (weights) + REPAIR"
    assert repaired.loss[2] == pytest.approx(float(path_curve([fused_repaired] * 2, batches, 2).loss_mean[0]),
                                             abs=1e-5)
    assert repaired.loss[0] == pytest.approx(aligned.loss[0], abs=1e-4)  # REPAIR leaves a parent (nearly) as it is
    again = aligned_path(DataSpec(), digits_parents, fusion, spec, "ot-weights", points=11, device="cpu")
    assert again.cached and not aligned.cached and again.barrier == aligned.barrier


def test_weight_matching_path_and_anchor_choice(digits_parents):
    from otcore.aligned_paths import aligned_path
    from otcore.config import FusionSpec, SpecError

    spec = HessianSpec(batch_size=450)
    matched = aligned_path(DataSpec(), digits_parents, FusionSpec(), spec, "weight-matching", points=5, device="cpu")
    assert matched.networks == ["parent 1", "parent 2"] and matched.barrier < 0.05  # measured 0.010 at 11 points
    flipped = aligned_path(DataSpec(), digits_parents, FusionSpec(anchor=1), spec, "weight-matching", points=5,
                           device="cpu")
    assert flipped.networks == ["parent 2", "parent 1"]  # A is the anchor
    assert flipped.loss[0] == pytest.approx(matched.loss[-1], abs=1e-6)
    seen: list[tuple[str, float]] = []
    by_activations = aligned_path(DataSpec(), digits_parents, FusionSpec(), spec, "ot-activations", repair=True,
                                  points=3, device="cpu", progress=lambda what, f: seen.append((what, f)))
    assert by_activations.barrier < 0.05 and by_activations.alignment == "ot-activations"  # measured 0.023 at 11
    assert seen[0][0] == "aligning parent 2 to parent 1 by OT (activations)"
    assert any("REPAIR at point 3 of 3" in w for w, _ in seen) and all(0 <= f <= 1 for _, f in seen)
    assert [f for _, f in seen] == sorted(f for _, f in seen)
    with pytest.raises(SpecError, match="path alignment must be one of"):
        aligned_path(DataSpec(), digits_parents, FusionSpec(), spec, "sideways", device="cpu")
