"""The baselines fusion is judged against: vanilla weight averaging and prediction ensembling."""
from __future__ import annotations


import torch
from torch import nn

from otcore.activations import predict_logits
from otcore.errors import FusionError
from otcore.fusion.new_weights import copy_with


def vanilla_average(parents: list[nn.Module], weights: list[float] | None = None) -> nn.Module:
    """Coordinate-wise weighted average of same-shaped parents, without any alignment."""
    weights = weights or [1.0 / len(parents)] * len(parents)
    states = [p.state_dict() for p in parents]
    for name, tensor in states[0].items():
        for i, state in enumerate(states[1:], start=2):
            if state[name].shape != tensor.shape:
                raise FusionError(f"vanilla averaging needs parents of one width: {name} of parent {i} has shape "
                                 f"{tuple(state[name].shape)}, parent 1 has {tuple(tensor.shape)}")
    averaged = {k: sum(w * s[k] for w, s in zip(weights, states)) for k in states[0]}
    return copy_with(parents[0], averaged).eval()


@torch.no_grad()
def ensemble_log_probs(parents: list[nn.Module], x: torch.Tensor, weights: list[float] | None = None) -> torch.Tensor:
    """log of the (weighted) mean of the parents' softmax outputs, (N, classes)."""
    weights = weights or [1.0 / len(parents)] * len(parents)
    probs = sum(w * predict_logits(p, x).softmax(1) for w, p in zip(weights, parents))
    return probs.clamp_min(1e-12).log()
