"""OT fusion and weight matching over channel groups read from any model (otcore.graph); the way in for all.

The same algorithms as otcore.fusion.align and .weight_matching (Singh & Jaggi 2020, Alg. 1;
Ainsworth et al. 2022), with the network described by its traced groups instead of a hand-written
layer walk: every tensor axis holding a group's channels (writers' outputs, readers' inputs,
biases, normalisation parameters and statistics, depthwise filters, layer scales) moves with the
group's plan, so batch norm, residual sums, squeeze-excitation and concatenations need no code of
their own. A plan T (n_parent, n_anchor) maps an axis segment x (n_parent, ...) to T^T x.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from otcore.errors import FusionError
from otcore.fusion.align import GroupDiagnostics, Plans, _marginal, as_gather
from otcore.fusion.ground_metric import cost_matrix
from otcore.fusion.group_repair import repair_groups, repair_points, repair_targets
from otcore.fusion.options import MERGE_ALIGNMENTS, FusionOptions
from otcore.fusion.repair import check_sample
from otcore.fusion.transport import closeness_of, transport_plan
from otcore.fusion.batch_norm import NORM_CHOICES, fold_batch_norm, identity_norms, reset_batch_norm
from otcore.fusion.group_merge import MERGE_NAMES, merge_by_group_maps
from otcore.fusion.group_pleas import least_squares_groups
from otcore.fusion.group_state import State, align_state, capture_nodes, is_permutation, load_fused
from otcore.fusion.group_matching import weight_matching_group_plans
from otcore.fusion.group_state import _move_axis, _moves_by_tensor, _segment
from otcore.fusion.heads import block_plans, head_count, solve_units
from otcore.graph import ChannelGroup, ModelGraph, declared_input_shape, trace_groups


def check_same_structure(graphs: list[ModelGraph]) -> None:
    """Refuses parents whose traced groups differ in more than their widths."""
    def shape(graph: ModelGraph) -> list:
        return [(g.name, g.fixed, [(s.tensor, s.axis, s.role) for s in g.slots]) for g in graph.groups]
    first = shape(graphs[0])
    for i, graph in enumerate(graphs[1:], start=2):
        if shape(graph) != first:
            raise FusionError(f"parent {i} is not of the same architecture family as parent 1; "
                              "fusion needs parents with the same layers")


def ot_group_plans(parent: nn.Module, anchor: nn.Module, graph_p: ModelGraph, graph_a: ModelGraph,
                   opts: FusionOptions, acts_p: dict[str, torch.Tensor] | None = None,
                   acts_a: dict[str, torch.Tensor] | None = None) -> tuple[Plans, list[GroupDiagnostics]]:
    """OT plans for every free group, in forward order, from the writers' weights or the groups' activations.

    A group's cost joins the rows of its writers whose inputs are already aligned (past correction),
    as the hand-written walk does for a residual stream's writers. Groups of attention heads sharing
    their heads' order are solved together, heads as blocks (otcore.fusion.heads, opts.heads)."""
    state_p, state_a = parent.state_dict(), anchor.state_dict()
    plans: Plans = {}
    gathers: dict = {}  # each plan as_gather'd once: per group and plan, it took 3/4 of convnext_large's OT fusion
    diagnostics: list[GroupDiagnostics] = []
    pairs = [(g_p, g_a) for g_p, g_a in zip(graph_p.groups, graph_a.groups) if not g_a.fixed]
    for unit in solve_units(pairs):
        start = time.perf_counter()
        # Layers reading channels not aligned yet (this group's own included: a gate reading what it scales).
        pending = {s.tensor for g in graph_a.groups if g.name not in plans and not g.fixed
                   for s in g.slots if s.role == "reader"}
        moves = _moves_by_tensor(graph_p, graph_a, plans, ("reader",), sources=gathers) if opts.past_correction else {}
        problems = [_ot_problem(state_p, state_a, *pairs[i], pending, moves, opts, acts_p, acts_a) for i in unit]
        heads = min(head_count(*pairs[i]) for i in unit)
        if heads > 1 and opts.heads != "flat":
            def within(cost: torch.Tensor, m: int, hp: int, ha: int) -> torch.Tensor:
                (_, mu, nu), (dp, da) = problems[m], (cost.shape[0], cost.shape[1])
                a, b = mu[hp * dp:(hp + 1) * dp], nu[ha * da:(ha + 1) * da]
                return transport_plan(a / a.sum(), b / b.sum(), cost, opts.solver, opts.reg)

            def between(cost: torch.Tensor) -> torch.Tensor:
                masses = [(mu.reshape(heads, -1).sum(1), nu.reshape(heads, -1).sum(1)) for _, mu, nu in problems]
                a = sum(m[0] for m in masses) / len(masses)
                b = sum(m[1] for m in masses) / len(masses)
                return transport_plan(a.double(), b.double(), cost, opts.solver, opts.reg)

            solved_all = block_plans([cost for cost, _, _ in problems], heads, within, between, opts.heads)
        else:
            solved_all = [transport_plan(mu, nu, cost, opts.solver, opts.reg) for cost, mu, nu in problems]
        seconds = (time.perf_counter() - start) / len(unit)
        for i, (cost, _, _), solved in zip(unit, problems, solved_all):
            g_a = pairs[i][1]
            plan = solved / solved.sum(0, keepdim=True).clamp_min(1e-12) if opts.marginal_correction else solved
            plans[g_a.name], gathers[g_a.name] = plan, as_gather(plan)
            stats = torch.stack([cost.mean(), cost.min(), cost.max(), (solved * cost).sum(), closeness_of(solved)])
            diagnostics.append(GroupDiagnostics(g_a.name, plan.shape[0], plan.shape[1], *stats.tolist(), seconds))
    return plans, diagnostics


def _ot_problem(state_p: State, state_a: State, g_p: ChannelGroup, g_a: ChannelGroup, pending: set[str], moves: dict,
                opts: FusionOptions, acts_p: dict[str, torch.Tensor] | None, acts_a: dict[str, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One group's transport problem: (cost (n_parent, n_anchor), parent masses, anchor masses)."""
    writers = [(s_p, s_a) for s_p, s_a in zip(g_p.slots, g_a.slots)
               if s_p.role == "writer" and s_p.tensor not in pending]
    if not writers:
        raise FusionError(f"group '{g_a.name}' has no layer writing it whose inputs are aligned")
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
    return cost, _marginal(torch.cat(raw_p, 1), opts.marginals), _marginal(weights_a, opts.marginals)


def sampled_nodes(graph: ModelGraph) -> dict[str, tuple[str, int, int, int]]:
    """Each free group's sampled fx node, channel dimension, first channel and width there (capture_nodes)."""
    return {g.name: (g.node, g.node_dim, g.node_offset, g.size) for g in graph.free()}


def average_states(states: list[State], weights: list[float], anchor_state: State) -> State:
    """sum_p w_p * state_p for floating tensors; counters (batch norm's num_batches_tracked) are the anchor's."""
    out: State = {}
    for key, tensor in anchor_state.items():
        if tensor.is_floating_point():
            out[key] = sum(w * s[key].to(tensor.dtype) for s, w in zip(states, weights))
        else:
            out[key] = tensor
    return out


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
    shape = declared_input_shape(model, None if act_inputs is None else tuple(act_inputs.shape[1:]))
    if shape is None:
        raise FusionError("fusing a traced model needs a sample of inputs or a model with an `input_shape`")
    return shape


def fuse_by_groups(parents: list[nn.Module], opts: FusionOptions, act_inputs: torch.Tensor | None = None,
                   graphs: list[ModelGraph] | None = None, norms: str = "reset"
                   ) -> tuple[nn.Module, list[Plans], list[list[GroupDiagnostics]], dict[str, float]]:
    """Fusion of any traceable parents by the options' alignment: (fused, plans, diagnostics, seconds).

    CCA Merge, ZipIt! and PLeaS go through merge and unmerge maps (group_merge; their plans are the merge maps);
    PLeaS then refits every layer by least squares (group_pleas), its batch norms folded first.
    norms: what a merge that is not a permutation does to batch norms (otcore.fusion.batch_norm):
    'reset' re-estimates their statistics on the sample where there is one (without one, OT by weights,
    they stay as the plans moved them), 'fold' folds them into the layers before merging, 'moved' leaves
    the moved statistics (for comparison)."""
    if opts.renormalize:
        if act_inputs is None:
            raise FusionError("renormalisation (REPAIR) needs a sample of inputs")
        check_sample(act_inputs)  # before any work
    if not opts.skip_last_layer:
        raise FusionError("the logits of a traced network keep their order; do not ask to align the last layer")
    if opts.alignment in MERGE_ALIGNMENTS and act_inputs is None:
        raise FusionError(f"{MERGE_NAMES[opts.alignment]} needs a sample of inputs")
    if norms not in NORM_CHOICES:
        raise FusionError(f"norms must be one of {NORM_CHOICES}, got '{norms}'")
    graphs = graphs or [trace_groups(p, input_shape_of(p, act_inputs)) for p in parents]
    check_same_structure(graphs)
    folded: list[str] = []
    if opts.alignment == "pleas":
        norms = "fold"  # the least squares refit the layers: their norms' statistics would no longer hold
    if norms == "fold":
        parents, folded = [fold_batch_norm(p)[0] for p in parents], fold_batch_norm(parents[0])[1]
    if opts.alignment in MERGE_ALIGNMENTS:
        fused, plans, seconds, mixed = merge_by_group_maps(parents, graphs, opts, act_inputs)
        diagnostics: list[list[GroupDiagnostics]] = [[] for _ in parents]
    else:
        fused, plans, diagnostics, seconds = _align_and_average(parents, graphs, opts, act_inputs)
        mixed = not all(is_permutation(plan) for p in plans for plan in p.values())
    start = time.perf_counter()
    if folded:
        fused = identity_norms(fused, folded)
    if opts.alignment == "pleas":
        fused = least_squares_groups(fused, parents, graphs, plans, opts.parent_weights(len(parents)), act_inputs,
                                     opts.anchor_index(len(parents)))
    if opts.renormalize:  # re-estimates every batch norm on the sample, then sets each neuron's mean and std
        anchor_idx, weights = opts.anchor_index(len(parents)), opts.parent_weights(len(parents))
        merged = opts.alignment in MERGE_ALIGNMENTS
        # Partial merging: the fused network's own groups, at its widths, say where each neuron sits.
        fused_graph = graphs[anchor_idx] if opts.width == 1 else trace_groups(fused, input_shape_of(fused, act_inputs))
        points = repair_points(fused, fused_graph, opts.repair_bias)
        targets = repair_targets(fused, parents, graphs, plans, weights, act_inputs, anchor_idx, merge_maps=True,
                                 points=points, fused_graph=fused_graph) if merged else None
        fused = repair_groups(fused, parents, graphs, plans, weights, act_inputs, anchor_idx, opts.repair_bias, targets,
                              fused_graph)
    elif not folded and mixed and norms == "reset" and act_inputs is not None:
        fused = reset_batch_norm(fused, act_inputs)  # channels were mixed: moved variances are placeholders
    seconds["fusion"] += time.perf_counter() - start
    return fused, plans, diagnostics, seconds


def _align_and_average(parents: list[nn.Module], graphs: list[ModelGraph], opts: FusionOptions,
                       act_inputs: torch.Tensor | None) -> tuple[nn.Module, list[Plans], list[list[GroupDiagnostics]],
                                                                 dict[str, float]]:
    """OT or weight matching: every parent aligned to the anchor by one plan per group, then averaged."""
    anchor_idx = opts.anchor_index(len(parents))
    graph_of = {id(p): g for p, g in zip(parents, graphs)}  # each parent's own offsets (widths may differ)
    acts, sampled = ot_activations(parents, opts, act_inputs, lambda p: capture_nodes(p, act_inputs, sampled_nodes(
        graph_of[id(p)])))
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
            start_plans, _ = ot_group_plans(parent, anchor, graphs[i], graph_a, FusionOptions(heads=opts.heads))
            p = weight_matching_group_plans(parent, anchor, graphs[i], graph_a, seed=opts.seed, start=start_plans,
                                            head_mode=opts.heads)
            d = []
        else:
            p, d = ot_group_plans(parent, anchor, graphs[i], graph_a, opts, acts[i], acts[anchor_idx])
        plans.append(p)
        diagnostics.append(d)
        states.append(align_state(parent.state_dict(), graphs[i], graph_a, p, opts.past_correction))
    fused = load_fused(anchor, average_states(states, opts.parent_weights(len(parents)), anchor.state_dict()))
    seconds["fusion"] = time.perf_counter() - start
    return fused, plans, diagnostics, seconds
