"""Errors typed by who can fix them: a `UserError` is a setting or a file the user can change.

Every message of the family is written for the user; the CLI prints it as one `error:` line
(exit 2) and the UI as one message. Anything else raised from otcore is a bug and keeps its
traceback (the CLI exits 1). `UserError` subclasses `ValueError`, so callers that caught the
older `ValueError`s keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Base of every error whose message tells the user what to change."""


class DeviceError(UserError):
    """A device that was asked for but is not there."""


class ModelError(UserError):
    """An architecture or a network that a step cannot use (unknown name, unsupported layer)."""


class PruneError(UserError):
    """A pruning setting or network that pruning or compaction cannot handle."""


class FusionError(UserError):
    """Parents or options that fusion cannot work with (fewer than two, different families, no sample)."""
