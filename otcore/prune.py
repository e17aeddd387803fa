"""Magnitude pruning with torch.nn.utils.prune, sparsity reports, and compaction of pruned filters.

Pruned networks keep torch's masks attached (`weight_orig`, `weight_mask` and a forward pre-hook),
so masked retraining with `otcore.train.train` keeps pruned weights exactly zero; `finalize`
makes the zeros permanent and `compact` physically removes whole zero filters.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from otcore.config import STRUCTURED_OUTSIDE_ZOO, PruneSpec
from otcore.errors import PruneError
from otcore.models import INPUT, OUTPUT, FusableNet, count_parameters

_KINDS = {"conv": (nn.Conv2d,), "linear": (nn.Linear,), "all": (nn.Conv2d, nn.Linear)}


def _weight_layer_names(model: nn.Module) -> list[str]:
    """Module paths of the weight layers: `alignment_layers()` order, else every Conv2d/Linear."""
    if isinstance(model, FusableNet):
        return [layer.name for layer in model.alignment_layers()]
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _masked_names(module: nn.Module) -> list[str]:
    """Names of the module's own parameters that carry a pruning mask ('weight', 'bias')."""
    return [n[: -len("_orig")] for n in module._parameters
            if n.endswith("_orig") and hasattr(module, n[: -len("_orig")] + "_mask")]


def _effective(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter as the forward pass uses it: `orig * mask` when masked (fresh, not the cached attribute)."""
    if hasattr(module, name + "_mask"):
        return getattr(module, name + "_orig").detach() * getattr(module, name + "_mask")
    return getattr(module, name).detach()


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that also works on masked models (plain `copy.deepcopy` refuses them).

    A masked module's `weight` attribute is `weight_orig * mask`, a non-leaf tensor that deepcopy
    rejects; the copy gets a detached value instead, recomputed by the pruning hook on each forward.
    """
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name in _masked_names(module):
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor):
                memo[id(value)] = _effective(module, name).clone()
    return copy.deepcopy(model, memo)


def prunable_layers(model: FusableNet, scope: str, keep_last_layer: bool) -> list[str]:
    """Module paths of the Conv2d/Linear layers in `scope`, without the output layer if `keep_last_layer`."""
    if scope not in _KINDS:
        raise PruneError(f"prune scope must be one of {tuple(_KINDS)}, got '{scope}'")
    if not isinstance(model, FusableNet):  # a network from outside the zoo: its layers in the order they run
        names = forward_layers(model)
        return [n for n in (names[:-1] if keep_last_layer else names)
                if isinstance(model.get_submodule(n), _KINDS[scope])]
    out = []
    for layer in model.alignment_layers():
        if keep_last_layer and layer.out_group == OUTPUT:
            continue
        if isinstance(model.get_submodule(layer.name), _KINDS[scope]):
            out.append(layer.name)
    return out


def forward_layers(model: nn.Module) -> list[str]:
    """The Conv2d/Linear paths of a network outside the zoo in the order its forward calls them (the last
    writes the logits), found on a weightless copy run on the meta device with the model's `input_shape`."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise PruneError(f"cannot find the layer order of {type(model).__name__}: it has no input_shape")
    probe = copy.deepcopy(model).to("meta").eval()  # hooks go on a private copy, never on a shared model
    order: list[str] = []
    for name, module in probe.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda *_, name=name: order.append(name))
    with torch.no_grad():
        probe(torch.zeros((1, *shape), device="meta"))
    return list(dict.fromkeys(order))


def prune_model(model: FusableNet, spec: PruneSpec) -> FusableNet:
    """A pruned deep copy of `model`, masks attached; `model` itself is left untouched.

    Unstructured: the `fraction` of smallest |w| per layer (`prune.l1_unstructured`), or across all
    pruned layers together when `spec.global_` (`prune.global_unstructured`). Structured: the
    `fraction` of output filters / neurons with the smallest Ln norm (`prune.ln_structured`, n =
    `spec.norm`, dim 0), per layer; `global_` does not apply. A layer's bias entries of removed
    filters are masked too, so a removed neuron outputs exactly zero. Counts are rounded as torch
    does (round(fraction * size)). Layers writing a ResNet's residual stream are pruned each on its
    own, as torch does, so they may zero different channels of the same stream.
    """
    pruned = copy_model(model)
    if spec.fraction == 0:
        return pruned
    modules = [pruned.get_submodule(n) for n in prunable_layers(pruned, spec.scope, spec.keep_last_layer)]
    if not modules:
        return pruned
    if spec.type == "unstructured" and spec.global_:
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured,
                                  amount=spec.fraction)
    elif spec.type == "unstructured":
        for module in modules:
            prune.l1_unstructured(module, "weight", amount=spec.fraction)
    elif not isinstance(model, FusableNet):
        raise PruneError(STRUCTURED_OUTSIDE_ZOO)
    else:
        for module in modules:
            prune.ln_structured(module, "weight", amount=spec.fraction, n=spec.norm, dim=0)
            if module.bias is not None:
                kept = module.weight_mask.flatten(1).any(dim=1).to(module.bias.dtype)
                prune.custom_from_mask(module, "bias", mask=kept)
    return pruned


def mask_zeros(model: nn.Module, layers: list[str]) -> nn.Module:
    """A deep copy whose listed layers are masked exactly at their zeros (weight, and bias where present).

    For a net whose zeros came from elsewhere (the fusion of pruned parents): retraining it keeps
    those zeros, no more, no fewer (`prune.custom_from_mask`).
    """
    out = copy_model(model)
    for name in layers:
        module = out.get_submodule(name)
        for param in ("weight", "bias"):
            value = getattr(module, param, None)
            if isinstance(value, torch.Tensor) and not hasattr(module, param + "_mask"):
                prune.custom_from_mask(module, param, mask=(value.detach() != 0).to(value.dtype))
    return out


def is_pruned(model: nn.Module) -> bool:
    """Whether any submodule has a pruning mask attached."""
    return prune.is_pruned(model)


def finalize(model: nn.Module) -> nn.Module:
    """A deep copy with every mask made permanent (`prune.remove`): plain `weight` parameters, normal keys."""
    out = copy_model(model)
    for module in out.modules():
        for name in _masked_names(module):
            prune.remove(module, name)
    return out


def strip_masks_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the finalized model (masks applied, `_orig`/`_mask` keys gone), without copying the model."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            path, _, name = key[: -len("_orig")].rpartition(".")
            key = f"{path}.{name}" if path else name
            value = _effective(model.get_submodule(path), name)
        state[key] = value.detach().clone()
    return state


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros of one layer's effective weight; a filter is one output channel / neuron (row of dim 0)."""

    name: str  # module path
    kind: str  # 'conv' or 'linear'
    numel: int  # weights in the layer
    zeros: int  # weights exactly zero
    filters: int  # output filters / neurons
    zero_filters: int  # filters whose weights are all zero
    masked: bool  # a pruning mask is attached

    @property
    def fraction(self) -> float:
        """Fraction of the weights that are zero."""
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Sparsity per layer and over the reported layers, and nonzero parameters of the whole model."""

    layers: tuple[LayerSparsity, ...]
    numel: int  # weights over the reported layers
    zeros: int  # zeros over the reported layers
    overall_fraction: float  # zeros / numel over the reported layers
    params_total: int  # scalar parameters of the model as its forward uses them (masks not counted)
    params_nonzero: int  # of those, the nonzero ones: the parameter count after pruning


def sparsity_report(model: nn.Module, layers: list[str] | None = None) -> SparsityReport:
    """Zeros per layer of a masked or finalized model; `layers` defaults to every weight layer.

    Pass `prunable_layers(model, spec.scope, spec.keep_last_layer)` to report over the pruned layers only.
    """
    names = _weight_layer_names(model) if layers is None else list(layers)
    rows = []
    for name in names:
        module = model.get_submodule(name)
        weight = _effective(module, "weight")
        filter_zero = (weight.flatten(1) == 0).all(dim=1)
        rows.append(LayerSparsity(name=name, kind="conv" if isinstance(module, nn.Conv2d) else "linear",
                                  numel=weight.numel(), zeros=int((weight == 0).sum()),
                                  filters=weight.shape[0], zero_filters=int(filter_zero.sum()),
                                  masked=hasattr(module, "weight_mask")))
    numel = sum(r.numel for r in rows)
    zeros = sum(r.zeros for r in rows)
    params = strip_masks_state_dict(model)
    # Buffers (e.g. batch-norm statistics) are in the state dict but are not parameters.
    buffer_names = {n for n, _ in model.named_buffers() if not n.endswith("_mask")}
    values = [v for k, v in params.items() if k not in buffer_names]
    return SparsityReport(layers=tuple(rows), numel=numel, zeros=zeros,
                          overall_fraction=zeros / numel if numel else 0.0,
                          params_total=sum(v.numel() for v in values),
                          params_nonzero=sum(int((v != 0).sum()) for v in values))


@dataclass(frozen=True)
class CompactionReport:
    """A compacted network and the neuron groups that shrank, as group -> (width before, width after)."""

    model: FusableNet
    shrunk: dict[str, tuple[int, int]]
    params_before: int
    params_after: int


def _zero_filters(module: nn.Module) -> torch.Tensor:
    """Boolean mask over output filters whose weights (and bias) are all zero: their output is exactly 0."""
    zero = (module.weight.detach().flatten(1) == 0).all(dim=1)
    if module.bias is not None:
        zero &= module.bias.detach() == 0
    return zero


def _input_index(module: nn.Module, kept: torch.Tensor, width: int) -> torch.Tensor:
    """Input columns of a reader that belong to the kept channels of a group of `width` channels."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise PruneError("compaction of grouped convolutions is not supported")
        return kept
    # A Linear reading flattened (C, h, w) features owns one block of h*w columns per channel.
    block = module.in_features // width
    return (kept[:, None] * block + torch.arange(block)).flatten()


def _shrink(module: nn.Module, out_index: torch.Tensor | None, in_index: torch.Tensor | None) -> None:
    """Slice a finalized Conv2d/Linear in place to the given output rows and input columns."""
    weight = module.weight.detach()
    if out_index is not None:
        weight = weight[out_index]
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.detach()[out_index].clone())
    if in_index is not None:
        weight = weight[:, in_index]
    module.weight = nn.Parameter(weight.clone())
    if isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1]
    else:
        module.out_features, module.in_features = weight.shape[0], weight.shape[1]


def compact(model: FusableNet) -> CompactionReport:
    """A smaller dense copy of a (structurally) pruned network with its zero filters removed.

    A hidden channel is removed when every layer writing its group outputs exactly zero there
    (all-zero weight row and bias); the writers lose that output row and every reader the matching
    input columns (a block of h*w columns for a Linear reading flattened conv features). A
    residual-stream group thus shrinks only where all its writers zero the same channel. Outputs
    equal the masked network's because ReLU and pooling map zero to zero, as in every registered
    architecture. `model` is left untouched; the copy has no masks.
    """
    out = finalize(model)
    layers = out.alignment_layers()
    modules = {layer.name: out.get_submodule(layer.name) for layer in layers}
    kept: dict[str, torch.Tensor] = {}
    shrunk: dict[str, tuple[int, int]] = {}
    for group in dict.fromkeys(layer.out_group for layer in layers):
        if group in (INPUT, OUTPUT):
            continue
        writers = [modules[layer.name] for layer in layers if layer.out_group == group]
        zero = torch.stack([_zero_filters(m) for m in writers]).all(dim=0)
        if not zero.any():
            continue
        index = torch.nonzero(~zero).flatten()
        if index.numel() == 0:
            index = torch.zeros(1, dtype=torch.long)  # keep one (zero) channel: empty layers break shapes
        kept[group] = index
        shrunk[group] = (zero.numel(), index.numel())
    widths = {layer.out_group: modules[layer.name].weight.shape[0] for layer in layers}
    for layer in layers:
        module = modules[layer.name]
        out_index = kept.get(layer.out_group)
        in_index = kept.get(layer.in_group)
        if in_index is not None:
            if isinstance(module, nn.Conv2d) and any(isinstance(modules[w.name], nn.Linear)
                                                     for w in layers if w.out_group == layer.in_group):
                raise PruneError(f"cannot compact '{layer.name}': a convolution reading a linear layer")
            in_index = _input_index(module, in_index, widths[layer.in_group])
        if out_index is not None or in_index is not None:
            _shrink(module, out_index, in_index)
    return CompactionReport(model=out, shrunk=shrunk, params_before=count_parameters(model),
                            params_after=count_parameters(out))
