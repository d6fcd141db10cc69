"""Errors the library raises: one taxonomy. Each message says what went wrong and what to do about
it, in terms of values (never command-line flags: the CLI adds those hints).

    SearchliteError
    ├── InvalidInputError        bad user input of any kind                    (HTTP 400)
    │   ├── InvalidQueryError    a query term                                  (400)
    │   ├── ImageDecodeError     a file that cannot be read as an image        (422)
    │   ├── OutputPathError      an output path that cannot take a file
    │   └── OutputExistsError    an output that exists (overwrite not asked)   (409)
    ├── NotFoundError            a path the user named does not exist          (404)
    │   ├── PathNotFoundError    a folder or file
    │   ├── IndexNotFoundError   no index there yet
    │   └── TagNotFoundError     a tag no tag set of the index has
    ├── IndexLockedError         another process is writing                    (409)
    ├── IndexReadOnlyError       the index cannot be written here              (403)
    ├── IndexVersionError        written by a newer searchlite                 (409)
    ├── ModelMismatchError       another model than the index's                (409)
    ├── ModelLoadError           a model cannot be loaded                      (500)
    │   └── WeightsUnavailableError  not cached and cannot be downloaded       (503)
    ├── ClusterError             a Ray cluster cannot be reached or used       (503)
    ├── CorruptIndexError        the database is damaged                       (500)
    ├── IndexReadError           the database cannot be read (I/O, permissions) (500)
    └── WriteFailedError         a file could not be written (disk full, I/O)  (507)
        └── IndexWriteError      … a file of the index; the previous state is intact

`http_status` on each class is what the HTTP API answers with. `setting` on an error, when set,
names the value that would fix it (an IndexSettings field or an argument of SearchEngine.open, e.g.
"max_megapixels", "pretrained", "index_dir"): the CLI turns it into a flag hint, which replaces
the advice in the message where the error gives its `problem` apart.
"""

from __future__ import annotations

import errno
import os
from typing import Any


class SearchliteError(Exception):
    """Base class: every error searchlite raises on purpose. The CLI prints its message as is,
    followed by a hint for `setting` when it has one."""

    http_status = 500

    def __init__(self, message: str, *, setting: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
        # the message without its advice: the CLI gives its flag hint instead, not the advice twice
        self.problem = problem or message

    def __reduce__(self) -> Any:  # keep setting across pickling (worker processes)
        return (_rebuild, (type(self), str(self), self.setting))


def _rebuild(cls: type[SearchliteError], message: str, setting: str | None) -> SearchliteError:
    return cls(message, setting=setting)


class InvalidInputError(SearchliteError):
    """Bad user input: a query, labels, templates, training data, a probe or embeddings file."""

    http_status = 400


class InvalidQueryError(InvalidInputError):
    """A query is empty or one of its terms is malformed."""


class ImageDecodeError(InvalidInputError):
    """A file could not be decoded as an image."""

    http_status = 422


class NotFoundError(SearchliteError):
    """Something the user named does not exist."""

    http_status = 404


class PathNotFoundError(NotFoundError):
    """A folder or file named by the user does not exist."""


class IndexNotFoundError(NotFoundError):
    """The index directory has no searchlite database yet (or one with nothing indexed).
    index_dir is that directory (the CLI names the command that makes it)."""

    def __init__(
        self, message: str, *, setting: str | None = None, problem: str | None = None, index_dir: os.PathLike[str] | str | None = None
    ) -> None:
        super().__init__(message, setting=setting, problem=problem)
        self.index_dir = index_dir


class TagNotFoundError(NotFoundError):
    """A tag that no tag set of the index has among its labels."""


class IndexLockedError(SearchliteError):
    """Another process is writing to the index."""

    http_status = 409


class IndexReadOnlyError(SearchliteError):
    """The index is on read-only storage: it answers queries but cannot be changed."""

    http_status = 403


class IndexVersionError(SearchliteError):
    """The index was written by a newer searchlite than this one."""

    http_status = 409


class ModelMismatchError(SearchliteError):
    """The index was built with a different model than the one asked for."""

    http_status = 409


class ModelLoadError(SearchliteError):
    """A model name, config or checkpoint could not be loaded."""


class WeightsUnavailableError(ModelLoadError):
    """Pretrained weights are not cached and could not be downloaded."""

    http_status = 503


class ClusterError(SearchliteError):
    """A Ray cluster to encode on cannot be reached, or lost every worker (index(ray=...))."""

    http_status = 503


class CorruptIndexError(SearchliteError):
    """The index database is damaged or is not a searchlite index."""


class IndexReadError(SearchliteError):
    """The index database could not be read (I/O error, permissions); it is not damaged."""


class OutputPathError(InvalidInputError):
    """An output path cannot take a file: a folder, a special file, a missing or read-only folder."""


class OutputExistsError(InvalidInputError):
    """The output file already exists and overwriting it was not asked for."""

    http_status = 409

    def __init__(self, path: object) -> None:
        super().__init__(f"output {path} already exists: give another output path, or set overwrite=True to replace it")
        self.path = path


class WriteFailedError(SearchliteError):
    """A file could not be written (disk full, I/O error, no permission)."""

    http_status = 507


class IndexWriteError(WriteFailedError):
    """The index could not be written; the previous state is intact."""


# what to do about an OSError on a path the user named, by errno
_OS_ADVICE = {
    errno.ENOSPC: "free disk space, then run the same command again",
    errno.EDQUOT: "free disk space (the quota is reached), then run the same command again",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "it is on read-only storage: choose another location",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder: name a file",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.EIO: "the disk reported an I/O error: check it",
}


def os_reason(e: OSError) -> str:
    """An OSError's reason in lowercase words, e.g. "no space left on device"."""
    return (e.strerror or str(e) or type(e).__name__).lower()


def os_advice(e: OSError, writing: bool) -> str:
    """What a user can do about e."""
    if e.errno == errno.ENOENT:
        return "create its folder first or choose another location" if writing else "check the path"
    return _OS_ADVICE.get(e.errno or 0, "check the path and the disk")


def file_error(path: str | os.PathLike[str], e: OSError, *, writing: bool, what: str = "") -> SearchliteError:
    """The error for an OSError on a file or folder the user named: one line that names the path,
    the reason and what to do. Writing: WriteFailedError; reading: PathNotFoundError when it is
    not there, else InvalidInputError."""
    name = f"{what} {os.fsdecode(path)}" if what else os.fsdecode(path)
    message = f"cannot {'write' if writing else 'read'} {name}: {os_reason(e)}; {os_advice(e, writing)}"
    if writing:
        return WriteFailedError(message)
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFoundError(f"{name} not found; check the path")
    return InvalidInputError(message)
