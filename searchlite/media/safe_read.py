"""Opening a file that a server (the HTTP API, MCP) reads by path, trusting nothing that is at the
path now: the file is opened without blocking (a FIFO would hang a reader for ever), checked with
fstat on the open descriptor (a regular file, not a device, a pipe or a /proc entry; no larger than
a cap; for an indexed file, still the file that was indexed), and then read through that descriptor
only, in the decoder process (decode_worker.py), never by its name again.

An indexed file's path is opened without following a symbolic link at its last component; a link
is followed only when the file it leads to is the indexed one (its content hash), so that a file
swapped for a link to /etc/passwd after indexing is refused. A folder on the way swapped for a link
is caught by the size and modification time, and for files up to HASH_CHECK_BYTES by the hash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ImageDecodeError, InvalidInputError, PathNotFoundError, SearchliteError

# indexed files up to this size are checked against their content hash on every read (a few ms)
HASH_CHECK_BYTES = 16 << 20
# never read, whatever they hold: the kernel's and devices' views, which a path may lead into
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")
PROC_FD = "/proc/self/fd"  # where Linux names each open descriptor's file
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReadPolicy:
    """How a file named by path is opened and checked before anything reads it.

    regular_only: only regular files (not FIFOs, devices, sockets, or anything under /proc, /sys,
    /dev); max_bytes: larger files are refused (None: no cap); roots: when given, the file's
    resolved path must be inside one of these folders; expect_*: the indexed file's size,
    modification time (ns) and content hash that it must still have (see for_row)."""

    regular_only: bool = True
    max_bytes: int | None = None
    roots: tuple[str, ...] = ()
    expect_size: int | None = None
    expect_mtime_ns: int | None = None
    expect_hash: str | None = None

    def for_row(self, row: Any) -> ReadPolicy:
        """This policy for an indexed file (a store row): it must still be the file indexed."""
        return replace(self, expect_size=row.size, expect_mtime_ns=row.mtime_ns, expect_hash=row.content_hash)

    @property
    def indexed(self) -> bool:
        return self.expect_size is not None


class OpenedFile:
    """A file opened and checked by open_checked: its descriptor, what fstat said, its path (for
    messages). Close it (or use it as a context manager)."""

    def __init__(self, fd: int, st: os.stat_result, path: str) -> None:
        self.fd = fd
        self.stat = st
        self.path = path

    @property
    def size(self) -> int:
        return self.stat.st_size

    def header(self, n: int) -> bytes:
        """The first n bytes (fewer for a shorter file), without moving the file's offset."""
        return os.pread(self.fd, n, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checked(path: str, policy: ReadPolicy, what: str = "file") -> OpenedFile:
    """path opened read-only and checked under policy. Raises PathNotFoundError for a missing file
    or one that is no longer the indexed one, InvalidInputError for a path outside policy.roots or
    in a system folder, ImageDecodeError for anything else that cannot be read."""
    path = os.path.abspath(path)
    refused = _refusal(path, os.path.realpath(path), policy, what)
    if refused is not None:
        raise refused
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    link = False
    try:
        try:
            fd = os.open(path, flags | (os.O_NOFOLLOW if policy.indexed else 0))
        except OSError as e:
            if not (policy.indexed and e.errno in (errno.ELOOP, errno.EMLINK)):  # EMLINK: FreeBSD's ELOOP here
                raise
            link = True  # indexed as a link inside the collection, or swapped for one: the hash decides
            fd = os.open(path, flags)
    except OSError as e:
        raise read_error(e, path, what) from None
    try:
        opened = OpenedFile(fd, os.fstat(fd), path)
    except OSError as e:
        os.close(fd)
        raise read_error(e, path, what) from None
    try:
        # a link swapped in between the check above and the open: where the open file really is
        refused = _refusal(path, _opened_real(opened), policy, what)
        if refused is not None:
            raise refused
        _check(opened, policy, what, link)
    except BaseException:
        opened.close()
        raise
    return opened


def read_error(e: OSError, path: str, what: str = "file") -> SearchliteError:
    """What an OSError opening or reading a file the user named means to them; what names the file
    in the message ("file", "query image")."""
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return PathNotFoundError(f"{what} {path} not found")
    if isinstance(e, IsADirectoryError):
        return ImageDecodeError(f"{what} {path} is a folder, not an image")
    return ImageDecodeError(f"cannot read {what} {path}: {e.strerror or e}")


def _refusal(path: str, real: str | None, policy: ReadPolicy, what: str) -> SearchliteError | None:
    """Why the file at path, which really is at real (None: not known), may not be read under
    policy; None when it may."""
    if policy.roots and (real is None or not any(_inside(real, folder) for folder in policy.roots)):
        # the same answer whether it exists or not: a caller learns nothing about other folders
        return InvalidInputError(f"{what} {path} is outside the folders this server reads (the indexed folders)")
    if policy.regular_only and real is not None and any(_inside(real, folder) for folder in SYSTEM_FOLDERS):
        if policy.indexed:  # an indexed file swapped for a link into one
            return PathNotFoundError(f"{what} {path} has changed since it was indexed: index its folder again")
        return InvalidInputError(f"{what} {path} is in a system folder ({', '.join(SYSTEM_FOLDERS)}): only image files are read")
    return None


def _opened_real(opened: OpenedFile) -> str | None:
    """Where the open file really is: /proc's name for its descriptor where there is /proc; else
    its path's real path if that still leads to the same file (device and inode), else None."""
    try:
        return os.readlink(f"{PROC_FD}/{opened.fd}")
    except OSError:
        pass
    real = os.path.realpath(opened.path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return real if (st.st_dev, st.st_ino) == (opened.stat.st_dev, opened.stat.st_ino) else None


def _check(opened: OpenedFile, policy: ReadPolicy, what: str, link: bool) -> None:
    st, path = opened.stat, opened.path
    changed = PathNotFoundError(f"{what} {path} has changed since it was indexed: index its folder again")
    if stat.S_ISDIR(st.st_mode):
        raise changed if policy.indexed else ImageDecodeError(f"{what} {path} is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        if policy.indexed:
            raise changed
        if policy.regular_only:
            raise ImageDecodeError(f"{what} {path} is not a regular file (a pipe, device or socket): only image files are read")
    if policy.indexed:
        if (st.st_size, st.st_mtime_ns) != (policy.expect_size, policy.expect_mtime_ns):
            raise changed
        if link and policy.expect_hash is None:
            raise changed
        if policy.expect_hash is not None and (link or st.st_size <= HASH_CHECK_BYTES):
            if _sha256(opened.fd) != policy.expect_hash:
                raise changed
    if policy.max_bytes is not None and stat.S_ISREG(st.st_mode) and st.st_size > policy.max_bytes:
        raise ImageDecodeError(
            f"{what} {path} is {_mb(st.st_size)}, over the {_mb(policy.max_bytes)} limit on files read here", setting="max_file_mb"
        )


def read_fd(fd: int, max_bytes: int | None) -> bytes:
    """Everything in an open file from its start, at most max_bytes (ImageDecodeError past it: the
    file grew since it was checked). Reads from offset 0 with pread where the file allows it."""
    parts: list[bytes] = []
    total = 0
    try:
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:  # a pipe (allowed only where regular_only is off): read what comes
        pass
    while True:
        want = _CHUNK if max_bytes is None else min(_CHUNK, max_bytes + 1 - total)
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise ImageDecodeError(f"the file is over the {_mb(max_bytes)} limit on files read here", setting="max_file_mb")


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def inside(path: str, folders: tuple[str, ...]) -> bool:
    """Whether the file path leads to (its links resolved) is inside one of folders."""
    real = os.path.realpath(path)
    return any(_inside(real, folder) for folder in folders)


def _inside(path: str, folder: str) -> bool:
    folder = os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.3g} MB" if n >= 1 << 20 else f"{n} bytes"
