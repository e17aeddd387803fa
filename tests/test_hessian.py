"""otcore.hessian against the exact Hessian of a small net (torch.func.hessian) and against PyHessian."""
from __future__ import annotations

import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otcore import hessian, lanczos
from otcore.config import HessianSpec
from otcore.pyhessian_reference import pyhessian_reference
from otcore.hessian import (Density, HessianError, analyse, default_grid, density_on_grid, fixed_batches,
                            flat_parameters, hutchinson_trace, spectral_density,
                            top_eigenpairs, trainable_layout)

# torch loads its forward-AD decompositions with torch.jit.script on first use of jvp
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    """Every test here runs with one torch thread (the shared fixture in tests/conftest.py)."""


def small_problem(dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 16-12-4 ReLU net (240 weights) trained briefly on 256 random points with random labels."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 4, bias=False))
    model = model.to(dtype)
    x, y = torch.randn(256, 16, dtype=dtype), torch.randint(0, 4, (256,))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):  # a trained net: a few positive outliers dominate the spectrum, as PyHessian assumes
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def problem64():
    """Float64 net, three batches of unequal size (100, 100, 56), and its exact Hessian [P, P]."""
    model, x, y = small_problem(torch.float64)
    layout = trainable_layout(model)

    def full_loss(theta: torch.Tensor) -> torch.Tensor:  # the mean over all 256 = size-weighted mean of batches
        return F.cross_entropy(torch.func.functional_call(model, layout.unflatten(theta), (x,)), y)

    exact = torch.func.hessian(full_loss)(flat_parameters(model))
    return model, fixed_batches(x, y, 100, 3), exact, torch.linalg.eigvalsh(exact)


def test_top_eigenpairs_match_exact_spectrum(problem64):
    model, batches, exact, eigenvalues = problem64
    by_magnitude = eigenvalues[eigenvalues.abs().argsort(descending=True)][:3]
    for warm_start in (32, 0):  # Lanczos-started and PyHessian's random start
        values, vectors = top_eigenpairs(model, batches, k=3, max_iters=500, tol=1e-7, seed=0, warm_start=warm_start)
        assert values.shape == (3,) and vectors.shape == (3, exact.shape[0])
        assert torch.all(values[:-1] >= values[1:])
        torch.testing.assert_close(values, by_magnitude.sort(descending=True).values, rtol=1e-2, atol=0)
        torch.testing.assert_close(vectors @ vectors.T, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)
        residual = (vectors @ exact - values[:, None] * vectors).norm(dim=1)
        assert bool((residual < 0.05 * values.abs()).all())


def test_trace_within_four_standard_errors(problem64):
    model, batches, exact, _ = problem64
    estimate = hutchinson_trace(model, batches, max_probes=1000, tol=0.0, seed=1)
    assert estimate.probes == 1000
    # Rademacher samples vᵀHv are iid with variance 2(||H||_F² - Σ H_ii²); with 1000 of them the mean is
    # close to normal, so |mean - tr H| <= 4 SE fails with probability ~6e-5 (and the seed is fixed)
    assert abs(estimate.mean - float(exact.trace())) <= 4 * estimate.std_error
    variance = 2 * (float((exact ** 2).sum()) - float((exact.diagonal() ** 2).sum()))
    assert estimate.std_error == pytest.approx(math.sqrt(variance / 1000), rel=0.2)
    assert estimate.std_error < 0.02 * abs(float(exact.trace()))  # enough probes that a 2% bias would show


def test_recomputed_and_retained_graphs_give_the_same_products(problem64, monkeypatch):
    model, batches, exact, _ = problem64
    retained = hutchinson_trace(model, batches, max_probes=20, tol=0.0, seed=4)
    retained_top, _ = top_eigenpairs(model, batches, k=2, tol=1e-7, max_iters=500)
    monkeypatch.setattr(hessian, "RETAIN_MAX_EXAMPLES", 0)  # jvp of grad on every call, vmapped over probes
    recomputed = hutchinson_trace(model, batches, max_probes=20, tol=0.0, seed=4)
    recomputed_top, _ = top_eigenpairs(model, batches, k=2, tol=1e-7, max_iters=500)
    assert recomputed.mean == pytest.approx(retained.mean, rel=1e-10)
    torch.testing.assert_close(recomputed_top, retained_top, rtol=1e-8, atol=0)


def test_trace_stops_once_tolerance_is_met(problem64):
    model, batches, _, _ = problem64
    estimate = hutchinson_trace(model, batches, max_probes=1000, tol=0.05, seed=1)
    assert estimate.probes < 1000
    assert estimate.std_error <= 0.05 * abs(estimate.mean)


def test_density_moments_match_exact_spectrum(problem64):
    model, batches, exact, eigenvalues = problem64
    size, probes = exact.shape[0], 200
    density = spectral_density(model, batches, lanczos_iters=8, probes=probes, seed=2)
    assert density.nodes.shape == density.weights.shape == (probes, 8)
    torch.testing.assert_close(density.weights.sum(1), torch.ones(probes, dtype=torch.float64))
    # Per probe v (|v|² = P), Σ w·node = vᵀHv/P and Σ w·node² = vᵀH²v/P exactly (m >= 2), so over probes they
    # are Hutchinson estimates of tr(H)/P and tr(H²)/P with SE sqrt(2(||A||_F² - Σ A_ii²)/n)/P, A = H, H²;
    # 4 SE is the tolerance (a miss has probability ~6e-5)
    for power, moment in ((1, eigenvalues.mean()), (2, (eigenvalues ** 2).mean())):
        matrix = torch.linalg.matrix_power(exact, power)
        se = math.sqrt(2 * (float((matrix ** 2).sum()) - float((matrix.diagonal() ** 2).sum())) / probes) / size
        estimate = (density.weights * density.nodes ** power).sum(1).mean()
        assert abs(float(estimate - moment)) <= 4 * se
        assert se < 0.1 * float(moment)  # meaningful: the tolerance is well below the moment itself


def test_full_lanczos_recovers_the_whole_spectrum(problem64):
    model, batches, exact, eigenvalues = problem64
    size = exact.shape[0]
    density = spectral_density(model, batches, lanczos_iters=size, probes=2, seed=3)
    scale = float(eigenvalues.abs().max())
    # m = P steps, reorthogonalised where orthogonality fades (and restarted where the Krylov space closes,
    # as on the dead ReLU units' zero eigenvalues), give a basis of R^P orthonormal to working precision,
    # so T is similar to H
    for nodes in density.nodes:
        torch.testing.assert_close(nodes.sort().values, eigenvalues, atol=1e-8 * scale, rtol=0)
    assert float(density.nodes.max(1).values.mean()) == pytest.approx(float(eigenvalues.max()), rel=1e-8)
    assert float(density.nodes.min(1).values.mean()) == pytest.approx(float(eigenvalues.min()), abs=1e-8 * scale)


def test_partial_reorthogonalisation_keeps_float32_lanczos_semi_orthogonal():
    """Far past convergence of the top Ritz values (where plain Lanczos loses orthogonality and repeats them),
    the basis stays orthogonal to √eps, the top Ritz values are the exact eigenvalues, and far fewer than
    all steps pay for a full reorthogonalisation."""
    model, x, y = small_problem(torch.float32, seed=1)
    model64, layout = copy.deepcopy(model).double(), trainable_layout(model)
    exact = torch.linalg.eigvalsh(torch.func.hessian(lambda t: F.cross_entropy(torch.func.functional_call(
        model64, layout.unflatten(t), (x.double(),)), y))(flat_parameters(model64)))
    op = hessian._HessianOperator(model, [(x, y)])
    projections = []
    original = lanczos.reorthogonalise
    try:
        lanczos.reorthogonalise = lambda w, b: projections.append(1) or original(w, b)
        tridiagonal, basis = lanczos.lanczos(op.matmat, op.rademacher(1, op.generator(0)), 120, op.generator(0))
    finally:
        lanczos.reorthogonalise = original
    gram = basis[0].double() @ basis[0].double().T
    assert float((gram - torch.eye(120, dtype=torch.float64)).abs().max()) <= math.sqrt(torch.finfo(torch.float32).eps)
    ritz = torch.linalg.eigvalsh(tridiagonal[0].double())
    torch.testing.assert_close(ritz[-3:], exact[-3:], rtol=1e-4, atol=0)
    assert 0 < len(projections) < 0.8 * 119


def test_density_on_grid_integrates_to_one_and_equals_a_loop():
    generator = torch.Generator().manual_seed(0)
    nodes = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    weights = torch.rand(3, 7, generator=generator, dtype=torch.float64)
    weights /= weights.sum(1, keepdim=True)
    other = Density(nodes + 2.0, weights)
    grid = default_grid([Density(nodes, weights), other], num=2001)
    assert float(grid[0]) < float(nodes.min()) and float(grid[-1]) > float(nodes.max() + 2.0)
    sigma = 0.1
    density = density_on_grid(nodes, weights, grid, sigma)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-3)
    small = torch.linspace(-1, 1, 9, dtype=torch.float64)
    loop = [sum(float(weights[p, j]) * math.exp(-0.5 * ((float(t) - float(nodes[p, j])) / sigma) ** 2)
                / (sigma * math.sqrt(2 * math.pi)) for p in range(3) for j in range(7)) / 3 for t in small]
    torch.testing.assert_close(density_on_grid(nodes, weights, small, sigma), torch.tensor(loop, dtype=torch.float64))


def test_pyhessian_reference_agrees_and_its_eig_shim_is_scoped():
    model, x, y = small_problem(torch.float32)
    eig_before = torch.eig  # torch keeps a stub that raises "removed"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = fixed_batches(x, y, 256, 1)
    ours, _ = top_eigenpairs(model, batches, k=1, max_iters=300, tol=1e-6)
    for batch_list in (batches, fixed_batches(x, y, 100, 3)):  # PyHessian's data= and dataloader= paths
        reference = pyhessian_reference(model, batch_list, top_k=1, trace_iters=20, lanczos_iters=20, probes=2,
                                        power_iters=300, tol=1e-6)
        assert reference.top_eigenvalues[0] == pytest.approx(float(ours[0]), rel=1e-2)
        assert reference.density.nodes.shape == reference.density.weights.shape == (2, 20)
        assert float(reference.density.nodes.max()) == pytest.approx(float(ours[0]), rel=1e-2)
        torch.testing.assert_close(reference.density.weights.sum(1), torch.ones(2, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        assert len(reference.trace_samples) == 20 and math.isfinite(reference.trace)
    assert torch.eig is eig_before and sys.modules["pyhessian.hessian"].torch is torch
    with pytest.raises(RuntimeError):
        torch.eig(torch.eye(2), eigenvectors=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_nan_loss_raises_hessian_error(problem64):
    model, batches, _, _ = problem64
    broken = nn.Sequential(nn.Flatten(), nn.Linear(16, 4, bias=False)).double().eval()
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    with pytest.raises(HessianError, match="nan"):
        top_eigenpairs(broken, batches, k=1)
    with pytest.raises(ValueError):  # HessianError is a ValueError: the CLI and UI show its message
        hutchinson_trace(broken, batches)
    with pytest.raises(HessianError):
        analyse(broken, batches, HessianSpec())
    with pytest.raises(HessianError):
        spectral_density(model, [], lanczos_iters=4)


def test_analyse_reports_every_part_without_touching_the_model(problem64):
    model, batches, exact, eigenvalues = problem64
    model.train()  # analysed in eval mode on a copy; the caller's flag and weights stay as they are
    before = flat_parameters(model).clone()
    calls = []
    spec = HessianSpec(top_k=2, power_iters=200, tol=1e-8, trace_probes=40, lanczos_iters=10, density_probes=2)
    try:
        result = analyse(model, batches, spec, progress=lambda stage, fraction: calls.append((stage, fraction)))
        assert model.training
    finally:
        model.eval()
    assert torch.equal(flat_parameters(model), before) and all(p.grad is None for p in model.parameters())
    assert result.num_parameters == exact.shape[0] and result.top_eigenvectors.shape == (2, exact.shape[0])
    assert result.top_eigenvalues == pytest.approx(eigenvalues.flip(0)[:2].tolist(), rel=1e-2)
    assert result.trace_probes == 40 and abs(result.trace - float(exact.trace())) <= 5 * result.trace_std_error
    assert result.density.nodes.shape == (2, 10)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        logits = model(x)
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-9)
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()), rel=1e-9)
    assert set(result.timings) == {"setup", "top_eigenvalues", "trace", "density", "total"}
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {s for s, _ in calls} >= {"top_eigenvalues", "trace", "density"}


def test_fixed_batches_in_order_or_seeded():
    x, y = torch.arange(50.0)[:, None], torch.arange(50)
    in_order = fixed_batches(x, y, 8, 3)
    assert [b[1].tolist() for b in in_order] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    seeded = fixed_batches(x, y, 8, 3, seed=5)
    again = fixed_batches(x, y, 8, 3, seed=5)
    drawn = torch.cat([b[1] for b in seeded])
    assert torch.equal(drawn, torch.cat([b[1] for b in again])) and len(set(drawn.tolist())) == 24
    assert not torch.equal(drawn, torch.arange(24))
    assert [len(b[1]) for b in fixed_batches(x, y, 20, 5)] == [20, 20, 10]  # as many as the split holds
    with pytest.raises(HessianError):
        fixed_batches(x[:0], y[:0], 8, 3)


def test_all_batches_of_the_split_equal_the_explicit_batch_list(tmp_path) -> None:
    """batches='all' on the digits train split (1,347 examples, 5 batches of 300) reports every number the
    explicit 5-batch list does; only its key differs."""
    from otcore.analysis import curvature
    from otcore.cache import DiskCache
    from otcore.config import DataSpec
    from otcore.models import build_model
    from otcore.train import init_model

    model = init_model(build_model("mlpnet_half", (1, 8, 8), 10), 0).eval()
    common = dict(split="train", batch_size=300, top_k=2, lanczos_iters=12, trace_method="hutchinson",
                  trace_probes=8, lambda_points=5)
    stages: list[str] = []
    results = [curvature(DataSpec(), "net", "k", model, HessianSpec(batches=b, **common), "cpu",
                         lambda what, f: stages.append(what), DiskCache(tmp_path)) for b in ("all", 5)]
    assert not results[0].cached and not results[1].cached  # two keys: both were computed
    assert any("5 batches, about" in s for s in stages)  # the estimate is reported before the work
    skip = {"timings", "cached", "eigenvectors"}
    for field_name in results[0].__dataclass_fields__:
        if field_name not in skip:
            assert getattr(results[0], field_name) == getattr(results[1], field_name), field_name
    assert torch.equal(results[0].eigenvectors, results[1].eigenvectors)
    assert len(results[0].perturbation.loss_std) == 5 and max(results[0].perturbation.loss_std) > 0


@pytest.mark.parametrize("value", [0, 1001, "some", True, 2.0])
def test_batches_is_a_count_or_all(value) -> None:
    with pytest.raises(ValueError, match="batches must be 'all' or in"):
        HessianSpec(batches=value)


def test_batched_probe_density_equals_the_sequential_one() -> None:
    """Four probes as one vmapped Lanczos run give each probe's nodes and weights of four runs one at a time."""
    model, x, y = small_problem(torch.float64)
    batched = spectral_density(model, [(x, y)], 30, probes=4, seed=3)
    sequential = spectral_density(model, [(x, y)], 30, probes=4, seed=3, batch=1)
    assert batched.nodes.shape == (4, 30)
    assert not torch.allclose(batched.nodes[0], batched.nodes[1])  # four different probes, not one repeated
    torch.testing.assert_close(batched.nodes, sequential.nodes, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(batched.weights, sequential.weights, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("dtype", "seed", "tolerance"), [(torch.float64, 0, 1e-9), (torch.float64, 1, 1e-9),
                                                          (torch.float32, 0, 1e-5), (torch.float32, 1, 1e-5)])
def test_density_equals_full_reorthogonalisation_on_the_exact_hessian(dtype, seed, tolerance):
    """Three probes run together (each reorthogonalised on its own) against Lanczos with two Gram-Schmidt
    passes at every step on the exact Hessian of a small net: the same nodes and weights."""
    from tests.test_lanczos import full_reorthogonalisation, quadrature

    model, x, y = small_problem(dtype, seed)
    layout, steps = trainable_layout(model), 60  # a quarter of P = 240: far past the outliers' convergence
    exact = torch.func.hessian(lambda t: F.cross_entropy(torch.func.functional_call(
        model, layout.unflatten(t), (x,)), y))(flat_parameters(model)).detach()
    op = hessian._HessianOperator(model, [(x, y)])
    starts = op.rademacher(3, op.generator(5))  # the probes spectral_density draws for seed 5
    density = spectral_density(model, [(x, y)], steps, probes=3, seed=5)
    scale = float(torch.linalg.eigvalsh(exact.double()).abs().max())
    for probe in range(3):
        reference_nodes, reference_weights = quadrature(full_reorthogonalisation(exact, starts[probe], steps))
        torch.testing.assert_close(density.nodes[probe].double() / scale, reference_nodes / scale, atol=tolerance, rtol=0)
        torch.testing.assert_close(density.weights[probe].double(), reference_weights, atol=tolerance, rtol=0)
