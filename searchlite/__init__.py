"""searchlite: semantic image search over your photo collections, built on CLIP.

    from searchlite import SearchEngine
    with SearchEngine.open("index/") as engine:
        engine.index("photos/")
        hits = engine.search("a dog on grass", k=10)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CorruptIndexError,
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadError,
    IndexReadOnlyError,
    IndexVersionError,
    IndexWriteError,
    InvalidQueryError,
    ModelLoadError,
    ModelMismatchError,
    PathNotFoundError,
    SearchliteError,
    WeightsUnavailableError,
)

if TYPE_CHECKING:
    from .engine import Hit, SearchEngine
    from .ingest.indexer import IndexReport
    from .storage.vector_index import VectorIndex

# Imported on first use, so that `searchlite --help` and the decoder processes start fast.
_LAZY = {"SearchEngine": "engine", "Hit": "engine", "IndexReport": "indexer", "VectorIndex": "vector_index"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'searchlite' has no attribute {name!r}")


__all__ = [
    "CorruptIndexError",
    "Hit",
    "ImageDecodeError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexReadError",
    "IndexReadOnlyError",
    "IndexVersionError",
    "IndexReport",
    "IndexWriteError",
    "InvalidQueryError",
    "ModelLoadError",
    "ModelMismatchError",
    "PathNotFoundError",
    "SearchEngine",
    "SearchliteError",
    "VectorIndex",
    "WeightsUnavailableError",
]
