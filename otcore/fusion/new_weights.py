"""A copy of a network with new weights: what `copy.deepcopy(net)` then `load_state_dict` give, for less.

`copy.deepcopy` of a module walks every attribute of every submodule through `__reduce_ex__`: pure
Python, holding the GIL. For a small convnet it was the largest part of a fusion (vgg_tiny: 1.3 of
4.9 ms, measured on the 2-core CPU), and it serialised concurrent fusions in one process (the
dashboard's sessions). Here each module is rebuilt from its `__dict__`: attributes that deepcopy
would return unchanged (numbers, strings, tuples of them) are shared, empty hook dictionaries are
made anew, anything else goes through `copy.deepcopy` with a shared memo, so the result is the
same as deepcopy's (shared submodules and parameters stay shared) at a tenth of its cost.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_SHARED = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)  # deepcopy returns these as they are
_EMPTY = (dict, OrderedDict, set, list)  # an empty one of exactly these types is deep-copied as a new empty one
_OWN = ("_parameters", "_buffers", "_modules")


def _copy_value(value: Any, memo: dict[int, Any]) -> Any:
    """copy.deepcopy(value, memo), without deepcopy's generic walk for the values modules are made of."""
    kind = type(value)
    if kind in _SHARED or (kind is tuple and all(type(v) in _SHARED for v in value)):
        return value
    if kind in _EMPTY and not value:
        return kind()
    return copy.deepcopy(value, memo)


def _copy_module(module: nn.Module, prefix: str, weights: dict[str, torch.Tensor], memo: dict[int, Any]) -> nn.Module:
    """The module rebuilt (as copy.deepcopy would) with the parameters named in `weights` replaced."""
    if id(module) in memo:
        return memo[id(module)]
    new = module.__class__.__new__(module.__class__)
    memo[id(module)] = new
    state = {key: _copy_value(value, memo) for key, value in module.__dict__.items() if key not in _OWN}
    params: dict[str, nn.Parameter | None] = {}
    for name, param in module._parameters.items():
        if param is None or id(param) in memo:
            params[name] = None if param is None else memo[id(param)]
        elif prefix + name in weights:
            params[name] = memo[id(param)] = nn.Parameter(weights[prefix + name], param.requires_grad)
        else:
            params[name] = copy.deepcopy(param, memo)
    state["_parameters"] = params
    state["_buffers"] = {name: copy.deepcopy(b, memo) for name, b in module._buffers.items()}
    state["_modules"] = {name: None if child is None else _copy_module(child, f"{prefix}{name}.", weights, memo)
                         for name, child in module._modules.items()}
    new.__setstate__(state)
    return new


def with_weights(template: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `template` whose parameters named in `weights` (state_dict names) hold those values.

    Equal to `net = copy.deepcopy(template); net.load_state_dict({**template.state_dict(), **weights})`:
    every other parameter and buffer is copied, flags and hooks are deepcopy's. Each given tensor is
    cast to its parameter's dtype and laid out as it (load_state_dict copies into the old layout);
    a tensor already so is taken over without a copy, so the caller must not keep using it.
    Refuses (ValueError) names that are not parameters of the template and shapes that differ.
    """
    own = dict(template.named_parameters(remove_duplicate=False))
    ready: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name not in own or own[name].shape != tensor.shape:
            raise ValueError(f"'{name}' is not a parameter of the template of shape {tuple(tensor.shape)}")
        param = own[name]
        if tensor.dtype != param.dtype or tensor.device != param.device or tensor.stride() != param.stride():
            tensor = torch.empty_like(param, requires_grad=False).copy_(tensor)
        ready[name] = tensor.detach() if tensor.requires_grad else tensor
    return _copy_module(template, "", ready, {})


def copy_with(template: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """`with_weights`, or deepcopy + load_state_dict where it refuses (buffers among `weights`, a masked template)."""
    try:
        return with_weights(template, weights)
    except ValueError:  # load_state_dict then takes what it can and says what is wrong
        net = copy.deepcopy(template)
        net.load_state_dict({**template.state_dict(), **weights})
        return net


def _bias_free_layer(model: nn.Module, name: str) -> nn.Module | None:
    """The conv/linear layer at module path `name` when it has no bias; None otherwise."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.bias is None:
        return module
    return None


def with_biases(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy of `model` in which the bias-free conv/linear layers at the module paths `names` have a zero bias.

    What REPAIR's `--repair-bias` gives a bias-free fused network, and what a cache entry holding one is
    loaded back into (state_dict names `<name>.bias`). Refuses (ValueError) a name that is not such a layer."""
    out = copy.deepcopy(model)
    for name in names:
        module = _bias_free_layer(out, name)
        if module is None:
            raise ValueError(f"'{name}' is not a convolution or linear layer without a bias")
        module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], dtype=module.weight.dtype,
                                               device=module.weight.device))
    return out


def gained_biases(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Module paths of the bias-free conv/linear layers of `model` for which `state` holds a bias."""
    own = model.state_dict()
    return [key[:-len(".bias")] for key in state if key.endswith(".bias") and key not in own
            and _bias_free_layer(model, key[:-len(".bias")]) is not None]
