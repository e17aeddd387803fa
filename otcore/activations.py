"""Batched capture of pre-activations through forward hooks, on a private copy of the model."""
from __future__ import annotations

import torch
from torch import nn

from otcore.device import model_device, private_copy


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor, modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """Outputs of the named modules on inputs x, as (neurons, samples) matrices.

    modules maps a result name to a module path. Conv outputs (N, C, H, W) become (C, N*H*W):
    each spatial position is one more sample of the filter, as in the reference code. The hooks
    go on a private eval-mode copy: the model may be shared with other threads, which would run them.
    """
    net = private_copy(model)
    found: dict[str, torch.Tensor] = {}
    lookup = dict(net.named_modules())
    for name, path in modules.items():
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
            found[name] = out.detach().transpose(0, 1).reshape(out.shape[1], -1).clone()
        lookup[path].register_forward_hook(hook)  # the copy is dropped with its hooks
    net(x.to(model_device(net)))
    return found
