"""Replacing a file so that a crash leaves either the old content or the new, never a mix."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ..errors import InvalidInputError


def replaceable_target(path: Path) -> Path:
    """path, when writing it replaces a regular file or creates a new one. Raises InvalidInputError
    naming path for anything else: a device such as /dev/stdout, a pipe, a socket, a folder, or a
    symbolic link (renaming over a link would replace the link, not what it points to; and links
    such as /dev/stdout lead to files that are not the user's to replace)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInputError(f"{path} is not a regular file but a symbolic link; name the file itself")
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
        raise InvalidInputError(f"{path} is not a regular file but {kind}; name a file to write")
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, os.replace, fsync the folder. Never replaces anything
    but a regular file (see replaceable_target)."""
    path = replaceable_target(Path(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); keep the permissions of the file it replaces
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames in folder durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
