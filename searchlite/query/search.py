"""The search loop: a query vector in, the top-k existing files out, best first."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..storage.store import FileRow, Store
from ..storage.vector_index import VectorIndex
from .relevance import Cutoff
from .terms import IMAGE, TEXT, Term, combine

DATE = "date"
NEWEST_FIRST = "-date"
SORTS = (DATE, NEWEST_FIRST)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result. score is the cosine similarity between the query and the image."""

    path: str
    score: float
    id: int
    width: int | None = None
    height: int | None = None
    size: int | None = None
    tags: tuple[str, ...] = ()
    taken_at: str | None = None  # capture time, the photo's wall clock (see media/metadata.py)
    relevant: bool | None = None  # the relevance cut-off's verdict, when one was applied


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


def search(store: Store, vectors: VectorIndex, query: np.ndarray, k: int, among: np.ndarray | None = None) -> list[Hit]:
    """Top-k indexed files by cosine similarity to query (1, d); among: search only these ids.

    Files deleted since the last `index` run are left out (one stat per hit), so FAISS is asked for
    more until k existing files are found or the index is exhausted."""
    wanted, available = k, len(vectors) if among is None else min(len(vectors), len(among))
    while True:
        scores, ids = vectors.search(query, wanted, among=among)
        rows = store.fetch(int(i) for i in ids[0] if i >= 0)
        candidates = [(float(s), r) for s, i in zip(scores[0], ids[0]) if (r := rows.get(int(i))) is not None]
        found = [(s, r) for s, r in candidates if os.path.exists(r.path)][:k]
        if len(found) >= k or wanted >= available:
            break
        wanted *= 2
    if candidates and not found:  # e.g. the photos' drive is not mounted
        log.warning("none of the matching files exist (first: %s); is their drive connected?", candidates[0][1].path)
    return _hits(store, found)


def _hits(store: Store, found: list[tuple[float, FileRow]], relevant: list[bool] | None = None) -> list[Hit]:
    tags_of = store.tags_of(r.id for _, r in found)
    return [
        Hit(r.path, s, r.id, r.width, r.height, r.size, tuple(tags_of[r.id]), r.taken_at, None if relevant is None else relevant[i])
        for i, (s, r) in enumerate(found)
    ]


def rank_all(
    store: Store, vectors: VectorIndex, query: np.ndarray, decide: Callable[[np.ndarray], Cutoff],
    among: np.ndarray | None = None, *, keep_irrelevant: bool = False, sort: str | None = None,
) -> tuple[list[Hit], Cutoff]:
    """Every file the query is relevant to (decide() judges the scores of all the files searched),
    or with keep_irrelevant every file, each marked; best first, or by capture time with sort."""
    scores, ids = vectors.scores(query, among=among)
    verdict = decide(scores)
    relevant = verdict.relevant(scores)
    if not keep_irrelevant:
        scores, ids, relevant = scores[relevant], ids[relevant], relevant[relevant]
    rows = _existing(store, ids)
    found = [(float(s), rows[int(i)], bool(r)) for s, i, r in zip(scores, ids, relevant) if int(i) in rows]
    if sort is not None:
        found = _by_date(found, sort, key=lambda item: item[1])
    return _hits(store, [(s, r) for s, r, _ in found], [r for _, _, r in found]), verdict


def list_by_date(store: Store, ids: np.ndarray, sort: str) -> list[Hit]:
    """The files among ids (all indexed ones when None) by capture time, with no query."""
    rows = _existing(store, ids)
    return _hits(store, [(0.0, r) for r in _by_date(list(rows.values()), sort, key=lambda r: r)])


def _existing(store: Store, ids: np.ndarray) -> dict[int, FileRow]:
    """Indexed rows of ids whose files still exist, in chunks (SQLite's parameter limit)."""
    ids = [int(i) for i in ids]
    rows: dict[int, FileRow] = {}
    for start in range(0, len(ids), 10_000):
        rows.update(store.fetch(ids[start : start + 10_000]))
    return {i: r for i, r in rows.items() if os.path.exists(r.path)}


def _by_date(items: list, sort: str, key: Callable) -> list:
    """Oldest first ("date") or newest first ("-date"); files with no capture time last, then by path."""
    dated = sorted((x for x in items if key(x).taken_at is not None), key=lambda x: (key(x).taken_at, key(x).path), reverse=sort == NEWEST_FIRST)
    return dated + sorted((x for x in items if key(x).taken_at is None), key=lambda x: key(x).path)
