"""The walk's list, measured: per torchvision (and timm) model, what tests/test_model_walk.py does, timed.

For each model (built by otcore.external_models for 3x32x32 inputs and 10 classes, weights perturbed
as `otcore check` does, eval mode): build, one forward of a batch of 8, trace, permuted copy (with its
share of weight entries moved and its relative logit difference), and the fusion of the model with that
copy by OT on weights, OT on activations (32 samples) and weight matching, each with its relative logit
difference (--forward-only: build and forward, the walk's entry rule alone). A model whose forward takes
5 s or more stops there (the walk leaves it out); a refusal is printed with its message. Rows are printed
as they come (a long run cut short keeps what it measured).

Run in chunks of a few minutes each: python -m bench.torchvision_walk --models resnet18 timm:convnext_atto ...
(no --models: every torchvision classification model; --start/--stop slice that list).
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

from bench.common import machine, table
from otcore.arch_check import _perturbed
from otcore.errors import UserError
from otcore.external_models import build_external
from otcore.fusion import FusionOptions, fuse, permuted_copy
from otcore.graph import trace_groups

SHAPE = (3, 32, 32)
FORWARD_LIMIT_S = 5.0
ALIGNMENTS = (("ot", "weights"), ("ot", "activations"), ("weight_matching", "weights"))
HEADERS = ["model", "M params", "build s", "forward s", "trace s", "groups", "copy s", "moved", "copy err"] + \
    [f"{a}/{m} {c}" for a, m in ALIGNMENTS for c in ("s", "err")] + ["note"]


def _seconds(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def measure(name: str, forward_only: bool = False) -> list:
    """One row of the table (missing cells '-' where a step refused or the model was left out)."""
    arch = name if ":" in name else f"torchvision:{name}"
    row: list = [name]
    try:
        model, build = _seconds(lambda: _perturbed(build_external(arch, SHAPE, 10), torch.Generator().manual_seed(1))
                                .eval())
    except Exception as err:  # noqa: BLE001 - any failure to build is reported as the row's note
        return row + ["-"] * (len(HEADERS) - 2) + [f"build: {type(err).__name__}: {str(err).splitlines()[0][:120]}"]
    row += [f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}", f"{build:.2f}"]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(8, *SHAPE, generator=generator)
    sample = torch.randn(32, *SHAPE, generator=generator)
    with torch.inference_mode():
        logits, forward = _seconds(lambda: model(x))
    row.append(f"{forward:.2f}")
    if forward >= FORWARD_LIMIT_S or forward_only:
        note = f"forward of 8 images {forward:.1f} s >= 5 s" if forward >= FORWARD_LIMIT_S else "forward only"
        return row + ["-"] * (len(HEADERS) - len(row) - 1) + [note]
    try:
        graph, trace = _seconds(lambda: trace_groups(model, SHAPE))
        twin, copy_s = _seconds(lambda: permuted_copy(model, 2, SHAPE))
    except UserError as err:
        return row + ["-"] * (len(HEADERS) - len(row) - 1) + [f"refused: {err}"]
    state, moved_state = model.state_dict(), twin.state_dict()
    floats = [k for k, t in state.items() if t.is_floating_point()]
    moved = sum(int((state[k] != moved_state[k]).sum()) for k in floats) / sum(state[k].numel() for k in floats)
    with torch.inference_mode():
        copy_err = _relative(twin(x), logits)
    row += [f"{trace:.2f}", len(graph.free()), f"{copy_s:.2f}", f"{moved:.2f}", f"{copy_err:.0e}"]
    for alignment, mode in ALIGNMENTS:
        try:
            result, seconds = _seconds(lambda: fuse([model, twin], FusionOptions(alignment=alignment, mode=mode), sample))
        except UserError as err:
            row += ["-", f"refused: {err}"]
            continue
        with torch.inference_mode():
            row += [f"{seconds:.2f}", f"{_relative(result.model(x), logits):.0e}"]
    return row + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=None)
    parser.add_argument("--forward-only", action="store_true", help="build and one forward: the 5 s rule alone")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the walk test runs on one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or torchvision.models.list_models(module=torchvision.models)[args.start:args.stop]
    print(f"{machine()}; {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f} at the start\n")
    print(table(HEADERS, []), flush=True)
    for name in names:
        print(table(HEADERS, [measure(name, args.forward_only)]).splitlines()[-1], flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
