"""Parents page through AppTest: empty state, the parents' table and downloads, a stale workspace."""
from __future__ import annotations

import pytest

from ui import state

PARENTS_PAGE = "pages/1_Parents.py"


def parents_tables(at) -> list:
    """The page's tables of parents (the architecture check above them has its own)."""
    return [d.value for d in at.dataframe if "parent" in d.value.columns]


def test_without_parents_the_page_explains_what_to_do(page):
    at = page(PARENTS_PAGE).run()
    assert not at.exception
    assert at.title[0].value == "Parents"
    assert any("No parents yet" in i.value for i in at.info)
    assert not parents_tables(at)


def test_table_shows_each_parents_scores(page, parent_set):
    at = page(PARENTS_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    (table,) = parents_tables(at)
    assert list(table["parent"]) == ["parent 1", "parent 2"]
    for (_, row), parent in zip(table.iterrows(), parent_set.parents):
        assert row["test acc (%)"] == round(parent.metrics["test"]["accuracy"], 2)
        assert row["test loss"] == round(parent.metrics["test"]["loss"], 4)
        assert row["train acc (%)"] == round(parent.metrics["train"]["accuracy"], 2)
        assert row["parameters"] == sum(p.numel() for p in parent.model.parameters())
    cards = {m.label: m.value for m in at.metric}
    assert cards == {p.name: f"{p.metrics['test']['accuracy']:.2f} %" for p in parent_set.parents}
    assert [b.key for b in at.get("download_button")] == ["parents.download.parent 1", "parents.download.parent 2"]


def test_parents_of_another_architecture_are_not_used(page, parent_set):
    at = page(PARENTS_PAGE, **{state.PARENTS: parent_set, "ws.arch": "vgg_tiny_nobias"}).run()
    assert not at.exception
    assert any("mlpnet on digits" in w.value for w in at.sidebar.warning)
    assert any("No parents yet" in i.value for i in at.info)
    assert not parents_tables(at)


def check_table(at):
    (table,) = [d.value for d in at.dataframe if "alignment" in d.value.columns]
    return table


@pytest.mark.slow  # `otcore check` of a torchvision network in its own process: a minute beside other work
def test_choosing_a_torchvision_network_shows_its_check(page):
    at = page(PARENTS_PAGE).run()
    assert not at.exception
    assert at.button(key="parents.check").label == "Check this architecture"  # asked for, never run on its own
    at.sidebar.radio(key=state.K_FAMILY).set_value("torchvision").run()
    names = at.sidebar.selectbox(key=state.K_LIBRARY_ARCH["torchvision"])
    assert names.value == "resnet18" and len(names.options) == 80 and "shufflenet_v2_x0_5" in names.options
    names.set_value("shufflenet_v2_x0_5").run()
    assert not at.exception
    at.button(key="parents.check").click().run()
    assert not at.exception
    table = check_table(at)
    assert list(table["alignment"]) == ["OT fusion (weights)", "OT fusion (activations)", "weight matching (weights)",
                                        "CCA Merge (activations)", "ZipIt! (activations)"]
    assert list(table["result"][:3]) == ["pass"] * 3 and all(float(r) <= 1e-4 for r in table["relative"][:3])
    assert "parents.check" not in [b.key for b in at.button]  # the result took the button's place
    assert any("channel groups" in m.value and "% of the weights moved" in m.value for m in at.markdown)
    assert [e.label for e in at.expander if "shufflenet_v2_x0_5" in e.label]
    assert any("No parents yet" in i.value for i in at.info)


@pytest.mark.slow
def test_a_network_the_tracer_refuses_is_one_message(page):
    at = page(PARENTS_PAGE, **{state.K_FAMILY: "timm", state.K_ARCH_SEARCH: "levit_128",
                               state.K_LIBRARY_ARCH["timm"]: "levit_128s"}).run()
    at.button(key="parents.check").click().run()
    assert not at.exception
    assert at.sidebar.selectbox(key=state.K_LIBRARY_ARCH["timm"]).value == "levit_128s"
    assert [e.value for e in at.error] == ["timm:levit_128s cannot be checked: cannot read the channel structure at "
                                           "'head.bn': normalises a tensor without channels"]
    assert not [d for d in at.dataframe if "alignment" in d.value.columns]
