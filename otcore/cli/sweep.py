"""`sweep`: a grid of settings run here or on a Ray cluster."""
from __future__ import annotations

import argparse
from typing import Any

from otcore.cli.flags import Bar, add_pruning, fuse_args, fusion_spec, prune_spec, specs, train_spec
from otcore.cli.output import comparison_json, prune_json
from otcore.cli.registry import command
from otcore.config import PruneSpec, SpecError


DEFAULT_FRACTIONS = "0,0.3,0.5,0.7"


def _sweep_args(p: argparse.ArgumentParser) -> None:
    fuse_args(p)
    add_pruning(p)
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a swept field and its values; repeat for a grid (first varies slowest). FIELD: any field "
                        "of the prune, fusion or train specs (prune.fraction, prune.type, fusion.mode, train.epochs, "
                        "prune.retrain_epochs, ...), seed (parents' seeds shifted by seed x their count), seeds "
                        "(explicit sets, 0+1), arch, dataset")
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


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError(f"{what} must be comma-separated numbers, got '{text}'") from None


def _sweep_spec(args: argparse.Namespace) -> Any:
    """The SweepSpec of the sweep flags: --grid entries, then --seed-sets, then --fractions."""
    from otcore.sweep import SweepSpec, parse_grid

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
    return SweepSpec(tuple(grid), data, model, train_spec(args), prune_spec(args, PruneSpec().fraction),
                     fusion_spec(args), tuple(args.seeds), args.step, args.device)


@command("sweep", _sweep_args)
def run_sweep(args: argparse.Namespace) -> dict:
    """A grid of settings run here or on a Ray cluster; every point cached, so a sweep resumes."""
    from otcore.executors import executor
    from otcore.sweep import run_sweep as sweep

    spec = _sweep_spec(args)
    runner = executor(args.executor, args.ray_address, args.retries, args.cpus_per_task,
                      **({"num_cpus": args.ray_cpus, "gpus_per_task": args.gpus_per_task}
                         if args.executor == "ray" else {}))
    bar = Bar(f"sweep ({args.executor})")
    try:
        result = sweep(spec, runner, progress=bar)
    finally:
        bar.close()
    rows, lines = [], []
    for point in result.points:
        row = prune_json(point.comparison) if spec.step == "prune" else comparison_json(point.comparison)
        row.pop("text", None)
        rows.append({**row, "seeds": list(point.seeds), "point": point.values, "key": point.key})
        label = ", ".join(f"{k}={v}" for k, v in point.values.items())
        lines.append(f"{label}: OT {row['ot_fusion']:.2f}%  vanilla {row.get('vanilla_average', float('nan')):.2f}%  "
                     f"ensemble {row['prediction_ensemble']:.2f}%{'  (cached)' if point.cached else ''}")
    failed = [{"point": f.values, "seeds": list(f.seeds), "key": f.key, "error": f.error, "attempts": f.attempts}
              for f in result.failed]
    lines += [f"FAILED {', '.join(f'{k}={v}' for k, v in f['point'].items())} after {f['attempts']} tries: "
              f"{f['error']}" for f in failed]
    return {"rows": rows, "failed": failed, "executor": result.executor, "seconds": result.seconds,
            "sweep": result.key, "status": result.status, "text": "\n".join(lines)}
