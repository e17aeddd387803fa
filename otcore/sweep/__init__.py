"""Sweeps: a grid of overrides on the study's specs, run point by point here or as Ray tasks.

A point is one combination of the grid's values applied to base specs (`grid`); it runs through
the pipeline functions the dashboard uses, in a temporary task-local cache, and returns every
cache entry it made (`tasks`). An executor runs the tasks here or on Ray (`executors`, an
`Executor` protocol); the driver stores what returns, records the sweep and reads it back
(`driver`). Ray (https://docs.ray.io) is imported only by the Ray executor. Tables and figures
of a sweep live in otcore.figures: nothing here imports pandas or plotly.
"""
from otcore.sweep.driver import (PointFailure, PointResult, StopRequested, SweepResult, SweepStoreError, cell,
                                 load_sweep, run_sweep, scores, sweep_records)
from otcore.sweep.executors import EXECUTORS, Event, Executor, LocalExecutor, RayExecutor, executor
from otcore.sweep.grid import (LARGE_GRID, NETWORKS, STEPS, STUDY_NETWORKS, ParentJob, Point, Progress, SweepSpec,
                               parse_grid, sweep_fields, value_text)
from otcore.sweep.owner import record_status
from otcore.sweep.tasks import PointOutput, PointTask, error_text, run_point, train_parent_entry

__all__ = ["EXECUTORS", "LARGE_GRID", "NETWORKS", "STEPS", "STUDY_NETWORKS", "StopRequested", "SweepStoreError",
           "record_status", "Event", "Executor", "LocalExecutor", "ParentJob", "Point", "PointFailure",
           "PointOutput", "PointResult", "PointTask", "Progress", "RayExecutor", "SweepResult", "SweepSpec", "cell",
           "error_text", "executor", "load_sweep", "parse_grid", "run_point", "run_sweep", "scores", "sweep_fields",
           "sweep_records", "train_parent_entry", "value_text"]
