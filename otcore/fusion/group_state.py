"""A parent's tensors moved along its traced channel groups (otcore.graph), and the groups' features.

A plan T (n_parent, n_anchor) maps an axis segment x (n_parent, ...) to T^T x: every tensor axis
holding a group's channels (writers' outputs, readers' inputs, biases, normalisation parameters and
statistics, depthwise filters, layer scales) moves with its group's plan, or, for a merge method,
writers and followers with the merge map and readers with the unmerge map. Shared by OT and weight
matching (group_align) and CCA Merge / ZipIt! (group_merge).
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

from otcore.device import private_copy
from otcore.fusion.align import Gather, Plans, as_gather
from otcore.graph import ModelGraph, Slot

State = dict[str, torch.Tensor]

def is_permutation(plan: torch.Tensor) -> bool:
    """Whether a plan is a permutation matrix (moves channels without mixing them)."""
    if plan.shape[0] != plan.shape[1]:
        return False
    binary = (plan == 0) | (plan == 1)
    return bool(binary.all()) and bool((plan.sum(0) == 1).all()) and bool((plan.sum(1) == 1).all())


Move = tuple[Slot, Slot, torch.Tensor, "Gather | torch.Tensor"]  # parent slot, anchor slot, plan, as_gather(plan)


def _move_axis(tensor: torch.Tensor, axis: int, moves: list[Move]) -> torch.Tensor:
    """`tensor` with each move's segment of `axis` replaced by T^T segment (a gather for a permutation)."""
    pieces, cursor = [], 0
    length = tensor.shape[axis]
    for slot, _anchor_slot, plan, source in sorted(moves, key=lambda m: m[0].offset):
        if slot.offset > cursor:
            pieces.append(tensor.narrow(axis, cursor, slot.offset - cursor))  # channels that stay in place
        n_parent, n_anchor = plan.shape
        segment = tensor.narrow(axis, slot.offset, n_parent * slot.repeat)
        if isinstance(source, Gather):  # one entry per column: a gather (and scale), exact and O(size)
            index = source.index[:, None] * slot.repeat + torch.arange(slot.repeat, device=source.index.device)
            moved = segment.index_select(axis, index.reshape(-1).to(tensor.device))
            if source.scale is not None:
                scale = source.scale.to(tensor.device, tensor.dtype).repeat_interleave(slot.repeat)
                moved = moved * scale.reshape((-1,) + (1,) * (tensor.dim() - axis - 1))
            pieces.append(moved)
        else:
            segment = segment.movedim(axis, 0)
            rest = segment.shape[1:]
            moved = torch.einsum("ir...,ik->kr...", segment.reshape(n_parent, slot.repeat, *rest), plan.to(tensor.dtype))
            pieces.append(moved.reshape(n_anchor * slot.repeat, *rest).movedim(0, axis))
        cursor = slot.offset + n_parent * slot.repeat
    if cursor < length:
        pieces.append(tensor.narrow(axis, cursor, length - cursor))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, axis)


def _moves_by_tensor(graph_p: ModelGraph, graph_a: ModelGraph, plans: Plans, roles: tuple[str, ...],
                     skip: tuple[str, int, int] | None = None,
                     reader_plans: Plans | None = None,
                     sources: dict[str, torch.Tensor | None] | None = None) -> dict[str, dict[int, list[Move]]]:
    """tensor -> axis -> the segments to move, for groups with a plan.

    reader_plans: the maps reader slots take (a merge method's unmerge maps); None: `plans` everywhere.
    sources: each plan as_gather'd where the caller keeps them (weight matching), else found here."""
    moves: dict[str, dict[int, list[Move]]] = {}
    for g_p, g_a in zip(graph_p.groups, graph_a.groups):
        plan = plans.get(g_a.name)
        if g_a.fixed or plan is None:
            continue
        read = plan if reader_plans is None else reader_plans[g_a.name]
        found = {id(plan): sources[g_a.name] if sources is not None else as_gather(plan)}
        if id(read) not in found:  # not setdefault: its argument would be computed for every group and slot
            found[id(read)] = as_gather(read)
        for s_p, s_a in zip(g_p.slots, g_a.slots):
            if s_p.role in roles and (s_p.tensor, s_p.axis, s_p.offset) != skip:
                taken = read if s_p.role == "reader" else plan
                moves.setdefault(s_p.tensor, {}).setdefault(s_p.axis, []).append((s_p, s_a, taken, found[id(taken)]))
    return moves


def align_state(state: State, graph_p: ModelGraph, graph_a: ModelGraph, plans: Plans,
                past_correction: bool = True, reader_plans: Plans | None = None) -> State:
    """The parent's tensors moved into the anchor's channel order and widths (untouched ones shared).

    Writer and follower axes take `plans`, reader axes `reader_plans` (None: `plans` too, as OT and
    weight matching do; CCA Merge and ZipIt! read through their unmerge maps)."""
    roles = ("writer", "follower", "reader") if past_correction else ("writer", "follower")
    out = dict(state)
    for key, axes in _moves_by_tensor(graph_p, graph_a, plans, roles, reader_plans=reader_plans).items():
        tensor = state[key].detach()
        for axis, moves in axes.items():
            tensor = _move_axis(tensor, axis, moves)
        out[key] = tensor
    return out


def _segment(tensor: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """A slot's channels as rows: (size, repeat * everything else)."""
    part = tensor.narrow(slot.axis, slot.offset, size * slot.repeat).movedim(slot.axis, 0)
    return part.reshape(size, -1)


def capture_nodes(model: nn.Module, x: torch.Tensor, nodes: dict[str, tuple[str, int]],
                  batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """Outputs of fx nodes on x as (channels, samples): the channels of a group where it is complete.

    nodes: group -> (fx node, its channel dimension[, first channel, channels]): the last two where the
    group is a part of the node's channels (a fused projection's q, k or v). Runs a traced private copy
    (the model may be shared); every position other than the channel one is one more sample."""
    module = fx.symbolic_trace(private_copy(model))
    dims = {entry[0]: entry[1] for entry in nodes.values()}
    wanted = set(dims)
    found: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):  # noqa: ANN202 - fx's signature
            result = super().run_node(n)
            if n.name in wanted:
                channels = result.movedim(dims[n.name], 0)
                # A copy now: the next node may be an in-place ReLU writing over this very output.
                found[n.name].append(channels.reshape(channels.shape[0], -1).clone())
            return result

    device = next(module.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            _Recorder(module).run(x[start:start + batch_size].to(device))
    out = {}
    for group, (node, _, *part) in nodes.items():
        out[group] = torch.cat(found[node], 1)
        if part:
            out[group] = out[group][part[0]:part[0] + part[1]]
    return out


def load_fused(anchor: nn.Module, state: State) -> nn.Module:
    """A new network of the anchor's architecture holding `state`."""
    fused = copy.deepcopy(anchor)
    full = fused.state_dict()  # filled in: its `_metadata` (module versions MNASNet's loader reads) stays
    full.update(state)
    fused.load_state_dict(full)
    return fused.eval()
