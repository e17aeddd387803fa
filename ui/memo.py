"""Process-wide memo of pipeline calls (st.cache_resource slots) and the progress bar they draw."""
from __future__ import annotations

import threading
import time
from typing import Any
from collections.abc import Callable

import streamlit as st


class _Slot:
    """One memoised value and the lock its first computation holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.filled = False
        self.value: Any = None


@st.cache_resource(max_entries=64, show_spinner=False)
def _slot(kind: str, key: str) -> _Slot:
    return _Slot()


def memo(kind: str, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, fresh): the process-wide value of (kind, key), computed once with `compute`.

    `st.cache_resource` owns the slots (lifetime, max entries, the menu's "Clear cache"), but
    `compute` runs outside the cached function: Streamlit records the elements drawn inside a
    cached function to replay them, and a progress bar drawn outside cannot be replayed. What
    comes back is shared by every session: read it, never mutate it.
    """
    slot = _slot(kind, key)
    with slot.lock:  # a second session asking for the same key waits for the first
        if not slot.filled:
            slot.value, slot.filled = compute(), True
            return slot.value, True
    return slot.value, False


class ProgressBar:
    """Adapter from the pipeline's `progress(what, fraction)` callbacks to one `st.progress` bar."""

    def __init__(self, label: str, container: Any = None, min_interval_s: float = 0.1) -> None:
        self._bar = (container or st).progress(0.0, text=label)
        self._min_interval = min_interval_s
        self._last = 0.0

    def __call__(self, what: str, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self._min_interval:
            return  # the pipeline reports every batch; the browser needs ten updates a second at most
        self._last = now
        self._bar.progress(min(max(float(fraction), 0.0), 1.0), text=what)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.empty()


def is_memoised(kind: str, key: str) -> bool:
    """Whether (kind, key) is already computed in this server (a cheap check, nothing is computed)."""
    return _slot(kind, key).filled
