"""Opening the files of a store safely (no links, no FIFOs, regular files only), creating
new ones without following links, and fsyncs. A store directory is untrusted input: see
:mod:`vecpress.core.storage`."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterable


_READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))
_LOCK_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))


class StoreCorruptedError(ValueError):
    """A file of the store is missing, truncated, does not match its checksum, or breaks a
    rule of the store format (the message names the file and the rule)."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_files(directory: Path, names: Iterable[str]) -> None:
    """fsync the files ``names`` of ``directory`` (those that exist), then the directory: what
    was written without fsyncs (``sync=False``) becomes durable."""
    for name in names:
        try:
            fd = open_regular_file(directory / name)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)


def open_regular_file(path: Path, flags: int = _READ_FLAGS) -> int:
    """Open a file of a store as a file descriptor, refusing anything but a regular file.

    Symbolic links are not followed and FIFOs do not block: either is refused at once with
    a :class:`StoreCorruptedError` naming the file (``FileNotFoundError`` when it is absent).
    """
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreCorruptedError(
                f"{path}: is a symbolic link; the files of a store must be regular files in "
                f"its directory (replace the link by the file it points to)") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            raise StoreCorruptedError(f"{path}: is not a regular file; the files of a store "
                                      f"must be regular files (remove it)") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StoreCorruptedError(
                f"{path}: is a {_file_kind(mode)}, not a regular file; the files of a store "
                f"must be regular files (remove it)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def require_plain(path: Path, *, directory: bool = False) -> None:
    """Refuse a link or special file at ``path`` (absence is fine), for entries of a store that
    another library opens by name (SQLite follows links): checked just before it does."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise StoreCorruptedError(
            f"{path}: is a symbolic link; the files of a store must be regular files in its "
            f"directory (replace the link by what it points to)")
    if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
        want = "a directory" if directory else "a regular file"
        raise StoreCorruptedError(f"{path}: is a {_file_kind(mode)}, not {want}; remove it")


def create_new_file(path: Path) -> int:
    """Create ``path`` for writing (a file descriptor), never through a link.

    Callers write names that no committed manifest refers to, so a file or link already at
    that name is a leftover: it is unlinked first (unlink does not follow links), then the
    file is created exclusively without following links.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise StoreCorruptedError(f"{path}: a directory stands where the store writes a file; "
                                  f"remove it") from None
    return os.open(path, _CREATE_FLAGS, 0o644)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
