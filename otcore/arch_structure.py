"""An architecture's traced structure, read once per (architecture, input shape, classes) and memoised.

Networks from outside the zoo change with their library's version (or, for `file:`, with the user's
code), so their cache keys hold the digest of the channel groups the tracer reads (otcore.graph), and
a `file:` network's keys hold its source file's hash as well. Tracing is pure: the same arguments
always give the same graph, so one process traces each architecture once. The network is built on
the meta device: no memory for weights and no draw from torch's global random generator.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from otcore.config import ModelSpec
from otcore.graph import ModelGraph, trace_groups
from otcore.models import build_model


@lru_cache(maxsize=64)
def _traced(arch: str, input_shape: tuple[int, ...], num_classes: int, source: str) -> ModelGraph:
    with torch.device("meta"):
        model = build_model(arch, input_shape, num_classes)
    return trace_groups(model, input_shape)


def traced_structure(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> ModelGraph:
    """The channel groups of `model` on inputs of `input_shape` (ModelError when the tracer refuses it).

    Memoised by the spec's architecture and source hash (a `file:` network whose code changed is traced again)."""
    return _traced(model.arch, tuple(int(d) for d in input_shape), int(num_classes), model.source)


def structure_digest(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> str:
    """The digest of `model`'s traced channel groups: what every key a network of it feeds holds."""
    return traced_structure(model, input_shape, num_classes).digest
