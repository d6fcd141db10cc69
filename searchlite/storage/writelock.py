"""One writer per index: an OS file lock in the index folder.

The kernel drops the lock when its process dies, so a killed indexer never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import IndexLockedError, IndexReadOnlyError


def read_only_error(index_dir: Path, detail: str = "") -> IndexReadOnlyError:
    """What a command that must write says on an index on read-only media (or with read-only files)."""
    return IndexReadOnlyError(
        f"the index in {index_dir} is read-only{' ' + detail if detail else ''}: it can answer queries; "
        "to change it, copy it (or remount its drive) where it can be written"
    )


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive write lock at path, or raise IndexLockedError at once."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # read-only media or files
            raise read_only_error(path.parent) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise IndexLockedError(
                f"another searchlite process (pid {holder}) is writing to the index in "
                f"{path.parent}; wait for it to finish, or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
