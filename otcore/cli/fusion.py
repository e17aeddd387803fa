"""`fuse`, `report` and `prune`: one fusion setting (or one prune setting) and every method beside it."""
from __future__ import annotations

import argparse
import os

from otcore.cli.flags import (Bar, add_common, add_fusion, add_pruning, add_training, checked_fusion_spec, fuse_args,
                              parents_of, prune_spec, specs, train_spec)
from otcore.cli.output import comparison_json, prune_json
from otcore.cli.registry import command
from otcore.config import SpecError


@command("fuse", fuse_args)
def run_fuse(args: argparse.Namespace) -> dict:
    """Fuse parents (files or cached) and compare with every baseline."""
    from otcore.pipeline import fuse_and_compare

    spec = checked_fusion_spec(args)
    bar = Bar("fuse")
    try:
        parents = parents_of(args, bar)
        data, model = specs(args)
        comparison = fuse_and_compare(data, model, parents, spec, train_spec(args, spec.finetune_epochs),
                                      args.device, bar)
    finally:
        bar.close()
    return comparison_json(comparison)


def _report_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_training(p)
    add_fusion(p)
    p.add_argument("--out", required=True, help="HTML file to write (self-contained, opens offline)")
    p.add_argument("--title", default=None, help="report title (default: 'OT fusion report: DATASET / ARCH')")


@command("report", _report_args)
def run_report(args: argparse.Namespace) -> dict:
    """Fuse as `fuse` does and write the Fusion page's HTML report (tables, interactive charts)."""
    import stat

    from otcore.atomic import write_atomic
    from otcore.frontier import frontier_points
    from otcore.pipeline import dataset, fuse_and_compare
    from otcore.report import fusion_report
    from otcore.user_paths import checked, shown

    spec = checked_fusion_spec(args)
    # Checked before the work, not found out after it: a name the system refuses, a folder, a missing folder,
    # a read-only one.
    out, info = checked(args.out, "--out", SpecError)
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise SpecError(f"--out {shown(out)} is a folder; give the HTML file to write, e.g. {shown(out / 'report.html')}")
    folder, folder_info = checked(out.parent, "--out: the folder", SpecError)
    if folder_info is None or not stat.S_ISDIR(folder_info.st_mode):
        raise SpecError(f"--out {shown(out)}: the folder {shown(folder)} does not exist")
    if not os.access(folder, os.W_OK) or info is not None and not os.access(out, os.W_OK):
        raise SpecError(f"--out {shown(out)}: cannot write there (permission denied)")
    bar = Bar("report")
    parents = parents_of(args, bar)
    data, model = specs(args)
    comparison = fuse_and_compare(data, model, parents, spec, train_spec(args, spec.finetune_epochs), args.device, bar)
    bar.close()
    # The frontier of this one fusion (its network beside the parents, the ensemble and the vanilla average),
    # as the Fusion page's report draws the session's fusions.
    frontier = frontier_points([comparison], len(dataset(data).x_test))
    html = fusion_report(comparison, data, model, parents, spec, args.device, args.title, frontier)
    write_atomic(out, html.encode("utf-8"))
    result = comparison_json(comparison)
    result.update(out=str(out), bytes=out.stat().st_size, text=f"{result['text']}\nreport written to {out}")
    return result


def _prune_args(p: argparse.ArgumentParser) -> None:
    fuse_args(p)
    add_pruning(p)
    p.add_argument("--fraction", type=float, required=True, help="fraction pruned, in [0, 1)")


@command("prune", _prune_args)
def run_prune(args: argparse.Namespace) -> dict:
    """Prune the parents before or after fusion and compare every method at one fraction."""
    from otcore.pipeline import prune_and_compare

    spec, fusion = prune_spec(args, args.fraction), checked_fusion_spec(args)
    bar = Bar("prune")
    parents = parents_of(args, bar)
    data, model = specs(args)
    comparison = prune_and_compare(data, model, parents, spec, fusion, train_spec(args), args.device, bar)
    bar.close()
    return prune_json(comparison)
