"""Errors the library raises. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class SearchliteError(Exception):
    """Base class: every error searchlite raises on purpose. The CLI prints its message as is."""


class IndexNotFoundError(SearchliteError):
    """The index directory has no searchlite database yet."""


class IndexLockedError(SearchliteError):
    """Another process is writing to the index."""


class ModelMismatchError(SearchliteError):
    """The index was built with a different model than the one asked for."""


class ModelLoadError(SearchliteError):
    """A model name, config or checkpoint could not be loaded."""


class WeightsUnavailableError(ModelLoadError):
    """Pretrained weights are not cached and could not be downloaded."""


class InvalidQueryError(SearchliteError):
    """A query is empty or one of its terms is malformed."""


class ImageDecodeError(SearchliteError):
    """A file could not be decoded as an image."""


class CorruptIndexError(SearchliteError):
    """The index database is damaged or is not a searchlite index."""


class PathNotFoundError(SearchliteError):
    """A folder or file named by the user does not exist."""


class IndexWriteError(SearchliteError):
    """The index could not be written (disk full, I/O error); the previous state is intact."""


class IndexVersionError(SearchliteError):
    """The index was written by a newer searchlite, whose schema this one cannot read."""


class IndexReadOnlyError(SearchliteError):
    """The index is on read-only media (or its files are read-only): it answers queries only."""


class IndexReadError(SearchliteError):
    """The index database could not be read (I/O error, permissions); it is not damaged."""
