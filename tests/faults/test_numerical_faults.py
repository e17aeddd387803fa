"""Numerical faults: tiny Sinkhorn regularisation, dead neurons after pruning, diverged models."""
from __future__ import annotations

import pytest
import torch

from otcore.config import DataSpec, FusionSpec, HessianSpec, PruneSpec
from otcore.fusion import fuse, transport_plan, TransportError


def test_sinkhorn_with_a_tiny_reg_is_stable_or_says_so():
    from otcore.models import build_model
    from otcore.train import init_model

    # Narrow nets keep this quick: tiny reg means thousands of log-domain iterations per layer.
    nets = [init_model(build_model("vgg_tiny_nobias", (1, 8, 8), 10), seed) for seed in (0, 1)]
    for reg in (1e-4, 1e-6):
        try:
            fused = fuse(nets, FusionSpec(solver="sinkhorn", reg=reg)).model
        except TransportError as err:  # acceptable only as a clear message suggesting a larger reg
            assert "larger reg" in str(err)
        else:
            assert all(torch.isfinite(p).all() for p in fused.parameters())
    mass = torch.full((3,), 1 / 3)
    with pytest.raises(TransportError, match="NaN or Inf"):
        transport_plan(mass, mass, torch.full((3, 3), float("inf")), "sinkhorn", 0.1)


def test_heavily_pruned_parents_with_dead_neurons_fuse_without_nan(digits_parents):
    from otcore.config import ModelSpec
    from otcore.pipeline import prune_and_compare

    for kind in ("structured", "unstructured"):
        comparison = prune_and_compare(DataSpec(), ModelSpec(), digits_parents, PruneSpec(fraction=0.9, type=kind),
                                       FusionSpec(mode="activations", renormalize=True))
        for row in comparison.rows:
            assert row.test.loss == row.test.loss  # not NaN
            if row.model is not None:
                assert all(torch.isfinite(p).all() for p in row.model.parameters())


def test_the_hessian_of_a_diverged_model_is_reported_not_looped(digits_parents):
    from otcore.analysis import curvature
    from otcore.hessian import HessianError
    from otcore.prune import copy_model

    broken = copy_model(digits_parents[0].model)
    with torch.no_grad():
        broken.fc1.weight[0, 0] = float("nan")
    with pytest.raises(HessianError, match="loss is nan"):
        curvature(DataSpec(), "broken", "broken-model", broken, HessianSpec(lanczos_iters=5, trace_probes=2))
