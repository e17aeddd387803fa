"""Loss barriers along the path from parent A to parent B after B is aligned to A (Git Re-Basin, REPAIR).

Naive: (1-t)·θ_A + t·θ_B. Aligned: B is first moved into A's neuron order by the fusion code's own
alignment (OT on weights or activations, or weight matching), so with ensemble step 0.5 and no
REPAIR the fused net *is* the aligned path's midpoint (Singh & Jaggi, 2020; Ainsworth et al., 2022).
With REPAIR every point of the path is renormalised on the activation sample, as fusion does
(Jordan et al., 2022). A is the fusion spec's anchor; each path is cached like the other analysis steps.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from otcore.analysis import analysis_batches, curve_dict
from otcore.cache import CacheEntry, DiskCache, default_cache
from otcore.config import DataSpec, FusionSpec, HessianSpec, SpecError, spec_dict, spec_hash
from otcore.curves import InterpolationPath
from otcore.device import on_device, resolve_device
from otcore.fusion.align import Plans, apply_plans
from otcore.fusion.fuse import align_parents, fuse
from otcore.landscape import barrier, path_curve
from otcore.models import FusableNet
from otcore.pipeline import Progress, cached, fusion_inputs

ALIGNMENTS = {"naive": "naive", "ot-weights": "OT (weights)", "ot-activations": "OT (activations)",
              "weight-matching": "weight matching"}  # how B is brought to A, as the legend says it


def alignment_spec(spec: FusionSpec, alignment: str) -> FusionSpec | None:
    """The fusion spec that aligns B the asked way (None: naive); the other fields are the study's."""
    if alignment not in ALIGNMENTS:
        raise SpecError(f"path alignment must be one of {', '.join(ALIGNMENTS)}, got '{alignment}'")
    if alignment == "naive":
        return None
    if alignment == "weight-matching":
        return replace(spec, alignment="weight_matching", renormalize=False, finetune_epochs=0)
    return replace(spec, alignment="ot", mode=alignment.removeprefix("ot-"), renormalize=False, finetune_epochs=0)


def aligned_parent(parents: Sequence[FusableNet], spec: FusionSpec | None,
                   act_inputs: torch.Tensor | None = None) -> tuple[FusableNet, Plans]:
    """(B in A's neuron order, the plans that moved it): the copy of B that fusion averages with A.

    A is parents[spec.anchor]; tensors the alignment does not touch (norm statistics) are A's, as in
    otcore.fusion.fuse.average_aligned. spec None: B as it is, with no plans.
    """
    if len(parents) != 2:
        raise ValueError("a path between parents needs exactly two parents")
    anchor_idx = spec.anchor % 2 if spec is not None else 0
    anchor, other = parents[anchor_idx], parents[1 - anchor_idx]
    if spec is None:
        return copy.deepcopy(other).eval(), {}
    if not isinstance(anchor, FusableNet):
        # Traced groups (otcore.graph): fusing with all the weight on B is B moved into A's order, every tensor of
        # a group (norm statistics too) moved with its channels, so the path ends exactly at B's function.
        result = fuse([anchor, other], replace(spec, anchor=0, weights=(0.0, 1.0), renormalize=False), act_inputs)
        return result.model, result.plans[1]
    plans = align_parents(list(parents), spec, act_inputs).plans[1 - anchor_idx]
    state = {k: v.detach().clone() for k, v in anchor.state_dict().items()}
    state.update(apply_plans(other, anchor, plans, spec.past_correction))
    moved = copy.deepcopy(anchor)
    moved.load_state_dict(state)
    return moved.eval(), plans


def _interpolated(a: FusableNet, b: FusableNet, t: float) -> FusableNet:
    """A new network with state (1-t)·θ_A + t·θ_B (floating tensors; integer buffers are A's)."""
    sa, sb = a.state_dict(), b.state_dict()
    net = copy.deepcopy(a)
    net.load_state_dict({k: torch.lerp(v, sb[k], t) if v.is_floating_point() else v for k, v in sa.items()})
    return net.eval()


def repaired_points(a: FusableNet, b: FusableNet, moved: FusableNet, plans: Plans, alphas: Sequence[float],
                    act_inputs: torch.Tensor, progress: Progress | None = None) -> list[FusableNet]:
    """Each point (1-t)·A + t·(B aligned) renormalised (REPAIR) to the t-weighted neuron statistics of A and B.

    The zoo's networks by their described layers (fusion.repair); any other network by its traced groups
    (group_repair: batch norms re-estimated, then every neuron's mean and std set)."""
    from otcore.fusion.group_align import input_shape_of
    from otcore.fusion.group_repair import repair_groups
    from otcore.fusion.repair import repair
    from otcore.graph import trace_groups

    traced = not isinstance(a, FusableNet)
    graphs = [trace_groups(n, input_shape_of(n, act_inputs)) for n in (a, b)] if traced else []
    nets = []
    for i, t in enumerate(alphas):
        if progress:
            progress(f"REPAIR at point {i + 1} of {len(alphas)}", i / len(alphas))
        point = _interpolated(a, moved, t)
        nets.append(repair_groups(point, [a, b], graphs, [{}, plans], [1 - t, t], act_inputs, 0) if traced
                    else repair(point, [a, b], [{}, plans], [1 - t, t], act_inputs))
    return nets


def _name(row: Any) -> str:
    return getattr(row, "method", None) or row.name


def aligned_path(data: DataSpec, parents: Sequence[Any], fusion: FusionSpec, spec: HessianSpec,
                 alignment: str = "ot-weights", repair: bool = False, points: int = 11, device: str = "auto",
                 cache: DiskCache | None = None, progress: Progress | None = None) -> InterpolationPath:
    """Loss along A → (B aligned to A by `alignment`), optionally REPAIRed at every point, and its barrier (cached).

    parents: two objects with .model and .key (pipeline Parent or MethodResult rows); A is the anchor.
    """
    if len(parents) != 2:
        raise SpecError("an aligned path needs exactly two parents")
    if points < 2:
        raise SpecError(f"a path needs at least 2 points, got {points}")
    used = alignment_spec(fusion, alignment)
    anchor_idx = fusion.anchor % 2
    ordered = [parents[anchor_idx], parents[1 - anchor_idx]]
    names = [_name(p) for p in ordered]
    sample_spec = used or fusion  # the activation sample of the study (REPAIR and activation alignment)
    needs_sample = repair or alignment == "ot-activations"
    cache = cache or default_cache()
    keyed = replace(used, anchor=0) if used else None
    entry_key = spec_hash("aligned-path", data, spec, keyed, alignment, repair, points,
                          sample_spec.act_samples if needs_sample else 0, sample_spec.act_seed if needs_sample else 0,
                          [p.key for p in ordered])
    dev = resolve_device(device)

    def step(what: str, start: float, span: float) -> Callable[[str, float], None] | None:
        return (lambda w, f: progress(f"{names[1]} by {ALIGNMENTS[alignment]}: {w or what}", start + span * f)) \
            if progress else None

    def compute() -> CacheEntry:
        a, b = (on_device(p.model, dev) for p in ordered)  # shared models: never moved or switched
        if progress:
            progress(f"aligning {names[1]} to {names[0]} by {ALIGNMENTS[alignment]}", 0.0)
        x = fusion_inputs(data, sample_spec, dev) if needs_sample else None
        moved, plans = aligned_parent([a, b], replace(used, anchor=0) if used else None, x)
        batches = analysis_batches(data, spec, dev)
        evaluate = step("loss along the path", 0.5 if repair else 0.1, 0.5 if repair else 0.9)
        if repair:
            alphas = torch.linspace(0, 1, points, dtype=torch.float64)
            nets = repaired_points(a, b, moved, plans, alphas.tolist(), x, step("", 0.0, 0.5))
            curve = path_curve(nets, batches, 2, progress=evaluate and (lambda f: evaluate("", f)))
            curve.lambdas = alphas  # one segment per pair of neighbours: position k/(points-1)
        else:
            curve = path_curve([a, moved], batches, points, progress=evaluate and (lambda f: evaluate("", f)))
        metrics = {"curve": curve_dict(curve), "barrier": barrier(curve), "path": names, "alignment": alignment,
                   "repair": repair}
        return CacheEntry(entry_key, "interpolation", {"data": spec_dict(data), "networks": [p.key for p in ordered],
                                                       "alignment": alignment, "repair": repair}, metrics)

    entry, hit = cached(cache, entry_key, compute)
    label = f"{names[0]} → {names[1]}" + ("" if alignment == "naive" else f" aligned by {ALIGNMENTS[alignment]}")
    return InterpolationPath.from_stored(entry.metrics, label + (" + REPAIR" if repair else ""), hit)
