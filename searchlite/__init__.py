"""searchlite: semantic image search over your photo collections, built on CLIP.

    from searchlite import SearchEngine
    with SearchEngine.open("index/") as engine:
        engine.index("photos/")
        hits = engine.search("a dog on grass", k=10)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import IndexSettings
from .errors import (
    CorruptIndexError,
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    IndexReadError,
    IndexReadOnlyError,
    IndexVersionError,
    IndexWriteError,
    InvalidInputError,
    InvalidQueryError,
    ModelLoadError,
    ModelMismatchError,
    NotFoundError,
    OutputExistsError,
    OutputPathError,
    PathNotFoundError,
    SearchliteError,
    TagNotFoundError,
    WeightsUnavailableError,
    WriteFailedError,
)

if TYPE_CHECKING:
    from .classify.classifier import LinearClassifier
    from .classify.probe import ProbeFit
    from .classify.tags import Classification
    from .engine import SearchEngine
    from .ingest.indexer import IndexReport
    from .models.encoder import ClipEncoder
    from .models.spec import ModelSpec
    from .query.filters import Filters
    from .query.search import Hit, Hits
    from .storage.store import FileRow
    from .storage.vector_index import VectorIndex
    from .text.tower import TextTower
    from .train.training import TrainReport, TrainSettings

# Imported on first use, so that `searchlite --help` and the decoder processes start fast.
_LAZY = {
    "SearchEngine": "engine",
    "Hit": "query.search",
    "Hits": "query.search",
    "Filters": "query.filters",
    "Classification": "classify.tags",
    "IndexReport": "ingest.indexer",
    "FileRow": "storage.store",
    "VectorIndex": "storage.vector_index",
    "LinearClassifier": "classify.classifier",
    "ProbeFit": "classify.probe",
    "ModelSpec": "models.spec",
    "ClipEncoder": "models.encoder",
    "TextTower": "text.tower",
    "TrainSettings": "train.training",
    "TrainReport": "train.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'searchlite' has no attribute {name!r}")


__all__ = sorted(
    [
        *_LAZY,
        "IndexSettings",
        "CorruptIndexError",
        "ImageDecodeError",
        "IndexLockedError",
        "IndexNotFoundError",
        "IndexReadError",
        "IndexReadOnlyError",
        "IndexVersionError",
        "IndexWriteError",
        "InvalidInputError",
        "InvalidQueryError",
        "ModelLoadError",
        "ModelMismatchError",
        "NotFoundError",
        "OutputExistsError",
        "OutputPathError",
        "PathNotFoundError",
        "SearchliteError",
        "TagNotFoundError",
        "WeightsUnavailableError",
        "WriteFailedError",
    ]
)
