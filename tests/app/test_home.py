"""Home page and the sidebar workspace, through Streamlit's AppTest: real pipeline, real cache files."""
from __future__ import annotations

import pytest
import torch

from otcore.checkpoints import checkpoint_bytes
from ui import state
from ui.memo import _slot

HOME = "app.py"


def errors(at) -> list[str]:
    return [e.value for e in at.error] + [e.value for e in at.sidebar.error]


def test_empty_cache_says_what_to_do(page, tmp_path, monkeypatch):
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path))
    at = page(HOME).run()
    assert not at.exception
    assert at.title[0].value == "OT Fusion Studio"
    assert any("optimal transport" in m.value for m in at.markdown)
    assert any("cache is empty" in i.value for i in at.info)
    assert any("No parents yet" in c.value for c in at.sidebar.caption)


def test_cache_browser_lists_the_trained_parents(page, digits_parents):
    at = page(HOME).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["kind", "dataset", "arch", "key", "headline", "size", "created"]
    for parent in digits_parents:
        row = table[table["key"] == parent.key].iloc[0]
        assert (row["kind"], row["dataset"], row["arch"]) == ("parent", "digits", "mlpnet")
        assert row["headline"] == f"test acc {parent.metrics['test']['accuracy']:.2f}%"
        assert row["size"].endswith("KiB") or row["size"].endswith("MiB")
    assert len(at.expander) >= len(digits_parents)  # one per entry, config and metrics inside
    at.segmented_control(key="home.kind").set_value("parent").run()
    assert set(at.dataframe[0].value["kind"]) == {"parent"}


def test_sidebar_button_loads_the_parents_and_pages_share_them(page, digits_parents):
    at = page(HOME).run()
    at.button(key="ws.load").click().run()
    assert not at.exception and not errors(at)
    parent_set = at.session_state[state.PARENTS]
    assert [p.key for p in parent_set.parents] == [p.key for p in digits_parents]  # the cached ones, not retrained
    assert parent_set.origin == "trained" and parent_set.seeds == (0, 1)
    assert any("2 parents of mlpnet on digits" in c.value for c in at.sidebar.caption)
    # The workspace survives a page switch, and the next page sees the same parents.
    at.number_input(key="ws.epochs").set_value(10).run()
    at.switch_page("pages/1_Parents.py").run()
    assert not at.exception
    assert at.number_input(key="ws.epochs").value == 10
    assert len(at.dataframe[0].value) == 2


def test_workspace_offers_models_that_fit_the_dataset(page):
    at = page(HOME).run()
    digits_archs = at.selectbox(key="ws.arch").options
    assert "mlpnet" in digits_archs and "vgg_tiny_nobias" in digits_archs and "resnet_tiny_nobias_nobn" in digits_archs
    assert "vit_tiny" in digits_archs and "vit_tiny_doub" in digits_archs
    assert "vgg11_nobias" not in digits_archs and "resnet18_nobias_nobn" not in digits_archs
    assert not at.text_input  # no data root for the embedded dataset
    at.selectbox(key="ws.dataset").set_value("mnist").run()
    assert not at.exception
    assert at.text_input(key="ws.root").label == "Data root"
    mnist_archs = at.selectbox(key="ws.arch").options
    assert "vgg11_nobias" not in mnist_archs  # five pools do not fit 28x28
    assert "resnet18_nobias_nobn" in mnist_archs and "mlpnet" in mnist_archs
    assert "vit_tiny" in mnist_archs  # a 4x4 grid of 7x7 patches


def test_real_dataset_without_root_is_an_error_not_a_traceback(page):
    at = page(HOME, **{"ws.dataset": "mnist"}).run()
    at.button(key="ws.load").click().run()
    assert not at.exception
    assert any("Data root" in e for e in errors(at))
    assert state.PARENTS not in at.session_state


def test_malformed_upload_is_refused_with_a_message(page):
    at = page(HOME).run()
    at.file_uploader(key="ws.uploads").upload("model.checkpoint", b"this is not a checkpoint")
    at.run()
    at.button(key="ws.load").click().run()
    assert not at.exception
    message = errors(at)
    assert message and "model.checkpoint" in message[0] and "not a checkpoint" in message[0]
    assert state.PARENTS not in at.session_state


def test_uploaded_checkpoints_become_the_parents(page, digits_parents):
    at = page(HOME).run()
    uploader = at.file_uploader(key="ws.uploads")
    for parent, name in zip(digits_parents, ["a.checkpoint", "b.safetensors"]):
        fmt = "safetensors" if name.endswith("safetensors") else "paper"
        uploader.upload(name, checkpoint_bytes(parent.model.state_dict(), fmt, {"test_accuracy": 1.0}))
    at.run()
    at.button(key="ws.load").click().run()
    assert not at.exception and not errors(at)
    parent_set = at.session_state[state.PARENTS]
    assert parent_set.origin == "uploaded"
    assert [(p.name, p.source) for p in parent_set.parents] == [("parent 1", "a.checkpoint"),
                                                                ("parent 2", "b.safetensors")]
    for loaded, original in zip(parent_set.parents, digits_parents):
        assert loaded.metrics["test"]["accuracy"] == pytest.approx(original.metrics["test"]["accuracy"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_cuda_without_a_gpu_is_an_error(page):
    at = page(HOME, **{"ws.device": "cuda"}).run()
    at.button(key="ws.load").click().run()
    assert not at.exception
    assert any("CUDA" in e for e in errors(at))


def test_tampered_and_malformed_entries_are_skipped_with_one_warning(page, app_cache_dir, tmp_path, monkeypatch,
                                                                     digits_parents):
    import json
    import shutil

    from otcore.cache import CacheEntry, DiskCache
    from otcore.config import spec_hash

    good, tampered = digits_parents
    for parent in digits_parents:  # the two parents only: other tests add their entries to the app cache
        shutil.copy2(app_cache_dir / f"{parent.key}.safetensors", tmp_path)
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path))
    path = tmp_path / f"{tampered.key}.safetensors"
    value = json.dumps(tampered.metrics["test"]["accuracy"]).encode()
    path.write_bytes(path.read_bytes().replace(value, (b"1" if value[:1] == b"9" else b"9") + value[1:], 1))
    cache = DiskCache(tmp_path)
    text = cache.load(good.key)
    text.key, text.metrics["test"]["accuracy"] = spec_hash("parent", "text"), "97.5"  # issue 14: format code 'f'
    cache.store(text)
    cache.store(CacheEntry(spec_hash("sweep", "nostatus"), "sweep", {"data": {"name": "digits"}, "model": {"arch": "mlpnet"},
                                                 "step": "prune"}, {"done": 0}))  # the KeyError: 'status'
    (tmp_path / "truncated.safetensors").write_bytes(path.read_bytes()[:100])
    at = page(HOME).run()
    assert not at.exception
    assert len(at.warning) == 1
    assert at.warning[0].value.startswith("4 damaged or unreadable cache entries skipped (")
    table = at.dataframe[0].value
    assert list(table["key"]) == [good.key]
    assert table.iloc[0]["headline"] == f"test acc {good.metrics['test']['accuracy']:.2f}%"
    assert len(at.main.expander) == 1  # the sidebar has its own
    assert any("1 entries" in c.value for c in at.caption)


def test_a_bug_shows_its_type_not_its_traceback_or_message():
    import tomllib

    from conftest import REPO

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] in ("type", "none")


def _hostile_cache(app_cache_dir, tmp_path, digits_parents):
    """The two parents' entries, the second replaced by a FIFO, and FIFOs, a link to one and a folder beside them."""
    import os
    import shutil

    cache = tmp_path / "cache"
    cache.mkdir()
    for parent in digits_parents:
        shutil.copy2(app_cache_dir / f"{parent.key}.safetensors", cache)
    (cache / f"{digits_parents[1].key}.safetensors").unlink()
    os.mkfifo(cache / f"{digits_parents[1].key}.safetensors")
    os.mkfifo(cache / "fifo.safetensors")
    os.mkfifo(tmp_path / "outside")
    (cache / "link.safetensors").symlink_to(tmp_path / "outside")
    (cache / "folder.safetensors").mkdir()
    os.mkfifo(cache / ".fingerprints.json")
    os.mkfifo(cache / f".{digits_parents[1].key}.lock")
    return cache


def test_fifos_links_and_folders_in_the_cache_are_skipped_and_never_waited_on(page, app_cache_dir, tmp_path,
                                                                             monkeypatch, digits_parents):
    good, replaced = digits_parents
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(_hostile_cache(app_cache_dir, tmp_path, digits_parents)))
    at = page(HOME).run()  # AppTest's timeout is the hang detector: a blocked open never returns
    assert not at.exception
    assert len(at.warning) == 1 and at.warning[0].value.startswith("4 damaged or unreadable cache entries skipped (")
    assert "a FIFO, not a regular file" in at.warning[0].value
    assert list(at.dataframe[0].value["key"]) == [good.key]
    _slot.clear()  # the server's memo of earlier tests' parents: these must come from this cache folder
    at.button(key="ws.load").click().run()  # the FIFO'd parent is a miss: trained again to the same numbers
    assert not at.exception and not errors(at)
    loaded = at.session_state[state.PARENTS].parents
    assert [(p.key, p.metrics["cached"]) for p in loaded] == [(good.key, True), (replaced.key, False)]
    assert [p.metrics["test"]["accuracy"] for p in loaded] == [p.metrics["test"]["accuracy"] for p in digits_parents]


def test_swapped_entries_are_skipped_and_the_parents_trained_again_to_their_own_numbers(page, app_cache_dir, tmp_path,
                                                                                       monkeypatch, digits_parents):
    first, second = digits_parents
    for parent, other in ((first, second), (second, first)):
        (tmp_path / f"{parent.key}.safetensors").write_bytes((app_cache_dir / f"{other.key}.safetensors").read_bytes())
    monkeypatch.setenv("OTCORE_CACHE_DIR", str(tmp_path))
    at = page(HOME).run()
    assert not at.exception
    assert len(at.warning) == 1 and at.warning[0].value.startswith("2 damaged or unreadable cache entries skipped (")
    assert "not its own (copied or renamed from another entry)" in at.warning[0].value
    assert any("cache is empty" in i.value for i in at.info)
    _slot.clear()  # the server's memo of earlier tests' parents: these must come from this cache folder
    at.button(key="ws.load").click().run()
    assert not at.exception and not errors(at)
    loaded = at.session_state[state.PARENTS].parents
    assert [(p.key, p.metrics["test"]["accuracy"]) for p in loaded] == \
           [(p.key, p.metrics["test"]["accuracy"]) for p in digits_parents]
    assert not any(p.metrics["cached"] for p in loaded)
