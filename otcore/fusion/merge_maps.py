"""Fusion by linear merge and unmerge maps per neuron group (CCA Merge, ZipIt!).

OT and weight matching move each parent's neurons onto the anchor's with one plan; the methods
here use two maps per parent p and group g: a merge map T_p (n_p, n_fused), whose transpose takes
p's neurons into the fused basis (the parent's averaging share folded in), and an unmerge map
U_p (n_p, n_fused) that reads p's neurons back from the fused ones. The fused layer writing g
from group h is then sum_p T_p[g]^T W_p U_p[h] (a permutation gives T = w P, U = P).
Both methods work on networks whose groups have one writer each (mlpnet, the VGG family).
"""
from __future__ import annotations


import torch

from otcore.activations import EVAL_BATCH, capture_activations
from otcore.errors import FusionError
from otcore.fusion.chain import chain_activations, is_chain
from otcore.fusion.align import Plans, check_same_family, transform_bias, transform_weight, weight_of
from otcore.fusion.new_weights import copy_with
from otcore.fusion.resize import resized_copy
from otcore.models import OUTPUT, FusableNet

EPS = 1e-12


class MergeMethodError(FusionError):
    """A merge method (CCA Merge, ZipIt!) asked of parents it cannot merge; the message says why."""


def check_mergeable(parents: list[FusableNet], method: str) -> list[str]:
    """The hidden groups in forward order; refuses residual networks (a group with several writers) and
    parents of different widths (both methods' references assume one width)."""
    walk = check_same_family(parents)
    writers: dict[str, int] = {}
    for layer in walk:
        writers[layer.out_group] = writers.get(layer.out_group, 0) + 1
    if any(n > 1 for n in writers.values()) or set(parents[0].group_modules()) != set(writers) - {OUTPUT}:
        raise MergeMethodError(f"{method} merges networks without residual connections (mlpnet, the VGG family); "
                               f"{type(parents[0]).__name__} has a residual stream: use OT or weight matching")
    for i, parent in enumerate(parents[1:], start=2):
        for layer in walk:
            if weight_of(parent, layer.name).shape != weight_of(parents[0], layer.name).shape:
                raise MergeMethodError(f"{method} needs parents of the same widths ({layer.name} of parent {i} "
                                       "differs from parent 1's); use OT alignment to fuse different widths")
    return [layer.out_group for layer in walk if layer.out_group != OUTPUT]


def group_activations(parent: FusableNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each hidden group's pre-activations on x as (neurons, samples); conv positions are samples."""
    # A chain is stepped layer by layer (otcore.fusion.chain): no private copy, no hooks; the same values.
    if is_chain(parent):
        return chain_activations(parent, x, parent.group_modules(), EVAL_BATCH)
    return capture_activations(parent, x, parent.group_modules())


def pre_activations(parents: list[FusableNet], x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per parent, group_activations on x."""
    return [group_activations(p, x) for p in parents]


def features(pre: torch.Tensor) -> torch.Tensor:
    """The features both methods correlate: post-ReLU activations (samples, neurons), float64.

    The papers' merge points sit after the nonlinearity (ZipIt!'s VGG graph puts them after each
    ReLU); before it, a first layer's d outputs span at most its fan-in, so covariances would be
    singular by construction.
    """
    return pre.clamp_min(0).T.double()  # clamped before widening: half the bytes, the same values and layout


def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation (d_x, d_y) between the columns of x (n, d_x) and y (n, d_y).

    Two constant columns (dead neurons) count as perfectly correlated, a constant and a varying
    one as uncorrelated: constant features are interchangeable on the sample.
    """
    xc = x - x.mean(0)
    sx = xc.norm(dim=0)
    # ZipIt! correlates a layer's features with themselves: centre and take norms once (a conv layer's
    # features are (samples x positions, channels), and the strided column norms were a third of its time).
    yc, sy = (xc, sx) if y is x else (y - y.mean(0), None)
    sy = (yc.norm(dim=0) if sy is None else sy)
    # In place, and the dead pairs' mask only where both sides have one: the (d_x, d_y) temporaries were
    # more than the product's own time at ZipIt!'s 800 x 800.
    corr = (xc.T @ yc).div_(torch.outer(sx, sy).clamp_min_(EPS))
    dead_x, dead_y = sx <= 1e-9 * sx.max().clamp_min(EPS), sy <= 1e-9 * sy.max().clamp_min(EPS)
    rows, cols = dead_x.nonzero()[:, 0], dead_y.nonzero()[:, 0]
    if len(rows) and len(cols):
        corr[rows[:, None], cols[None, :]] = 1.0
    return corr


def merge_weights(parents: list[FusableNet], template: FusableNet, merges: list[Plans], unmerges: list[Plans],
                  weights: list[float]) -> FusableNet:
    """A copy of the template with W_fused = sum_p T_p[out]^T W_p U_p[in]; a missing merge map is w_p I.

    Maps wider than the template's groups (partial merging) give a copy resized to them."""
    dtypes = {k: v.dtype for k, v in template.state_dict().items()}
    summed: dict[str, torch.Tensor] = {}
    for parent, merge, unmerge, weight in zip(parents, merges, unmerges, weights):
        for layer in template.alignment_layers():
            module = parent.get_submodule(layer.name)
            t_out = merge.get(layer.out_group)
            scale = weight if t_out is None else 1.0
            moved = transform_weight(module.weight.detach(), unmerge.get(layer.in_group), t_out)
            parts = {f"{layer.name}.weight": moved}
            if getattr(module, "bias", None) is not None:
                parts[f"{layer.name}.bias"] = transform_bias(module.bias.detach(), t_out)
            for name, tensor in parts.items():
                summed[name] = summed.get(name, 0) + scale * tensor.to(dtypes[name])
    own = template.state_dict()
    if all(own[name].shape == tensor.shape for name, tensor in summed.items()):
        return copy_with(template, summed).eval()
    return resized_copy(template, summed).eval()  # partial merging: wider than the anchor


def repair_target(pre: list[dict[str, torch.Tensor]], merges: list[Plans]) -> dict[str, tuple[torch.Tensor,
                                                                                              torch.Tensor]]:
    """REPAIR's target (mean, std) per fused neuron: sum_p (mean, std)(T_p^T z_p) over the sample.

    Each parent's pre-activations z_p moved into the fused basis keep their own spread; their
    sum is what averaging would give without variance collapse. For a permutation this is the
    parents' neuron statistics averaged, as the OT path's REPAIR does.
    """
    target: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for acts, merge in zip(pre, merges):
        for g, t in merge.items():
            if t is not None and g in acts:
                moved = t.T.to(acts[g].dtype) @ acts[g]
                mean, std = target.get(g, (0, 0))
                target[g] = (mean + moved.mean(1), std + moved.std(1))
    return target
