"""What the commands print: the JSON contracts of a comparison, and strict JSON itself."""
from __future__ import annotations

import json
import math
from typing import Any


def comparison_json(comparison: Any) -> dict:
    """The headless contract of a comparison: accuracies (percent), rows, seconds."""
    rows = [{"method": r.method, "id": r.id, "test_accuracy": r.test.accuracy, "test_loss": r.test.loss,
             "train_accuracy": r.train.accuracy, "parameters": r.parameters, "inference_ms": r.inference_ms}
            for r in comparison.rows]
    text = "\n".join(f"{r['method']:24s} {r['test_accuracy']:6.2f}%  loss {r['test_loss']:.4f}  "
                     f"{r['parameters']:,} parameters" for r in rows)
    for record in retraining_json(comparison).values():
        first = record["validation"][0]
        best = next(c for c in record["validation"] if c["epoch"] == record["best_epoch"])
        text += (f"\n{record['method']}: best on validation at epoch {record['best_epoch']:g} "
                 f"({first['accuracy']:.2f} -> {best['accuracy']:.2f} % on {record['validation_examples']} held-out images)")
    # The fused row's id stays `ot_fusion` whatever the alignment; `alignment` says which one made it.
    return {**comparison.accuracies(), "alignment": comparison.extra.get("alignment", "ot"),
            "width": comparison.extra.get("width", 1.0), "seconds": comparison.seconds, "rows": rows,
            "retraining": retraining_json(comparison),
            "cached": comparison.cached, "text": text}


def retraining_json(comparison: Any) -> dict:
    """Each retrained network's keep-best record by method id: its label, best_epoch, validation curve, split sizes."""
    labels = {r.id: r.method for r in comparison.rows}
    return {method_id: {"method": labels.get(method_id, method_id), **record}
            for method_id, record in comparison.extra.get("retraining", {}).items()}


def prune_json(comparison: Any) -> dict:
    """comparison_json plus sparsity: one value per single network, in row order."""
    out = comparison_json(comparison)
    sparsity = comparison.extra["sparsity"]
    out["sparsity"] = [sparsity[r.method] for r in comparison.rows if r.method in sparsity]
    out["sparsity_by_method"] = sparsity
    out["fraction"], out["type"] = comparison.extra["fraction"], comparison.extra["type"]
    return out


def _nulled(value: Any) -> Any:
    """value with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    return [_nulled(v) for v in value] if isinstance(value, list) else value


def dumps(result: dict) -> str:
    """The result as strict JSON: NaN and infinity are refused (ValueError naming the field), never printed."""
    try:
        return json.dumps(result, allow_nan=False)
    except ValueError:
        raise ValueError(f"the result holds a non-finite number at {_non_finite(result, 'result')}, "
                         "which JSON cannot carry (did the computation diverge?)") from None


def _non_finite(value: Any, where: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} ({value})"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for name, item in items:
        if found := _non_finite(item, f"{where}[{name!r}]" if isinstance(name, str) else f"{where}[{name}]"):
            return found
    return ""
