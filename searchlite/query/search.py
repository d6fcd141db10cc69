"""The search loop: a query vector in, the top-k existing files out, best first."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..storage.store import Store
from ..storage.vector_index import VectorIndex
from .terms import IMAGE, TEXT, Term, combine

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
    tags_of = store.tags_of(r.id for _, r in found)
    return [Hit(r.path, s, r.id, r.width, r.height, r.size, tuple(tags_of[r.id])) for s, r in found]
