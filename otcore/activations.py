"""What a network computes on a batch of inputs, without touching the (possibly shared) network:
its outputs, and its pre-activations captured through forward hooks on a private copy."""
from __future__ import annotations

import torch
from torch import nn

from otcore.device import model_device, private_copy

EVAL_BATCH = 1000  # examples per forward pass of an evaluation


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits (N, classes) of a model in eval mode, batch by batch on the model's device.

    The model may be shared by other threads, so its mode is never switched: a model in training
    mode is run as a private eval-mode copy (the zoo has no dropout or batch norm, but others may).
    """
    net = private_copy(model) if model.training else model
    device = next(net.parameters()).device
    return torch.cat([net(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


def capture_activations(model: nn.Module, x: torch.Tensor, modules: dict[str, str],
                        batch_size: int = EVAL_BATCH) -> dict[str, torch.Tensor]:
    """Outputs of the named modules on inputs x, as (neurons, samples) matrices.

    modules maps a result name to a module path. Conv outputs (N, C, H, W) become (C, N*H*W):
    each spatial position is one more sample of the filter, as in the reference code. The hooks
    go on a private eval-mode copy: the model may be shared with other threads, which would run them.
    One forward pass per batch of `batch_size` inputs (one in all for the usual 200 samples), in
    inference mode; each output is copied once, straight into its slice of the result, so memory
    is the captured matrices plus one batch's forward. The results are ordinary tensors (allocated
    outside inference mode), usable in any later computation.
    """
    net = private_copy(model)
    found: dict[str, torch.Tensor] = {}
    offset = [0]  # first sample of the batch in flight
    lookup = dict(net.named_modules())
    for name, path in modules.items():
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
            # (N, C, *spatial) -> (C, N, S): a view for contiguous and channels-last outputs alike.
            per_neuron = out.reshape(out.shape[0], out.shape[1], -1).transpose(0, 1)
            if name not in found:
                with torch.inference_mode(False):
                    found[name] = torch.empty((out.shape[1], len(x), per_neuron.shape[2]),
                                              dtype=out.dtype, device=out.device)
            found[name][:, offset[0]:offset[0] + out.shape[0]].copy_(per_neuron)
        lookup[path].register_forward_hook(hook)  # the copy is dropped with its hooks
    device = model_device(net)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            offset[0] = start
            net(x[start:start + batch_size].to(device))
    return {name: matrix.view(matrix.shape[0], -1) for name, matrix in found.items()}
