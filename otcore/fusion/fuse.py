"""One-shot fusion of N parents into the anchor's architecture (Singh & Jaggi, 2020).

Each non-anchor parent is aligned to the anchor group by group (OT plans, or Git Re-Basin
weight matching); the aligned weights are then averaged with per-parent weights. CCA Merge,
ZipIt! and PLeaS go through merge and unmerge maps instead (otcore.fusion.merge_maps, .pleas). All weight
algebra runs on the parents' device; only the exact OT solve (and assignments) visit the CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Callable

import torch

from otcore.errors import FusionError
from otcore.fusion.align import GroupDiagnostics, Plans, apply_plans, check_same_family, ot_moves
from otcore.fusion.cca import cca_map
from otcore.fusion.group_align import fuse_by_groups, ot_activations
from otcore.fusion.group_merge import MERGE_NAMES
from otcore.fusion.merge_maps import (MergeMethodError, check_mergeable, features, group_activations, merge_weights,
                                      pre_activations, repair_target)
from otcore.fusion.new_weights import copy_with
from otcore.fusion.repair import check_sample, repair
from otcore.fusion.weight_matching import weight_matching_plans
from otcore.fusion.chain import chain_forward, is_chain
from otcore.fusion.pleas import least_squares_layers, matched_maps
from otcore.fusion.zipit import zipit_maps
from otcore.fusion.options import MERGE_ALIGNMENTS, FusionOptions, MakesOptions, as_options
from otcore.models import FusableNet


@dataclass
class FusionResult:
    """The fused network, the plans that made it, per-group diagnostics and timings (seconds)."""

    model: FusableNet
    plans: list[Plans]  # per parent: group -> plan (n_parent, n_anchor); the anchor's is empty
    diagnostics: list[list[GroupDiagnostics]]  # per parent; empty for the anchor
    seconds: dict[str, float] = field(default_factory=dict)  # 'activations', 'fusion'
    # Per parent, the plans as averaging applies them (Gathers for permutations, read without a new scan).
    moves: list[dict] = field(default_factory=list, repr=False)


def align_parents(parents: list[FusableNet], options: FusionOptions | MakesOptions,
                  act_inputs: torch.Tensor | None = None,
                  progress: Callable[[str, float], None] | None = None) -> FusionResult:
    """Plans aligning every parent to the anchor; `model` is left as the anchor (not yet fused)."""
    if len(parents) < 2:
        raise FusionError("fusion needs at least two parents")
    opts = as_options(options, len(parents))
    check_same_family(parents)
    anchor_idx = opts.anchor_index(len(parents))
    anchor = parents[anchor_idx]
    acts, sampled = ot_activations(parents, opts, act_inputs, lambda p: group_activations(p, act_inputs))
    seconds = {"activations": sampled, "fusion": 0.0}
    start = time.perf_counter()
    plans: list[Plans] = []
    moves: list[dict] = []
    diagnostics: list[list[GroupDiagnostics]] = []
    for i, parent in enumerate(parents):
        if progress is not None:
            progress(f"aligning parent {i + 1} of {len(parents)}", i / len(parents))
        if i == anchor_idx:
            plans.append({})
            diagnostics.append([])
        elif opts.alignment == "weight_matching":
            plans.append(weight_matching_plans(parent, anchor, seed=opts.seed))
            diagnostics.append([])
        else:
            p, d, m = ot_moves(parent, anchor, opts, acts[i], acts[anchor_idx])
            plans.append(p)
            diagnostics.append(d)
            moves.append(m)
            continue
        moves.append(plans[-1])
    seconds["fusion"] = time.perf_counter() - start
    return FusionResult(anchor, plans, diagnostics, seconds, moves)


def average_aligned(parents: list[FusableNet], plans: list[Plans], weights: list[float], anchor_idx: int,
                    past_correction: bool = True) -> FusableNet:
    """sum_p w_p * (parent p moved into the anchor's neuron order), as a new network (plans may be Gathers)."""
    anchor = parents[anchor_idx]
    summed: dict[str, torch.Tensor] = {}
    for i, (parent, weight) in enumerate(zip(parents, weights)):
        aligned = apply_plans(parent, anchor, plans[i], past_correction and i != anchor_idx)
        for name, tensor in aligned.items():
            summed[name] = summed[name] + weight * tensor if name in summed else weight * tensor
    return copy_with(anchor, summed).eval()


MERGE_METHODS = MERGE_NAMES  # alignments by merge/unmerge maps, by name in messages


@torch.no_grad()
def _finite_outputs(model: FusableNet, x: torch.Tensor) -> bool:
    """Whether the network's outputs on x are finite (float32 overflows where float64 maps did not)."""
    x = x.to(next(model.parameters()).device)
    return bool(torch.isfinite(chain_forward(model, x) if is_chain(model) else model(x)).all())


def merge_by_maps(parents: list[FusableNet], opts: FusionOptions, act_inputs: torch.Tensor | None,
                  progress: Callable[[str, float], None] | None = None) -> FusionResult:
    """CCA Merge, ZipIt! or PLeaS of the parents (any N >= 2); plans are the merge maps.

    The fused network has the anchor's widths times opts.width per group (ZipIt!, PLeaS: partial merging)."""
    if len(parents) < 2:
        raise FusionError("fusion needs at least two parents")
    method = MERGE_METHODS[opts.alignment]
    groups = check_mergeable(parents, method)
    if act_inputs is None:
        raise FusionError(f"{method} needs a sample of inputs")
    if opts.renormalize:
        check_sample(act_inputs)  # before any statistic is taken of it
    anchor_idx = opts.anchor_index(len(parents))
    weights = opts.parent_weights(len(parents))
    start = time.perf_counter()
    pre = pre_activations(parents, act_inputs)
    seconds = {"activations": time.perf_counter() - start, "fusion": 0.0}
    for i, acts in enumerate(pre):
        for g, a in acts.items():
            # A float64 sum of float32 entries is finite exactly when they all are: one pass, no mask.
            if not torch.isfinite(a.sum(dtype=torch.float64)):
                raise MergeMethodError(f"{method}: parent {i + 1}'s activations at {g} on the sample are not finite "
                                       "(its weights are too large); check the parents' weights")
    start = time.perf_counter()
    merges: list[Plans] = [{} for _ in parents]
    unmerges: list[Plans] = [{} for _ in parents]
    order = [anchor_idx] + [i for i in range(len(parents)) if i != anchor_idx]  # the anchor's features first
    for step, g in enumerate(groups):
        if progress is not None:
            progress(f"{method}: group {g}", step / len(groups))
        feats = [features(pre[i][g]) for i in range(len(parents))]
        if opts.alignment == "cca":
            for i in order[1:]:
                forward, inverse = cca_map(feats[anchor_idx], feats[i])
                merges[i][g], unmerges[i][g] = weights[i] * forward.T, inverse
            eye = torch.eye(feats[anchor_idx].shape[1], dtype=torch.float64, device=feats[anchor_idx].device)
            merges[anchor_idx][g], unmerges[anchor_idx][g] = weights[anchor_idx] * eye, eye
        else:
            width = opts.group_width(feats[anchor_idx].shape[1], sum(f.shape[1] for f in feats))
            fit = zipit_maps if opts.alignment == "zipit" else matched_maps
            merge, unmerge = fit([feats[i] for i in order], [weights[i] for i in order], width)
            for k, i in enumerate(order):
                merges[i][g], unmerges[i][g] = merge[k], unmerge[k]
    dtype = next(parents[anchor_idx].parameters()).dtype
    merges = [{g: t.to(dtype) for g, t in m.items()} for m in merges]
    unmerges = [{g: t.to(dtype) for g, t in u.items()} for u in unmerges]
    model = merge_weights(parents, parents[anchor_idx], merges, unmerges, weights)
    logits: list[torch.Tensor] = []  # PLeaS's refit ends with the fused network's outputs on the sample
    if opts.alignment == "pleas":
        model = least_squares_layers(model, parents, merges, weights, act_inputs, pre=pre, logits=logits)
    if opts.renormalize:
        logits = []
        model = repair(model, parents, merges, weights, act_inputs, target=repair_target(pre, merges),
                       gain_bias=opts.repair_bias)
    finite = all(bool(torch.isfinite(z).all()) for z in logits) if logits else _finite_outputs(model, act_inputs)
    if not all(torch.isfinite(p).all() for p in model.parameters()) or not finite:
        raise MergeMethodError(f"{method}: the fused network's weights or outputs on the activation sample are not "
                               "finite (a parent's weights are too large); check the parents' weights")
    seconds["fusion"] = time.perf_counter() - start
    return FusionResult(model, merges, [[] for _ in parents], seconds)


def fuse(parents: list[FusableNet], options: FusionOptions | MakesOptions, act_inputs: torch.Tensor | None = None,
         progress: Callable[[str, float], None] | None = None) -> FusionResult:
    """Fusion of the parents (any N >= 2) into the anchor's architecture, by the options' alignment.

    The zoo's networks (FusableNet) walk their described layers; any other network is traced into
    its channel groups (otcore.graph) and fused by any alignment over them (group_align, group_merge).

    options: FusionOptions, or a spec that makes them (`FusionSpec.options(n_parents)`)."""
    if len(parents) < 2:
        raise FusionError("fusion needs at least two parents")
    opts = as_options(options, len(parents))
    opts.check_width(len(parents))
    zoo = [isinstance(p, FusableNet) for p in parents]
    if any(zoo) and not all(zoo):
        raise FusionError("the parents are not of one architecture family: fusion needs parents with the same layers")
    if not any(zoo):  # any other network: its traced channel groups
        return FusionResult(*fuse_by_groups(parents, opts, act_inputs))
    if opts.alignment in MERGE_ALIGNMENTS:
        return merge_by_maps(parents, opts, act_inputs, progress)
    result = align_parents(parents, opts, act_inputs, progress)
    start = time.perf_counter()
    anchor_idx = opts.anchor_index(len(parents))
    result.model = average_aligned(parents, result.moves or result.plans, opts.parent_weights(len(parents)), anchor_idx,
                                   opts.past_correction)
    if opts.renormalize:
        if act_inputs is None:
            raise FusionError("renormalisation (REPAIR) needs a sample of inputs")
        result.model = repair(result.model, parents, result.plans, opts.parent_weights(len(parents)), act_inputs,
                              gain_bias=opts.repair_bias)
    result.seconds["fusion"] += time.perf_counter() - start
    return result
