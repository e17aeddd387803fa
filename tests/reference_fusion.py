"""The fusion code as it was before issue 24's speed work (einsum plans, per-merge torch ZipIt!, 11-product CCA
Merge, weight matching without skips, PLeaS's hooked least squares): the reference that the faster code is tested
against, kept verbatim."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from otcore.device import private_copy

from otcore.errors import FusionError
from otcore.fusion.align import Plans, check_same_family, weight_of
from otcore.fusion.cca import DEFAULT_REG
from otcore.fusion.merge_maps import MergeMethodError, correlation
from otcore.fusion.group_pleas import _call_order, _output_map
from otcore.fusion.pleas import BATCH, RIDGE
from otcore.graph import ModelGraph
from otcore.fusion.zipit import ALPHA, BETA
from otcore.models import INPUT, OUTPUT, FusableNet


def old_transform_weight(weight: torch.Tensor, t_in: torch.Tensor | None, t_out: torch.Tensor | None) -> torch.Tensor:
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



def old_transform_bias(bias: torch.Tensor | None, t_out: torch.Tensor | None) -> torch.Tensor | None:
    """Bias of the aligned neurons: T_out^T b."""
    if bias is None or t_out is None:
        return bias
    return t_out.T @ bias



def _columns(weight: torch.Tensor, width: int) -> torch.Tensor:
    """A layer's weights grouped by input channel: (in_channels, everything else)."""
    out_dim = weight.shape[0]
    return weight.reshape(out_dim, width, -1).transpose(0, 1).reshape(width, -1)


def old_weight_matching_plans(parent: FusableNet, anchor: FusableNet, max_sweeps: int = 100, seed: int = 0) -> Plans:
    """Permutation plans (n, n) mapping the parent's neurons onto the anchor's, found jointly."""
    walk = check_same_family([anchor, parent])
    widths = {l.out_group: weight_of(anchor, l.name).shape[0] for l in walk}
    for layer in walk:
        if weight_of(parent, layer.name).shape != weight_of(anchor, layer.name).shape:
            raise FusionError("weight matching needs parents of the same widths; use OT alignment instead")
    groups = [g for g in dict.fromkeys(l.out_group for l in walk) if g not in (INPUT, OUTPUT)]
    ref = weight_of(anchor, walk[0].name)
    plans: Plans = {INPUT: None, OUTPUT: None}
    for g in groups:
        plans[g] = torch.eye(widths[g], dtype=ref.dtype, device=ref.device)
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        improved = False
        for g in rng.permutation(groups):
            similarity = torch.zeros(widths[g], widths[g], dtype=ref.dtype, device=ref.device)
            for layer in walk:
                w_a, w_p = weight_of(anchor, layer.name), weight_of(parent, layer.name)
                if layer.out_group == g:  # rows: neurons of g, inputs aligned by the current plan
                    rows_p = old_transform_weight(w_p, plans[layer.in_group], None).flatten(1)
                    similarity += w_a.flatten(1) @ rows_p.T
                if layer.in_group == g:  # columns: what g's neurons feed, outputs aligned
                    cols_p = _columns(old_transform_weight(w_p, None, plans[layer.out_group]), widths[g])
                    similarity += _columns(w_a, widths[g]) @ cols_p.T
            sim = similarity.double().cpu().numpy()  # (anchor neuron, parent neuron)
            anchor_idx, parent_idx = linear_sum_assignment(sim, maximize=True)
            old = (plans[g].argmax(0).cpu().numpy())  # parent neuron currently on each anchor neuron
            if sim[anchor_idx, parent_idx].sum() > sim[np.arange(widths[g]), old].sum() + 1e-12:
                improved = True
                plan = torch.zeros_like(plans[g])
                plan[torch.as_tensor(parent_idx), torch.as_tensor(anchor_idx)] = 1.0
                plans[g] = plan
        if not improved:
            break
    return plans



def _finite(what: str, *tensors: torch.Tensor) -> None:
    """Refuses a non-finite intermediate with one line: features or weights too large for float64 algebra."""
    if not all(torch.isfinite(t).all() for t in tensors):
        raise MergeMethodError(f"CCA Merge: the {what} are not finite (a parent's weights or activations are too "
                               "large); check the parents' weights, or use OT alignment")


def _roots(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrix^{1/2}, matrix^{-1/2}) of a symmetric positive definite matrix, from one eigendecomposition."""
    try:
        values, vectors = torch.linalg.eigh(matrix)
    except torch.linalg.LinAlgError:
        raise MergeMethodError("CCA Merge: a covariance's eigendecomposition did not converge (a parent's "
                               "activations span too many orders of magnitude); use OT alignment") from None
    root = values.clamp_min(1e-12).sqrt()
    _finite("covariances' eigenvalues", root)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V^T) of the thin SVD; LAPACK's gesvd where torch's gesdd does not converge.

    gesdd fails on some matrices that are nearly permutations (condition number 1: a permuted copy's
    whitened cross-covariance in timm's convnext_atto), which gesvd handles."""
    try:
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u, vh
    except torch.linalg.LinAlgError:
        pass
    try:
        u, _, vh = scipy.linalg.svd(matrix.cpu().numpy(), full_matrices=False, lapack_driver="gesvd")
    except (np.linalg.LinAlgError, ValueError):
        raise MergeMethodError("CCA Merge: the canonical correlations could not be computed (the SVD did not "
                               "converge); use OT alignment") from None
    return torch.from_numpy(u).to(matrix.device), torch.from_numpy(vh).to(matrix.device)


def old_cca_map(anchor_feats: torch.Tensor, parent_feats: torch.Tensor, reg: float = DEFAULT_REG,
            cross_ridge: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M^{-1}): M (d_a, d_p) takes the parent's neurons into the anchor's basis.

    Features are (samples, neurons). With centred features and the regularised covariances
    C_aa, C_pp, C_ap: C_aa^{-1/2} C_ap C_pp^{-1/2} = U S V^T, and M = C_aa^{1/2} U V^T C_pp^{-1/2}
    (parent -> parent's canonical variates -> anchor's -> anchor's neurons), with
    M^{-1} = C_pp^{1/2} V U^T C_aa^{-1/2} exactly; the matching order is folded back in.
    cross_ridge=False drops the ridge on C_ap (the paper's estimator; not exact on permuted copies).
    """
    n, d_a = anchor_feats.shape
    d_p = parent_feats.shape[1]
    _finite("features", anchor_feats, parent_feats)
    if d_a != d_p:
        raise NotImplementedError("the reference covers square maps")
    corr = correlation(anchor_feats, parent_feats)
    _finite("correlations", corr)
    corr = corr.cpu().numpy()
    _, order = linear_sum_assignment(corr, maximize=True)  # parent neuron order[j] matched to anchor neuron j
    parent_feats = parent_feats[:, torch.as_tensor(order, device=parent_feats.device)]
    za, zp = anchor_feats - anchor_feats.mean(0), parent_feats - parent_feats.mean(0)
    c_aa, c_pp, c_ap = za.T @ za / n, zp.T @ zp / n, za.T @ zp / n
    # reg is relative to the mean neuron variance, so one value fits every layer and scale.
    ridge = reg * torch.cat([c_aa.diagonal(), c_pp.diagonal()]).mean().clamp_min(1e-30)
    eye = torch.eye(d_a, dtype=za.dtype, device=za.device)
    c_aa, c_pp, c_ap = c_aa + ridge * eye, c_pp + ridge * eye, c_ap + cross_ridge * ridge * eye
    _finite("covariances", c_aa, c_pp, c_ap)
    (aa_half, aa_neg), (pp_half, pp_neg) = _roots(c_aa), _roots(c_pp)
    whitened = aa_neg @ c_ap @ pp_neg
    _finite("whitened cross-covariances", whitened)
    u, vh = _svd(whitened)
    rotation = u @ vh
    select = torch.zeros(d_a, d_p, dtype=za.dtype, device=za.device)
    select[torch.arange(d_a), torch.as_tensor(order, device=za.device)] = 1.0  # (select @ z_p)_j = z_p[order[j]]
    forward, inverse = aa_half @ rotation @ pp_neg @ select, select.T @ pp_half @ rotation.T @ aa_neg
    _finite("merge maps", forward, inverse)
    return forward, inverse



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


def old_zipit_maps(feats: list[torch.Tensor], weights: list[float], width: int, alpha: float = ALPHA,
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


# ---------------------------------------------------------------- PLeaS's least squares before issue 24 (hooks on
# private copies of the parents, one partial forward pass per layer and network), verbatim.

class _OldStop(Exception):
    """Raised by a hook once it has what it came for: the rest of the forward pass is not needed."""


@torch.no_grad()
def old_layer_io(model: nn.Module, name: str, x: torch.Tensor, want: str) -> torch.Tensor:
    """The input ('in') or output ('out') of the module at `name` when `model` runs on x."""
    module = model.get_submodule(name)
    found: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple, output: torch.Tensor | None = None) -> None:
        found.append(inputs[0] if want == "in" else output)
        raise _OldStop

    handle = module.register_forward_pre_hook(hook) if want == "in" else module.register_forward_hook(hook)
    try:
        model(x)
    except _OldStop:
        pass
    finally:
        handle.remove()
    return found[0]


def _old_input_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A layer's inputs as regression rows (rows, fan-in [+1 for a bias]), float64; a conv's patches are rows."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise FusionError("PLeaS fits plain convolutions (one group, zero padding given as numbers)")
        patches = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    elif isinstance(module, nn.Linear):
        rows = inputs.reshape(-1, inputs.shape[-1])
    else:
        raise FusionError(f"PLeaS fits convolution and linear layers, not {type(module).__name__}")
    rows = rows.double()
    if module.bias is not None:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], 1)
    return rows


def _old_output_rows(module: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """A layer's outputs as (rows, out channels), in the rows' order of _input_rows."""
    if isinstance(module, nn.Conv2d):
        return outputs.flatten(2).transpose(1, 2).reshape(-1, outputs.shape[1])
    return outputs.reshape(-1, outputs.shape[-1])


def _old_flat_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as (out, fan-in [+1 bias column]), float64."""
    weight = module.weight.detach().reshape(module.weight.shape[0], -1).double()
    return weight if module.bias is None else torch.cat([weight, module.bias.detach().double()[:, None]], 1)


@torch.no_grad()
def old_refit_layer(fused: nn.Module, name: str, x: torch.Tensor, target: Callable[[torch.Tensor], torch.Tensor],
                ridge: float | None = None) -> None:
    """Refit the conv/linear layer `name` of `fused` in place: W = W_0 + (Y - X W_0^T)^T X (X^T X + lambda I)^-1.

    X: the layer's inputs in `fused` on x (batch by batch, through the layers before it as they are now);
    target(batch): what its outputs should be there, in the layer's output layout. lambda = ridge (default
    RIDGE) times the mean eigenvalue of X^T X (module docstring)."""
    ridge = RIDGE if ridge is None else ridge
    module = fused.get_submodule(name)
    device = module.weight.device
    w0 = _old_flat_weight(module)
    gram = torch.zeros(w0.shape[1], w0.shape[1], dtype=torch.float64, device=device)
    cross = torch.zeros(w0.shape[1], w0.shape[0], dtype=torch.float64, device=device)
    for start in range(0, len(x), BATCH):
        batch = x[start:start + BATCH].to(device)
        rows = _old_input_rows(module, old_layer_io(fused, name, batch, "in"))
        target_rows = _old_output_rows(module, target(batch).to(device).double())
        gram += rows.T @ rows
        cross += rows.T @ (target_rows - rows @ w0.T)
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    gram.diagonal().add_(lam)
    solved = w0 + torch.linalg.solve(gram, cross).T
    if not torch.isfinite(solved).all():
        raise FusionError(f"PLeaS: the least-squares weights of {name} are not finite; check the parents' weights")
    if module.bias is not None:
        module.bias.copy_(solved[:, -1].to(module.bias.dtype))
        solved = solved[:, :-1]
    module.weight.copy_(solved.reshape(module.weight.shape).to(module.weight.dtype))


@torch.no_grad()
def old_least_squares_layers(fused: FusableNet, parents: list[FusableNet], merges: list[dict[str, torch.Tensor]],
                         weights: list[float], x: torch.Tensor, ridge: float | None = None) -> FusableNet:
    """The fused network (changed in place and returned) with each layer refitted, in forward order, so its
    outputs on x reproduce the parents' merged outputs (module docstring: the ridge towards W_0)."""
    fused.eval()
    parents = [private_copy(p) for p in parents]  # hooks go on copies: the parents may be shared
    for layer in fused.alignment_layers():
        def target(batch: torch.Tensor, layer=layer) -> torch.Tensor:
            out = 0
            for parent, merge, weight in zip(parents, merges, weights):
                z = old_layer_io(parent, layer.name, batch, "out").double()
                t = merge.get(layer.out_group) if layer.out_group != OUTPUT else None
                # (n, c, ...) moved into the fused basis along the channel axis: sum_i T[i, k] z[:, i]
                out = out + (torch.einsum("nc...,ck->nk...", z, t.double()) if t is not None else weight * z)
            return out

        old_refit_layer(fused, layer.name, x, target, ridge)
    return fused


def old_cluster_maps(cluster: np.ndarray, sizes: list[int], weights: list[float], width: int,
                     like: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per parent, (merge T_p, unmerge U_p), both (d_p, width), of a clustering of the stacked features.

    cluster: (sum d_p,) the fused feature (0..width-1) each parent feature joins. U_p[:, k] is 1 on p's
    members of k; T_p[:, k] holds the members' parent weights normalised to sum 1 (the plain mean where
    they are all 0). Dtype and device are `like`'s."""
    total = len(cluster)
    unmerge_np = np.zeros((total, width))
    unmerge_np[np.arange(total), cluster] = 1.0  # (total, width)
    unmerge = torch.from_numpy(unmerge_np).to(device=like.device, dtype=like.dtype)
    share = torch.as_tensor(np.repeat(weights, sizes), dtype=like.dtype, device=like.device)[:, None] * unmerge
    total_share = share.sum(0, keepdim=True)
    # A cluster whose members all have weight 0 still needs a value: their plain mean.
    merge = torch.where(total_share > 0, share / total_share.clamp_min(1e-30), unmerge / unmerge.sum(0, keepdim=True))
    return list(merge.split(sizes)), list(unmerge.split(sizes))


@torch.no_grad()
def old_least_squares_groups(fused: nn.Module, parents: list[nn.Module], graphs: list[ModelGraph], merges: list[Plans],
                         weights: list[float], x: torch.Tensor, anchor: int) -> nn.Module:
    """A copy of the fused network with its conv and linear layers refitted in call order (module docstring)."""
    fused = private_copy(fused)
    parents = [private_copy(p) for p in parents]  # hooks go on copies
    device = next(fused.parameters()).device
    for name in _call_order(fused, x.to(device)):
        key = f"{name}.weight"
        maps = [_output_map(g, graphs[anchor], m, w, key, p.get_submodule(name).weight.shape[0]).to(device)
                for p, g, m, w in zip(parents, graphs, merges, weights)]
        channel = 1 if isinstance(fused.get_submodule(name), nn.Conv2d) else -1

        def target(batch: torch.Tensor, name: str = name, maps: list = maps, channel: int = channel) -> torch.Tensor:
            out = 0
            for parent, r in zip(parents, maps):
                z = old_layer_io(parent, name, batch, "out").double().movedim(channel, -1)
                out = out + (z @ r.T).movedim(-1, channel)
            return out

        old_refit_layer(fused, name, x, target)
    return fused
