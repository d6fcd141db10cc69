"""Walks photo folders: which files exist, their size and mtime, their content hash.

Knows nothing of models or databases. Paths are absolute `str`s; on POSIX, names that are not valid
UTF-8 are carried losslessly as surrogate escapes (os.fsencode gives the original bytes back).

Symbolic links: a link to a file inside the collection is indexed like the file; links to folders
are not followed, and links leading out of the collection are reported, not followed; with
follow_links=True every link is followed, loops included safely (each folder is walked once).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

# the skip reason of a link to a file out of the collection (counted apart from files not images)
LINK_OUT_OF_COLLECTION = "symbolic link out of the collection: not followed (following links is off)"


@dataclass(frozen=True)
class FileInfo:
    """One entry found by a scan: a regular file, or something to report instead of reading."""

    path: str
    size: int
    mtime_ns: int
    skip: str | None = None  # a reason not to read it (recorded as skipped)
    error: str | None = None  # a reason it cannot be read (recorded as failed)


def is_hidden(name: str) -> bool:
    """Hidden files and folders, including macOS AppleDouble `._*` files."""
    return name.startswith(".")


def scan(
    root: str | os.PathLike[str], exclude: Collection[str] = (), *, follow_links: bool = False
) -> Iterator[FileInfo]:
    """Yield every visible file under root (or root itself, if it is a file), sorted by path.

    Hidden entries and the folders in `exclude` (absolute paths) are skipped.
    """
    root = os.path.abspath(os.fspath(root))
    st = os.stat(root)
    if stat.S_ISREG(st.st_mode):
        yield FileInfo(root, st.st_size, st.st_mtime_ns)
        return
    walker = _Walker(root, frozenset(exclude), follow_links)
    yield from walker.walk(root, st)


class _Walker:
    def __init__(self, root: str, exclude: frozenset[str], follow_links: bool) -> None:
        self.real_root = os.path.realpath(root)
        self.exclude = exclude
        self.follow_links = follow_links
        self.seen_dirs: set[tuple[int, int]] = set()

    def inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.real_root or real.startswith(self.real_root.rstrip("/") + "/")

    def walk(self, folder: str, st: os.stat_result) -> Iterator[FileInfo]:
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:  # a link loop, or the same folder reached twice
            return
        self.seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", folder, e.strerror or e)
            return
        for entry in entries:
            if is_hidden(entry.name) or entry.path in self.exclude:
                continue
            yield from self.entry(entry)

    def entry(self, entry: os.DirEntry[str]) -> Iterator[FileInfo]:
        path = entry.path
        try:
            is_link = entry.is_symlink()
            own = entry.stat(follow_symlinks=False)
            if is_link:
                try:
                    st = os.stat(path)
                except OSError:
                    yield FileInfo(path, own.st_size, own.st_mtime_ns, error="dangling symbolic link")
                    return
                if not self.follow_links and not (stat.S_ISREG(st.st_mode) and self.inside(path)):
                    kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
                    where = "out of the collection" if not self.inside(path) else "inside the collection"
                    log.info("not following link %s (to a %s %s)", path, kind, where)
                    if stat.S_ISREG(st.st_mode):
                        yield FileInfo(path, own.st_size, own.st_mtime_ns, skip=LINK_OUT_OF_COLLECTION)
                    return
            else:
                st = own
        except OSError as e:  # vanished, or no permission
            log.warning("cannot stat %s: %s", path, e.strerror or e)
            return
        if stat.S_ISDIR(st.st_mode):
            yield from self.walk(path, st)
        elif stat.S_ISREG(st.st_mode):
            yield FileInfo(path, st.st_size, st.st_mtime_ns)
