"""Weight matching (Git Re-Basin, Ainsworth et al., 2022): permutations for all groups at once.

Coordinate descent: for one group at a time, with the others fixed, the permutation that
maximises sum_L <W_anchor[L], P_out^T W_parent[L] P_in> is a linear assignment problem
(scipy's linear_sum_assignment); sweep the groups in random order until nothing improves.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from otcore.errors import FusionError
from otcore.fusion.align import Gather, Plans, check_same_family, transform_weight, weight_of
from otcore.models import INPUT, OUTPUT, FusableNet


def _columns(weight: torch.Tensor, width: int) -> torch.Tensor:
    """A layer's weights grouped by input channel: (in_channels, everything else)."""
    out_dim = weight.shape[0]
    return weight.reshape(out_dim, width, -1).transpose(0, 1).reshape(width, -1)


def weight_matching_plans(parent: FusableNet, anchor: FusableNet, max_sweeps: int = 100, seed: int = 0) -> Plans:
    """Permutation plans (n, n) mapping the parent's neurons onto the anchor's, found jointly.

    Each permutation is kept as an index (anchor neuron j takes parent neuron source[j]) and applied by
    gathers; a group whose neighbours' permutations have not changed since its last solve is not solved
    again (the same similarity gives the same assignment, which improves nothing), so the sweeps, the
    random order and the plans are those of solving every group every time."""
    walk = check_same_family([anchor, parent])
    widths = {l.out_group: weight_of(anchor, l.name).shape[0] for l in walk}
    for layer in walk:
        if weight_of(parent, layer.name).shape != weight_of(anchor, layer.name).shape:
            raise FusionError("weight matching needs parents of the same widths; use OT alignment instead")
    groups = [g for g in dict.fromkeys(l.out_group for l in walk) if g not in (INPUT, OUTPUT)]
    ref = weight_of(anchor, walk[0].name)
    weights = [(layer, weight_of(anchor, layer.name), weight_of(parent, layer.name)) for layer in walk]
    source = {g: np.arange(widths[g]) for g in groups}
    moves: dict[str, Gather | None] = {INPUT: None, OUTPUT: None}
    moves.update({g: Gather(torch.arange(widths[g], device=ref.device), None, widths[g]) for g in groups})
    # The groups whose permutations a group's similarity reads (its writers' inputs, its readers' outputs).
    neighbours = {g: sorted(({l.in_group for l in walk if l.out_group == g} | {l.out_group for l in walk if l.in_group == g})
                            - {INPUT, OUTPUT}) for g in groups}
    version = dict.fromkeys(groups, 0)  # how many times each group's permutation changed
    seen: dict[str, list[int]] = {}  # the neighbours' versions at each group's last solve
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        improved = False
        for g in rng.permutation(groups):
            now = [version[h] for h in neighbours[g]]
            if seen.get(g) == now:
                continue
            seen[g] = now
            similarity = torch.zeros(widths[g], widths[g], dtype=ref.dtype, device=ref.device)
            for layer, w_a, w_p in weights:
                if layer.out_group == g:  # rows: neurons of g, inputs aligned by the current plan
                    rows_p = transform_weight(w_p, moves[layer.in_group], None).flatten(1)
                    similarity += w_a.flatten(1) @ rows_p.T
                if layer.in_group == g:  # columns: what g's neurons feed, outputs aligned
                    cols_p = _columns(transform_weight(w_p, None, moves[layer.out_group]), widths[g])
                    similarity += _columns(w_a, widths[g]) @ cols_p.T
            sim = similarity.double().cpu().numpy()  # (anchor neuron, parent neuron)
            anchor_idx, parent_idx = linear_sum_assignment(sim, maximize=True)
            old = source[g]  # parent neuron currently on each anchor neuron
            if sim[anchor_idx, parent_idx].sum() > sim[np.arange(widths[g]), old].sum() + 1e-12:
                improved = True
                source[g] = parent_idx[np.argsort(anchor_idx)]
                moves[g] = Gather(torch.as_tensor(source[g], device=ref.device), None, widths[g])
                version[g] += 1
        if not improved:
            break
    plans: Plans = {INPUT: None, OUTPUT: None}
    for g in groups:
        plan = torch.zeros(widths[g], widths[g], dtype=ref.dtype, device=ref.device)
        plan[moves[g].index, torch.arange(widths[g], device=ref.device)] = 1.0
        plans[g] = plan
    return plans
