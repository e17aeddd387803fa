"""ZipIt! (Stoica et al., ICLR 2024): merge features by correlation, within and across models.

Per hidden group, the features of all N parents (N*d of them) are merged greedily: the most
correlated pair of current features merges into one (two of the same model allowed, within a
budget), until the fused width remains. The result is a merge map (fused feature = weighted
mean of its members) and an unmerge map (each member reads its fused feature), so the fused
layer is sum_p Merge_p W_p Unmerge_p. Full zip: every layer is merged, and the fused network
has the anchor's widths. Follows the authors' match_tensors_zipit (alpha, beta as there), with
two changes for N > 2 parents, where their code stalls or splits what belongs together:
- a cluster counts its members per model, not by its first member's model: a merge spends the
  budget of every model the two sides share, and once a model's budget is spent no two clusters
  that both hold it merge (their label-based rule let greedy runs end with every remaining pair
  forbidden above the width: "ran out of mergeable features" on three parents);
- the re-merge penalty alpha applies to a merge beyond N members (alpha to the excess), not from
  a cluster's first merge on: with N = 2 this is their rule; with N = 3 a pair of matching
  features still takes the third model's match at full similarity, so N permuted copies zip back
  into the original's features exactly.
Should every remaining pair still be forbidden, the budget yields (the most similar pair merges):
the fused width is always reached.
"""
from __future__ import annotations

import torch

from otcore.errors import FusionError
from otcore.fusion.merge_maps import correlation

ALPHA = 0.3  # a merge beyond N members scores its similarity times alpha per extra member (0: only as a last resort)
BETA = 0.125  # per model, the share of its (to_remove / N) merges that may pair two of its own features


def _scores(link: torch.Tensor, counts: torch.Tensor, k: int, exhausted: torch.Tensor, n_models: int,
            alpha: float) -> torch.Tensor:
    """Scores of cluster k against every cluster (total,): linkage, penalised beyond N members, -inf where
    both hold a model whose same-model budget is spent."""
    size = counts.sum(1)
    excess = (size + size[k] - n_models).clamp_min(0).to(link.dtype)
    if alpha > 0:
        score = link[k] * alpha ** excess
    else:
        score = torch.where(excess > 0, -torch.inf, link[k])
    shared_spent = ((counts > 0) & (counts[k] > 0) & exhausted).any(1)
    return score.masked_fill(shared_spent, -torch.inf)


def _unbudgeted(link: torch.Tensor, counts: torch.Tensor, active: torch.Tensor, n_models: int,
                alpha: float) -> torch.Tensor:
    """Scores of every pair of active clusters (total, total) as _scores gives them, budgets ignored."""
    size = counts.sum(1)
    excess = (size[:, None] + size[None, :] - n_models).clamp_min(0).to(link.dtype)
    score = link * alpha ** excess if alpha > 0 else link.masked_fill(excess > 0, -torch.inf)
    if alpha <= 0 and not torch.isfinite(score[active][:, active]).any():
        score = link.clone()  # alpha 0 forbids re-merging; reaching the width needs one
    score = score.masked_fill(~(active[:, None] & active[None, :]), -torch.inf)
    return score.fill_diagonal_(-torch.inf)


def zipit_maps(feats: list[torch.Tensor], weights: list[float], width: int, alpha: float = ALPHA,
               beta: float = BETA) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parent, (merge T_p, unmerge U_p), both (d_p, width), from features (samples, d_p).

    The fused feature k is sum_p T_p[:, k]^T f_p, with T's entries the parents' weights of its
    members, normalised to sum 1 (equal weights: the members' mean, as the paper); U_p[:, k] is 1
    on p's members of k. Fused features come ordered by their first member (the first parent's
    first). Linkage between clusters is the minimum correlation of their members (the authors').
    """
    sizes = [f.shape[1] for f in feats]
    total, n_models = sum(sizes), len(feats)
    if not 1 <= width <= total:
        raise FusionError(f"ZipIt! cannot merge {total} features into {width}")
    stacked = torch.cat(feats, 1)
    link = correlation(stacked, stacked)
    if not torch.isfinite(link).all():
        raise FusionError("ZipIt!: the parents' features on the sample are not finite; check the parents' weights")
    device = link.device
    origin = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)]).to(device)
    counts = torch.nn.functional.one_hot(origin, n_models)  # (total, N): cluster j's members per model
    exhausted = torch.zeros(n_models, dtype=torch.bool, device=device)
    members = torch.eye(total, dtype=torch.bool, device=device)  # column j: the features in cluster j
    active = torch.ones(total, dtype=torch.bool, device=device)
    budget = [int((total - width) // n_models * beta + 1e-4)] * n_models
    score = link.clone().fill_diagonal_(-torch.inf)  # singletons: no excess while N >= 2, nothing spent yet
    # Each row's best column, kept up to date: a merge changes two rows and two columns, so the argmax
    # over all pairs (the first in row-major order, as score.argmax() gives) costs O(total), not O(total^2).
    row_best = score.argmax(1)
    row_max = score.gather(1, row_best[:, None]).squeeze(1)
    for _ in range(total - width):
        top = int(row_max.argmax())
        best = top * total + int(row_best[top])
        if not torch.isfinite(score.view(-1)[best]):  # every pair forbidden: the budget yields
            best = int(_unbudgeted(link, counts, active, n_models, alpha).argmax())
        row, col = sorted(divmod(best, total))  # keep the lower index, as the authors' code
        spent = []
        for model in ((counts[row] > 0) & (counts[col] > 0)).nonzero().flatten().tolist():
            budget[model] -= 1
            if budget[model] <= 0 and not exhausted[model]:
                exhausted[model] = True
                spent.append(model)
        members[:, row] |= members[:, col]
        counts[row] += counts[col]
        counts[col] = 0
        active[col] = False
        link[row] = link[:, row] = torch.minimum(link[row], link[col])
        for model in spent:  # no two clusters that both hold this model merge from now on
            holds = counts[:, model] > 0
            score.masked_fill_(holds[:, None] & holds[None, :], -torch.inf)
        row_scores = _scores(link, counts, row, exhausted, n_models, alpha).masked_fill(~active, -torch.inf)
        row_scores[row] = -torch.inf
        score[row] = score[:, row] = row_scores
        score[col] = score[:, col] = -torch.inf
        if spent:
            row_best = score.argmax(1)
        else:
            stale = (row_best == row) | (row_best == col)  # their best may have dropped: recompute those rows
            stale[row] = stale[col] = True
            # Elsewhere only column `row` can have risen; on a tie the lower column is the first in order.
            rises = (row_scores > row_max) | ((row_scores == row_max) & (row_best > row))
            row_best = torch.where(rises, row, row_best)
            rows = stale.nonzero().flatten()
            row_best[rows] = score[rows].argmax(1)
        row_max = score.gather(1, row_best[:, None]).squeeze(1)
    unmerge = members[:, active].to(stacked.dtype)  # (total, width), clusters ordered by lowest member
    share = torch.as_tensor(weights, dtype=stacked.dtype, device=stacked.device)[origin][:, None] * unmerge
    total_share = share.sum(0, keepdim=True)
    # A cluster whose members all have weight 0 still needs a value: their plain mean.
    merge = torch.where(total_share > 0, share / total_share.clamp_min(1e-30), unmerge / unmerge.sum(0, keepdim=True))
    return list(merge.split(sizes)), list(unmerge.split(sizes))
