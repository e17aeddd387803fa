"""Batched capture of pre-activations through forward hooks."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor, modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """Outputs of the named modules on inputs x, as (neurons, samples) matrices.

    modules maps a result name to a module path. Conv outputs (N, C, H, W) become (C, N*H*W):
    each spatial position is one more sample of the filter, as in the reference code.
    """
    found: dict[str, torch.Tensor] = {}
    lookup = dict(model.named_modules())
    handles = []
    for name, path in modules.items():
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
            found[name] = out.detach().transpose(0, 1).reshape(out.shape[1], -1).clone()
        handles.append(lookup[path].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(x.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found
