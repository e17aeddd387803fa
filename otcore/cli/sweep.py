"""`sweep`: a grid of settings run here or on a Ray cluster."""
from __future__ import annotations

import argparse
from typing import Any

from otcore.cli.flags import Bar, add_pruning, fuse_args, fusion_spec, prune_spec, specs, train_spec
from otcore.cli.output import comparison_json, prune_json
from otcore.cli.registry import command
import math

from otcore.config import TRACE_METHODS, HessianSpec, PruneSpec, SpecError


DEFAULT_FRACTIONS = "0,0.3,0.5,0.7"


def _sweep_args(p: argparse.ArgumentParser) -> None:
    fuse_args(p)
    add_pruning(p)
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a swept field and its values; repeat for a grid (first varies slowest). FIELD: any field "
                        "of the prune, fusion or train specs (prune.fraction, prune.type, fusion.mode, train.epochs, "
                        "prune.retrain_epochs, prune.retrain.lr, ...), seed (parents' seeds shifted by seed x their "
                        "count), seeds (explicit sets, 0+1), arch, dataset")
    p.add_argument("--fractions", default=None,
                   help=f"comma-separated prune fractions in [0, 1), swept last (default {DEFAULT_FRACTIONS} "
                        "unless --grid sweeps prune.fraction)")
    p.add_argument("--seed-sets", nargs="+", default=None,
                   help="parent sets to repeat the sweep over, e.g. 0,1 2,3 (default: --seeds)")
    p.add_argument("--step", default="prune", choices=["prune", "fusion"],
                   help="what a point runs: prune then compare every method, or fuse only (no pruning)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: one point after another in this process; ray: each point a Ray task")
    p.add_argument("--ray-address", default=None,
                   help="'auto' joins the running Ray cluster, HOST:PORT or ray://HOST:10001 a given one; "
                        "none starts a local Ray instance")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: every core)")
    p.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs Ray reserves per point, and so its torch threads (local points run with "
                        "this process's thread policy)")
    p.add_argument("--gpus-per-task", type=float, default=0.0,
                   help="GPUs Ray reserves per point (0.5: two points share a GPU)")
    p.add_argument("--retries", type=int, default=2, help="tries after a point's first failure before it is reported")
    h = HessianSpec()
    p.add_argument("--analyse", nargs="*", default=None, metavar="NETWORK",
                   help="also run the Hessian analysis at each point on these networks: parents, vanilla, "
                        "'OT fusion', 'fine-tuned fusion', 'retrained fusion', 'retrained vanilla'; with no names, "
                        "the study's networks: parents, vanilla, 'OT fusion', 'retrained fusion', 'retrained vanilla' "
                        "(the retrained ones exist where the point retrains: --retrain-epochs)")
    p.add_argument("--confirm-size", type=int, default=None, metavar="N",
                   help="start a grid of more than 10,000 points (otcore.sweep.LARGE_GRID): N must be its number of points "
                        "(the refusal says it), so a grid that grew by mistake is still refused")
    p.add_argument("--hessian-batch-size", type=int, default=h.batch_size, help="examples the analysis uses")
    p.add_argument("--top-k", type=int, default=h.top_k, help="top Hessian eigenvalues per analysed network")
    p.add_argument("--power-iters", type=int, default=h.power_iters)
    p.add_argument("--trace-method", default=h.trace_method, choices=TRACE_METHODS)
    p.add_argument("--trace-probes", type=int, default=h.trace_probes)
    p.add_argument("--lanczos-iters", type=int, default=h.lanczos_iters)
    p.add_argument("--lambda-points", type=int, default=h.lambda_points)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError(f"{what} must be comma-separated numbers, got '{text}'") from None


def _sweep_spec(args: argparse.Namespace) -> Any:
    """The SweepSpec of the sweep flags: --grid entries, then --seed-sets, then --fractions."""
    from otcore.sweep import STUDY_NETWORKS, SweepSpec, parse_grid

    if getattr(args, "parents", None):
        raise SpecError("sweep trains its parents from --seeds (or --seed-sets, --grid seed=...); "
                        "checkpoint files (--parents) work with fuse and prune")
    grid = list(parse_grid(args.grid))
    if args.seed_sets:
        grid.append(("seeds", tuple(s.replace(",", "+") for s in args.seed_sets)))
    if args.step == "prune" and "prune.fraction" not in dict(grid):
        grid.append(("prune.fraction", tuple(_floats(args.fractions or DEFAULT_FRACTIONS, "--fractions"))))
    elif args.fractions is not None:
        raise SpecError("--fractions sweeps the prune step's fraction; it clashes with --step fusion and with "
                        "--grid prune.fraction=...")
    if args.executor == "local" and args.ray_address:
        raise SpecError("--ray-address needs --executor ray")
    data, model = specs(args)
    hessian = HessianSpec(batch_size=args.hessian_batch_size, top_k=args.top_k, power_iters=args.power_iters,
                          trace_method=args.trace_method, trace_probes=args.trace_probes,
                          lanczos_iters=args.lanczos_iters, lambda_points=args.lambda_points)
    return SweepSpec(tuple(grid), data, model, train_spec(args), prune_spec(args, PruneSpec().fraction),
                     fusion_spec(args), tuple(args.seeds), args.step, args.device,
                     STUDY_NETWORKS if args.analyse == [] else tuple(args.analyse or ()), hessian)


def _check_size(size: int, confirmed: int | None) -> None:
    """Refuse a grid over LARGE_GRID points unless --confirm-size gives its size; refuse a size that differs."""
    from otcore.sweep import LARGE_GRID

    if confirmed is not None and confirmed != size:
        raise SpecError(f"--confirm-size {confirmed} does not match the grid, which has {size:,} points")
    if size > LARGE_GRID and confirmed is None:
        raise SpecError(f"the grid has {size:,} points (more than {LARGE_GRID:,}): to start it, rerun with "
                        f"--confirm-size {size}")


@command("sweep", _sweep_args)
def run_sweep(args: argparse.Namespace) -> dict:
    """A grid of settings run here or on a Ray cluster; every point cached, so a sweep resumes."""
    from otcore.sweep import executor
    from otcore.sweep import run_sweep as sweep

    spec = _sweep_spec(args)
    _check_size(spec.size, args.confirm_size)
    runner = executor(args.executor, args.ray_address, args.retries, args.cpus_per_task,
                      **({"num_cpus": args.ray_cpus, "gpus_per_task": args.gpus_per_task}
                         if args.executor == "ray" else {}))
    bar = Bar(f"sweep ({args.executor})")
    try:
        result = sweep(spec, runner, progress=bar)
    finally:
        bar.close()
    rows, lines, first = [], [], {}  # first: the label of the first point of each key
    for point in result.points:
        row = prune_json(point.comparison) if spec.step == "prune" else comparison_json(point.comparison)
        row.pop("text", None)
        rows.append({**row, "seeds": list(point.seeds), "point": point.values, "key": point.key,
                     "curvature": point.curvature})  # method -> its analysis (with --analyse)
        label = ", ".join(f"{k}={v}" for k, v in point.values.items())
        same = f"  (the same computation as {first[point.key]})" if point.key in first else ""
        first.setdefault(point.key, label)
        lines.append(f"{label}: OT {row['ot_fusion']:.2f}%  vanilla {row.get('vanilla_average', float('nan')):.2f}%  "
                     f"ensemble {row['prediction_ensemble']:.2f}%{'  (cached)' if point.cached else ''}{same}")
    failed = [{"point": f.values, "seeds": list(f.seeds), "key": f.key, "error": f.error, "attempts": f.attempts}
              for f in result.failed]
    lines += [f"FAILED {', '.join(f'{k}={v}' for k, v in f['point'].items())} after {f['attempts']} tries: "
              f"{f['error']}" for f in failed]
    return {"rows": rows, "failed": failed, "executor": result.executor, "seconds": result.seconds,
            "sweep": result.key, "status": result.status, "text": "\n".join(lines)}


def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="a sweep's key, or its first characters (python -m otcore list shows them)")
    p.add_argument("--metric", default="test accuracy",
                   help="test accuracy, test loss, train accuracy, generalisation gap, trace, or λ1, λ2, ... "
                        "(also lambda1, ...): curvature metrics need a sweep run with --analyse")
    p.add_argument("--format", dest="table_format", default="markdown", choices=["csv", "latex", "markdown"])
    p.add_argument("--json", action="store_true", help="print the table's cells as JSON instead")


@command("table", _table_args)
def run_table(args: argparse.Namespace) -> dict:
    """One metric of a recorded sweep: a row per experiment, a column per network (CSV, LaTeX or Markdown)."""
    from otcore.figures import check_study_metric, study_table, study_text
    from otcore.sweep import load_sweep, sweep_records

    try:
        metric = check_study_metric(args.metric)
    except ValueError as err:
        raise SpecError(str(err)) from None
    keys = [r.key for r in sweep_records().rows if r.key.startswith(args.sweep)] if args.sweep else []
    if len(keys) != 1:
        raise SpecError(f"no recorded sweep starts with '{args.sweep}'" if not keys else
                        f"'{args.sweep}' names {len(keys)} sweeps; give more of the key")
    result = load_sweep(keys[0])
    table = study_table(result.points, metric)
    if table.empty:
        raise SpecError(f"sweep {keys[0][:12]} has no '{metric}' values"
                        + (" (run it with --analyse)" if metric not in ("test accuracy", "test loss", "train accuracy",
                                                                       "generalisation gap") else ""))
    cells = {e: {m: (None if math.isnan(v) else v) for m, v in row.items()} for e, row in table.iterrows()}
    return {"sweep": keys[0], "metric": metric, "rows": cells, "text": study_text(table, args.table_format)}
