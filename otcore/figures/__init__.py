"""Plotly figures and display tables: results in, `go.Figure` or `DataFrame` out. No Streamlit here.

One module per concept: the house style (`style`), comparison tables and bars (`comparison`), transport
plans (`plans`), pruning and sweeps (`sweeps`), curvature (`curvature`), the loss landscape (`landscape`)
and data partitions (`partition`). Every public name is re-exported, so `figures.X` works everywhere.
"""
from otcore.figures.comparison import (
                                       best_parent_accuracy,
                                       comparison_bar,
                                       comparison_table,
                                       headline,
                                       human_size,
                                       manifest_table,
                                       parents_table,
)
from otcore.figures.curvature import (
                                       CURVATURE_DECIMALS,
                                       GAP,
                                       LAMBDA_MAX,
                                       SHARPNESS,
                                       TRACE,
                                       curvature_record,
                                       curvature_table,
                                       sharpness_scatter,
                                       sharpness_table,
                                       spectral_density_chart,
                                       trace_description,
)
from otcore.figures.frontier import (ENSEMBLE_LABEL, frontier_chart, frontier_frame, point_label,
                                     sweep_frontier_rows)
from otcore.figures.landscape import interpolation_chart, perturbation_chart, surface_contour
from otcore.figures.partition import class_histogram, own_classes_table, per_class_frame, per_class_heatmap
from otcore.figures.plans import diagnostics_chart, diagnostics_table, plan_array, plan_heatmap
from otcore.figures.retraining import (RETRAINED, retraining_charts, retraining_networks, validation_chart,
                                       validation_frame)
from otcore.figures.style import (
                                       FONT,
                                       HEATMAP_SCALE,
                                       INFERENCE_MS,
                                       METHOD,
                                       METHOD_COLOURS,
                                       PARAMETERS,
                                       TEMPLATE,
                                       TEST_ACC,
                                       TEST_LOSS,
                                       TRAIN_ACC,
                                       TRAIN_LOSS,
                                       accuracy_range,
                                       column_decimals,
                                       method_colour,
                                       percent,
                                       style,
                                       tick_label,
)
from otcore.figures.sweeps import (
                                       FRACTION,
                                       HESSIAN_TRACE,
                                       METRICS,
                                       SEEDS,
                                       SPARSITY,
                                       STUDY_DECIMALS,
                                       STUDY_METRICS,
                                       TABLE_FORMATS,
                                       check_study_metric,
                                       experiment_label,
                                       fraction_table,
                                       prune_sweep_chart,
                                       prune_table,
                                       retrained,
                                       sparsity_chart,
                                       study_table,
                                       study_text,
                                       sweep_figure,
                                       sweep_metrics,
                                       sweep_table,
)

__all__ = ["accuracy_range", "best_parent_accuracy", "check_study_metric", "class_histogram", "column_decimals",
           "comparison_bar", "comparison_table", "CURVATURE_DECIMALS", "curvature_record", "curvature_table",
           "diagnostics_chart", "diagnostics_table", "ENSEMBLE_LABEL", "experiment_label", "FONT", "FRACTION",
           "fraction_table", "frontier_chart", "frontier_frame", "GAP",
           "headline", "HEATMAP_SCALE", "HESSIAN_TRACE", "human_size", "INFERENCE_MS", "interpolation_chart",
           "LAMBDA_MAX", "manifest_table", "METHOD", "method_colour", "METHOD_COLOURS", "METRICS", "own_classes_table",
           "PARAMETERS", "parents_table", "per_class_frame", "per_class_heatmap", "percent", "perturbation_chart",
           "plan_array", "plan_heatmap", "point_label", "prune_sweep_chart", "prune_table", "retrained", "RETRAINED",
           "retraining_charts", "retraining_networks", "SEEDS", "SHARPNESS",
           "sharpness_scatter", "sharpness_table", "SPARSITY", "sparsity_chart", "spectral_density_chart",
           "STUDY_DECIMALS", "STUDY_METRICS", "study_table", "study_text", "style", "surface_contour", "sweep_figure",
           "sweep_frontier_rows", "sweep_metrics", "sweep_table", "TABLE_FORMATS", "TEMPLATE", "TEST_ACC", "TEST_LOSS",
           "tick_label", "TRACE",
           "trace_description", "TRAIN_ACC", "TRAIN_LOSS", "validation_chart", "validation_frame"]
