"""FusionSpec makes the FusionOptions fusion reads; method ids are stable, labels follow the alignment."""
from __future__ import annotations

import pytest
import torch

from otcore.config import FusionSpec, SpecError
from otcore.fusion import FusionError, FusionOptions, fuse
from otcore.methods import Method, is_parent, label, parent_id
from otcore.models import build_model
from otcore.train import init_model


def test_a_spec_makes_the_options_with_weights_and_anchor_resolved():
    options = FusionSpec(ensemble_step=0.8, anchor=-1, alignment="zipit", act_seed=5).options(2)
    assert options.weights == pytest.approx((0.2, 0.8))  # 1 - ensemble_step for the other parent
    assert options == FusionOptions(alignment="zipit", weights=options.weights, anchor=1, seed=5)
    assert options.needs_inputs and not FusionOptions().needs_inputs
    assert FusionSpec().options(4).parent_weights(4) == [0.25] * 4
    with pytest.raises(SpecError, match="3 per-parent weights given for 2 parents"):
        FusionSpec(weights=(1, 1, 1)).options(2)
    with pytest.raises(FusionError, match="solver must be one of"):
        FusionOptions(solver="simplex")


def test_fusing_by_spec_or_by_its_options_gives_the_same_network():
    parents = [init_model(build_model("mlpnet", (1, 8, 8), 10), seed) for seed in (0, 1)]
    spec = FusionSpec(ensemble_step=0.7, ground_metric="cosine")
    by_spec, by_options = fuse(parents, spec), fuse(parents, spec.options(2))
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(by_spec.model(x), by_options.model(x))
    assert not torch.allclose(by_spec.model(x), fuse(parents, FusionOptions()).model(x))  # the options matter


def test_method_ids_are_stable_and_labels_follow_the_alignment():
    assert [m.value for m in Method] == ["parent", "vanilla_average", "prediction_ensemble", "ot_fusion",
                                         "ot_fusion_finetuned", "ot_fusion_retrained", "vanilla_average_retrained"]
    assert label(Method.OT_FUSION) == "OT fusion" and label(Method.OT_FUSION, "cca") == "CCA Merge"
    assert label(Method.OT_FINETUNED, "zipit") == "ZipIt! fine-tuned"
    assert label(Method.OT_RETRAINED, "weight_matching") == "weight matching retrained"
    assert label(Method.VANILLA, "cca") == "vanilla average" and label(parent_id(1)) == "parent 2"
    assert is_parent("parent_3") and is_parent("parent 1") and not is_parent(Method.OT_FUSION)


def test_the_fused_row_is_labelled_by_its_alignment_and_stored_by_its_id(digits_parents, tmp_path):
    from otcore.cache import DiskCache
    from otcore.cli.output import comparison_json
    from otcore.config import DataSpec, ModelSpec
    from otcore.pipeline import fuse_and_compare

    def run():
        return fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(alignment="cca"), device="cpu",
                                cache=DiskCache(tmp_path))

    first, again = run(), run()
    fused = first.row(Method.OT_FUSION)
    assert (fused.method, fused.id) == ("CCA Merge", "ot_fusion") and not first.cached and again.cached
    assert [r.id for r in first.rows][:2] == ["parent_1", "parent_2"]
    out = comparison_json(again)
    assert out["alignment"] == "cca" and out["ot_fusion"] == fused.test.accuracy
    assert [r["method"] for r in out["rows"]][-1] == "CCA Merge"
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(again.row(Method.OT_FUSION).model(x), fused.model(x))  # rebuilt from 'ot_fusion/...' tensors
