"""Alignment groups read from the model itself: which channels must move together.

A network's function is unchanged when the channels of a hidden tensor are reordered and every
tensor that writes, reads or scales those channels is reordered with them (Git Re-Basin's
permutation spec; Torch-Pruning's dependency groups). This module traces a model once with
torch.fx, propagates a channel layout through every node, and returns the groups:

- a Conv/Linear output opens a group: its weight's axis 0 writes it, its bias follows it;
- BatchNorm/LayerNorm/GroupNorm(1 or C groups) parameters and running statistics follow it;
- elementwise sums and products join the groups they combine (residual streams, squeeze-excitation
  gates), a depthwise convolution keeps its input's group, a concatenation lays its parts side by
  side, a flatten after a CxHxW map repeats each channel H*W times for the reader;
- the input's and the logits' channels are fixed; so are channels whose order a layer depends on
  (grouped convolutions with 1 < groups < channels, channel shuffles, slices): fixing a group is
  always sound, it only means that group is averaged without alignment.

A node the tracer cannot follow is refused with a ModelError naming it.
"""
from __future__ import annotations

import copy
import hashlib

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from otcore.errors import ModelError
from otcore.graph_tracer import Tracer
from otcore.graph_types import FIXED, ChannelGroup, ModelGraph, Slot

__all__ = ["FIXED", "ChannelGroup", "ModelGraph", "Slot", "permute_state", "permutation_index", "trace_groups"]


def declared_input_shape(model: nn.Module, given: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """The shape of one input to trace with: `given`, else the network's own `input_shape` (external models
    carry it), else None."""
    shape = given if given is not None else getattr(model, "input_shape", None)
    return None if shape is None else tuple(shape)


def trace_groups(model: nn.Module, input_shape: tuple[int, ...]) -> ModelGraph:
    """The model's channel groups, read by tracing a private eval-mode copy on one zero input."""
    private = copy.deepcopy(model).eval()  # tracing runs forward: never on the caller's (shared) model
    try:
        module = fx.symbolic_trace(private)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; the message names the cause
        raise ModelError(f"cannot trace the model with torch.fx: {str(exc).splitlines()[0][:200]}") from None
    param = next(private.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    module.to("meta")  # shapes only: no arithmetic, no memory for activations
    with torch.no_grad():
        ShapeProp(module).propagate(torch.zeros((1, *input_shape), dtype=dtype, device="meta"))
    tracer = Tracer(module, module.state_dict())
    tracer.run()
    groups = tracer.groups()
    # Attention's fields only where set: every other network's digest (in its cache keys) stays as it was.
    structure = repr([(g.name, g.size, g.fixed, g.node, g.node_dim,
                       [(s.tensor, s.axis, s.offset, s.repeat, s.role) for s in g.slots])
                      + ((g.node_offset, g.heads, g.heads_with) if g.node_offset or g.heads else ()) for g in groups])
    return ModelGraph(groups, hashlib.sha256(structure.encode()).hexdigest()[:16])


def permutation_index(length: int, slot: Slot, perm: torch.Tensor) -> torch.Tensor:
    """Indices along a slot's axis that move its group's channels by `perm` (new channel i = old perm[i])."""
    index = torch.arange(length)
    repeat = slot.repeat
    block = perm[:, None] * repeat + torch.arange(repeat)[None, :]
    index[slot.offset:slot.offset + perm.numel() * repeat] = slot.offset + block.reshape(-1)
    return index


def permute_state(state: dict[str, torch.Tensor], graph: ModelGraph,
                  perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A new state_dict with each free group's channels reordered by its permutation."""
    out = type(state)(state)
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata  # per-module versions some loaders read (torchvision's MNASNet)
    for group in graph.free():
        perm = perms.get(group.name)
        if perm is None:
            continue
        for slot in group.slots:
            tensor = out[slot.tensor]
            out[slot.tensor] = tensor.index_select(slot.axis, permutation_index(tensor.shape[slot.axis], slot, perm)
                                                   .to(tensor.device))
    return out
