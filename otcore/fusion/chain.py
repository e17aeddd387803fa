"""The forward pass of a chain network (mlpnet, the VGG family), one weight layer at a time, without hooks.

Capturing a layer's inputs or outputs through forward hooks needs a private copy of a parent (the
parents may be shared with other threads) and one forward pass per layer; a chain's forward pass is
short enough to run here step by step instead, calling the network's own modules in its own order
(same operations, same values): the parents are only read. A 2x2 max-pool runs as the maximum of its
four strided views: the same values, and about ten times faster than F.max_pool2d on small CPU maps
(it was a quarter of PLeaS's time on vgg_tiny).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from otcore.models import VGG, FusableNet, MlpNet

Step = Callable[[torch.Tensor], torch.Tensor]


def is_chain(model: nn.Module) -> bool:
    """Whether chain_steps walks this network (mlpnet and the VGG family)."""
    return isinstance(model, (MlpNet, VGG))


def _max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2, 2)'s values, as the maximum of four strided views (an odd last row or column dropped)."""
    x = x[..., :x.shape[-2] // 2 * 2, :x.shape[-1] // 2 * 2]
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def _plain_2x2(module: nn.Module) -> bool:
    """Whether the module is a max-pool of 2x2 windows, stride 2, without padding, dilation or ceil mode."""
    return (isinstance(module, nn.MaxPool2d) and not module.ceil_mode and not module.return_indices
            and all((v if isinstance(v, tuple) else (v, v)) == want for v, want in
                    ((module.kernel_size, (2, 2)), (module.stride, (2, 2)), (module.padding, (0, 0)),
                     (module.dilation, (1, 1)))))


def _run(modules: list[nn.Module], flatten: bool) -> Step:
    """The modules applied in turn (then flatten(1)), as the network's forward applies them."""
    def step(z: torch.Tensor) -> torch.Tensor:
        for module in modules:
            z = _max_pool_2x2(z) if _plain_2x2(module) else module(z)
        return z.flatten(1) if flatten else z
    return step


def chain_steps(model: FusableNet) -> list[Step]:
    """Per alignment layer, the map from the previous layer's output (the input x for the first) to this layer's
    input, as model.forward computes it (models.MlpNet, models.VGG)."""
    if isinstance(model, MlpNet):
        return [lambda z: z.flatten(1)] + [F.relu] * (model.depth - 1)
    if isinstance(model, VGG):
        features = list(model.features)
        convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
        return ([_run(features[a + 1:b], False) for a, b in zip([-1] + convs, convs)]
                + [_run(features[convs[-1] + 1:] if convs else features, True)])
    raise TypeError(f"{type(model).__name__} is not a chain that chain_steps walks")


@torch.no_grad()
def chain_forward(model: FusableNet, x: torch.Tensor) -> torch.Tensor:
    """model(x), stepped layer by layer (the 2x2 max-pools by strided maxima)."""
    for step, layer in zip(chain_steps(model), model.alignment_layers()):
        x = model.get_submodule(layer.name)(step(x))
    return x


@torch.no_grad()
def chain_activations(model: FusableNet, x: torch.Tensor, modules: dict[str, str],
                      batch_size: int) -> dict[str, torch.Tensor]:
    """activations.capture_activations's result (outputs of the named layers as (neurons, samples), a conv's
    positions as samples) for a chain, stepped layer by layer: no private copy, no hook."""
    layers = [layer.name for layer in model.alignment_layers()]
    wanted = {path: name for name, path in modules.items()}
    if not set(wanted) <= set(layers):
        raise TypeError("chain_activations captures the outputs of alignment layers only")
    last = max(layers.index(path) for path in wanted) if wanted else -1
    steps = chain_steps(model)
    device = next(model.parameters()).device
    found: dict[str, torch.Tensor] = {}
    for start in range(0, len(x), batch_size):
        z = x[start:start + batch_size].to(device)
        for k in range(last + 1):
            z = model.get_submodule(layers[k])(steps[k](z))
            name = wanted.get(layers[k])
            if name is None:
                continue
            per_neuron = z.reshape(z.shape[0], z.shape[1], -1).transpose(0, 1)  # (C, N, S)
            if name not in found:
                found[name] = torch.empty((z.shape[1], len(x), per_neuron.shape[2]), dtype=z.dtype, device=z.device)
            found[name][:, start:start + z.shape[0]].copy_(per_neuron)
    return {name: matrix.view(matrix.shape[0], -1) for name, matrix in found.items()}
