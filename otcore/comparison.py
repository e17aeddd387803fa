"""What a comparison step returns: one row per method (scores and network), side by side.

Torch-free (torch only names types here): a sweep answered from the cache rebuilds its comparisons
from the entries' records without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from otcore.methods import Method, is_parent

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Evaluation:
    """Accuracy (percent) and mean cross-entropy loss on a split."""

    accuracy: float
    loss: float
    per_class: list[float | None] | None = None  # accuracy (percent) on each class; None where a class is absent


@dataclass
class MethodResult:
    """One row of a comparison: a method's scores and, where it is one network, the network."""

    method: str  # display label: 'parent 1', 'OT fusion', 'CCA Merge', ...
    test: Evaluation
    train: Evaluation
    parameters: int
    inference_ms: float  # time to predict the whole test split
    model: nn.Module | None = None  # None for the prediction ensemble
    key: str = ""  # identifies the network for later analysis steps
    id: str = ""  # stable id (otcore.methods): 'parent_1', 'ot_fusion', ...; '' for a row built outside a step


@dataclass
class Comparison:
    """Every method of one fusion (or pruning) setting, side by side."""

    key: str
    rows: list[MethodResult]
    plans: dict[str, torch.Tensor] = field(default_factory=dict)  # 'parent 2/fc1' -> plan (n_p, n_anchor)
    diagnostics: list[dict] = field(default_factory=list)  # one dict per (parent, group)
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # step-specific results (sparsity, ...)
    cached: bool = False

    def row(self, method: Method | str) -> MethodResult:
        """The row of a method by id (Method.OT_FUSION, 'parent_1') or by label ('OT fusion')."""
        return next(r for r in self.rows if r.id == method or r.method == method)

    def accuracies(self) -> dict:
        """The headless contract: test accuracies in percent, parents in order."""
        out = {"parents": [r.test.accuracy for r in self.rows if is_parent(r.id)]}
        out.update({r.id: r.test.accuracy for r in self.rows if r.id and not is_parent(r.id)})  # ids are the keys
        return out
