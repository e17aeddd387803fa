"""The accuracy-versus-size frontier: each fused network computed (method, width), beside the reference points.

Partial merging (otcore.fusion: ZipIt!'s and PLeaS's `width`) trades size for accuracy: at width 1 the
fused network has one parent's size, at width N it computes the ensemble of logits. The frontier puts
every computed fusion on one chart with the parents, the prediction ensemble (its parameters: all the
parents') and the vanilla average, by test accuracy against parameters and against inference time.
Accuracy and parameters are the comparisons' own rows (cached by the pipeline); inference time is
measured here, on the test split, as the median of a few runs (one run is at the mercy of a busy CPU).
UI-free: the Fusion page, the report and sweeps over `fusion.width` draw these rows.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from otcore.activations import predict_logits
from otcore.comparison import Comparison, MethodResult
from otcore.methods import ALIGNMENT_LABELS, Method, is_parent

FUSED = {Method.OT_FUSION.value: "", Method.OT_FINETUNED.value: " fine-tuned", Method.OT_RETRAINED.value: " retrained"}
REFERENCES = (Method.ENSEMBLE.value, Method.VANILLA.value, Method.VANILLA_RETRAINED.value)


@dataclass(frozen=True)
class FrontierPoint:
    """One point of the frontier: a network (or the ensemble) by its size, speed and test accuracy."""

    label: str  # what the chart names it: 'PLeaS ×1.5', 'ZipIt! ×2 fine-tuned', 'parent 1', 'prediction ensemble'
    method: str  # the alignment ('pleas', 'zipit', ...) for a fusion, else the row's id ('parent_1', ...)
    width: float | None  # the fused width (a multiple of the anchor's); None for a reference point
    parameters: int  # scalar parameters (the ensemble: all its parents')
    accuracy: float  # test accuracy, percent (the comparison's row)
    seconds_per_1000: float  # inference seconds per 1000 test images, median of the runs
    kind: str  # 'fusion', 'fine-tuned fusion', 'parent', 'ensemble' or 'vanilla'


@torch.no_grad()
def inference_seconds_per_1000(model: nn.Module | list[nn.Module], x: torch.Tensor, repeats: int = 3) -> float:
    """Median over `repeats` runs of the seconds to predict x (every parent, for an ensemble), per 1000 images."""
    nets = model if isinstance(model, list) else [model]
    for net in nets:
        predict_logits(net, x[:1])  # warm-up: one-off set-up is not inference
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for net in nets:
            predict_logits(net, x)
        runs.append(time.perf_counter() - start)
    return 1000 * statistics.median(runs) / max(len(x), 1)


def _kind(row: MethodResult) -> str:
    if is_parent(row.id):
        return "parent"
    return "ensemble" if row.id == Method.ENSEMBLE.value else "vanilla"


def frontier_points(comparisons: list[Comparison], x_test: torch.Tensor, repeats: int = 3) -> list[FrontierPoint]:
    """The frontier of fuse_and_compare's comparisons (one per method and width) on the test inputs x_test.

    Each comparison gives its fused rows (as merged, and fine-tuned or retrained where it has them);
    the parents, the prediction ensemble and the vanilla average come once, from the first comparison
    that has them (the same parents give the same rows). Points come in the comparisons' order."""
    points: list[FrontierPoint] = []
    seen: set[str] = set()
    for comparison in comparisons:
        alignment = comparison.extra.get("alignment", "ot")
        width = float(comparison.extra.get("width", 1.0))
        parents = [r.model for r in comparison.rows if is_parent(r.id)]
        for row in comparison.rows:
            if row.id in FUSED and row.model is not None:
                label = f"{ALIGNMENT_LABELS.get(alignment, alignment)} ×{width:g}{FUSED[row.id]}"
                kind = "fusion" if row.id == Method.OT_FUSION.value else "fine-tuned fusion"
                points.append(FrontierPoint(label, alignment, width, row.parameters, row.test.accuracy,
                                            inference_seconds_per_1000(row.model, x_test, repeats), kind))
            elif (is_parent(row.id) or row.id in REFERENCES) and row.id not in seen:
                net = parents if row.id == Method.ENSEMBLE.value else row.model
                if net is None or (isinstance(net, list) and any(p is None for p in net)):
                    continue  # a network the comparison does not hold: nothing to time
                seen.add(row.id)
                points.append(FrontierPoint(row.method, row.id, None, row.parameters, row.test.accuracy,
                                            inference_seconds_per_1000(net, x_test, repeats), _kind(row)))
    return points


def frontier_rows(comparisons: list[Comparison], x_test: torch.Tensor, repeats: int = 3) -> list[dict]:
    """frontier_points as plain dicts (label, method, width, parameters, accuracy, seconds_per_1000, kind)."""
    return [asdict(p) for p in frontier_points(comparisons, x_test, repeats)]
