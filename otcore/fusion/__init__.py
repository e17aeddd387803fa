"""Model fusion: align the parents' neurons, then average (Singh & Jaggi, 2020), and the baselines.

The way in is this package: `from otcore.fusion import fuse, FusionOptions`. It reads only its
own options (`FusionOptions`; `otcore.config.FusionSpec.options(n)` makes them for a study) and
imports only numeric libraries and `otcore.models`, `otcore.activations`, `otcore.errors`.

    result = fuse([parent_a, parent_b], FusionOptions(alignment="ot", mode="weights"))
    result.model, result.plans, result.diagnostics, result.seconds
"""
from otcore.errors import FusionError
from otcore.fusion.align import GroupDiagnostics, Plans, apply_plans, check_same_family, ot_plans
from otcore.fusion.baselines import ensemble_log_probs, vanilla_average
from otcore.fusion.cca import cca_map
from otcore.fusion.fuse import MERGE_METHODS, FusionResult, align_parents, average_aligned, fuse
from otcore.fusion.ground_metric import cost_matrix
from otcore.fusion.batch_norm import reset_batch_norm
from otcore.fusion.group_repair import repair_groups, repair_targets
from otcore.fusion.merge_maps import MergeMethodError
from otcore.fusion.new_weights import gained_biases, with_biases
from otcore.fusion.options import FusionOptions
from otcore.fusion.pleas import least_squares_layers, matched_maps
from otcore.fusion.resize import resized_copy
from otcore.fusion.symmetry import permuted_copy, random_permutations
from otcore.fusion.transport import TransportError, permutation_closeness, transport_plan
from otcore.fusion.weight_matching import weight_matching_plans
from otcore.fusion.zipit import zipit_maps

__all__ = ["FusionError", "FusionOptions", "FusionResult", "GroupDiagnostics", "MERGE_METHODS", "MergeMethodError",
           "Plans", "TransportError", "align_parents", "apply_plans", "average_aligned", "cca_map",
           "check_same_family", "cost_matrix", "ensemble_log_probs", "fuse", "gained_biases", "least_squares_layers",
           "matched_maps", "ot_plans",
           "permutation_closeness", "permuted_copy", "random_permutations", "repair_groups", "repair_targets",
           "reset_batch_norm", "resized_copy", "transport_plan", "vanilla_average", "weight_matching_plans", "with_biases",
           "zipit_maps"]
