"""The pipeline calls of the pages, memoised per server: named after what they return, not the backend's verbs.

Each takes the workspace and the parents, keys itself by their specs, draws its progress, and
returns what `otcore` returns (shared by every session: read it, never mutate it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

import streamlit as st

from otcore import analysis, figures, pipeline
from otcore.cache import default_cache
from otcore.checkpoints import CheckpointError
from otcore.config import FusionSpec, HessianSpec, PruneSpec, SpecError, TrainSpec, spec_hash
from otcore.device import resolve_device
from ui.memo import ProgressBar, is_memoised, memo
from ui.state import ANALYSED, FUSION_REQUEST, PRUNE_REQUEST, STUDY, ParentSet, Study, Workspace, current


def trained_parents(ws: Workspace, container: Any = None) -> ParentSet:
    """The workspace's parents, one per seed: from memory, the disk cache, or trained with a progress bar."""
    key = spec_hash("ui-parents", ws.data, ws.model, ws.train, list(ws.seeds), ws.device)
    bar = ProgressBar(f"loading {ws.data.name}, then training {len(ws.seeds)} parents (or reading them from the "
                      "cache)", container)
    try:
        parents, _ = memo("parents", key, lambda: pipeline.train_parents(
            ws.data, ws.model, ws.train, list(ws.seeds), ws.device, bar))
    finally:
        bar.close()
    return ParentSet(list(parents), ws.data, ws.model, ws.device, "trained", ws.train, ws.seeds)


def loaded_parents(ws: Workspace, files: Sequence[Any], container: Any = None) -> ParentSet:
    """Parents from uploaded checkpoint files (validated, never executed), in upload order."""
    parents = []
    bar = ProgressBar(f"loading {len(files)} checkpoints", container)
    try:
        for i, upload in enumerate(files):
            bar(f"checking {upload.name}", i / len(files))
            content = upload.getvalue()
            name = f"parent {i + 1}"
            key = spec_hash("ui-upload", ws.data, ws.model, [hashlib.sha256(content).hexdigest(), name, ws.device])
            try:
                parent, _ = memo("upload", key, lambda: pipeline.load_parent(content, ws.data, ws.model, name,
                                                                              ws.device))
            except CheckpointError as err:
                raise CheckpointError(f"{upload.name}: {err}") from None
            parents.append(dataclasses.replace(parent, source=upload.name))  # a new record, same network
    finally:
        bar.close()
    return ParentSet(parents, ws.data, ws.model, ws.device, "uploaded", TrainSpec(), ())


@dataclass
class FusionRun:
    """A fusion comparison and how it was obtained; shared by every session asking the same."""

    comparison: Any  # otcore.pipeline.Comparison
    device: str  # where this server ran it
    source: str  # 'computed now' or 'from the disk cache'
    wall_s: float  # seconds the call took
    created: float = field(default_factory=time.time)


def fusion_run(ws: Workspace, parent_set: ParentSet, spec: FusionSpec) -> tuple[FusionRun, bool]:
    """(run, fresh): the comparison of every method for a fusion spec; fresh is False when from memory."""
    key = spec_hash("ui-fusion", parent_set.data, parent_set.model, spec, ws.train, list(parent_set.keys),
                    ws.device)

    def compute() -> FusionRun:
        bar = ProgressBar("fusing", None)
        start = time.perf_counter()
        try:
            comparison = pipeline.fuse_and_compare(parent_set.data, parent_set.model, parent_set.parents, spec,
                                                   ws.train, ws.device, bar)
        finally:
            bar.close()
        return FusionRun(comparison, str(resolve_device(ws.device)),
                         "from the disk cache" if comparison.cached else "computed now", time.perf_counter() - start)

    return memo("fusion", key, compute)



def fusion_setting(parent_set: ParentSet) -> tuple[FusionSpec, str]:
    """The Fusion page's last setting for these parents, else the defaults; and which of the two it is."""
    request = current(FUSION_REQUEST, parent_set)
    if request is not None:
        return request.spec, "the Fusion page's setting"
    return FusionSpec(), "the default fusion options"


def prune_run(ws: Workspace, parent_set: ParentSet, prune_spec: PruneSpec,
              fusion_spec: FusionSpec) -> tuple[FusionRun, bool]:
    """(run, fresh): every method at one prune setting; fresh is False when from memory."""
    key = spec_hash("ui-prune", parent_set.data, parent_set.model, prune_spec, fusion_spec, ws.train,
                    list(parent_set.keys), ws.device)

    def compute() -> FusionRun:
        bar = ProgressBar(f"pruning {100 * prune_spec.fraction:.0f} % ({prune_spec.type}), fusing, scoring", None)
        start = time.perf_counter()
        try:
            comparison = pipeline.prune_and_compare(parent_set.data, parent_set.model, parent_set.parents,
                                                    prune_spec, fusion_spec, ws.train, ws.device, bar)
        finally:
            bar.close()
        return FusionRun(comparison, str(resolve_device(ws.device)),
                         "from the disk cache" if comparison.cached else "computed now", time.perf_counter() - start)

    return memo("prune", key, compute)


def prune_sweep_points(ws: Workspace, parent_set: ParentSet, prune_spec: PruneSpec, fusion_spec: FusionSpec,
                fractions: Sequence[float]) -> list:
    """prune_and_compare at each fraction (each point cached on disk), with a progress bar per point."""
    fractions = sorted(set(float(f) for f in fractions))
    key = spec_hash("ui-prune-sweep", parent_set.data, parent_set.model, prune_spec, fusion_spec, ws.train,
                    list(parent_set.keys), fractions, ws.device)

    def compute() -> list:
        bar = ProgressBar(f"sweep over {len(fractions)} prune fractions (cached points return at once)", None)
        try:
            return pipeline.prune_sweep(parent_set.data, parent_set.model, parent_set.parents, prune_spec,
                                        fusion_spec, fractions, ws.train, ws.device, bar)
        finally:
            bar.close()

    return memo("prune-sweep", key, compute)[0]



def studies(parent_set: ParentSet) -> dict[str, Study]:
    """The comparisons on offer: the Fusion page's (or the default fusion), and the Pruning page's current one."""
    fusion, origin = fusion_setting(parent_set)
    out = {"fusion": Study(fusion, None, origin)}
    request = current(PRUNE_REQUEST, parent_set)
    if request is not None:
        out["pruning"] = Study(request.fusion, request.prune, "the Pruning page's setting")
    return out


def choose_study(ws: Workspace, parent_set: ParentSet, container: Any) -> tuple[Study, Any]:
    """A select box of the studies on offer, and the chosen study's comparison (memoised, computed if needed)."""
    options = studies(parent_set)
    if st.session_state.get(STUDY) not in options:
        st.session_state[STUDY] = "fusion"
    titles = {"fusion": "Fusion page", "pruning": f"Pruning page ({options['pruning'].label})" if "pruning" in options
              else "Pruning page"}
    choice = container.selectbox("Networks of", list(options), format_func=titles.get, key=STUDY,
                                 help="the comparison whose networks are analysed: the Fusion page's setting (its "
                                      "defaults until you fuse there), or the Pruning page's current fraction")
    study = options[choice]
    return study, study_comparison(ws, parent_set, study)


def study_comparison(ws: Workspace, parent_set: ParentSet, study: Study) -> Any:
    """The comparison of a study: the fusion, or the prune setting's (memoised, computed if needed)."""
    if study.prune is None:
        return fusion_run(ws, parent_set, study.fusion)[0].comparison
    return prune_run(ws, parent_set, study.prune, study.fusion)[0].comparison



def single_networks(comparison: Any) -> list[str]:
    """Methods of a comparison that are one network (the prediction ensemble has no single Hessian)."""
    return [r.method for r in comparison.rows if r.model is not None]


def curvatures_of(ws: Workspace, parent_set: ParentSet, study: Study, rows: Sequence[Any], spec: HessianSpec) -> list:
    """The Hessian analysis of each row's network (memoised, cached on disk), recorded for the sharpness scatter."""
    key = spec_hash("ui-hessian", parent_set.data, spec, [r.key for r in rows], ws.device)

    def compute() -> list:
        bar = ProgressBar(f"Hessian of {len(rows)} networks: top eigenvalues, trace, spectral density", None)
        try:
            return analysis.curvatures(parent_set.data, list(rows), spec, ws.device, bar)
        finally:
            bar.close()

    result, _ = memo("hessian", key, compute)
    records = st.session_state.setdefault(ANALYSED, {}).setdefault(parent_set.keys, {})
    for c in result:
        records[c.key] = figures.curvature_record(c, study.label, study.fraction)
    return result


def analysed(parent_set: ParentSet) -> list[dict]:
    """Every network of these parents' studies analysed in this session (figures.curvature_record each)."""
    return list(st.session_state.get(ANALYSED, {}).get(parent_set.keys, {}).values())


def interpolation_of(ws: Workspace, parent_set: ParentSet, path: Sequence[Any], spec: HessianSpec, points: int) -> dict:
    """Loss along the straight path through the networks and its barrier (memoised, cached on disk)."""
    key = spec_hash("ui-interpolation", parent_set.data, spec, [r.key for r in path], points, ws.device)
    return memo("interpolation", key, lambda: analysis.interpolation(parent_set.data, list(path), spec, points,
                                                                     ws.device))[0]


def surface_of(ws: Workspace, parent_set: ParentSet, row: Any, spec: HessianSpec, directions: str, span: float,
            points: int) -> dict:
    """Loss on a plane through one network (memoised, cached on disk), with a spinner while it computes."""
    key = spec_hash("ui-surface", parent_set.data, spec, row.key, directions, span, points, ws.device)

    def compute() -> dict:
        with st.spinner(f"loss on a {points} × {points} grid around {row.method}"):
            return analysis.surface(parent_set.data, row, spec, directions, span, points, ws.device)

    return memo("surface", key, compute)[0]



def prune_is_ready(ws: Workspace, parent_set: ParentSet, prune_spec: PruneSpec, fusion_spec: FusionSpec) -> bool:
    """Whether prune_run would return at once: in this server's memo, or its comparison in the disk cache."""
    key = spec_hash("ui-prune", parent_set.data, parent_set.model, prune_spec, fusion_spec, ws.train,
                    list(parent_set.keys), ws.device)
    if is_memoised("prune", key):
        return True
    disk_key = pipeline.prune_key(parent_set.data, parent_set.model, prune_spec, fusion_spec, ws.train,
                                  list(parent_set.keys))
    return default_cache().load_record(disk_key) is not None  # the record only: the weights load when used


def retraining_study(options: Sequence[str]) -> list[str]:
    """The parents, the fused net and its retrained versions among options; a SpecError when none was retrained."""
    networks = figures.retraining_networks(options)
    if not networks:
        raise SpecError("this study has no retrained fused net: fine-tune it on the Fusion page or retrain it on the "
                        "Pruning page")
    return networks
