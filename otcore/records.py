"""The shape of each kind of cache record, checked before anyone reads it: one schema per kind, for every reader.

A checksum proves an entry is what its writer stored, not that the writer stored what the readers
expect (an older format, another tool, a hand-edited file re-signed). Every read of the cache
(otcore.cache: a load, a record, a listing) checks a record against its kind's schema here and
treats a mismatch as damage (skipped with a warning, recomputed) rather than fail on a missing
field or a string where a number belongs. So each schema lists every field any reader takes without
a default: the pipeline's steps rebuilding a result, `train`'s cached path, `list`, the Home page's
browser, the sweeps' readers and the Sweeps page. Torch-free, like otcore.cache.
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

EVALUATION = {"accuracy": float, "loss": float, "per_class": Optional([(float, type(None))])}  # comparison.Evaluation
# Rows of a comparison: pipeline.comparison_from_entry and sweep.scores rebuild MethodResults from them.
METHOD_ROW = {"method": str, "id": str, "test": EVALUATION, "train": EVALUATION, "parameters": int,
              "inference_ms": float, "key": (str, type(None))}
SPEC_NAMES = {"data": {"name": str}, "model": {"arch": str}}
# pipeline.train_parent rebuilds the network from input_shape and num_classes; `train --json` reports
# seconds and class_counts; parents_table, the Parents page and the sidebar read test and train.
PARENT = ({**SPEC_NAMES, "train": dict},
          {"test": EVALUATION, "train": EVALUATION, "seconds": float, "class_counts": [int], "input_shape": [int],
           "num_classes": int, "device": Optional(str)})
# train.Retrained.record per retrained method id: the retraining figures, report and `--json` read every field.
RETRAINING = {str: {"best_epoch": float, "validation": [{"epoch": float, "accuracy": float, "loss": (float, type(None))}],
                    "fit_examples": int, "validation_examples": int}}
COMPARISON = {"rows": [METHOD_ROW], "seconds": Optional({str: float}), "diagnostics": Optional([dict]),
              "device": Optional(str), "alignment": Optional(str), "retraining": Optional(RETRAINING)}
# A stored curve (curves.PerturbationCurve.from_stored reads each field where present).
CURVE = {name: Optional([float]) for name in ("lambdas", "loss_mean", "loss_std", "accuracy_mean", "accuracy_std")}
SCHEMAS: dict[str, tuple[Any, Any]] = {
    "parent": PARENT,
    "fusion": ({**SPEC_NAMES, "fusion": dict, "parents": [str]}, COMPARISON),
    # The CLI's prune output and the sweep figures read sparsity, fraction and type without a default.
    "prune": ({**SPEC_NAMES, "prune": dict, "fusion": dict, "parents": [str]},
              {**COMPARISON, "sparsity": {str: float}, "fraction": float, "type": str}),
    # analysis.curvature rebuilds a Curvature; the sweeps read the first five fields.
    "hessian": ({"data": {"name": str}, "hessian": dict, "network": str},
                {"top_eigenvalues": [float], "trace": float, "trace_std_error": float, "loss": float,
                 "trace_method": Optional(str), "density_nodes": [[float]], "density_weights": [[float]],
                 "perturbation": CURVE, "random_direction": CURVE, "timings": {str: float}, "num_parameters": int}),
    # curves.InterpolationPath.from_stored (analysis.interpolation and aligned_paths.aligned_path).
    "interpolation": ({"data": {"name": str}, "networks": [str]},
                      {"curve": {**CURVE, "lambdas": [float], "loss_mean": [float]}, "barrier": float, "path": [str],
                       "alignment": Optional(str), "repair": Optional(bool)}),
    # curves.LossSurface.from_stored (analysis.surface).
    "surface": ({"data": {"name": str}, "network": str},
                {"alphas": [float], "betas": [float], "loss": [[float]], "accuracy": [[float]],
                 "directions": Optional(str)}),
    # sweep.load_sweep, the Sweeps page's list of recorded sweeps.
    "sweep": ({**SPEC_NAMES, "step": str},
              {"status": str, "executor": str, "updated": TIMESTAMP, "total": int, "done": int, "fields": [str],
               "failed": [{"key": str, "error": str, "attempts": int}],
               "points": [{"values": dict, "seeds": [int], "key": str, "analysis": Optional({str: str})}],
               "owner": Optional({"host": str, "pid": int, "process_start": (int, type(None))})}),  # otcore.sweep.owner
}
# Any other kind: the fields a headline reads, where present.
OTHER = (dict, {"test": Optional({"accuracy": float}),
                "rows": Optional([{"method": str, "test": {"accuracy": float}}])})


def record_problem(record: Any) -> str | None:
    """Why an entry's record (kind, settings, config, metrics, created) cannot be read, or None if it can."""
    if not isinstance(record, dict):
        return "the record is not an object"
    for name, schema in (("kind", str), ("settings", list), ("config", dict), ("metrics", dict), ("created", TIMESTAMP)):
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
