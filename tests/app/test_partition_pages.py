"""Partitions in the dashboard: the sidebar trains parents on a partition, the Parents page shows what each saw,
the Fusion page shows per-class accuracy and each parent's classes."""
from __future__ import annotations

from otcore.config import TrainSpec
from otcore.data import load_dataset
from otcore.partition import class_counts, part_indices
from ui import state

PARENTS_PAGE, FUSION_PAGE = "pages/1_Parents.py", "pages/2_Fusion.py"


def test_sidebar_trains_parents_on_a_labels_partition_and_the_pages_show_it(page):
    at = page(PARENTS_PAGE, **{state.K_EPOCHS: 3}).run()
    at.sidebar.selectbox(key=state.K_PARTITION).set_value("labels").run()
    at.sidebar.text_input(key=state.K_CLASSES).set_value("0, 1, 2").run()
    at.sidebar.button(key=state.K_LOAD).click().run()
    assert not at.exception and not at.error
    parent_set = at.session_state[state.PARENTS]
    assert parent_set.train.partition == "labels" and parent_set.train.partition_classes == (0, 1, 2)
    y = load_dataset("digits").y_train
    for i, parent in enumerate(parent_set.parents):
        seen = part_indices(y, TrainSpec(partition="labels", partition_classes=(0, 1, 2), part=i), 10)
        assert parent.metrics["class_counts"] == class_counts(y[seen], 10)
    histogram = at.get("plotly_chart")[0].proto.spec
    assert '"training examples"' in histogram and '"class"' in histogram
    assert any("'labels' partition" in c.value for c in at.caption)

    fusion = page(FUSION_PAGE, **{state.PARENTS: parent_set, state.K_EPOCHS: 3,
                                  state.K_PARTITION: "labels", state.K_CLASSES: "0, 1, 2"}).run()
    fusion.button(key="fusion.fuse").click().run()
    assert not fusion.exception and not fusion.error
    own = fusion.dataframe[1].value  # the Per class tab's table, after the comparison
    assert list(own.columns) == ["method", "parent 1's classes (%)", "parent 2's classes (%)"]
    first = own[own["method"] == "parent 1"].iloc[0]
    assert first["parent 2's classes (%)"] == 0.0 and first["parent 1's classes (%)"] > 80.0
    assert any(c.proto.spec.count('"method"') for c in fusion.get("plotly_chart"))


def test_a_partition_for_three_parents_is_refused_in_the_sidebar(page):
    at = page(PARENTS_PAGE, **{state.K_COUNT: 3, state.K_PARTITION: "small_big"}).run()
    assert not at.exception
    assert any("splits the data between 2 parents" in e.value for e in at.sidebar.error)
