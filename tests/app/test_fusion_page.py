"""Fusion page through AppTest: set widgets by key, press Fuse, check the rendered numbers."""
from __future__ import annotations

import json

import pytest

from otcore.config import DataSpec, FusionSpec, ModelSpec, RetrainSpec, TrainSpec
from otcore.pipeline import OT_FINETUNED, VANILLA_RETRAINED, fuse_and_compare
from ui import state

FUSION_PAGE = "pages/2_Fusion.py"
METHODS = ["parent 1", "parent 2", "vanilla average", "prediction ensemble", "OT fusion"]


@pytest.fixture
def fusion(page, parent_set):
    """The Fusion page with the default parents loaded, run once (before any press of Fuse)."""
    at = page(FUSION_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    return at


def fuse(at, **widgets):
    """Set widgets by key ('fusion.<field>'), press Fuse, return the app."""
    for key, value in widgets.items():
        at.get_by_key(f"fusion.{key}").set_value(value)
    at.button(key="fusion.fuse").click().run()
    return at


def cards(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_before_fuse_the_page_says_what_to_press(fusion):
    assert any("press **Fuse**" in i.value for i in fusion.info)
    assert not fusion.metric and not fusion.dataframe


def test_fuse_with_defaults_shows_every_method(fusion, digits_parents):
    at = fuse(fusion)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS
    # The numbers on the page are the pipeline's (a disk-cache hit here, computed by the page).
    expected = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, FusionSpec(), TrainSpec(), "cpu")
    assert expected.cached
    for row in expected.rows:
        shown = table[table["method"] == row.method].iloc[0]
        assert shown["test acc (%)"] == round(row.test.accuracy, 2)
        assert shown["test loss"] == round(row.test.loss, 4)
        assert cards(at)[row.method] == f"{row.test.accuracy:.2f} %"
    best = max(r.test.accuracy for r in expected.rows if r.method.startswith("parent"))
    ot_card = next(m for m in at.metric if m.label == "OT fusion")
    assert ot_card.delta == f"{expected.row('OT fusion').test.accuracy - best:+.2f} pp"
    status = " ".join(c.value for c in at.caption)
    assert "Ran on **cpu**" in status
    assert len(at.get("plotly_chart")) == 5  # accuracy bars, the frontier, per-class heatmap, a plan, diagnostics
    downloads = [b.key for b in at.get("download_button")]
    assert downloads == ["fusion.download.model", "fusion.download.csv", "fusion.download.report"]
    # Pressing again with the same settings is served from memory.
    at.button(key="fusion.fuse").click().run()
    assert "memory" in " ".join(c.value for c in at.caption)


def test_sinkhorn_reg_zero_is_an_error_not_a_traceback(fusion):
    at = fuse(fusion, solver="sinkhorn", reg=0.0)
    assert not at.exception
    assert len(at.error) == 1 and "Sinkhorn reg must be in (0, 100]" in at.error[0].value
    assert not at.metric and not at.dataframe


@pytest.mark.parametrize("weights, message", [("0.5, x", "must be numbers"), ("1 2 3", "3 per-parent weights")])
def test_bad_per_parent_weights_are_errors(fusion, weights, message):
    at = fuse(fusion, weights=weights)
    assert not at.exception
    assert any(message in e.value for e in at.error)


def test_sinkhorn_on_activations_with_fine_tuning(fusion):
    at = fuse(fusion, mode="activations", solver="sinkhorn", reg=0.05, act_samples=100, finetune_epochs=1,
              ground_metric="cosine", normalize="max")
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS + [VANILLA_RETRAINED, OT_FINETUNED]
    assert OT_FINETUNED in cards(at) and VANILLA_RETRAINED in cards(at)
    assert all(0.0 <= acc <= 100.0 for acc in table["test acc (%)"])
    # A Sinkhorn plan is not a permutation; the layer picker switches the heatmap.
    layers = [option.split("  (")[0] for option in at.selectbox(key="fusion.plan_layer").options]
    assert layers == ["parent 2/fc1", "parent 2/fc2", "parent 2/fc3"]
    at.selectbox(key="fusion.plan_layer").set_value(layers[-1]).run()
    assert not at.exception
    assert at.selectbox(key="fusion.plan_layer").value == layers[-1]


def test_the_fine_tuning_recipe_reaches_the_pipeline(fusion, digits_parents):
    at = fuse(fusion, finetune_epochs=1, retrain_lr=0.02, retrain_schedule="cosine")
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["method"]) == METHODS + [VANILLA_RETRAINED, OT_FINETUNED]
    spec = FusionSpec(finetune_epochs=1, retrain=RetrainSpec(lr=0.02, schedule="cosine"))
    assert at.session_state["fusion.request"].spec == spec
    expected = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, spec, TrainSpec(), "cpu")
    assert expected.cached  # the page computed exactly this recipe
    for method in (VANILLA_RETRAINED, OT_FINETUNED):
        assert cards(at)[method] == f"{expected.row(method).test.accuracy:.2f} %"
    # Each retraining's validation curve: the start and 4 checkpoints, the kept state ringed.
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    curve = next(c for c in charts if c["layout"]["yaxis"]["title"]["text"] == "Validation accuracy (%)")
    lines = {t["name"]: t for t in curve["data"] if t.get("mode") == "lines+markers"}
    assert set(lines) == {VANILLA_RETRAINED, OT_FINETUNED} and all(len(t["x"]) == 5 for t in lines.values())
    assert any("Retraining keeps the best state" in c.value for c in at.caption)
    # Unticking the baseline's retraining leaves the vanilla average as it is.
    at = fuse(at, retrain_vanilla=False)
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["method"]) == METHODS + [OT_FINETUNED]


def test_a_retraining_lr_of_zero_is_an_error(fusion):
    at = fuse(fusion, finetune_epochs=1, retrain_lr=0.0)
    assert not at.exception
    assert len(at.error) == 1 and "retraining learning rate must be in (0, 10]" in at.error[0].value
    assert not at.metric


def test_anchor_and_ensemble_step(fusion):
    at = fuse(fusion, anchor=1, ensemble_step=0.7, past_correction=False, skip_last_layer=False)
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["method"]) == METHODS


def test_weight_matching_and_repair(fusion):
    """The lead's parallel backends, tested last: they must render, or fail as an st.error, never a traceback."""
    at = fuse(fusion, alignment="weight_matching", renormalize=True)
    assert not at.exception
    assert not at.error, at.error[0].value
    assert list(at.dataframe[0].value["method"]) == METHODS[:-1] + ["weight matching"]  # labelled by alignment
    assert "weight matching" in cards(at)


def test_one_parent_is_not_enough(page, parent_set):
    import dataclasses

    single = dataclasses.replace(parent_set, parents=parent_set.parents[:1])
    at = page(FUSION_PAGE, **{state.PARENTS: single}).run()
    assert not at.exception
    assert any("at least 2 parents" in w.value for w in at.warning)


def test_align_by_is_disabled_where_the_alignment_always_uses_activations(fusion):
    assert not fusion.selectbox(key="fusion.mode").disabled
    fusion.selectbox(key="fusion.alignment").set_value("zipit").run()
    mode = fusion.selectbox(key="fusion.mode")
    assert mode.disabled and "always matches neurons by their activations" in mode.help
    fusion.selectbox(key="fusion.alignment").set_value("ot").run()
    assert not fusion.selectbox(key="fusion.mode").disabled


def test_maps_with_negative_entries_get_a_diverging_scale():
    import numpy as np

    from otcore import figures

    signed = figures.plan_heatmap(np.array([[0.9, -0.4], [-0.1, 0.7]])).data[0]
    plan = figures.plan_heatmap(np.array([[0.5, 0.0], [0.0, 0.5]])).data[0]
    assert signed.zmid == 0.0 and signed.zmin is None  # -0.4 shows as a colour of its own, not as 0
    assert plan.zmin == 0.0 and plan.zmid is None


def test_repair_bias_is_enabled_by_repair_and_the_gained_biases_are_counted(fusion):
    assert fusion.checkbox(key="fusion.repair_bias").disabled  # REPAIR is off by default
    fusion.checkbox(key="fusion.renormalize").check().run()
    assert not fusion.checkbox(key="fusion.repair_bias").disabled
    at = fuse(fusion, repair_bias=True)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    sizes = dict(zip(table["method"], table["parameters"]))
    assert sizes["OT fusion"] == sizes["parent 1"] + 700  # mlpnet's 400 + 200 + 100 repaired neurons
    assert any("**700 biases**" in c.value for c in at.caption)


def test_the_attention_head_mode_reaches_the_fusion_spec(fusion):
    at = fuse(fusion, heads="flat")
    assert not at.exception and not at.error
    assert at.session_state["fusion.request"].spec == FusionSpec(heads="flat")
