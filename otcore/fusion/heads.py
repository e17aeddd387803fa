"""Plans for channel groups made of attention heads (otcore.graph_attention): heads move as whole blocks.

A multi-head attention computes the same function when its heads are reordered (query, key and
value heads together) and when, within a head, the query/key channels are reordered by one
permutation and the value channels by another. So a head-structured group's plan T (n_parent,
n_anchor) is a block matrix (Imfeld et al., ICLR 2024, align heads as units or within heads):

    T[head hp, head ha] = P[hp, ha] * W_{hp, ha}

with W_{hp,ha} the plan between the channels of parent head hp and anchor head ha (solved on
that block of the group's cost), and P the plan between heads, solved on the head cost
C[hp, ha] = sum over the groups sharing these heads of <W_{hp,ha}, cost block>. Head modes:
'units' (P solved), 'within' (P the identity: heads stay where they are) and 'flat' (the whole
group solved at once, heads ignored, as a plain layer: not exact even for a permuted copy).
For exact plans on a permuted copy the within-head cost is zero only between matching heads, so
both levels recover the permutation.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from otcore.graph import ChannelGroup, ModelGraph

HEAD_MODES = ("units", "within", "flat")
# within(cost block, member index, parent head, anchor head) -> plan block; between(head cost) -> head plan
WithinSolve = Callable[[torch.Tensor, int, int, int], torch.Tensor]


def solve_units(pairs: list[tuple[ChannelGroup, ChannelGroup]]) -> list[list[int]]:
    """Indices of (parent, anchor) group pairs solved together: the groups sharing heads, else one group each."""
    units: dict[str, list[int]] = {}
    for i, (_, g_a) in enumerate(pairs):
        units.setdefault(g_a.heads_with or f"\0{g_a.name}", []).append(i)
    return list(units.values())


def head_count(g_p: ChannelGroup, g_a: ChannelGroup) -> int:
    """The heads both parents' groups are split into (1: no head structure to keep)."""
    return g_a.heads if g_a.heads > 1 and g_p.heads == g_a.heads else 1


def block_plans(costs: list[torch.Tensor], heads: int, within: WithinSolve,
                between: Callable[[torch.Tensor], torch.Tensor], mode: str) -> list[torch.Tensor]:
    """One plan per cost (n_parent_m, n_anchor_m), all sharing one plan between their `heads` heads ('units'),
    or each head kept in place ('within')."""
    pairs = [(hp, hp) for hp in range(heads)] if mode == "within" else [(hp, ha) for hp in range(heads)
                                                                           for ha in range(heads)]
    head_cost = torch.zeros(heads, heads, dtype=torch.float64, device=costs[0].device)
    blocks: list[dict[tuple[int, int], torch.Tensor]] = []
    for m, cost in enumerate(costs):
        dp, da = cost.shape[0] // heads, cost.shape[1] // heads
        found = {}
        for hp, ha in pairs:
            part = cost[hp * dp:(hp + 1) * dp, ha * da:(ha + 1) * da]
            plan = within(part, m, hp, ha)
            plan = plan / plan.sum().clamp_min(1e-300)  # mass 1 per block: the head plan carries the mass
            head_cost[hp, ha] += (plan.double() * part.double()).sum()
            found[(hp, ha)] = plan
        blocks.append(found)
    if mode == "within":
        plan_between = torch.eye(heads, dtype=torch.float64, device=costs[0].device) / heads
    else:
        plan_between = between(head_cost)
    out = []
    for cost, found in zip(costs, blocks):
        dp, da = cost.shape[0] // heads, cost.shape[1] // heads
        plan = torch.zeros(cost.shape, dtype=cost.dtype, device=cost.device)
        for (hp, ha), block in found.items():
            plan[hp * dp:(hp + 1) * dp, ha * da:(ha + 1) * da] = plan_between[hp, ha].to(cost.dtype) * block
        out.append(plan)
    return out


def random_head_permutations(graph: ModelGraph, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random permutation of every free group (new channel i = old perm[i]); a head-structured group's moves
    whole heads (one head order per set of groups sharing heads) and reorders the channels within each head."""
    perms: dict[str, torch.Tensor] = {}
    head_orders: dict[str, torch.Tensor] = {}
    for group in graph.free():
        if group.heads <= 1:
            perms[group.name] = torch.randperm(group.size, generator=generator)
            continue
        key = group.heads_with or group.name
        order = head_orders.setdefault(key, torch.randperm(group.heads, generator=generator))
        width = group.size // group.heads
        perms[group.name] = torch.cat([h * width + torch.randperm(width, generator=generator) for h in order.tolist()])
    return perms
