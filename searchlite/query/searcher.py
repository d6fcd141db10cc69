"""A search of an open index, from the query to its hits: the one validation of what a search asks
(SearchOptions), the files it may return (a tag, filters, a type), and which hits it gives back:
the top k, every relevant file by date or score, or every file marked (search.py does the ranking)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidQueryError, TagNotFoundError
from ..storage.store import Store
from ..storage.vector_index import VectorIndex
from . import relevance
from .filters import Filters
from .relevance import fixed_cutoff
from .search import SORTS, Hit, Hits, list_by_date, query_vector, rank_all, search
from .terms import parse_terms

if TYPE_CHECKING:
    from ..media.named_files import NamedFiles
    from ..models.hub import ModelHub
    from ..storage.recent_queries import RecentQueries

log = logging.getLogger(__name__)

FILE_TYPES = ("image", "video")  # what a search's type keeps
FILTER_FIELDS = ("after", "before", "camera", "path", "near", "place")


def checked_filters(filters: Filters | None = None, **values: Any) -> Filters | None:
    """Filters from a Filters and/or its fields as keyword arguments, checked (InvalidInputError
    names a bad value) and with any place resolved; None when nothing is filtered."""
    unknown = set(values) - set(FILTER_FIELDS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    given = {key: value for key, value in values.items() if value is not None}
    if given:
        filters = dataclasses.replace(filters or Filters(), **given)
    if not filters:
        return None
    checked = filters.checked()
    chosen = checked.place_chosen
    if chosen is not None and chosen.others and filters.place_chosen is None:
        log.info("place %r: chose %s, the most populous of %d places of that name", checked.place, chosen.describe(), len(chosen.others) + 1)
    return checked


@dataclass(frozen=True)
class SearchOptions:
    """What a search keeps and returns; made by checked().

    tag keeps only images carrying that tag (see SearchEngine.tag); a tag that no tag set of the
    index has raises TagNotFoundError listing the known ones. type: "image" or "video". filters
    keep only the images whose metadata and path match; they are exact. sort="date" (oldest
    first) or "-date" (newest first) returns every image the query is relevant to in date order
    instead of a top-k: relevance is decided from the query's scores against all the images
    searched (relevance.py), or is score >= min_score when given; with no query at all it lists
    the matching images by date. all_ranked returns every image searched, each with Hit.relevant
    set. Without sort, min_score drops top-k hits below it. limit caps sort and all_ranked to
    their limit most relevant files (with no query, the first limit by date), still in their
    order; their rows alone are read."""

    k: int = 10
    tag: str | None = None
    type: str | None = None
    filters: Filters | None = None
    sort: str | None = None
    min_score: float | None = None
    all_ranked: bool = False
    limit: int | None = None

    @classmethod
    def checked(cls, *, filters: Filters | None = None, filter_values: dict[str, Any] | None = None, **options: Any) -> SearchOptions:
        """The options of search() and search_vector() alike, every value checked before the index
        is read (InvalidQueryError, InvalidInputError for a filter)."""
        made = cls(filters=checked_filters(filters, **(filter_values or {})), **options)
        if made.k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {made.k}")
        if made.limit is not None and made.limit < 1:
            raise InvalidQueryError(f"limit must be at least 1, got {made.limit}")
        if made.sort is not None and made.sort not in SORTS:
            raise InvalidQueryError(f"unknown sort {made.sort!r}: give date (oldest first) or -date (newest first)")
        if made.type is not None and made.type not in FILE_TYPES:
            raise InvalidQueryError(f"type {made.type!r}: use one of {', '.join(FILE_TYPES)}")
        return made


class Searcher:
    """Searches the vectors of an index (store, vectors) with its model (models, files: query
    texts and images), remembering each query vector in recent (for tuning approximate search)
    and saving them now and then when save_recent (a long-lived engine's close() may be far off)."""

    def __init__(
        self, store: Store, vectors: VectorIndex, models: ModelHub, files: NamedFiles, recent: RecentQueries | None, *, save_recent: bool = False,
    ) -> None:
        self.store = store
        self.vectors = vectors
        self.models = models
        self.files = files
        self.recent = recent
        self.save_recent = save_recent

    def search(self, text: list[str], image: list[str], negative: list[str], options: SearchOptions) -> Hits:
        """Top-k files by cosine similarity to the query (a file with several vectors, such as a
        video's shots or an image's regions, by its best one, named in the hit's time or box).
        A term may carry a weight as "2::beach" (a number and a double colon; a single colon is
        plain text, and an image path that exists as given is never split). Texts and images add
        up, negatives subtract, and the sum is re-normalised (terms.py)."""
        if options.sort is not None and not (text or image or negative):
            files = self._files_among(options.tag, options.filters)
            files = self.store.indexed_ids() if files is None else files
            if options.type is not None:
                kinds = self.store.file_kinds(int(i) for i in files)
                files = np.array([i for i in files if kinds.get(int(i), "image") == options.type], dtype=np.int64)
            return Hits(list_by_date(self.store, files, options.sort, options.limit))
        among = self._among(options)
        terms = parse_terms(text, image, negative)
        if among is not None and not len(among):
            return Hits()
        query = query_vector(terms, self.models.embed_text, lambda paths: self.files.embed_all(paths, "query image"))
        return self._ranked(query, among, options)

    def search_vector(self, vector: np.ndarray | Sequence[float], options: SearchOptions) -> Hits:
        """Hits for a query embedding made elsewhere, (d,) or (1, d); normalised here."""
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.vectors.dim or not np.all(np.isfinite(query)):
            raise InvalidQueryError(f"a query embedding must be {self.vectors.dim} finite numbers, got {query.shape[1]}")
        norm = float(np.linalg.norm(query))
        if norm == 0.0:
            raise InvalidQueryError("a query embedding must not be all zeros")
        among = self._among(options)
        if among is not None and not len(among):
            return Hits()
        return self._ranked(np.ascontiguousarray(query / norm), among, options)

    def _ranked(self, query: np.ndarray, among: np.ndarray | None, options: SearchOptions) -> Hits:
        if self.recent is not None and self.recent.add(query) and self.save_recent:
            self.recent.save()
        if options.sort is None and not options.all_ranked:
            hits = search(self.store, self.vectors, query, options.k, among)
            return Hits(hits if options.min_score is None else [h for h in hits if h.score >= options.min_score])
        min_score = options.min_score
        decide = (lambda scores: fixed_cutoff(min_score, scores)) if min_score is not None else relevance.cutoff
        hits, verdict = rank_all(self.store, self.vectors, query, decide, among, keep_irrelevant=options.all_ranked, sort=options.sort,
                                 limit=options.limit)
        log.info("relevance: %s", verdict.describe())
        return Hits(hits, verdict)

    def _among(self, options: SearchOptions) -> np.ndarray | None:
        """The FAISS ids to search among: the vectors of the files carrying the tag, matching the
        filters and of the type asked for (searched exactly, however rare); None for all."""
        files = self._files_among(options.tag, options.filters)
        if files is None:
            return None if options.type is None else self.store.vector_ids_of(file_kind=options.type)
        return self.store.vector_ids_of(files.tolist(), file_kind=options.type)  # Python ints: SQLite binds no numpy ones

    def _files_among(self, tag: str | None, filters: Filters | None) -> np.ndarray | None:
        """The file ids carrying tag and matching filters; None for all."""
        among = self._tagged(tag)
        if filters:
            matching = filters.matching_ids(self.store)
            among = matching if among is None else np.intersect1d(among, matching)
        return among

    def _tagged(self, tag: str | None) -> np.ndarray | None:
        """The file ids carrying tag; None for all."""
        if tag is None:
            return None
        known = sorted({label for tag_set in self.store.tag_sets() for label in tag_set.labels})
        if tag not in known:
            if not known:
                raise TagNotFoundError(
                    f"unknown tag {tag!r}: this index has no tags yet; tag its images first with zero-shot "
                    "labels (searchlite tag, SearchEngine.tag) or a probe (searchlite probe apply)"
                )
            raise TagNotFoundError(f"unknown tag {tag!r}: this index's tags are {', '.join(known)}")
        return np.fromiter(self.store.ids_tagged(tag), dtype=np.int64)
