"""Renormalisation after fusion (REPAIR, Jordan et al., 2022), rescale-only for bias-free nets.

Averaging aligned neurons shrinks their pre-activation variance. REPAIR restores, for each fused
neuron, the statistics of the parents' neurons it stands for. Our architectures have no biases,
so only the standard deviation is restored (a scale folded into the neuron's incoming weights);
the mean scales along with it and cannot be shifted independently. Groups written by several
layers (a ResNet's residual stream) are left as they are: scaling one writer would unbalance the
sum with the identity path.
"""
from __future__ import annotations

import torch

from otcore.activations import capture_activations
from otcore.errors import FusionError
from otcore.fusion.align import Plans
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


def _target_std(parents: list[FusableNet], plans: list[Plans], weights: list[float], x: torch.Tensor,
                groups: dict[str, str]) -> dict[str, torch.Tensor]:
    """Per fused neuron, the weighted mean of the std of the parent neurons aligned to it."""
    target: dict[str, torch.Tensor] = {}
    for parent, plan, weight in zip(parents, plans, weights):
        acts = capture_activations(parent, x, {g: parent.group_modules()[g] for g in groups})
        for g, a in acts.items():
            std = a.std(1)
            t = plan.get(g)
            if t is not None:  # columns normalised: each anchor neuron is a convex combination
                std = (t / t.sum(0, keepdim=True).clamp_min(EPS)).T @ std
            target[g] = target.get(g, 0) + weight * std
    return target


@torch.no_grad()
def repair(fused: FusableNet, parents: list[FusableNet], plans: list[Plans], weights: list[float],
           x: torch.Tensor, target: dict[str, torch.Tensor] | None = None) -> FusableNet:
    """Rescale each fused neuron so its pre-activation std on x matches its parents' (in place).

    target: per group, the std to restore, where the caller knows it better than the plans do
    (merge maps that are not transport plans: CCA Merge, ZipIt!)."""
    check_sample(x)
    groups = _single_writer_groups(fused)
    if target is None:
        target = _target_std(parents, plans, weights, x, groups)
    scales: dict[str, torch.Tensor] = {}
    handles = []
    for g, name in groups.items():
        def hook(_m: torch.nn.Module, _inp: tuple, out: torch.Tensor, g: str = g) -> torch.Tensor:
            # Measured after the earlier groups were rescaled, so one pass settles every layer.
            std = out.transpose(0, 1).reshape(out.shape[1], -1).std(1)
            scales[g] = torch.where(std > EPS, target[g] / std.clamp_min(EPS), torch.ones_like(std))
            return out * scales[g].view(1, -1, *([1] * (out.dim() - 2)))
        handles.append(fused.get_submodule(name).register_forward_hook(hook))
    try:
        fused.eval()(x.to(next(fused.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    for g, name in groups.items():
        weight = fused.get_submodule(name).weight
        weight.mul_(scales[g].view(-1, *([1] * (weight.dim() - 1))))
    return fused
