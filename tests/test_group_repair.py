"""Full REPAIR over traced groups (otcore.fusion.group_repair): each fused neuron's mean and std restored.

The targets are recomputed here independently of the module (forward hooks on the parents' batch
norms, the weight-matching permutations applied by indexing), and the fused network's batch-norm
outputs are measured the same way: every one must sit at its target. A permuted copy fused with its
original must come back unchanged (REPAIR of an exact fusion is a no-op), and the parents must be
left as they were.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from otcore.activations import capture_activations
from otcore.fusion import FusionOptions, fuse, permuted_copy, reset_batch_norm
from otcore.fusion.group_align import fuse_by_groups
from otcore.fusion.group_repair import repair_groups, repair_points
from otcore.graph import trace_groups
from tests.test_graph import _noisy

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnets() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Two torchvision resnet18s of different seeds (noisy batch-norm parameters and statistics), and a sample."""
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # torchvision's builders draw from the global generator
        nets.append(_noisy(torchvision.models.resnet18(num_classes=10), seed + 10))
    x = torch.randn(48, *SHAPE, generator=torch.Generator().manual_seed(3))
    return nets[0], nets[1], x


def _bn_stats(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(mean, std) per channel of every batch norm's output on x, by forward hooks on a private copy."""
    names = {n: n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    return {n: (a.double().flatten(1).mean(1), a.double().flatten(1).std(1))
            for n, a in capture_activations(model, x, names).items()}


def test_repair_sets_every_batch_norm_output_to_the_parents_statistics(resnets, one_torch_thread):
    a, b, x = resnets
    before = [{k: v.clone() for k, v in net.state_dict().items()} for net in (a, b)]
    fused, plans, _, _ = fuse_by_groups([a, b], FusionOptions(), x)  # exact OT on equal widths: permutations
    fused_before = {k: v.clone() for k, v in fused.state_dict().items()}
    graphs = [trace_groups(net, SHAPE) for net in (a, b)]
    repaired = repair_groups(fused, [a, b], graphs, plans, [0.5, 0.5], x, anchor=0)
    for net, state in zip((a, b, fused), (*before, fused_before)):  # the parents and the input are read only
        assert net.state_dict().keys() == state.keys()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    group_of = {s.tensor[:-len(".weight")]: g.name for g in graphs[0].free() for s in g.slots
                if s.tensor.endswith(".weight") and s.axis == 0 and s.role == "follower"}
    stats_a, stats_b = _bn_stats(a, x), _bn_stats(b, x)
    after, plain = _bn_stats(repaired, x), _bn_stats(fused, x)
    assert len(after) == 20 and set(group_of) == set(after)  # every batch norm of resnet18 is repaired
    off_target = 0
    for name, (mean, std) in after.items():
        assert bool((plans[1][group_of[name]].sum(0) == 1).all())
        source = plans[1][group_of[name]].argmax(0)  # fused channel j stands for parent b's channel source[j]
        target_mean = 0.5 * (stats_a[name][0] + stats_b[name][0][source])
        target_std = 0.5 * (stats_a[name][1] + stats_b[name][1][source])
        scale = float(target_std.mean())
        torch.testing.assert_close(mean, target_mean, rtol=0, atol=1e-3 * scale)
        torch.testing.assert_close(std, target_std, rtol=1e-3, atol=1e-4 * scale)
        off_target += bool((plain[name][1] - target_std).abs().max() > 0.05 * scale)  # without REPAIR
    assert off_target >= 15  # what REPAIR is for: the plain fusion's statistics are off the targets


def test_repair_of_a_permuted_copy_gives_the_logits_back(resnets, one_torch_thread):
    a, _, x = resnets
    twin = permuted_copy(a, 7, SHAPE)
    with torch.no_grad():
        logits = a(x)
    for opts in (FusionOptions(renormalize=True), FusionOptions(alignment="weight_matching", renormalize=True)):
        fused = fuse([a, twin], opts, x).model
        with torch.no_grad():
            assert (fused(x) - logits).abs().max() <= 1e-4 * logits.abs().max(), opts.alignment


def test_repair_points_cover_biases_norms_and_gained_biases():
    """A layer with a bias is set through it, a norm through its affine, a bias-free one by scale (or a gained bias)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4, bias=False), nn.LayerNorm(4), nn.ReLU(),
                          nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2)).eval()
    graph = trace_groups(model, (6,))
    points = {p.node: (p.scale, p.shift, p.writer) for p in repair_points(model, graph)}
    assert points == {"_0": ("0.weight", "0.bias", True), "_3": ("3.weight", "3.bias", False),
                      "_5": ("5.weight", None, True)}  # the logits' layer (7) is left alone
    gained = {p.node: p.shift for p in repair_points(model, graph, gain_bias=True)}
    assert gained["_5"] == "5.bias"


def test_repair_restores_mean_and_std_through_biases_and_gained_biases():
    """Two different MLPs with biases, a LayerNorm and a bias-free layer: each point at its target after REPAIR."""
    def mlp(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12, bias=False), nn.LayerNorm(12), nn.ReLU(),
                             nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)).eval()
    parents = [mlp(0), mlp(1)]
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(2))
    for gain in (False, True):
        result = fuse(parents, FusionOptions(mode="activations", renormalize=True, repair_bias=gain), x)
        fused = result.model
        names = {"0": "0", "3": "3", "5": "5"}
        acts = [capture_activations(p, x, names) for p in (*parents, fused)]
        for layer, group in (("0", "0"), ("3", "2"), ("5", "5")):
            plan = result.plans[1][group].double()
            plan = plan / plan.sum(0, keepdim=True)
            stats = [(a[layer].double().flatten(1).mean(1), a[layer].double().flatten(1).std(1)) for a in acts]
            target = [0.5 * (stats[0][i] + plan.T @ stats[1][i]) for i in (0, 1)]
            torch.testing.assert_close(stats[2][1], target[1], rtol=1e-4, atol=1e-5)  # the std everywhere
            if layer != "5" or gain:  # the mean where a bias or a norm can set it
                torch.testing.assert_close(stats[2][0], target[0], rtol=1e-4, atol=1e-5)
        assert (fused[5].bias is not None) == gain
        extra = sum(p.numel() for p in fused.parameters()) - sum(p.numel() for p in parents[0].parameters())
        assert extra == (8 if gain else 0)  # one bias per repaired neuron of the bias-free layer


def test_reset_batch_norm_returns_a_new_network_with_the_samples_statistics(resnets):
    a, _, x = resnets
    before = {k: v.clone() for k, v in a.state_dict().items()}
    reset = reset_batch_norm(a, x[:16])
    assert all(torch.equal(a.state_dict()[k], v) for k, v in before.items())
    z = capture_activations(a, x[:16], {"conv1": "conv1"})["conv1"].double()
    torch.testing.assert_close(reset.bn1.running_mean.double(), z.flatten(1).mean(1), rtol=1e-5, atol=1e-6)
    # The biased variance: what batch norm normalised by on x, so eval mode standardises x exactly.
    torch.testing.assert_close(reset.bn1.running_var.double(), z.flatten(1).var(1, unbiased=False), rtol=1e-5, atol=1e-6)
