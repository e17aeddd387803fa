"""Errors on the page: a user's mistake is one hint; a bug is 'internal error' with its traceback."""
from __future__ import annotations

import copy
import dataclasses
import logging

import torch

from otcore.config import SpecError
from ui import state
from ui.errors import is_user_error

FUSION_PAGE = "pages/2_Fusion.py"


def tracebacks(at) -> list:
    return [e for e in at.expander if e.label == "Traceback"]


def test_a_bad_setting_is_one_message_and_no_traceback(page, parent_set):
    at = page(FUSION_PAGE, **{state.PARENTS: parent_set}).run()
    at.text_input(key="fusion.weights").set_value("0.5, heavy")
    at.button(key="fusion.fuse").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "per-parent weights must be numbers" in at.error[0].value
    assert "Internal error" not in at.error[0].value and not tracebacks(at)


def test_a_broken_network_is_an_internal_error_with_its_traceback(page, parent_set, caplog):
    # A parent whose layers do not fit together (fc2 reads 7 features where fc1 writes 400), under a key
    # no cache holds: the backend fails deep inside, which no setting of the page can fix.
    model = copy.deepcopy(parent_set.parents[1].model)
    model.fc2 = torch.nn.Linear(7, model.fc2.out_features, bias=False)
    broken = dataclasses.replace(parent_set.parents[1], key="0" * 64, model=model)
    bad_set = dataclasses.replace(parent_set, parents=[parent_set.parents[0], broken])
    at = page(FUSION_PAGE, **{state.PARENTS: bad_set}).run()
    with caplog.at_level(logging.ERROR, logger="ui.errors"):
        at.button(key="fusion.fuse").click().run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith("**Internal error** (Fusion failed)")
    [expander] = tracebacks(at)
    code = expander.code[0].value
    assert code.startswith("Traceback (most recent call last)") and "otcore/" in code
    logged = [r for r in caplog.records if r.name == "ui.errors"]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the server log has the same traceback


def test_user_errors_are_otcore_value_errors():
    assert is_user_error(SpecError("reg must be > 0"))
    assert not is_user_error(KeyError("status")) and not is_user_error(RuntimeError("shape mismatch"))
    try:
        int("x")  # a ValueError raised outside otcore: a bug of ours, not the user's
    except ValueError as err:
        assert not is_user_error(err)
