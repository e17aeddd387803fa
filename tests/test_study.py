"""The study end to end (issue 13): its 6-point analysed sweep from the CLI, killed and resumed, the same on Ray.

Structured and unstructured pruning at 30, 50 and 70 %, one epoch of retraining, and the Hessian
analysis of 5 networks per point (both parents, the vanilla average, OT fusion, and both retrained),
with small analysis settings: digits parents, trained once and copied into each cache.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO
from otcore.cache import DiskCache
from otcore.config import DataSpec, HessianSpec, ModelSpec, PruneSpec, TrainSpec
from otcore.figures import study_table, study_text
from otcore.pipeline import train_parents
from otcore.sweep import RayExecutor, SweepSpec, load_sweep, parse_grid, run_sweep, sweep_records

pytestmark = pytest.mark.slow

PARENTS = TrainSpec(epochs=3)
ANALYSED = ["parents", "vanilla", "OT fusion", "retrained fusion", "retrained vanilla"]
NETWORKS = ["parent 1", "parent 2", "vanilla average", "OT fusion", "vanilla average retrained", "OT fusion retrained"]
HESSIAN = HessianSpec(batch_size=200, top_k=2, power_iters=30, lanczos_iters=8, lambda_points=5)
EXPERIMENTS = [f"{kind} {fraction} %" for kind in ("structured", "unstructured") for fraction in (30, 50, 70)]
CLI = ["sweep", "--dataset", "digits", "--arch", "mlpnet", "--epochs", "3", "--device", "cpu",
       "--grid", "prune.type=structured,unstructured", "--fractions", "0.3,0.5,0.7", "--retrain-epochs", "1",
       "--analyse", *ANALYSED, "--hessian-batch-size", "200", "--top-k", "2", "--power-iters", "30",
       "--lanczos-iters", "8", "--lambda-points", "5", "--json"]


def study() -> SweepSpec:
    """The sweep the CLI flags above make."""
    return SweepSpec(parse_grid(["prune.type=structured,unstructured", "prune.fraction=0.3,0.5,0.7"]),
                     train=PARENTS, prune=PruneSpec(retrain_epochs=1), device="cpu", analyse=tuple(ANALYSED),
                     hessian=HESSIAN)


@pytest.fixture(scope="module")
def parents_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study-parents")
    train_parents(DataSpec(), ModelSpec(), PARENTS, [0, 1], "cpu", cache=DiskCache(folder))
    return folder


def cache_with_parents(parents_dir: Path, folder: Path) -> DiskCache:
    shutil.copytree(parents_dir, folder)
    return DiskCache(folder)


def cli(args: list[str], cache: DiskCache, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache.root), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "otcore", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, **kwargs)


def finished_points(cache: DiskCache) -> set[str]:
    """Keys of the points stored with the analyses of all their networks (what a resumed sweep skips)."""
    rows = sweep_records(cache).rows
    if not rows:
        return set()
    return {p.key for p in load_sweep(rows[0].key, cache).points if list(p.curvature) == NETWORKS}


@pytest.fixture(scope="module")
def resumed(parents_dir, tmp_path_factory) -> tuple[dict, set[str], DiskCache]:
    """The study run by the CLI, SIGKILLed once two points are stored, then run again to the end."""
    cache = cache_with_parents(parents_dir, tmp_path_factory.mktemp("study") / "cache")
    first = cli(CLI, cache)
    deadline = time.monotonic() + 400
    while len(finished_points(cache)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no clean-up: what a crash or an OOM kill leaves
    first.communicate()
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    before = finished_points(cache)
    again = cli(CLI, cache)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    return json.loads(out), before, cache


def test_the_killed_study_resumes_with_what_is_missing(resumed):
    result, before, cache = resumed
    assert 2 <= len(before) < 6 and not result["failed"] and result["status"] == "finished"
    assert [r["key"] for r in result["rows"]] == [p.key for p in study().points()]  # the flags' sweep, in grid order
    # What was stored before the kill is reused as it is; the rest is computed now.
    assert {r["key"] for r in result["rows"] if r["cached"]} == before
    for row in result["rows"]:
        assert list(row["curvature"]) == NETWORKS  # the stated sparsity is what every network has
        assert row["sparsity_by_method"] == pytest.approx({n: row["fraction"] for n in NETWORKS}, abs=0.005)
        assert all(len(c["top_eigenvalues"]) == 2 and c["trace_method"] == "exact" for c in row["curvature"].values())
    # A rerun now is answered from the cache without importing torch.
    code = ("import sys\nfrom otcore.cli import main\n"
            f"assert main({CLI!r}) == 0\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "OTCORE_CACHE_DIR": str(cache.root), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "False"
    cached = json.loads(proc.stdout)
    assert all(r["cached"] for r in cached["rows"])
    assert [(r["ot_fusion"], r["curvature"]) for r in cached["rows"]] == \
           [(r["ot_fusion"], r["curvature"]) for r in result["rows"]]


def test_the_study_table_in_latex_has_a_row_per_experiment_and_a_column_per_network(resumed):
    result, _, cache = resumed
    points = load_sweep(result["sweep"], cache).points
    # Accuracy has a column per method (the prediction ensemble too); curvature one per analysed network.
    methods = [r.method for r in points[0].comparison.rows]
    assert set(NETWORKS) < set(methods)
    for metric, columns in (("test accuracy", methods), ("trace", NETWORKS), ("λ1", NETWORKS)):
        latex = study_text(study_table(points, metric), "latex")
        assert latex.isascii()  # pdflatex's defaults: no Unicode (λ is $\lambda$)
        lines = [line.strip() for line in latex.strip().splitlines()]
        assert lines[0] == "\\begin{tabular}{l" + "r" * len(columns) + "}" and lines[-1] == "\\end{tabular}"
        assert [line for line in lines if "rule" in line] == ["\\toprule", "\\midrule", "\\bottomrule"]
        header = lines[lines.index("\\toprule") + 1]
        assert [c.strip(" \\") for c in header.split("&")] == [metric.replace("λ", "$\\lambda$"), *columns]
        body = lines[lines.index("\\midrule") + 1:lines.index("\\bottomrule")]
        assert [row.split(" & ")[0] for row in body] == [e.replace("%", "\\%") for e in EXPERIMENTS]
        assert all(row.count("&") == len(columns) and row.endswith("\\\\") for row in body)
    # The cells are the recorded numbers, rounded as the table shows them.
    trace = study_table(points, "trace")
    for row, experiment in zip(result["rows"], EXPERIMENTS):
        assert trace.loc[experiment, "OT fusion retrained"] == row["curvature"]["OT fusion retrained"]["trace"]
    # and the CLI prints the same table from the cache
    proc = cli(["table", result["sweep"][:12], "--metric", "trace", "--format", "latex"], cache)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == study_text(trace, "latex").strip()


@pytest.mark.ray
def test_the_study_gives_the_same_numbers_on_ray(resumed, parents_dir, tmp_path):
    import ray

    result, _, _ = resumed
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        on_ray = run_sweep(study(), RayExecutor(), cache_with_parents(parents_dir, tmp_path / "ray"))
    finally:
        ray.shutdown()
    assert on_ray.executor == "ray" and not on_ray.failed
    assert [p.key for p in on_ray.points] == [r["key"] for r in result["rows"]]
    for point, row in zip(on_ray.points, result["rows"]):
        assert point.comparison.accuracies()["ot_fusion"] == row["ot_fusion"]
        assert [r.test.accuracy for r in point.comparison.rows] == [r["test_accuracy"] for r in row["rows"]]
        assert [r.test.loss for r in point.comparison.rows] == pytest.approx([r["test_loss"] for r in row["rows"]],
                                                                             rel=1e-6)
        assert list(point.curvature) == NETWORKS
        for method, curvature in point.curvature.items():
            expected = row["curvature"][method]
            assert curvature["key"] == expected["key"]  # the same analysis of the same network of the same point
            assert curvature["trace"] == pytest.approx(expected["trace"], rel=1e-6)
            assert curvature["top_eigenvalues"] == pytest.approx(expected["top_eigenvalues"], rel=1e-5)


def test_the_sweep_report_holds_every_study_table_and_its_charts(resumed):
    from otcore.report import sweep_report

    result, _, cache = resumed
    record = cache.load_record(result["sweep"])
    html = sweep_report(load_sweep(result["sweep"], cache), record.config)
    assert html.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in html
    for title in ("Test accuracy", "Test loss", "Generalisation gap", "Trace", "λ1"):
        assert f"<h2>{title} per experiment and network</h2>" in html
    assert html.count("<td>structured 30 %</td>") == 6  # a row in each table
    row = result["rows"][0]  # structured 30 %: its retrained OT fusion's trace, as the table prints it
    assert f"<td class='num'>{row['curvature']['OT fusion retrained']['trace']:,.2f}</td>" in html
    assert "<h2>trace against prune.fraction</h2>" in html
    settings = html[html.index("<h2>Settings</h2>"):html.index("<h2>Test accuracy")]
    assert "lanczos_iters=8" in settings and "_type" not in settings  # the base specs, without their type tags
