"""The faster alignments equal the code they replaced (tests/reference_fusion.py) on randomised cases.

Gathers for permutation plans, NumPy greedy pairing for ZipIt!, skipped re-solves for weight matching,
PLeaS's least squares stepped through the chain instead of hooked: bit for bit. CCA Merge's factored products:
within 1e-9 where the map is unique.
"""
from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from otcore.activations import capture_activations
from otcore.fusion import FusionOptions, cca_map, fuse, matched_maps, weight_matching_plans, zipit_maps
from otcore.fusion.align import Gather, as_gather, transform_bias, transform_weight
from otcore.fusion.ground_metric import cost_matrix
from otcore.fusion.merge_maps import check_mergeable, features, merge_weights, pre_activations
from otcore.fusion.zipit import cluster_maps
from otcore.models import MlpNet, build_model
from otcore.train import init_model
from tests.reference_fusion import old_cca_map, old_transform_bias, old_transform_weight, old_weight_matching_plans
from tests.reference_fusion import old_cluster_maps, old_least_squares_groups, old_least_squares_layers, old_zipit_maps


def _one_per_column(n: int, m: int, g: torch.Generator, scaled: bool, empty: bool) -> torch.Tensor:
    """A plan (n, m) with one nonzero per column (a permutation when n == m), scaled or 1, some columns empty."""
    plan = torch.zeros(n, m)
    values = torch.rand(m, generator=g) + 0.1 if scaled else torch.ones(m)
    plan[torch.randint(0, n, (m,), generator=g) if n != m else torch.randperm(n, generator=g), torch.arange(m)] = values
    if empty:
        plan[:, torch.randint(0, m, (max(1, m // 4),), generator=g)] = 0
    return plan


def test_transform_weight_by_gather_equals_the_einsum_path() -> None:
    g = torch.Generator().manual_seed(0)
    for case in range(40):
        n, m = int(torch.randint(2, 30, (1,), generator=g)), int(torch.randint(2, 30, (1,), generator=g))
        if case % 2:
            m = n
        plans = [_one_per_column(n, m, g, case % 3 == 1, case % 5 == 2), torch.rand(n, m, generator=g)]
        out, k = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        weights = [torch.randn(out, n, generator=g), torch.randn(out, n, k, k, generator=g),
                   torch.randn(out, n * k * k, generator=g)]  # linear, conv, a linear after convs (C*h*w inputs)
        for plan in plans:
            for w in weights:
                assert torch.equal(transform_weight(w, plan, None), old_transform_weight(w, plan, None))
            w = torch.randn(n, out, k, generator=g)
            assert torch.equal(transform_weight(w, None, plan), old_transform_weight(w, None, plan))
            bias = torch.randn(n, generator=g)
            assert torch.equal(transform_bias(bias, plan), old_transform_bias(bias, plan))
        assert isinstance(as_gather(plans[0]), Gather) and not isinstance(as_gather(plans[1]), Gather)


def _parents(arch: str, n: int = 2) -> list:
    return [init_model(build_model(arch, (1, 8, 8), 10), seed).eval() for seed in range(n)]


def _old_average(parents: list, plans: list, weights: list[float]) -> dict[str, torch.Tensor]:
    """The fused weights as average_aligned computed them before, from the same plans (einsum products)."""
    summed: dict[str, torch.Tensor] = {}
    for parent, plan, weight in zip(parents, plans, weights):
        for layer in parents[0].alignment_layers():
            module = parent.get_submodule(layer.name)
            parts = {f"{layer.name}.weight": old_transform_weight(module.weight.detach(), plan.get(layer.in_group),
                                                                  plan.get(layer.out_group))}
            if module.bias is not None:
                parts[f"{layer.name}.bias"] = old_transform_bias(module.bias.detach(), plan.get(layer.out_group))
            for name, tensor in parts.items():
                summed[name] = summed[name] + weight * tensor if name in summed else weight * tensor
    return summed


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"])
def test_ot_fusion_equals_the_einsum_path_and_an_independent_solve(arch: str) -> None:
    parents = _parents(arch, 3)
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for opts in (FusionOptions(), FusionOptions(mode="activations"), FusionOptions(marginal_correction=False),
                 FusionOptions(solver="sinkhorn", reg=0.05), FusionOptions(weights=(0.2, 0.5, 0.3), anchor=1)):
        result = fuse(parents, opts, x)
        expected = _old_average(parents, result.plans, opts.parent_weights(3))
        state = result.model.state_dict()
        assert all(torch.equal(state[name], tensor) for name, tensor in expected.items()), (arch, opts)
    # The plans of a fusion by weights against POT's exact solver on POT's cost, past correction by einsum.
    anchor, parent = _parents(arch, 2)
    plans = fuse([anchor, parent], FusionOptions()).plans[1]
    if arch.startswith("resnet"):
        return  # several writers per group: their rows are joined; the chain above covers the single-writer walk
    previous = None
    for layer in anchor.alignment_layers()[:-1]:
        rows = old_transform_weight(parent.get_submodule(layer.name).weight.detach(), previous, None).flatten(1)
        cost = ot.dist(rows, anchor.get_submodule(layer.name).weight.detach().flatten(1), metric="sqeuclidean").sqrt()
        uniform = np.full(cost.shape[0], 1.0 / cost.shape[0])
        plan = torch.from_numpy(ot.emd(uniform, uniform, cost.double().numpy())).float() * cost.shape[0]
        assert torch.equal(plans[layer.out_group], plan), layer.name
        previous = plan


def test_euclidean_cost_matches_pot() -> None:
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        x, y = torch.randn(50, 30, generator=g, dtype=dtype), torch.randn(40, 30, generator=g, dtype=dtype)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(cost_matrix(x, y, squared=True), ot.dist(x, y, metric="sqeuclidean"), rtol=tol, atol=tol)
        assert torch.allclose(cost_matrix(x, y), ot.dist(x, y, metric="euclidean"), rtol=tol, atol=tol)


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"])
def test_weight_matching_equals_the_reference(arch: str) -> None:
    anchor, parent = _parents(arch)
    for seed in range(3):
        new, old = weight_matching_plans(parent, anchor, seed=seed), old_weight_matching_plans(parent, anchor, seed=seed)
        assert new.keys() == old.keys()
        assert all((new[g] is None and old[g] is None) or torch.equal(new[g], old[g]) for g in new), (arch, seed)
    a, b = [init_model(MlpNet(20, (13, 7, 5), 3), seed) for seed in (3, 4)]  # odd widths, four groups
    new, old = weight_matching_plans(a, b, seed=1), old_weight_matching_plans(a, b, seed=1)
    assert all((new[g] is None and old[g] is None) or torch.equal(new[g], old[g]) for g in new)


def _zipit_case(g: torch.Generator, n_models: int, d: int, samples: int) -> list[torch.Tensor]:
    base = torch.randn(samples, d, generator=g, dtype=torch.float64)
    feats = [(base[:, torch.randperm(d, generator=g)] + 0.5 * torch.randn(samples, d, generator=g, dtype=torch.float64))
             .clamp_min(0) for _ in range(n_models)]
    feats[0][:, 0] = 0  # a dead feature: constant columns count as perfectly correlated with each other
    return feats


def test_zipit_equals_the_reference_on_random_cases() -> None:
    g = torch.Generator().manual_seed(3)
    for case in range(48):
        n_models = [2, 2, 3, 4][case % 4]
        d = int(torch.randint(2, 30, (1,), generator=g))
        feats = _zipit_case(g, n_models, d, int(torch.randint(4, 60, (1,), generator=g)))
        width = d if case % 3 == 0 else int(torch.randint(1, d * n_models + 1, (1,), generator=g))
        alpha, beta = [0.3, 0.0, 0.5][case % 3], [0.125, 0.0, 0.5, 1.0][(case // 3) % 4]
        weights = (torch.rand(n_models, generator=g) + (case % 2) * 0.5).tolist()
        if case % 7 == 0:
            weights[0] = 0.0  # a parent of weight 0: clusters of only its features take their plain mean
        new, old = zipit_maps(feats, weights, width, alpha, beta), old_zipit_maps(feats, weights, width, alpha, beta)
        assert all(torch.equal(a, b) for a, b in zip(new[0] + new[1], old[0] + old[1])), case


def test_cca_merge_equals_the_reference_within_1e_9() -> None:
    g = torch.Generator().manual_seed(4)
    for case in range(24):
        d, n = int(torch.randint(2, 50, (1,), generator=g)), int(torch.randint(3, 120, (1,), generator=g))
        anchor = torch.randn(n, d, generator=g, dtype=torch.float64).clamp_min(0)
        parent = (anchor[:, torch.randperm(d, generator=g)] + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64))
        parent = anchor[:, torch.randperm(d, generator=g)] if case % 5 == 0 else parent.clamp_min(0)
        anchor[:, 0] = 0 if case % 4 == 0 else anchor[:, 0]
        # Without the cross ridge the map is unique only when the whitened cross-covariance is invertible:
        # more samples than neurons and no dead neuron (else either answer is a CCA Merge map).
        settings = [(1.0, True), (0.1, True)] + ([(1.0, False)] if n > 2 * d and case % 4 else [])
        for reg, cross in settings:
            new, old = cca_map(anchor, parent, reg, cross), old_cca_map(anchor, parent, reg, cross)
            for a, b in zip(new, old):
                assert (a - b).abs().max() <= 1e-9 * b.abs().max(), (case, reg, cross)


def test_cca_merge_by_cholesky_factors_equals_its_eigenbasis_fallback() -> None:
    """The whitening does not change CCA: the Cholesky path's maps are the symmetric roots' (the fallback's)."""
    from otcore.fusion.cca import _eigen_maps, _maps

    g = torch.Generator().manual_seed(5)
    for case in range(12):
        d, n = int(torch.randint(2, 40, (1,), generator=g)), int(torch.randint(3, 100, (1,), generator=g))
        za = torch.randn(n, d, generator=g, dtype=torch.float64)
        zp = za[:, torch.randperm(d, generator=g)] + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
        za, zp = za - za.mean(0), zp - zp.mean(0)
        ridge = torch.tensor(0.1 + case / 10, dtype=torch.float64)
        eye = torch.eye(d, dtype=torch.float64)
        fallback = _eigen_maps(za.T @ za / n + ridge * eye, zp.T @ zp / n + ridge * eye, za.T @ zp / n + ridge * eye)
        for a, b in zip(_maps(za, zp, ridge, True), fallback):
            assert (a - b).abs().max() <= 1e-9 * b.abs().max(), case


def test_cca_merge_with_fewer_samples_than_neurons_equals_the_reference_within_1e_9() -> None:
    """cca_map works in the span of the two layers' features when 4 n <= d: the maps of the full-size algebra."""
    g = torch.Generator().manual_seed(9)
    for case in range(12):
        d, n = int(torch.randint(40, 160, (1,), generator=g)), int(torch.randint(3, 10, (1,), generator=g))
        anchor = torch.randn(n, d, generator=g, dtype=torch.float64).clamp_min(0)
        parent = anchor[:, torch.randperm(d, generator=g)] + (0 if case % 3 == 0 else 0.3) * torch.randn(
            n, d, generator=g, dtype=torch.float64)
        anchor[:, :3] = 0 if case % 2 else anchor[:, :3]  # dead neurons
        for reg in (1.0, 0.1):
            new, old = cca_map(anchor, parent, reg), old_cca_map(anchor, parent, reg)
            for a, b in zip(new, old):
                assert (a - b).abs().max() <= 1e-9 * b.abs().max(), (case, reg)


def _old_pleas(parents: list, opts: FusionOptions, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """PLeaS as merge_by_maps ran it before: hooked pre-activations, the same partial matching, the hooked refit."""
    n = len(parents)
    pre = [capture_activations(p, x, p.group_modules()) for p in parents]
    anchor, weights = opts.anchor_index(n), opts.parent_weights(n)
    order = [anchor] + [i for i in range(n) if i != anchor]
    merges: list[dict] = [{} for _ in parents]
    unmerges: list[dict] = [{} for _ in parents]
    for g in check_mergeable(parents, "PLeaS"):
        feats = [features(pre[i][g]) for i in range(n)]
        width = opts.group_width(feats[anchor].shape[1], sum(f.shape[1] for f in feats))
        merge, unmerge = matched_maps([feats[i] for i in order], [weights[i] for i in order], width)
        merge, unmerge = old_cluster_maps(np.concatenate([u.argmax(1).numpy() for u in unmerge]),
                                          [f.shape[1] for f in feats], [weights[i] for i in order], width, feats[0])
        for k, i in enumerate(order):
            merges[i][g], unmerges[i][g] = merge[k].float(), unmerge[k].float()
    model = merge_weights(parents, parents[anchor], merges, unmerges, weights)
    return old_least_squares_layers(model, parents, merges, weights, x).state_dict()


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
def test_pleas_equals_the_hooked_reference(arch: str) -> None:
    """One stepped forward pass per network (otcore.fusion.chain) instead of hooked partial ones per layer, and
    X^T (Y - X W_0^T) from X^T X: with 300 samples (two batches of the refit), 2 and 3 parents, widths 1 to N,
    weights. The targets and inputs are the same bit for bit; the one reordered product moves a float32 weight by
    at most a unit in its last place (measured 1.2e-7 of the layer's largest weight, on the digits parents)."""
    parents = _parents(arch, 3)
    before = [{k: v.clone() for k, v in p.state_dict().items()} for p in parents]
    x = torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    cases = [(2, FusionOptions(alignment="pleas")), (2, FusionOptions(alignment="pleas", width=1.5)),
             (2, FusionOptions(alignment="pleas", width=2)), (3, FusionOptions(alignment="pleas", width=1.25)),
             (3, FusionOptions(alignment="pleas", width=2, weights=(0.2, 0.5, 0.3), anchor=1))]
    for n, opts in cases:
        state, expected = fuse(parents[:n], opts, x).model.state_dict(), _old_pleas(parents[:n], opts, x)
        assert state.keys() == expected.keys()
        for k, old in expected.items():
            assert (state[k] - old).abs().max() <= 1e-6 * old.abs().max(), (arch, n, opts, k)
    # The parents were only read: no hook left, same weights.
    for parent, weights in zip(parents, before):
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in parent.modules())
        assert all(torch.equal(parent.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias", "vgg_tiny_doub_nobias"])
def test_stepped_pre_activations_equal_the_hooked_capture(arch: str) -> None:
    """CCA Merge, ZipIt! and PLeaS read them (merge_maps.pre_activations); an odd input side leaves a pooled row."""
    for shape in ((1, 8, 8), (3, 11, 9)):
        if arch == "mlpnet" and shape[0] == 3:
            continue
        model = init_model(build_model(arch, shape, 10), 0).eval()
        x = torch.randn(70, *shape, generator=torch.Generator().manual_seed(6))
        new, old = pre_activations([model], x)[0], capture_activations(model, x, model.group_modules())
        assert list(new) == list(old) and all(torch.equal(new[g], old[g]) for g in old), (arch, shape)


def test_cluster_maps_equal_the_dense_reference() -> None:
    """ZipIt! and PLeaS build their maps from a clustering: scattered entries, the dense algebra's values bit for bit."""
    g = torch.Generator().manual_seed(7)
    for case in range(60):
        n_models = [2, 3, 4][case % 3]
        sizes = [int(torch.randint(1, [40, 300][case % 2], (1,), generator=g))] * n_models
        total = sum(sizes)
        width = int(torch.randint(1, total + 1, (1,), generator=g))
        cluster = np.concatenate([np.arange(width), torch.randint(0, width, (total - width,), generator=g).numpy()])
        cluster = cluster[torch.randperm(total, generator=g).numpy()]  # every fused feature has a member
        weights = (torch.rand(n_models, generator=g) * [1, 10][case % 2]).tolist()
        if case % 5 == 0:
            weights[case % n_models] = 0.0  # clusters of only weight-0 members take their plain mean
        for dtype in (torch.float64, torch.float32):
            like = torch.zeros(1, dtype=dtype)
            new, old = cluster_maps(cluster, sizes, weights, width, like), old_cluster_maps(cluster, sizes, weights,
                                                                                            width, like)
            assert all(torch.equal(a, b) for a, b in zip(new[0] + new[1], old[0] + old[1])), (case, dtype)


@pytest.mark.parametrize("kind", ["plain", "residual"])
def test_traced_pleas_equals_the_hooked_reference(kind: str) -> None:
    """Traced networks (group_pleas) share the refit's solve: the X^T X form of its cross term and the Cholesky
    solve keep the fused weights within 1e-6 of the old code's (a float32 unit in the last place, measured)."""
    from otcore.fusion.batch_norm import fold_batch_norm, identity_norms
    from otcore.fusion.group_merge import merge_by_group_maps
    from otcore.graph import trace_groups
    from tests.test_partial_merge import _Residual, _Small, _traced_parents

    x = torch.randn(300, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    for n, width in ((2, 1), (2, 1.5), (3, 1.5)):
        parents = _traced_parents(n, x, _Small if kind == "plain" else _Residual)
        opts = FusionOptions(alignment="pleas", width=width)
        graphs = [trace_groups(p, (3, 8, 8)) for p in parents]
        folded, names = [fold_batch_norm(p)[0] for p in parents], fold_batch_norm(parents[0])[1]
        fused, plans, _, _ = merge_by_group_maps(folded, graphs, opts, x)
        expected = old_least_squares_groups(identity_norms(fused, names), folded, graphs, plans, opts.parent_weights(n),
                                            x, opts.anchor_index(n)).state_dict()
        state = fuse(parents, opts, x).model.state_dict()
        assert state.keys() == expected.keys()
        for k, old in expected.items():
            if old.is_floating_point():
                assert (state[k] - old).abs().max() <= 1e-6 * old.abs().max().clamp_min(1e-30), (kind, n, width, k)
