"""A sweep's grid: which spec fields may be swept, grid text parsed, and the points it resolves to.

A point is one combination of the grid's values applied to base specs; its cache key is known
before any work, so the driver can skip what the cache already holds.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any
from collections.abc import Callable, Sequence

from otcore.config import (DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, SpecError, TrainSpec,
                           check_partition_parents, not_keyed, spec_hash)
from otcore.keys import fusion_key, outside_structures, parent_key, prune_key
from otcore.methods import Method, label

STEPS = ("prune", "fusion")  # the pipeline step each point runs: prune_and_compare or fuse_and_compare
# Above this many points a grid asks for confirmation (CLI: --confirm-size N) and is checked point by point
# only when it runs: resolving and keying 10,000 points takes 1.5-3 s on 2 cores, idle to busy (each key hashes its
# specs and its parents'), a million takes minutes, and 10,000 digits points already run about half an hour.
LARGE_GRID = 10_000
Progress = Callable[[str, float], None]  # (what is happening, fraction done in [0, 1])
# The networks a point can analyse (otcore.analysis: top eigenvalues, trace, density, perturbation curve),
# by the name the user picks, and the comparison's method names each stands for.
NETWORKS = {"parents": (Method.PARENT.value,), "vanilla": (label(Method.VANILLA),),
            "OT fusion": (label(Method.OT_FUSION),), "fine-tuned fusion": (label(Method.OT_FINETUNED),),
            "retrained fusion": (label(Method.OT_RETRAINED),), "retrained vanilla": (label(Method.VANILLA_RETRAINED),)}
# What `otcore sweep --analyse` with no names analyses: the study's networks (the fine-tuned fusion is an extra).
STUDY_NETWORKS = ("parents", "vanilla", "OT fusion", "retrained fusion", "retrained vanilla")

# ---------------------------------------------------------------------------- the grid

_SPECS = {"prune": PruneSpec, "fusion": FusionSpec, "train": TrainSpec}
_NOT_SWEPT = {"train.seed": "sweep 'seed' (offsets of the parents' seeds) or 'seeds' instead",
              "train.part": "each parent trains on its own part of train.partition",
              "fusion.weights": "per-parent weights are a list; sweep fusion.ensemble_step instead"}
_ALIASES = {"fusion.mode": {"wts": "weights", "acts": "activations"},
            "fusion.alignment": {"weight-matching": "weight_matching"}}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def sweep_fields() -> dict[str, str]:
    """Every field a grid may sweep and the kind of its values ('float', 'int', 'bool', 'str', 'seeds')."""
    out = {"seed": "int", "seeds": "seeds", "arch": "str", "dataset": "str"}
    for prefix, spec in _SPECS.items():
        for f in fields(spec):
            name = f"{prefix}.{f.name.rstrip('_')}"
            if not f.metadata.get("keyed", True) or name in _NOT_SWEPT:
                continue
            if is_dataclass(f.default):  # a nested spec (a retraining recipe): each of its fields, 'prune.retrain.lr'
                out.update({f"{name}.{g.name}": type(g.default).__name__ for g in fields(f.default)
                            if g.metadata.get("keyed", True)})
            else:
                out[name] = type(f.default).__name__
    return out


def _coerce(name: str, value: Any) -> Any:
    """A grid value as its field's type; text (from the CLI or a form) is parsed."""
    kind = sweep_fields()[name]
    text = str(value).strip()
    try:
        if kind in ("seeds", "tuple"):  # non-negative whole numbers joined by '+' (seeds, a partition's classes)
            parts = value if isinstance(value, (tuple, list)) else text.replace("+", " ").split()
            numbers = tuple(int(v) for v in parts)
            if (kind == "seeds" and not numbers) or min(numbers, default=0) < 0:
                raise ValueError
            return numbers
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer() or isinstance(value, bool):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(text)
        if kind == "float":
            number = float(value) if not isinstance(value, str) else float(text)
            if not math.isfinite(number):
                raise ValueError
            return number
    except (TypeError, ValueError):
        wanted = {"seeds": "seeds joined by '+', e.g. 0+1", "tuple": "classes joined by '+', e.g. 0+2+4",
                  "bool": "true or false",
                  "int": "a whole number", "float": "a number"}[kind]
        raise SpecError(f"{name}: '{text}' is not {wanted}") from None
    return _ALIASES.get(name, {}).get(text, text)


def parse_grid(entries: Sequence[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """['prune.fraction=0,0.3', 'seed=0,1'] -> (('prune.fraction', (0.0, 0.3)), ('seed', (0, 1)))."""
    grid = []
    for entry in entries:
        name, sep, values = entry.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"a grid entry looks like field=value1,value2,...; got '{entry}'")
        grid.append((name.strip(), tuple(v for v in values.split(",") if v.strip())))
    return tuple(grid)


@dataclass(frozen=True)
class ParentJob:
    """One parent network to train: the specs of its cache entry."""

    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    seed: int
    device: str = "auto"
    part: int = 0  # which part of train.partition it trains on: its place among the point's parents

    @property
    def key(self) -> str:
        """Its cache key, as `pipeline.train_parent` computes it."""
        return parent_key(self.data, self.model, replace(self.train, seed=self.seed, part=self.part))


@dataclass(frozen=True)
class Point:
    """One grid point: the swept values and the specs they resolve to."""

    values: tuple[tuple[str, Any], ...]  # (field, value) in grid order
    step: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec  # the parents' training (seed replaced per parent) and the retraining's settings
    prune: PruneSpec
    fusion: FusionSpec
    seeds: tuple[int, ...]  # one parent per seed
    device: str = "auto"
    analyse: tuple[str, ...] = ()  # the networks whose Hessian the point analyses (NETWORKS names)
    hessian: HessianSpec = field(default_factory=HessianSpec)

    def analyses(self, method: str) -> bool:
        """Whether this point analyses the comparison row of `method` ('parent 2' is one of 'parents')."""
        return any(method == m or (m == Method.PARENT.value and method.startswith(m + " "))
                   for name in self.analyse for m in NETWORKS[name])

    def label(self) -> str:
        """'prune.fraction=0.3, seed=1' (or 'base settings' for an empty grid)."""
        return ", ".join(f"{k}={value_text(v)}" for k, v in self.values) or "base settings"

    def parents(self) -> list[ParentJob]:
        """The parents this point fuses, in order."""
        return [ParentJob(self.data, self.model, self.train, s, self.device, i) for i, s in enumerate(self.seeds)]

    @property
    def key(self) -> str:
        """The cache key of the point's comparison, as the pipeline step computes it (known before any work)."""
        parents = [p.key for p in self.parents()]
        if self.step == "prune":
            return prune_key(self.data, self.model, self.prune, self.fusion, self.train, parents)
        return fusion_key(self.data, self.model, self.fusion, self.train, parents)


def value_text(value: Any) -> str:
    """A swept value as the grid writes it: seeds joined by '+', floats as %g."""
    return "+".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) \
        else str(value)


@dataclass(frozen=True)
class SweepSpec:
    """A grid over spec fields: every combination of its values is one point of the study."""

    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (field, values); the first field varies slowest
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)  # parents' training; retraining uses its batch size, lr...
    prune: PruneSpec = field(default_factory=PruneSpec)  # unused by the fusion step
    fusion: FusionSpec = field(default_factory=FusionSpec)
    seeds: tuple[int, ...] = (0, 1)  # parents' seeds; grid 'seed' s shifts each by s * len(seeds)
    step: str = "prune"  # 'prune' (prune_and_compare) or 'fusion' (fuse_and_compare)
    device: str = not_keyed("auto")  # where each point computes ('auto': CUDA when the worker sees a GPU)
    analyse: tuple[str, ...] = ()  # networks each point also runs the Hessian analysis on (NETWORKS names)
    hessian: HessianSpec = field(default_factory=HessianSpec)  # that analysis's settings

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise SpecError(f"step must be one of {STEPS}, got '{self.step}'")
        object.__setattr__(self, "analyse", tuple(dict.fromkeys(self.analyse)))
        unknown = [n for n in self.analyse if n not in NETWORKS]
        if unknown:
            raise SpecError(f"cannot analyse '{unknown[0]}'; choose among {', '.join(NETWORKS)}")
        if len(self.seeds) < 2 or min(self.seeds) < 0:
            raise SpecError(f"a sweep fuses at least two parents with seeds >= 0, got seeds {self.seeds}")
        known, grid = sweep_fields(), []
        for name, values in self.grid:
            name = {"prune.global_": "prune.global"}.get(name, name)
            if name in _NOT_SWEPT:
                raise SpecError(f"sweep field '{name}' cannot be swept: {_NOT_SWEPT[name]}")
            if name not in known:
                raise SpecError(f"unknown sweep field '{name}'; choose one of {', '.join(known)}")
            if name in dict(grid):
                raise SpecError(f"sweep field '{name}' appears twice in the grid")
            if self.step == "fusion" and name.startswith("prune."):
                raise SpecError(f"'{name}' is a pruning field; the fusion step does not prune (use step 'prune')")
            values = tuple(_coerce(name, v) for v in values)
            if not values:
                raise SpecError(f"sweep field '{name}' has no values")
            if len(set(values)) < len(values):
                raise SpecError(f"sweep field '{name}' lists a value twice: {', '.join(map(value_text, values))}")
            grid.append((name, values))
        if {"seed", "seeds"} <= set(dict(grid)):
            raise SpecError("sweep either 'seed' (offsets of the base seeds) or 'seeds' (explicit sets), not both")
        for name, values in grid:
            for value in values:  # each value alone, so the message names the one at fault
                self._check_value(name, value, [(n, v) for n, vs in grid if n != name for v in vs])
        object.__setattr__(self, "grid", tuple(grid))
        if self.size <= LARGE_GRID:  # combinations of valid values can still clash; say so before any work
            self.check_points(self.points())

    def _check_value(self, name: str, value: Any, others: list[tuple[str, Any]]) -> None:
        """Refuse a value that fails alone and beside every value of the other fields: one that fails only with
        the base spec (a width above 1 where the base alignment is OT) may hold beside a grid value (ZipIt!)."""
        try:
            self._resolve(((name, value),))
        except SpecError:
            for other in others:
                try:
                    self._resolve(((name, value), other))
                    return
                except SpecError:
                    continue
            raise

    @property
    def size(self) -> int:
        """Points in the grid: the product of its value counts, computed without resolving any."""
        return math.prod(len(values) for _, values in self.grid)

    def check_points(self, points: Sequence[Point]) -> None:
        """Refuse values of one field that give the same cache key at every point: one setting under two labels.

        `train.partition_classes=0+2,2+0` (a set, sorted) or `prune.retrain.lr=0.01,0.02` without retraining
        epochs would be one computation shown as two. Keys that meet only at some points (the lr values
        where `prune.retrain_epochs=0`, beside `prune.retrain_epochs=1`) are the grid's honest structure:
        each point keeps its own label and the shared result.
        """
        keys = [p.key for p in points]
        if len(set(keys)) == len(keys):
            return
        counts = [len(values) for _, values in self.grid]
        for i, (name, values) in enumerate(self.grid):
            stride = math.prod(counts[i + 1:])
            groups: list[list[str]] = [[] for _ in values]  # each value's points' keys, in grid order
            for n, key in enumerate(keys):
                groups[(n // stride) % counts[i]].append(key)
            signatures: dict[tuple[str, ...], Any] = {}
            for value, group in zip(values, groups):
                signature = tuple(group)
                if signature in signatures:
                    raise SpecError(f"{name}={value_text(signatures[signature])} and {name}={value_text(value)} "
                                    f"give the same result at every point (one cache key): the settings make them "
                                    f"one; keep one of them")
                signatures[signature] = value

    @property
    def key(self) -> str:
        """The cache key of the sweep's record (its grid and base specs, and the traced structure of every
        architecture from outside the zoo it trains, so a library that changes one is a new sweep)."""
        values = dict(self.grid)
        structures = outside_structures([self.data.name, *values.get("dataset", ())],
                                        [self.model.arch, *values.get("arch", ())])
        return spec_hash("sweep", self, *([structures] if structures else []))

    def points(self) -> list[Point]:
        """Every combination of the grid's values, the last field varying fastest."""
        names = [name for name, _ in self.grid]
        combos = itertools.product(*(values for _, values in self.grid))
        return [self._resolve(tuple(zip(names, combo))) for combo in combos]

    def _resolve(self, values: tuple[tuple[str, Any], ...]) -> Point:
        changes: dict[str, dict[str, Any]] = {name: {} for name in _SPECS}
        nested: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in _SPECS}  # spec -> field -> its changes
        data, model, seeds = self.data, self.model, self.seeds
        try:
            for name, value in values:
                if name == "dataset":
                    data = DataSpec(value, self.data.root, self.data.download)
                elif name == "arch":
                    model = ModelSpec(value)
                elif name == "seed":
                    seeds = tuple(s + value * len(self.seeds) for s in self.seeds)
                elif name == "seeds":
                    seeds = value
                else:
                    spec, attr = name.split(".", 1)
                    outer, _, inner = attr.partition(".")
                    if inner:  # a field of a nested spec: 'prune.retrain.lr'
                        nested[spec].setdefault(outer, {})[inner] = value
                    else:
                        changes[spec]["global_" if attr == "global" else attr] = value
            for spec, inside in nested.items():
                for outer, inner_changes in inside.items():
                    changes[spec][outer] = replace(getattr(getattr(self, spec), outer), **inner_changes)
            specs = {name: replace(getattr(self, name), **changes[name]) for name in _SPECS}
            if len(seeds) < 2 or min(seeds) < 0:
                raise SpecError(f"a point fuses at least two parents with seeds >= 0, got seeds {seeds}")
            specs["fusion"].parent_weights(len(seeds))
            check_partition_parents(specs["train"], len(seeds))
        except SpecError as err:
            raise SpecError(f"{', '.join(f'{k}={value_text(v)}' for k, v in values)}: {err}") from None
        return Point(values, self.step, data, model, specs["train"], specs["prune"], specs["fusion"], seeds,
                     self.device, self.analyse, self.hessian)
