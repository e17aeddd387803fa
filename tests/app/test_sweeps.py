"""Sweeps page through AppTest: define a grid, press Start, read the chart and the table; reopen it from the cache."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

from otcore.cache import DiskCache
from otcore.config import DataSpec, FusionSpec, ModelSpec, PruneSpec, RetrainSpec, TrainSpec
from otcore.pipeline import prune_and_compare, train_parents
from otcore.sweep import run_point
from ui import sweep_jobs

SWEEPS_PAGE = "pages/6_Sweeps.py"
JOB = "sweeps.job"  # the page's session key of its running sweep
TIMEOUT_S = 300


@pytest.fixture
def sweep_cache(app_cache_dir, tmp_path, monkeypatch):
    """A cache of this test's own holding the default parents, so the sweep's entries touch no other test."""
    # Only the parents: other app tests leave prune results there, which would make points cached.
    for row in DiskCache(app_cache_dir).listing("parent").rows:
        shutil.copy2(app_cache_dir / f"{row.key}.safetensors", tmp_path)
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path))
    return DiskCache(tmp_path)


def job_of(at) -> sweep_jobs.SweepJob:
    """The server's job of the sweep this session started."""
    job = sweep_jobs.get(at.session_state[JOB])
    assert job is not None
    return job


def finish(at) -> sweep_jobs.SweepJob:
    """Wait for the session's sweep thread to return (a join, not a timer)."""
    job = job_of(at)
    assert job.wait(TIMEOUT_S), "the sweep thread did not return"
    return job


def test_a_two_point_sweep_shows_its_chart_and_table(page, sweep_cache):
    at = page(SWEEPS_PAGE).run()
    assert not at.exception
    assert any("press **Start**" in i.value for i in at.info)
    at.multiselect(key="sweeps.fractions").set_value([0.0, 0.5])
    at.button(key="sweeps.start").click().run()
    assert finish(at).result.status == "finished"  # it ran in a server thread, not in the script run
    at.run()
    assert not at.exception and not at.error
    assert any("**2** of 2 points · 0 failed · finished · local executor" in c.value for c in at.main.caption)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[0].value
    assert sorted(set(table["prune.fraction"])) == [0.0, 0.5] and len(table) == 2 * 5
    # The numbers shown are the pipeline's: the dashboard's own call now hits the cache the sweep filled.
    parents = train_parents(DataSpec(), ModelSpec(), TrainSpec(), [0, 1], "auto", cache=sweep_cache)
    half = prune_and_compare(DataSpec(), ModelSpec(), parents, PruneSpec(fraction=0.5), FusionSpec(), TrainSpec(),
                             cache=sweep_cache)
    assert half.cached
    shown = table[table["prune.fraction"] == 0.5].set_index("method")["test acc (%)"]
    assert {r.method: r.test.accuracy for r in half.rows} == pytest.approx(shown.to_dict())
    # Another metric against another swept field redraws without an error.
    at.selectbox(key="sweeps.metric").set_value("sparsity").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1

    # A new session finds the sweep in the cache and shows the same table.
    again = page(SWEEPS_PAGE).run()
    again.button(key="sweeps.show").click().run()
    assert not again.exception
    assert again.dataframe[0].value.equals(table)


def test_an_empty_grid_is_an_error_not_a_traceback(page, sweep_cache):
    at = page(SWEEPS_PAGE).run()
    at.multiselect(key="sweeps.types").set_value([])
    at.button(key="sweeps.start").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "'prune.type' has no values" in at.error[0].value


def test_malformed_sweep_records_are_skipped_with_a_warning(page, sweep_cache):
    from otcore.cache import CacheEntry
    from otcore.config import spec_hash
    from otcore.sweep import LocalExecutor, SweepSpec, run_sweep

    good = run_sweep(SweepSpec((("prune.fraction", (0.5,)),), device="cpu"), LocalExecutor(), sweep_cache)
    point = good.points[0]
    # A valid checksum over a record with no 'status' (the KeyError of issue 14), and one with a string count.
    record = sweep_cache.load(good.key)
    for key, edit in (("nostatus", lambda m: m.pop("status")), ("textdone", lambda m: m.update(done="1"))):
        metrics = dict(record.metrics)
        edit(metrics)
        sweep_cache.store(CacheEntry(spec_hash("sweep", key), "sweep", record.config, metrics))
    at = page(SWEEPS_PAGE).run()
    assert not at.exception
    assert len(at.warning) == 1 and at.warning[0].value.startswith("2 damaged or unreadable cache entries skipped")
    assert at.selectbox(key="sweeps.record").options == [at.selectbox(key="sweeps.record").format_func(good.key)]
    at.button(key="sweeps.show").click().run()
    assert not at.exception and not at.error
    shown = at.dataframe[0].value.set_index("method")["test acc (%)"]
    assert shown.to_dict() == pytest.approx({r.method: r.test.accuracy for r in point.comparison.rows})


def test_a_sweep_runs_on_across_reruns_and_stops_when_asked(page, sweep_cache, monkeypatch):
    # Every point waits for `release`, so the test decides when the first one may finish.
    release = threading.Event()

    def held_point(*args, **kwargs):
        assert release.wait(TIMEOUT_S)
        return run_point(*args, **kwargs)

    monkeypatch.setattr(sweep_jobs, "POINT_TASK", held_point)
    at = page(SWEEPS_PAGE).run()
    at.multiselect(key="sweeps.fractions").set_value([0.0, 0.3, 0.5])
    at.button(key="sweeps.start").click().run()
    assert not at.exception and job_of(at).running
    at.run()  # another script run of the page (a click anywhere): the sweep is not part of it
    job = job_of(at)
    assert job.running and job.total == 3, job
    assert len(at.get("progress")) == 1 and "3 points on the local executor" in at.get("progress")[0].proto.text
    assert any("Running in the server" in c.value for c in at.caption)
    at.button(key="sweeps.stop").click().run()
    assert any("Stopping after the point being computed" in c.value for c in at.caption)
    release.set()
    assert finish(at).result.status == "stopped: the Stop button was pressed"
    assert len(job.finished) == 1  # the point under way finished; the other two never started
    at.run()
    assert not at.exception and JOB not in at.session_state
    summary = "**1** of 3 points · 0 failed · stopped: the Stop button was pressed"
    assert any(summary in c.value for c in at.main.caption)
    assert len(at.dataframe[0].value) == 5  # the finished point's five methods, cached: Start resumes from here


def test_a_sweep_that_analyses_a_network_plots_its_curvature_and_gives_the_study_table(page, sweep_cache):
    quick = {"hessian.batch_size": 150, "hessian.lanczos_iters": 12, "hessian.power_iters": 20, "hessian.top_k": 2}
    at = page(SWEEPS_PAGE, **quick).run()
    at.multiselect(key="sweeps.fractions").set_value([0.0, 0.5])
    at.multiselect(key="sweeps.analyse").set_value(["OT fusion"])
    at.number_input(key="sweeps.retrain_epochs").set_value(1)
    at.number_input(key="sweeps.retrain_lr").set_value(0.002)  # the recipe's widgets, in the form's expander
    at.selectbox(key="sweeps.retrain_schedule").set_value("cosine")
    at.button(key="sweeps.start").click().run()
    job = finish(at)
    assert job.result.status == "finished" and job.spec.analyse == ("OT fusion",)
    assert job.spec.prune.retrain_epochs == 1 and job.spec.prune.retrain == RetrainSpec(lr=0.002, schedule="cosine")
    at.run()
    assert not at.exception and not at.error
    assert {"trace", "λ1", "λ2"} <= set(at.selectbox(key="sweeps.metric").options)
    at.selectbox(key="sweeps.metric").set_value("trace").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
    at.selectbox(key="sweeps.study_metric").set_value("trace").run()
    study = at.dataframe[1].value
    assert list(study.columns)[1:] == ["OT fusion"]  # a row per experiment, a column per analysed network
    assert len(study) == 2 and study.iloc[:, 1].gt(0).all()  # a trace per experiment, positive (a minimum)
    buttons = {b.key: b.proto.label for b in at.get("download_button")}
    assert buttons["sweeps.download.study.latex"] == "Table (LaTeX)"
    assert buttons["sweeps.download.report"] == "Report (HTML)"


def wait_for(condition, what: str) -> None:
    """Poll until `condition()` holds (a sweep thread changes state on its own), failing after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def queue_text(at) -> str:
    return " ".join(i.value for i in at.info if "Waiting in the queue" in i.value)


def test_two_sessions_with_the_same_grid_each_stop_only_their_own_sweep_and_the_second_waits_in_the_queue(
        page, sweep_cache, monkeypatch):
    release = threading.Event()

    def held_point(*args, **kwargs):
        assert release.wait(TIMEOUT_S)
        return run_point(*args, **kwargs)

    monkeypatch.setattr(sweep_jobs, "POINT_TASK", held_point)
    assert sweep_jobs.MAX_RUNNING == 1
    first, second = page(SWEEPS_PAGE).run(), page(SWEEPS_PAGE).run()  # two sessions of one server process
    for at in (first, second):
        at.multiselect(key="sweeps.fractions").set_value([0.0, 0.3])
    first.button(key="sweeps.start").click().run()
    second.button(key="sweeps.start").click().run()  # the same settings: a job of its own, not the first's
    a, b = job_of(first), job_of(second)
    assert a.id != b.id and a.key == b.key
    wait_for(lambda: a.running, "the first sweep to run")
    assert b.queued and sweep_jobs.position(b) == (1, 1)
    assert "**1** in line, 1 sweep running ahead" in queue_text(second)
    assert not queue_text(first) and len(first.get("progress")) == 1

    # The second session's Stop takes its own job out of the queue; the first sweep runs on.
    second.button(key="sweeps.stop").click().run()
    assert b.state == sweep_jobs.CANCELLED and a.running and not a.stop_requested.is_set()
    assert any("left the queue" in i.value for i in second.info) and JOB not in second.session_state
    first.run()
    assert len(first.get("progress")) == 1 and not first.exception

    # Queued again; now the first session stops its sweep: the second's starts, and nobody stops it.
    second.button(key="sweeps.start").click().run()
    b = job_of(second)
    assert "**1** in line" in queue_text(second)
    first.button(key="sweeps.stop").click().run()
    assert a.stop_requested.is_set() and not b.stop_requested.is_set()
    release.set()
    assert finish(first).result.status == "stopped: the Stop button was pressed"
    assert b.wait(TIMEOUT_S) and b.result.status == "finished" and b.error is None
    assert [p.values["prune.fraction"] for p in b.result.points] == [0.0, 0.3]
    second.run()
    assert not second.exception and any("**2** of 2 points · 0 failed · finished" in c.value
                                        for c in second.main.caption)


def test_a_large_grid_shows_its_size_and_starts_only_when_confirmed(page, sweep_cache, monkeypatch):
    monkeypatch.setattr(sweep_jobs, "POINT_TASK", run_point)
    at = page(SWEEPS_PAGE).run()
    at.multiselect(key="sweeps.fractions").set_value([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    at.multiselect(key="sweeps.types").set_value(["unstructured", "structured"])
    at.number_input(key="sweeps.seed_sets").set_value(8)  # 7 x 2 x 8 = 112 points
    at.button(key="sweeps.start").click().run()
    assert not at.exception and JOB not in at.session_state  # nothing started yet
    assert any("This grid has **112 points** (more than 100)" in w.value for w in at.warning)
    assert at.button(key="sweeps.confirm").proto.label == "Start all 112 points"
    # Changing the grid and pressing Start again replaces the question; a small grid starts at once.
    at.number_input(key="sweeps.seed_sets").set_value(1)
    at.multiselect(key="sweeps.fractions").set_value([0.5])
    at.multiselect(key="sweeps.types").set_value(["unstructured"])
    at.button(key="sweeps.start").click().run()
    assert not at.warning and finish(at).result.status == "finished" and job_of(at).total == 1
    # A large grid confirmed starts, with every point in the job.
    at.run()
    at.number_input(key="sweeps.seed_sets").set_value(8)
    at.multiselect(key="sweeps.fractions").set_value([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    at.multiselect(key="sweeps.types").set_value(["unstructured", "structured"])
    at.button(key="sweeps.start").click().run()
    release = threading.Event()

    def held_point(*args, **kwargs):
        assert release.wait(TIMEOUT_S)
        return run_point(*args, **kwargs)

    monkeypatch.setattr(sweep_jobs, "POINT_TASK", held_point)
    at.button(key="sweeps.confirm").click().run()
    job = job_of(at)
    assert job.total == 112 and (job.running or job.queued) and not at.warning
    job.stop()  # no need to train 16 parents: stop after the first point
    release.set()
    assert job.wait(TIMEOUT_S) and job.result.status == "stopped: the Stop button was pressed"


def test_a_sweep_over_the_width_draws_the_frontier_of_its_rows(page, sweep_cache):
    import json

    from otcore.figures import ENSEMBLE_LABEL
    from otcore.sweep import LocalExecutor, SweepSpec, load_sweep, run_sweep

    done = run_sweep(SweepSpec((("fusion.width", (1.0, 2.0)),), fusion=FusionSpec(alignment="zipit"), step="fusion",
                               device="cpu"), LocalExecutor(), sweep_cache)
    assert done.status == "finished"
    at = page(SWEEPS_PAGE).run()
    at.selectbox(key="sweeps.record").set_value(done.key)
    at.button(key="sweeps.show").click().run()
    assert not at.exception and not at.error
    chart = next(c for c in at.get("plotly_chart") if "sweeps.chart.frontier" in c.proto.id)
    drawn = {t["name"]: list(zip(t["x"], t["y"])) for t in json.loads(chart.proto.spec)["data"]}
    points = sorted(load_sweep(done.key).points, key=lambda p: p.values["fusion.width"])  # as the record holds them
    assert drawn["ZipIt!"] == [(p.comparison.row("ot_fusion").parameters, p.comparison.row("ot_fusion").test.accuracy)
                               for p in points]
    assert drawn[ENSEMBLE_LABEL] == [(points[0].comparison.row("prediction_ensemble").parameters,
                                      points[0].comparison.row("prediction_ensemble").test.accuracy)]
    assert points[1].comparison.row("ot_fusion").parameters > points[0].comparison.row("ot_fusion").parameters


def test_the_page_starts_a_fusion_sweep_over_widths_and_draws_its_frontier(page, sweep_cache):
    import json

    at = page(SWEEPS_PAGE).run()
    at.radio(key="sweeps.kind").set_value("fusion").run()
    at.multiselect(key="sweeps.alignments").set_value(["ot", "zipit"])
    at.multiselect(key="sweeps.widths").set_value([2.0])
    at.button(key="sweeps.start").click().run()
    # OT cannot keep features side by side: one message naming the point, nothing started.
    assert not at.exception and len(at.error) == 1
    assert "fusion.alignment=ot" in at.error[0].value and "ZipIt!" in at.error[0].value
    assert JOB not in at.session_state

    at.multiselect(key="sweeps.alignments").set_value(["zipit"])
    at.multiselect(key="sweeps.widths").set_value([1.0, 2.0])
    at.button(key="sweeps.start").click().run()
    job = finish(at)
    assert job.result.status == "finished"
    assert [name for name, _ in job.spec.grid] == ["fusion.alignment", "seed", "fusion.width"]
    assert job.spec.step == "fusion"
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert sorted(set(table["fusion.width"])) == [1.0, 2.0]
    assert at.selectbox(key="sweeps.x").value == "fusion.width"  # the chart's x: the width, not the alignment
    chart = next(c for c in at.get("plotly_chart") if "sweeps.chart.frontier" in c.proto.id)
    drawn = {t["name"]: list(zip(t["x"], t["y"])) for t in json.loads(chart.proto.spec)["data"]}
    fused = table[table["method"] == "ZipIt!"].sort_values("fusion.width")
    assert [y for _, y in drawn["ZipIt!"]] == pytest.approx(list(fused["test acc (%)"]))
    assert drawn["ZipIt!"][1][0] > drawn["ZipIt!"][0][0]  # the wider network has more parameters
