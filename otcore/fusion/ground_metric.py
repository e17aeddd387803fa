"""Ground metric: the cost of moving one neuron onto another (rows are neurons)."""
from __future__ import annotations

import ot  # imported with the module so the first fusion's clock does not time POT's import
import torch

from otcore.errors import FusionError

def cost_matrix(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean", squared: bool = False,
                normalize: str = "none") -> torch.Tensor:
    """Cost M (n, m) between rows of x (n, d) and y (m, d), on their device.

    euclidean: M_ij = ||x_i - y_j|| (squared if asked), via POT's backend-agnostic `ot.dist`;
    cosine: M_ij = 1 - <x_i, y_j> / (||x_i|| ||y_j||) (ot.dist has no torch cosine), zero rows
    count as orthogonal so dead neurons give finite costs. normalize divides M by its max,
    median or mean, as the reference's --ground-metric-normalize. A NaN or Inf in x or y makes M
    non-finite (both metrics propagate it), so only M is checked, and x and y when it fails.
    """
    if metric == "euclidean":
        cost = ot.dist(x, y, metric="sqeuclidean").clamp_min_(0)
        if not squared:
            cost = cost.sqrt()
    elif metric == "cosine":
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        yn = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cost = (1 - xn @ yn.T).clamp_min_(0)
        if squared:
            cost = cost.square()
    else:
        raise FusionError(f"unknown ground metric '{metric}'")
    # Only M: activations are (n, samples * positions), and isfinite passes over them cost as much as ot.dist.
    if not bool(torch.isfinite(cost).all()) and not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise FusionError("cannot compute transport costs: the neurons' weights or activations contain NaN or Inf")
    if normalize != "none":
        scale = {"max": cost.max, "median": cost.median, "mean": cost.mean}[normalize]()
        if scale > 0:
            cost = cost / scale
    return cost
