"""ZipIt! (Stoica et al., ICLR 2024): merge features by correlation, within and across models.

Per hidden group, the features of all N parents (N*d of them) are merged greedily: the most
correlated pair of current features merges into one (two of the same model allowed, within a
budget), until the fused width remains. The result is a merge map (fused feature = weighted
mean of its members) and an unmerge map (each member reads its fused feature), so the fused
layer is sum_p Merge_p W_p Unmerge_p. Full zip: every layer is merged, and the fused network
has the anchor's widths. Follows the authors' match_tensors_zipit (alpha, beta as there).
"""
from __future__ import annotations

import torch

from otcore.errors import FusionError
from otcore.fusion.merge_maps import correlation

ALPHA = 0.3  # a merged feature's similarities: the minimum of its members', times alpha (0: no re-merging)
BETA = 0.125  # per model, the share of its (to_remove / N) merges that may pair two of its own features


def zipit_maps(feats: list[torch.Tensor], weights: list[float], width: int, alpha: float = ALPHA,
               beta: float = BETA) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parent, (merge T_p, unmerge U_p), both (d_p, width), from features (samples, d_p).

    The fused feature k is sum_p T_p[:, k]^T f_p, with T's entries the parents' weights of its
    members, normalised to sum 1 (equal weights: the members' mean, as the paper); U_p[:, k] is 1
    on p's members of k. Fused features come ordered by their first member (the first parent's
    first).
    """
    sizes = [f.shape[1] for f in feats]
    total = sum(sizes)
    if not 1 <= width <= total:
        raise FusionError(f"ZipIt! cannot merge {total} features into {width}")
    stacked = torch.cat(feats, 1)
    sims = correlation(stacked, stacked)
    sims.fill_diagonal_(-torch.inf)
    origin = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)]).to(sims.device)
    members = torch.eye(total, dtype=torch.bool, device=sims.device)  # column j: the features in cluster j
    active = torch.ones(total, dtype=torch.bool, device=sims.device)
    budget = [int((total - width) // len(feats) * beta + 1e-4)] * len(feats)
    for _ in range(total - width):
        best = int(sims.argmax())
        row, col = sorted(divmod(best, total))  # keep the lower index, as the authors' code
        if not torch.isfinite(sims[row, col]):
            raise FusionError("ZipIt! ran out of mergeable features (same-model budget exhausted)")
        members[:, row] |= members[:, col]
        merged = torch.minimum(sims[row], sims[col])
        merged = merged * alpha if alpha > 0 else torch.full_like(merged, -torch.inf)
        sims[row], sims[:, row] = merged, merged
        sims[row, row] = -torch.inf
        sims[col], sims[:, col] = -torch.inf, -torch.inf
        active[col] = False
        if origin[row] == origin[col]:
            model = int(origin[row])
            budget[model] -= 1
            if budget[model] <= 0:  # no more same-model merges for this model
                own = (origin == model) & active
                sims[own[:, None] & own[None, :]] = -torch.inf
    unmerge = members[:, active].to(stacked.dtype)  # (total, width), clusters ordered by lowest member
    share = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)[origin][:, None] * unmerge
    total_share = share.sum(0, keepdim=True)
    # A cluster whose members all have weight 0 still needs a value: their plain mean.
    merge = torch.where(total_share > 0, share / total_share.clamp_min(1e-30), unmerge / unmerge.sum(0, keepdim=True))
    return list(merge.split(sizes)), list(unmerge.split(sizes))
