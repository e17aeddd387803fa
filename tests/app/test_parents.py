"""Parents page through AppTest: empty state, the parents' table and downloads, a stale workspace."""
from __future__ import annotations

from ui import state

PARENTS_PAGE = "pages/1_Parents.py"


def test_without_parents_the_page_explains_what_to_do(page):
    at = page(PARENTS_PAGE).run()
    assert not at.exception
    assert at.title[0].value == "Parents"
    assert any("No parents yet" in i.value for i in at.info)
    assert not at.dataframe


def test_table_shows_each_parents_scores(page, parent_set):
    at = page(PARENTS_PAGE, **{state.PARENTS: parent_set}).run()
    assert not at.exception
    table = at.dataframe[0].value
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
    assert not at.dataframe
