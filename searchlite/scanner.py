"""Walks photo folders: which files exist, their size and mtime, their content hash.

Knows nothing of models or databases. Paths are absolute `str`s; on POSIX, names that are not valid
UTF-8 are carried losslessly as surrogate escapes (os.fsencode gives the original bytes back).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileInfo:
    """One regular file found by a scan."""

    path: str
    size: int
    mtime_ns: int


def is_hidden(name: str) -> bool:
    """Hidden files and folders, including macOS AppleDouble `._*` files."""
    return name.startswith(".")


def scan(root: str | os.PathLike[str], exclude: Collection[str] = ()) -> Iterator[FileInfo]:
    """Yield every visible regular file under root (or root itself, if it is a file), sorted by path.

    Hidden entries and the folders in `exclude` (absolute paths) are skipped; symlinks to
    directories are not followed (no loops, no escaping the collection); symlinks to files are.
    """
    root = os.path.abspath(os.fspath(root))
    st = os.stat(root)
    if stat.S_ISREG(st.st_mode):
        yield FileInfo(root, st.st_size, st.st_mtime_ns)
        return
    yield from _walk(root, frozenset(exclude))


def _walk(folder: str, exclude: frozenset[str]) -> Iterator[FileInfo]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        log.warning("cannot list %s: %s", folder, e.strerror or e)
        return
    for entry in entries:
        if is_hidden(entry.name) or entry.path in exclude:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, exclude)
                continue
            st = entry.stat(follow_symlinks=True)
        except OSError as e:  # dangling link, vanished file, no permission
            log.warning("cannot stat %s: %s", entry.path, e.strerror or e)
            continue
        if stat.S_ISREG(st.st_mode):
            yield FileInfo(entry.path, st.st_size, st.st_mtime_ns)


def content_hash(data: bytes) -> str:
    """Hash that identifies a file's content across moves, renames and copies."""
    return hashlib.sha256(data).hexdigest()
