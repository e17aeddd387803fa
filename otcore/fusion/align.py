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
from otcore.fusion.transport import closeness_of, transport_plan
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


def transform_weight(weight: torch.Tensor, t_in: torch.Tensor | None, t_out: torch.Tensor | None) -> torch.Tensor:
    """W' = T_out^T W T_in over the channel axes: (out, in, *k) -> (m_out, m_in, *k).

    A linear layer after convolutions reads C*h*w features: they are viewed as (C, h*w) so the
    channel plan applies to C (the reference's conv-to-fc switch).
    """
    if t_in is not None:
        out_dim = weight.shape[0]
        if weight.dim() == 2 and weight.shape[1] != t_in.shape[0]:
            spatial = weight.reshape(out_dim, t_in.shape[0], -1)
            weight = torch.einsum("oih,ij->ojh", spatial, t_in).reshape(out_dim, -1)
        else:
            weight = torch.einsum("oi...,ij->oj...", weight, t_in)
    if t_out is not None:
        weight = torch.einsum("o...,ok->k...", weight, t_out)
    return weight


def transform_bias(bias: torch.Tensor | None, t_out: torch.Tensor | None) -> torch.Tensor | None:
    """Bias of the aligned neurons: T_out^T b."""
    if bias is None or t_out is None:
        return bias
    return t_out.T @ bias


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
    walk = check_same_family([anchor, parent])
    plans: Plans = {INPUT: None}
    diagnostics: list[GroupDiagnostics] = []
    for layer in walk:
        group = layer.out_group
        if group in plans:
            continue
        if group == OUTPUT and opts.skip_last_layer:
            plans[OUTPUT] = None  # classes are already aligned: average without a plan
            continue
        start = time.perf_counter()
        writers = [w for w in walk if w.out_group == group and w.in_group in plans]
        rows_p, rows_a = [], []
        for w in writers:
            t_in = plans[w.in_group] if opts.past_correction else None
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
        plan = transport_plan(_marginal(raw_p, opts.marginals), _marginal(weights_a, opts.marginals), cost,
                              opts.solver, opts.reg)
        solved = plan
        if opts.marginal_correction:
            # Divide each column by the mass it received, so every anchor neuron is a convex
            # combination of parent neurons (the reference's --correction / proper marginals).
            plan = plan / plan.sum(0, keepdim=True).clamp_min(1e-12)
        plans[group] = plan
        # One read of the five numbers rather than five (each a sync on a GPU, a GIL hand-over on the CPU).
        stats = torch.stack([cost.mean(), cost.min(), cost.max(), (solved * cost).sum(), closeness_of(solved)])
        diagnostics.append(GroupDiagnostics(group, plan.shape[0], plan.shape[1], *stats.tolist(),
                                            time.perf_counter() - start))
    return plans, diagnostics


def apply_plans(parent: FusableNet, template: FusableNet, plans: Plans, past_correction: bool = True) -> dict[str, torch.Tensor]:
    """The parent's weights moved into the template's (anchor's) neuron order and widths."""
    out: dict[str, torch.Tensor] = {}
    for layer in template.alignment_layers():
        module = parent.get_submodule(layer.name)
        t_in = plans.get(layer.in_group) if past_correction else None
        t_out = plans.get(layer.out_group)
        out[f"{layer.name}.weight"] = transform_weight(module.weight.detach(), t_in, t_out)
        if getattr(module, "bias", None) is not None:
            out[f"{layer.name}.bias"] = transform_bias(module.bias.detach(), t_out)
    return out
