"""Weight matching over traced groups: updating a kept similarity term where a few channels moved gives the
plans that recomputing every term gives (otcore.fusion.group_matching)."""
from __future__ import annotations

import torch
import torchvision

from otcore.fusion import group_matching
from otcore.graph import trace_groups
from tests.test_graph import _noisy

SHAPE = (3, 32, 32)


def _plans(parent, anchor, graph_p, graph_a):
    return group_matching.weight_matching_group_plans(parent, anchor, graph_p, graph_a)


def test_partial_term_updates_give_the_plans_of_full_recomputation(monkeypatch):
    # Two independent squeezenets: the descent takes several sweeps, and fire modules concatenate two groups
    # along one axis (a term must ignore the other segment's moves on its own axis).
    torch.manual_seed(0)
    anchor = _noisy(torchvision.models.squeezenet1_1(num_classes=10), 1)
    torch.manual_seed(1)
    parent = _noisy(torchvision.models.squeezenet1_1(num_classes=10), 2)
    graph_a, graph_p = trace_groups(anchor, SHAPE), trace_groups(parent, SHAPE)
    partial_rows = []
    rows = group_matching._SlotTerm._rows
    monkeypatch.setattr(group_matching._SlotTerm, "_rows", lambda self, *a: partial_rows.append(1) or rows(self, *a))
    monkeypatch.setattr(group_matching, "PARTIAL_UPDATE_SHARE", 1.0)  # a partial update wherever one axis changed
    partial = _plans(parent, anchor, graph_p, graph_a)
    assert partial_rows  # the updates ran
    monkeypatch.setattr(group_matching, "PARTIAL_UPDATE_SHARE", 0.0)  # every changed term recomputed whole
    count = len(partial_rows)
    full = _plans(parent, anchor, graph_p, graph_a)
    assert len(partial_rows) == count
    moved = sum(int((plan.argmax(0) != torch.arange(len(plan))).sum()) for plan in full.values())
    assert moved > 0.5 * sum(len(plan) for plan in full.values())  # a real matching, not the identity
    assert full.keys() == partial.keys()
    for name in full:
        assert torch.equal(full[name], partial[name]), name
