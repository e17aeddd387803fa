"""The options fusion reads: what `fuse` and `align_parents` need to know, nothing of caches or CLIs.

`otcore.config.FusionSpec` (the validated, hashed setting of a study) produces these with
`FusionSpec.options(n_parents)`; library users build them directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from otcore.errors import FusionError

CHOICES = {"mode": ("weights", "activations"), "alignment": ("ot", "weight_matching", "cca", "zipit", "pleas"),
           "solver": ("emd", "sinkhorn"), "ground_metric": ("euclidean", "cosine"),
           "normalize": ("none", "max", "median", "mean"), "marginals": ("uniform", "importance"),
           "heads": ("units", "within", "flat")}
ALIGNMENT_NAMES = {"ot": "OT", "weight_matching": "weight matching", "cca": "CCA Merge", "zipit": "ZipIt!",
                   "pleas": "PLeaS"}  # as messages name them
MERGE_ALIGNMENTS = ("cca", "zipit", "pleas")  # alignments by merge/unmerge maps rather than one plan per parent
PARTIAL_ALIGNMENTS = ("zipit", "pleas")  # alignments that can keep unmerged features side by side (width > 1)
WIDTH_REFUSAL = ("a fused width above 1 (--width {:g}) keeps unmatched features side by side, which only ZipIt! (--alignment "
                 "zipit) and PLeaS (--alignment pleas) do; {} fuses into the anchor's width: use --width 1 or one of those")


@dataclass(frozen=True)
class FusionOptions:
    """How parents are aligned and averaged; defaults are the paper's recommended ones (Singh & Jaggi, 2020)."""

    alignment: str = "ot"  # 'ot', 'weight_matching' (Git Re-Basin), 'cca' (CCA Merge), 'zipit' (ZipIt!), 'pleas' (PLeaS)
    mode: str = "weights"  # OT: align neurons by 'weights' or by pre-'activations' on a sample
    solver: str = "emd"  # exact OT ('emd') or entropic ('sinkhorn')
    reg: float = 0.01  # entropic regularisation of Sinkhorn, relative to the normalised cost
    ground_metric: str = "euclidean"  # distance between neurons: 'euclidean' or 'cosine'
    squared: bool = False  # square the euclidean distance
    normalize: str = "none"  # divide the cost matrix by its 'max', 'median' or 'mean'
    past_correction: bool = True  # multiply incoming weights by the previous layer's plan
    marginal_correction: bool = True  # rescale the plan so each target neuron gets unit mass
    marginals: str = "uniform"  # neuron masses: 'uniform' or 'importance' (l1 norm of weights)
    weights: tuple[float, ...] | None = None  # per-parent averaging weights (normalised here); None: equal
    anchor: int = 0  # index of the parent whose neuron order and widths the fused net keeps (negative from the end)
    skip_last_layer: bool = True  # average the output layer without a new plan (classes are aligned)
    renormalize: bool = False  # REPAIR: restore each fused neuron's statistics on the input sample
    repair_bias: bool = False  # REPAIR gives bias-free fused layers a bias, so each neuron's mean is restored too
    seed: int = 0  # order in which weight matching visits the groups
    width: float = 1.0  # fused width per group as a multiple of the anchor's: 1 (merge all) to N parents (merge none)
    heads: str = "units"  # attention heads (traced networks): aligned as 'units' and within, only 'within' their
    #                       place, or 'flat' (the group as one layer, heads ignored); otcore.fusion.heads

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise FusionError(f"{name} must be one of {allowed}, got '{getattr(self, name)}'")
        if self.repair_bias and not self.renormalize:
            raise FusionError("repair_bias (a bias per repaired neuron) is part of REPAIR: set renormalize too")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width >= 1):
            raise FusionError(f"the fused width is a multiple of the anchor's width, at least 1; got {self.width}")
        if self.width != 1 and self.alignment not in PARTIAL_ALIGNMENTS:
            raise FusionError(WIDTH_REFUSAL.format(self.width, ALIGNMENT_NAMES[self.alignment]))
        if self.weights is not None and (any(w < 0 for w in self.weights) or sum(self.weights) <= 0):
            raise FusionError(f"per-parent weights must be >= 0 with a positive sum, got {self.weights}")

    @property
    def needs_inputs(self) -> bool:
        """Whether fusion needs a sample of inputs (activation alignment, REPAIR, CCA Merge, ZipIt!, PLeaS)."""
        return self.mode == "activations" or self.renormalize or self.alignment in MERGE_ALIGNMENTS

    def anchor_index(self, n_parents: int) -> int:
        """The anchor's index among n_parents."""
        if not -n_parents <= self.anchor < n_parents:
            raise FusionError(f"anchor {self.anchor} out of range for {n_parents} parents")
        return self.anchor % n_parents

    def check_width(self, n_parents: int) -> None:
        """Refuses a width above the number of parents (the fused network would be wider than all of them)."""
        if self.width > n_parents + 1e-9:
            raise FusionError(f"the fused width {self.width:g} is above the number of parents ({n_parents}): at "
                              f"width {n_parents} nothing is merged already; choose a width in [1, {n_parents}]")

    def group_width(self, anchor_width: int, total_width: int) -> int:
        """A group's fused width: round(width * anchor width), within [anchor width, the parents' widths summed]."""
        return min(max(round(self.width * anchor_width), anchor_width), total_width)

    def parent_weights(self, n_parents: int) -> list[float]:
        """Normalised averaging weight of each parent."""
        if self.weights is None:
            return [1.0 / n_parents] * n_parents
        if len(self.weights) != n_parents:
            raise FusionError(f"{len(self.weights)} per-parent weights given for {n_parents} parents")
        total = sum(self.weights)
        return [w / total for w in self.weights]


class MakesOptions(Protocol):
    """Anything that produces FusionOptions for a number of parents (otcore.config.FusionSpec does)."""

    def options(self, n_parents: int) -> FusionOptions: ...


def as_options(options: FusionOptions | MakesOptions | Any, n_parents: int) -> FusionOptions:
    """The FusionOptions themselves, or those a spec produces for n_parents (duck-typed: fusion imports no spec)."""
    return options if isinstance(options, FusionOptions) else options.options(n_parents)
