"""What the pages share through st.session_state: the workspace's specs, the parents, the page requests.

Requests are frozen dataclasses (never positional tuples): a page stores what its button asked for,
and other pages read it by field name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import streamlit as st

from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec
from otcore.device import resolve_device

PARENTS = "parents"  # session key of the loaded ParentSet, shared by every page
FUSION_REQUEST = "fusion.request"  # FusionRequest: the Fusion page's last press of Fuse
PRUNE_REQUEST = "pruning.request"  # PruneRequest: the Pruning page's last Prune
STUDY = "analysis.study"  # which comparison the Hessian and Landscape pages analyse (one choice for both)
ANALYSED = "hessian.analysed"  # parent keys -> network key -> curvature_record, for every network analysed

# Widget keys of the sidebar workspace, named after the spec fields they fill.
K_DATASET, K_ROOT, K_ARCH, K_DEVICE = "ws.dataset", "ws.root", "ws.arch", "ws.device"
K_COUNT, K_SEED, K_EPOCHS = "ws.n_parents", "ws.first_seed", "ws.epochs"
K_UPLOADS, K_LOAD = "ws.uploads", "ws.load"
K_PARTITION, K_CLASSES, K_PERSONAL = "ws.partition", "ws.partition_classes", "ws.personal_class"
K_FRACTION, K_PARTITION_SEED = "ws.partition_fraction", "ws.partition_seed"
K_FAMILY, K_ARCH_SEARCH = "ws.arch_family", "ws.arch_search"  # the architecture's family and timm's search text
K_LIBRARY_ARCH = {"torchvision": "ws.arch.torchvision", "timm": "ws.arch.timm"}  # the name picked in each library
WORKSPACE_DEFAULTS: dict[str, Any] = {K_DATASET: "digits", K_ROOT: "", K_ARCH: "mlpnet", K_DEVICE: "auto",
                                      K_COUNT: 2, K_SEED: 0, K_EPOCHS: TrainSpec().epochs,
                                      K_PARTITION: "iid", K_CLASSES: "", K_PERSONAL: TrainSpec().personal_class,
                                      K_FRACTION: TrainSpec().partition_fraction, K_PARTITION_SEED: 0,
                                      K_FAMILY: "zoo", K_ARCH_SEARCH: "resnet", K_LIBRARY_ARCH["torchvision"]: "resnet18",
                                      K_LIBRARY_ARCH["timm"]: "resnet10t"}


@dataclass(frozen=True)
class Workspace:
    """What the sidebar says: the specs every page computes with."""

    data: DataSpec
    model: ModelSpec
    device: str  # 'auto', 'cpu' or 'cuda'
    seeds: tuple[int, ...]  # one trained parent per seed
    train: TrainSpec  # training of the parents (and of fine-tuning, with its own epochs)


@dataclass
class ParentSet:
    """The parents of the session: shared objects from the memo, never mutated."""

    parents: list  # list[otcore.pipeline.Parent]
    data: DataSpec
    model: ModelSpec
    device: str
    origin: str  # 'trained' or 'uploaded'
    train: TrainSpec
    seeds: tuple[int, ...] = ()

    def fits(self, ws: Workspace) -> bool:
        """Whether these parents belong to the workspace's dataset and architecture."""
        return self.data == ws.data and self.model == ws.model

    @property
    def device_label(self) -> str:
        """The device choice and, for 'auto', what it resolved to."""
        return device_label(self.device)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.parents)

    def describe(self) -> str:
        """One line: how many, where from, on what."""
        split = "" if self.train.partition == "iid" else f", '{self.train.partition}' partition"
        where = (f"trained, seeds {', '.join(map(str, self.seeds))}, {self.train.epochs} epochs{split}"
                 if self.origin == "trained" else "loaded from " + ", ".join(p.source for p in self.parents))
        return f"{len(self.parents)} parents of {self.model.arch} on {self.data.name} ({where})"


def device_label(choice: str) -> str:
    """'auto (cpu)', 'cpu', 'cuda': the device choice and what it means on this server."""
    if choice != "auto":
        return choice
    return f"auto ({resolve_device('auto').type})"


def init_state(defaults: dict[str, Any]) -> None:
    """Give widget keys their defaults, and keep values set on another page.

    Streamlit drops a widget's value when a page without that widget runs; writing the value
    back before the widget is drawn keeps it (the pattern of Streamlit's multipage docs).
    """
    for key, default in defaults.items():
        st.session_state[key] = st.session_state.get(key, default)


@dataclass(frozen=True)
class FusionRequest:
    """The Fusion page's last press of Fuse."""

    spec: FusionSpec
    parent_keys: tuple[str, ...]  # the parents it was asked for (another set makes it stale)


@dataclass(frozen=True)
class PruneRequest:
    """The Pruning page's last press of Prune, and the fusion setting it fused with."""

    prune: PruneSpec
    fusion: FusionSpec
    parent_keys: tuple[str, ...]
    fusion_origin: str  # where the fusion setting came from, in words


@dataclass(frozen=True)
class PruneSweepRequest:
    """The Pruning page's last 'Run sweep': the settings at fraction 0 and the fractions."""

    prune: PruneSpec  # with fraction 0: the sweep follows the other settings, not the slider
    fusion: FusionSpec
    fractions: tuple[float, ...]
    parent_keys: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """Which comparison the analysis pages look at: a fusion setting, and the prune setting if pruned."""

    fusion: FusionSpec
    prune: PruneSpec | None = None  # None for the Fusion page's comparison
    origin: str = ""  # where the fusion setting came from, in words

    @property
    def label(self) -> str:
        """'fusion' or 'pruned 50 % (unstructured, prune-fuse)': the study in a legend or hover."""
        if self.prune is None:
            return "fusion"
        return f"pruned {100 * self.prune.fraction:.0f} % ({self.prune.type}, {self.prune.order})"

    @property
    def fraction(self) -> float:
        return 0.0 if self.prune is None else float(self.prune.fraction)


@dataclass(frozen=True)
class HessianRequest:
    """The Hessian page's last press of Analyse."""

    study: Study
    methods: tuple[str, ...]
    spec: HessianSpec
    parent_keys: tuple[str, ...]
    retrained: bool = False  # the fused net before and after retraining, beside its parents


@dataclass(frozen=True)
class LandscapeRequest:
    """The Landscape page's last press of Compute."""

    study: Study
    methods: tuple[str, ...]  # one pair of direction curves each
    spec: HessianSpec
    path: tuple[str, str, str]  # (A, via, B)
    surface_of: str  # the plane's network
    directions: str  # 'hessian' or 'random'
    span: float
    grid: int  # points per side of the plane
    parent_keys: tuple[str, ...]
    alignments: tuple[str, ...] = ()  # aligned paths parent 1 -> parent 2: 'naive', 'ot-weights', ...
    repair: bool = False  # REPAIR at every point of those paths
    retrained: bool = False  # the fused net before and after retraining, beside its parents


def current(key: str, parent_set: ParentSet) -> Any:
    """The request stored under `key` if it was made for these parents, else None."""
    request = st.session_state.get(key)
    if request is None or tuple(request.parent_keys) != parent_set.keys:
        return None
    return request


def keep_choice(key: str, options: Sequence[Any], default: Any) -> None:
    """Before a select widget over `options` is drawn: its remembered value, less what is no longer on offer.

    A list default is for a multiselect (first visit: the default's names on offer); otherwise a value
    not on offer becomes the default, or the first option.
    """
    if isinstance(default, list):
        value = st.session_state.get(key)
        st.session_state[key] = [m for m in (default if value is None else value) if m in options]
    elif st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]

