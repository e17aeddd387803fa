"""Benchmark of OT fusion (Singh & Jaggi, 2020): speed against a reference-style loop, scaling, accuracy.

Seven Markdown tables: (1) fusing two mlpnet parents (784-400-200-100-10) by weights and by
activations on 200 samples; (2) the same fusions done the way the reference code does them
(batch-size-1 activation capture, broadcast ground metric, numpy EMD, bmm over repeated plans),
written here from that description, with the max |difference| of the fused weights as a
fairness check; (3) width scaling of MLP 784-w-w-w-10, with the time spent inside ot.emd;
(4) scaling with the number of parents; (5) test accuracy on the embedded digits for mlpnet,
vgg_tiny_nobias and resnet_tiny_nobias_nobn; (6) every alignment (OT by weights, OT by activations,
weight matching, CCA Merge, ZipIt!), with and without REPAIR, one-shot on the same digits parents:
accuracy, time and size of the fused net; (7) a warm OT fusion of the table-1 parents on one thread
against its exact assignment solves. Timing parents are randomly initialised (seeds
0, 1, ...): speed does not depend on training. Every timing: one warm-up, then the median of
--repeats runs (time.perf_counter).

Run: python -m bench.fusion [--quick] [--repeats 5] [--threads N] [--methods-only] [--solves-only];
--quick stops the width sweep at 1024; --methods-only prints table 6 alone; --solves-only prints
table 7 alone: a warm OT fusion of the MNIST-shaped mlpnet on one thread against its exact solves. Tables 5
and 6 train and fuse in a fresh temporary cache, so their numbers always come from the current code.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import ot
import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.common import machine, table
from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec
from otcore.fusion import fuse
from otcore.models import FusableNet, MlpNet
from otcore.train import init_model

MNIST_SHAPE = (1, 28, 28)
ARCHS = ["mlpnet", "vgg_tiny_nobias", "resnet_tiny_nobias_nobn"]  # the digits tables' architectures
ACT_SAMPLES = 200


# ------------------------------------------------------------------ measuring


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median wall time of `repeats` calls after one warm-up call, the last call's result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@contextmanager
def solver_clock() -> Iterator[dict]:
    """Time every exact OT solve made inside the block (and count non-optimal stops).

    otcore.fusion.transport calls `exact_solve` (scipy's linear_sum_assignment for uniform square
    problems, else ot.emd, on NumPy arrays) through its module attribute, so wrapping it sees the
    solver's time alone; calls == 0 means the seam moved (or no exact solve ran).
    """
    import otcore.fusion.transport as transport

    original = transport.exact_solve
    clock = {"seconds": 0.0, "calls": 0, "not_optimal": 0}

    def timed(*args, **kwargs):
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = original(*args, **kwargs)
        clock["seconds"] += time.perf_counter() - start
        clock["calls"] += 1
        clock["not_optimal"] += any("numItermax" in str(w.message) for w in caught)
        return result

    transport.exact_solve = timed
    try:
        yield clock
    finally:
        transport.exact_solve = original


def load_average() -> str:
    """The 1/5/15-minute load averages (a shared machine makes every timing slower and noisier)."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{1000 * seconds:.1f}"


# ------------------------------------------------------------------ inputs


def mlp_parents(n: int, hidden: tuple[int, ...] = (400, 200, 100)) -> list[FusableNet]:
    """n randomly initialised MLPs 784-hidden-10, seeds 0..n-1."""
    return [init_model(MlpNet(784, hidden, 10), seed).eval() for seed in range(n)]


def act_sample(n: int = ACT_SAMPLES, seed: int = 0) -> torch.Tensor:
    """n MNIST-shaped inputs drawn from N(0, 1)."""
    return torch.randn(n, *MNIST_SHAPE, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the reference-style loop


def reference_activations(model: torch.nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """Layer outputs collected one example at a time (DataLoader, batch size 1), stacked: (samples, neurons)."""
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: store[name].append(out.detach())) for name in layers]
    model.eval()
    with torch.no_grad():
        for (example,) in DataLoader(TensorDataset(x), batch_size=1, shuffle=False):
            model(example)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(outs, 0) for name, outs in store.items()}


def reference_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean cost by broadcasting: an (n, m, d) difference tensor, summed, then sqrt."""
    return ((x[:, None, :] - y[None, :, :]).abs() ** 2).sum(-1).sqrt()


def reference_fuse(parents: list[FusableNet], mode: str, x: torch.Tensor | None) -> FusableNet:
    """Two-parent OT fusion into parents[0]'s order, per-layer Python loop as in the reference code.

    Same maths as otcore's defaults (uniform marginals, past correction, marginal correction,
    euclidean cost, output layer averaged without a plan, ensemble step 0.5).
    """
    anchor, other = parents
    names = [name.rsplit(".", 1)[0] for name, _ in anchor.named_parameters()]
    if mode == "activations":
        acts_anchor = reference_activations(anchor, x, names[:-1])
        acts_other = reference_activations(other, x, names[:-1])
    fused_state = {}
    plan_prev = None
    for idx, ((name, w_anchor), (_, w_other)) in enumerate(zip(anchor.named_parameters(), other.named_parameters())):
        w_anchor, w_other = w_anchor.detach(), w_other.detach()
        out_dim = w_other.shape[0]
        if plan_prev is None:
            aligned = w_other
        else:
            # Past correction, conv or linear alike: (out, in, k) -> k batched (out, in) @ (in, in') products.
            w3 = w_other.reshape(out_dim, w_other.shape[1], -1)
            k = w3.shape[2]
            aligned = torch.bmm(w3.permute(2, 0, 1), plan_prev.unsqueeze(0).repeat(k, 1, 1)).permute(1, 2, 0)
            aligned = aligned.reshape(out_dim, -1, *w_other.shape[2:])
        if idx == len(names) - 1:  # the classes are aligned already: average without a plan
            fused_state[name] = 0.5 * aligned + 0.5 * w_anchor
            break
        if mode == "activations":
            cost = reference_cost(acts_other[names[idx]].T.contiguous(), acts_anchor[names[idx]].T.contiguous())
        else:
            cost = reference_cost(aligned.reshape(out_dim, -1), w_anchor.reshape(w_anchor.shape[0], -1))
        mu = np.ones(cost.shape[0], dtype=np.float64) / cost.shape[0]
        nu = np.ones(cost.shape[1], dtype=np.float64) / cost.shape[1]
        plan = torch.from_numpy(ot.emd(mu, nu, cost.cpu().numpy().astype(np.float64))).float()
        plan = plan @ torch.diag(1.0 / torch.from_numpy(nu).float())  # each anchor neuron gets unit mass
        moved = plan.T @ aligned.reshape(out_dim, -1)
        fused_state[name] = (0.5 * moved + 0.5 * w_anchor.reshape(w_anchor.shape[0], -1)).reshape(w_anchor.shape)
        plan_prev = plan
    fused = copy.deepcopy(anchor)
    fused.load_state_dict(fused_state)
    return fused.eval()


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest |difference| over all parameters of two same-shaped networks."""
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


# ------------------------------------------------------------------ sections


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with n intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def headline_and_reference(repeats: int) -> None:
    """Tables 1 and 2: mlpnet, two parents, ours against the reference-style loop.

    Run at the configured thread count and at 1 thread: on a shared machine, intra-op threads
    that wait for a descheduled sibling can cost more than they save.
    """
    parents, x = mlp_parents(2), act_sample()
    rows_ours, rows_ref = [], []
    for threads in dict.fromkeys([torch.get_num_threads(), 1]):
        with torch_threads(threads):
            for mode in ("weights", "activations"):
                spec = FusionSpec(mode=mode, act_samples=ACT_SAMPLES)
                phases: dict[str, list[float]] = {"activations": [], "fusion": []}

                def run_ours() -> FusableNet:
                    result = fuse(parents, spec, x if mode == "activations" else None)
                    for key in phases:
                        phases[key].append(result.seconds[key])
                    return result.model

                ours_s, ours = median_seconds(run_ours, repeats)
                ref_s, ref = median_seconds(lambda: reference_fuse(parents, mode, x), repeats)
                rows_ours.append([mode, threads, ms(ours_s), ms(statistics.median(phases["activations"][1:])),
                                  ms(statistics.median(phases["fusion"][1:]))])
                rows_ref.append([mode, threads, ms(ours_s), ms(ref_s), f"{ref_s / ours_s:.1f}x",
                                 f"{max_weight_diff(ours, ref):.1e}"])
    print(f"\n## 1. Fusing two mlpnet parents (784-400-200-100-10), {ACT_SAMPLES} samples, median of {repeats}\n")
    print(table(["mode", "threads", "total ms", "activations ms", "fusion ms"], rows_ours))
    print("\nTotal = wall time of `fuse(...)`, activation capture included, evaluation excluded; the phases are "
          "FusionResult.seconds.")
    print(f"\n## 2. Against the reference-style per-layer loop (same parents, same maths), median of {repeats}\n")
    print(table(["mode", "threads", "ours ms", "reference-style ms", "speed-up", "max abs diff of fused weights"],
                rows_ref))
    print("\nReference-style: activations by a DataLoader of batch size 1 with forward hooks; cost by broadcasting "
          "(n, m, d) differences; cost to numpy float64 for ot.emd; past correction by torch.bmm over repeated "
          f"plans. For scale, vanilla averaging differs from OT fusion by "
          f"{max_weight_diff(ours, vanilla(parents)):.1e}.")


def fusion_against_solves(repeats: int) -> None:
    """Table 7: a warm OT fusion of the MNIST-shaped mlpnet parents on one thread, against its exact solves."""
    parents, x = mlp_parents(2), act_sample()
    rows = []
    with torch_threads(1):
        for mode in ("weights", "activations"):
            spec = FusionSpec(mode=mode, act_samples=ACT_SAMPLES)
            inputs = x if mode == "activations" else None
            fuse(parents, spec, inputs)  # warm: imports, first allocations
            walls, fusions, solves = [], [], []
            for _ in range(max(repeats, 5) * 4):
                with solver_clock() as clock:
                    start = time.perf_counter()
                    result = fuse(parents, spec, inputs)
                    walls.append(time.perf_counter() - start)
                fusions.append(result.seconds["fusion"])
                solves.append(clock["seconds"])
            wall, fusion, solved = (statistics.median(v) for v in (walls, fusions, solves))
            rows.append([mode, ms(wall), ms(fusion), ms(solved), f"{fusion / solved:.2f}x", f"{wall / solved:.2f}x"])
    print(f"\n## 7. A warm OT fusion against its exact solves, mlpnet 784-400-200-100-10, 1 thread, median of "
          f"{max(repeats, 5) * 4}\n")
    print(table(["mode", "fuse() ms", "fusion ms (FusionResult.seconds)", "exact solves ms", "fusion / solves",
                 "fuse() / solves"], rows))
    print(f"\nExact solves: the time inside otcore.fusion.transport.exact_solve (scipy's linear_sum_assignment on "
          f"the three hidden groups' float64 costs); fusion: everything after the activations (costs, solves, plans, "
          f"averaging, the new network); load average {load_average()}.")


def vanilla(parents: list[FusableNet]) -> FusableNet:
    """Coordinate-wise mean of two parents (the scale against which a weight difference is judged)."""
    fused = copy.deepcopy(parents[0])
    fused.load_state_dict({k: (v + parents[1].state_dict()[k]) / 2 for k, v in parents[0].state_dict().items()})
    return fused


def width_scaling(widths: list[int], repeats: int) -> None:
    """Table 3: MLP 784-w-w-w-10, total fusion time and the time inside ot.emd."""
    x = act_sample()
    rows = []
    previous: dict[str, tuple[float, float, float]] = {}
    for width in widths:
        parents = mlp_parents(2, (width,) * 3)
        for mode in ("weights", "activations"):
            spec = FusionSpec(mode=mode, act_samples=ACT_SAMPLES)
            solver: list[float] = []
            not_optimal = 0

            def run() -> None:
                nonlocal not_optimal
                with solver_clock() as clock:
                    fuse(parents, spec, x if mode == "activations" else None)
                solver.append(clock["seconds"] if clock["calls"] else float("nan"))
                not_optimal = clock["not_optimal"]

            total, _ = median_seconds(run, repeats)
            emd = statistics.median(solver[1:])
            growth = ""
            if mode in previous:
                t0, e0, r0 = previous[mode]
                growth = f"{total / t0:.1f}x / {emd / e0:.1f}x / {(total - emd) / r0:.1f}x"
            previous[mode] = (total, emd, total - emd)
            rows.append([width, mode, f"{total:.3f}", f"{emd:.3f}", f"{total - emd:.3f}", f"{100 * emd / total:.0f}%",
                         growth, "yes" if not_optimal == 0 else f"no ({not_optimal} of 3 groups)"])
    print(f"\n## 3. Width scaling, MLP 784-w-w-w-10, two parents, {ACT_SAMPLES} samples, median of {repeats}\n")
    print(table(["w", "mode", "total s", "inside the OT solver s", "rest s", "solver share",
                 "growth per doubling: total / solver / rest", "solver reached optimality"], rows))
    print("\n'inside the OT solver' sums the exact OT solves (scipy's linear_sum_assignment for these uniform "
          "square problems) made during one fuse (3 hidden groups, each w x w); "
          "'rest' is everything else (activations, costs, plan algebra, copies). Growth is against the previous "
          "width (half as wide). 'no' means POT stopped at numItermax (default 100000) and warned: "
          "the plan is feasible but not optimal.")


def parent_scaling(counts: list[int], repeats: int) -> None:
    """Table 4: mlpnet, 2..8 parents."""
    x = act_sample()
    rows = []
    for n in counts:
        parents = mlp_parents(n)
        row: list[object] = [n]
        for mode in ("weights", "activations"):
            spec = FusionSpec(mode=mode, act_samples=ACT_SAMPLES)
            seconds, _ = median_seconds(lambda: fuse(parents, spec, x if mode == "activations" else None), repeats)
            row += [ms(seconds), ms(seconds / (n - 1))]
        rows.append(row)
    print(f"\n## 4. Number of parents, mlpnet, {ACT_SAMPLES} samples, median of {repeats}\n")
    print(table(["parents", "weights ms", "weights ms per aligned parent", "activations ms",
                 "activations ms per aligned parent"], rows))


def accuracy_on_digits(archs: list[str]) -> None:
    """Table 5: test accuracy (%) of every method on the embedded digits, parents of seeds 0 and 1."""
    from otcore.pipeline import ENSEMBLE, OT_FINETUNED, OT_FUSION, VANILLA, dataset, fuse_and_compare, train_parents

    data = DataSpec()
    methods = {
        "OT fusion, weights": FusionSpec(mode="weights"),
        "OT fusion, activations": FusionSpec(mode="activations", act_samples=ACT_SAMPLES),
        "OT fusion + REPAIR, weights": FusionSpec(mode="weights", renormalize=True, act_samples=ACT_SAMPLES),
        "OT fusion + REPAIR, activations": FusionSpec(mode="activations", renormalize=True,
                                                      act_samples=ACT_SAMPLES),
        "weight matching (Git Re-Basin)": FusionSpec(alignment="weight_matching"),
    }
    finetuned = "OT fusion, weights, fine-tuned 1 epoch"
    column: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for arch in archs:
        model = ModelSpec(arch)
        parents = train_parents(data, model, TrainSpec(), [0, 1])
        scores: dict[str, float] = {}
        for label, spec in methods.items():
            comparison = fuse_and_compare(data, model, parents, spec)
            if not scores:
                for p in parents:
                    scores[p.name] = comparison.row(p.name).test.accuracy
                scores[VANILLA] = comparison.row(VANILLA).test.accuracy
                scores[ENSEMBLE] = comparison.row(ENSEMBLE).test.accuracy
            scores[label] = comparison.row(OT_FUSION).test.accuracy
        comparison = fuse_and_compare(data, model, parents, FusionSpec(mode="weights", finetune_epochs=1))
        scores[finetuned] = comparison.row(OT_FINETUNED).test.accuracy
        column[arch] = scores
    labels = list(column[archs[0]])
    rows = [[label] + [f"{column[a][label]:.2f}" for a in archs] for label in labels]
    print(f"\n## 5. Test accuracy (%) on digits (embedded, {len(dataset(data).x_test)} test images), "
          "parents of seeds 0 and 1\n")
    print(table(["method"] + archs, rows))
    print(f"\nParents: TrainSpec() defaults (10 epochs SGD, batch 64, lr 0.05, momentum 0.9). Fusion: FusionSpec "
          f"defaults otherwise (anchor parent 1, ensemble step 0.5, EMD, euclidean); activations on "
          f"{ACT_SAMPLES} train images; fine-tuning with TrainSpec() settings; trained with {torch.get_num_threads()} "
          f"torch thread(s) (conv nets' results move with the thread count); {time.perf_counter() - start:.0f} s "
          "for the table, training included.")


ALIGNMENT_METHODS = {
    "OT, weights": FusionSpec(mode="weights", act_samples=ACT_SAMPLES),
    "OT, activations": FusionSpec(mode="activations", act_samples=ACT_SAMPLES),
    "weight matching": FusionSpec(alignment="weight_matching", act_samples=ACT_SAMPLES),
    "CCA Merge": FusionSpec(alignment="cca", act_samples=ACT_SAMPLES),
    "ZipIt!": FusionSpec(alignment="zipit", act_samples=ACT_SAMPLES),
    "PLeaS": FusionSpec(alignment="pleas", act_samples=ACT_SAMPLES),
}


def run_in_fresh_cache(fn: Callable[[], object]) -> None:
    """Run fn with OTCORE_CACHE_DIR pointing at a new temporary folder, removed afterwards."""
    cache = tempfile.mkdtemp(prefix="bench-fusion-")
    os.environ["OTCORE_CACHE_DIR"] = cache
    try:
        fn()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def method_table(archs: list[str], repeats: int) -> None:
    """Table 6: every alignment, without and with REPAIR, on the digits parents of seeds 0 and 1."""
    from dataclasses import replace

    from otcore.fusion import MergeMethodError
    from otcore.models import count_parameters
    from otcore.pipeline import dataset, fusion_inputs, train_parents
    from otcore.train import predict_logits

    data = DataSpec()
    ds = dataset(data)
    rows = []
    for arch in archs:
        nets = [p.model.eval() for p in train_parents(data, ModelSpec(arch), TrainSpec(), [0, 1])]
        x = fusion_inputs(data, FusionSpec(act_samples=ACT_SAMPLES), next(nets[0].parameters()).device)
        parent_acc = [float((predict_logits(n, ds.x_test).argmax(1).cpu() == ds.y_test.cpu()).float().mean()) * 100
                      for n in nets]
        one_shot: dict[str, float] = {}  # label -> median seconds without REPAIR (for the ratio to OT by activations)
        arch_rows: list[tuple[str, list[object], object]] = []
        for label, spec in ALIGNMENT_METHODS.items():
            row: list[object] = [arch, label]
            cells: list[object] = []
            params = ""
            for repair in (False, True):
                run_spec = replace(spec, renormalize=repair)
                try:
                    seconds, fused = median_seconds(lambda s=run_spec: fuse(nets, s, x).model, repeats)
                except MergeMethodError:
                    cells += ["refused (residual net)", ""]
                    continue
                accuracy = float((predict_logits(fused, ds.x_test).argmax(1).cpu() == ds.y_test.cpu()).float().mean())
                cells += [f"{100 * accuracy:.2f}", ms(seconds)]
                params = count_parameters(fused)
                one_shot.setdefault(label, seconds)
            arch_rows.append((label, row + cells[0::2] + cells[1::2], params))
        base = one_shot.get("OT, activations")
        rows += [values + [f"{one_shot[label] / base:.1f}" if base and label in one_shot else "", params]
                 for label, values, params in arch_rows]
        rows.append([arch, "(parents)", " / ".join(f"{a:.2f}" for a in parent_acc), "", "", "", "",
                     count_parameters(nets[0])])
    print(f"\n## 6. Every alignment on digits, one-shot, parents of seeds 0 and 1, {ACT_SAMPLES} samples, "
          f"median of {repeats}\n")
    print(table(["arch", "alignment", "test acc %", "+ REPAIR acc %", "ms", "+ REPAIR ms", "ms / OT act", "parameters"],
                rows))
    print(f"\nTime: wall time of `fuse(...)` (activation capture included, evaluation excluded), one warm-up then "
          f"the median of {repeats}; {torch.get_num_threads()} torch thread(s); load average {load_average()}. "
          "CCA Merge: ridge 1 x the layer's mean neuron variance, cross ridge toward the activation matching; ZipIt!: "
          "full zip, alpha 0.3, beta 0.125 (the authors'). Both refuse residual nets.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stop the width sweep at 1024")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    parser.add_argument("--methods-only", action="store_true", help="print table 6 (every alignment) alone")
    parser.add_argument("--solves-only", action="store_true", help="print table 7 (OT fusion against its solves) alone")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(args.threads or cores)
    torch.manual_seed(0)
    start = time.perf_counter()
    print("# OT fusion benchmark" + (" (--quick)" if args.quick else ""))
    print(f"\nMachine: {machine()}; {torch.get_num_threads()} torch threads, POT {ot.__version__}, "
          f"numpy {np.__version__}; load average (1/5/15 min) {load_average()}")
    if torch.get_num_threads() > 1 and hasattr(os, "getloadavg") and os.getloadavg()[0] > cores:
        print(f"\n> The machine is shared (load {os.getloadavg()[0]:.1f} on {cores} cores): with several torch threads "
              "each parallel op waits for descheduled siblings, so table 1 also runs at 1 thread; rerun when "
              "idle, or with --threads 1.")
    if args.methods_only:
        run_in_fresh_cache(lambda: method_table(ARCHS, args.repeats))
        print(f"\nTotal bench time {time.perf_counter() - start:.0f} s; load average at the end {load_average()}.")
        return
    if args.solves_only:
        fusion_against_solves(args.repeats)
        return
    headline_and_reference(args.repeats)
    fusion_against_solves(args.repeats)
    widths = [128, 256, 512, 1024] + ([] if args.quick else [2048, 4096])
    width_scaling(widths, args.repeats)
    parent_scaling([2, 3, 4, 6, 8], args.repeats)
    run_in_fresh_cache(lambda: (accuracy_on_digits(ARCHS), method_table(ARCHS, args.repeats)))
    print(f"\nTotal bench time {time.perf_counter() - start:.0f} s; load average at the end {load_average()}.")


if __name__ == "__main__":
    main()
