"""OT fusion: invariances that cannot pass by accident, options, baselines, numerical faults."""
from __future__ import annotations

import pytest
import torch

from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec
from otcore.fusion import (align_parents, apply_plans, cost_matrix, ensemble_log_probs, fuse, permuted_copy,
                           transport_plan, TransportError, vanilla_average)
from otcore.models import build_model
from otcore.train import init_model

ARCHS = ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"]
SHAPE = (1, 8, 8)


def net(arch: str, seed: int = 0):
    return init_model(build_model(arch, SHAPE, 10), seed).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", [FusionSpec(), FusionSpec(mode="activations"), FusionSpec(alignment="weight_matching"),
                                  FusionSpec(renormalize=True), FusionSpec(ground_metric="cosine", squared=True),
                                  FusionSpec(marginals="importance", normalize="median")],
                         ids=["weights", "activations", "weight-matching", "repair", "cosine", "importance"])
def test_fusing_a_permuted_copy_keeps_the_function(arch: str, spec: FusionSpec, x: torch.Tensor) -> None:
    model = net(arch)
    twin = permuted_copy(model, seed=1)
    assert not torch.equal(twin.state_dict()[next(iter(twin.state_dict()))], model.state_dict()[next(iter(model.state_dict()))])
    # The permuted copy is the anchor, so the model itself must be aligned back onto it.
    fused = fuse([model, twin], FusionSpec(**{**spec.__dict__, "anchor": 1}), act_inputs=x).model
    assert torch.allclose(fused(x), model(x), atol=1e-5)
    assert (vanilla_average([model, twin])(x) - model(x)).abs().max() > 1e-2  # the symmetry is real


@pytest.mark.parametrize("arch", ARCHS)
def test_ensemble_step_zero_and_one_return_the_parents(arch: str, x: torch.Tensor) -> None:
    a, b = net(arch, 0), net(arch, 1)
    anchor_only = fuse([a, b], FusionSpec(ensemble_step=1.0)).model
    assert all(torch.equal(anchor_only.state_dict()[k], v) for k, v in a.state_dict().items())
    result = fuse([a, b], FusionSpec(ensemble_step=0.0))
    aligned_b = apply_plans(b, a, result.plans[1])
    assert all(torch.equal(result.model.state_dict()[k], v) for k, v in aligned_b.items())


def test_three_parents_fuse_exactly_when_they_are_permutations(x: torch.Tensor) -> None:
    model = net("vgg_tiny_nobias")
    parents = [model, permuted_copy(model, 1), permuted_copy(model, 2)]
    result = fuse(parents, FusionSpec(mode="activations"), act_inputs=x)
    assert len(result.plans) == 3 and result.plans[0] == {}
    assert torch.allclose(result.model(x), model(x), atol=1e-5)
    weighted = fuse(parents, FusionSpec(weights=(0.2, 0.3, 0.5)), act_inputs=x).model
    assert torch.allclose(weighted(x), model(x), atol=1e-5)


def test_a_wider_parent_fuses_into_the_narrower_anchor(x: torch.Tensor) -> None:
    narrow = init_model(build_model("mlpnet", SHAPE, 10), 0)
    wide = init_model(build_model("mlpnet_doub", SHAPE, 10), 1)
    result = fuse([narrow, wide], FusionSpec(mode="activations"), act_inputs=x)
    assert result.model.fc1.weight.shape == narrow.fc1.weight.shape
    assert result.plans[1]["fc1"].shape == (800, 400)
    # Marginal correction: every anchor neuron receives unit mass from the wide parent.
    assert torch.allclose(result.plans[1]["fc1"].sum(0), torch.ones(400), atol=1e-5)
    assert torch.isfinite(result.model(x)).all()
    with pytest.raises(ValueError, match="same widths"):
        fuse([narrow, wide], FusionSpec(alignment="weight_matching"))


def test_parents_of_different_families_are_refused() -> None:
    with pytest.raises(ValueError, match="same architecture family"):
        fuse([net("mlpnet"), net("vgg_tiny_nobias")], FusionSpec())
    with pytest.raises(ValueError, match="at least two"):
        fuse([net("mlpnet")], FusionSpec())


def test_diagnostics_report_a_permutation_for_a_permuted_copy(x: torch.Tensor) -> None:
    model = net("resnet_tiny_nobias_nobn")
    result = align_parents([model, permuted_copy(model, 3)], FusionSpec())
    groups = [d.group for d in result.diagnostics[1]]
    assert groups == list(dict.fromkeys(groups)) and "layer2.0.residual" in groups
    assert all(d.permutation_closeness == pytest.approx(1.0) and d.transport_cost < 1e-3  # sqrt of rounding in |a|²+|b|²-2ab
               for d in result.diagnostics[1])


def test_sinkhorn_at_small_reg_approaches_the_exact_plan() -> None:
    g = torch.Generator().manual_seed(0)
    a_pts, b_pts = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g)
    cost = cost_matrix(a_pts, b_pts)
    mass = torch.full((30,), 1 / 30)
    exact = transport_plan(mass, mass, cost, "emd")
    gaps = []
    for reg in (1.0, 0.1, 1e-2, 1e-3):
        entropic = transport_plan(mass, mass, cost, "sinkhorn", reg=reg)
        assert torch.allclose(entropic.sum(1), mass, atol=1e-4) and torch.allclose(entropic.sum(0), mass, atol=1e-4)
        gaps.append(abs(float((entropic * cost).sum() - (exact * cost).sum())))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3 * float((exact * cost).sum())
    assert (exact - transport_plan(mass, mass, cost, "sinkhorn", reg=1e-4)).abs().sum() < 0.05


def test_ground_metrics_match_their_formulas() -> None:
    g = torch.Generator().manual_seed(1)
    a_pts, b_pts = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    assert torch.allclose(cost_matrix(a_pts, b_pts), torch.cdist(a_pts, b_pts), atol=1e-5)
    assert torch.allclose(cost_matrix(a_pts, b_pts, squared=True), torch.cdist(a_pts, b_pts) ** 2, atol=1e-4)
    cos = torch.nn.functional.cosine_similarity(a_pts[:, None], b_pts[None], dim=-1)
    assert torch.allclose(cost_matrix(a_pts, b_pts, "cosine"), 1 - cos, atol=1e-5)
    assert cost_matrix(a_pts, b_pts, normalize="max").max() == pytest.approx(1.0)
    assert cost_matrix(a_pts, b_pts, normalize="mean").mean() == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_neurons_are_refused_by_the_cost(metric: str, bad: float) -> None:
    """The costs, not the (possibly huge) inputs, are checked: a NaN or Inf anywhere in x or y must reach them."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(5, 300, generator=g), torch.randn(4, 300, generator=g)
    y[1] = 0  # a dead neuron: inf * 0 must not hide the fault
    assert torch.isfinite(cost_matrix(x, y, metric)).all()
    for which in ("x", "y"):
        for place in ((0, 0), (4 if which == "x" else 3, 299)):
            xs, ys = x.clone(), y.clone()
            (xs if which == "x" else ys)[place] = bad
            with pytest.raises(ValueError, match="NaN or Inf"):
                cost_matrix(xs, ys, metric)


def test_numerical_faults_are_refused_or_survived(x: torch.Tensor) -> None:
    mass = torch.full((4,), 0.25)
    with pytest.raises(TransportError, match="NaN or Inf"):
        transport_plan(mass, mass, torch.tensor([[0.0, float("nan"), 1, 1]] * 4), "emd")
    bad = net("mlpnet")
    with torch.no_grad():
        bad.fc2.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fuse([net("mlpnet"), bad], FusionSpec())
    # Dead neurons (all-zero rows, common after pruning) fuse without NaN, by weights and by cosine.
    dead_a, dead_b = net("mlpnet", 0), net("mlpnet", 1)
    with torch.no_grad():
        dead_a.fc1.weight[:50] = 0
        dead_b.fc1.weight[100:200] = 0
    for spec in (FusionSpec(), FusionSpec(ground_metric="cosine"), FusionSpec(marginals="importance"),
                 FusionSpec(mode="activations", renormalize=True), FusionSpec(solver="sinkhorn", reg=1e-3)):
        assert torch.isfinite(fuse([dead_a, dead_b], spec, act_inputs=x).model(x)).all()


def test_prediction_ensemble_averages_probabilities(x: torch.Tensor) -> None:
    a, b = net("mlpnet", 0), net("mlpnet", 1)
    expected = ((a(x).softmax(1) + b(x).softmax(1)) / 2).log()
    assert torch.allclose(ensemble_log_probs([a, b], x), expected, atol=1e-5)


def test_ot_fusion_beats_vanilla_averaging_on_digits(tmp_path, monkeypatch) -> None:
    """Measured on this seed pair: vanilla 23.6%, OT by weights 82.0%, by activations 90.4%."""
    from otcore.pipeline import fuse_and_compare, train_parents

    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path))
    data, model = DataSpec(), ModelSpec("vgg_tiny_nobias")
    parents = train_parents(data, model, TrainSpec(), [0, 1])
    assert min(p.metrics["test"]["accuracy"] for p in parents) > 95
    for mode, margin in (("weights", 40), ("activations", 50)):
        scores = fuse_and_compare(data, model, parents, FusionSpec(mode=mode)).accuracies()
        assert scores["ot_fusion"] > scores["vanilla_average"] + margin, scores


def test_with_weights_equals_deepcopy_then_load_state_dict() -> None:
    import copy

    from otcore.fusion.new_weights import with_weights

    torch.manual_seed(0)
    template = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, bias=True), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10), torch.nn.Linear(10, 10))
    template[1].running_mean += 0.5  # a buffer that is not zero
    template[2].register_forward_hook(lambda module, args, out: out * 2)
    template[1].weight.requires_grad_(False)
    template.train()
    new_conv = torch.randn(4, 3, 3, 1, dtype=torch.float64).permute(0, 3, 1, 2)  # another dtype, non-contiguous
    new_fc = torch.randn(10, 144)
    got = with_weights(template, {"0.weight": new_conv, "4.weight": new_fc})
    want = copy.deepcopy(template)
    want.load_state_dict({**template.state_dict(), "0.weight": new_conv, "4.weight": new_fc})
    assert got.state_dict().keys() == want.state_dict().keys()
    for (name, a), b in zip(got.state_dict().items(), want.state_dict().values()):
        assert torch.equal(a, b) and a.dtype == b.dtype and a.stride() == b.stride(), name
    assert [p.requires_grad for p in got.parameters()] == [p.requires_grad for p in want.parameters()]
    assert got.training and got[1].training
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(got(x), want(x))  # the hook came along (and batch norm's running stats moved alike)
    assert torch.equal(got[1].running_mean, want[1].running_mean)
    assert not torch.equal(got[1].running_mean, template[1].running_mean)  # a copy, not the template's buffer
    with torch.no_grad():
        got[5].weight.zero_()
    assert template[5].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="not a parameter"):
        with_weights(template, {"0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="not a parameter"):
        with_weights(template, {"9.weight": torch.zeros(2, 2)})


def test_with_weights_keeps_tied_parameters_tied() -> None:
    from otcore.fusion.new_weights import with_weights

    template = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False))
    template[1].weight = template[0].weight
    got = with_weights(template, {"0.weight": torch.eye(3)})
    assert got[1].weight is got[0].weight and torch.equal(got[0].weight, torch.eye(3))
    assert not torch.equal(template[0].weight, torch.eye(3))


@pytest.mark.parametrize("arch", ARCHS)
def test_the_fused_network_is_the_weighted_sum_of_aligned_parents_in_a_fresh_copy(arch: str, x: torch.Tensor) -> None:
    a, b = net(arch, 0), net(arch, 1)
    result = fuse([a, b], FusionSpec(ensemble_step=0.3))
    aligned_b = apply_plans(b, a, result.plans[1])
    fused = result.model.state_dict()
    for name, tensor in a.state_dict().items():
        expected = 0.3 * tensor + 0.7 * aligned_b[name] if name in aligned_b else tensor
        assert torch.equal(fused[name], expected), name
        assert fused[name].stride() == tensor.stride() and fused[name].data_ptr() != tensor.data_ptr()
    assert not result.model.training and type(result.model) is type(a)
    before = [p.clone() for p in a.parameters()]
    with torch.no_grad():
        for p in result.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


def test_diagnostics_are_the_costs_and_plan_of_each_group() -> None:
    from otcore.fusion.transport import permutation_closeness

    a, b = net("mlpnet", 0), net("mlpnet", 1)
    result = align_parents([a, b], FusionSpec())
    first = result.diagnostics[1][0]
    cost = cost_matrix(b.fc1.weight.detach(), a.fc1.weight.detach())
    plan = result.plans[1]["fc1"] / result.plans[1]["fc1"].sum()  # the solved plan (before marginal correction)
    assert first.group == "fc1" and (first.n_parent, first.n_anchor) == (400, 400)
    assert (first.cost_mean, first.cost_min, first.cost_max) == (float(cost.mean()), float(cost.min()),
                                                                 float(cost.max()))
    assert first.transport_cost == pytest.approx(float((plan * cost).sum()), rel=1e-6)
    assert first.permutation_closeness == permutation_closeness(plan) == pytest.approx(1.0)


def test_exact_transport_on_numpy_matches_pot_on_torch() -> None:
    import ot

    g = torch.Generator().manual_seed(0)
    cost = torch.rand(7, 7, generator=g)
    uniform = torch.full((7,), 1 / 7)
    plan = transport_plan(uniform, uniform, cost, "emd")  # the assignment path
    reference = ot.emd(uniform.double(), uniform.double(), cost.double())
    assert float((plan * cost).sum()) == pytest.approx(float((reference.float() * cost).sum()), rel=1e-6)
    assert plan.dtype == cost.dtype and sorted(plan.flatten().tolist())[-7:] == [pytest.approx(1 / 7)] * 7
    a = torch.rand(7, generator=g)
    a, b = a / a.sum(), torch.full((5,), 0.2)
    wide = torch.rand(7, 5, generator=g)
    assert torch.equal(transport_plan(a, b, wide, "emd"),
                       ot.emd(a.double(), b.double(), wide.double()).float())  # the simplex path, same plan


def test_a_non_finite_cost_from_finite_weights_is_left_to_the_solver_to_refuse() -> None:
    huge = torch.tensor([[3e38, 3e38], [1.0, 0.0]])
    cost = cost_matrix(huge, -huge)  # finite inputs, overflowing distances: not the inputs' fault
    assert not torch.isfinite(cost).all()
    with pytest.raises(TransportError, match="NaN or Inf"):
        transport_plan(torch.full((2,), 0.5), torch.full((2,), 0.5), cost, "emd")
    with pytest.raises(ValueError, match="weights or activations contain NaN or Inf"):
        cost_matrix(torch.tensor([[float("inf"), 0.0]]), huge)
