"""Typed results of the landscape steps: perturbation curves, interpolation paths, loss surfaces.

Plain float lists (JSON-ready, no torch) so pages, figures, reports and the CLI read named fields.
`from_stored`/`stored` convert to and from the dicts the disk cache holds, whose layout is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CURVE_FIELDS = ("lambdas", "loss_mean", "loss_std", "accuracy_mean", "accuracy_std")  # the stored keys


def _floats(values: Any) -> list[float]:
    return [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


@dataclass(frozen=True)
class PerturbationCurve:
    """Loss and accuracy of θ + λ·d along one direction d; accuracies are fractions."""

    lambdas: list[float]  # step along the (unit) direction
    loss: list[float]  # mean cross-entropy over the analysed batches
    loss_std: list[float] = field(default_factory=list)  # its spread over the batches (empty: none measured)
    accuracy: list[float] = field(default_factory=list)
    accuracy_std: list[float] = field(default_factory=list)

    @classmethod
    def from_curve(cls, curve: Any) -> PerturbationCurve:
        """From an otcore.landscape.Curve (tensors)."""
        return cls(*(_floats(getattr(curve, k)) for k in CURVE_FIELDS))

    @classmethod
    def from_stored(cls, stored: dict) -> PerturbationCurve:
        """From the dict a cache entry holds (keys CURVE_FIELDS)."""
        return cls(*(_floats(stored.get(k, [])) for k in CURVE_FIELDS))

    def stored(self) -> dict:
        """The dict a cache entry holds."""
        return dict(zip(CURVE_FIELDS, (self.lambdas, self.loss, self.loss_std, self.accuracy, self.accuracy_std)))


@dataclass(frozen=True)
class InterpolationPath:
    """Loss along a piecewise-straight path through networks, position normalised to [0, 1], and its barrier."""

    label: str  # what the legend and the barrier card say: 'parent 1 → parent 2', 'aligned by OT (weights)', ...
    networks: list[str]  # the networks at the path's corners, in order (A, ..., B)
    alphas: list[float]  # position along the path: 0 = A, 1 = B; the corners at k / (len(networks) - 1)
    loss: list[float]
    barrier: float  # max over the path of loss - the straight line between the end losses (Frankle et al., 2020)
    loss_std: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # fractions
    alignment: str = "naive"  # how B was brought to A before interpolating: naive, ot-weights, ot-activations, ...
    repair: bool = False  # whether each point of the path was renormalised (REPAIR)
    cached: bool = False

    @property
    def midpoint_loss(self) -> float:
        """The loss at position 0.5 (the point nearest it)."""
        return self.loss[min(range(len(self.alphas)), key=lambda i: abs(self.alphas[i] - 0.5))]

    @classmethod
    def from_stored(cls, stored: dict, label: str | None = None, cached: bool = False) -> InterpolationPath:
        """From the dict an interpolation entry holds: {'curve': {...}, 'barrier', 'path', ['alignment', 'repair']}."""
        curve, names = stored["curve"], list(stored["path"])
        segments = max(len(names) - 1, 1)
        return cls(label or " → ".join(names), names, [float(v) / segments for v in curve["lambdas"]],
                   _floats(curve["loss_mean"]), float(stored["barrier"]), _floats(curve.get("loss_std", [])),
                   _floats(curve.get("accuracy_mean", [])), stored.get("alignment", "naive"),
                   bool(stored.get("repair", False)), cached)

    def json(self) -> dict:
        """What the CLI prints of a path."""
        return {"label": self.label, "networks": self.networks, "alignment": self.alignment, "repair": self.repair,
                "barrier": self.barrier, "midpoint_loss": self.midpoint_loss, "alphas": self.alphas,
                "loss": self.loss}


@dataclass(frozen=True)
class LossSurface:
    """Loss and accuracy on the plane θ + α·d1 + β·d2: alphas [n1], betas [n2], loss and accuracy [n1][n2]."""

    alphas: list[float]
    betas: list[float]
    loss: list[list[float]]
    accuracy: list[list[float]]  # fractions
    directions: str = "hessian"  # 'hessian' (top two eigenvectors) or 'random' (filter-normalised)

    @classmethod
    def from_stored(cls, stored: dict) -> LossSurface:
        """From the dict a surface entry holds."""
        return cls(_floats(stored["alphas"]), _floats(stored["betas"]), [_floats(r) for r in stored["loss"]],
                   [_floats(r) for r in stored["accuracy"]], stored.get("directions", "hessian"))

    def stored(self) -> dict:
        """The dict a surface entry holds."""
        return {"alphas": self.alphas, "betas": self.betas, "loss": self.loss, "accuracy": self.accuracy,
                "directions": self.directions}
