"""Re-signed records (a valid checksum over the wrong content): the schema each kind is checked against is what its
readers read. Real entries of every kind, each field removed or mistyped in turn, then the readers run on them."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from otcore.cache import CacheEntry, DiskCache
from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec
from otcore.records import SCHEMAS, Optional, mismatch
from tests.faults.conftest import cli
from tests.support import copy_cache

DATA, MODEL = DataSpec(), ModelSpec()
HESSIAN = HessianSpec(batch_size=300, top_k=2, power_iters=20, trace_probes=4, lanczos_iters=8, lambda_points=5)
HANG_S = 120


def readers(cache: DiskCache, parents: list) -> dict[str, Any]:
    """Each kind's readers on a cache hit: a function returning (key, from the cache, numbers, what else they read)."""
    from otcore import figures
    from otcore.analysis import curvature, interpolation, surface
    from otcore.cli.output import comparison_json, prune_json
    from otcore.cli.train import _headline, train_json
    from otcore.keys import hessian_key
    from otcore.pipeline import MethodResult, fuse_and_compare, prune_and_compare, train_parent
    from otcore.sweep import SweepSpec, load_sweep
    from otcore.sweep.driver import _stored_curvature, scores

    rows = [MethodResult(p.name, None, None, 0, 0.0, p.model, p.key, f"parent_{i}") for i, p in enumerate(parents)]

    def parent() -> tuple:
        p = train_parent(DATA, MODEL, replace(TrainSpec(), seed=0, part=0), "cpu", cache=cache)
        numbers = [p.metrics[split][m] for split in ("test", "train") for m in ("accuracy", "loss")]
        return p.key, p.metrics["cached"], numbers, [train_json([(p.name, p.key, p.metrics)], [0]),
                                                     figures.parents_table([p]), _headline(p.metrics)]

    def fusion() -> tuple:
        c = fuse_and_compare(DATA, MODEL, parents, FusionSpec(), device="cpu", cache=cache)
        return c.key, c.cached, c.accuracies(), [comparison_json(c), figures.comparison_table(c),
                                                 figures.per_class_frame(c), figures.headline(cache.load_record(c.key).metrics)]

    def prune() -> tuple:
        c = prune_and_compare(DATA, MODEL, parents, PruneSpec(), FusionSpec(), device="cpu", cache=cache)
        return c.key, c.cached, {**c.accuracies(), **c.extra["sparsity"]}, [
            prune_json(c), comparison_json(scores(c.key, cache.load_record(c.key).metrics))]

    def hessian() -> tuple:
        key = hessian_key(DATA, HESSIAN, parents[0].key)
        c = curvature(DATA, parents[0].name, parents[0].key, parents[0].model, HESSIAN, "cpu", cache=cache)
        return key, c.cached, [c.top_eigenvalues, c.trace, c.loss], [c.perturbation, c.random_direction, c.timings,
                                                                      _stored_curvature(cache, {"p": key})]

    def path() -> tuple:
        line = interpolation(DATA, rows, HESSIAN, 3, "cpu", cache)
        return cache.entries("interpolation")[0].key, line.cached, [line.loss, line.barrier], [line.json()]

    def plane() -> tuple:
        grid = surface(DATA, rows[0], HESSIAN, "random", 0.5, 3, "cpu", cache)
        return cache.entries("surface")[0].key, None, [grid.loss, grid.accuracy], [grid.alphas]

    def sweep() -> tuple:
        key = SweepSpec((("prune.fraction", (0.5,)),), device="cpu").key
        result = load_sweep(key, cache)
        return key, True, [result.status, result.total, [p.values for p in result.points]], []

    return {"parent": parent, "fusion": fusion, "prune": prune, "hessian": hessian, "interpolation": path,
            "surface": plane, "sweep": sweep}


@pytest.fixture(scope="module")
def entries(tmp_path_factory, digits_cli_train, digits_parents) -> SimpleNamespace:
    """A cache holding a real entry of every kind, their keys by kind, and the readers' first answers."""
    from otcore.sweep import LocalExecutor, SweepSpec, run_sweep

    folder = copy_cache(digits_cli_train.cache, tmp_path_factory.mktemp("every-kind"))
    cache = DiskCache(folder)
    read = readers(cache, digits_parents)
    run_sweep(SweepSpec((("prune.fraction", (0.5,)),), device="cpu"), LocalExecutor(), cache)
    first = {kind: read[kind]() for kind in read}
    keys = {kind: answer[0] for kind, answer in first.items()}
    assert set(keys) == set(SCHEMAS) and {r.kind for r in cache.entries()} == set(SCHEMAS)
    backup = folder.parent / f"{folder.name}-pristine"
    copy_cache(folder, backup)
    return SimpleNamespace(folder=folder, backup=backup, cache=cache, keys=keys, read=read, first=first)


def restore(entries: SimpleNamespace) -> None:
    for path in entries.backup.glob("*.safetensors"):
        (entries.folder / path.name).write_bytes(path.read_bytes())


def resign(cache: DiskCache, key: str, edit) -> None:
    """Store an entry again after `edit(record)`: a checksum that verifies over the changed record."""
    entry = cache.load(key)
    record = {"config": entry.config, "metrics": entry.metrics}
    edit(record)
    cache.store(CacheEntry(entry.key, entry.kind, record["config"], record["metrics"], entry.tensors, entry.created))


def field_paths(schema: Any, value: Any, at: tuple = ()) -> list[tuple[tuple, Any, bool]]:
    """(path, schema there, required) of every field the schema names that the value holds, through objects and lists."""
    out = []
    if isinstance(schema, list) and isinstance(value, list) and value:
        out += field_paths(schema[0], value[0], at + (0,))
    elif isinstance(schema, dict) and isinstance(value, dict):
        named = {k: (schema[str], True) for k in list(value)[:1]} if str in schema else \
            {k: (s.schema, False) if isinstance(s, Optional) else (s, True) for k, s in schema.items()}
        for name, (sub, required) in named.items():
            if name in value:
                out.append((at + (name,), sub, required and str not in schema))
                out += field_paths(sub, value[name], at + (name,))
    return out


def every_field(kind: str, record: dict) -> list[tuple[tuple, Any, bool]]:
    config_schema, metrics_schema = SCHEMAS[kind]
    return [(("config",) + p, s, r) for p, s, r in field_paths(config_schema, record["config"])] + \
           [(("metrics",) + p, s, r) for p, s, r in field_paths(metrics_schema, record["metrics"])]


def mistyped(schema: Any) -> Any:
    """A value of the wrong type for a schema."""
    return "x" if mismatch("x", schema, "") else []


def _walk(record: dict, path: tuple) -> tuple[Any, Any]:
    holder = record
    for step in path[:-1]:
        holder = holder[step]
    return holder, path[-1]


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_field_missing_or_mistyped_is_refused_by_listing_record_and_load(entries, kind, caplog):
    cache, key = entries.cache, entries.keys[kind]
    record = {"config": cache.load(key).config, "metrics": cache.load(key).metrics}
    fields = every_field(kind, record)
    assert len(fields) >= 5
    tried = 0
    for path, schema, required in fields:
        edits = [("is missing", lambda r, p=path: _pop(r, p))] if required else []
        edits.append(("expected", lambda r, p=path, s=schema: _set(r, p, mistyped(s))))
        for words, edit in edits:
            resign(cache, key, edit)
            where = ".".join(f"[{s}]" if isinstance(s, int) else str(s) for s in path).replace(".[", "[")
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="otcore.cache"):
                listing = cache.listing()
                assert key not in [r.key for r in listing.rows], (where, words)
                assert cache.load_record(key) is None
                assert cache.load(key) is None and not (entries.folder / f"{key}.safetensors").exists()
            why = dict(listing.skipped)[key]
            assert why.startswith(where) and words in why, (where, why)
            assert f"cache entry {key} skipped: {why}" in caplog.text
            restore(entries)
            tried += 1
    assert tried >= len(fields)


def _pop(record: dict, path: tuple) -> None:
    holder, last = _walk(record, path)
    del holder[last]


def _set(record: dict, path: tuple, value: Any) -> None:
    holder, last = _walk(record, path)
    holder[last] = value


def strip(value: Any, schema: Any) -> Any:
    """The value reduced to what the schema requires: optional and unnamed fields dropped."""
    if isinstance(schema, list):
        return [strip(v, schema[0]) for v in value]
    if isinstance(schema, dict):
        if str in schema:
            return {k: strip(v, schema[str]) for k, v in value.items()}
        return {k: strip(value[k], s) for k, s in schema.items() if not isinstance(s, Optional)}
    return value


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_the_readers_read_nothing_beyond_the_schema(entries, kind):
    cache, key = entries.cache, entries.keys[kind]
    config_schema, metrics_schema = SCHEMAS[kind]

    def reduce(record: dict) -> None:
        record["config"], record["metrics"] = strip(record["config"], config_schema), strip(record["metrics"],
                                                                                               metrics_schema)
    try:
        resign(cache, key, reduce)
        assert cache.load_record(key) is not None  # the reduced record passes the schema: it is served
        key_read, from_cache, numbers, _ = entries.read[kind]()  # no reader takes a field the schema does not require
        assert key_read == key and from_cache is not False and numbers == entries.first[kind][2]  # served, not recomputed
    finally:
        restore(entries)


@pytest.mark.parametrize("kind", ["fusion", "prune", "hessian", "interpolation", "surface"])
def test_a_reader_recomputes_a_record_missing_a_field_to_the_true_numbers(entries, kind, caplog):
    cache, key = entries.cache, entries.keys[kind]
    metrics = cache.load(key).metrics
    name = next(n for n in SCHEMAS[kind][1] if not isinstance(SCHEMAS[kind][1][n], Optional))
    try:
        resign(cache, key, lambda r: r["metrics"].pop(name))
        with caplog.at_level(logging.WARNING, logger="otcore.cache"):
            key_read, from_cache, numbers, _ = entries.read[kind]()
        assert f"cache entry {key}.safetensors is corrupt (metrics.{name} is missing); removing it" in caplog.text
        assert key_read == key and from_cache is not True and numbers == entries.first[kind][2]  # recomputed, true
        assert cache.load(key).metrics.keys() == metrics.keys()  # and stored whole again
    finally:
        restore(entries)


PARENT_EDITS = {"class_counts missing": lambda m: m.pop("class_counts"), "seconds missing": lambda m: m.pop("seconds"),
                "class_counts a string": lambda m: m.update(class_counts="135"),
                "seconds a string": lambda m: m.update(seconds="4.1"),
                "input_shape missing": lambda m: m.pop("input_shape"), "test.loss null": lambda m: m["test"].update(loss=None)}


@pytest.mark.parametrize("edit", list(PARENT_EDITS))
def test_train_json_recomputes_a_re_signed_parent_instead_of_a_traceback(parents_cache, tmp_path, edit):
    folder = copy_cache(parents_cache, tmp_path / "cache")
    first = json.loads(cli("train", "--dataset", "digits", "--arch", "mlpnet", "--json", cache=folder,
                           timeout=HANG_S).stdout)["parents"]
    resign(DiskCache(folder), first[0]["key"], lambda r: PARENT_EDITS[edit](r["metrics"]))
    listed = cli("list", "--json", cache=folder, timeout=HANG_S)
    assert [e["key"] for e in json.loads(listed.stdout)["entries"]] == [first[1]["key"]]
    assert f"cache entry {first[0]['key']} skipped: metrics." in listed.stderr
    done = cli("train", "--dataset", "digits", "--arch", "mlpnet", "--json", cache=folder, timeout=HANG_S)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    again = json.loads(done.stdout)["parents"]
    assert [p["cached"] for p in again] == [False, True]
    assert [p["test_accuracy"] for p in again] == [p["test_accuracy"] for p in first]
    assert again[0]["train_examples"] == first[0]["train_examples"]


def test_an_entry_from_before_stored_settings_is_recomputed(parents_cache, tmp_path):
    from otcore import entry_file

    folder = copy_cache(parents_cache, tmp_path / "cache")
    key = sorted(p.name for p in Path(folder).glob("*.safetensors"))[0][:-len(".safetensors")]
    entry = DiskCache(folder).load(key)
    record = json.dumps({"kind": entry.kind, "config": entry.config, "metrics": entry.metrics,
                         "created": entry.created, "names": list(entry.tensors)})  # the format before this round
    header = {"entry": record, "sha256": entry_file.checksum(record, entry_file.tensor_items(entry.tensors))}
    (folder / f"{key}.safetensors").write_bytes(entry_file.entry_bytes(entry.tensors, header))
    done = cli("list", "--json", cache=folder, timeout=HANG_S)
    assert f"cache entry {key} skipped: no stored settings (written by an older version)" in done.stderr
    trained = json.loads(cli("train", "--dataset", "digits", "--arch", "mlpnet", "--json", cache=folder,
                             timeout=HANG_S).stdout)["parents"]
    assert {p["key"]: p["cached"] for p in trained}[key] is False
