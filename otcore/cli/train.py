"""`train` (with its torch-free cached path) and `list`: the parents and the cache's manifest."""
from __future__ import annotations

import argparse
from dataclasses import replace

from otcore.cli.flags import Bar, add_common, add_training, parents_of, specs, train_spec
from otcore.cli.output import _nulled
from otcore.cli.registry import command
from otcore.config import check_partition_parents
from otcore.keys import parent_key


def _train_args(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_training(p)


@command("train", _train_args)
def run_train(args: argparse.Namespace) -> dict:
    """Train parents (one per seed), store them in the cache, report their test accuracy."""
    parents = cached_parents(args)
    if parents is None:
        bar = Bar("train")
        try:
            parents = [(p.name, p.key, p.metrics) for p in parents_of(args, bar)]
        finally:
            bar.close()
    return train_json(parents, args.seeds)


def cached_parents(args: argparse.Namespace) -> list[tuple[str, str, dict]] | None:
    """(name, key, metrics) of every parent of --seeds when all are verified cache hits, else None; torch-free.

    The fast path of `train`: reading the entries' records spares the import of torch, most of
    a cached call's time. Anything else (a miss, a damaged entry) is left to the pipeline.
    """
    if args.device == "cuda":  # only torch can tell whether the asked-for GPU is there
        return None
    from otcore.cache import default_cache

    data, model = specs(args)
    check_partition_parents(train_spec(args), len(args.seeds))
    cache, parents = default_cache(), []
    for i, seed in enumerate(args.seeds):
        key = parent_key(data, model, replace(train_spec(args), seed=seed, part=i))
        record = cache.load_record(key)
        if record is None or record.kind != "parent":
            return None
        parents.append((f"parent {i + 1}", key, {**record.metrics, "cached": True}))  # named as train_parents does
    return parents


def train_json(parents: list[tuple[str, str, dict]], seeds: list[int]) -> dict:
    """The headless contract of `train`: each parent's (name, key, metrics) with its seed, and the text lines."""
    out = {"parents": [{"name": name, "seed": s, "key": key, "test_accuracy": m["test"]["accuracy"],
                        "test_loss": m["test"]["loss"], "train_accuracy": m["train"]["accuracy"],
                        "cached": m["cached"], "seconds": m["seconds"],
                        "train_examples": sum(m["class_counts"]),
                        "classes": [c for c, n in enumerate(m["class_counts"]) if n]}
                       for (name, key, m), s in zip(parents, seeds)]}
    out["text"] = "\n".join(f"{p['name']} (seed {p['seed']}): test accuracy {p['test_accuracy']:.2f}%"
                            f"{' (cached)' if p['cached'] else ''}" for p in out["parents"])
    return out


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default=None, help="only entries of this kind (parent, fusion, prune, hessian)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", action="store_true")


@command("list", _list_args)
def run_list(args: argparse.Namespace) -> dict:
    """The cache's manifest: verified entries only (a damaged or malformed one is skipped with a warning)."""
    from otcore.cache import config_field, default_cache

    rows = default_cache().entries(args.kind)  # the cache logs one warning per skipped entry
    # A diverged run's entry may hold NaN (Python's json reads and writes it); strict JSON says null.
    entries = [{"key": r.key, "kind": r.kind, "config": _nulled(r.config), "metrics": _nulled(r.metrics),
                "created": r.created, "bytes": r.size} for r in rows]
    lines = [f"{r.key}  {r.kind:12s} {config_field(r.config, 'data', 'name'):8s} "
             f"{config_field(r.config, 'model', 'arch'):24s} {_headline(r.metrics)}" for r in rows]
    return {"entries": entries, "text": "\n".join(lines) or "the cache is empty"}


def _headline(metrics: dict) -> str:
    if "test" in metrics:
        return f"test accuracy {metrics['test']['accuracy']:.2f}%"
    if "rows" in metrics:
        return ", ".join(f"{r['method']} {r['test']['accuracy']:.1f}%" for r in metrics["rows"][-2:])
    return ""
