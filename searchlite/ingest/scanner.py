"""Walks photo folders: which files exist, their size and mtime, their content hash.

Knows nothing of models or databases. Paths are absolute `str`s; on POSIX, names that are not valid
UTF-8 are carried losslessly as surrogate escapes (os.fsencode gives the original bytes back).

Symbolic links: a link to a file inside the collection is indexed like the file; links to folders
are not followed, and links leading out of the collection are reported, not followed; with
follow_links=True every link is followed, loops included safely (each folder is walked once).

Camera RAW siblings: a camera that shoots RAW+JPEG writes IMG_1.CR2 beside IMG_1.JPG, one picture
twice. The RAW is reported as skipped (RAW_SIBLING) unless raw_siblings=True; the pairing goes by
name (the same stem, case aside, in the same folder), the JPEG (or HEIC/HEIF) being the rendered one.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from ..media.raw import RAW_EXTENSIONS

log = logging.getLogger(__name__)

# the skip reason of a link to a file out of the collection (counted apart from files not images)
LINK_OUT_OF_COLLECTION = "symbolic link out of the collection: not followed (following links is off)"
# the skip reason of a camera RAW file beside a same-name JPEG (counted apart from files not images)
RAW_SIBLING = "camera raw with a same-name JPEG beside it: the JPEG is indexed (raw siblings are off)"

# the rendered copies a camera writes beside its RAW files (.hif: Canon's HEIF)
_RENDERED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".heic", ".heif", ".hif"})


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
    root: str | os.PathLike[str],
    exclude: Collection[str] = (),
    *,
    follow_links: bool = False,
    raw_siblings: bool = False,
) -> Iterator[FileInfo]:
    """Yield every visible file under root (or root itself, if it is a file), sorted by path.

    Hidden entries and the folders in `exclude` (absolute paths) are skipped. A camera RAW file with
    a same-name JPEG beside it comes with skip=RAW_SIBLING, unless raw_siblings.
    """
    root = os.path.abspath(os.fspath(root))
    st = os.stat(root)
    if stat.S_ISREG(st.st_mode):
        yield FileInfo(root, st.st_size, st.st_mtime_ns)
        return
    walker = _Walker(root, frozenset(exclude), follow_links, raw_siblings)
    yield from walker.walk(root, st)


def _split_name(name: str) -> tuple[str, str]:
    """(stem case-folded, extension lower-cased) of a file name."""
    stem, ext = os.path.splitext(name)
    return stem.casefold(), ext.lower()


def _rendered_stems(names: Collection[str]) -> set[str]:
    """The stems of the JPEG/HEIF files among names: RAW files with these stems have a sibling."""
    return {stem for stem, ext in map(_split_name, names) if ext in _RENDERED_EXTENSIONS}


class _Walker:
    def __init__(self, root: str, exclude: frozenset[str], follow_links: bool, raw_siblings: bool) -> None:
        self.real_root = os.path.realpath(root)
        self.exclude = exclude
        self.follow_links = follow_links
        self.raw_siblings = raw_siblings
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
        entries = [e for e in entries if not is_hidden(e.name) and e.path not in self.exclude]
        rendered = set() if self.raw_siblings else _rendered_stems([e.name for e in entries])
        for entry in entries:
            yield from self.entry(entry, rendered)

    def entry(self, entry: os.DirEntry[str], rendered: set[str]) -> Iterator[FileInfo]:
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
            stem, ext = _split_name(entry.name)
            sibling = ext in RAW_EXTENSIONS and stem in rendered
            yield FileInfo(path, st.st_size, st.st_mtime_ns, skip=RAW_SIBLING if sibling else None)
