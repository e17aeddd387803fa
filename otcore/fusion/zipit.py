"""ZipIt! (Stoica et al., ICLR 2024): merge features by correlation, within and across models.

Per hidden group, the features of all N parents (N*d of them) are merged greedily: the most
correlated pair of current features merges into one (two of the same model allowed, within a
budget), until the fused width remains. The result is a merge map (fused feature = weighted
mean of its members) and an unmerge map (each member reads its fused feature), so the fused
layer is sum_p Merge_p W_p Unmerge_p. Full zip: every layer is merged, and the fused network
has the anchor's widths; partial zipping (FusionOptions.width > 1) stops the greedy pairing at a
larger width, so the least correlated features stay unmerged, side by side (at N times the
anchor's width none merge, and the network is the parents' ensemble of logits). Follows the
authors' match_tensors_zipit (alpha, beta as there), with
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

import math

import numpy as np
import torch

from otcore.errors import FusionError
from otcore.fusion.merge_maps import correlation

ALPHA = 0.3  # a merge beyond N members scores its similarity times alpha per extra member (0: only as a last resort)
BETA = 0.125  # per model, the share of its (to_remove / N) merges that may pair two of its own features


def _unbudgeted(link: np.ndarray, size: np.ndarray, active: np.ndarray, n_models: int, alpha: float) -> np.ndarray:
    """Scores of every pair of active clusters (total, total) as the greedy loop scores them, budgets ignored."""
    excess = np.maximum(size[:, None] + size[None, :] - n_models, 0)
    score = link * alpha ** excess if alpha > 0 else np.where(excess > 0, -np.inf, link)
    if alpha <= 0 and not np.isfinite(score[np.ix_(active, active)]).any():
        score = link.copy()  # alpha 0 forbids re-merging; reaching the width needs one
    score[~(active[:, None] & active[None, :])] = -np.inf
    np.fill_diagonal(score, -np.inf)
    return score


def _greedy_merges(link: np.ndarray, origin: np.ndarray, n_models: int, width: int, alpha: float,
                   beta: float) -> np.ndarray:
    """The cluster (0..width-1, ordered by lowest member) of every feature after the greedy merges; `link` is
    overwritten.

    One merge per step, in NumPy on the CPU: a step reads and writes a few rows of (total, total)
    arrays, where torch's per-call overhead (some 25 calls of ~10 us per step; on a GPU, a sync per
    step) was most of the time. The pairing is sequential, like the OT solve, and runs where it does."""
    total = link.shape[0]
    holds = np.zeros((total, n_models), dtype=bool)  # whether cluster j has members of each model
    holds[np.arange(total), origin] = True
    models = [{int(m)} for m in origin]  # the same as Python sets: the budget's check without array calls
    size = np.ones(total, dtype=np.int64)
    exhausted = [False] * n_models
    any_exhausted = False
    parent = np.arange(total)  # the cluster a merged-away cluster went into (a lower index)
    dead = np.zeros(total)  # -inf on merged-away clusters: added to a row of scores, it forbids them
    budget = [int((total - width) // n_models * beta + 1e-4)] * n_models
    # The penalty of a merge into `members` members, alpha^max(members - N, 0), read from a table (one rounding
    # per excess, whatever the row); with alpha 0 a merge beyond N members is forbidden.
    excess = np.maximum(np.arange(2 * total + 1) - n_models, 0)
    penalty = alpha ** excess.astype(np.float64) if alpha > 0 else np.where(excess > 0, -np.inf, 1.0)
    score = link.copy()
    np.fill_diagonal(score, -np.inf)  # singletons: no excess while N >= 2, nothing spent yet
    # Each row's best column, kept up to date: a merge changes two rows and two columns, so the argmax
    # over all pairs (the first in row-major order, as score.argmax() gives) costs O(total), not O(total^2).
    rows_all = np.arange(total)
    row_best = score.argmax(1)
    row_max = score[rows_all, row_best]
    for _ in range(total - width):
        top = int(row_max.argmax())
        best = top * total + int(row_best[top])
        if not math.isfinite(score.item(best)):  # every pair forbidden: the budget yields
            best = int(_unbudgeted(link, size, dead == 0, n_models, alpha).argmax())
        row, col = sorted(divmod(best, total))  # keep the lower index, as the authors' code
        spent = []
        for model in sorted(models[row] & models[col]):
            budget[model] -= 1
            if budget[model] <= 0 and not exhausted[model]:
                exhausted[model] = any_exhausted = True
                spent.append(model)
        parent[col] = row
        models[row] |= models[col]
        holds[row] |= holds[col]
        holds[col] = False
        size[row] += size[col]
        size[col] = 0
        dead[col] = -np.inf
        merged = np.minimum(link[row], link[col])
        link[row] = merged
        link[:, row] = merged
        for model in spent:  # no two clusters that both hold this model merge from now on
            idx = np.flatnonzero(holds[:, model])
            score[np.ix_(idx, idx)] = -np.inf
        # Cluster `row` against every cluster: linkage, penalised beyond N members, -inf where both hold a
        # model whose same-model budget is spent.
        factor = penalty.take(size + size[row])
        row_scores = merged * factor if alpha > 0 else np.where(factor < 0, -np.inf, merged)
        if any_exhausted:
            shared = [m for m in models[row] if exhausted[m]]
            if shared:
                row_scores[holds[:, shared[0]] if len(shared) == 1 else holds[:, shared].any(1)] = -np.inf
        row_scores += dead
        row_scores[row] = -np.inf
        score[row] = row_scores
        score[:, row] = row_scores
        score[col] = -np.inf
        score[:, col] = -np.inf
        if spent:
            row_best = score.argmax(1)
            row_max = score[rows_all, row_best]
            continue
        # Rows whose best was `row` or `col` may have dropped: recompute them. Elsewhere only column `row`
        # can have risen; on a tie the lower column is the first in order.
        stale = ((row_best == row) | (row_best == col)).nonzero()[0]
        rises = (row_scores > row_max) | ((row_scores == row_max) & (row_best > row))
        np.copyto(row_best, row, where=rises)
        np.copyto(row_max, row_scores, where=rises)
        if len(stale):
            row_best[stale] = score[stale].argmax(1)
            row_max[stale] = score[stale, row_best[stale]]
        row_best[col], row_max[col] = 0, -np.inf  # its row is all -inf now
        row_best[row] = best_of_row = int(row_scores.argmax())
        row_max[row] = row_scores[best_of_row]
    cluster = parent
    for f in range(total):  # parent[f] < f or f itself: the lower one's cluster is final when f is reached
        cluster[f] = cluster[cluster[f]]
    return np.searchsorted(np.flatnonzero(dead == 0), cluster)


def zipit_maps(feats: list[torch.Tensor], weights: list[float], width: int, alpha: float = ALPHA,
               beta: float = BETA) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parent, (merge T_p, unmerge U_p), both (d_p, width), from features (samples, d_p).

    The fused feature k is sum_p T_p[:, k]^T f_p, with T's entries the parents' weights of its
    members, normalised to sum 1 (equal weights: the members' mean, as the paper); U_p[:, k] is 1
    on p's members of k. Fused features come ordered by their first member (the first parent's
    first). Linkage between clusters is the minimum correlation of their members (the authors').
    The greedy pairing runs in NumPy on the CPU; the maps come back on the features' device.
    """
    sizes = [f.shape[1] for f in feats]
    total, n_models = sum(sizes), len(feats)
    if not 1 <= width <= total:
        raise FusionError(f"ZipIt! cannot merge {total} features into {width}")
    stacked = torch.cat(feats, 1)
    link = correlation(stacked, stacked)
    if not bool(torch.isfinite(link.sum())):  # correlations lie in [-1, 1]: the sum is finite exactly when they all are
        raise FusionError("ZipIt!: the parents' features on the sample are not finite; check the parents' weights")
    origin = np.repeat(np.arange(n_models), sizes)
    cluster = _greedy_merges(link.cpu().numpy(), origin, n_models, width, alpha, beta)
    return cluster_maps(cluster, sizes, weights, width, stacked)


def cluster_maps(cluster: np.ndarray, sizes: list[int], weights: list[float], width: int,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parent, (merge T_p, unmerge U_p), both (d_p, width), of a clustering of the stacked features.

    cluster: (sum d_p,) the fused feature (0..width-1) each parent feature joins. U_p[:, k] is 1 on p's
    members of k; T_p[:, k] holds the members' parent weights normalised to sum 1 (the plain mean where
    they are all 0). Dtype and device are `like`'s."""
    # One entry per row: the entries are computed as a vector and scattered (the dense algebra, a handful of
    # (total, width) temporaries, was a tenth of PLeaS's time on mlpnet).
    rows = torch.arange(len(cluster), device=like.device)
    index = torch.as_tensor(cluster, dtype=torch.long, device=like.device)
    share = torch.as_tensor(np.repeat(weights, sizes), dtype=like.dtype, device=like.device)
    members = np.bincount(cluster, minlength=width)
    if members.max(initial=0) <= 2:  # a sum of two is the same in any order: the column sums' values
        total_share = torch.zeros(width, dtype=like.dtype, device=like.device).index_add_(0, index, share)
    else:  # torch's column sums of the dense shares, for their order of summation
        dense = torch.zeros(len(cluster), width, dtype=like.dtype, device=like.device)
        total_share = dense.index_put_((rows, index), share).sum(0)
    total_share = total_share[index]
    count = torch.as_tensor(members, dtype=like.dtype, device=like.device)[index]
    # A cluster whose members all have weight 0 still needs a value: their plain mean.
    values = torch.where(total_share > 0, share / total_share.clamp_min(1e-30), 1.0 / count)
    merge = torch.zeros(len(cluster), width, dtype=like.dtype, device=like.device).index_put_((rows, index), values)
    unmerge = torch.zeros(len(cluster), width, dtype=like.dtype, device=like.device).index_put_(
        (rows, index), torch.ones_like(values))
    return list(merge.split(sizes)), list(unmerge.split(sizes))
