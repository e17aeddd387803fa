"""Hostile checkpoint files uploaded on the Parents page (its sidebar uploader, through AppTest): one
message, no exception, no parents; the serving process's peak memory stays near the idle server's; and
other sessions keep working. The files are crafted byte by byte (tests/faults/hostile_files.py)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import pytest

from otcore.checkpoints import checkpoint_bytes
from tests.faults.hostile_files import HOSTILE, UPLOADABLE
from ui import state

PARENTS_PAGE = "pages/1_Parents.py"
# "Peak memory stays within 1 GB above the idle server"; honest loads of these networks take kilobytes.
MEMORY_SLACK = 2**30


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field + ":")).split()[1]) * 1024


def _can_reset_peak() -> bool:
    """Whether this kernel lets a process reset its peak RSS (writing 5 to /proc/self/clear_refs, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_rise() -> Iterator[dict[str, int]]:
    """How far this process's resident memory peaks above where it stood when the block began."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM (peak RSS) to the current RSS
    start, rise = _status("VmRSS"), {}
    yield rise
    rise["bytes"] = _status("VmHWM") - start


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    folder = tmp_path_factory.mktemp("hostile")
    return {kind: HOSTILE[kind](folder) for kind in UPLOADABLE}


def messages(at) -> list[str]:
    return [e.value for e in at.error]  # the whole page, sidebar included


def upload_and_load(at, files: list[tuple[str, bytes]]):
    """Upload the files and press 'Load parents'; `.run()` on the result runs the page with the press."""
    uploader = at.file_uploader(key="ws.uploads")
    for name, content in files:
        uploader.upload(name, content)
    at.run()
    return at.button(key="ws.load").click()


@pytest.mark.skipif(not _can_reset_peak(), reason="this kernel does not let a process reset its peak RSS")
@pytest.mark.parametrize("kind", UPLOADABLE)
def test_hostile_upload_shows_one_message_in_bounded_memory(page, hostile, kind):
    path, fragments = hostile[kind]
    pressed = upload_and_load(page(PARENTS_PAGE).run(), [(path.name, path.read_bytes())])
    with peak_rise() as rise:
        at = pressed.run()
    assert not at.exception
    shown = messages(at)
    assert len(shown) == 1, shown
    assert "Could not get the parents" in shown[0] and path.name in shown[0], shown[0]
    for fragment in fragments:
        assert fragment in shown[0], (fragment, shown[0])
    assert state.PARENTS not in at.session_state
    assert rise["bytes"] < MEMORY_SLACK, rise


def test_other_sessions_keep_working_after_hostile_uploads(page, hostile, digits_parents):
    refused = upload_and_load(page(PARENTS_PAGE).run(),
                              [(path.name, path.read_bytes()) for path, _ in (hostile["deflate bomb"],)]).run()
    assert len(messages(refused)) == 1 and state.PARENTS not in refused.session_state
    # Another session, same server process: uploads two honest parents and gets the page's table.
    good = [(f"p{i}.checkpoint", checkpoint_bytes(p.model.state_dict(), "paper")) for i, p in enumerate(digits_parents)]
    other = upload_and_load(page(PARENTS_PAGE).run(), good).run()
    assert not other.exception and not messages(other)
    assert list(other.dataframe[0].value["parent"]) == ["parent 1", "parent 2"]
    scores = [p.metrics["test"]["accuracy"] for p in other.session_state[state.PARENTS].parents]
    assert scores == pytest.approx([p.metrics["test"]["accuracy"] for p in digits_parents])
