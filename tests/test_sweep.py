"""Sweeps: grid parsing, the local executor (rows, resume, retries), Ray optional, and a real local Ray instance.

Parents are digits mlpnet trained for 3 epochs, once per module, and copied into each test's own
cache folder, so a test computes only what it is about.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import REPO
from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, HessianSpec, ModelSpec, PruneSpec, SpecError, TrainSpec
from otcore.pipeline import prune_and_compare, train_parents
from otcore.analysis import curvatures
from otcore.figures import study_table, study_text, sweep_figure, sweep_metrics, sweep_table
from otcore.sweep import (LocalExecutor, RayExecutor, SweepSpec, load_sweep, parse_grid, run_point,
                          run_sweep)

PARENTS = TrainSpec(epochs=3)
EXACT = ["method", "test acc (%)", "train acc (%)", "sparsity", "parameters", "key"]  # equal to the bit


def spec(*grid: str, **base) -> SweepSpec:
    return SweepSpec(parse_grid(grid), train=PARENTS, device="cpu", **base)


def rows_of(result):
    """A sweep's table: one row per (point, method)."""
    return sweep_table(result.points, result.fields)


@pytest.fixture(scope="module")
def parents_dir(tmp_path_factory) -> Path:
    """A cache folder holding the parents of seeds 0 and 1 (trained with 1 thread, as the executors do)."""
    folder = tmp_path_factory.mktemp("sweep-parents")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: more threads only add overhead, a lot of it on a busy machine
    try:
        train_parents(DataSpec(), ModelSpec(), PARENTS, [0, 1], "cpu", cache=DiskCache(folder))
    finally:
        torch.set_num_threads(threads)
    return folder


def cache_with(parents_dir: Path, folder: Path, seeds: tuple[int, ...] = (0, 1)) -> DiskCache:
    """A fresh cache folder holding the parents of the given seeds."""
    from otcore.sweep import ParentJob

    keys = {ParentJob(DataSpec(), ModelSpec(), PARENTS, s).key for s in seeds}
    folder.mkdir()
    for key in keys:
        shutil.copy2(parents_dir / f"{key}.safetensors", folder)
    return DiskCache(folder)


# ---------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("grid, message", [
    (["prune.fractoin=0,0.3"], "unknown sweep field 'prune.fractoin'; choose one of seed, seeds, arch"),
    (["prune.fraction=0,abc"], "prune.fraction: 'abc' is not a number"),
    (["prune.fraction=0,1"], r"prune.fraction=1: prune fraction must be in \[0, 1\), got 1.0"),
    (["prune.fraction=-0.1"], r"prune.fraction=-0.1: prune fraction must be in \[0, 1\)"),
    (["train.epochs=2.5"], "train.epochs: '2.5' is not a whole number"),
    (["prune.type=random"], "prune.type=random: prune type must be one of"),
    (["arch=resnet1000"], "arch=resnet1000: unknown architecture 'resnet1000'"),
    (["train.seed=1"], "sweep field 'train.seed' cannot be swept"),
    (["seed=0,1", "seed=2"], "sweep field 'seed' appears twice"),
    (["prune.fraction=0.3,0.3"], "lists a value twice"),
    (["prune.fraction"], "a grid entry looks like field=value1,value2"),
    (["seed=0", "seeds=0+1"], "sweep either 'seed'"),
    (["train.lr=20"], r"train.lr=20: learning rate must be in \(0, 10\], got 20.0"),
    (["train.lr=inf"], "train.lr: 'inf' is not a number"),
    (["fusion.act_samples=1000000"], r"activation samples must be in \[1, 100000\]"),
    (["prune.retrain_epochs=5000"], r"retraining epochs must be in \[0, 1000\]"),
])
def test_grid_errors_are_one_clear_spec_error(grid, message) -> None:
    with pytest.raises(SpecError, match=message) as info:
        spec(*grid)
    assert "\n" not in str(info.value)


def test_points_vary_the_last_field_fastest_and_seed_shifts_the_parent_set() -> None:
    sweep = spec("seed=0,1", "prune.fraction=0,0.5", "fusion.mode=acts")
    points = sweep.points()
    assert [(p.seeds, p.prune.fraction) for p in points] == [((0, 1), 0.0), ((0, 1), 0.5), ((2, 3), 0.0),
                                                             ((2, 3), 0.5)]
    assert {p.fusion.mode for p in points} == {"activations"}  # the CLI's alias, as the spec spells it
    assert points[3].label() == "seed=1, prune.fraction=0.5, fusion.mode=activations"
    assert len({p.key for p in points}) == 4
    assert spec("seeds=4+5,0+1").points()[0].seeds == (4, 5)
    with pytest.raises(SpecError, match="pruning field"):
        spec("prune.fraction=0.3", step="fusion")


def test_the_sweep_package_imports_no_plotly_or_ray_and_each_module_imports_alone() -> None:
    # Each submodule first in a fresh interpreter: an import cycle would fail on one of them. (pandas is not
    # checked here: POT imports it itself; tests/test_architecture.py checks that no otcore module but
    # figures and report imports pandas.)
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'plotly', 'ray'}))")
    for module in ("otcore.sweep.executors", "otcore.sweep.tasks", "otcore.sweep.driver", "otcore.sweep"):
        proc = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, check=False,
                              env={**os.environ}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "[]", (module, proc.stdout)


# ---------------------------------------------------------------------------- the local executor


def test_local_sweep_stores_every_point_and_its_rows_are_the_pipelines(parents_dir, tmp_path) -> None:
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("prune.fraction=0,0.5", "prune.type=unstructured,structured")
    seen: list[float] = []
    result = run_sweep(sweep, LocalExecutor(), cache, progress=lambda what, done: seen.append(done))
    assert result.status == "finished" and not result.failed and len(result.points) == result.total == 4
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    assert [p.values for p in result.points] == [{"prune.fraction": f, "prune.type": t} for f in (0.0, 0.5)
                                                 for t in ("unstructured", "structured")]
    parents = train_parents(DataSpec(), ModelSpec(), PARENTS, [0, 1], "cpu", cache=cache)
    for point, p in zip(sweep.points(), result.points):
        # The dashboard's call finds the sweep's result in the cache, under the key the sweep predicted.
        again = prune_and_compare(DataSpec(), ModelSpec(), parents, point.prune, FusionSpec(), PARENTS, "cpu",
                                  cache=cache)
        assert again.cached and again.key == p.key == point.key
        assert [(r.method, r.test.accuracy, r.test.loss) for r in again.rows] == \
               [(r.method, r.test.accuracy, r.test.loss) for r in p.comparison.rows]
        assert p.comparison.extra["sparsity"]["OT fusion"] == again.extra["sparsity"]["OT fusion"]
    table = sweep_table(result.points, result.fields)
    assert len(table) == 4 * 5 and set(table["method"]) >= {"parent 1", "OT fusion", "vanilla average"}
    # The record lets the dashboard read the sweep back; the same numbers come out.
    stored = load_sweep(result.key, cache)
    assert stored.status == "finished" and sweep_table(stored.points, stored.fields).equals(table)
    figure = sweep_figure(table, "test acc (%)", "prune.fraction")
    assert len(figure.data) == 5 * 2  # a line per method and pruning type
    assert figure.layout.xaxis.title.text == "prune fraction (share of weights removed)"
    assert figure.layout.yaxis.title.text == "test accuracy (%)"


NETWORKS = ["parent 1", "parent 2", "OT fusion", "OT fusion retrained"]
VANILLA = "vanilla average"
ANALYSIS = HessianSpec(batch_size=200, top_k=2, power_iters=30, lanczos_iters=8, lambda_points=5)


def test_a_sweep_that_analyses_gives_the_curvature_of_a_direct_analysis_and_its_tables(parents_dir, tmp_path):
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("prune.type=unstructured,structured", "prune.fraction=0.3", prune=PruneSpec(retrain_epochs=1),
                 analyse=("parents", "OT fusion", "retrained fusion"), hessian=ANALYSIS)
    result = run_sweep(sweep, LocalExecutor(), cache)
    assert not result.failed and len(result.points) == 2
    parents = train_parents(DataSpec(), ModelSpec(), PARENTS, [0, 1], "cpu", cache=cache)
    fresh = DiskCache(tmp_path / "fresh")  # the direct analysis computes; it does not read the sweep's entries
    for point, p in zip(sweep.points(), result.points):
        assert list(p.curvature) == NETWORKS
        comparison = prune_and_compare(DataSpec(), ModelSpec(), parents, point.prune, FusionSpec(), PARENTS, "cpu",
                                       cache=cache)
        assert comparison.cached and comparison.key == p.key
        direct = curvatures(DataSpec(), [r for r in comparison.rows if r.method in p.curvature], ANALYSIS, "cpu",
                            cache=fresh)
        assert not any(c.cached for c in direct)
        for c in direct:
            assert p.curvature[c.name]["top_eigenvalues"] == c.top_eigenvalues
            assert p.curvature[c.name]["trace"] == c.trace and c.trace_method == "exact"
    # Read back from the cache: the same numbers; a second run finds every point and analysis cached.
    assert [p.curvature for p in load_sweep(result.key, cache).points] == [p.curvature for p in result.points]
    assert all(p.cached for p in run_sweep(sweep, LocalExecutor(), cache).points)

    table = study_table(result.points, "trace")
    assert list(table.index) == ["unstructured 30 %", "structured 30 %"]
    assert list(table.columns) == NETWORKS  # only the analysed networks
    assert table.loc[table.index[1], "OT fusion"] == result.points[1].curvature["OT fusion"]["trace"]
    latex = study_text(table, "latex")
    lines = latex.splitlines()
    assert [line.strip() for line in lines if "rule" in line] == ["\\toprule", "\\midrule", "\\bottomrule"]
    body = lines[lines.index("\\midrule") + 1:lines.index("\\bottomrule")]
    assert len(body) == 2 and all(line.count("&") == 4 for line in body)  # an experiment per row, 4 networks
    assert body[1].startswith("structured 30 \\%") and f"{table.iloc[1, 2]:.2f}" in body[1]

    # Any curvature metric against any swept field: a line per analysed network, initial left, retrained right.
    rows = sweep_table(result.points, result.fields)
    assert {"trace", "λ1", "λ2"} <= set(sweep_metrics(rows)) and rows[rows["method"] == VANILLA]["trace"].isna().all()
    figure = sweep_figure(rows, "trace", "prune.type", side_by_side=True)
    assert [(t.name, t.xaxis) for t in figure.data] == [("parent 1", "x"), ("parent 2", "x"), ("OT fusion", "x"),
                                                          ("OT fusion retrained", "x2")]
    assert dict(zip(figure.data[3].x, figure.data[3].y)) == \
           {p.values["prune.type"]: p.curvature["OT fusion retrained"]["trace"] for p in result.points}

    # The CLI prints the same table from the cache.
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache.root)}
    proc = subprocess.run([sys.executable, "-m", "otcore", "table", result.key[:10], "--metric", "lambda1",
                           "--format", "csv"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == study_table(result.points, "λ1").to_csv().strip()
    bad = subprocess.run([sys.executable, "-m", "otcore", "table", result.key[:10], "--metric", "sharpness"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: unknown metric 'sharpness'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_retraining_recipe_is_swept_field_by_field():
    sweep = spec("prune.retrain.lr=0.001,0.01", "prune.retrain.schedule=cosine", prune=PruneSpec(retrain_epochs=1))
    points = sweep.points()
    assert [(p.prune.retrain.lr, p.prune.retrain.schedule) for p in points] == [(0.001, "cosine"), (0.01, "cosine")]
    assert points[0].prune.retrain.decay_factor == PruneSpec().retrain.decay_factor  # the rest of the recipe kept
    assert points[0].key != points[1].key  # cached by the recipe's values
    # Without retraining the recipe changes nothing: two lr values would be one computation under two labels.
    with pytest.raises(SpecError, match="prune.retrain.lr=0.001 and prune.retrain.lr=0.01 give the same result"):
        spec("prune.retrain.lr=0.001,0.01")
    with pytest.raises(SpecError, match=r"prune.retrain.lr=0: retraining learning rate must be in \(0, 10\]"):
        spec("prune.retrain.lr=0")
    with pytest.raises(SpecError, match="unknown sweep field 'prune.retrain'"):
        spec("prune.retrain=1")


def test_a_fusion_step_sweep_is_found_again_under_its_predicted_key(parents_dir, tmp_path) -> None:
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("fusion.ensemble_step=0.3", step="fusion")
    first = run_sweep(sweep, LocalExecutor(), cache)
    assert [p.key for p in first.points] == [sweep.points()[0].key] and not first.points[0].cached
    assert [r.method for r in first.points[0].comparison.rows][-1] == "OT fusion"
    assert run_sweep(sweep, LocalExecutor(), cache).points[0].cached


def test_an_interrupted_sweep_resumes_computing_only_the_missing_points(parents_dir, tmp_path) -> None:
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("prune.fraction=0.1,0.2,0.4")

    def stop_after_first(what: str, done: float) -> None:
        if what.startswith("1/3 points"):
            raise KeyboardInterrupt  # the user pressed Ctrl-C after the first point

    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, LocalExecutor(), cache, progress=stop_after_first)
    assert load_sweep(sweep.key, cache).status == "interrupted"
    assert len(load_sweep(sweep.key, cache).points) == 1
    computed: list[str] = []

    def counting(point, parents, progress=None):
        computed.append(point.label())
        return run_point(point, parents, progress)

    result = run_sweep(sweep, LocalExecutor(), cache, task=counting)
    assert computed == ["prune.fraction=0.2", "prune.fraction=0.4"]
    assert [p.cached for p in result.points] == [True, False, False] and result.status == "finished"


def flip_digit(path: Path, value: float) -> tuple[str, str]:
    """Change the leading digit of `value` where the entry's header holds it (same length: the JSON stays valid)."""
    data = path.read_bytes()
    text = json.dumps(value).encode()
    assert data.count(text) == 1, text
    wrong = text.replace(text[:1], b"9" if text[:1] != b"9" else b"1", 1)
    path.write_bytes(data.replace(text, wrong))
    return text.decode(), wrong.decode()


def restore_with(cache: DiskCache, key: str, edit) -> None:
    """Store the entry again after `edit(metrics)`: a checksum that verifies over a malformed record."""
    entry = cache.load(key)
    edit(entry.metrics)
    cache.store(entry)


def test_a_resumed_sweep_recomputes_a_tampered_point_and_reports_its_true_value(parents_dir, tmp_path, caplog):
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("prune.fraction=0.5,0.7")
    first = run_sweep(sweep, LocalExecutor(), cache)
    true = {p.key: p.comparison.accuracies()["ot_fusion"] for p in first.points}
    damaged = first.points[1].key
    shown, wrong = flip_digit(cache.root / f"{damaged}.safetensors", true[damaged])
    assert float(wrong) != true[damaged] and float(shown) == true[damaged]
    with caplog.at_level("WARNING", logger="otcore.cache"):
        listed = load_sweep(sweep.key, cache)  # the dashboard never shows the changed digit
    assert [p.key for p in listed.points] == [first.points[0].key]
    assert [r.getMessage() for r in caplog.records] == [f"cache entry {damaged} skipped: damaged (checksum mismatch)"]

    computed: list[str] = []

    def counting(point, parents, progress=None):
        computed.append(point.label())
        return run_point(point, parents, progress)

    again = run_sweep(sweep, LocalExecutor(), cache, task=counting)
    assert computed == ["prune.fraction=0.7"] and [p.cached for p in again.points] == [True, False]
    assert {p.key: p.comparison.accuracies()["ot_fusion"] for p in again.points} == true  # the TRUE value
    assert rows_of(load_sweep(sweep.key, cache)).equals(rows_of(again))  # and the cache holds it again


def test_malformed_point_and_sweep_records_are_skipped_not_fatal(parents_dir, tmp_path, caplog):
    from otcore.sweep import sweep_records

    cache = cache_with(parents_dir, tmp_path / "cache")
    good, bad = spec("prune.fraction=0.5"), spec("prune.fraction=0.7")
    first = run_sweep(good, LocalExecutor(), cache)
    run_sweep(bad, LocalExecutor(), cache)
    point = first.points[0].key
    # Valid checksums over records their readers cannot use: a string where a number belongs, a missing key.
    restore_with(cache, point, lambda m: m["rows"][-1]["test"].update(accuracy="93.78"))
    restore_with(cache, bad.key, lambda m: m.pop("status"))
    with caplog.at_level("WARNING", logger="otcore.cache"):
        listing = sweep_records(cache)
        assert [r.key for r in listing.rows] == [good.key]
        assert load_sweep(good.key, cache).points == []  # its one point is unreadable: as if not yet computed
        with pytest.raises(ValueError, match=f"no readable sweep {bad.key}"):
            load_sweep(bad.key, cache)
    assert sorted(listing.skipped) == sorted([(point, "metrics.rows[4].test.accuracy is the string '93.78', "
                                                      "expected a number"),
                                              (bad.key, "metrics.status is missing")])
    assert len(caplog.records) == 2  # one warning per bad entry, however often it is listed
    assert "2 damaged or unreadable cache entries skipped" in listing.warning()
    again = run_sweep(good, LocalExecutor(), cache)
    assert not again.points[0].cached
    assert again.points[0].comparison.accuracies() == first.points[0].comparison.accuracies()


def test_a_failing_point_is_retried_then_reported_with_its_error(parents_dir, tmp_path) -> None:
    cache = cache_with(parents_dir, tmp_path / "cache")
    sweep = spec("prune.fraction=0,0.5")
    tries: dict[float, int] = {0.0: 0, 0.5: 0}

    def flaky(point, parents, progress=None):
        tries[point.prune.fraction] += 1
        if point.prune.fraction == 0.5:
            raise RuntimeError("this point always fails")
        if tries[0.0] == 1:
            raise OSError("a transient failure")
        return run_point(point, parents, progress)

    result = run_sweep(sweep, LocalExecutor(retries=2), cache, task=flaky)
    assert tries == {0.0: 2, 0.5: 3}
    assert [(p.values, p.attempts) for p in result.points] == [({"prune.fraction": 0.0}, 2)]
    [failure] = result.failed
    assert failure.values == {"prune.fraction": 0.5} and failure.attempts == 3
    assert failure.error == "RuntimeError: this point always fails"
    assert load_sweep(sweep.key, cache).failed[0].error == failure.error  # the dashboard sees it too
    again = run_sweep(sweep, LocalExecutor(), cache)  # resumes: only the failed point runs, and now succeeds
    assert [p.cached for p in again.points] == [True, False] and not again.failed


def test_the_local_executor_and_the_cli_work_without_ray(parents_dir, tmp_path) -> None:
    cache = cache_with(parents_dir, tmp_path / "cache")
    code = ("import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError
            "from otcore.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache.root)}
    common = ["sweep", "--epochs", "3", "--device", "cpu", "--json"]
    proc = subprocess.run([sys.executable, "-c", code, *common, "--fractions", "0,0.3", "--seed-sets", "0,1"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [(r["seeds"], r["fraction"]) for r in out["rows"]] == [([0, 1], 0.0), ([0, 1], 0.3)]
    assert all({"ot_fusion", "sparsity", "parents", "point"} <= set(r) for r in out["rows"])
    assert out["failed"] == [] and out["executor"] == "local"
    proc = subprocess.run([sys.executable, "-c", code, *common, "--executor", "ray"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "error: the ray executor needs Ray: pip install 'ray>=2.9' (the local executor " \
                                  "does not)"


# ---------------------------------------------------------------------------- a real local Ray instance


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs for this module's Ray tests, shut down after them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    # Ray imports a task's function in the worker by module name; this test module is not importable there.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_gives_the_same_rows_as_the_local_executor(ray_instance, parents_dir, tmp_path) -> None:
    sweep = spec("prune.fraction=0.5", "prune.type=unstructured,structured")
    local = run_sweep(sweep, LocalExecutor(), cache_with(parents_dir, tmp_path / "local"))
    ray_cache = cache_with(parents_dir, tmp_path / "ray")
    on_ray = run_sweep(sweep, RayExecutor(), ray_cache)
    assert on_ray.executor == "ray" and not on_ray.failed and len(on_ray.points) == 2
    a, b = rows_of(local), rows_of(on_ray)
    assert a[EXACT].equals(b[EXACT])
    # A worker runs torch with 1 thread, this process with 2: losses may differ in float32's last bit.
    assert a["test loss"].to_numpy() == pytest.approx(b["test loss"].to_numpy(), rel=1e-6)
    # The driver stored what the workers made: the points, and the sweep's record.
    assert sorted(row.kind for row in ray_cache.entries()) == ["parent", "parent", "prune", "prune", "sweep"]


def kill_first_attempt(marker: str, point, parents, progress=None):
    """A point task whose first attempt kills its own worker process (SIGKILL, no clean-up)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return run_point(point, parents, progress)


@pytest.mark.ray
def test_a_point_whose_worker_is_killed_is_retried(ray_instance, parents_dir, tmp_path) -> None:
    marker = tmp_path / "killed-once"
    cache = cache_with(parents_dir, tmp_path / "cache", (0, 1))
    result = run_sweep(spec("prune.fraction=0.3"), RayExecutor(retries=1), cache,
                       task=functools.partial(kill_first_attempt, str(marker)))
    assert marker.exists()  # the first attempt ran and died
    assert not result.failed and len(result.points) == 1
    parents = train_parents(DataSpec(), ModelSpec(), PARENTS, [0, 1], "cpu", cache=cache)
    point = spec("prune.fraction=0.3").points()[0]
    stored = prune_and_compare(DataSpec(), ModelSpec(), parents, point.prune, FusionSpec(), PARENTS, "cpu",
                               cache=cache)
    assert stored.cached and [r.test.accuracy for r in stored.rows] == \
           [r.test.accuracy for r in result.points[0].comparison.rows]


@pytest.mark.ray
def test_the_cli_joins_a_running_ray_cluster(ray_instance, parents_dir, tmp_path) -> None:
    cache = cache_with(parents_dir, tmp_path / "cache", (0,))  # parent seed 1 is trained by a Ray task
    address = ray_instance.get_runtime_context().gcs_address
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache.root)}
    proc = subprocess.run([sys.executable, "-m", "otcore", "sweep", "--grid", "prune.type=unstructured,structured",
                           "--fractions", "0.5", "--epochs", "3", "--device", "cpu", "--executor", "ray",
                           "--ray-address", address, "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()  # Ray's own messages went to stderr
    out = json.loads(line)
    assert [(r["type"], r["fraction"]) for r in out["rows"]] == [("unstructured", 0.5), ("structured", 0.5)]
    assert out["executor"] == "ray" and out["failed"] == []
    # Workers wrote nothing: the driver stored the parent a worker trained, and both points.
    assert sorted(row.kind for row in cache.entries()) == ["parent", "parent", "prune", "prune", "sweep"]


def test_a_method_the_other_field_does_not_move_gets_one_line() -> None:
    """A fusion sweep over alignments and widths: the parents' scores do not depend on the alignment (one line
    each), a fused method lives under its own alignment only (one line), and the vanilla average measured
    differently per alignment keeps a line per alignment."""
    import pandas as pd

    rows = []
    for alignment, fused in (("zipit", "ZipIt!"), ("pleas", "PLeaS")):
        for width in (1.0, 2.0):
            rows += [(alignment, width, "parent 1", 97.0), (alignment, width, fused, 90.0 + width + len(fused)),
                     (alignment, width, "vanilla average", 80.0 + (alignment == "pleas"))]
    table = pd.DataFrame(rows, columns=["fusion.alignment", "fusion.width", "method", "test acc (%)"])
    figure = sweep_figure(table, "test acc (%)", "fusion.width")
    names = [t.name for t in figure.data]
    assert names == ["parent 1", "ZipIt!", "vanilla average · fusion.alignment=zipit", "PLeaS",
                     "vanilla average · fusion.alignment=pleas"]
    lines = {t.name: (list(t.x), list(t.y)) for t in figure.data}
    assert lines["parent 1"] == ([1.0, 2.0], [97.0, 97.0])  # drawn once, from the first alignment's rows
    assert lines["PLeaS"] == ([1.0, 2.0], [96.0, 97.0])


def test_a_value_that_holds_only_beside_another_fields_value_is_accepted_and_a_clash_names_its_point() -> None:
    """A fused width above 1 fails with the base spec's OT alone but holds beside alignment ZipIt!: the grid is
    valid; with OT in the grid too, the clash is refused naming the whole point; with no alignment field, the width."""
    grid = SweepSpec((("fusion.alignment", ("zipit",)), ("fusion.width", (1.0, 2.0))), step="fusion")
    assert [p.fusion.alignment for p in grid.points()] == ["zipit", "zipit"]
    assert [p.fusion.width for p in grid.points()] == [1.0, 2.0]
    with pytest.raises(SpecError, match=r"fusion.alignment=ot, fusion.width=2"):
        SweepSpec((("fusion.alignment", ("ot", "zipit")), ("fusion.width", (2.0,))), step="fusion")
    with pytest.raises(SpecError, match=r"^fusion.width=2: a fused width above 1"):
        SweepSpec((("fusion.width", (1.0, 2.0)),), step="fusion")
