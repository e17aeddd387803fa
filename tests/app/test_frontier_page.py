"""The Fusion page's width slider and Frontier tab through AppTest: the chart's points are the cached rows."""
from __future__ import annotations

import dataclasses
import json

import pytest

from otcore.config import DataSpec, FusionSpec, ModelSpec, TrainSpec
from otcore.figures import ENSEMBLE_LABEL
from otcore.methods import Method
from otcore.pipeline import fuse_and_compare
from ui import state

FUSION_PAGE = "pages/2_Fusion.py"
FUSED, TUNED = Method.OT_FUSION.value, Method.OT_FINETUNED.value


@pytest.fixture
def fusion(page, parent_set):
    at = page(FUSION_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    return at


def fuse(at, alignment: str, width: float):
    at.selectbox(key="fusion.alignment").set_value(alignment).run()  # outside the form: enables the slider
    at.slider(key="fusion.width").set_value(width)
    at.button(key="fusion.fuse").click().run()
    assert not at.exception and not at.error, at.error[0].value if at.error else at.exception
    return at


def frontier_chart(at) -> dict:
    """The Frontier tab's figure, as the page sent it (Plotly JSON)."""
    tab = next(t for t in at.tabs if t.label == "Frontier")
    charts = [c for c in tab.get("plotly_chart") if "fusion.chart.frontier" in c.proto.id]
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def drawn_points(figure: dict) -> dict[str, list[tuple[float, float]]]:
    """Trace name -> its (x, y) points."""
    return {t["name"]: list(zip(t["x"], t["y"])) for t in figure["data"]}


def cached(digits_parents, spec: FusionSpec):
    comparison = fuse_and_compare(DataSpec(), ModelSpec(), digits_parents, spec, TrainSpec(), "cpu")
    assert comparison.cached  # the page computed exactly this spec
    return comparison


def point(row) -> tuple[float, float]:
    return (row.parameters, row.test.accuracy)


def test_zipit_at_widths_1_and_2_and_pleas_are_the_frontier(fusion, digits_parents):
    at = fusion
    for alignment, width in (("zipit", 1.0), ("zipit", 2.0), ("pleas", 1.5)):
        at = fuse(at, alignment, width)
    assert at.session_state["fusion.request"].spec.width == 1.5
    assert any("**" in c.value and "parameters**, the anchor parent 126,600" in c.value for c in at.caption)
    figure = frontier_chart(at)
    drawn = drawn_points(figure)
    zipit = [cached(digits_parents, FusionSpec(alignment="zipit", width=w)) for w in (1.0, 2.0)]
    pleas = cached(digits_parents, FusionSpec(alignment="pleas", width=1.5))
    # Exactly the cached rows: parameters and accuracy of each fused network, widths in order.
    assert drawn["ZipIt!"] == [point(c.row(FUSED)) for c in zipit]
    assert drawn["PLeaS"] == [point(pleas.row(FUSED))]
    assert zipit[0].row(FUSED).parameters < pleas.row(FUSED).parameters < zipit[1].row(FUSED).parameters
    references = {"parent 1": "parent_1", "parent 2": "parent_2", ENSEMBLE_LABEL: Method.ENSEMBLE.value,
                  "vanilla average": Method.VANILLA.value}
    assert set(drawn) == {"ZipIt!", "PLeaS", *references}
    for name, method in references.items():
        assert drawn[name] == [point(zipit[0].row(method))]
    assert figure["layout"]["xaxis"]["title"]["text"] == "Parameters (count)"
    assert figure["layout"]["yaxis"]["title"]["text"] == "Test accuracy (%)"
    assert any("mean of their *logits*" in c.value for c in at.caption)
    # Against inference time: the same accuracies, x in ms per 1000 images (timed once, memoised).
    at.radio(key="fusion.frontier.against").set_value("time").run()
    timed = frontier_chart(at)
    assert timed["layout"]["xaxis"]["title"]["text"] == "Inference (ms per 1000 test images)"
    assert [y for _, y in drawn_points(timed)["ZipIt!"]] == [c.row(FUSED).test.accuracy for c in zipit]
    assert all(x > 0 for trace in timed["data"] for x in trace["x"])


def test_the_fine_tune_click_adds_the_fine_tuned_point(fusion, digits_parents):
    at = fuse(fusion, "zipit", 2.0)
    assert at.selectbox(key="fusion.frontier.pick").options == ["ZipIt! ×2"]
    button = at.button(key="fusion.frontier.finetune")
    assert button.label == "Fine-tune (1 epoch)" and "1 epoch, as the page's fine-tuning is 0" in button.help
    button.click().run()
    assert not at.exception and not at.error
    tuned = cached(digits_parents, dataclasses.replace(FusionSpec(alignment="zipit", width=2.0), finetune_epochs=1))
    drawn = drawn_points(frontier_chart(at))
    assert drawn["ZipIt! fine-tuned"] == [point(tuned.row(TUNED))]
    assert drawn["ZipIt!"] == [point(tuned.row(FUSED))]  # the one-shot network once, not twice
    assert at.session_state["fusion.request"].spec.finetune_epochs == 0  # the page's own result is unchanged


def test_the_width_slider_is_only_for_zipit_and_pleas(fusion):
    width = fusion.slider(key="fusion.width")
    assert width.disabled and "only ZipIt! and PLeaS" in width.help
    assert width.min == 1.0 and width.max == 2.0 and width.step == 0.25  # 2 parents
    fusion.selectbox(key="fusion.alignment").set_value("pleas").run()
    assert not fusion.slider(key="fusion.width").disabled
    assert fusion.selectbox(key="fusion.mode").disabled  # PLeaS matches by activations, as CCA and ZipIt! do
    fusion.slider(key="fusion.width").set_value(1.75)
    fusion.selectbox(key="fusion.alignment").set_value("cca").run()
    assert fusion.slider(key="fusion.width").disabled and fusion.slider(key="fusion.width").value == 1.0
    at = fusion.button(key="fusion.fuse").click().run()
    assert not at.exception and not at.error
    assert at.session_state["fusion.request"].spec.width == 1.0
