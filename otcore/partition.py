"""Which examples of the train split each parent sees: the reference code's data partitions.

The reference implementation (`partition.py` of Singh & Jaggi's code) trains its parents on
different parts of MNIST to show that fusion transfers skills no single parent has:
- `labels`: the first parent sees a subset of the classes, the second the others;
- `personalized`: the first parent sees every example of one class plus a share of the others,
  the second the rest (never that class);
- `small_big`: the first parent sees a random share of the split, the second the rest.
`iid` gives every parent the whole split (each differs by its seed only).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from otcore.config import SpecError, TrainSpec

if TYPE_CHECKING:  # the figures read own_classes without torch (a cached `table` command never imports it)
    import torch

PARTS = 2  # every non-iid partition splits the split between two parents, as the reference's


def _check_class(cls: int, num_classes: int, what: str) -> None:
    if cls >= num_classes:
        raise SpecError(f"{what} {cls} does not exist: the dataset has classes 0 to {num_classes - 1}")


def own_classes(spec: TrainSpec, num_classes: int) -> list[list[int]]:
    """The classes each part was trained on (every class for iid and small_big), one list per part."""
    every = list(range(num_classes))
    if spec.partition == "labels":
        first = labels_of_first(spec, num_classes)
        return [first, [c for c in every if c not in first]]
    if spec.partition == "personalized":
        _check_class(spec.personal_class, num_classes, "personal class")
        return [every, [c for c in every if c != spec.personal_class]]
    return [every] * (PARTS if spec.partition != "iid" else 1)


def labels_of_first(spec: TrainSpec, num_classes: int) -> list[int]:
    """The first parent's classes under 'labels': the spec's, or the even classes when it names none."""
    classes = list(spec.partition_classes) or list(range(0, num_classes, 2))
    for c in classes:
        _check_class(c, num_classes, "partition class")
    if len(classes) >= num_classes:
        raise SpecError(f"partition classes {classes} leave no class for the second parent")
    return sorted(classes)


def part_indices(y: torch.Tensor, spec: TrainSpec, num_classes: int) -> torch.Tensor:
    """Sorted indices into the labels y (N,) of the examples part `spec.part` of the partition trains on."""
    import torch

    n = len(y)
    if spec.partition == "iid":
        return torch.arange(n)
    generator = torch.Generator().manual_seed(spec.partition_seed)
    if spec.partition == "labels":
        first = torch.isin(y.cpu(), torch.tensor(labels_of_first(spec, num_classes)))
        chosen = first if spec.part == 0 else ~first
        return torch.nonzero(chosen).flatten()
    if spec.partition == "personalized":
        _check_class(spec.personal_class, num_classes, "personal class")
        personal = y.cpu() == spec.personal_class
        others = torch.nonzero(~personal).flatten()
        others = others[torch.randperm(len(others), generator=generator)]
        shared = math.ceil(spec.partition_fraction * len(others))  # as the reference: ceil(frac * others)
        if spec.part == 0:
            return torch.cat([torch.nonzero(personal).flatten(), others[:shared]]).sort().values
        return others[shared:].sort().values
    order = torch.randperm(n, generator=generator)  # small_big
    small = math.ceil(spec.partition_fraction * n)
    return (order[:small] if spec.part == 0 else order[small:]).sort().values


def class_counts(y: torch.Tensor, num_classes: int) -> list[int]:
    """How many examples of each class the labels y hold."""
    import torch

    return torch.bincount(y.cpu(), minlength=num_classes).tolist()
