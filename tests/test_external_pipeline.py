"""A torchvision network through the whole study on digits: the CLI trains and fuses it, the pipeline evaluates,
prunes, analyses the Hessian and draws an aligned path, each on real files in a cache of the test's own."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec
from tests.support import REPO

pytestmark = pytest.mark.slow  # two parents trained and four networks scored: a minute or more beside other work

ARCH = "torchvision:shufflenet_v2_x0_5"  # torchvision's smallest classifier: seconds per epoch on 8x8 digits
TRAIN_FLAGS = ("--arch", ARCH, "--epochs", "1", "--partition", "labels")  # each parent sees half the classes
TRAIN = TrainSpec(epochs=1, partition="labels")


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otcore", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OTCORE_CACHE_DIR": str(cache)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """`train` of two parents of the network, once, into a cache folder of this module's own."""
    cache = tmp_path_factory.mktemp("external-parents")
    proc = run_cli("train", *TRAIN_FLAGS, "--json", cache=cache)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(cache=cache, out=json.loads(proc.stdout))


@pytest.fixture(scope="module")
def parents(trained: SimpleNamespace) -> list:
    from otcore.cache import DiskCache
    from otcore.pipeline import train_parents

    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation on a busy CPU
    return train_parents(DataSpec(), ModelSpec(ARCH), TRAIN, [0, 1], device="cpu", cache=DiskCache(trained.cache))


def test_cli_trains_and_fuses_a_torchvision_network(trained: SimpleNamespace, parents: list):
    assert [p["classes"] for p in trained.out["parents"]] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert [p.key for p in parents] == [p["key"] for p in trained.out["parents"]]
    assert all(p.metrics["cached"] for p in parents)  # the pipeline reads what the CLI stored
    proc = run_cli("fuse", *TRAIN_FLAGS, "--json", cache=trained.cache)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["parents"] == [pytest.approx(p["test_accuracy"]) for p in trained.out["parents"]]
    assert out["alignment"] == "ot" and 0 <= out["ot_fusion"] <= 100 and 0 <= out["vanilla_average"] <= 100


def test_pipeline_fuses_evaluates_prunes_and_analyses(trained: SimpleNamespace, parents: list):
    from otcore.analysis import curvature
    from otcore.aligned_paths import aligned_path
    from otcore.cache import DiskCache
    from otcore.data import load_dataset
    from otcore.pipeline import fuse_and_compare, prune_and_compare
    from otcore.train import evaluate

    cache, data, model = DiskCache(trained.cache), DataSpec(), ModelSpec(ARCH)
    before = [{k: v.clone() for k, v in p.model.state_dict().items()} for p in parents]
    comparison = fuse_and_compare(data, model, parents, FusionSpec(), device="cpu", cache=cache)
    rows = {r.id: r for r in comparison.rows}
    assert set(rows) == {"parent_1", "parent_2", "vanilla_average", "prediction_ensemble", "ot_fusion"}
    digits = load_dataset("digits")
    fused = rows["ot_fusion"].model
    assert type(fused) is type(parents[0].model) and not fused.training
    assert evaluate(fused, digits.x_test, digits.y_test).accuracy == pytest.approx(rows["ot_fusion"].test.accuracy)
    assert any(not torch.equal(fused.state_dict()[k], before[0][k]) for k in before[0])

    pruned = prune_and_compare(data, model, parents, PruneSpec(fraction=0.3), FusionSpec(), device="cpu", cache=cache)
    assert pruned.extra["sparsity"]["OT fusion"] == pytest.approx(0.3, abs=0.01)

    spec = HessianSpec(batch_size=64, top_k=1, power_iters=20, lanczos_iters=4, trace_probes=2, lambda_points=3)
    analysed = curvature(data, "OT fusion", rows["ot_fusion"].key, fused, spec, device="cpu", cache=cache)
    assert analysed.trace_method == "hutchinson" and math.isfinite(analysed.trace)
    assert analysed.top_eigenvalues[0] > 0 and math.isfinite(analysed.top_eigenvalues[0])

    # Weight matching moves parent 2 into parent 1's order without changing its function: the path's end is
    # parent 2's loss on the analysed batch, its start parent 1's.
    path = aligned_path(data, parents, FusionSpec(), spec, alignment="weight-matching", points=3, cache=cache)
    x, y = digits.x_test[:64], digits.y_test[:64]
    ends = [evaluate(p.model, x, y).loss for p in parents]
    assert path.loss[0] == pytest.approx(ends[0], rel=1e-4)
    assert path.loss[-1] == pytest.approx(ends[1], rel=1e-4)
    for parent, state in zip(parents, before):  # the shared parents were never moved, hooked or changed
        assert not parent.model.training
        assert all(torch.equal(parent.model.state_dict()[k], v) for k, v in state.items())
