"""Networks of one architecture at other widths: a template's modules given tensors of new shapes.

A fusion wider than the anchor (partial merging: ZipIt!'s or PLeaS's width above 1) and a compacted
pruned network (otcore.prune_groups) are the same architecture with other channel counts. Rather than
rebuilding a network from a width description (which only the zoo has), the template is copied, each
parameter or buffer whose shape changed is replaced, and each resized module's size attributes
(in/out channels, features, norm sizes) are set from its new tensors, so any traced network resizes.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from otcore.errors import FusionError, UserError


def set_size_attributes(module: nn.Module, before: dict[str, tuple[int, ...]],
                        error: type[UserError] = FusionError) -> None:
    """Update a resized module's size attributes from its new tensors (`before`: the old shapes by tensor name)."""
    weight = module._parameters.get("weight")
    if isinstance(module, nn.modules.conv._ConvNd):
        old_out, old_in = module.out_channels, module.in_channels
        module.out_channels = weight.shape[0]
        if module.groups == 1:
            module.in_channels = weight.shape[1]
        elif module.groups == old_in and weight.shape[0] != before["weight"][0]:
            module.in_channels = module.groups = weight.shape[0] // (old_out // old_in)  # depthwise, k filters each
        elif weight.shape != before["weight"]:
            raise error(f"cannot resize the grouped convolution with {module.groups} groups")
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = next(t for t in (weight, module._buffers.get("running_mean")) if t is not None).shape[0]
    elif isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        module.normalized_shape = (weight.shape[0],)  # over the channels only (the tracer follows no other)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.num_groups = weight.shape[0]  # only per-channel GroupNorms resize
    elif isinstance(module, nn.PReLU):
        module.num_parameters = weight.shape[0]


def resized_copy(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `template` holding `state` (state_dict names), whose tensors may have other shapes than its own.

    Tensors of the template's shape are loaded as load_state_dict would; others replace the parameter
    or buffer outright, and their modules' size attributes follow. Refuses (FusionError) a name the
    template lacks."""
    out = copy.deepcopy(template)
    own = out.state_dict()
    changed: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in state.items():
        if key not in own:
            raise FusionError(f"'{key}' is not a tensor of the {type(template).__name__} it should be loaded into")
        if own[key].shape == tensor.shape:
            continue
        path, _, name = key.rpartition(".")
        owner = out.get_submodule(path)
        store = owner._parameters if name in owner._parameters else owner._buffers
        old = store[name]
        changed.setdefault(path, {})[name] = tuple(old.shape)
        new = tensor.detach().to(dtype=old.dtype, device=old.device).clone()
        store[name] = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
    for path, before in changed.items():
        set_size_attributes(out.get_submodule(path), before)
    full = out.state_dict()  # filled in: its `_metadata` stays
    full.update(state)
    out.load_state_dict(full)
    return out
