"""Parents trained on different parts of the data: partitions, their keys, and the skills fusion transfers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, ModelSpec, SpecError, TrainSpec
from otcore.keys import parent_key
from otcore.data import load_dataset
from otcore.partition import class_counts, own_classes, part_indices
from otcore.pipeline import OT_FUSION, fuse_and_compare, train_parents

from tests.support import REPO

DIGITS = load_dataset("digits")
Y = DIGITS.y_train


def parts(spec: TrainSpec) -> list[torch.Tensor]:
    return [part_indices(Y, replace(spec, part=i), 10) for i in range(2)]


@pytest.mark.parametrize("spec", [TrainSpec(partition="labels"), TrainSpec(partition="labels", partition_classes=(1, 7)),
                                  TrainSpec(partition="personalized", personal_class=3, partition_fraction=0.2),
                                  TrainSpec(partition="small_big", partition_fraction=0.25)])
def test_the_two_parts_split_the_train_split_exactly(spec):
    first, second = parts(spec)
    assert len(set(first.tolist()) & set(second.tolist())) == 0
    assert sorted(first.tolist() + second.tolist()) == list(range(len(Y)))


def test_labels_gives_each_parent_exactly_its_classes():
    first, second = parts(TrainSpec(partition="labels", partition_classes=(7, 1)))
    assert set(Y[first].tolist()) == {1, 7}
    assert set(Y[second].tolist()) == {0, 2, 3, 4, 5, 6, 8, 9}
    evens, odds = parts(TrainSpec(partition="labels"))  # no classes named: the even ones
    assert set(Y[evens].tolist()) == {0, 2, 4, 6, 8} and set(Y[odds].tolist()) == {1, 3, 5, 7, 9}


def test_personalized_gives_the_first_parent_its_class_and_the_share_of_the_rest():
    spec = TrainSpec(partition="personalized", personal_class=9, partition_fraction=0.1)
    first, second = parts(spec)
    others = int((Y != 9).sum())
    assert int((Y[first] == 9).sum()) == int((Y == 9).sum())  # every example of the personal class
    assert int((Y[first] != 9).sum()) == -(-others // 10)  # ceil(0.1 x the others), as the reference
    assert 9 not in set(Y[second].tolist())
    assert own_classes(spec, 10) == [list(range(10)), [0, 1, 2, 3, 4, 5, 6, 7, 8]]


def test_small_big_gives_the_first_parent_its_share():
    first, second = parts(TrainSpec(partition="small_big", partition_fraction=0.25))
    assert len(first) == -(-len(Y) * 25 // 100) and len(second) == len(Y) - len(first)


def test_the_same_seed_gives_the_same_partition_and_another_seed_another():
    for kind in ("personalized", "small_big"):
        spec = TrainSpec(partition=kind, partition_seed=3)
        assert all(torch.equal(a, b) for a, b in zip(parts(spec), parts(TrainSpec(partition=kind, partition_seed=3))))
        assert not torch.equal(parts(spec)[0], parts(replace(spec, partition_seed=4))[0])


def test_the_cache_key_changes_with_the_partition_and_the_part():
    data, model = DataSpec(), ModelSpec()
    keys = {parent_key(data, model, spec) for spec in (
        TrainSpec(), TrainSpec(partition="labels"), TrainSpec(partition="labels", part=1),
        TrainSpec(partition="labels", partition_classes=(0, 1)), TrainSpec(partition="personalized"),
        TrainSpec(partition="personalized", personal_class=3), TrainSpec(partition="personalized", partition_seed=1),
        TrainSpec(partition="small_big"), TrainSpec(partition="small_big", partition_fraction=0.3))}
    assert len(keys) == 9
    # Settings a partition does not read do not split the cache.
    assert parent_key(data, model, TrainSpec(personal_class=3, part=1)) == parent_key(data, model, TrainSpec())
    assert parent_key(data, model, TrainSpec(partition="labels", partition_classes=(2, 0))) == \
        parent_key(data, model, TrainSpec(partition="labels", partition_classes=(0, 2)))


@pytest.mark.parametrize("bad, message", [
    (dict(partition="halves"), "partition must be one of"),
    (dict(partition="labels", partition_classes=(1, 1)), "distinct"),
    (dict(partition="small_big", partition_fraction=1.0), "partition fraction"),
    (dict(partition="labels", part=2), "two parents")])
def test_bad_partitions_are_refused(bad, message):
    with pytest.raises(SpecError, match=message):
        TrainSpec(**bad)


def test_classes_beyond_the_dataset_and_more_than_two_parents_are_refused(tmp_path):
    with pytest.raises(SpecError, match="classes 0 to 9"):
        part_indices(Y, TrainSpec(partition="personalized", personal_class=10), 10)
    with pytest.raises(SpecError, match="no class for the second parent"):
        part_indices(Y, TrainSpec(partition="labels", partition_classes=tuple(range(10))), 10)
    with pytest.raises(SpecError, match="between 2 parents"):
        train_parents(DataSpec(), ModelSpec(), TrainSpec(partition="labels"), [0, 1, 2], "cpu",
                      cache=DiskCache(tmp_path))


@pytest.fixture(scope="module")
def labels_pair(tmp_path_factory) -> tuple[list, object]:
    """Two digits mlpnet parents trained on the even and the odd classes, and their fusion."""
    cache = DiskCache(tmp_path_factory.mktemp("labels-pair"))
    spec = TrainSpec(partition="labels")
    parents = train_parents(DataSpec(), ModelSpec(), spec, [0, 1], "cpu", cache=cache)
    return parents, fuse_and_compare(DataSpec(), ModelSpec(), parents, FusionSpec(), TrainSpec(), "cpu", cache=cache)


def test_each_parent_was_trained_on_exactly_its_part(labels_pair):
    parents, _ = labels_pair
    evens, odds = parts(TrainSpec(partition="labels"))
    assert parents[0].metrics["class_counts"] == class_counts(Y[evens], 10)
    assert parents[1].metrics["class_counts"] == class_counts(Y[odds], 10)
    assert [c for c, n in enumerate(parents[0].metrics["class_counts"]) if n] == [0, 2, 4, 6, 8]


def test_fusion_transfers_skills_neither_parent_has(labels_pair):
    _, comparison = labels_pair
    accuracy = {r.method: r.test.accuracy for r in comparison.rows}
    per_class = {r.method: r.test.per_class for r in comparison.rows}
    # Each parent knows only its five classes: at most about half the test set.
    assert max(accuracy["parent 1"], accuracy["parent 2"]) < 52.0
    assert all(per_class["parent 1"][c] == 0.0 for c in (1, 3, 5, 7, 9))
    # Measured on these seeds (10 epochs per parent): parents 48.89 / 49.56 %, OT fusion 63.11 %, with 53.3 % on
    # the even and 72.3 % on the odd classes (mean per class); vanilla averaging reaches 80.0 % on this pair.
    assert accuracy[OT_FUSION] > max(accuracy["parent 1"], accuracy["parent 2"]) + 10.0
    for classes in ((0, 2, 4, 6, 8), (1, 3, 5, 7, 9)):  # skills of both parents survive in one network
        assert sum(per_class[OT_FUSION][c] for c in classes) / 5 > 45.0


def test_per_class_accuracy_averages_to_the_accuracy(labels_pair):
    _, comparison = labels_pair
    counts = class_counts(DIGITS.y_test, 10)
    for row in comparison.rows:
        weighted = sum(a * n for a, n in zip(row.test.per_class, counts)) / sum(counts)
        assert weighted == pytest.approx(row.test.accuracy, abs=1e-4)


def test_cli_trains_on_a_partition_and_reports_the_classes(tmp_path):
    env = {**os.environ, "OTCORE_CACHE_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "otcore", "train", "--dataset", "digits", "--partition", "labels",
            "--choice", "0,2,4,6,8", "--epochs", "2", "--json"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    parents = json.loads(done.stdout)["parents"]
    assert [p["classes"] for p in parents] == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert sum(p["train_examples"] for p in parents) == len(Y)
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert [p["cached"] for p in json.loads(again.stdout)["parents"]] == [True, True]
    iid = subprocess.run(args[:6] + ["--epochs", "2", "--json"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert [p["cached"] for p in json.loads(iid.stdout)["parents"]] == [False, False]  # another key
    three = subprocess.run(args[:-1] + ["--seeds", "0", "1", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert three.returncode == 2 and three.stderr.strip().startswith("error: ") and "2 parents" in three.stderr


def test_a_sweep_over_partitions_trains_each_parent_on_its_part(tmp_path):
    from otcore.sweep import SweepSpec, parse_grid, run_sweep

    sweep = SweepSpec(grid=parse_grid(["train.partition=iid,labels"]), train=TrainSpec(epochs=2), step="fusion")
    points = sweep.points()
    assert [p.parents()[1].key for p in points] == [
        parent_key(DataSpec(), ModelSpec(), replace(TrainSpec(epochs=2), seed=1)),
        parent_key(DataSpec(), ModelSpec(), TrainSpec(epochs=2, partition="labels", seed=1, part=1))]
    result = run_sweep(sweep, cache=DiskCache(tmp_path))
    assert len(result.points) == 2 and not result.failed
    labels = DiskCache(tmp_path).load(points[1].parents()[1].key)
    assert [c for c, n in enumerate(labels.metrics["class_counts"]) if n] == [1, 3, 5, 7, 9]
    with pytest.raises(SpecError, match="between 2 parents"):
        SweepSpec(grid=parse_grid(["train.partition=labels"]), seeds=(0, 1, 2)).points()
