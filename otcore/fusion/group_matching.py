"""Git Re-Basin's weight matching (Ainsworth et al., 2022) over the channel groups traced from any model.

Coordinate descent: each group in turn takes the permutation (scipy's linear_sum_assignment) that
maximises sum_slots <W_anchor[slot], W_parent[slot] with every other group's current permutation
applied>, in random order, until a sweep improves nothing. A group's similarity is a sum of one term
per slot, and a term depends only on the permutations of the other axes of its tensor. So each term
is kept with the index it was computed under: unchanged, it is reused; where one axis's index
changed in a few positions, only those positions' contribution is recomputed (vgg11_bn's
classifier.0, 4096 x 25088 in float64, took a 4e11-flop product per change of the 512 channels before
it; late sweeps move a handful of them).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from otcore.errors import FusionError
from otcore.fusion.align import Gather, Plans, as_gather
from otcore.fusion.group_state import _move_axis, _moves_by_tensor, _segment
from otcore.fusion.heads import block_plans, head_count, solve_units
from otcore.graph import ChannelGroup, ModelGraph, Slot

PARTIAL_UPDATE_SHARE = 0.25  # recompute only the changed positions' part of a term when at most this share changed


def _indices(tensor: torch.Tensor, moves_by_axis: dict[int, list]) -> dict[int, torch.Tensor] | None:
    """Per moved axis, the parent position each position takes (a gather index); None where a move is not a gather."""
    out = {}
    for axis, moves in moves_by_axis.items():
        if not all(isinstance(m[3], Gather) and m[3].scale is None for m in moves):
            return None
        out[axis] = _move_axis(torch.arange(tensor.shape[axis]), 0, moves)
    return out


class _SlotTerm:
    """One slot's similarity term anchor_rows @ parent_rows^T under the other axes' current indices."""

    def __init__(self, anchor: torch.Tensor, parent: torch.Tensor, anchor_slot: Slot, slot: Slot, size: int) -> None:
        self.anchor, self.parent, self.anchor_slot, self.slot, self.size = anchor, parent, anchor_slot, slot, size
        self.anchor_rows = _segment(anchor, anchor_slot, size)  # fixed for the whole descent: read once
        self.index: dict[int, torch.Tensor] | None = None
        self.value: torch.Tensor | None = None

    def _rows(self, tensor: torch.Tensor, axis: int, positions: torch.Tensor, slot: Slot) -> torch.Tensor:
        return _segment(tensor.index_select(axis, positions), slot, self.size)

    def update(self, moves_by_axis: dict[int, list]) -> torch.Tensor:
        """The term under these moves of the other axes (all of this tensor's moves but the slot's own segment)."""
        index = _indices(self.parent, moves_by_axis)
        if self.value is not None and index is not None and self.index is not None and index.keys() == self.index.keys():
            changed = {axis: (index[axis] != self.index[axis]).nonzero().squeeze(1) for axis in index}
            moved = [axis for axis, where in changed.items() if len(where)]
            if not moved:
                return self.value
            axis = moved[0]
            where = changed[axis]
            if len(moved) == 1 and len(where) <= PARTIAL_UPDATE_SHARE * self.parent.shape[axis]:
                # The term sums over every position of the other axes: only the changed positions' parts differ.
                # Every other axis keeps its index, applied to the parent's rows of those positions.
                base = self.parent
                for other, idx in index.items():
                    if other != axis:
                        base = base.index_select(other, idx)
                anchor = self._rows(self.anchor, axis, where, self.anchor_slot)
                new = self._rows(base, axis, index[axis][where], self.slot)
                old = self._rows(base, axis, self.index[axis][where], self.slot)
                self.value = self.value + anchor @ (new - old).T
                self.index = index
                return self.value
        tensor = self.parent
        for axis, moves in moves_by_axis.items():
            tensor = _move_axis(tensor, axis, moves)
        self.value, self.index = self.anchor_rows @ _segment(tensor, self.slot, self.size).T, index
        return self.value


def weight_matching_group_plans(parent: nn.Module, anchor: nn.Module, graph_p: ModelGraph, graph_a: ModelGraph,
                                max_sweeps: int = 100, seed: int = 0, start: Plans | None = None,
                                head_mode: str = "units") -> Plans:
    """Git Re-Basin's weight matching over every tensor axis of every group: permutations (n, n).

    start: permutations to begin the coordinate descent from (identities when None). Groups sharing
    attention heads are matched together, heads as blocks (otcore.fusion.heads; head_mode as FusionOptions.heads)."""
    groups = [(g_p, g_a) for g_p, g_a in zip(graph_p.groups, graph_a.groups) if not g_a.fixed]
    for g_p, g_a in groups:
        if g_p.size != g_a.size:
            raise FusionError("weight matching needs parents of the same widths; use OT alignment instead")
    state_p, state_a = parent.state_dict(), anchor.state_dict()
    ref = next(iter(state_a.values()))
    plans: Plans = {g.name: torch.eye(g.size, dtype=torch.float64) if start is None else start[g.name].double().cpu()
                    for _, g in groups}
    # Each plan as a gather, kept with it: checking a plan per slot and sweep cost 30 s of 31 on
    # mobilenet_v3_small. The parents' tensors are read in float64 once, not once per slot.
    sources = {name: as_gather(plan) for name, plan in plans.items()}
    state_p = {k: t.detach().double().cpu() if t.is_floating_point() else t for k, t in state_p.items()}
    state_a = {k: t.detach().double().cpu() if t.is_floating_point() else t for k, t in state_a.items()}
    terms = {(s_p.tensor, s_p.axis, s_p.offset): _SlotTerm(state_a[s_a.tensor], state_p[s_p.tensor], s_a, s_p,
                                                           g_p.size)
             for g_p, g_a in groups for s_p, s_a in zip(g_p.slots, g_a.slots)}
    solved: dict[str, list[torch.Tensor]] = {}  # each group's terms at its last solve
    rng = np.random.default_rng(seed)

    def parts_of(g_p: ChannelGroup) -> list[torch.Tensor]:
        """The group's similarity terms, one per slot: anchor rows @ moved parent rows^T (anchor, parent channel)."""
        parts = []
        for s_p in g_p.slots:
            skip = (s_p.tensor, s_p.axis, s_p.offset)
            # The parent's tensor with every other slot's current plan applied, this slot's axis left free.
            moves = _moves_by_tensor(graph_p, graph_a, plans, ("writer", "follower", "reader"), skip,
                                     sources=sources).get(s_p.tensor, {})
            # Moves of other segments on this slot's own axis leave its segment as it is.
            parts.append(terms[skip].update({axis: m for axis, m in moves.items() if axis != s_p.axis}))
        return parts

    def assignment(cost: torch.Tensor) -> torch.Tensor:
        """The 0/1 plan (parent, anchor) of the cheapest assignment."""
        rows, cols = linear_sum_assignment(cost.numpy())
        plan = torch.zeros(cost.shape, dtype=torch.float64)
        plan[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
        return plan

    units = solve_units(groups)
    for _ in range(max_sweeps):
        improved = False
        for u in rng.permutation(len(units)):
            members = [groups[k] for k in units[u]]
            # A unit is the groups sharing attention heads (matched together, heads as blocks), else one group.
            parts = [parts_of(g_p) for g_p, _ in members]
            if all(g_a.name in solved and all(a is b for a, b in zip(p, solved[g_a.name]))
                   for p, (_, g_a) in zip(parts, members)):
                continue  # the same similarity as at its last solve: the same assignment, which improves nothing
            sims = []
            for p, (_, g_a) in zip(parts, members):
                solved[g_a.name] = p
                similarity = torch.zeros(g_a.size, g_a.size, dtype=torch.float64)
                for part in p:
                    similarity += part
                sims.append(similarity.T)  # (parent channel, anchor channel)
            heads = min(head_count(g_p, g_a) for g_p, g_a in members)
            if heads > 1 and head_mode != "flat":
                new = [(plan > 0).double() for plan in block_plans([-sim for sim in sims], heads,
                                                                   lambda c, m, hp, ha: assignment(c), assignment,
                                                                   head_mode)]
            else:
                new = [assignment(-sim) for sim in sims]
            current = sum(float((sim * plans[g_a.name]).sum()) for sim, (_, g_a) in zip(sims, members))
            found = sum(float((sim * plan).sum()) for sim, plan in zip(sims, new))
            # Relative: float64 sums of large similarities differ by rounding alone, and that sweeps again.
            if found > current + 1e-12 * max(1.0, abs(current)):
                improved = True
                for plan, (_, g_a) in zip(new, members):
                    plans[g_a.name] = plan
                    sources[g_a.name] = Gather(plan.argmax(0), None, g_a.size)
        if not improved:
            break
    return {name: plan.to(ref.dtype if ref.is_floating_point() else torch.float32) for name, plan in plans.items()}
