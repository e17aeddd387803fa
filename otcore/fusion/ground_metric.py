"""Ground metric: the cost of moving one neuron onto another (rows are neurons)."""
from __future__ import annotations

import torch

from otcore.errors import FusionError

def cost_matrix(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean", squared: bool = False,
                normalize: str = "none") -> torch.Tensor:
    """Cost M (n, m) between rows of x (n, d) and y (m, d), on their device.

    euclidean: M_ij = ||x_i - y_j|| (squared if asked), see squared_distances;
    cosine: M_ij = 1 - <x_i, y_j> / (||x_i|| ||y_j||) (ot.dist has no torch cosine), zero rows
    count as orthogonal so dead neurons give finite costs. normalize divides M by its max,
    median or mean, as the reference's --ground-metric-normalize. A NaN or Inf in x or y makes M
    non-finite (both metrics propagate it), so only M is checked, and x and y when it fails.
    """
    if metric == "euclidean":
        cost = squared_distances(x, y)
        if not squared:
            cost = cost.sqrt_()
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


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 (n, m) = |x_i|^2 + |y_j|^2 - 2 <x_i, y_j>, floored at 0, on the inputs' device.

    `ot.dist(x, y, 'sqeuclidean')`'s formula in one matrix product and three passes over M; POT's
    torch backend takes the row norms by einsum('ij,ij->i'), a batched product that cost 1.2 ms per
    400 x 784 matrix against 0.1 ms for vecdot, and makes five passes (measured on the paper's MNIST
    parents: 6 ms of a 34 ms fusion by weights, one thread). Equal to ot.dist within float rounding.
    """
    norms = torch.linalg.vecdot(x, x)[:, None] + torch.linalg.vecdot(y, y)[None, :]
    return torch.addmm(norms, x, y.T, alpha=-2).clamp_min_(0)
