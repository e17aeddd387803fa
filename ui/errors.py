"""Errors on the page, typed by who can fix them: the user's mistakes as one hint, bugs as 'internal error'.

Until `otcore.errors.UserError` lands, a user error is any ValueError (or ImportError of an optional
backend) that otcore raises for a bad setting or file; `is_user_error` is the one place that decides.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any

import streamlit as st

from otcore.checkpoints import CheckpointError
from otcore.config import SpecError
from otcore.data import DataError

log = logging.getLogger(__name__)


def is_user_error(err: BaseException) -> bool:
    """Whether the user can fix `err` by changing a setting or a file (otherwise it is a bug)."""
    if isinstance(err, (SpecError, DataError, CheckpointError)):
        return True
    # Any ValueError otcore raises is about its inputs (spec checks, files, shapes the user picked);
    # one raised by a third-party library inside otcore is a bug of ours, and keeps its traceback.
    if isinstance(err, ValueError):
        return type(err).__module__.startswith("otcore") or _raised_in_otcore(err)
    return isinstance(err, ImportError)  # an optional backend missing: choose another setting


def _raised_in_otcore(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "/otcore/" in frames[-1].filename.replace("\\", "/")


def _hint(err: BaseException) -> str:
    if isinstance(err, CheckpointError):
        return ("Load a file written by `torch.save` (the paper's format or a plain state_dict) or a "
                ".safetensors file, made for the architecture selected in the sidebar.")
    if isinstance(err, DataError):
        return "Check the dataset and its Data root in the sidebar (torchvision's folder layout)."
    if isinstance(err, ImportError):
        return "This option's backend is not available in this installation; choose another setting."
    return "Change that setting; the message says which values are allowed."


def show_error(err: BaseException, what: str = "That did not work", container: Any = None) -> None:
    """A user error as one st.error line with a hint; anything else as 'internal error' with its traceback.

    The traceback of an internal error goes to the server log (logging.exception) and into a
    collapsed expander, so a bug report can quote it.
    """
    where = container or st
    message = str(err) or type(err).__name__
    if is_user_error(err):
        where.error(f"**{what}:** {message} — {_hint(err)}", icon=":material/error:")
        return
    log.error("internal error: %s", what, exc_info=err)
    where.error(f"**Internal error** ({what}): {type(err).__name__}: {message}. This is a bug, not your settings; "
                "the server log has the traceback.", icon=":material/bug_report:")
    with where.expander("Traceback"):
        st.code("".join(traceback.format_exception(type(err), err, err.__traceback__)), language="text")
