"""Renormalisation after fusion (REPAIR, Jordan et al., 2022) of the zoo's bias-free networks.

Averaging aligned neurons shrinks their pre-activation variance. REPAIR restores, for each fused
neuron, the statistics of the parents' neurons it stands for. The zoo's architectures have no
biases, so by default only the standard deviation is restored (a scale folded into the neuron's
incoming weights); the mean scales along with it. With `gain_bias` (`--repair-bias`) the fused
layer gains a bias, one per repaired neuron, set so that the mean is restored too. Groups written
by several layers (a ResNet's residual stream) are left as they are: scaling one writer would
unbalance the sum with the identity path. Networks traced into groups: otcore.fusion.group_repair.
"""
from __future__ import annotations

import torch

from otcore.activations import capture_activations
from otcore.errors import FusionError
from otcore.fusion.align import Plans
from otcore.fusion.new_weights import with_biases
from otcore.models import FusableNet

EPS = 1e-6


def check_sample(x: torch.Tensor) -> None:
    """Refuses a sample too small for a standard deviation (torch would warn and return NaN)."""
    if x.shape[0] < 2:
        raise FusionError("REPAIR restores each neuron's standard deviation on the activation sample, which needs "
                          f"at least 2 samples; got {x.shape[0]}")


def _single_writer_groups(model: FusableNet) -> dict[str, str]:
    """group -> its only writer layer, for groups whose pre-activation module is that writer."""
    writers: dict[str, list[str]] = {}
    for layer in model.alignment_layers():
        writers.setdefault(layer.out_group, []).append(layer.name)
    modules = model.group_modules()
    return {g: names[0] for g, names in writers.items() if len(names) == 1 and modules.get(g) == names[0]}


def _targets(parents: list[FusableNet], plans: list[Plans], weights: list[float], x: torch.Tensor,
             groups: dict[str, str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per fused neuron, the weighted mean of the (mean, std) of the parent neurons aligned to it."""
    target: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for parent, plan, weight in zip(parents, plans, weights):
        acts = capture_activations(parent, x, {g: parent.group_modules()[g] for g in groups})
        for g, a in acts.items():
            stats = torch.stack([a.mean(1), a.std(1)], 1)  # (neurons, 2)
            t = plan.get(g)
            if t is not None:  # columns normalised: each anchor neuron is a convex combination
                stats = (t / t.sum(0, keepdim=True).clamp_min(EPS)).T @ stats
            mean, std = target.get(g, (0, 0))
            target[g] = (mean + weight * stats[:, 0], std + weight * stats[:, 1])
    return target


@torch.no_grad()
def repair(fused: FusableNet, parents: list[FusableNet], plans: list[Plans], weights: list[float],
           x: torch.Tensor, target: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
           gain_bias: bool = False) -> FusableNet:
    """Rescale each fused neuron so its pre-activation std on x matches its parents' (in place, or a new
    network with `gain_bias`).

    target: per group, the (mean, std) to restore, where the caller knows it better than the plans do
    (merge maps that are not transport plans: CCA Merge, ZipIt!).
    gain_bias: each repaired layer gains a bias (one parameter per neuron) that restores the mean too."""
    check_sample(x)
    groups = _single_writer_groups(fused)
    if target is None:
        target = _targets(parents, plans, weights, x, groups)
    if gain_bias:
        fused = with_biases(fused, [name for name in groups.values() if fused.get_submodule(name).bias is None])
    scales: dict[str, torch.Tensor] = {}
    shifts: dict[str, torch.Tensor] = {}
    handles = []
    for g, name in groups.items():
        def hook(layer: torch.nn.Module, _inp: tuple, out: torch.Tensor, g: str = g) -> torch.Tensor:
            # Measured after the earlier groups were rescaled, so one pass settles every layer.
            rows = out.transpose(0, 1).reshape(out.shape[1], -1)
            mean, std = rows.mean(1), rows.std(1)
            target_mean, target_std = target[g]
            scales[g] = torch.where(std > EPS, target_std / std.clamp_min(EPS), torch.ones_like(std))
            view = (1, -1, *([1] * (out.dim() - 2)))
            if not gain_bias:
                return out * scales[g].view(view)
            # out = W x + b: k W x + b' has mean target_mean when b' = target_mean - k (mean - b)
            bias = layer.bias
            shifts[g] = target_mean - scales[g] * (mean - bias)
            return (out - bias.view(view)) * scales[g].view(view) + shifts[g].view(view)
        handles.append(fused.get_submodule(name).register_forward_hook(hook))
    try:
        fused.eval()(x.to(next(fused.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    for g, name in groups.items():
        layer = fused.get_submodule(name)
        layer.weight.mul_(scales[g].view(-1, *([1] * (layer.weight.dim() - 1))))
        if gain_bias:
            layer.bias.copy_(shifts[g])
    return fused
