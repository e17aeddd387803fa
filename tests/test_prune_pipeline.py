"""Pruning inside the study: both orders and their retraining, sparsity bookkeeping, resumable sweeps, the CLI contract."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from dataclasses import replace

import pytest
import torch

from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, SpecError, TrainSpec
from otcore.pipeline import (OT_FUSION, OT_RETRAINED, VANILLA, VANILLA_RETRAINED, prune_and_compare, prune_sweep,
                             train_parents)
from otcore.prune import prunable_layers, sparsity_report

DATA = DataSpec()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("prune-cache"))
    old = os.environ.get("OTCORE_CACHE_DIR")
    os.environ["OTCORE_CACHE_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("OTCORE_CACHE_DIR")
    else:
        os.environ["OTCORE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def parents(cache_dir):
    return {arch: train_parents(DATA, ModelSpec(arch), TrainSpec(epochs=5), [0, 1])
            for arch in ("mlpnet", "vgg_tiny_nobias")}


ORDERS = [PruneSpec(fraction=0.5, order="prune-fuse"),
          PruneSpec(fraction=0.5, order="fuse-prune"),
          PruneSpec(fraction=0.5, order="prune-fuse", retrain_epochs=1, retrain_parents_epochs=1),
          PruneSpec(fraction=0.5, order="fuse-prune", retrain_epochs=1)]


def zeros(net, layers: list[str]) -> dict[str, torch.Tensor]:
    """Where each pruned layer's weight is exactly zero."""
    return {name: net.get_submodule(name).weight.detach() == 0 for name in layers}


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
@pytest.mark.parametrize("spec", ORDERS, ids=["prune-fuse", "fuse-prune", "prune-fuse-retrain", "fuse-prune-retrain"])
@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_every_order_prunes_and_retrains_to_the_stated_sparsity(parents, arch: str, spec: PruneSpec,
                                                                kind: str) -> None:
    spec = replace(spec, type=kind)
    comparison = prune_and_compare(DATA, ModelSpec(arch), parents[arch], spec, FusionSpec())
    methods = [r.method for r in comparison.rows]
    assert methods[:2] == ["parent 1", "parent 2"] and OT_FUSION in methods and VANILLA in methods
    retrained = spec.retrain_epochs > 0
    assert (OT_RETRAINED in methods) == retrained and (VANILLA_RETRAINED in methods) == retrained
    sparsity = comparison.extra["sparsity"]
    layers = prunable_layers(comparison.row(OT_FUSION).model, spec.scope, spec.keep_last_layer)
    for name in (OT_FUSION, VANILLA) + ((OT_RETRAINED, VANILLA_RETRAINED) if retrained else ()):
        # In either order every single network carries exactly the parents' (requested) sparsity ...
        assert sparsity[name] == sparsity["parent 1"] == pytest.approx(0.5, abs=0.01)
        net = comparison.row(name).model
        assert sparsity_report(net, layers).overall_fraction == sparsity[name]  # ... reported as measured
        for layer, zero in zeros(net, layers).items():
            weight = net.get_submodule(layer).weight
            if kind == "structured":  # whole filters: round(fraction x filters) rows of zeros, nothing else
                rows = zero.flatten(1).all(dim=1)
                assert int(rows.sum()) == round(0.5 * weight.shape[0]) and zero.sum() == rows.sum() * zero[0].numel()
            else:
                assert int(zero.sum()) == round(0.5 * weight.numel())
    if retrained:  # retraining kept every mask: the same zeros, exactly, before and after
        for before, after in ((OT_FUSION, OT_RETRAINED), (VANILLA, VANILLA_RETRAINED)):
            old, new = zeros(comparison.row(before).model, layers), zeros(comparison.row(after).model, layers)
            assert all(torch.equal(old[layer], new[layer]) for layer in layers)
    assert all(0 <= r.test.accuracy <= 100 for r in comparison.rows)
    # Same settings again come from the cache with the same numbers.
    again = prune_and_compare(DATA, ModelSpec(arch), parents[arch], spec, FusionSpec())
    assert again.cached and [r.test.accuracy for r in again.rows] == [r.test.accuracy for r in comparison.rows]


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
def test_prune_fuse_may_keep_the_fused_nets_own_zeros_through_retraining(parents, arch: str) -> None:
    spec = PruneSpec(fraction=0.5, type="structured", order="prune-fuse", fused_masks="own-zeros", retrain_epochs=1)
    comparison = prune_and_compare(DATA, ModelSpec(arch), parents[arch], spec, FusionSpec())
    sparsity = comparison.extra["sparsity"]
    # OT maps dead filters onto dead filters, so the fused net keeps more zeros than the vanilla average
    # (at most the parents' fraction); the reported value is what each network has.
    assert sparsity["parent 1"] >= sparsity[OT_FUSION] > sparsity[VANILLA] > 0
    layers = prunable_layers(comparison.row(OT_FUSION).model, spec.scope, spec.keep_last_layer)
    for before, after in ((OT_FUSION, OT_RETRAINED), (VANILLA, VANILLA_RETRAINED)):
        old, new = zeros(comparison.row(before).model, layers), zeros(comparison.row(after).model, layers)
        assert all(torch.equal(old[layer], new[layer]) for layer in layers)
        assert sparsity[after] == sparsity[before] == sparsity_report(comparison.row(after).model, layers).overall_fraction
    default = prune_and_compare(DATA, ModelSpec(arch), parents[arch], replace(spec, fused_masks="reprune"),
                                FusionSpec())
    assert default.key != comparison.key and default.extra["sparsity"][OT_FUSION] == sparsity["parent 1"]


def test_retraining_keeps_pruned_weights_at_zero(parents) -> None:
    spec = PruneSpec(fraction=0.7, order="fuse-prune", retrain_epochs=2)
    comparison = prune_and_compare(DATA, ModelSpec("mlpnet"), parents["mlpnet"], spec, FusionSpec())
    fused, retrained = comparison.row(OT_FUSION).model, comparison.row(OT_RETRAINED).model
    for name in ("fc1", "fc2", "fc3"):
        zero = getattr(fused, name).weight == 0
        assert zero.float().mean() == pytest.approx(0.7, abs=0.01)
        assert (getattr(retrained, name).weight[zero] == 0).all()
    assert comparison.row(OT_RETRAINED).test.accuracy > 90
    assert comparison.row(VANILLA_RETRAINED).test.accuracy > 10


def test_an_interrupted_sweep_resumes_and_computes_only_the_rest(parents) -> None:
    fractions = [0.1, 0.2, 0.4, 0.6]
    seen: list[str] = []

    def stop_after_two(what: str, done: float) -> None:
        seen.append(what)
        if what.startswith("point 3"):
            raise KeyboardInterrupt  # the user closed the tab mid-sweep

    with pytest.raises(KeyboardInterrupt):
        prune_sweep(DATA, ModelSpec("mlpnet"), parents["mlpnet"], PruneSpec(), FusionSpec(), fractions,
                    progress=stop_after_two)
    points = prune_sweep(DATA, ModelSpec("mlpnet"), parents["mlpnet"], PruneSpec(), FusionSpec(), fractions)
    assert [p.cached for p in points] == [True, True, False, False]
    assert [p.extra["fraction"] for p in points] == fractions


def test_invalid_fractions_are_refused_before_any_work(parents) -> None:
    with pytest.raises(SpecError, match=r"\[0, 1\)"):
        prune_sweep(DATA, ModelSpec("mlpnet"), parents["mlpnet"], PruneSpec(), FusionSpec(), [0.3, 1.0])


def _cli(*args: str, cache: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OTCORE_CACHE_DIR": cache}
    return subprocess.run([sys.executable, "-m", "otcore", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_prune_and_sweep_commands_keep_their_json_contract(parents, cache_dir) -> None:
    common = ["--dataset", "digits", "--arch", "mlpnet", "--epochs", "5", "--json"]
    done = _cli("prune", "--fraction", "0.5", "--type", "structured", "--scope", "all", "--order", "prune-fuse",
                "--retrain-epochs", "0", *common, cache=cache_dir)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["parents"]) == 2 and {"ot_fusion", "vanilla_average", "prediction_ensemble"} <= set(out)
    assert len(out["sparsity"]) == 4 and out["sparsity"][0] == pytest.approx(0.5, abs=0.01)
    done = _cli("sweep", "--fractions", "0,0.5", *common, cache=cache_dir)
    rows = json.loads(done.stdout)["rows"]
    assert [r["fraction"] for r in rows] == [0.0, 0.5] and all("sparsity" in r for r in rows)
    for bad in ("1.0", "-0.1"):
        done = _cli("prune", "--fraction", bad, *common, cache=cache_dir)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: prune fraction")
