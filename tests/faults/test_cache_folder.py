"""A careless or hostile cache folder: FIFOs, links, devices and folders where files belong; entries swapped
between keys; re-signed records missing what their readers read. Real files, real processes, a timeout as the
hang detector; every result recomputed to its true numbers."""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec
from otcore.keys import parent_key
from tests.faults.conftest import cli
from tests.support import copy_cache

HANG_S = 120  # far beyond a cached call (seconds) or a digits training; reached only by a process that waits for ever
TRAIN = ["train", "--dataset", "digits", "--arch", "mlpnet", "--json"]
KEYS = [parent_key(DataSpec(), ModelSpec(), replace(TrainSpec(), seed=s, part=s)) for s in (0, 1)]


def hostile(kind: str, path: Path, outside: Path) -> None:
    """Put a `kind` of non-regular thing at path: a FIFO, a link to a FIFO (outside the folder), a folder, a device."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link to a fifo":
        os.mkfifo(outside)
        path.symlink_to(outside)
    elif kind == "folder":
        path.mkdir()
    elif kind == "link to a device":
        path.symlink_to("/dev/zero")


KINDS = ["fifo", "link to a fifo", "folder", "link to a device"]
WORDS = {"fifo": "a FIFO", "link to a fifo": "a FIFO", "folder": "a folder", "link to a device": "a character device"}


def test_list_skips_every_non_regular_file_with_a_warning_and_never_waits(parents_cache, tmp_path):
    cache = copy_cache(parents_cache, tmp_path / "cache")
    for i, kind in enumerate(KINDS):
        hostile(kind, cache / f"bad{i}.safetensors", tmp_path / f"target{i}")
    hostile("fifo", cache / ".fingerprints.json", tmp_path / "unused")
    done = cli("list", "--json", cache=cache, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert sorted(e["key"] for e in json.loads(done.stdout)["entries"]) == sorted(KEYS)
    warnings = sorted(line for line in done.stderr.splitlines() if line.strip())
    assert warnings == [f"WARNING: cache entry bad{i} skipped: damaged ({WORDS[kind]}, not a regular file)"
                        for i, kind in enumerate(KINDS)]


@pytest.mark.parametrize("kind", KINDS)
def test_train_takes_a_non_regular_file_under_a_key_as_a_miss_and_recomputes(parents_cache, tmp_path, kind):
    cache = copy_cache(parents_cache, tmp_path / "cache")
    first = {p["key"]: p for p in json.loads(cli(*TRAIN, cache=cache, timeout=HANG_S).stdout)["parents"]}
    (cache / f"{KEYS[0]}.safetensors").unlink()
    hostile(kind, cache / f"{KEYS[0]}.safetensors", tmp_path / "target")
    done = cli(*TRAIN, cache=cache, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    again = {p["key"]: p for p in json.loads(done.stdout)["parents"]}
    assert [again[k]["cached"] for k in KEYS] == [False, True]  # the hostile one computed again, the other read
    assert again[KEYS[0]]["test_accuracy"] == first[KEYS[0]]["test_accuracy"]
    assert f"{KEYS[0]}.safetensors is corrupt ({WORDS[kind]}, not a regular file)" in done.stderr
    if kind == "folder":  # cannot be replaced: this result goes unstored, the cache stays writable
        assert "is a folder, not a file; the result is not stored" in done.stderr
    else:  # removed and stored again: the third run reads it
        assert json.loads(cli(*TRAIN, cache=cache, timeout=HANG_S).stdout)["parents"][0]["cached"]


@pytest.mark.parametrize("kind", KINDS)
def test_train_computes_without_a_lock_that_is_not_a_regular_file(tmp_path, kind):
    cache = tmp_path / "cache"
    cache.mkdir()
    hostile(kind, cache / f".{KEYS[0]}.lock", tmp_path / "target")
    hostile("fifo", cache / ".fingerprints.json", tmp_path / "unused")
    done = cli(*TRAIN, "--seeds", "0", cache=cache, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    what = "a symbolic link" if kind.startswith("link") else WORDS[kind]  # a lock's name is never followed
    assert f"cache lock .{KEYS[0]}.lock is {what}, not a regular file; computing without it" in done.stderr
    [parent] = json.loads(done.stdout)["parents"]
    assert parent["key"] == KEYS[0]
    assert not parent["cached"] and parent["test_accuracy"] > 50
    assert (cache / f"{parent['key']}.safetensors").is_file()  # stored all the same, atomically


def swap(cache: DiskCache, a: str, b: str) -> None:
    """Exchange two entries' files, as a careless copy or merge of cache folders would."""
    pa, pb, spare = (cache.root / f"{k}.safetensors" for k in (a, b, "swap"))
    pa.rename(spare)
    pb.rename(pa)
    spare.rename(pb)


def results(kind: str, cache: DiskCache, parents: list) -> list:
    """Two computations of one kind with different settings, as functions giving (key, numbers, from the cache)."""
    from otcore.analysis import curvature
    from otcore.pipeline import fuse_and_compare, prune_and_compare, train_parent

    data, model = DataSpec(), ModelSpec()
    if kind == "parent":
        def parent(seed: int):
            p = train_parent(data, model, replace(TrainSpec(), seed=seed, part=seed), "cpu", cache=cache)
            return p.key, p.metrics["test"], p.metrics["cached"]
        return [lambda: parent(0), lambda: parent(1)]
    if kind == "fusion":
        def fused(spec: FusionSpec):
            c = fuse_and_compare(data, model, parents, spec, device="cpu", cache=cache)
            return c.key, c.accuracies(), c.cached
        return [lambda: fused(FusionSpec()), lambda: fused(FusionSpec(mode="activations"))]
    if kind == "prune":
        def pruned(fraction: float):
            c = prune_and_compare(data, model, parents, PruneSpec(fraction=fraction), FusionSpec(), device="cpu",
                                  cache=cache)
            return c.key, {**c.accuracies(), **c.extra["sparsity"]}, c.cached
        return [lambda: pruned(0.3), lambda: pruned(0.6)]
    spec = HessianSpec(batch_size=300, top_k=1, power_iters=20, trace_probes=4, lanczos_iters=8, lambda_points=5)

    def analysed(p):
        from otcore.keys import hessian_key

        c = curvature(data, p.name, p.key, p.model, spec, "cpu", cache=cache)
        return hessian_key(data, spec, p.key), [c.top_eigenvalues, c.trace, c.loss], c.cached
    return [lambda: analysed(parents[0]), lambda: analysed(parents[1])]


@pytest.mark.parametrize("kind", ["parent", "fusion", "prune", "hessian"])
def test_swapped_entries_are_served_only_for_their_own_key_and_recomputed(digits_cli_train, digits_parents,
                                                                          tmp_path, caplog, kind):
    cache = DiskCache(copy_cache(digits_cli_train.cache, tmp_path / "cache"))
    a, b = results(kind, cache, digits_parents)
    (key_a, true_a, _), (key_b, true_b, _) = a(), b()
    assert true_a != true_b  # two different answers, or a swap could not be seen
    swap(cache, key_a, key_b)
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        listing = cache.listing()
        assert cache.load_record(key_a) is None and cache.load_record(key_b) is None
        again_a, again_b = a(), b()
    assert {k for k, _ in listing.skipped} == {key_a, key_b} and key_a not in [r.key for r in listing.rows]
    assert all("not its own (copied or renamed from another entry)" in why for _, why in listing.skipped)
    assert f"its settings give key {key_b[:12]}, not its own" in caplog.text
    assert again_a == (key_a, true_a, False) and again_b == (key_b, true_b, False)  # recomputed, true numbers
    assert a() == (key_a, true_a, True)  # and stored again under the right name


def test_swapped_sweep_records_are_refused_and_recorded_again(digits_cli_train, tmp_path, caplog):
    from otcore.sweep import LocalExecutor, SweepSpec, load_sweep, run_sweep, sweep_records

    cache = DiskCache(copy_cache(digits_cli_train.cache, tmp_path / "cache"))
    sweeps = [SweepSpec((("prune.fraction", values),), device="cpu") for values in ((0.3,), (0.6,))]
    first = [run_sweep(s, LocalExecutor(), cache) for s in sweeps]
    values = [[p.values for p in r.points] for r in first]
    swap(cache, sweeps[0].key, sweeps[1].key)
    with caplog.at_level(logging.WARNING, logger="otcore.cache"):
        assert sweep_records(cache).rows == []
        for s in sweeps:
            with pytest.raises(ValueError, match="no readable sweep"):
                load_sweep(s.key, cache)
    assert caplog.text.count("not its own (copied or renamed from another entry)") == 2
    again = [run_sweep(s, LocalExecutor(), cache) for s in sweeps]  # points from the cache, records written anew
    assert [[p.values for p in r.points] for r in again] == values
    assert [[p.values for p in load_sweep(s.key, cache).points] for s in sweeps] == values


def test_an_entry_of_one_kind_under_another_kinds_key_is_refused(digits_cli_train, tmp_path):
    folder = copy_cache(digits_cli_train.cache, tmp_path / "cache")
    shutil.copy2(folder / f"{KEYS[0]}.safetensors", folder / f"{'f' * 24}.safetensors")  # a parent under a made-up key
    done = cli("list", "--json", cache=folder, timeout=HANG_S)
    assert done.returncode == 0 and f"cache entry {'f' * 24} skipped: its settings give key {KEYS[0][:12]}" in done.stderr
    assert sorted(e["key"] for e in json.loads(done.stdout)["entries"]) == sorted(KEYS)
