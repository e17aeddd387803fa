"""The cache key of each step's result, known before any work and computed without importing torch.

A sweep or a CLI call answered from the cache finds its entries by these keys alone, so it never
pays for torch's import; the steps themselves (otcore.pipeline, otcore.analysis) use the same functions.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from otcore.config import (DATASET_SHAPES, DATASETS, DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, RetrainSpec,
                           TrainSpec, arch_family, spec_dict, spec_hash)


# What training does beyond SGD to networks from outside the zoo (the zoo has no batch norms): part of their keys,
# so a result computed before it changed is never read as one computed after (otcore.train.settle_batch_norms).
OUTSIDE_TRAINING = "batch norms settled on the training examples"


def keyed_model(data: DataSpec, model: ModelSpec) -> ModelSpec | dict[str, Any]:
    """The model as a key holds it: the zoo's spec as it is (their keys never change); for a network from
    outside the zoo, its spec (with a file:'s source hash) and the digest of its traced structure on the
    dataset's shape (imports torch and traces once per process; ModelError if the tracer refuses it)."""
    if arch_family(model.arch) == "zoo":
        return model
    from otcore.arch_structure import structure_digest

    return {**spec_dict(model), "structure": structure_digest(model, *DATASET_SHAPES[data.name]),
            "training": OUTSIDE_TRAINING}


def outside_structures(datasets: list[str], archs: list[str]) -> list[list[str]]:
    """[dataset, arch, source hash, structure digest] of every architecture from outside the zoo on every dataset
    (empty when all are the zoo's: their keys stay as they were)."""
    outside = sorted({a for a in archs if arch_family(a) != "zoo"})
    if not outside:
        return []
    from otcore.arch_structure import structure_digest

    names = sorted({d for d in datasets if d in DATASETS})
    specs = [ModelSpec(a) for a in outside]  # a file:'s source hash too
    return [[d, m.arch, m.source, structure_digest(m, *DATASET_SHAPES[d])] for d in names for m in specs]


def parent_key(data: DataSpec, model: ModelSpec, spec: TrainSpec) -> str:
    """Cache key of a parent trained with spec (its seed included)."""
    return spec_hash("parent", data, keyed_model(data, model), spec)


def fusion_key(data: DataSpec, model: ModelSpec, spec: FusionSpec, finetune: TrainSpec | None,
               parent_keys: list[str]) -> str:
    """Cache key of fuse_and_compare; fine-tuning's recipe is spec.retrain, so `finetune` is not keyed.

    Without fine-tuning the recipe changes nothing, so it is keyed at its default (one entry, not one per lr).
    """
    return spec_hash("fusion", data, keyed_model(data, model),
                     spec if spec.finetune_epochs else replace(spec, retrain=RetrainSpec()), parent_keys)


def prune_key(data: DataSpec, model: ModelSpec, prune: PruneSpec, fusion: FusionSpec, retrain: TrainSpec | None,
              parent_keys: list[str]) -> str:
    """Cache key of prune_and_compare; every retraining follows prune.retrain, so `retrain` is not keyed."""
    if prune.retrain_epochs == 0 and prune.retrain_parents_epochs == 0:
        prune = replace(prune, retrain=RetrainSpec())  # nothing is retrained: the recipe changes nothing
    return spec_hash("prune", data, keyed_model(data, model), prune, fusion_only(fusion), parent_keys)


def fusion_only(fusion: FusionSpec) -> FusionSpec:
    """The fusion settings without fine-tuning: the prune step retrains by its own spec."""
    return replace(fusion, finetune_epochs=0, retrain=RetrainSpec())


# The Hessian step's own format, past CACHE_FORMAT, so that bumping it leaves every other step's keys alone.
# 2: Lanczos cleans q_j with w (issue 24): nodes and weights move by rounding, top eigenpairs too.
HESSIAN_FORMAT = 2


def hessian_key(data: DataSpec, spec: HessianSpec, network: str) -> str:
    """The cache key of one network's Hessian analysis (`network`: the network's own key)."""
    return spec_hash("hessian", data, spec, network, {"hessian_format": HESSIAN_FORMAT})
