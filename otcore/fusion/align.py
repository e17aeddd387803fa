"""Layer-wise alignment of a parent's neurons to the anchor's by OT (Singh & Jaggi, 2020, Alg. 1).

Walks the model's `alignment_layers` in forward order. A group of neurons gets its plan when
first written: its cost sums the costs of every layer that writes it and whose input is
already aligned (a ResNet stage's first conv2 and its 1x1 shortcut together); later writers of
the group (identity blocks) reuse the plan, which keeps the residual stream consistent, as the
reference's --handle-skips intends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from otcore.errors import FusionError
from otcore.fusion.ground_metric import cost_matrix
from otcore.fusion.options import FusionOptions
from otcore.fusion.transport import closeness_of, solve
from otcore.models import INPUT, OUTPUT, AlignedLayer, FusableNet

Plans = dict[str, "torch.Tensor | None"]  # group -> plan (n_parent, n_anchor); None = identity


@dataclass(frozen=True)
class GroupDiagnostics:
    """How one group's plan came about: sizes, costs, sharpness, time."""

    group: str
    n_parent: int
    n_anchor: int
    cost_mean: float
    cost_min: float
    cost_max: float
    transport_cost: float  # <T, M> of the solved plan
    permutation_closeness: float  # 1.0 when the plan is a (scaled) permutation
    seconds: float


def weight_of(model: nn.Module, layer: str) -> torch.Tensor:
    """The weight tensor of a layer, by module path."""
    return model.get_submodule(layer).weight.detach()


@dataclass(frozen=True)
class Gather:
    """A plan (n_parent, n_anchor) with at most one nonzero entry per column, as an index: anchor neuron j
    reads parent neuron index[j], times scale[j] (None: every such entry is 1)."""

    index: torch.Tensor  # (n_anchor,) long, on the plan's device
    scale: torch.Tensor | None  # (n_anchor,) the plan's entries at (index[j], j); None when all are 1
    n_parent: int  # the plan's rows


Move = "torch.Tensor | Gather | None"  # how a channel axis moves: by a dense plan, by a gather, or not at all


def as_gather(plan: torch.Tensor | Gather | None) -> torch.Tensor | Gather | None:
    """The plan as a Gather when each of its columns has at most one nonzero entry (exact OT plans, weight
    matching's permutations, ZipIt!'s unmerge maps), as it is otherwise (Sinkhorn, CCA Merge's maps).

    T^T x is then x[index] * scale, bit for bit: each entry of the product sums one product and exact
    zeros (only a weight of -0.0 keeps its sign where the sum gave +0.0: equal as numbers)."""
    if plan is None or isinstance(plan, Gather) or plan.dim() != 2:
        return plan
    # A dense map (CCA Merge's) usually shows it in its first column: no pass over the whole plan for it.
    if plan.shape[1] and bool(plan[:, 0].count_nonzero() > 1) or not bool((plan.count_nonzero(0) <= 1).all()):
        return plan
    index = plan.abs().argmax(0)
    scale = plan.gather(0, index[None]).squeeze(0)
    return Gather(index, None if bool((scale == 1).all()) else scale, plan.shape[0])


def _moved(x: torch.Tensor, move: torch.Tensor | Gather, axis: int) -> torch.Tensor:
    """T^T along `axis` of x (n_parent there -> n_anchor): an index_select (and scale) for a Gather, else a product."""
    if isinstance(move, Gather):
        out = x.index_select(axis, move.index)
        if move.scale is not None:
            out = out * move.scale.reshape((-1,) + (1,) * (x.dim() - axis - 1))
        return out
    return torch.einsum("oi...,ij->oj...", x, move) if axis == 1 else torch.einsum("o...,ok->k...", x, move)


def transform_weight(weight: torch.Tensor, t_in: Move, t_out: Move) -> torch.Tensor:
    """W' = T_out^T W T_in over the channel axes: (out, in, *k) -> (m_out, m_in, *k).

    A linear layer after convolutions reads C*h*w features: they are viewed as (C, h*w) so the
    channel plan applies to C (the reference's conv-to-fc switch). A plan that as_gather turns into a
    Gather moves the weights by index: the product's values in O(size) (the products were a third of a
    warm OT fusion of the paper's MNIST parents, beside the assignment solves).
    """
    t_in, t_out = as_gather(t_in), as_gather(t_out)
    if t_in is not None:
        n_parent = t_in.n_parent if isinstance(t_in, Gather) else t_in.shape[0]
        if weight.dim() == 2 and weight.shape[1] != n_parent:
            out_dim = weight.shape[0]
            weight = _moved(weight.reshape(out_dim, n_parent, -1), t_in, 1).reshape(out_dim, -1)
        else:
            weight = _moved(weight, t_in, 1)
    if t_out is not None:
        weight = _moved(weight, t_out, 0)
    return weight


def transform_bias(bias: torch.Tensor | None, t_out: Move) -> torch.Tensor | None:
    """Bias of the aligned neurons: T_out^T b."""
    if bias is None or t_out is None:
        return bias
    t_out = as_gather(t_out)
    return _moved(bias, t_out, 0) if isinstance(t_out, Gather) else t_out.T @ bias


def _joined(rows: list[torch.Tensor]) -> torch.Tensor:
    """The writers' rows side by side (one writer's as they are, without a copy)."""
    return rows[0] if len(rows) == 1 else torch.cat(rows, 1)


def _marginal(rows: torch.Tensor, kind: str) -> torch.Tensor:
    """Neuron masses: uniform, or proportional to the l1 norm of their weights (floored so dead
    neurons keep a little mass and every plan column stays positive)."""
    n = rows.shape[0]
    if kind == "uniform":
        return torch.full((n,), 1.0 / n, dtype=rows.dtype, device=rows.device)
    mass = rows.abs().sum(1)
    mass = mass + 1e-3 * mass.mean().clamp_min(1e-12)
    return mass / mass.sum()


def check_same_family(models: list[FusableNet]) -> list[AlignedLayer]:
    """The shared layer walk of the parents; refuses parents that are not of one family."""
    walk = models[0].alignment_layers()
    for i, model in enumerate(models[1:], start=1):
        other = model.alignment_layers()
        if [(l.name, l.in_group, l.out_group) for l in other] != [(l.name, l.in_group, l.out_group) for l in walk]:
            raise FusionError(f"parent {i + 1} is not of the same architecture family as parent 1; "
                             "fusion needs parents with the same layers")
        if weight_of(model, walk[-1].name).shape[0] != weight_of(models[0], walk[-1].name).shape[0]:
            raise FusionError(f"parent {i + 1} has a different number of classes than parent 1")
    return walk


def ot_plans(parent: FusableNet, anchor: FusableNet, opts: FusionOptions,
             parent_acts: dict[str, torch.Tensor] | None = None,
             anchor_acts: dict[str, torch.Tensor] | None = None) -> tuple[Plans, list[GroupDiagnostics]]:
    """Plans mapping each group of `parent` onto the anchor's neurons, and their diagnostics."""
    plans, diagnostics, _ = ot_moves(parent, anchor, opts, parent_acts, anchor_acts)
    return plans, diagnostics


def ot_moves(parent: FusableNet, anchor: FusableNet, opts: FusionOptions,
             parent_acts: dict[str, torch.Tensor] | None = None,
             anchor_acts: dict[str, torch.Tensor] | None = None) -> tuple[Plans, list[GroupDiagnostics], dict[str, Move]]:
    """ot_plans, and the plans as apply_plans reads them (Gathers for the exact solver's permutations)."""
    walk = check_same_family([anchor, parent])
    plans: Plans = {INPUT: None}
    moves: dict[str, Move] = {INPUT: None}  # the plans as gathers where they are (as_gather), read many times
    diagnostics: list[GroupDiagnostics] = []
    for layer in walk:
        group = layer.out_group
        if group in plans:
            continue
        if group == OUTPUT and opts.skip_last_layer:
            plans[OUTPUT] = moves[OUTPUT] = None  # classes are already aligned: average without a plan
            continue
        start = time.perf_counter()
        writers = [w for w in walk if w.out_group == group and w.in_group in plans]
        rows_p, rows_a = [], []
        for w in writers:
            t_in = moves[w.in_group] if opts.past_correction else None
            rows_p.append(transform_weight(weight_of(parent, w.name), t_in, None).flatten(1))
            rows_a.append(weight_of(anchor, w.name).flatten(1))
        weights_p, weights_a = _joined(rows_p), _joined(rows_a)
        if opts.mode == "activations" and group != OUTPUT:
            feats_p, feats_a = parent_acts[group], anchor_acts[group]
        else:
            feats_p, feats_a = weights_p, weights_a
        cost = cost_matrix(feats_p, feats_a, opts.ground_metric, opts.squared, opts.normalize)
        # Uniform masses read only the neuron count: the parent's raw rows are joined for importance alone.
        raw_p = weights_p if opts.marginals == "uniform" else _joined(
            [weight_of(parent, w.name).flatten(1) for w in writers])
        solved = solve(_marginal(raw_p, opts.marginals), _marginal(weights_a, opts.marginals), cost,
                       opts.solver, opts.reg)
        plan, assignment = solved.plan, solved.assignment
        # One read of the five numbers rather than five (each a sync on a GPU, a GIL hand-over on the CPU);
        # an assignment's rows each hold one entry, so its closeness is 1 exactly.
        low, high = torch.aminmax(cost)
        closeness = closeness_of(plan) if assignment is None else torch.ones((), dtype=plan.dtype, device=plan.device)
        stats = torch.stack([cost.mean(), low, high, (plan * cost).sum(), closeness])
        if assignment is not None:
            # The plan's one entry per column, 1/n, divided by its column's mass below is exactly 1.
            index = torch.empty_like(assignment).scatter_(0, assignment, torch.arange(len(assignment),
                                                                                      device=assignment.device))
            scale = None if opts.marginal_correction else plan.gather(0, index[None]).squeeze(0)
            moves[group] = Gather(index, scale, plan.shape[0])
            if opts.marginal_correction:
                plan = plan.index_put_((index, torch.arange(len(index), device=index.device)),
                                       torch.ones((), dtype=plan.dtype, device=plan.device))
        elif opts.marginal_correction:
            # Divide each column by the mass it received, so every anchor neuron is a convex
            # combination of parent neurons (the reference's --correction / proper marginals).
            plan = plan / plan.sum(0, keepdim=True).clamp_min(1e-12)
        plans[group] = plan
        if assignment is None:
            moves[group] = as_gather(plan)
        diagnostics.append(GroupDiagnostics(group, plan.shape[0], plan.shape[1], *stats.tolist(),
                                            time.perf_counter() - start))
    return plans, diagnostics, moves


def apply_plans(parent: FusableNet, template: FusableNet, plans: Plans | dict[str, Move],
                past_correction: bool = True) -> dict[str, torch.Tensor]:
    """The parent's weights moved into the template's (anchor's) neuron order and widths; plans may be Gathers."""
    out: dict[str, torch.Tensor] = {}
    moves = {g: as_gather(plan) for g, plan in plans.items()}  # each plan read by its writers and readers
    for layer in template.alignment_layers():
        module = parent.get_submodule(layer.name)
        t_in = moves.get(layer.in_group) if past_correction else None
        t_out = moves.get(layer.out_group)
        out[f"{layer.name}.weight"] = transform_weight(module.weight.detach(), t_in, t_out)
        if getattr(module, "bias", None) is not None:
            out[f"{layer.name}.bias"] = transform_bias(module.bias.detach(), t_out)
    return out
