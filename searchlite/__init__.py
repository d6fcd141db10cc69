"""searchlite: semantic image search over your photo collections, built on CLIP.

    from searchlite import SearchEngine
    with SearchEngine.open("index/") as engine:
        engine.index("photos/")
        hits = engine.search("a dog on grass", k=10)
"""

from .engine import Hit, SearchEngine
from .errors import (
    CorruptIndexError,
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidQueryError,
    ModelLoadError,
    ModelMismatchError,
    PathNotFoundError,
    SearchliteError,
    WeightsUnavailableError,
)
from .indexer import IndexReport
from .vector_index import VectorIndex

__all__ = [
    "CorruptIndexError",
    "Hit",
    "ImageDecodeError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexReport",
    "InvalidQueryError",
    "ModelLoadError",
    "ModelMismatchError",
    "PathNotFoundError",
    "SearchEngine",
    "SearchliteError",
    "VectorIndex",
    "WeightsUnavailableError",
]
