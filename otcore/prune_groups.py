"""Structured pruning and compaction of any traceable network through its traced channel groups.

A channel of a group is pruned in every tensor that holds it (otcore.graph's slots): the writers'
output rows, biases, BatchNorm weights, biases and running statistics, depthwise filters, layer
scales, squeeze-excitation gates and every reader's input columns. Parameters get
`torch.nn.utils.prune` masks, so masked retraining keeps them zero as for the zoo; buffers (running
statistics) get a mask beside them and a forward hook that re-zeroes them after each forward, since
training mode updates them. With every reader's columns zero a pruned channel cannot reach the logits,
whatever value it carries, so removing it (compaction) leaves the function unchanged.

Groups never pruned: the fixed ones (input, logits, channels whose order matters) and groups
normalised across their channels (LayerNorm over the channels, GroupNorm with fewer groups than
channels), whose statistics would change when a channel goes. Attention heads' groups are pruned (masked)
but never compacted: the attention's view reshapes them by a head size set in the module. Groups are ranked as Torch-Pruning's
group importance does: a channel's score is the sum over the group's writers of the Ln norm of its
output row.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils import prune

from otcore.errors import ModelError, PruneError
from otcore.graph import ChannelGroup, ModelGraph, Slot, declared_input_shape, trace_groups

LOGIT_TOLERANCE = 1e-4  # compaction must give the masked net's logits within this, relative to their scale


class BufferMask:
    """Forward hook re-zeroing masked buffers (running statistics) after a training-mode forward updated them.

    The buffer is replaced, not changed in place: batch norm saved the updated one for its backward."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def __call__(self, module: nn.Module, inputs, output) -> None:
        if module.training:
            with torch.no_grad():
                for name in self.names:
                    module._buffers[name] = module._buffers[name] * module._buffers[name + "_mask"]


def remove_buffer_masks(module: nn.Module) -> None:
    """Apply and drop a module's buffer masks and their hooks, in place."""
    for key, hook in list(module._forward_hooks.items()):
        if isinstance(hook, BufferMask):
            del module._forward_hooks[key]
            for name in hook.names:
                module._buffers[name] = module._buffers[name] * module._buffers.pop(name + "_mask")


def _mask_buffer(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    existing = module._buffers.get(name + "_mask")
    mask = mask if existing is None else mask * existing
    module.register_buffer(name + "_mask", mask)
    module._buffers[name].mul_(mask)
    if existing is None:
        module.register_forward_hook(BufferMask((name,)))


def input_shape_of(model: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input shape to trace with: the one given, else the network's own (external models carry it)."""
    shape = declared_input_shape(model, input_shape)
    if shape is None:
        raise PruneError("pruning this network by its channel groups needs its input shape (input_shape=(C, H, W))")
    return shape


def traced(model: nn.Module, input_shape: tuple[int, ...]) -> ModelGraph:
    """The groups of an unmasked network; a network the tracer refuses becomes one PruneError."""
    try:
        return trace_groups(model, input_shape)
    except ModelError as exc:
        raise PruneError(f"structured pruning needs the network's channel groups: {exc}") from None


def output_layers(model: nn.Module) -> list[str]:
    """Module paths of the Conv/Linear layers whose outputs reach the logits through weightless ops only.

    Read from a torch.fx trace of a private copy; a network fx cannot trace falls back to its last
    registered Conv2d/Linear (every torchvision and timm classifier registers its head last).
    """
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    try:
        module = fx.symbolic_trace(copy.deepcopy(model))
    except Exception:  # noqa: BLE001 - fx raises many kinds; the fallback below is documented
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return names[-1:]
    out, seen = [], set()
    stack = [n for n in module.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op == "call_module" and isinstance(module.get_submodule(node.target), kinds):
            out.append(node.target)
            continue
        stack.extend(node.all_input_nodes)
    return sorted(out)


def normalised_across(model: nn.Module, group: ChannelGroup) -> bool:
    """Whether a layer normalises the group's channels together (their count enters its statistics)."""
    for slot in group.slots:
        owner = model.get_submodule(slot.tensor.rpartition(".")[0])
        if isinstance(owner, nn.LayerNorm) or "RMSNorm" in type(owner).__name__ or (
                isinstance(owner, nn.GroupNorm) and owner.num_groups != owner.num_channels):
            return True
    return False


def positions(slot: Slot, channels: torch.Tensor) -> torch.Tensor:
    """Indices along the slot's axis of the given channels of its group (each repeated slot.repeat times)."""
    return (slot.offset + channels[:, None] * slot.repeat + torch.arange(slot.repeat)[None, :]).reshape(-1)


def _per_channel(tensor: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """The slot's entries as (size, -1): row c holds every entry of the group's channel c."""
    part = tensor.detach().movedim(slot.axis, 0)[slot.offset:slot.offset + size * slot.repeat]
    return part.reshape(size, -1)


def group_scores(state: dict[str, torch.Tensor], group: ChannelGroup, norm: int) -> torch.Tensor:
    """Per channel, the sum over the group's writers of the Ln norm of its output rows."""
    score = torch.zeros(group.size, dtype=torch.float64)
    for slot in group.slots:
        if slot.role == "writer":
            rows = _per_channel(state[slot.tensor], slot, group.size).double()
            score += torch.linalg.vector_norm(rows, ord=norm, dim=1).cpu()
    return score


def prunable_groups(model: nn.Module, graph: ModelGraph, kinds: tuple[type, ...]) -> list[ChannelGroup]:
    """Free groups with writers, all of the given layer kinds, whose channels are not normalised together."""
    out = []
    for group in graph.free():
        writers = group.writers()
        if writers and all(isinstance(model.get_submodule(w), kinds) for w in writers) \
                and not normalised_across(model, group):
            out.append(group)
    return out


def prune_groups(model: nn.Module, pruned: nn.Module, fraction: float, norm: int, kinds: tuple[type, ...],
                 input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Mask `pruned` (a copy of `model`) in place: round(fraction * size) lowest-scored channels of each group.

    A group keeps at least one channel (an empty tensor breaks the shapes). Returns group -> pruned channels.
    """
    graph = traced(model, input_shape)
    state = model.state_dict()
    masks: dict[str, torch.Tensor] = {}
    removed: dict[str, torch.Tensor] = {}
    for group in prunable_groups(model, graph, kinds):
        count = min(round(fraction * group.size), group.size - 1)
        if count <= 0:
            continue
        channels = torch.argsort(group_scores(state, group, norm), stable=True)[:count].sort().values
        removed[group.name] = channels
        for slot in group.slots:
            if slot.tensor not in masks:
                masks[slot.tensor] = torch.ones_like(state[slot.tensor])
            mask = masks[slot.tensor]
            mask.index_fill_(slot.axis, positions(slot, channels).to(mask.device), 0)
    for key, mask in masks.items():
        path, _, name = key.rpartition(".")
        owner = pruned.get_submodule(path)
        if name in owner._parameters:
            prune.custom_from_mask(owner, name, mask=mask)
        else:
            _mask_buffer(owner, name, mask)
    return removed


def zero_channels(state: dict[str, torch.Tensor], group: ChannelGroup,
                  nonzero: dict[tuple[str, int], torch.Tensor]) -> torch.Tensor:
    """Boolean per channel: zero in every slot of the group (so no reader sees it, and it feeds nothing).

    `nonzero` memoises, per (tensor, axis), which indices along the axis hold a nonzero entry.
    """
    zero = torch.ones(group.size, dtype=torch.bool)
    for slot in group.slots:
        key = (slot.tensor, slot.axis)
        if key not in nonzero:
            tensor = state[slot.tensor].detach()
            others = tuple(d for d in range(tensor.dim()) if d != slot.axis)
            nonzero[key] = (tensor != 0).any(dim=others).cpu() if others else (tensor != 0).cpu()
        zero &= ~nonzero[key][positions(slot, torch.arange(group.size))].reshape(group.size, -1).any(dim=1)
    return zero


def _set_attributes(module: nn.Module, before: dict[str, tuple[int, ...]]) -> None:
    """Update a resized module's size attributes from its new tensors (`before`: the old shapes)."""
    # Imported here: otcore.fusion's package imports otcore.device, which imports this module's importer (prune).
    from otcore.fusion.resize import set_size_attributes

    set_size_attributes(module, before, PruneError)


def compact_groups(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Remove in place, from an unmasked network, every channel zero in all slots of its group.

    Returns group -> (width before, width after) for the groups that shrank. The compacted network's
    logits are checked against the network's on a random batch; a mismatch (a layer outside the traced
    groups sized by a removed channel) raises a PruneError rather than returning a different function.
    """
    graph = traced(model, input_shape)
    state = model.state_dict()
    keep: dict[tuple[str, int], torch.Tensor] = {}
    nonzero: dict[tuple[str, int], torch.Tensor] = {}
    shrunk: dict[str, tuple[int, int]] = {}
    for group in graph.free():
        if normalised_across(model, group) or group.heads > 1:  # attention views heads by a fixed head size
            continue
        zero = zero_channels(state, group, nonzero)
        if not zero.any():
            continue
        if zero.all():
            zero[0] = False  # keep one (zero) channel: empty layers break shapes
        gone = torch.nonzero(zero).flatten()
        shrunk[group.name] = (group.size, group.size - gone.numel())
        for slot in group.slots:
            key = (slot.tensor, slot.axis)
            if key not in keep:
                keep[key] = torch.ones(state[slot.tensor].shape[slot.axis], dtype=torch.bool)
            keep[key][positions(slot, gone)] = False
    if not shrunk:
        return shrunk
    was_training = model.training
    model.eval()
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    param = next(model.parameters(), None)
    x = x.to(param.device if param is not None else "cpu")
    with torch.no_grad():
        reference = model(x)
    changed: dict[str, dict[str, tuple[int, ...]]] = {}
    for (key, axis), mask in keep.items():
        path, _, name = key.rpartition(".")
        owner = model.get_submodule(path)
        store = owner._parameters if name in owner._parameters else owner._buffers
        old = store[name]
        changed.setdefault(path, {}).setdefault(name, tuple(old.shape))
        new = old.detach().index_select(axis, torch.nonzero(mask).flatten().to(old.device)).clone()
        store[name] = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
    for path, before in changed.items():
        _set_attributes(model.get_submodule(path), before)
    try:
        with torch.no_grad():
            logits = model(x)
    except RuntimeError as exc:
        raise PruneError(f"the compacted network does not run: {str(exc).splitlines()[0][:200]}") from None
    error = float((logits - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    if error > LOGIT_TOLERANCE:
        raise PruneError(f"compaction changed the logits by {error:.1e} (relative): a layer outside the traced "
                         "groups depends on the removed channels")
    model.train(was_training)
    return shrunk
