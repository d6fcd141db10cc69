"""The search loop: a query vector in, the top-k existing files out, best first."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..storage.store import FileRow, Store, VectorRow
from ..storage.vector_index import VectorIndex
from .relevance import Cutoff
from .terms import IMAGE, TEXT, Term, combine

DATE = "date"
NEWEST_FIRST = "-date"
SORTS = (DATE, NEWEST_FIRST)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    """One search result. score is the cosine similarity between the query and the file's best
    matching vector; box (x0, y0, x1, y1, pixels of the oriented image) says which region of an
    image matched, time and span (seconds) which shot of a video; None when the whole file did.
    Exact copies (the same bytes) are one hit: copies holds the other paths of this content."""

    path: str
    score: float
    id: int
    width: int | None = None
    height: int | None = None
    size: int | None = None
    tags: tuple[str, ...] = ()
    taken_at: str | None = None  # capture time, the photo's wall clock (see media/metadata.py)
    relevant: bool | None = None  # the relevance cut-off's verdict, when one was applied
    box: tuple[int, int, int, int] | None = None
    time: float | None = None
    span: float | None = None
    kind: str = "image"  # of the file: "image" or "video"
    copies: tuple[str, ...] = ()  # other existing files with the same content, by path

    def where(self) -> str | None:
        """Where in the file the query matched, for a TSV column: "t=12.4", "box=x0,y0,x1,y1",
        or None for the whole file."""
        if self.time is not None:
            return f"t={self.time:.1f}"
        if self.box is not None:
            return "box=" + ",".join(str(int(v)) for v in self.box)
        return None


class Hits(list):
    """A search's hits (a list of Hit), with the relevance cut-off's verdict when one judged them
    (sort or all_ranked with a query): cutoff.summary() says in words what it kept and why."""

    def __init__(self, hits: Iterable[Hit] = (), cutoff: Cutoff | None = None) -> None:
        super().__init__(hits)
        self.cutoff = cutoff


def query_vector(
    terms: list[Term],
    embed_text: Callable[[list[str]], np.ndarray],
    embed_images: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """The (1, d) unit query: each term embedded (texts together, images together), weighted, summed."""
    texts = [i for i, t in enumerate(terms) if t.kind == TEXT]
    paths = [i for i, t in enumerate(terms) if t.kind == IMAGE]
    parts = []
    if texts:
        parts.append(embed_text([terms[i].value for i in texts]))
    if paths:
        parts.append(embed_images([terms[i].value for i in paths]))
    embedded = np.concatenate(parts)  # texts first, then images
    in_term_order = np.empty_like(embedded)
    in_term_order[texts + paths] = embedded
    return combine(in_term_order, [t.weight for t in terms])


def _best_shot(store: Store, query: np.ndarray, video_id: int) -> VectorRow:
    """A video matched as a whole still says when: at its shot nearest the query."""
    parts, numbers = store.part_vectors(video_id)
    shots = [i for i, p in enumerate(parts) if p.time is not None]
    if not shots:
        return VectorRow(video_id, video_id, "video")
    return parts[max(shots, key=lambda i: float(numbers[i] @ query[0]))]


def search(store: Store, vectors: VectorIndex, query: np.ndarray, k: int, among: np.ndarray | None = None) -> list[Hit]:
    """Top-k indexed files by the cosine similarity of their best vector to query (1, d); among:
    search only these FAISS ids.

    A file owning several vectors (regions, shots) counts once, at its best. Files deleted since
    the last `index` run are left out (one stat per hit), so FAISS is asked for more until k
    existing files are found or the index is exhausted."""
    wanted, available = k, len(vectors) if among is None else min(len(vectors), len(among))
    while True:
        scores, ids = vectors.search(query, wanted, among=among)
        parts = store.vector_rows(int(i) for i in ids[0] if i >= 0)
        best: dict[int, tuple[float, VectorRow]] = {}  # file id -> its best vector, in rank order
        for s, i in zip(scores[0], ids[0]):
            part = parts.get(int(i))
            if part is not None and part.image_id not in best:
                best[part.image_id] = (float(s), part)
        rows = store.fetch(best)
        candidates = [(s, part, r) for file_id, (s, part) in best.items() if (r := rows.get(file_id)) is not None]
        found = _one_per_content([c for c in candidates if os.path.exists(c[2].path)], lambda c: c[2])[:k]
        if len(found) >= k or wanted >= available:
            break
        wanted *= 2
    if candidates and not found:  # e.g. the photos' drive is not mounted
        log.warning("none of the matching files exist (first: %s); is their drive connected?", candidates[0][2].path)
    return _hits(store, found, query)


def _hits(
    store: Store, found: list[tuple[float, VectorRow | None, FileRow]], query: np.ndarray | None = None,
    relevant: list[bool] | None = None,
) -> list[Hit]:
    """Hits for (score, the vector that matched, file row); a video matched as a whole says at
    which shot it matches best (with a query)."""
    tags_of = store.tags_of(r.id for _, _, r in found)
    kinds = store.file_kinds(r.id for _, _, r in found)
    copies = store.copies_by_hash(r.content_hash for _, _, r in found if r.content_hash)
    hits = []
    for i, (s, part, r) in enumerate(found):
        kind = kinds.get(r.id, "image")
        if part is not None and query is not None and kind == "video" and part.time is None:
            part = _best_shot(store, query, r.id)
        hits.append(Hit(
            r.path, s, r.id, r.width, r.height, r.size, tuple(tags_of[r.id]), taken_at=r.taken_at,
            relevant=None if relevant is None else relevant[i], box=part.box if part else None,
            time=part.time if part else None, span=part.span if part else None, kind=kind,
            copies=tuple(c for c in copies.get(r.content_hash or "", ()) if c != r.path and os.path.exists(c)),
        ))
    return hits


def rank_all(
    store: Store, vectors: VectorIndex, query: np.ndarray, decide: Callable[[np.ndarray], Cutoff],
    among: np.ndarray | None = None, *, keep_irrelevant: bool = False, sort: str | None = None, limit: int | None = None,
) -> tuple[list[Hit], Cutoff]:
    """Every file the query is relevant to (decide() judges the best score of every file searched),
    or with keep_irrelevant every file, each marked; best first, or by capture time with sort.
    limit: only the limit best of them (then in that order); their rows alone are read."""
    scores, ids = vectors.scores(query, among=among)  # exact, best first
    file_ids = _owners(store, ids)
    known = file_ids >= 0
    scores, ids, file_ids = scores[known], ids[known], file_ids[known]
    # each file once, at its best vector: its first in best-first order
    rank = np.arange(len(file_ids))
    first = np.full(int(file_ids.max(initial=-1)) + 1, len(file_ids))
    np.minimum.at(first, file_ids, rank)
    at_best = first[file_ids] == rank
    file_ids, file_scores, best_vectors = file_ids[at_best], scores[at_best], ids[at_best]
    verdict = decide(file_scores)
    relevant = verdict.relevant(file_scores)
    kept = np.flatnonzero(np.ones(len(file_ids), bool) if keep_irrelevant else relevant)  # best first
    wanted = len(kept) if limit is None else limit
    while True:  # only the files returned are read and checked (more when some are gone or copies)
        taken = kept[:wanted]
        rows = _existing(store, file_ids[taken])
        parts = store.vector_rows(best_vectors[taken])
        found = [
            (float(s), parts.get(int(v)), rows[int(f)], bool(r))
            for f, s, v, r in zip(file_ids[taken], file_scores[taken], best_vectors[taken], relevant[taken])
            if int(f) in rows
        ]
        found = _one_per_content(found, lambda item: item[2])
        if limit is None or len(found) >= limit or wanted >= len(kept):
            break
        wanted *= 2
    found = found[:limit]
    if sort is not None:
        found = _by_date(found, sort, key=lambda item: item[2])
    return _hits(store, [(s, p, r) for s, p, r, _ in found], query, [r for *_, r in found]), verdict


def _owners(store: Store, ids: np.ndarray) -> np.ndarray:
    """The file id of each vector id (-1 for one no indexed file owns), for every vector at once:
    one read of the store's map (not one per vector)."""
    vector_ids, owners = store.vector_files()
    if not len(vector_ids):
        return np.full(len(ids), -1, np.int64)
    if vector_ids[-1] < 4 * len(vector_ids) + 1024:  # SQLite's ids are dense: a table beats a search
        table = np.full(int(vector_ids[-1]) + 1, -1, np.int64)
        table[vector_ids] = owners
        inside = (ids >= 0) & (ids < len(table))
        return np.where(inside, table[np.where(inside, ids, 0)], -1)
    pos = np.minimum(np.searchsorted(vector_ids, ids), len(vector_ids) - 1)
    return np.where(vector_ids[pos] == ids, owners[pos], -1)


def list_by_date(store: Store, ids: np.ndarray, sort: str, limit: int | None = None) -> list[Hit]:
    """The files among ids (file ids) by capture time, with no query; limit: the first limit."""
    rows = _rows(store, ids)
    found: list[FileRow] = []
    seen: set[str] = set()
    # existence first (a deleted copy must not stand for its content), then each content once; with
    # a limit, existence is checked only as far as the files returned
    for row in _by_date(list(rows.values()), sort, key=lambda r: r):
        if limit is not None and len(found) >= limit:
            break
        if (row.content_hash is None or row.content_hash not in seen) and os.path.exists(row.path):
            found.append(row)
            if row.content_hash is not None:
                seen.add(row.content_hash)
    return _hits(store, [(0.0, None, r) for r in found])


def _one_per_content(items: list[T], row: Callable[[T], FileRow]) -> list[T]:
    """items with each content once, at its first file in their order: exact copies share every
    vector, and would otherwise stand side by side with one score (the hit lists the others)."""
    seen: set[str] = set()
    out = []
    for item in items:
        digest = row(item).content_hash
        if digest is None or digest not in seen:
            out.append(item)
            if digest is not None:
                seen.add(digest)
    return out


def _existing(store: Store, ids: np.ndarray) -> dict[int, FileRow]:
    """Indexed rows of ids whose files still exist."""
    return {i: r for i, r in _rows(store, ids).items() if os.path.exists(r.path)}


def _rows(store: Store, ids: np.ndarray) -> dict[int, FileRow]:
    """Indexed rows of ids, in chunks (SQLite's parameter limit)."""
    ids = [int(i) for i in ids]
    rows: dict[int, FileRow] = {}
    for start in range(0, len(ids), 10_000):
        rows.update(store.fetch(ids[start : start + 10_000]))
    return rows


def _by_date(items: list, sort: str, key: Callable) -> list:
    """Oldest first ("date") or newest first ("-date"); files with no capture time last, then by path."""
    dated = sorted((x for x in items if key(x).taken_at is not None), key=lambda x: (key(x).taken_at, key(x).path), reverse=sort == NEWEST_FIRST)
    return dated + sorted((x for x in items if key(x).taken_at is None), key=lambda x: key(x).path)
