"""Which torchvision classifiers each channel-group reader covers: otcore's torch.fx tracer vs Torch-Pruning.

For every model of torchvision.models.list_models(module=torchvision.models), built with 10 classes through
otcore.external_models.build_external('torchvision:NAME', (3, 32, 32), 10) on the meta device (shapes only;
on the CPU where a builder reads its weights; the adapter resizes the 32x32 input to the smallest side the
stem accepts, 224 for the ViTs), it reports whether otcore.graph.trace_groups builds the groups (free groups,
layers whose outputs are fixed) or refuses (its message), and whether Torch-Pruning's DependencyGraph builds
(tp.DependencyGraph().build_dependency) and how many pruning groups it finds (get_all_groups over Conv/Linear
roots, the layers writing the logits ignored). A model whose forward fails on every input tried is skipped
with the reason. Each approach has --limit seconds per model. The last line sums the coverage and counts the
lines of code behind each approach.

Run: python -m bench.tracer_coverage [--models resnet18 vit_b_16 ...]   (needs `pip install torch-pruning`)
"""
from __future__ import annotations

import argparse
import signal
import time
import warnings
from pathlib import Path

import torch
import torchvision

from bench.common import machine, table
from otcore.external_models import build_external
from otcore.graph import trace_groups
from otcore.prune_groups import output_layers

SHAPE = (3, 32, 32)
TIME_LIMIT = 20  # seconds per model and approach (default of --limit)
OURS = ["graph.py", "graph_tracer.py", "graph_ops.py", "graph_types.py"]


class _TimeUp(Exception):
    pass


def _limited(fn, limit: int):
    """fn() or the exception it raised (a _TimeUp after `limit` seconds), and the seconds it took."""
    def alarm(signum, frame):
        raise _TimeUp(f"over {limit} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(limit)
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - the bench reports every failure as a row
        out = exc
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return out, time.perf_counter() - start


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}".replace("|", "/")


def _loc(paths: list[Path]) -> int:
    """Non-blank, non-comment lines."""
    return sum(1 for p in paths for line in p.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def _tp_files() -> list[Path]:
    import torch_pruning
    root = Path(torch_pruning.__file__).parent
    # DependencyGraph's own package, the op wrappers it traces into and the per-layer pruners it indexes by.
    return sorted((root / "dependency").glob("*.py")) + [root / "ops.py", root / "pruner" / "function.py"]


def measure(name: str, tp, limit: int) -> list:
    with torch.device("meta"):
        model, _ = _limited(lambda: build_external(f"torchvision:{name}", SHAPE, 10).eval(), limit)
    if isinstance(model, Exception):  # a builder that reads its own weights (regnet's init): build on the CPU
        model, _ = _limited(lambda: build_external(f"torchvision:{name}", SHAPE, 10).eval(), limit)
    if isinstance(model, Exception):
        return [name, "skipped", "", "", "skipped", "", "", _why(model)]
    device = next(model.parameters()).device
    side = model.side or SHAPE[1]
    graph, ours_s = _limited(lambda: trace_groups(model, SHAPE), limit)
    row = [name, side]
    if isinstance(graph, Exception):
        row += ["refused", "", f"{ours_s:.2f}"]
        notes = [f"ours: {_why(graph)}"]
    else:
        fixed = [s for g in graph.groups if g.fixed for s in g.slots if s.role == "writer"]
        row += [len(graph.free()), len(fixed), f"{ours_s:.2f}"]
        notes = []

    def tp_groups() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *SHAPE, device=device),
                                                       verbose=False)
            last = [model.get_submodule(p) for p in output_layers(model)]
            return len(list(dg.get_all_groups(ignored_layers=last)))

    groups, tp_s = _limited(tp_groups, limit)
    if isinstance(groups, Exception):
        row += ["fails", f"{tp_s:.2f}"]
        notes.append(f"TP: {_why(groups)}")
    else:
        row += [groups, f"{tp_s:.2f}"]
    return row + ["; ".join(notes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--limit", type=int, default=TIME_LIMIT, help="seconds per model and approach")
    args = parser.parse_args()
    import torch_pruning as tp
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    torch.set_num_threads(1)
    print(f"Channel groups of torchvision classifiers, 10 classes, 3x32x32 input, meta device ({machine()})\n")
    headers = ["model", "side run", "ours: free groups", "ours: fixed writers", "ours s", "TP groups", "TP s", "why not"]
    print("\n".join(table(headers, []).splitlines()[:2]), flush=True)
    rows = []
    for name in names:  # row by row: a long run shows its progress
        rows.append(measure(name, tp, args.limit))
        print(table(headers, [rows[-1]]).splitlines()[2], flush=True)
    built = [r for r in rows if r[1] != "skipped"]
    ours = sum(r[2] != "refused" for r in built)
    theirs = sum(r[5] != "fails" for r in built)
    root = Path(__file__).resolve().parent.parent / "otcore"
    print(f"\n{len(rows)} models, {len(rows) - len(built)} skipped; otcore's fx tracer covers {ours}/{len(built)} "
          f"({_loc([root / f for f in OURS])} lines of code: {', '.join(OURS)}), Torch-Pruning's DependencyGraph "
          f"{theirs}/{len(built)} ({_loc(_tp_files())} lines: dependency/*.py, ops.py, pruner/function.py)")


if __name__ == "__main__":
    main()
