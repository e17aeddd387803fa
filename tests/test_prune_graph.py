"""Structured pruning through traced channel groups (otcore.prune_groups via otcore.prune) on torchvision and timm nets.

Each network is pruned at 50 % and checked against computations made here: the channels a group loses are
the ones with the smallest sum of its writers' L1 row norms, zero in every tensor of the group; the compacted
network has the logits of the masked one and the parameter count the group widths give; masks hold through
retraining; the groups a LayerNorm normalises together are left whole.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from otcore.config import PruneSpec, RetrainSpec
from otcore.errors import PruneError
from otcore.external_models import build_external
from otcore.graph import trace_groups
from otcore.models import count_parameters
from otcore.prune import (compact, copy_model, finalize, is_pruned, prunable_layers, prune_model, sparsity_report,
                          strip_masks_state_dict)
from otcore.prune_groups import output_layers
from otcore.train import train

SHAPE = (3, 32, 32)
FRACTION = 0.5
ARCHS = ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:squeezenet1_1", "timm:convnext_atto",
         pytest.param("torchvision:densenet121", marks=pytest.mark.slow)]


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Noise on every weight and statistic: fresh batch norms (weight 1, bias and mean 0) would hide a missed slot."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor = tensor + (0.1 * float(tensor.std()) + 0.05) * torch.randn(tensor.shape, generator=generator)
            tensor = tensor.abs() + 0.5 if key.endswith("running_var") else tensor
        state[key] = tensor
    model.load_state_dict(state)
    return model.eval()


def across_channels(model: nn.Module, group) -> bool:
    """A LayerNorm (or GroupNorm in blocks) normalises the group: its channel count is part of the function."""
    owners = [model.get_submodule(s.tensor.rpartition(".")[0]) for s in group.slots]
    return any(isinstance(m, nn.LayerNorm) or isinstance(m, nn.GroupNorm) and m.num_groups != m.num_channels
               for m in owners)


def expected_cuts(model: nn.Module, graph) -> dict[str, torch.Tensor]:
    """Group -> the channels 50 % structured L1 pruning removes, computed from the writers' weights here."""
    cuts = {}
    for group in graph.free():
        if across_channels(model, group):
            continue
        score = sum(model.get_submodule(w).weight.detach().abs().flatten(1).sum(1).double() for w in group.writers())
        cuts[group.name] = torch.argsort(score, stable=True)[:round(FRACTION * group.size)].sort().values
    return cuts


def channel_entries(tensor: torch.Tensor, slot, channels: torch.Tensor) -> torch.Tensor:
    index = (slot.offset + channels[:, None] * slot.repeat + torch.arange(slot.repeat)).flatten()
    return tensor.index_select(slot.axis, index)


@pytest.fixture(scope="module", params=ARCHS)
def case(request):
    torch.manual_seed(0)
    model = perturbed(build_external(request.param, SHAPE, 10), 1)
    graph = trace_groups(model, SHAPE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_model(model, PruneSpec(fraction=FRACTION, type="structured"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not is_pruned(model)
    return request.param, model, graph, pruned, expected_cuts(model, graph)


def assert_cut(model: nn.Module, graph, state: dict[str, torch.Tensor], cuts: dict[str, torch.Tensor]) -> None:
    """Every cut channel is zero in every slot of its group; groups normalised together are untouched."""
    for group in graph.free():
        if group.name not in cuts:  # no channel of it is gone from every slot
            everywhere = torch.ones(group.size, dtype=torch.bool)
            for slot in group.slots:
                entries = channel_entries(state[slot.tensor], slot, torch.arange(group.size)).movedim(slot.axis, 0)
                everywhere &= (entries.reshape(group.size, -1) == 0).all(1)
            assert not everywhere.any(), group.name
            continue
        for slot in group.slots:
            assert not channel_entries(state[slot.tensor], slot, cuts[group.name]).any(), (group.name, slot)


def test_pruned_channels_are_zero_in_every_slot_of_their_group(case):
    arch, model, graph, pruned, cuts = case
    assert cuts and is_pruned(pruned)
    state = strip_masks_state_dict(pruned)
    assert_cut(model, graph, state, cuts)
    for group in graph.free():  # the kept channels of a writer keep their weights
        if group.name in cuts:
            kept = torch.tensor(sorted(set(range(group.size)) - set(cuts[group.name].tolist())))
            writer = next(s for s in group.slots if s.role == "writer")
            assert channel_entries(state[writer.tensor], writer, kept).flatten(1).any(1).all(), group.name
    if arch == "timm:convnext_atto":  # the stages' streams meet a LayerNorm: only the MLPs' hidden groups shrink
        assert set(cuts) == {g.name for g in graph.free() if g.name.endswith("mlp.fc1")}


def test_compacted_network_has_the_masked_logits_and_the_widths_parameters(case):
    arch, model, graph, pruned, cuts = case
    result = compact(pruned)
    assert not is_pruned(result.model) and is_pruned(pruned)
    assert result.shrunk == {g.name: (g.size, g.size - len(cuts[g.name])) for g in graph.free() if g.name in cuts}
    removed: dict[tuple[str, int], int] = {}
    for group in graph.free():
        for slot in group.slots if group.name in cuts else ():
            removed[(slot.tensor, slot.axis)] = removed.get((slot.tensor, slot.axis), 0) + len(cuts[group.name]) * slot.repeat
    expected = sum(math.prod(n - removed.get((name, axis), 0) for axis, n in enumerate(p.shape))
                   for name, p in model.named_parameters())
    assert result.params_before == count_parameters(model)
    assert result.params_after == count_parameters(result.model) == expected < result.params_before
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        masked, small = pruned.eval()(x), result.model.eval()(x)
    assert (small - masked).abs().max() <= 1e-5 * masked.abs().max()


def test_masks_hold_through_retraining(case):
    arch, model, graph, pruned, cuts = case
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, *SHAPE, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    tuned = copy_model(pruned)  # masks and buffer masks copied: the module's fixture stays as it is
    train(tuned, x, y, RetrainSpec(lr=0.05, schedule="constant", batch_size=8), epochs=1)  # two steps, train mode
    state, start = strip_masks_state_dict(tuned), strip_masks_state_dict(pruned)
    moved = [k for k, v in state.items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert any(k.endswith("running_mean") or k.endswith("weight") for k in moved)  # it did train
    for group in graph.free():  # running statistics included: training mode updated them
        for slot in group.slots if group.name in cuts else ():
            assert not channel_entries(state[slot.tensor], slot, cuts[group.name]).any(), (group.name, slot)
    result = compact(tuned)
    with torch.no_grad():
        masked, small = tuned.eval()(x), result.model.eval()(x)
    assert (small - masked).abs().max() <= 1e-5 * masked.abs().max()


def test_finalize_leaves_plain_tensors_with_the_original_keys(case):
    arch, model, graph, pruned, cuts = case
    final = finalize(pruned)
    assert not is_pruned(final) and set(final.state_dict()) == set(model.state_dict())
    assert not any(m._forward_hooks for m in final.modules())
    assert_cut(model, graph, final.state_dict(), cuts)
    report = sparsity_report(pruned)
    assert report.params_total == count_parameters(model) and report.params_nonzero < report.params_total


def test_unstructured_pruning_of_an_external_network():
    model = perturbed(build_external("torchvision:resnet18", SHAPE, 10), 4)
    assert output_layers(model) == ["fc"]
    layers = prunable_layers(model, "all", keep_last_layer=True)
    assert "fc" not in layers and len(layers) == 20  # 17 convolutions + 3 shortcut convolutions
    pruned = prune_model(model, PruneSpec(fraction=0.3, type="unstructured"))
    report = sparsity_report(pruned, layers)
    assert all(abs(r.zeros - 0.3 * r.numel) <= 1 for r in report.layers)
    assert not (pruned.fc.weight == 0).any()
    assert prunable_layers(model, "linear", keep_last_layer=False) == ["fc"]


class Attention(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, 2 * h, 2 * h)[0].mean(1))  # cross-attention: refused by the tracer


def test_a_network_the_tracer_refuses_is_one_prune_error():
    net = Attention()
    with pytest.raises(PruneError, match="channel groups: .*MultiheadAttention"):
        prune_model(net, PruneSpec(fraction=0.5, type="structured"), input_shape=(4, 8))
    with pytest.raises(PruneError, match="input shape"):
        prune_model(net, PruneSpec(fraction=0.5, type="structured"))
    pruned = prune_model(net, PruneSpec(fraction=0.5, type="unstructured"))  # no tracing needed: weights only
    assert sparsity_report(pruned, ["embed"]).overall_fraction == 0.5
