"""Paths a user typed (--data-root, --cache-dir, --parents, --out, the Data root field): one check, one line.

The system refuses some names before looking at the disk (a component longer than NAME_MAX, a
path longer than PATH_MAX, a NUL byte) and others on the first stat (a loop of links, a folder
without search permission). Every user path is stat'ed here, once, before anything else touches
it, so each of those is one UserError naming the flag instead of an OSError traceback; a path
that does not exist is not an error here (the caller knows whether it must). Standard library
only: the data fingerprint and the CLI's cached answers import this without torch.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from otcore.errors import UserError

_SHOWN = 240  # characters of a path a message prints; the rest is elided (a 5,300-character path is one line)


class PathError(UserError):
    """A path the operating system refuses to look at; the message names the flag or field."""


def shown(path: str | os.PathLike) -> str:
    """The path for a message: whole when short, else its two ends and its length."""
    text = os.fspath(path)
    if len(text) <= _SHOWN:
        return text
    return f"{text[:100]}...{text[-100:]} ({len(text):,} characters)"


def checked(path: str | os.PathLike, what: str,
            error: type[UserError] = PathError) -> tuple[Path, os.stat_result | None]:
    """(Path, its stat, or None where nothing is there); `error` naming `what` for any other OSError."""
    text = os.fspath(path)
    if "\0" in text:
        raise error(f"{what} {shown(text)!r}: a path cannot hold a NUL character")
    try:
        return Path(text), os.stat(text)
    except (FileNotFoundError, NotADirectoryError):
        return Path(text), None
    except ValueError as err:  # the platform's own refusal of a name (embedded NUL in bytes, and the like)
        raise error(f"{what} {shown(text)}: {err}") from None
    except OSError as err:
        reason = "a name in it is too long for the file system" if err.errno == errno.ENAMETOOLONG else (
            err.strerror or str(err))
        raise error(f"{what} {shown(text)}: {reason}") from None
