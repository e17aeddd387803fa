"""The cache key of each step's result, known before any work and computed without importing torch.

A sweep or a CLI call answered from the cache finds its entries by these keys alone, so it never
pays for torch's import; the steps themselves (otcore.pipeline, otcore.analysis) use the same functions.
"""
from __future__ import annotations

from dataclasses import replace

from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, RetrainSpec, TrainSpec, spec_hash


def parent_key(data: DataSpec, model: ModelSpec, spec: TrainSpec) -> str:
    """Cache key of a parent trained with spec (its seed included)."""
    return spec_hash("parent", data, model, spec)


def fusion_key(data: DataSpec, model: ModelSpec, spec: FusionSpec, finetune: TrainSpec | None,
               parent_keys: list[str]) -> str:
    """Cache key of fuse_and_compare; fine-tuning's recipe is spec.retrain, so `finetune` is not keyed.

    Without fine-tuning the recipe changes nothing, so it is keyed at its default (one entry, not one per lr).
    """
    return spec_hash("fusion", data, model, spec if spec.finetune_epochs else replace(spec, retrain=RetrainSpec()),
                     parent_keys)


def prune_key(data: DataSpec, model: ModelSpec, prune: PruneSpec, fusion: FusionSpec, retrain: TrainSpec | None,
              parent_keys: list[str]) -> str:
    """Cache key of prune_and_compare; every retraining follows prune.retrain, so `retrain` is not keyed."""
    if prune.retrain_epochs == 0 and prune.retrain_parents_epochs == 0:
        prune = replace(prune, retrain=RetrainSpec())  # nothing is retrained: the recipe changes nothing
    return spec_hash("prune", data, model, prune, fusion_only(fusion), parent_keys)


def fusion_only(fusion: FusionSpec) -> FusionSpec:
    """The fusion settings without fine-tuning: the prune step retrains by its own spec."""
    return replace(fusion, finetune_epochs=0, retrain=RetrainSpec())


def hessian_key(data: DataSpec, spec: HessianSpec, network: str) -> str:
    """The cache key of one network's Hessian analysis (`network`: the network's own key)."""
    return spec_hash("hessian", data, spec, network)
