"""OT fusion and weight matching over channel groups read from any model (otcore.graph).

The same algorithms as otcore.fusion.align and .weight_matching (Singh & Jaggi 2020, Alg. 1;
Ainsworth et al. 2022), with the network described by its traced groups instead of a hand-written
layer walk: every tensor axis holding a group's channels (writers' outputs, readers' inputs,
biases, normalisation parameters and statistics, depthwise filters, layer scales) moves with the
group's plan, so batch norm, residual sums, squeeze-excitation and concatenations need no code of
their own. A plan T (n_parent, n_anchor) maps an axis segment x (n_parent, ...) to T^T x.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import fx, nn

from otcore.device import private_copy
from otcore.errors import FusionError
from otcore.fusion.align import GroupDiagnostics, Plans, _marginal
from otcore.fusion.ground_metric import cost_matrix
from otcore.fusion.options import FusionOptions
from otcore.fusion.transport import closeness_of, transport_plan
from otcore.graph import ModelGraph, Slot, trace_groups

State = dict[str, torch.Tensor]


def check_same_structure(graphs: list[ModelGraph]) -> None:
    """Refuses parents whose traced groups differ in more than their widths."""
    def shape(graph: ModelGraph) -> list:
        return [(g.name, g.fixed, [(s.tensor, s.axis, s.role) for s in g.slots]) for g in graph.groups]
    first = shape(graphs[0])
    for i, graph in enumerate(graphs[1:], start=2):
        if shape(graph) != first:
            raise FusionError(f"parent {i} is not of the same architecture family as parent 1; "
                              "fusion needs parents with the same layers")


def _permutation_source(plan: torch.Tensor) -> torch.Tensor | None:
    """For a permutation plan, the parent channel each anchor channel takes; None for any other plan."""
    if plan.shape[0] != plan.shape[1]:
        return None
    binary = (plan == 0) | (plan == 1)
    if not bool(binary.all()) or not bool((plan.sum(0) == 1).all()) or not bool((plan.sum(1) == 1).all()):
        return None
    return plan.argmax(0)


Move = tuple[Slot, Slot, torch.Tensor, "torch.Tensor | None"]  # parent slot, anchor slot, plan, permutation source


def _move_axis(tensor: torch.Tensor, axis: int, moves: list[Move]) -> torch.Tensor:
    """`tensor` with each move's segment of `axis` replaced by T^T segment (a gather for a permutation)."""
    pieces, cursor = [], 0
    length = tensor.shape[axis]
    for slot, _anchor_slot, plan, source in sorted(moves, key=lambda m: m[0].offset):
        if slot.offset > cursor:
            pieces.append(tensor.narrow(axis, cursor, slot.offset - cursor))  # channels that stay in place
        n_parent, n_anchor = plan.shape
        segment = tensor.narrow(axis, slot.offset, n_parent * slot.repeat)
        if source is not None:  # a permutation: a gather, exact and O(size) instead of a product
            index = (source[:, None] * slot.repeat + torch.arange(slot.repeat, device=source.device)).reshape(-1)
            pieces.append(segment.index_select(axis, index.to(tensor.device)))
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
                     sources: dict[str, torch.Tensor | None] | None = None) -> dict[str, dict[int, list[Move]]]:
    """tensor -> axis -> the segments to move, for groups with a plan (sources: the plans' permutation sources, if known)."""
    moves: dict[str, dict[int, list[Move]]] = {}
    for g_p, g_a in zip(graph_p.groups, graph_a.groups):
        plan = plans.get(g_a.name)
        if g_a.fixed or plan is None:
            continue
        source = sources[g_a.name] if sources is not None else _permutation_source(plan)
        for s_p, s_a in zip(g_p.slots, g_a.slots):
            if s_p.role in roles and (s_p.tensor, s_p.axis, s_p.offset) != skip:
                moves.setdefault(s_p.tensor, {}).setdefault(s_p.axis, []).append((s_p, s_a, plan, source))
    return moves


def align_state(state: State, graph_p: ModelGraph, graph_a: ModelGraph, plans: Plans,
                past_correction: bool = True) -> State:
    """The parent's tensors moved into the anchor's channel order and widths (untouched ones shared)."""
    roles = ("writer", "follower", "reader") if past_correction else ("writer", "follower")
    out = dict(state)
    for key, axes in _moves_by_tensor(graph_p, graph_a, plans, roles).items():
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

    nodes: group -> (fx node, its channel dimension). Runs a traced private copy (the model may be
    shared); every position other than the channel one is one more sample."""
    module = fx.symbolic_trace(private_copy(model))
    dims = dict(nodes.values())
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
    return {group: torch.cat(found[node], 1) for group, (node, _) in nodes.items()}


def ot_group_plans(parent: nn.Module, anchor: nn.Module, graph_p: ModelGraph, graph_a: ModelGraph,
                   opts: FusionOptions, acts_p: dict[str, torch.Tensor] | None = None,
                   acts_a: dict[str, torch.Tensor] | None = None) -> tuple[Plans, list[GroupDiagnostics]]:
    """OT plans for every free group, in forward order, from the writers' weights or the groups' activations.

    A group's cost joins the rows of its writers whose inputs are already aligned (past correction),
    as the hand-written walk does for a residual stream's writers."""
    state_p, state_a = parent.state_dict(), anchor.state_dict()
    plans: Plans = {}
    diagnostics: list[GroupDiagnostics] = []
    for g_p, g_a in zip(graph_p.groups, graph_a.groups):
        if g_a.fixed:
            continue
        start = time.perf_counter()
        # Layers reading channels not aligned yet (this group's own included: a gate reading what it scales).
        pending = {s.tensor for g in graph_a.groups if g.name not in plans and not g.fixed
                   for s in g.slots if s.role == "reader"}
        writers = [(s_p, s_a) for s_p, s_a in zip(g_p.slots, g_a.slots)
                   if s_p.role == "writer" and s_p.tensor not in pending]
        if not writers:
            raise FusionError(f"group '{g_a.name}' has no layer writing it whose inputs are aligned")
        moves = _moves_by_tensor(graph_p, graph_a, plans, ("reader",)) if opts.past_correction else {}
        rows_p, rows_a, raw_p = [], [], []
        for s_p, s_a in writers:
            tensor = state_p[s_p.tensor].detach()
            raw_p.append(_segment(tensor, s_p, g_p.size))
            for axis, axis_moves in moves.get(s_p.tensor, {}).items():
                tensor = _move_axis(tensor, axis, axis_moves)
            rows_p.append(_segment(tensor, s_p, g_p.size))
            rows_a.append(_segment(state_a[s_a.tensor].detach(), s_a, g_a.size))
        weights_p, weights_a = torch.cat(rows_p, 1), torch.cat(rows_a, 1)
        if opts.mode == "activations":
            # float64: cost = |x|^2 + |y|^2 - 2<x, y> loses the small distances between near-equal channels
            # (an untrained net's pooled features) in float32, and the exact plan then swaps them.
            feats_p, feats_a = acts_p[g_a.name].double(), acts_a[g_a.name].double()
        else:
            feats_p, feats_a = weights_p, weights_a
        cost = cost_matrix(feats_p, feats_a, opts.ground_metric, opts.squared, opts.normalize)
        solved = transport_plan(_marginal(torch.cat(raw_p, 1), opts.marginals), _marginal(weights_a, opts.marginals),
                                cost, opts.solver, opts.reg)
        plan = solved / solved.sum(0, keepdim=True).clamp_min(1e-12) if opts.marginal_correction else solved
        plans[g_a.name] = plan
        stats = torch.stack([cost.mean(), cost.min(), cost.max(), (solved * cost).sum(), closeness_of(solved)])
        diagnostics.append(GroupDiagnostics(g_a.name, plan.shape[0], plan.shape[1], *stats.tolist(),
                                            time.perf_counter() - start))
    return plans, diagnostics


def weight_matching_group_plans(parent: nn.Module, anchor: nn.Module, graph_p: ModelGraph, graph_a: ModelGraph,
                                max_sweeps: int = 100, seed: int = 0, start: Plans | None = None) -> Plans:
    """Git Re-Basin's weight matching over every tensor axis of every group: permutations (n, n).

    start: permutations to begin the coordinate descent from (identities when None)."""
    groups = [(g_p, g_a) for g_p, g_a in zip(graph_p.groups, graph_a.groups) if not g_a.fixed]
    for g_p, g_a in groups:
        if g_p.size != g_a.size:
            raise FusionError("weight matching needs parents of the same widths; use OT alignment instead")
    state_p, state_a = parent.state_dict(), anchor.state_dict()
    ref = next(iter(state_a.values()))
    plans: Plans = {g.name: torch.eye(g.size, dtype=torch.float64) if start is None else start[g.name].double().cpu()
                    for _, g in groups}
    # Each plan's permutation source, kept with it: checking a plan per slot and sweep cost 30 s of 31 on
    # mobilenet_v3_small. The parents' tensors are read in float64 once, not once per slot.
    sources = {name: _permutation_source(plan) for name, plan in plans.items()}
    state_p = {k: t.detach().double() if t.is_floating_point() else t for k, t in state_p.items()}
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        improved = False
        for k in rng.permutation(len(groups)):
            g_p, g_a = groups[k]
            similarity = torch.zeros(g_a.size, g_a.size, dtype=torch.float64)
            for s_p, s_a in zip(g_p.slots, g_a.slots):
                # The parent's tensor with every other slot's current plan applied, this slot's axis left free.
                tensor = state_p[s_p.tensor]
                skip = (s_p.tensor, s_p.axis, s_p.offset)
                for axis, moves in _moves_by_tensor(graph_p, graph_a, plans, ("writer", "follower", "reader"),
                                                    skip, sources).get(s_p.tensor, {}).items():
                    tensor = _move_axis(tensor, axis, moves)
                a = _segment(state_a[s_a.tensor].detach().double(), s_a, g_a.size)
                similarity += a.cpu() @ _segment(tensor, s_p, g_p.size).cpu().T
            sim = similarity.numpy()  # (anchor channel, parent channel)
            anchor_idx, parent_idx = linear_sum_assignment(sim, maximize=True)
            old = plans[g_a.name].argmax(0).numpy()
            current = sim[np.arange(g_a.size), old].sum()
            # Relative: float64 sums of large similarities differ by rounding alone, and that sweeps again.
            if sim[anchor_idx, parent_idx].sum() > current + 1e-12 * max(1.0, abs(current)):
                improved = True
                plan = torch.zeros(g_a.size, g_a.size, dtype=torch.float64)
                plan[torch.as_tensor(parent_idx), torch.as_tensor(anchor_idx)] = 1.0
                plans[g_a.name] = plan
                sources[g_a.name] = torch.as_tensor(parent_idx)[torch.as_tensor(anchor_idx).argsort()]
        if not improved:
            break
    return {name: plan.to(ref.dtype if ref.is_floating_point() else torch.float32) for name, plan in plans.items()}


def average_states(states: list[State], weights: list[float], anchor_state: State) -> State:
    """sum_p w_p * state_p for floating tensors; counters (batch norm's num_batches_tracked) are the anchor's."""
    out: State = {}
    for key, tensor in anchor_state.items():
        if tensor.is_floating_point():
            out[key] = sum(w * s[key].to(tensor.dtype) for s, w in zip(states, weights))
        else:
            out[key] = tensor
    return out


def load_fused(anchor: nn.Module, state: State) -> nn.Module:
    """A new network of the anchor's architecture holding `state`."""
    fused = copy.deepcopy(anchor)
    full = fused.state_dict()  # filled in: its `_metadata` (module versions MNASNet's loader reads) stays
    full.update(state)
    fused.load_state_dict(full)
    return fused.eval()



def ot_activations(parents: list[nn.Module], opts: FusionOptions, act_inputs: torch.Tensor | None,
                   capture: Callable[[nn.Module], dict[str, torch.Tensor]]) -> tuple[list, float]:
    """Each parent's group activations where OT aligns by them (else Nones), and the seconds they took."""
    if not (opts.mode == "activations" and opts.alignment == "ot"):
        return [None] * len(parents), 0.0
    if act_inputs is None:
        raise FusionError("activation-based alignment needs a sample of inputs")
    start = time.perf_counter()
    acts = [capture(p) for p in parents]
    return acts, time.perf_counter() - start


def input_shape_of(model: nn.Module, act_inputs: torch.Tensor | None) -> tuple[int, ...]:
    """The shape of one input: the sample's, else what the model says it takes (`input_shape`)."""
    if act_inputs is not None:
        return tuple(act_inputs.shape[1:])
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise FusionError("fusing a traced model needs a sample of inputs or a model with an `input_shape`")
    return tuple(shape)


def fuse_by_groups(parents: list[nn.Module], opts: FusionOptions, act_inputs: torch.Tensor | None = None,
                   graphs: list[ModelGraph] | None = None) -> tuple[nn.Module, list[Plans], list[list[GroupDiagnostics]],
                                                                dict[str, float]]:
    """OT or weight-matching fusion of any traceable parents: (fused, plans, diagnostics, seconds)."""
    if opts.alignment not in ("ot", "weight_matching"):
        method = {"cca": "CCA Merge", "zipit": "ZipIt!"}[opts.alignment]
        raise FusionError(f"{method} works on the studio's own networks only so far; "
                          "fuse this architecture by OT or weight matching")
    if opts.renormalize:
        raise FusionError("REPAIR works on the zoo's networks only so far; fuse this architecture without it")
    if not opts.skip_last_layer:
        raise FusionError("the logits of a traced network keep their order; do not ask to align the last layer")
    graphs = graphs or [trace_groups(p, input_shape_of(p, act_inputs)) for p in parents]
    check_same_structure(graphs)
    anchor_idx = opts.anchor_index(len(parents))
    nodes = {g.name: (g.node, g.node_dim) for g in graphs[anchor_idx].free()}
    acts, sampled = ot_activations(parents, opts, act_inputs, lambda p: capture_nodes(p, act_inputs, nodes))
    seconds = {"activations": sampled, "fusion": 0.0}
    start = time.perf_counter()
    anchor, graph_a = parents[anchor_idx], graphs[anchor_idx]
    plans: list[Plans] = []
    diagnostics: list[list[GroupDiagnostics]] = []
    states = []
    for i, parent in enumerate(parents):
        if i == anchor_idx:
            plans.append({})
            diagnostics.append([])
            states.append(parent.state_dict())
            continue
        if opts.alignment == "weight_matching":
            # Started from exact OT on weights (past correction gives each group's assignment given the ones
            # before it): from identities the coordinate descent stalls on networks with many coupled axes
            # (mobilenet_v3_small's permuted copy: 0 of 27 groups found, all 27 from this start).
            start_plans, _ = ot_group_plans(parent, anchor, graphs[i], graph_a, FusionOptions())
            p = weight_matching_group_plans(parent, anchor, graphs[i], graph_a, seed=opts.seed, start=start_plans)
            d = []
        else:
            p, d = ot_group_plans(parent, anchor, graphs[i], graph_a, opts, acts[i], acts[anchor_idx])
        plans.append(p)
        diagnostics.append(d)
        states.append(align_state(parent.state_dict(), graphs[i], graph_a, p, opts.past_correction))
    fused = load_fused(anchor, average_states(states, opts.parent_weights(len(parents)), anchor.state_dict()))
    seconds["fusion"] = time.perf_counter() - start
    return fused, plans, diagnostics, seconds
