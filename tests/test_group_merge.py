"""CCA Merge and ZipIt! over traced channel groups (otcore.fusion.group_merge), and batch-norm statistics
after merges that are not permutations (otcore.fusion.batch_norm).

A network fused with permuted copies of itself must give its logits back (both methods find the
permutations, and every writer, reader and follower moves with them); a soft merge must leave each
batch norm standardising exactly what it reads on the sample.

The networks get random weights and batch-norm affine parameters, with running statistics measured
on the sample: with random statistics the signal of random inputs fades layer by layer until the deep
features of every image are the same up to rounding, where correlation (what both methods compare)
cannot tell channels apart, while OT's distances still can.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from otcore.errors import FusionError
from otcore.fusion import FusionOptions, fuse, permuted_copy
from otcore.fusion.batch_norm import fold_batch_norm, reset_batch_norm
from otcore.fusion.group_align import fuse_by_groups
from otcore.graph import trace_groups
from tests.test_graph import _noisy
from tests.test_group_align import _assert_every_alignment_gives_back_the_logits, _inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (3, 32, 32)
CCA, ZIPIT = FusionOptions(alignment="cca"), FusionOptions(alignment="zipit")


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random weights and affine parameters; batch-norm statistics of the sample."""
    return reset_batch_norm(_noisy(model, 1), x)


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm
        return timm.create_model(name.removeprefix("timm:"), num_classes=10)
    return torchvision.models.get_model(name, num_classes=10)


# Batch norm and residual sums; depthwise convolutions with squeeze-excitation gates and hardswish;
# dense concatenations; timm's SE blocks.
@pytest.mark.parametrize("name,opts", [
    ("resnet18", CCA), ("resnet18", ZIPIT), ("mobilenet_v3_small", CCA), ("timm:seresnet18", CCA),
    ("timm:seresnet18", ZIPIT),
    pytest.param("mobilenet_v3_small", ZIPIT, marks=pytest.mark.slow),
    pytest.param("densenet121", CCA, marks=pytest.mark.slow), pytest.param("densenet121", ZIPIT, marks=pytest.mark.slow)])
def test_a_network_merged_with_its_permuted_copy_keeps_its_logits(name, opts):
    x = _inputs(64, SHAPE)
    model = _calibrated(_build(name), x)
    _assert_every_alignment_gives_back_the_logits(model, permuted_copy(model, 2, SHAPE), x, 1e-4, (opts,))


@pytest.mark.slow
def test_convnext_layer_norms_follow_their_groups_through_both_merges():
    x = _inputs(64, SHAPE)
    model = _noisy(_build("timm:convnext_atto"), 1)
    graph = trace_groups(model, SHAPE)
    followers = {s.tensor for g in graph.free() for s in g.slots if s.role == "follower"}
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) or "LayerNorm" in type(m).__name__]
    assert norms and all(f"{n}.weight" in followers and f"{n}.bias" in followers for n in norms)
    _assert_every_alignment_gives_back_the_logits(model, permuted_copy(model, 2, SHAPE), x, 1e-4, (CCA, ZIPIT))


class _Residual(nn.Module):
    """Zoo-free test model: a conv-BN-ReLU stem, one residual block and a linear head, of any width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * width)
        self.conv2, self.bn2 = nn.Conv2d(2 * width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.head(x.mean((2, 3)))


def test_three_parents_merge_back_into_the_original():
    x = _inputs(64, SHAPE)
    torch.manual_seed(0)
    model = _calibrated(_Residual(16), x)
    twins = [permuted_copy(model, seed, SHAPE) for seed in (2, 3)]
    _assert_every_alignment_gives_back_the_logits(model, twins[0], x, 1e-4, (CCA, ZIPIT), more_twins=twins[1:])


@pytest.mark.parametrize("opts", [CCA, ZIPIT])
def test_a_wider_parent_merges_into_the_anchors_widths(opts):
    x = _inputs(128, SHAPE)
    torch.manual_seed(0)
    anchor, wider = _calibrated(_Residual(8), x), _calibrated(_Residual(12), x)
    fused = fuse([anchor, wider], opts, x).model
    assert {k: t.shape for k, t in fused.state_dict().items()} == {k: t.shape for k, t in anchor.state_dict().items()}
    with torch.no_grad():
        assert torch.isfinite(fused(x)).all()
    # Not a permutation: the batch norms hold the statistics of the sample.
    assert _standardises_on(fused, x)


def _measured_statistics(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each batch norm's input mean and (biased) variance on x, measured in eval mode."""
    found = {}
    handles = [m.register_forward_pre_hook(
        lambda m, inp, name=name: found.__setitem__(name, (inp[0].transpose(0, 1).reshape(m.num_features, -1).double())))
        for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {name: (c.mean(1), c.var(1, unbiased=False)) for name, c in found.items()}


def _standardises_on(model: nn.Module, x: torch.Tensor) -> bool:
    measured = _measured_statistics(model, x)
    norms = dict(model.named_modules())
    return bool(measured) and all(
        torch.allclose(norms[n].running_mean.double(), mean, rtol=1e-4, atol=1e-5)
        and torch.allclose(norms[n].running_var.double(), var, rtol=1e-4, atol=1e-6) for n, (mean, var) in measured.items())


def test_a_soft_ot_plan_leaves_batch_norm_statistics_measured_on_the_sample():
    x = _inputs(96, SHAPE)
    parents = [_calibrated(_Residual(8), x)]
    torch.manual_seed(1)
    parents.append(_calibrated(_Residual(8), x))
    opts = FusionOptions(mode="activations", solver="sinkhorn", reg=0.05)
    fused, plans, _, _ = fuse_by_groups(parents, opts, x)
    assert any(((p > 1e-3) & (p < 0.999)).any() for p in plans[1].values())  # the plans do mix channels
    assert _standardises_on(fused, x)
    moved, _, _, _ = fuse_by_groups(parents, opts, x, norms="moved")
    assert not _standardises_on(moved, x)  # the plans' averaged statistics are not the fused network's


def test_reset_batch_norm_returns_a_new_model_and_pools_batches():
    x = _inputs(64, SHAPE)
    torch.manual_seed(0)
    model = _noisy(_Residual(8), 1)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    reset = reset_batch_norm(model, x)
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())  # the input is untouched
    assert not reset.training and _standardises_on(reset, x)
    # In batches of 16 the first norm (whose input does not depend on other norms) pools them exactly.
    first = reset_batch_norm(model, x, batch_size=16).stem[1]
    torch.testing.assert_close(first.running_var, reset.stem[1].running_var, rtol=1e-5, atol=1e-6)
    with pytest.raises(FusionError, match="at least 2 examples"):
        reset_batch_norm(model, x[:1])


def test_folding_keeps_the_function_and_leaves_identity_norms():
    x = _inputs(32, SHAPE)
    model = _noisy(_build("resnet18"), 1)
    folded, paths = fold_batch_norm(model)
    assert len(paths) == 20  # every batch norm of resnet18 follows a convolution
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    norm = folded.get_submodule(paths[0])
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(norm.running_mean,
                                                                                  torch.zeros_like(norm.running_mean))
