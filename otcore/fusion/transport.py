"""Optimal transport plans between two sets of neurons (POT solvers)."""
from __future__ import annotations

import torch


class TransportError(ValueError):
    """An OT problem that cannot be solved as posed; the message suggests a fix."""


def transport_plan(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, solver: str = "emd",
                   reg: float = 0.01) -> torch.Tensor:
    """Plan T (n, m) with marginals a (n,), b (m,) minimising <T, M> (minus reg * H(T) for Sinkhorn).

    'emd' is POT's exact network simplex, solved on the CPU in float64 (it has no GPU kernel);
    'sinkhorn' runs on the cost's device through POT's torch backend, in the log domain so
    small reg does not underflow. The plan comes back on the cost's device and dtype.
    """
    import ot  # POT pulls in scikit-learn: imported on first use, not at start-up

    if not torch.isfinite(cost).all():
        raise TransportError("the transport cost matrix contains NaN or Inf; check the parents' weights")
    if solver == "emd":
        plan = ot.emd(a.double().cpu(), b.double().cpu(), cost.double().cpu())
    elif solver == "sinkhorn":
        # reg is relative to the typical cost, so one value works across layers and metrics.
        scale = cost.max().clamp_min(1e-12)
        plan = ot.sinkhorn(a.to(cost), b.to(cost), cost / scale, reg, method="sinkhorn_log",
                           numItermax=2000, stopThr=1e-7, warn=False)
        if not torch.isfinite(plan).all() or plan.sum() <= 0:
            raise TransportError(f"Sinkhorn with reg={reg} did not converge to a finite plan; "
                                 "try a larger reg (e.g. 0.05) or the exact solver")
    else:
        raise TransportError(f"unknown OT solver '{solver}'")
    return plan.to(device=cost.device, dtype=cost.dtype)


def permutation_closeness(plan: torch.Tensor) -> float:
    """Share of each row's mass on its largest entry, averaged (1.0 for a scaled permutation)."""
    row_mass = plan.sum(1).clamp_min(1e-12)
    return float((plan.max(1).values / row_mass).mean())
