"""The shape of each kind of cache record that listings show or reuse, checked before anyone reads it.

A checksum proves an entry is what its writer stored, not that the writer stored what the readers
expect (an older format, another tool, a hand-edited file re-signed). Listings (the Home page's
cache browser, `otcore list`, the Sweeps page, a resumed sweep) check a record against its kind's
schema here and skip it with a warning rather than fail on a string where a number belongs.
Torch-free, like otcore.cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# A schema is a type (int, float, str, bool, dict, list), TIMESTAMP, a tuple of alternatives, a list
# [item schema], or a dict of fields (required unless Optional); a dict keyed `str` maps any name to a schema.


@dataclass(frozen=True)
class Optional:
    """A field that may be absent, and has this schema where present."""

    schema: Any


TIMESTAMP = "timestamp"  # seconds since the epoch that time.localtime and datetime can show
_LATEST_TIMESTAMP = 1e11  # about the year 5100; datetime.fromtimestamp fails beyond year 9999

EVALUATION = {"accuracy": float, "loss": float}
METHOD_ROW = {"method": str, "test": EVALUATION, "train": EVALUATION, "parameters": int,
              "inference_ms": float, "key": (str, type(None)), "id": Optional(str)}  # id: from cache format 4 on
SPEC_NAMES = {"data": {"name": str}, "model": {"arch": str}}
# What readers take from each kind's config and metrics: figures.manifest_table and headline, the CLI's
# list, otcore.sweep.scores / load_sweep and the Sweeps page's list of recorded sweeps.
COMPARISON = {"rows": [METHOD_ROW], "seconds": Optional({str: float}), "diagnostics": Optional([dict])}
SCHEMAS: dict[str, tuple[Any, Any]] = {
    "parent": (dict, {"test": EVALUATION, "train": EVALUATION}),
    "fusion": (dict, COMPARISON),
    "prune": (dict, {**COMPARISON, "sparsity": Optional({str: float}), "fraction": Optional(float),
                     "type": Optional(str)}),
    "hessian": (dict, {"top_eigenvalues": [float], "trace": float, "trace_std_error": float, "loss": float}),
    "sweep": ({**SPEC_NAMES, "step": str},
              {"status": str, "executor": str, "updated": TIMESTAMP, "total": int, "done": int, "fields": [str],
               "failed": [{"key": str, "error": str, "attempts": int}],
               "points": [{"values": dict, "seeds": [int], "key": str}],
               "owner": Optional({"host": str, "pid": int, "process_start": (int, type(None))})}),  # otcore.sweep.owner
}
# Any other kind: the fields a headline reads, where present.
OTHER = (dict, {"test": Optional({"accuracy": float}),
                "rows": Optional([{"method": str, "test": {"accuracy": float}}])})


def record_problem(record: Any) -> str | None:
    """Why an entry's record (kind, config, metrics, created) cannot be shown or reused, or None if it can."""
    if not isinstance(record, dict):
        return "the record is not an object"
    for name, schema in (("kind", str), ("config", dict), ("metrics", dict), ("created", TIMESTAMP)):
        problem = mismatch(record.get(name, _MISSING), schema, name)
        if problem:
            return problem
    config_schema, metrics_schema = SCHEMAS.get(record["kind"], OTHER)
    return mismatch(record["config"], config_schema, "config") or mismatch(record["metrics"], metrics_schema,
                                                                           "metrics")


_MISSING = object()


def mismatch(value: Any, schema: Any, where: str) -> str | None:
    """The first place where value differs from schema ('metrics.rows[2].test.accuracy is a string, ...')."""
    if value is _MISSING:
        return f"{where} is missing"
    if isinstance(schema, tuple):
        problems = [mismatch(value, option, where) for option in schema]
        return None if None in problems else problems[0]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, expected a list"
        return next((p for i, item in enumerate(value) if (p := mismatch(item, schema[0], f"{where}[{i}]"))), None)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} is {_kind(value)}, expected an object"
        if str in schema:
            return next((p for k, v in value.items() if (p := mismatch(v, schema[str], f"{where}.{k}"))), None)
        for name, sub in schema.items():
            if isinstance(sub, Optional):
                if name not in value:
                    continue
                sub = sub.schema
            if problem := mismatch(value.get(name, _MISSING), sub, f"{where}.{name}"):
                return problem
        return None
    if schema is TIMESTAMP:
        ok = _is_number(value) and math.isfinite(value) and 0 <= value < _LATEST_TIMESTAMP
        return None if ok else f"{where} is {_kind(value)}, expected a time in seconds since 1970"
    if schema is float:
        return None if _is_number(value) else f"{where} is {_kind(value)}, expected a number"
    if schema is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            f"{where} is {_kind(value)}, expected a whole number"
    return None if isinstance(value, schema) else f"{where} is {_kind(value)}, expected {schema.__name__}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value[:20]!r}"
    return {bool: "a boolean", dict: "an object", list: "a list"}.get(type(value), repr(value)[:20])
