"""Lanczos tridiagonalisation of a symmetric operator given by its products, for SLQ and eigenpairs.

The basis is kept semi-orthogonal by partial reorthogonalisation (Simon, 1984): a pass against
all earlier vectors only where the estimated loss of orthogonality passes √eps, instead of
PyHessian's pass at every step (each pass reads the whole basis: on small nets it costs more
than the Hessian-vector product itself). A pass cleans the new vector and q_j together, as
[2, P] matrix products, which spares the pass PRO makes at the next step.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class NotFinite(ArithmeticError):
    """A product of the operator was not finite."""


def project_out(vectors: Tensor, basis: Tensor) -> Tensor:
    """Remove from each row of [B, P] its components on the orthonormal rows of [B, j, P] (CGS, twice if needed)."""
    if basis.shape[1] == 0:
        return vectors
    for _ in range(2):
        before = vectors.norm(dim=1)
        coefficients = torch.bmm(basis, vectors.unsqueeze(2)).transpose(1, 2)  # [B, 1, j]
        # the update as [B, 1, j] @ [B, j, P] reads the basis row by row: with basis.mT it is 2x slower for B > 1
        vectors = torch.baddbmm(vectors.unsqueeze(1), coefficients, basis, alpha=-1).squeeze(1)
        if bool((vectors.norm(dim=1) > 0.7 * before).all()):  # Kahan-Parlett: no cancellation, one pass is enough
            break
    return vectors


def reorthogonalise(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Clean w [B, P] of its components on basis [B, j+1, P], and find those of q_j = basis[:, j] on the rows before.

    Returns (w cleaned, v [B, P]: q_j's part in the span of q_0..q_{j-1}). Both vectors go through the
    basis together, as [B, 2, P] matrix products, so the pair costs two reads of it (coefficients,
    update) where cleaning w now and the next vector at the next step (PRO's second pass, Simon 1984)
    costs four: the next step subtracts β_j (q_j - v) instead of β_j q_j, which leaves its vector
    nothing on q_0..q_{j-1} to clean that the second pass would have removed.
    """
    j = basis.shape[1] - 1
    pair = torch.stack((w, basis[:, j]), 1)  # [B, 2, P]
    coefficients = torch.bmm(pair, basis.mT)  # [B, 2, j+1]: one read of the basis for both vectors
    coefficients[:, 1, j] = 0  # q_j's own direction is no loss
    before = w.norm(dim=1)
    update = torch.bmm(coefficients, basis)  # [B, 2, P]: one more read
    w = w - update[:, 0]
    if bool((w.norm(dim=1) <= 0.7 * before).any()):  # Kahan-Parlett: w was mostly in the span, clean it again
        w = project_out(w, basis)
    return w, update[:, 1]


def _next_orthogonality(omega: Tensor, omega_prev: Tensor, alphas: Tensor, betas: Tensor, beta: Tensor, j: int,
                        eps: float) -> Tensor:
    """Simon's (1984) estimates ω_{j+1,k} ≈ q_{j+1}ᵀq_k, k ≤ j, from ω_j [B, m], ω_{j-1} and the coefficients.

    Dotting b_j q_{j+1} = H q_j - α_j q_j - b_{j-1} q_{j-1} with q_k, and the k-th relation with q_j:
    b_j ω_{j+1,k} = b_k ω_{j,k+1} + (α_k - α_j) ω_{j,k} + b_{k-1} ω_{j,k-1} - b_{j-1} ω_{j-1,k} + rounding.
    """
    a, b = alphas.double(), betas.double()
    new = torch.zeros_like(omega)
    if j > 0:
        t = b[:, :j] * omega[:, 1:j + 1] + (a[:, :j] - a[:, j:j + 1]) * omega[:, :j] - b[:, j - 1:j] * omega_prev[:, :j]
        t[:, 1:] += b[:, :j - 1] * omega[:, :j - 1]
        # what one step's rounding can add, with t's sign; PROPACK's 50·eps keeps the estimate above the true loss
        rounding = 50 * eps * (b[:, :j] + beta[:, None].double())
        new[:, :j] = (t + torch.where(t < 0, -rounding, rounding)) / beta[:, None].double().clamp_min(1e-300)
    new[:, j] = eps  # q_{j+1} is explicitly orthogonalised against q_j and q_{j-1}
    return new


def tridiagonal(alphas: Tensor, betas: Tensor) -> Tensor:
    """[..., m, m] symmetric tridiagonal from diagonals [..., m] and off-diagonals [..., m-1]."""
    return torch.diag_embed(alphas) + torch.diag_embed(betas, 1) + torch.diag_embed(betas, -1)


def _row_dots(a: Tensor, b: Tensor) -> Tensor:
    """[B] of row-wise dot products of [B, P] tensors, without a [B, P] temporary.

    A GEMM of all B² pairs reads each row once; bmm of [1, P] @ [P, 1] blocks is 5x slower for B > 1."""
    if len(a) > 16:  # B² products would outweigh the reads
        return (a * b).sum(1)
    return torch.mm(a, b.T).diagonal()


def _three_term(w: Tensor, alpha: Tensor, beta_prev: Tensor | None, basis: Tensor, j: int) -> None:
    """w -= α_j q_j + β_{j-1} q_{j-1} in place, rows of basis [B, m, P]: one pass over w and the two rows, no temporaries."""
    if j == 0:
        w.unsqueeze(1).baddbmm_(alpha[:, None, None], basis[:, :1], alpha=-1)
    else:
        coefficients = torch.stack((beta_prev, alpha), 1).unsqueeze(1)  # [B, 1, 2] against rows j-1, j
        w.unsqueeze(1).baddbmm_(coefficients, basis[:, j - 1:j + 1], alpha=-1)


def lanczos(matmat: Callable[[Tensor], Tensor], start: Tensor, steps: int, generator: torch.Generator,
            progress: Callable[[float], None] | None = None,
            stop: Callable[[Tensor, Tensor], bool] | None = None) -> tuple[Tensor, Tensor]:
    """Lanczos of the symmetric `matmat` ([B, P] -> [B, P]) from each row of start [B, P]: QᵀHQ = T.

    Returns T [B, m, m] and Q [B, m, P]; raises NotFinite when a product is not finite. A full
    reorthogonalisation of q_{j+1} and q_j (`reorthogonalise`) runs at the step where the estimated loss
    of orthogonality passes √eps; semi-orthogonality makes T as accurate as reorthogonalising every step would.
    `stop(alphas [j], betas [j])` (first probe; betas[-1] couples to the next vector) may end it early.
    Outside the products a step reads P-vectors about five times (α, the three-term update, β, the
    normalisation into the basis) and allocates none: on the bench MLP the copies and temporaries of a
    plain `w - α q - β q'` cost a tenth of a product per step. The passes are the estimate's: on the
    bench MLP (float32) it crosses √eps 3 steps after each reset (it grows by up to ‖T‖/β_j ≈ 50 a step),
    30 paired passes in 100 steps (44 single ones before), where the loss measured without any would
    reach √eps 5 steps after a reset; bench/hessian.py shows their cost.
    """
    count, size = start.shape
    basis = start.new_empty(count, steps, size)  # only rows < j are ever read: zeroing would cost a pass over it
    alphas, betas = start.new_zeros(count, steps), start.new_zeros(count, steps - 1)
    eps = torch.finfo(start.dtype).eps
    breakdown, threshold = 1e3 * eps, math.sqrt(eps)
    omega = start.new_zeros(count, steps, dtype=torch.float64)  # ω_{j,k} ≈ q_jᵀq_k for the current j
    omega[:, 0] = 1.0
    omega_prev = torch.zeros_like(omega)
    cleaned = torch.zeros(count, dtype=torch.bool, device=start.device)  # q_j's part v on earlier rows is known
    v = None
    torch.div(start, start.norm(dim=1, keepdim=True), out=basis[:, 0])
    for j in range(steps):
        q = basis[:, j]
        w = matmat(q)
        if w.untyped_storage().data_ptr() == basis.untyped_storage().data_ptr():
            w = w.clone()  # an operator that hands back (a view of) its input: the updates below are in place
        alpha = _row_dots(w, q)
        alphas[:, j] = alpha
        if not bool(torch.isfinite(alpha).all()):
            raise NotFinite(f"the operator's product is not finite at step {j}")
        if j == steps - 1:
            break
        _three_term(w, alpha, betas[:, j - 1] if j else None, basis, j)
        if bool(cleaned.any()):  # -β_{j-1} (q_{j-1} - v): the three-term update with q_{j-1} cleaned
            w.addcmul_(v, torch.where(cleaned, betas[:, j - 1], 0)[:, None])  # one pass, stale rows of v times 0
        beta = w.norm(dim=1)
        estimate = _next_orthogonality(omega, omega_prev, alphas, betas, beta, j, eps)
        # per probe: a probe run beside others reorthogonalises exactly when it would alone (a pass reads its basis)
        need = (estimate[:, :j].abs() > threshold).any(1)
        cleaned = need
        if bool(need.any()):
            rows = need.nonzero().squeeze(1).tolist()
            v = torch.zeros_like(w) if v is None else v
            if len(rows) == count:
                w, v = reorthogonalise(w, basis[:, :j + 1])
            else:  # row by row on views: basis[rows] would copy the rows' whole bases
                for r in rows:
                    w[r:r + 1], v[r:r + 1] = reorthogonalise(w[r:r + 1], basis[r:r + 1, :j + 1])
            beta = w.norm(dim=1)
            estimate[need, :j + 1] = eps
            omega[need, :j] = eps  # q_j as the next step uses it: q_j - v
        scale = torch.maximum(alphas[:, :j + 1].abs().amax(1), beta)
        exhausted = beta <= breakdown * scale
        norm = beta
        if bool(exhausted.any()):  # invariant subspace found: go on from a fresh direction, T splits into blocks
            fresh = torch.randn(int(exhausted.sum()), size, generator=generator, device=start.device, dtype=start.dtype)
            w[exhausted] = project_out(project_out(fresh, basis[exhausted, :j + 1]), basis[exhausted, :j + 1])
            norm = torch.where(exhausted, w.norm(dim=1), beta)
            beta = torch.where(exhausted, torch.zeros_like(beta), beta)
            estimate[exhausted, :j + 1] = eps
        betas[:, j] = beta
        torch.div(w, norm[:, None], out=basis[:, j + 1])  # q_{j+1} straight into its row: no copy of it later
        omega_prev, omega = omega, estimate
        omega[:, j + 1] = 1.0
        if progress:
            progress((j + 1) / steps)
        if stop and stop(alphas[0, :j + 1], betas[0, :j + 1]):
            steps = j + 1
            break
    return tridiagonal(alphas[:, :steps], betas[:, :steps - 1]), basis[:, :steps]
