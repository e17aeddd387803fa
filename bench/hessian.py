"""Benchmark otcore.hessian / otcore.landscape against PyHessian on an mlpnet (784-400-200-100-10, no biases).

Data: 1,000 MNIST-sized inputs drawn from N(0, 1) with uniformly random labels; the net is briefly
trained on them (5 epochs of SGD, batch 100) so its Hessian has a few outlier eigenvalues, as a
trained net's has. Every timing is the best of --repeats runs because the machine may be shared;
there, --threads 1 --cpu-time measures work rather than scheduling.
Run: python -m bench.hessian [--repeats 3] [--threads N] [--cpu-time] [--batches N]
     [--density-only]: only the density-vs-products and probes tables (issue 16, item 5)

The density tables compare like with like: the bare products and the density use one operator (the same
batch, the same retained double-backward graph, the same `matmat`), the same Rademacher probes (seed 0),
the same thread count and clock, and a warm-up outside every clock; the bare loop normalises its vector
each step as Lanczos does. The split row times the density's products and reorthogonalisation passes
inside the run; GFLOP are counted by torch.utils.flop_counter, GEMM peak is one GEMM of the product's
largest layer shape (1,000 x 784 x 400) on the same threads.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from torch.utils.flop_counter import FlopCounterMode

from otcore import lanczos as lanczos_module
from bench.common import table
from otcore.hessian import (_HessianOperator, _spectral_density, exact_trace, fixed_batches, flat_parameters, hutchinson_trace,
                            spectral_density, top_eigenpairs)
from otcore.landscape import perturbation_curve
from otcore.pyhessian_reference import pyhessian_reference
from otcore.models import build_model


def trained_mlp(examples: int = 1000, epochs: int = 5, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The mlpnet, trained briefly on random normal inputs with random labels, and those inputs and labels."""
    torch.manual_seed(seed)
    x, y = torch.randn(examples, 1, 28, 28), torch.randint(0, 10, (examples,))
    model = build_model("mlpnet", (1, 28, 28), 10)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for i in range(0, examples, 100):
            optimiser.zero_grad()
            F.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
            optimiser.step()
    return model.eval(), x, y


def load_average() -> str:
    """The 1/5/15-minute load averages: the machine may be shared, and its load slows every clock."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def best_of(repeats: int, fn, clock=time.perf_counter):
    """(minimum time by `clock`, last result) over repeats."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = clock()
        result = fn()
        best = min(best, clock() - start)
    return best, result


def loop_curve(model: nn.Module, batches: list, direction: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """The reference: one deep copy per λ, weights set with vector_to_parameters; size-weighted mean loss."""
    theta, losses, total = flat_parameters(model), [], sum(len(y) for _, y in batches)
    for lam in lambdas:
        copy_ = copy.deepcopy(model)
        nn.utils.vector_to_parameters(theta + lam * direction, copy_.parameters())
        with torch.no_grad():
            losses.append(sum(len(y) * F.cross_entropy(copy_(x), y).item() for x, y in batches) / total)
    return torch.tensor(losses, dtype=torch.float64)


def density_split(op: _HessianOperator, steps: int, clock) -> tuple[float, float, float, int, float]:
    """One 1-probe Lanczos run: (total s, products s, reorthogonalisation s, passes, GB of basis read by them)."""
    spent, rows = {"products": 0.0, "reorth": 0.0}, []
    reorthogonalise = lanczos_module.reorthogonalise

    def timed_matmat(vectors: torch.Tensor) -> torch.Tensor:
        start = clock()
        out = op.matmat(vectors)
        spent["products"] += clock() - start
        return out

    def timed_reorthogonalise(vectors: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = clock()
        out = reorthogonalise(vectors, basis)
        spent["reorth"] += clock() - start
        rows.append(basis.shape[0] * basis.shape[1])
        return out

    lanczos_module.reorthogonalise = timed_reorthogonalise  # the bench's own process: nothing else runs Lanczos here
    try:
        start = clock()
        lanczos_module.lanczos(timed_matmat, op.rademacher(1, op.generator(0)), steps, op.generator(0))
        total = clock() - start
    finally:
        lanczos_module.reorthogonalise = reorthogonalise
    # each pass (w and q_j together) reads its rows twice: coefficients, then the update
    gigabytes = 2 * sum(rows) * op.size * op.theta.element_size() / 1e9
    return total, spent["products"], spent["reorth"], len(rows), gigabytes


def gemm_gflops(clock, repeats: int = 20) -> float:
    """GFLOP/s of one GEMM of the product's largest layer shape (1,000 x 784 x 400): the core's reachable peak."""
    a, b = torch.randn(1000, 784), torch.randn(784, 400)
    a @ b
    start = clock()
    for _ in range(repeats):
        a @ b
    return 2 * 1000 * 784 * 400 * repeats / (clock() - start) / 1e9


def density_tables(model: nn.Module, batches: list, steps: int, timed, clock, counts: tuple[int, ...] = (1, 2, 4, 8)) -> None:
    """Density of `steps` Lanczos steps against `steps` bare products (same operator, same run), and per-probe cost."""
    op = _HessianOperator(model, batches)
    probe = op.rademacher(1, op.generator(0))
    op.matmat(probe)  # warm-up outside every clock

    def bare(count: int) -> None:
        vectors = op.rademacher(count, op.generator(0))
        for _ in range(steps):
            vectors = op.matmat(vectors / vectors.norm(dim=1, keepdim=True))

    bare_t, _ = timed(lambda: bare(1))
    density_t, _ = timed(lambda: _spectral_density(op, steps, 1, 0))
    print(f"density, {steps} Lanczos steps vs {steps} bare Hessian-vector products (1 probe)")
    print(f"{'products s':>10} {'density s':>10} {'ratio':>6}   load average {load_average()}")
    print(f"{bare_t:10.3f} {density_t:10.3f} {density_t / bare_t:6.2f}")
    total, products, reorth, passes, gigabytes = min((density_split(op, steps, clock) for _ in range(2)),
                                                     key=lambda split: split[0])
    print(f"inside one Lanczos run: products {products:.3f} s, reorthogonalisation {reorth:.3f} s ({passes} passes, "
          f"{gigabytes:.1f} GB of basis read, {gigabytes / max(reorth, 1e-9):.1f} GB/s), other {total - products - reorth:.3f} s")
    print(f"probes as one vmapped product: {steps} Lanczos steps each")
    print(f"{'probes':>6} {'density s':>10} {'s/probe':>8} {'bare s':>8} {'bare s/probe':>12} {'GFLOP/product':>13} "
          f"{'bare GFLOP/s':>12}")
    if not counts:
        return
    for count in counts:
        with FlopCounterMode(display=False) as counter:
            op.matmat(op.rademacher(count, op.generator(0)))
        gflop = counter.get_total_flops() / 1e9
        density_t, _ = timed(lambda: _spectral_density(op, steps, count, 0))
        bare_t, _ = timed(lambda: bare(count))
        print(f"{count:6d} {density_t:10.3f} {density_t / count:8.3f} {bare_t:8.3f} {bare_t / count:12.3f} "
              f"{gflop:13.2f} {gflop * steps / bare_t:12.1f}")
    print(f"GEMM peak at the product's shapes: {gemm_gflops(clock):.1f} GFLOP/s; the FLOP of a product grow "
          f"linearly with the probes (nothing is shared once the graph is retained), so s/probe can fall only "
          f"by the gap to that peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time (robust on a shared "
                        "machine with --threads 1) instead of wall time")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--lanczos", type=int, default=100)
    parser.add_argument("--batches", type=int, default=1, help="split the 1,000 examples into this many batches "
                        "(more than one: PyHessian's dataloader= path)")
    parser.add_argument("--density-only", action="store_true", help="only the density-vs-products and probes tables")
    parser.add_argument("--probe-counts", default="1,2,4,8", help="probes per vmapped run in the probes table "
                        "(comma-separated; empty: no probes table)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y = trained_mlp()
    batches = fixed_batches(x, y, len(x) // args.batches, args.batches)
    P = flat_parameters(model).numel()
    rows = []

    clock = time.process_time if args.cpu_time else time.perf_counter

    def timed(fn):
        return best_of(args.repeats, fn, clock)

    if args.density_only:
        print(f"mlpnet (P = {P:,}), {len(batches)} batch(es) of 1,000; {torch.get_num_threads()} threads, "
              f"best {'CPU' if args.cpu_time else 'wall'} time of {args.repeats}")
        counts = tuple(int(c) for c in args.probe_counts.split(",") if c.strip())
        density_tables(model, batches, args.lanczos, timed, clock, counts)
        return

    def ref(**kw):
        """PyHessian on one part only, its setup (one create_graph backward) included as ours is."""
        kw = {"top_k": 0, "trace_iters": 0, "lanczos_iters": 0, "probes": 1, **kw}
        return timed(lambda: pyhessian_reference(model, batches, **kw))

    for k in (1, 3):
        ours_t, (ours_vals, vectors) = timed(lambda: top_eigenpairs(model, batches, k, 100, 1e-4))
        cold_t, (cold_vals, _) = timed(lambda: top_eigenpairs(model, batches, k, 100, 1e-4, warm_start=0))
        ref_t, ref_r = ref(top_k=k, power_iters=100, tol=1e-4)
        for name, t, vals in (("Lanczos start", ours_t, ours_vals), ("random start", cold_t, cold_vals)):
            diff = max(abs(a - b) / abs(b) for a, b in zip(vals.tolist(), ref_r.top_eigenvalues))
            rows.append((f"top-{k} eigenvalues, ours ({name})", t, ref_t,
                         f"λ1 {vals[0]:.5f} vs {ref_r.top_eigenvalues[0]:.5f}; max rel diff {diff:.1e}"))
        top_vector = vectors[0]

    ours_t, trace = timed(lambda: hutchinson_trace(model, batches, args.probes, tol=0.0))
    ref_t, ref_r = ref(trace_iters=args.probes)
    rows.append((f"trace, {args.probes} Rademacher probes", ours_t, ref_t,
                 f"{trace.mean:.3f} ± {trace.std_error:.3f} vs {ref_r.trace:.3f}"))
    exact_t, exact = timed(lambda: exact_trace(model, batches))
    reference_error = statistics.stdev(ref_r.trace_samples) / len(ref_r.trace_samples) ** 0.5
    rows.append((f"trace, exact (vs {args.probes}-probe Hutchinson)", exact_t, ref_t,
                 f"{exact.mean:.3f} exact vs {ref_r.trace:.3f} ± {reference_error:.3f}"))

    ours_t, density = timed(lambda: spectral_density(model, batches, args.lanczos, 1))
    ref_t, ref_r = ref(lanczos_iters=args.lanczos)
    rows.append((f"density, {args.lanczos} Lanczos steps, 1 probe", ours_t, ref_t,
                 f"max node {float(density.nodes.max()):.4f} vs {float(ref_r.density.nodes.max()):.4f}"))

    lambdas = torch.linspace(-0.5, 0.5, 21)
    vec_t, curve = timed(lambda: perturbation_curve(model, batches, top_vector, lambdas))
    loop_t, reference = timed(lambda: loop_curve(model, batches, top_vector, lambdas))
    diff = float((curve.loss_mean - reference).abs().max())
    rows.append(("perturbation curve, 21 points (vs deep-copy loop)", vec_t, loop_t, f"max |Δloss| {diff:.1e}"))

    print(f"mlpnet 784-400-200-100-10 (P = {P:,}), {len(batches)} batch(es), 1,000 random inputs, random labels, "
          f"5 epochs SGD; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best {'CPU' if args.cpu_time else 'wall'} time of {args.repeats}")
    print(table(["quantity", "ours s", "ref s", "speedup", "values"],
                [[name, f"{ours:.3f}", f"{reference_t:.3f}", f"{reference_t / ours:.2f}x", note]
                 for name, ours, reference_t, note in rows]))
    path = "data= path, graph built once" if len(batches) == 1 else "dataloader= path, graph rebuilt per HVP"
    print(f"ref = PyHessian 0.1 ({path}) or the deep-copy loop; both sides include their setup")


if __name__ == "__main__":
    main()
