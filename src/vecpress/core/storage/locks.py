"""The directory lock: one process writes a store at a time."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .files import _LOCK_FLAGS, open_regular_file


LOCK_FILE = "LOCK"


class StoreLockedError(RuntimeError):
    """The store is open for writing elsewhere (its directory lock is held)."""


class DirectoryLock:
    """An exclusive advisory lock so that only one process writes a store at a time.

    ``LOCK`` is created or opened without following a link and must be a regular file, so
    a link planted there cannot make the store create or touch a file elsewhere.
    """

    def __init__(self, directory: Path) -> None:
        import fcntl

        self._fd: int | None = open_regular_file(directory / LOCK_FILE, _LOCK_FLAGS)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreLockedError(
                    f"{directory} is already open for writing (by another process, or by a "
                    f"store in this one that was not closed); close that one, or open with "
                    f"read_only=True to search it meanwhile") from None
            raise

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_new_directory(path: Path, kind: str) -> DirectoryLock:
    """Make ``path`` (new, or an empty directory) the home of a new store of ``kind`` and hold
    its write lock. Refuses a file, and a directory that holds anything but a lock, before
    anything is written there."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"path={str(path)!r} is a file; give a directory")
    if path.exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
        raise FileExistsError(f"path={str(path)!r} is a non-empty directory that holds no "
                              f"{kind}; choose a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)
    return DirectoryLock(path)
