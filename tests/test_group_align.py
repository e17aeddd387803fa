"""Fusion over traced channel groups (otcore.fusion.group_align).

Two independent checks: on the zoo, the traced engine gives what the hand-written walk gives
(plans and fused weights, on parents that are not permutations of each other, different widths
included); on torchvision networks with batch norm, depthwise convolutions, squeeze-excitation and
concatenations, fusing a network with a permuted copy of itself gives back its logits, by OT on
weights, OT on activations and weight matching.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from otcore.fusion import FusionOptions, fuse
from otcore.fusion.align import ot_plans
from otcore.fusion.group_align import align_state, fuse_by_groups, ot_group_plans
from otcore.fusion.weight_matching import weight_matching_plans
from otcore.graph import trace_groups
from otcore.models import build_model
from tests.test_graph import _noisy, _permuted_twin

SHAPE = (1, 8, 8)


def _zoo(name: str, seed: int):
    torch.manual_seed(seed)  # the zoo's builders draw from the global generator, as torchvision's do
    return build_model(name, SHAPE, 10).eval()


def _inputs(n: int, shape=SHAPE, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _old_group_name(old_plans: dict, plan: torch.Tensor) -> str:
    return next(g for g, p in old_plans.items() if p is not None and p.shape == plan.shape and torch.equal(p, plan))


@pytest.mark.parametrize("name,mode", [("mlpnet", "weights"), ("mlpnet", "activations"), ("vgg_tiny_nobias", "weights"),
                                       ("vgg_tiny_nobias", "activations"), ("resnet_tiny_nobias_nobn", "weights")])
def test_on_the_zoo_the_traced_engine_equals_the_hand_written_walk(name, mode):
    anchor, parent = _zoo(name, 0), _zoo(name, 1)
    x = _inputs(200)
    opts = FusionOptions(mode=mode)
    expected = fuse([anchor, parent], opts, x)
    fused, plans, _, _ = fuse_by_groups([anchor, parent], opts, x)
    assert len(plans[1]) == len([p for p in expected.plans[1].values() if p is not None])
    for plan in plans[1].values():
        _old_group_name(expected.plans[1], plan)  # every traced plan is one of the walk's plans
    for key, tensor in expected.model.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], tensor, rtol=1e-6, atol=1e-7)


def test_a_wider_parent_fuses_into_the_anchors_widths_as_the_walk_does():
    anchor, parent = _zoo("mlpnet", 0), _zoo("mlpnet_doub", 1)
    graphs = [trace_groups(m, SHAPE) for m in (parent, anchor)]
    plans, diagnostics = ot_group_plans(parent, anchor, graphs[0], graphs[1], FusionOptions())
    expected, _ = ot_plans(parent, anchor, FusionOptions())
    assert [plans[g].shape for g in ("fc1", "fc2", "fc3")] == [(800, 400), (400, 200), (200, 100)]
    for g in ("fc1", "fc2", "fc3"):
        torch.testing.assert_close(plans[g], expected[g])
    assert [d.group for d in diagnostics] == ["fc1", "fc2", "fc3"]


def _matching_objective(parent, anchor, graph_p, graph_a, plans) -> float:
    """Git Re-Basin's objective: sum over every tensor of <anchor, parent moved by the plans>."""
    moved = align_state(parent.state_dict(), graph_p, graph_a, plans)
    return sum(float((t.double() * moved[k].double()).sum()) for k, t in anchor.state_dict().items()
               if t.is_floating_point())


@pytest.mark.parametrize("name", ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"])
def test_weight_matching_over_traced_groups_matches_at_least_as_well_as_the_walk(name):
    anchor, parent = _zoo(name, 0), _zoo(name, 1)
    graph_p, graph_a = trace_groups(parent, SHAPE), trace_groups(anchor, SHAPE)
    traced = fuse_by_groups([anchor, parent], FusionOptions(alignment="weight_matching"), None, [graph_a, graph_p])[1][1]
    walked = weight_matching_plans(parent, anchor)
    first_writer = {layer.out_group: layer.name for layer in reversed(anchor.alignment_layers())}
    walked_traced = {g.name: walked[next(o for o, w in first_writer.items() if w in g.writers())] for g in graph_a.free()}
    assert all(torch.equal(p @ p.T, torch.eye(len(p), dtype=p.dtype)) for p in traced.values())  # permutations
    assert _matching_objective(parent, anchor, graph_p, graph_a, traced) >= \
        _matching_objective(parent, anchor, graph_p, graph_a, walked_traced) - 1e-6


# Batch norm and residual sums; depthwise convolutions with squeeze-excitation and hardswish;
# fire modules (concatenations) with biases.
TORCHVISION = ["resnet18", "mobilenet_v3_small", "squeezenet1_1"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_a_torchvision_network_fused_with_its_permuted_copy_keeps_its_logits(name):
    torch.manual_seed(0)
    model = _noisy(torchvision.models.get_model(name, num_classes=10), 1)
    twin, moved = _permuted_twin(model, (3, 32, 32), seed=2)
    assert moved > 0.9
    _assert_every_alignment_gives_back_the_logits(model, twin, _inputs(32, (3, 32, 32)), 1e-4)


# Every alignment a traced network is fused by (also the walk's, tests/test_model_walk.py): one entry each.
ALIGNMENTS = [FusionOptions(), FusionOptions(mode="activations"), FusionOptions(alignment="weight_matching"),
              FusionOptions(alignment="cca"), FusionOptions(alignment="zipit")]
PLAN_ALIGNMENTS = ALIGNMENTS[:3]


def _assert_every_alignment_gives_back_the_logits(model, twin, x: torch.Tensor, tolerance: float,
                                                  alignments=PLAN_ALIGNMENTS, more_twins=(),
                                                  sample: torch.Tensor | None = None) -> None:
    """Fusing the model with its permuted copies by each alignment (default: OT by weights and by activations,
    weight matching) gives its logits on x.

    sample: the inputs alignments by activations see (x when None)."""
    with torch.inference_mode():
        logits = model(x)
    for opts in alignments:
        fused = fuse([model, twin, *more_twins], opts, x if sample is None else sample).model
        with torch.inference_mode():
            assert (fused(x) - logits).abs().max() <= tolerance * logits.abs().max(), (opts.alignment, opts.mode)


def test_repair_and_merge_methods_without_a_usable_sample_are_refused_on_traced_networks_with_one_message():
    torch.manual_seed(0)
    model = torchvision.models.get_model("squeezenet1_1", num_classes=10).eval()
    x = _inputs(8, (3, 32, 32))
    from otcore.errors import FusionError
    for alignment in ("ot", "cca", "zipit"):
        with pytest.raises(FusionError, match="at least 2 samples"):
            fuse([model, model], FusionOptions(alignment=alignment, renormalize=True), x[:1])
    with pytest.raises(FusionError, match="needs a sample"):
        fuse([model, model], FusionOptions(renormalize=True), None)
    with pytest.raises(FusionError, match="CCA Merge needs a sample of inputs"):
        fuse([model, model], FusionOptions(alignment="cca"))


class _ChannelsLastBlock(torch.nn.Module):
    """A ConvNeXt block at toy size: depthwise conv, then LayerNorm and an MLP on channels-last tokens."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 2, stride=2)
        self.dwconv = torch.nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)
        self.scale = torch.nn.Parameter(torch.full((width,), 0.5))
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.down(torch.nn.functional.gelu(self.up(self.norm(h)))).permute(0, 3, 1, 2)
        x = x + self.scale[:, None, None] * h
        return self.head(x.mean((2, 3)))


def test_channels_last_features_are_sampled_on_their_own_dimension():
    # The MLP's hidden channels sit on the last dimension: OT on activations must compare them there.
    torch.manual_seed(0)
    model = _noisy(_ChannelsLastBlock(), 1)
    twin, moved = _permuted_twin(model, (3, 16, 16), seed=2)
    assert moved > 0.8  # all but the input's and the logits' sides
    _assert_every_alignment_gives_back_the_logits(model, twin, _inputs(16, (3, 16, 16)), 1e-5)
