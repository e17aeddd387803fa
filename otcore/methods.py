"""The methods a comparison sets side by side: stable ids, and the labels shown at the edges.

Ids name a method in cache entries (tensor keys, rows) and in the CLI's JSON (`ot_fusion`, ...);
labels are for tables, cards and charts, and may change without touching a stored result. The
fused rows are labelled by their alignment ("CCA Merge", "ZipIt!", ...), the id stays `ot_fusion`.
Torch-free: the CLI and the figures read it.
"""
from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    """A method of a comparison; the value is its stable id (and its key in the CLI's JSON)."""

    PARENT = "parent"  # one id per parent: parent_id(i)
    VANILLA = "vanilla_average"
    ENSEMBLE = "prediction_ensemble"
    OT_FUSION = "ot_fusion"  # the fused network, whatever the alignment
    OT_FINETUNED = "ot_fusion_finetuned"
    OT_RETRAINED = "ot_fusion_retrained"
    VANILLA_RETRAINED = "vanilla_average_retrained"

    def __str__(self) -> str:
        return self.value


# What each alignment's fused network is called in tables and cards.
ALIGNMENT_LABELS = {"ot": "OT fusion", "weight_matching": "weight matching", "cca": "CCA Merge", "zipit": "ZipIt!",
                    "pleas": "PLeaS"}
LABELS = {Method.VANILLA: "vanilla average", Method.ENSEMBLE: "prediction ensemble",
          Method.VANILLA_RETRAINED: "vanilla average retrained"}
_FUSED_SUFFIX = {Method.OT_FUSION: "", Method.OT_FINETUNED: " fine-tuned", Method.OT_RETRAINED: " retrained"}


def parent_id(index: int) -> str:
    """The id of the parent at 0-based index: 'parent_1', 'parent_2', ..."""
    return f"{Method.PARENT.value}_{index + 1}"


def is_parent(method: str) -> bool:
    """Whether an id ('parent_2') or a label ('parent 2') names a parent rather than a method."""
    return str(method).startswith(Method.PARENT.value)


def label(method: Method | str, alignment: str = "ot") -> str:
    """The display label of a method id; fused rows are named after their alignment ('CCA Merge fine-tuned')."""
    if is_parent(method):
        return str(method).replace("_", " ")
    method = Method(method)
    if method in _FUSED_SUFFIX:
        return ALIGNMENT_LABELS[alignment] + _FUSED_SUFFIX[method]
    return LABELS[method]
