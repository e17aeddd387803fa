"""Permutation symmetry: hidden neurons can be reordered without changing a network's function.

A permuted copy of a network is the canonical input on which fusion must be exact, so tests
and demos build one here.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from otcore.fusion.align import Plans, apply_plans, weight_of
from otcore.fusion.group_align import input_shape_of
from otcore.fusion.heads import random_head_permutations
from otcore.graph import permute_state, trace_groups
from otcore.models import INPUT, OUTPUT, FusableNet


def random_permutations(model: FusableNet, seed: int) -> Plans:
    """A random permutation matrix (n, n) for every hidden group of the model."""
    generator = torch.Generator().manual_seed(seed)
    plans: Plans = {INPUT: None, OUTPUT: None}
    for layer in model.alignment_layers():
        if layer.out_group not in plans:
            weight = weight_of(model, layer.name)
            n = weight.shape[0]
            plans[layer.out_group] = torch.eye(n, dtype=weight.dtype, device=weight.device)[
                torch.randperm(n, generator=generator)]
    return plans


def permuted_copy(model: nn.Module, seed: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A copy of the model with every hidden group's neurons randomly reordered (same function).

    Attention heads move as whole blocks (query, key and value heads together), and channels are reordered
    within each head (otcore.fusion.heads).

    Any network outside the zoo is traced into its channel groups (otcore.graph), for which it needs the
    shape of one input: `input_shape`, else the model's own `input_shape` attribute."""
    # A plain deepcopy: permutations are for unpruned networks (a masked one has no leaf `weight` to copy).
    twin = copy.deepcopy(model)
    if isinstance(model, FusableNet):
        twin.load_state_dict({**model.state_dict(), **apply_plans(model, model, random_permutations(model, seed))})
        return twin.eval()
    graph = trace_groups(model, input_shape_of(model, None) if input_shape is None else tuple(input_shape))
    generator = torch.Generator().manual_seed(seed)
    twin.load_state_dict(permute_state(model.state_dict(), graph, random_head_permutations(graph, generator)))
    return twin.eval()
