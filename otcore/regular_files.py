"""Opening files of a folder that others write to (the cache): a regular file or nothing, and never a wait.

A FIFO blocks open() until a writer comes, a device may never end or may act on being opened, a
folder is not data. So a path is stat'ed first and only a regular file is opened, with O_NONBLOCK,
so that a FIFO swapped in after the stat cannot block either; fstat then checks what was opened.
Symlinks are followed: a link to a regular file is a file someone chose to share (its content is
verified like any other), and a link to anything else is refused by the same two checks.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """A path that names something other than a regular file (an OSError, so callers' handlers catch it)."""


def kind_of(mode: int) -> str:
    """What a stat mode names, in words: 'a regular file', 'a FIFO', 'a folder', ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(info: os.stat_result, path: str | Path) -> None:
    """Raise NotRegularFile unless info (a stat or lstat) is of a regular file."""
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(errno.EINVAL, f"{kind_of(info.st_mode)}, not a regular file", str(path))


def open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at path and its fstat; NotRegularFile for anything else.

    Never blocks and never opens a FIFO, device or folder; FileNotFoundError where nothing is there.
    """
    check_regular(os.stat(path), path)
    fd = os.open(path, _READ_FLAGS)
    try:
        info = os.fstat(fd)  # of what was opened: a swap after the stat cannot slip through
        check_regular(info, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at path, at most `limit` of them (open_regular's checks first)."""
    fd, _ = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)
