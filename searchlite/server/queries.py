"""From a request's terms to hits: text, negatives ("not people"), a tag, an uploaded image, and
"more like this" (an indexed image's stored vector). Uploaded images are decoded in the engine's
isolated decoder (embed_images) and kept, as vectors only, for later pages and the back button."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ImageDecodeError, InvalidInputError, InvalidQueryError, NotFoundError, PathNotFoundError
from ..query.terms import combine

MAX_K = 500
MAX_ID = 2**63 - 1
MAX_OFFSET = 10_000
UPLOADS_KEPT = 64


@dataclass
class Query:
    """One search request: every field optional, at least one of text, image, like."""

    text: str | None = None
    negatives: list[str] = field(default_factory=list)
    tag: str | None = None
    like: int | None = None  # an indexed image's id: "more like this"
    image: str | None = None  # the key of an uploaded image's vector (UploadedImages)
    k: int = 60
    offset: int = 0
    # metadata and path filters, as SearchEngine.search takes them (after, before, camera, path, near, place)
    filters: dict[str, str] = field(default_factory=dict)
    sort: str | None = None  # "date" / "-date": every relevant image by capture time
    type: str | None = None  # "image" or "video": only such files
    min_score: float | None = None  # relevant means score >= this (instead of the cut-off's verdict)


@dataclass
class Answer:
    """One page of a query's hits, and what judged them."""

    hits: list[Any]  # ranks offset .. offset+k (by capture time with sort)
    cutoff: Any = None  # the relevance cut-off's verdict (query.relevance.Cutoff) where one judged the hits
    total: int | None = None  # with sort: how many hits every page together holds


class UploadedImages:
    """Vectors of uploaded query images by a key (a hash of their bytes), the newest kept."""

    def __init__(self, engine: Any, keep: int = UPLOADS_KEPT) -> None:
        self.engine = engine
        self.keep = keep
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, data: bytes, name: str = "uploaded image") -> str:
        """Embed the image in data (decoded in the isolated decoder); returns its key."""
        key = hashlib.sha256(data).hexdigest()[:24]
        if self.get(key) is not None:
            return key
        if not data:
            raise ImageDecodeError(f"{name} is empty")
        with tempfile.TemporaryDirectory(prefix="searchlite-upload-") as folder:
            path = os.path.join(folder, "upload")
            with open(path, "wb") as f:
                f.write(data)
            try:
                vector = self.engine.embed_images([path])[0]
            except (ImageDecodeError, PathNotFoundError) as e:  # name the upload, not the temp file
                raise ImageDecodeError(str(e).replace(f"file {path}", name).replace(path, name)) from None
        with self._lock:
            self._vectors[key] = vector
            while len(self._vectors) > self.keep:
                self._vectors.popitem(last=False)
        return key

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
            return vector


def run_query(engine: Any, uploads: UploadedImages, query: Query) -> Answer:
    """The hits of query, best first (by capture time with sort): ranks offset .. offset+k."""
    if not 1 <= query.k <= MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {query.k}")
    if not 0 <= query.offset <= MAX_OFFSET:
        raise InvalidQueryError(f"offset must be between 0 and {MAX_OFFSET}, got {query.offset}")
    filters = {key: value for key, value in query.filters.items() if value not in (None, "")}
    for value in (query.text, query.tag, query.image, *query.negatives, *filters.values()):
        if value is not None and "\0" in value:
            raise InvalidQueryError("the query contains a NUL character")
    _check_each(engine, filters)
    text = (query.text or "").strip() or None
    negatives = [n.strip() for n in query.negatives if n and n.strip()]
    wanted = query.offset + query.k
    options = {"k": wanted, "tag": query.tag, "type": query.type, "sort": query.sort, "min_score": query.min_score, **filters}
    if query.like is None and query.image is None:
        if text is None and query.sort is None:
            raise InvalidQueryError("the query is empty: give a text, an image or an image to find more like")
        hits = engine.search(text, negative=negatives, **options)
    else:
        # the library's own rule (query/terms.combine): unit vectors summed, negatives subtracted, re-normalised
        parts: list[np.ndarray] = []
        if query.image is not None:
            vector = uploads.get(query.image)
            if vector is None:
                raise NotFoundError("that uploaded image is no longer held by the server: drop it again")
            parts.append(vector)
        if query.like is not None:
            vector = engine.stored_vector(query.like) if 0 <= query.like <= MAX_ID else None  # SQLite's integers are 64-bit
            if vector is None:
                raise NotFoundError(f"no indexed image with id {query.like}")
            parts.append(vector)
        if text is not None:
            parts.append(engine.embed_text(text)[0])
        weights = [1.0] * len(parts) + [-1.0] * len(negatives)
        if negatives:
            parts.extend(engine.embed_text(negatives))
        total = combine(np.vstack(parts), weights)
        hits = engine.search_vector(total, **options)
    # a by-date listing holds every relevant file, not a top-k: each request is one page of it
    return Answer(hits[query.offset : wanted], getattr(hits, "cutoff", None), len(hits) if query.sort else None)


def _check_each(engine: Any, filters: dict[str, str]) -> None:
    """Each filter checked alone first, so that a bad value's message names its parameter."""
    for name, value in filters.items():
        try:
            engine.filters(**{name: value})
        except InvalidInputError as e:
            raise InvalidInputError(f"{name}: {e}") from None
