"""CCA Merge (Horoi et al., ICML 2024): align each parent's neurons to the anchor's by a linear map.

Per hidden group, canonical correlation analysis of the two networks' features on a sample gives
directions of maximal correlation; mapping a parent's features onto the anchor's canonical
variates and back into the anchor's neuron space gives M (d_a, d_p). The parent's neurons are
moved by M (W' = M W) and the next layer reads them through M^{-1} (W_next' = W_next M^{-1});
then the parents are averaged in the anchor's basis. Like the paper, the map is applied to
neurons feeding a ReLU although a general linear map does not commute with it.

Regularisation (ours, stated): with r = reg times the mean neuron variance of the two layers,
the joint covariance of (anchor, parent) features is shrunk as if r-weighted pseudo-samples fired
each anchor neuron together with the parent neuron that an activation-correlation assignment
matched it to: C_aa + r I, C_pp + r I, C_ap + r I (C_ap in the matched order). The first two are
the paper's ridge (a scaled identity); the third fixes the directions the sample cannot see
(dead neurons, fewer samples than neurons) to the matching instead of an arbitrary rotation, so a
permuted copy gets exactly its permutation back. As reg grows, M tends to that matching (a
permutation); reg -> 0 is plain CCA. Measured on digits (bench/fusion.py): reg 1 (the default).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from scipy.optimize import linear_sum_assignment

from otcore.fusion.merge_maps import MergeMethodError, correlation

DEFAULT_REG = 1.0  # ridge of the covariances, in units of the layer's mean neuron variance


def _finite(what: str, *tensors: torch.Tensor) -> None:
    """Refuses a non-finite intermediate with one line: features or weights too large for float64 algebra."""
    # A sum is finite exactly when every entry is (short of overflowing near 1e308, too large anyway): one pass
    # per tensor and one read for all, where isfinite().all() made two and a read each.
    if not bool(torch.stack([t.sum() for t in tensors]).isfinite().all()):
        raise MergeMethodError(f"CCA Merge: the {what} are not finite (a parent's weights or activations are too "
                               "large); check the parents' weights, or use OT alignment")


def _eigh(*matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (k, d) and eigenvectors (k, d, d) of k symmetric matrices of one size, in one batched call."""
    try:
        return torch.linalg.eigh(torch.stack(matrices))
    except torch.linalg.LinAlgError:
        raise MergeMethodError("CCA Merge: a covariance's eigendecomposition did not converge (a parent's "
                               "activations span too many orders of magnitude); use OT alignment") from None


def _roots(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrix^{1/2}, matrix^{-1/2}) of a symmetric positive definite matrix, from one eigendecomposition."""
    values, vectors = (t[0] for t in _eigh(matrix))
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


def _polar(matrix: torch.Tensor) -> torch.Tensor:
    """U V^T of matrix's SVD (its polar factor), as M (M^T M)^{-1/2} from one eigendecomposition where M is well
    conditioned (error ~ eps cond(M)^2 <= 1e-8), by the SVD otherwise.

    torch's symmetric eigensolver took a quarter of its SVD's time at width 400 (10 against 42 ms, one thread)."""
    try:
        values, vectors = torch.linalg.eigh(matrix.T @ matrix)
    except torch.linalg.LinAlgError:
        values = None
    if values is not None and bool(values[0] > 1e-8 * values[-1]):
        return (matrix @ (vectors / values.sqrt())) @ vectors.T
    u, vh = _svd(matrix)
    return u @ vh


def cca_map(anchor_feats: torch.Tensor, parent_feats: torch.Tensor, reg: float = DEFAULT_REG,
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
        return _rectangular_map(anchor_feats, parent_feats, reg, cross_ridge)
    corr = correlation(anchor_feats, parent_feats)
    _finite("correlations", corr)
    _, order = linear_sum_assignment(corr.cpu().numpy(), maximize=True)  # parent neuron order[j] matched to anchor's j
    order = torch.as_tensor(order, device=parent_feats.device)
    za, zp = anchor_feats - anchor_feats.mean(0), parent_feats - parent_feats.mean(0)
    if cross_ridge and 2 * n <= d_a // 2:
        # Fewer samples than neurons (a wide linear layer): every covariance is r I outside the span U of the
        # two layers' centred features (at most 2n directions), so is K, its polar factor is I there, and so
        # are M and M^{-1}: M = I + U (M_U - I) U^T with M_U the same maps of the features' coordinates in U,
        # exact, for O(d n^2) instead of O(d^3) (vgg11's 4096-wide classifier on 300 samples). The parent's
        # features in the matched order, so that the cross ridge is the identity in U's coordinates.
        zp = zp[:, order]
        ridge = _ridge(za, zp, reg)
        span, _ = torch.linalg.qr(torch.cat([za.T, zp.T], 1))
        forward, inverse = _maps(za @ span, zp @ span, ridge, cross_ridge)
        eye = torch.eye(span.shape[1], dtype=za.dtype, device=za.device)
        forward = torch.addmm(torch.eye(d_a, dtype=za.dtype, device=za.device), span @ (forward - eye), span.T)
        inverse = torch.addmm(torch.eye(d_a, dtype=za.dtype, device=za.device), span @ (inverse - eye), span.T)
        # Back into the parent's own order: (M S)[:, order[j]] = M[:, j] and (S^T M^{-1})[order[j]] = M^{-1}[j]
        # for the selection S (S z_p)_j = z_p[order[j]], by index rather than by product.
        back = torch.empty_like(order).scatter_(0, order, torch.arange(d_a, device=order.device))
        forward, inverse = forward.index_select(1, back), inverse.index_select(0, back)
    else:
        # In the parent's own order, the cross ridge on the matched pairs (j, order[j]): the same maps as in the
        # matched order with the columns moved back (the polar factor and the roots follow a permutation), without
        # moving the features or the maps.
        forward, inverse = _maps(za, zp, _ridge(za, zp, reg), cross_ridge, order)
    _finite("merge maps", forward, inverse)
    return forward, inverse


def _ridge(za: torch.Tensor, zp: torch.Tensor, reg: float) -> torch.Tensor:
    """reg times the two layers' mean neuron variance: relative, so that one value fits every layer and scale."""
    return reg * torch.cat([(za * za).sum(0), (zp * zp).sum(0)]).mean().div(len(za)).clamp_min(1e-30)


def _maps(za: torch.Tensor, zp: torch.Tensor, ridge: torch.Tensor, cross_ridge: bool,
          matched: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M^{-1}) of centred features za, zp (samples, d) and the ridge r; the cross ridge sits on the pairs
    (j, matched[j]), on the diagonal when `matched` is None (features already in the matched order)."""
    n, d = za.shape
    # The two covariances straight into one stack (Cholesky factors both at once), the ridge added to their
    # diagonals in place: the values of C + r I without three (d, d) temporaries.
    covariances = za.new_empty(2, d, d)
    torch.mm(za.T, za, out=covariances[0])
    torch.mm(zp.T, zp, out=covariances[1])
    covariances.div_(n).diagonal(dim1=1, dim2=2).add_(ridge)
    c_ap = za.T @ zp / n
    if cross_ridge and matched is None:
        c_ap.diagonal().add_(ridge)
    elif cross_ridge:
        c_ap[torch.arange(d, device=c_ap.device), matched] += ridge
    c_aa, c_pp = covariances
    _finite("covariances", c_aa, c_pp, c_ap)
    # CCA does not depend on how each side is whitened: with Cholesky factors C = L L^T instead of symmetric
    # roots, K' = L_a^{-1} C_ap L_p^{-T} = Q_a K Q_p^T for orthogonal Q = L^{-1} C^{1/2}, its polar factor is
    # Q_a R Q_p^T, and M = L_a R' L_p^{-1} = C_aa^{1/2} R C_pp^{-1/2} is the same map. Two Cholesky
    # factorisations and four triangular solves cost a sixth of the two eigendecompositions (17 against 3 ms
    # at width 400, one thread); the eigenbases remain for covariances Cholesky finds not positive definite.
    factors, info = torch.linalg.cholesky_ex(covariances)
    if not bool(info.any()):
        l_a, l_p = factors
        whitened_rows = torch.linalg.solve_triangular(l_a, c_ap, upper=False)  # L_a^{-1} C_ap
        k = torch.linalg.solve_triangular(l_p.mT, whitened_rows, upper=True, left=False)  # ... L_p^{-T}
        return _whitened_maps(k, l_a, l_p)
    return _eigen_maps(c_aa, c_pp, c_ap)


def _whitened_maps(k: torch.Tensor, l_a: torch.Tensor, l_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M^{-1}) = (L_a R L_p^{-1}, L_p R^T L_a^{-1}) for R the polar factor of the whitened cross-covariance k."""
    _finite("whitened cross-covariances", k)
    rotation = _polar(k)
    forward = torch.linalg.solve_triangular(l_p, l_a @ rotation, upper=False, left=False)
    inverse = torch.linalg.solve_triangular(l_a, l_p @ rotation.T, upper=False, left=False)
    return forward, inverse


def _eigen_maps(c_aa: torch.Tensor, c_pp: torch.Tensor, c_ap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """_maps by the covariances' eigendecompositions (symmetric roots), for covariances Cholesky refuses."""
    # In the covariances' eigenbases (C = V diag(r^2) V^T): C_aa^{-1/2} C_ap C_pp^{-1/2} = V_a K V_p^T with
    # K = diag(1/r_a) V_a^T C_ap V_p diag(1/r_p), and U V^T = V_a (U_K V_K^T) V_p^T (the polar factor moves
    # with the orthogonal bases), so M = V_a diag(r_a) R diag(1/r_p) V_p^T and M^{-1} = V_p diag(r_p) R^T
    # diag(1/r_a) V_a^T with R = U_K V_K^T: eight matrix products where the roots took thirteen.
    values, vectors = _eigh(c_aa, c_pp)
    roots = values.clamp_min(1e-12).sqrt()
    _finite("covariances' eigenvalues", roots)
    (v_a, v_p), (r_a, r_p) = vectors, roots
    k = (v_a.T @ c_ap @ v_p) / r_a[:, None] / r_p[None, :]
    _finite("whitened cross-covariances", k)
    rotation = _polar(k)
    forward = v_a @ (r_a[:, None] * rotation / r_p[None, :]) @ v_p.T
    inverse = v_p @ (r_p[:, None] * rotation.T / r_a[None, :]) @ v_a.T
    return forward, inverse


def _rectangular_map(anchor_feats: torch.Tensor, parent_feats: torch.Tensor, reg: float,
                     cross_ridge: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """cca_map for d_a != d_p: the min(d_a, d_p) canonical pairs; M (d_a, d_p) and its pseudo-inverse (d_p, d_a).

    The same estimator in the parent's own neuron order: the cross ridge sits on the matched pairs
    (a partial permutation S), and U V^T of the thin SVD is a partial isometry, so M^+ below is
    M's pseudo-inverse in the whitened bases (M M^+ = I on the anchor's side when the parent is wider)."""
    n, d_a = anchor_feats.shape
    d_p = parent_feats.shape[1]
    corr = correlation(anchor_feats, parent_feats)
    _finite("correlations", corr)
    rows, cols = linear_sum_assignment(corr.cpu().numpy(), maximize=True)
    za, zp = anchor_feats - anchor_feats.mean(0), parent_feats - parent_feats.mean(0)
    c_aa, c_pp, c_ap = za.T @ za / n, zp.T @ zp / n, za.T @ zp / n
    ridge = reg * torch.cat([c_aa.diagonal(), c_pp.diagonal()]).mean().clamp_min(1e-30)
    matched = torch.zeros(d_a, d_p, dtype=za.dtype, device=za.device)
    matched[torch.as_tensor(rows, device=za.device), torch.as_tensor(cols, device=za.device)] = 1.0
    c_aa = c_aa + ridge * torch.eye(d_a, dtype=za.dtype, device=za.device)
    c_pp = c_pp + ridge * torch.eye(d_p, dtype=za.dtype, device=za.device)
    c_ap = c_ap + cross_ridge * ridge * matched
    _finite("covariances", c_aa, c_pp, c_ap)
    (aa_half, aa_neg), (pp_half, pp_neg) = _roots(c_aa), _roots(c_pp)
    u, vh = _svd(aa_neg @ c_ap @ pp_neg)
    rotation = u @ vh
    forward, inverse = aa_half @ rotation @ pp_neg, pp_half @ rotation.T @ aa_neg
    _finite("merge maps", forward, inverse)
    return forward, inverse
