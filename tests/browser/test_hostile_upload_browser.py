"""Hostile checkpoints uploaded in the sidebar of the real server (`streamlit run app.py`, Chromium): each is one
message in that session, and while it is read the server's health endpoint and a second session keep answering.

A 300 KB key nested 300,000 deep once killed the server process (SIGSEGV) for every user; a 400-byte key of 60
shared levels held its CPU and lock, so the health endpoint and other sessions got nothing for over a minute.
"""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.streamlit_server import BROWSER_MARKS, browser_page, key, streamlit_server, wait_idle
from tests.faults.hostile_files import deep_key, huge_memo_index, shared_key_legacy

pytestmark = BROWSER_MARKS
ANSWER_S = 1.0  # a healthy server answers a health check or a page request in milliseconds


def answers_within(url: str, deadline_s: float = ANSWER_S) -> bool:
    """Whether GET url returns 200 before the deadline (retried until then: a hang detector, not a timer)."""
    deadline = time.monotonic() + deadline_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            with urllib.request.urlopen(url, timeout=left) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("make", [deep_key, shared_key_legacy, huge_memo_index],
                         ids=["tuple key 300,000 deep", "legacy: shared key, 60 levels", "memo index 250,000,000"])
def test_a_hostile_upload_is_one_message_and_the_server_keeps_answering(make, tmp_path: Path):
    path, fragments = make(tmp_path)
    with streamlit_server(tmp_path / "cache") as url, browser_page() as page:
        page.goto(url)
        wait_idle(page)
        sidebar = page.locator("[data-testid='stSidebar']")
        sidebar.get_by_text("Or load checkpoint files").click()
        page.locator(f"{key('ws.uploads')} input[type='file']").set_input_files(str(path))
        load = sidebar.get_by_role("button", name="Load parents", exact=True)  # its label once a file is uploaded
        load.wait_for(timeout=30_000)
        wait_idle(page)
        load.click()
        # While the upload is read and after: the server answers others, repeatedly, within a second each time.
        refusal = sidebar.get_by_text("Could not get the parents")
        checks, give_up = 0, time.monotonic() + 120  # a hang detector for the message itself
        while checks < 5 or not refusal.count():
            assert answers_within(f"{url}/_stcore/health"), f"the health endpoint stopped answering ({checks} checks)"
            assert answers_within(url), f"a new session's page request got no answer ({checks} checks)"
            checks += 1
            assert time.monotonic() < give_up, "the upload never got its message"
        other = page.context.browser.new_context()  # a second session (its own cookies) draws the home page
        second = other.new_page()
        second.goto(url)
        wait_idle(second)
        assert second.locator("h1").count() >= 1
        other.close()
        shown = sidebar.locator("[data-testid='stAlert']").all_inner_texts()
        assert len(shown) == 1, shown
        assert all(fragment in shown[0] for fragment in fragments), (fragments, shown[0])
        assert answers_within(f"{url}/_stcore/health")
