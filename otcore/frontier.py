"""The accuracy-versus-size frontier: each fused network computed (method, width), beside the reference points.

Partial merging (otcore.fusion: ZipIt!'s and PLeaS's `width`) trades size for accuracy: at width 1 the
fused network has one parent's size, at width N it computes the ensemble of logits. The frontier puts
every computed fusion on one chart with the parents, the prediction ensemble (its parameters: all the
parents') and the vanilla average, by test accuracy against parameters and against inference time.
Accuracy, parameters and inference time are the comparisons' own rows (cached by the pipeline): the
time is the row's one warm prediction of the test split, the comparison table's inference column, so
the chart and the table agree. UI-free: the Fusion page, the report and sweeps over `fusion.width` draw these rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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
    seconds_per_1000: float  # inference seconds per 1000 test images (the row's inference_ms, rescaled)
    kind: str  # 'fusion', 'fine-tuned fusion', 'parent', 'ensemble' or 'vanilla'


def _kind(row: MethodResult) -> str:
    if is_parent(row.id):
        return "parent"
    return "ensemble" if row.id == Method.ENSEMBLE.value else "vanilla"


def _per_1000(row: MethodResult, test_images: int) -> float:
    """The row's inference time (ms for the whole test split) as seconds per 1000 test images."""
    return row.inference_ms / max(test_images, 1)


def frontier_points(comparisons: list[Comparison], test_images: int) -> list[FrontierPoint]:
    """The frontier of fuse_and_compare's comparisons (one per method and width), whose test split has
    `test_images` images.

    Each comparison gives its fused rows (as merged, and fine-tuned or retrained where it has them);
    the parents, the prediction ensemble and the vanilla average come once, from the first comparison
    that has them (the same parents give the same rows). Points come in the comparisons' order."""
    points: list[FrontierPoint] = []
    seen: set[str] = set()
    for comparison in comparisons:
        alignment = comparison.extra.get("alignment", "ot")
        width = float(comparison.extra.get("width", 1.0))
        for row in comparison.rows:
            if row.id in FUSED:
                label = f"{ALIGNMENT_LABELS.get(alignment, alignment)} ×{width:g}{FUSED[row.id]}"
                kind = "fusion" if row.id == Method.OT_FUSION.value else "fine-tuned fusion"
                points.append(FrontierPoint(label, alignment, width, row.parameters, row.test.accuracy,
                                            _per_1000(row, test_images), kind))
            elif (is_parent(row.id) or row.id in REFERENCES) and row.id not in seen:
                seen.add(row.id)
                points.append(FrontierPoint(row.method, row.id, None, row.parameters, row.test.accuracy,
                                            _per_1000(row, test_images), _kind(row)))
    return points


def frontier_rows(comparisons: list[Comparison], test_images: int) -> list[dict]:
    """frontier_points as plain dicts (label, method, width, parameters, accuracy, seconds_per_1000, kind)."""
    return [asdict(p) for p in frontier_points(comparisons, test_images)]
