"""otcore.lanczos against a Lanczos that reorthogonalises every step, probes run together against probes run alone."""
from __future__ import annotations

import pytest
import torch

from otcore.lanczos import lanczos


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (the shared fixture in tests/conftest.py)."""


def hessian_like(size: int, dtype: torch.dtype) -> torch.Tensor:
    """[size, size] symmetric with a trained net's spectrum: a bulk in [-0.05, 0.1] and five outliers up to 10.

    The outliers converge first and make plain Lanczos lose orthogonality, so partial reorthogonalisation acts.
    """
    generator = torch.Generator().manual_seed(0)
    eigenvalues = torch.cat([torch.rand(size - 5, generator=generator, dtype=torch.float64) * 0.15 - 0.05,
                             torch.tensor([0.5, 0.7, 1.0, 3.0, 10.0], dtype=torch.float64)])
    rotation, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return ((rotation * eigenvalues) @ rotation.T).to(dtype)


def full_reorthogonalisation(matrix: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    """T [m, m] of Lanczos with two Gram-Schmidt passes against the whole basis at every step (PyHessian's way)."""
    basis = [start / start.norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = matrix @ basis[-1]
        alphas.append(torch.dot(w, basis[-1]))
        if j == steps - 1:
            break
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        betas.append(w.norm())
        basis.append(w / betas[-1])
    alphas, betas = torch.stack(alphas), torch.stack(betas)
    return torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)


def quadrature(tridiagonal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SLQ's nodes (Ritz values) and weights (squared first components of the Ritz vectors) of one T."""
    nodes, vectors = torch.linalg.eigh(tridiagonal.double())
    return nodes, vectors[0] ** 2


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_partial_reorthogonalisation_gives_the_nodes_and_weights_of_full(dtype, tolerance):
    size, steps = 400, 60
    matrix = hessian_like(size, dtype)
    start = torch.randn(1, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    tridiagonal, basis = lanczos(lambda v: v @ matrix, start, steps, torch.Generator().manual_seed(2))
    gram = basis[0].double() @ basis[0].double().T
    orthogonality = float((gram - torch.eye(steps, dtype=torch.float64)).abs().max())
    assert orthogonality <= torch.finfo(dtype).eps ** 0.5  # semi-orthogonal (float64: 27 of 59 steps pass)
    nodes, weights = quadrature(tridiagonal[0])
    reference_nodes, reference_weights = quadrature(full_reorthogonalisation(matrix, start[0], steps))
    # relative to the spectral norm 10: what the cached density (nodes, weights) may differ by
    torch.testing.assert_close(nodes / 10, reference_nodes / 10, atol=tolerance, rtol=0)
    torch.testing.assert_close(weights, reference_weights, atol=tolerance, rtol=0)
    assert float(nodes.max()) == pytest.approx(10.0, rel=tolerance)  # the top outlier has converged


def test_probes_run_together_equal_probes_run_alone():
    size, steps = 300, 40
    matrix = hessian_like(size, torch.float64)
    starts = torch.randn(3, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    together, _ = lanczos(lambda v: v @ matrix, starts, steps, torch.Generator().manual_seed(0))
    for row, start in enumerate(starts):
        alone, _ = lanczos(lambda v: v @ matrix, start[None], steps, torch.Generator().manual_seed(0))
        torch.testing.assert_close(together[row], alone[0], atol=1e-12, rtol=0)


def test_an_operator_returning_its_input_leaves_the_basis_intact():
    # the identity hands back the very row of the basis it was given; the in-place three-term update must not
    # zero that row: T is the identity's, one eigenvalue 1 repeated, the Krylov space restarted at every step
    size, steps = 50, 6
    start = torch.randn(1, size, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tridiagonal, basis = lanczos(lambda v: v, start, steps, torch.Generator().manual_seed(5))
    torch.testing.assert_close(tridiagonal[0], torch.eye(steps, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(basis[0] @ basis[0].T, torch.eye(steps, dtype=torch.float64), atol=1e-12, rtol=0)
