"""CCA Merge and ZipIt!: exact on permuted copies, their maps' algebra, refusals, accuracy on digits."""
from __future__ import annotations

import pytest
import torch

from otcore.activations import capture_activations
from otcore.config import DataSpec, FusionSpec, ModelSpec, SpecError, TrainSpec
from otcore.fusion import (cca_map, fuse, MergeMethodError, permuted_copy, random_permutations, vanilla_average,
                           zipit_maps)
from otcore.models import build_model
from otcore.train import init_model

SHAPE = (1, 8, 8)
METHODS = ["cca", "zipit"]


def net(arch: str, seed: int = 0):
    return init_model(build_model(arch, SHAPE, 10), seed).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(128, *SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
@pytest.mark.parametrize("alignment", METHODS)
@pytest.mark.parametrize("renormalize", [False, True], ids=["plain", "repair"])
def test_fusing_a_permuted_copy_keeps_the_function(arch: str, alignment: str, renormalize: bool,
                                                   x: torch.Tensor) -> None:
    model = net(arch)
    twin = permuted_copy(model, seed=1)
    result = fuse([model, twin], FusionSpec(alignment=alignment, anchor=1, renormalize=renormalize), act_inputs=x)
    assert (result.model(x) - model(x)).abs().max() < 1e-4
    assert (vanilla_average([model, twin])(x) - model(x)).abs().max() > 1e-2  # the symmetry is real
    # The maps came out as the permutation (times the parent's share 1/2), not just something that works:
    # each live neuron of the model goes, alone, to the fused neuron of its twin. Neurons dead on the sample
    # may pair up any way (ZipIt! may zip two of them within one model); mlpnet's fc1 (400 neurons) sees
    # 128 samples, so CCA's covariances are singular there.
    truth = random_permutations(model, seed=1)
    pre = capture_activations(model, x, model.group_modules())
    for group, merge in result.plans[0].items():
        live = (pre[group].clamp_min(0).std(1) > 0).nonzero().flatten()
        twin_of = truth[group].argmax(1)
        fused_of = merge.abs().argmax(1)
        assert torch.allclose(merge[live].abs().sum(1), torch.full((len(live),), 0.5), atol=1e-5), group
        assert torch.allclose(merge[live, fused_of[live]], torch.full((len(live),), 0.5), atol=1e-5), group
        anchor_share = result.plans[1][group][twin_of[live], fused_of[live]]
        assert torch.allclose(anchor_share, torch.full((len(live),), 0.5), atol=1e-5), group
        assert len(live) > 0.9 * merge.shape[0]


@pytest.mark.parametrize("arch", ["mlpnet", "vgg_tiny_nobias"])
@pytest.mark.parametrize("alignment", METHODS)
def test_three_weighted_permuted_copies_fuse_back_into_the_original(arch: str, alignment: str,
                                                                   x: torch.Tensor) -> None:
    """A model and two permuted copies of itself, at any weights and anchor: the original's logits.
    ZipIt! zips each feature with its two twins (a pair takes the third model's match at full
    similarity: the re-merge penalty starts beyond N members)."""
    model = net(arch)
    parents = [model, permuted_copy(model, 1), permuted_copy(model, 2)]
    for spec in (FusionSpec(alignment=alignment), FusionSpec(alignment=alignment, weights=(0.2, 0.3, 0.5), anchor=2),
                 FusionSpec(alignment=alignment, renormalize=True, anchor=1)):
        result = fuse(parents, spec, act_inputs=x)
        assert len(result.plans) == 3
        assert (result.model(x) - model(x)).abs().max() < 1e-4, spec
        for group in result.plans[0]:  # every fused neuron is split between the parents by their weights
            total = sum(plans[group].sum(0) for plans in result.plans)
            assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


@pytest.mark.parametrize("n_parents", [3, 4, 5])
def test_zipit_fuses_n_independent_parents_into_the_anchors_widths(n_parents: int, x: torch.Tensor) -> None:
    """N differently initialised parents (three used to stop with 'ran out of mergeable features'):
    the fused network has the anchor's widths, every feature of every parent lands in one fused feature,
    and the same-model budget holds wherever the greedy run did not need it to yield."""
    for arch in ("mlpnet", "vgg_tiny_nobias"):
        parents = [net(arch, seed) for seed in range(n_parents)]
        result = fuse(parents, FusionSpec(alignment="zipit", anchor=n_parents - 1), act_inputs=x)
        assert [p.shape for p in result.model.parameters()] == [p.shape for p in parents[-1].parameters()]
        assert torch.isfinite(result.model(x)).all()
        for group in result.plans[0]:
            merges = [plans[group] for plans in result.plans]
            assert all(torch.equal((m > 0).sum(1), torch.ones(m.shape[0], dtype=torch.long)) for m in merges)
            total = sum(m.sum(0) for m in merges)
            assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_zipit_reaches_the_width_when_every_remaining_pair_shares_a_spent_model() -> None:
    """Model 0 holds a duplicated feature and no same-model budget: zipping the duplicate spends it, and
    once model 1's one feature has joined, every remaining pair shares model 0. The budget yields (the
    most similar pair merges) instead of stopping above the width."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(400, 3, generator=g, dtype=torch.float64)
    def noisy(cols):
        return base[:, cols] + 0.05 * torch.randn(400, len(cols), generator=g, dtype=torch.float64)
    merge, unmerge = zipit_maps([noisy([0, 0, 1]), noisy([2])], [0.5, 0.5], 1, beta=0.0)
    assert torch.equal(unmerge[0], torch.ones(3, 1, dtype=torch.float64))
    assert torch.equal(unmerge[1], torch.ones(1, 1, dtype=torch.float64))
    assert torch.allclose(merge[0], torch.full((3, 1), 0.25, dtype=torch.float64))  # the members' mean


def test_cca_map_is_the_inverse_pair_and_the_ridge_pins_unseen_directions() -> None:
    g = torch.Generator().manual_seed(0)
    # 50 samples of 80 neurons: the sample cannot see 30 directions, and 5 neurons are dead.
    anchor = (torch.randn(50, 80, generator=g, dtype=torch.float64)).clamp_min(0)
    anchor[:, :5] = 0
    order = torch.randperm(80, generator=g)
    forward, inverse = cca_map(anchor, anchor[:, order])
    permutation = torch.eye(80, dtype=torch.float64)[:, order]  # anchor = parent @ permutation.T
    live = order >= 5  # the dead neurons are interchangeable: they may pair up any way
    assert torch.allclose(forward[:, live], permutation[:, live], atol=1e-8)
    assert torch.allclose(forward[5:, ~live], torch.zeros(75, 5, dtype=torch.float64), atol=1e-8)
    plain, _ = cca_map(anchor, anchor[:, order], cross_ridge=False)
    # Without the cross ridge, the directions the sample cannot see rotate freely.
    assert (plain[:, live] - permutation[:, live]).abs().max() > 0.1
    parent = anchor @ torch.randn(80, 80, generator=g, dtype=torch.float64) + 0.1 * torch.randn(50, 80, generator=g,
                                                                                                   dtype=torch.float64)
    forward, inverse = cca_map(anchor, parent, reg=0.01)
    assert torch.allclose(forward @ inverse, torch.eye(80, dtype=torch.float64), atol=1e-8)
    # A narrower parent holding 40 of the anchor's neurons (a sample that sees them all): M sends each to
    # its own (the other anchor neurons get their share through the anchor's covariance), M^+ M = I.
    anchor = torch.randn(500, 80, generator=g, dtype=torch.float64).clamp_min(0)
    forward, inverse = cca_map(anchor, anchor[:, order[:40]])
    assert forward.shape == (80, 40) and inverse.shape == (40, 80)
    assert torch.allclose(inverse @ forward, torch.eye(40, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(forward[order[:40]], torch.eye(40, dtype=torch.float64), atol=1e-8)


def test_zipit_pairs_the_correlated_features_and_its_maps_are_consistent() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(500, 6, generator=g, dtype=torch.float64)
    def noisy(cols):
        return base[:, cols] + 0.01 * torch.randn(500, len(cols), generator=g, dtype=torch.float64)
    # Model b holds model a's features 0..5 in the order 3, 1, 0, 5, 4, 2.
    merge, unmerge = zipit_maps([noisy([0, 1, 2, 3, 4, 5]), noisy([3, 1, 0, 5, 4, 2])], [0.5, 0.5], 6)
    pairs = {(int(unmerge[0][:, k].argmax()), int(unmerge[1][:, k].argmax())) for k in range(6)}
    assert pairs == {(0, 2), (1, 1), (2, 5), (3, 0), (4, 4), (5, 3)}
    assert all(torch.equal(u.sum(1), torch.ones(6, dtype=u.dtype)) for u in unmerge)  # one cluster per feature
    assert torch.allclose(merge[0] + merge[1], unmerge[0] * 0.5 + unmerge[1] * 0.5)
    # A model with a duplicated feature: ZipIt! may merge within a model (budget 0.5 * 6/2 -> 1 merge each).
    a = noisy([0, 0, 1, 2, 3, 4])
    merge, unmerge = zipit_maps([a, noisy([5, 1, 2, 3, 4, 5])], [0.7, 0.3], 6, beta=0.5)
    same_a = [k for k in range(6) if unmerge[0][:, k].sum() == 2]
    assert same_a and torch.allclose(merge[0][:2, same_a[0]], torch.tensor([0.5, 0.5], dtype=torch.float64))
    mixed = [k for k in range(6) if unmerge[0][:, k].sum() == 1 and unmerge[1][:, k].sum() == 1]
    assert all(torch.allclose(merge[0][:, k].sum(), torch.tensor(0.7, dtype=torch.float64)) for k in mixed)


def test_refusals_say_what_to_do(x: torch.Tensor) -> None:
    resnet = net("resnet_tiny_nobias_nobn")
    for alignment in METHODS:
        with pytest.raises(MergeMethodError, match="residual") as err:
            fuse([resnet, net("resnet_tiny_nobias_nobn", 1)], FusionSpec(alignment=alignment), act_inputs=x)
        assert isinstance(err.value, ValueError) and "OT or weight matching" in str(err.value)
        with pytest.raises(ValueError, match="sample of inputs"):
            fuse([net("mlpnet"), net("mlpnet", 1)], FusionSpec(alignment=alignment))
        with pytest.raises(MergeMethodError, match="same widths"):
            fuse([net("mlpnet"), net("mlpnet_doub", 1)], FusionSpec(alignment=alignment), act_inputs=x)
    with pytest.raises(SpecError, match="alignment must be one of"):
        FusionSpec(alignment="zip")


@pytest.fixture(scope="module")
def digits_scores() -> dict[str, dict[str, float]]:
    """Test accuracy (%) of each alignment on two independently trained digits parents (seeds 0, 1)."""
    from otcore.pipeline import fuse_and_compare, train_parents

    data, out = DataSpec(), {}
    for arch in ("mlpnet", "vgg_tiny_nobias"):
        parents = train_parents(data, ModelSpec(arch), TrainSpec(), [0, 1])
        scores = {"parents": min(p.metrics["test"]["accuracy"] for p in parents)}
        for label, spec in {"ot_weights": FusionSpec(), "ot_activations": FusionSpec(mode="activations"),
                            "cca": FusionSpec(alignment="cca"), "zipit": FusionSpec(alignment="zipit"),
                            "zipit_repair": FusionSpec(alignment="zipit", renormalize=True)}.items():
            accuracies = fuse_and_compare(data, ModelSpec(arch), parents, spec).accuracies()
            scores[label], scores["vanilla"] = accuracies["ot_fusion"], accuracies["vanilla_average"]
        out[arch] = scores
    return out


def test_merge_methods_keep_most_of_the_parents_accuracy_on_digits(digits_scores: dict) -> None:
    """Measured (worse parent 97.3%, 97.8%): mlpnet cca 96.9, zipit 96.7 (+REPAIR 97.3), vanilla 96.2;
    vgg_tiny cca 93.6, zipit 92.4 (+REPAIR 93.1), OT by weights 88.2, by activations 92.0, vanilla 26.9."""
    for arch, floor in (("mlpnet", 95.5), ("vgg_tiny_nobias", 90.0)):
        scores = digits_scores[arch]
        assert scores["parents"] > 95, scores
        for method in ("cca", "zipit", "zipit_repair"):
            assert scores[method] > floor and scores[method] > scores["parents"] - (2 if arch == "mlpnet" else 8), \
                (method, scores)
            if arch == "vgg_tiny_nobias":  # digits are easy for an MLP: there vanilla averaging already scores 96
                assert scores[method] > scores["vanilla"] + 20, (method, scores)


def test_cca_merge_beats_ot_by_weights_on_the_vgg_pair(digits_scores: dict) -> None:
    """The paper's claim (CCA Merge over permutation/OT methods, VGG): +5.3 points over OT by weights here,
    +1.6 over OT by activations (7 test images of 450; asserted as 'not worse by more than 1 point')."""
    scores = digits_scores["vgg_tiny_nobias"]
    assert scores["cca"] > scores["ot_weights"] + 2, scores
    assert scores["cca"] > scores["ot_activations"] - 1, scores
