"""PLeaS's least squares over the channel groups traced from any model (otcore.graph).

The zoo's PLeaS (otcore.fusion.pleas) walks a chain of layers; here the network is described by its
traced groups. The merge maps come from PLeaS's partial matching per free group (group_merge), the
merged state as ZipIt!'s (W_0 = sum_p T_p[out]^T W_p U_p[in]); then every convolution and linear
layer, in the order the forward pass calls them, is refitted (pleas.refit_layer) so that its outputs
on the sample reproduce the parents' outputs of that layer moved into the fused basis:

    Y = sum_p R_p z_p,   R_p = the map the layer's output axis takes in the merge (T_p^T on each
                         segment a free group covers, w_p elsewhere: the logits, fixed channels),

which is the very map the merge applies to the layer's weight rows and bias, so at full width (every
map a selection) W_0 already gives Y and the fit leaves it. Batch norms are folded into their layers
first (the caller folds: a norm's statistics would otherwise change under the refitted layer).
Grouped convolutions and layers called more than once keep W_0.
"""
from __future__ import annotations

import torch
from torch import nn

from otcore.device import private_copy
from otcore.fusion.align import Plans
from otcore.fusion.group_merge import _weighted
from otcore.fusion.group_state import _move_axis, _moves_by_tensor
from otcore.fusion.pleas import _layer_io, refit_layer
from otcore.graph import ModelGraph


def _output_map(graph_p: ModelGraph, graph_a: ModelGraph, merge: Plans, weight: float, key: str,
                size: int) -> torch.Tensor:
    """R_p (n_fused, size): the merge's map of the axis 0 of tensor `key` (a layer's output channels)."""
    eye = torch.eye(size, dtype=torch.float64)
    scaled = _weighted({key: eye}, graph_p, weight)[key]  # w_p on channels no merge map moves
    moves = _moves_by_tensor(graph_p, graph_a, merge, ("writer",)).get(key, {}).get(0)
    return scaled if not moves else _move_axis(scaled, 0, moves)


def _call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Conv (one group) and linear layers in the order one forward pass calls them, each called exactly once."""
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: calls.append(name))
               for name, m in model.named_modules()
               if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        for h in handles:
            h.remove()
    return [name for name in dict.fromkeys(calls) if calls.count(name) == 1]


@torch.no_grad()
def least_squares_groups(fused: nn.Module, parents: list[nn.Module], graphs: list[ModelGraph], merges: list[Plans],
                         weights: list[float], x: torch.Tensor, anchor: int) -> nn.Module:
    """A copy of the fused network with its conv and linear layers refitted in call order (module docstring)."""
    fused = private_copy(fused)
    parents = [private_copy(p) for p in parents]  # hooks go on copies
    device = next(fused.parameters()).device
    for name in _call_order(fused, x.to(device)):
        key = f"{name}.weight"
        maps = [_output_map(g, graphs[anchor], m, w, key, p.get_submodule(name).weight.shape[0]).to(device)
                for p, g, m, w in zip(parents, graphs, merges, weights)]
        channel = 1 if isinstance(fused.get_submodule(name), nn.Conv2d) else -1

        def target(batch: torch.Tensor, name: str = name, maps: list = maps, channel: int = channel) -> torch.Tensor:
            out = 0
            for parent, r in zip(parents, maps):
                z = _layer_io(parent, name, batch, "out").double().movedim(channel, -1)
                out = out + (z @ r.T).movedim(-1, channel)
            return out

        refit_layer(fused, name, x, target)
    return fused
