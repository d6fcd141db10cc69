"""From a request's terms to hits: text, negatives ("not people"), a tag, an uploaded image, and
"more like this" (an indexed image's stored vector). Uploaded images are decoded in the engine's
isolated decoder (embed_images) and kept, as vectors only, for later pages and the back button.
A by-date listing is made once and kept (Listings): its next pages are slices of it."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import ImageDecodeError, InvalidInputError, InvalidQueryError, NotFoundError, PathNotFoundError
from ..config import DB_FILENAME
from ..query.terms import combine

MAX_K = 500
MAX_ID = 2**63 - 1
MAX_OFFSET = 10_000  # of a top-k (without sort): FAISS then searches offset + k, and its k is bounded
UPLOADS_KEPT = 64
LISTINGS_KEPT = 8  # by-date listings held for their next pages
LISTED_HITS_KEPT = 100_000  # hits in all of them, about 0.7 KB each (the newest listing is kept whatever its size)


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


class Listings:
    """By-date listings (every file a query is relevant to, in date order, with the cut-off's
    verdict), the newest kept, by the query and the state of the index's database files: a
    listing's next pages are slices of it, not new searches, and a change to the index (indexing,
    tagging, by this process or another) makes them stale."""

    def __init__(self, index_dir: str | os.PathLike[str], keep: int = LISTINGS_KEPT, hits_kept: int = LISTED_HITS_KEPT) -> None:
        database = Path(index_dir) / DB_FILENAME
        self._files = (database, database.with_name(database.name + "-wal"))  # a commit writes the WAL, a checkpoint the database
        self.keep = keep
        self.hits_kept = hits_kept
        self._listings: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
        self._making: dict[tuple[Any, ...], threading.Event] = {}  # the listings being made, set when done
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], make: Callable[[], list[Any]]) -> list[Any]:
        """The listing of key (a query's fields), made by make() unless one of the index as it is now
        is held. Requests for a listing being made wait for it (one search, not one each); if the
        making fails, the next of them makes it."""
        key = (self._stamp(), *key)  # taken before make(): a change while it runs leaves the listing stale
        while True:
            with self._lock:
                listing = self._listings.get(key)
                if listing is not None:
                    self._listings.move_to_end(key)
                    return listing
                making = self._making.get(key)
                if making is None:
                    done = self._making[key] = threading.Event()
                    break
            making.wait()
        try:
            listing = make()
            with self._lock:
                self._listings[key] = listing
                held = sum(len(kept) for kept in self._listings.values())
                while len(self._listings) > 1 and (len(self._listings) > self.keep or held > self.hits_kept):
                    held -= len(self._listings.popitem(last=False)[1])
            return listing
        finally:
            with self._lock:
                del self._making[key]
            done.set()

    def _stamp(self) -> tuple[Any, ...]:
        stamp = []
        for path in self._files:
            try:
                facts = path.stat()
            except OSError:
                stamp.append(None)
            else:
                stamp.append((facts.st_ino, facts.st_size, facts.st_mtime_ns))
        return tuple(stamp)


def run_query(engine: Any, uploads: UploadedImages, listings: Listings, query: Query) -> Answer:
    """The hits of query, best first (by capture time with sort): ranks offset .. offset+k. A by-date
    listing is made once (listings) and each request is one page of it, however deep."""
    if not 1 <= query.k <= MAX_K:
        raise InvalidQueryError(f"k must be between 1 and {MAX_K}, got {query.k}")
    if query.offset < 0 or (query.sort is None and query.offset > MAX_OFFSET):
        raise InvalidQueryError(f"offset must be between 0 and {MAX_OFFSET} (any with sort), got {query.offset}")
    filters = {key: value for key, value in query.filters.items() if value not in (None, "")}
    for value in (query.text, query.tag, query.image, *query.negatives, *filters.values()):
        if value is not None and "\0" in value:
            raise InvalidQueryError("the query contains a NUL character")
    _check_each(engine, filters)
    text = (query.text or "").strip() or None
    negatives = [n.strip() for n in query.negatives if n and n.strip()]
    wanted = query.offset + query.k
    if query.sort is None:
        return Answer(_search(engine, uploads, query, text, negatives, filters, k=wanted)[query.offset : wanted])
    key = (text, tuple(negatives), query.tag, query.like, query.image, tuple(sorted(filters.items())), query.sort, query.type, query.min_score)
    listing = listings.get(key, lambda: _search(engine, uploads, query, text, negatives, filters, k=1))  # sort lists every relevant file, whatever k
    return Answer(listing[query.offset : wanted], getattr(listing, "cutoff", None), len(listing))


def _search(engine: Any, uploads: UploadedImages, query: Query, text: str | None, negatives: list[str], filters: dict[str, str], k: int) -> list[Any]:
    """The engine's hits for query (its k best, or with sort its whole listing)."""
    options = {"k": k, "tag": query.tag, "type": query.type, "sort": query.sort, "min_score": query.min_score, **filters}
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
    return hits


def _check_each(engine: Any, filters: dict[str, str]) -> None:
    """Each filter checked alone first, so that a bad value's message names its parameter."""
    for name, value in filters.items():
        try:
            engine.filters(**{name: value})
        except InvalidInputError as e:
            raise InvalidInputError(f"{name}: {e}") from None
