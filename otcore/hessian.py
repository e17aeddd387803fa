"""Curvature of a model's loss on a fixed list of batches: top eigenpairs, trace, spectral density.

The loss is the mean cross-entropy over all examples of `batches` (each batch weighted by its
size), a function of one flat vector θ of the model's trainable parameters (P entries, in
`named_parameters()` order). Hessian-vector products use `torch.func`; the estimators are
PyHessian's (Yao et al., 2020): power iteration with deflation, Hutchinson's trace estimator,
stochastic Lanczos quadrature (Ghorbani et al., 2019), on otcore.lanczos; the exact trace of
piecewise-linear nets comes from otcore.hessian_diagonal. PyHessian itself, as a reference, runs
in otcore.pyhessian_reference (the project's one seam to that package).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from otcore.config import HessianSpec
from otcore.device import private_copy
from otcore.errors import UserError
from otcore.hessian_diagonal import NotPiecewiseLinear, loss_hessian_diagonal
from otcore.lanczos import NotFinite, lanczos, project_out, tridiagonal

Batches = list[tuple[Tensor, Tensor]]
Progress = Callable[[float], None]

# Probe vectors per vmap call. Without a retained graph vmap shares the forward/backward between
# probes (2x per probe on the bench MLP); with one, HVPs are flop-bound and batching gains little on a CPU.
PROBE_CHUNK = 8
# Keep the double-backward graph (one forward/backward for all HVPs, 2.4x faster per HVP than
# recomputing) up to this many examples; beyond it every batch's activations would stay in memory.
RETAIN_MAX_EXAMPLES = 4096
# Largest Lanczos run that starts the power iteration (it stops once the top Ritz pairs converge).
WARM_START = 32
# Memory for the Lanczos bases of the probes run side by side (probes x steps x P entries).
LANCZOS_BASIS_BYTES = 2**29


class HessianError(UserError):
    """The Hessian cannot be computed (no data, non-finite loss or curvature); the message is for the user."""


@dataclass(frozen=True)
class FlatLayout:
    """Named tensors laid end to end in one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @staticmethod
    def of(named: Iterable[tuple[str, Tensor]]) -> FlatLayout:
        """The layout of (name, tensor) pairs, in order."""
        pairs = list(named)
        return FlatLayout(tuple(n for n, _ in pairs), tuple(t.shape for _, t in pairs))

    @property
    def numels(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """[size] vector of the named tensors, detached."""
        return torch.cat([tensors[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of a [size] vector, shaped as the named tensors."""
        return {n: c.view(s) for n, c, s in zip(self.names, flat.split(self.numels), self.shapes)}


def trainable_layout(model: nn.Module) -> FlatLayout:
    """Layout of θ: the parameters that require grad, in `named_parameters()` order."""
    return FlatLayout.of((n, p) for n, p in model.named_parameters() if p.requires_grad)


def flat_parameters(model: nn.Module) -> Tensor:
    """θ: the trainable parameters as one detached [P] vector."""
    return trainable_layout(model).flatten(dict(model.named_parameters()))


def eval_model(model: nn.Module) -> nn.Module:
    """A private eval-mode copy: `functional_call` swaps the module's parameters while it runs, which
    every other thread using a shared model would see (and eval mode keeps dropout/batch-norm fixed)."""
    return private_copy(model)


def fixed_batches(x: Tensor, y: Tensor, batch_size: int, n_batches: int | str, seed: int | None = None) -> Batches:
    """Up to `n_batches` batches of `batch_size` ('all': the whole split): its first examples in order (seed None)
    or a seeded draw."""
    count = len(x) if n_batches == "all" else min(len(x), batch_size * n_batches)
    if count == 0:
        raise HessianError("no examples to compute the Hessian on")
    if seed is None:  # plain slices: the same examples any other tool takes, no copy
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, count, batch_size)]
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:count].to(x.device)
    return [(x[index[i:i + batch_size]], y[index[i:i + batch_size]]) for i in range(0, count, batch_size)]


class _HessianOperator:
    """v ↦ Hv for the size-weighted mean cross-entropy of a model on batches, θ flat."""

    def __init__(self, model: nn.Module, batches: Batches, retain_graph: bool | None = None) -> None:
        if not batches:
            raise HessianError("no batches to compute the Hessian on")
        self.model = eval_model(model)
        self.layout = trainable_layout(self.model)
        if not self.layout.names:
            raise HessianError("the model has no trainable parameters")
        self.theta = self.layout.flatten(dict(self.model.named_parameters()))
        self.size, self.device, self.dtype = self.theta.numel(), self.theta.device, self.theta.dtype
        total = sum(len(y) for _, y in batches)
        self.batch_weights = [len(y) / total for _, y in batches]
        self.loss, self.accuracy = self._loss_and_accuracy(batches)
        self._grads = [grad(self._batch_loss_fn(x, y)) for x, y in batches]
        retain = total <= RETAIN_MAX_EXAMPLES if retain_graph is None else retain_graph
        # vjp of the gradient is Hv (H symmetric); its closure keeps the graph for every later call
        self._vjps = [vjp(g, self.theta)[1] for g in self._grads] if retain else None

    def _batch_loss_fn(self, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda theta: F.cross_entropy(functional_call(self.model, self.layout.unflatten(theta), (x,)), y)

    def _loss_and_accuracy(self, batches: Batches) -> tuple[float, float]:
        loss, correct = 0.0, 0.0
        with torch.no_grad():
            for index, ((x, y), weight) in enumerate(zip(batches, self.batch_weights)):
                logits = self.model(x)
                batch_loss = F.cross_entropy(logits, y).item()
                if not math.isfinite(batch_loss):
                    raise HessianError(f"the loss is {batch_loss} on batch {index}; "
                                       "the Hessian of a diverged model is undefined")
                loss += weight * batch_loss
                correct += weight * (logits.argmax(-1) == y).double().mean().item()
        return loss, correct

    def matmat(self, vectors: Tensor) -> Tensor:
        """H V for a stack of vectors: [B, P] -> [B, P], vmapped over B."""
        out = None
        for i, weight in enumerate(self.batch_weights):
            if self._vjps:
                hvp = lambda u, f=self._vjps[i]: f(u)[0]  # noqa: E731
            else:  # forward-over-reverse; under vmap the forward/backward is shared by the probes
                hvp = lambda u, g=self._grads[i]: jvp(g, (self.theta,), (u,))[1]  # noqa: E731
            product = hvp(vectors[0])[None] if len(vectors) == 1 else vmap(hvp)(vectors)
            if out is None:  # the first product starts the sum: no zeroed [B, P] and no pass adding to it
                out = product * weight if weight != 1.0 else product
            else:
                out.add_(product, alpha=weight)
        return out

    def matvec(self, vector: Tensor) -> Tensor:
        """H v: [P] -> [P]."""
        return self.matmat(vector[None])[0]

    def rademacher(self, count: int, generator: torch.Generator) -> Tensor:
        """[count, P] of independent ±1 entries."""
        bits = torch.randint(0, 2, (count, self.size), generator=generator, device=self.device)
        return bits.to(self.dtype).mul_(2).sub_(1)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


def product_seconds(model: nn.Module, batch: tuple[Tensor, Tensor], repeats: int = 2) -> float:
    """Seconds of one Hessian-vector product on one batch, without the graph retained (as a streamed split runs)."""
    op = _HessianOperator(model, [batch], retain_graph=False)
    probe = op.rademacher(1, op.generator(0))
    op.matmat(probe)  # warm-up: first-call set-up is not the product's cost
    best = math.inf
    for _ in range(repeats):
        clock = time.perf_counter()
        op.matmat(probe)
        best = min(best, time.perf_counter() - clock)
    return best


def products_per_analysis(spec: HessianSpec) -> float:
    """Hessian-vector products analyse() and the two perturbation curves cost, about (a forward is ~1/4 of one)."""
    trace = spec.trace_probes if spec.trace_method == "hutchinson" else 3
    return WARM_START + 3.0 * spec.top_k + trace + spec.lanczos_iters * spec.density_probes + spec.lambda_points / 2


def _lanczos(op: _HessianOperator, start: Tensor, steps: int, generator: torch.Generator,
             progress: Progress | None = None,
             stop: Callable[[Tensor, Tensor], bool] | None = None) -> tuple[Tensor, Tensor]:
    """otcore.lanczos.lanczos of H from the rows of start [B, P]: T [B, m, m], Q [B, m, P]."""
    try:
        return lanczos(op.matmat, start, steps, generator, progress, stop)
    except NotFinite as e:
        raise HessianError("the Hessian-vector product is not finite; the curvature is undefined here") from e


def _top_eigenpairs(op: _HessianOperator, k: int, max_iters: int, tol: float, seed: int,
                    warm_start: int, progress: Progress | None = None) -> tuple[Tensor, Tensor]:
    generator = op.generator(seed)
    k = min(k, op.size)
    if warm_start:
        def ritz_converged(alphas: Tensor, betas: Tensor) -> bool:
            # ||H y - θ y|| = |β_j s_j| for a Ritz pair (θ, y = Q s); below 0.1·√tol·|θ| one power step
            # changes θ by much less than tol, so the power iteration below stops at its second step
            if len(alphas) < k:
                return False
            values, vectors = torch.linalg.eigh(tridiagonal(alphas, betas[:-1]).double())
            top = values.abs().argsort(descending=True)[:k]
            residuals = betas[-1].abs().double() * vectors[-1, top].abs()
            return bool((residuals <= 0.1 * math.sqrt(tol) * values[top].abs()).all())

        steps = min(op.size, max(warm_start, 2 * k + 10))
        start = torch.randn(1, op.size, generator=generator, device=op.device, dtype=op.dtype)
        matrix, basis = _lanczos(op, start, steps, generator, stop=ritz_converged)
        ritz_values, ritz_vectors = torch.linalg.eigh(matrix[0].double())
        order = ritz_values.abs().argsort(descending=True)[:k]  # power iteration finds the largest |λ| first
        starts = ritz_vectors[:, order].T.to(op.dtype) @ basis[0]
    else:
        starts = torch.randn(k, op.size, generator=generator, device=op.device, dtype=op.dtype)
    values: list[float] = []
    found = starts.new_zeros(1, 0, op.size)
    for i in range(k):
        v, value = starts[i], None
        for _ in range(max_iters):
            v = project_out(v[None], found)[0]
            v = v / v.norm()
            hv = op.matvec(v)
            new_value = float(torch.dot(hv, v))
            if not math.isfinite(new_value):
                raise HessianError("the Hessian-vector product is not finite; the curvature is undefined here")
            norm = hv.norm()
            v = hv / norm if norm > 0 else v
            converged = value is not None and abs(value - new_value) / (abs(value) + 1e-6) < tol  # PyHessian's rule
            value = new_value
            if converged:
                break
        v = project_out(v[None], found)[0]
        found = torch.cat([found, (v / v.norm())[None, None]], dim=1)
        values.append(value)
        if progress:
            progress((i + 1) / k)
    eigenvalues = torch.tensor(values, dtype=op.dtype, device=op.device)
    order = eigenvalues.argsort(descending=True)
    return eigenvalues[order], found[0, order]


def top_eigenpairs(model: nn.Module, batches: Batches, k: int = 3, max_iters: int = 100, tol: float = 1e-4,
                   seed: int = 0, *, warm_start: int = WARM_START,
                   progress: Progress | None = None) -> tuple[Tensor, Tensor]:
    """The k largest-|λ| eigenpairs of H: eigenvalues [k] descending, unit eigenvectors [k, P].

    Power iteration with deflation (Gram-Schmidt against the vectors found) and PyHessian's stopping
    rule |λ_t - λ_{t-1}| / (|λ_{t-1}| + 1e-6) < tol. Each vector starts from a Ritz vector of a
    `warm_start`-step Lanczos run (0: from a random vector, as PyHessian), which cuts the
    iterations several-fold; the power iteration then confirms convergence.
    """
    return _top_eigenpairs(_HessianOperator(model, batches), k, max_iters, tol, seed, warm_start, progress)


@dataclass(frozen=True)
class TraceEstimate:
    """tr(H): Hutchinson's mean of vᵀHv over Rademacher probes v with its standard error, or exact (0, no probes)."""

    mean: float
    std_error: float
    probes: int
    method: str = "hutchinson"  # or 'exact'


def _hutchinson_trace(op: _HessianOperator, max_probes: int, tol: float, seed: int,
                      progress: Progress | None = None) -> TraceEstimate:
    if max_probes < 1:
        raise HessianError(f"the trace needs at least one probe, got {max_probes}")
    generator, samples = op.generator(seed), []
    while len(samples) < max_probes:
        probes = op.rademacher(min(PROBE_CHUNK, max_probes - len(samples)), generator)
        samples += (op.matmat(probes) * probes).sum(1).tolist()
        if not all(math.isfinite(s) for s in samples):
            raise HessianError("the Hessian-vector product is not finite; the curvature is undefined here")
        if progress:
            progress(len(samples) / max_probes)
        values = torch.tensor(samples, dtype=torch.float64)
        std_error = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.inf
        if std_error <= tol * abs(float(values.mean())):
            break
    return TraceEstimate(float(values.mean()), std_error, len(samples))


def hutchinson_trace(model: nn.Module, batches: Batches, max_probes: int = 100, tol: float = 1e-3,
                     seed: int = 0, *, progress: Progress | None = None) -> TraceEstimate:
    """tr(H) ≈ mean of vᵀHv, v Rademacher, in vmapped chunks; stops early once std_error <= tol·|mean|."""
    return _hutchinson_trace(_HessianOperator(model, batches), max_probes, tol, seed, progress)


def exact_trace(model: nn.Module, batches: Batches) -> TraceEstimate:
    """tr(H) exactly, as the sum of the Hessian diagonal of a network piecewise linear in each weight.

    Raises NotPiecewiseLinear for other networks (see otcore.hessian_diagonal).
    """
    diagonal = loss_hessian_diagonal(model, batches)  # on its own private copy
    value = float(sum(d.sum(dtype=torch.float64) for d in diagonal.values()))
    if not math.isfinite(value):
        raise HessianError(f"the Hessian trace is {value}; the curvature is undefined here")
    return TraceEstimate(value, 0.0, 0, "exact")


def _trace(op: _HessianOperator, batches: Batches, method: str, max_probes: int, tol: float, seed: int,
           progress: Progress | None = None) -> TraceEstimate:
    """The trace by `method`: 'exact', 'hutchinson', or 'auto' (exact where the network allows it)."""
    if method != "hutchinson":
        try:
            return exact_trace(op.model, batches)
        except NotPiecewiseLinear as e:
            if method == "exact":
                raise HessianError(f"no exact trace for this network: {e}") from e
    return _hutchinson_trace(op, max_probes, tol, seed, progress)


@dataclass(frozen=True)
class Density:
    """Stochastic Lanczos quadrature: Ritz values (nodes) and their weights per probe, [probes, m] each."""

    nodes: Tensor
    weights: Tensor


def _spectral_density(op: _HessianOperator, lanczos_iters: int, probes: int, seed: int,
                      progress: Progress | None = None, batch: int | None = None) -> Density:
    """SLQ with the probes run `batch` at a time as one vmapped product (None: as many as memory allows).

    The probes are drawn PROBE_CHUNK at a time whatever `batch` is, so every batching runs the same probes.
    """
    generator, steps = op.generator(seed), min(lanczos_iters, op.size)
    fits = max(1, LANCZOS_BASIS_BYTES // (steps * op.size * op.theta.element_size()))
    batch = max(1, min(batch or fits, fits))
    nodes, weights, done = [], [], 0
    for first in range(0, probes, PROBE_CHUNK):
        drawn = op.rademacher(min(PROBE_CHUNK, probes - first), generator)
        for start in drawn.split(batch):
            report = (lambda f, a=done, c=len(start): progress((a + f * c) / probes)) if progress else None  # noqa: B008
            matrix, _ = _lanczos(op, start, steps, generator, report)
            ritz_values, ritz_vectors = torch.linalg.eigh(matrix.double())
            nodes.append(ritz_values.to(op.dtype))
            weights.append((ritz_vectors[:, 0, :] ** 2).to(op.dtype))  # (e_1ᵀ y_j)²: node j's mass for the probe
            done += len(start)
    return Density(torch.cat(nodes), torch.cat(weights))


def spectral_density(model: nn.Module, batches: Batches, lanczos_iters: int = 100, probes: int = 1, seed: int = 0,
                     *, progress: Progress | None = None, batch: int | None = None) -> Density:
    """SLQ: per Rademacher probe, m = min(lanczos_iters, P) Lanczos steps; nodes = eig(T), weights = (y_j[0])².

    Probes run `batch` at a time (default: all that fit LANCZOS_BASIS_BYTES) as one vmapped product.
    """
    return _spectral_density(_HessianOperator(model, batches), lanczos_iters, probes, seed, progress, batch)


def density_on_grid(nodes: Tensor, weights: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """ρ(t) = mean over probes of Σ_j w_j N(t; λ_j, σ²) on grid [G]; nodes, weights [probes, m] or [m]."""
    nodes, weights = nodes.reshape(-1, nodes.shape[-1]), weights.reshape(-1, weights.shape[-1])
    scaled = (grid.to(nodes) - nodes.unsqueeze(-1)) / sigma  # [probes, m, G]: every node against every point
    gaussians = torch.exp(-0.5 * scaled**2) / (sigma * math.sqrt(2 * math.pi))
    return torch.einsum("pm,pmg->g", weights.to(nodes), gaussians) / nodes.shape[0]


def default_grid(densities: Sequence[Density], num: int = 1000, margin: float = 0.1) -> Tensor:
    """[num] points covering every density's nodes, widened by margin x their span, so models overlay on one grid."""
    low = min(float(d.nodes.min()) for d in densities)
    high = max(float(d.nodes.max()) for d in densities)
    pad = margin * (high - low) if high > low else margin * max(abs(high), 1.0)
    return torch.linspace(low - pad, high + pad, num, dtype=torch.float64)


@dataclass
class HessianResult:
    """Curvature of one model on one list of batches (eigenvectors [k, P], density [probes, m])."""

    top_eigenvalues: list[float]
    top_eigenvectors: Tensor
    trace: float
    trace_std_error: float
    trace_probes: int
    trace_method: str  # 'exact' or 'hutchinson'
    density: Density
    loss: float
    accuracy: float
    num_parameters: int
    timings: dict[str, float]  # seconds per part: setup, top_eigenvalues, trace, density, total


def analyse(model: nn.Module, batches: Batches, spec: HessianSpec,
            progress: Callable[[str, float], None] | None = None) -> HessianResult:
    """Top eigenpairs, trace and spectral density of H as set by `spec`; progress(stage, overall fraction)."""
    seed = 0 if spec.seed is None else spec.seed
    # in Hessian-vector products; the exact trace costs about as much as a few
    costs = {"top_eigenvalues": WARM_START + 3.0 * spec.top_k,
             "trace": float(spec.trace_probes if spec.trace_method == "hutchinson" else 3),
             "density": float(spec.lanczos_iters * spec.density_probes)}
    done, total_cost = 0.0, sum(costs.values())

    def stage(name: str) -> Progress | None:
        return (lambda f: progress(name, (done + f * costs[name]) / total_cost)) if progress else None

    timings: dict[str, float] = {}

    def timed(name: str, compute: Callable[[], object]) -> object:
        nonlocal done
        clock = time.perf_counter()
        out = compute()
        timings[name] = time.perf_counter() - clock
        done += costs.get(name, 0.0)
        return out

    op = timed("setup", lambda: _HessianOperator(model, batches))
    values, vectors = timed("top_eigenvalues", lambda: _top_eigenpairs(
        op, spec.top_k, spec.power_iters, spec.tol, seed, WARM_START, stage("top_eigenvalues")))
    # spec.tol also bounds Hutchinson's relative standard error: at its default 1e-4 all trace_probes run
    trace = timed("trace", lambda: _trace(op, batches, spec.trace_method, spec.trace_probes, spec.tol, seed,
                                          stage("trace")))
    density = timed("density", lambda: _spectral_density(op, spec.lanczos_iters, spec.density_probes, seed,
                                                         stage("density")))
    timings["total"] = sum(timings.values())
    if progress:
        progress("done", 1.0)
    return HessianResult(values.tolist(), vectors, trace.mean, trace.std_error, trace.probes, trace.method, density,
                         op.loss, op.accuracy, op.size, timings)
