"""The search loop: a query vector in, the top-k existing files out, best first."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..storage.store import Store, VectorRow
from ..storage.vector_index import VectorIndex
from .terms import IMAGE, TEXT, Term, combine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result. score is the cosine similarity between the query and the file's best
    matching vector; box (x0, y0, x1, y1, pixels of the oriented image) says which region of an
    image matched, time and span (seconds) which shot of a video; None when the whole file did."""

    path: str
    score: float
    id: int
    width: int | None = None
    height: int | None = None
    size: int | None = None
    tags: tuple[str, ...] = ()
    box: tuple[int, int, int, int] | None = None
    time: float | None = None
    span: float | None = None
    kind: str = "image"  # of the file: "image" or "video"

    def where(self) -> str | None:
        """Where in the file the query matched, for a TSV column: "t=12.4", "box=x0,y0,x1,y1",
        or None for the whole file."""
        if self.time is not None:
            return f"t={self.time:.1f}"
        if self.box is not None:
            return "box=" + ",".join(str(int(v)) for v in self.box)
        return None


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
        found = [c for c in candidates if os.path.exists(c[2].path)][:k]
        if len(found) >= k or wanted >= available:
            break
        wanted *= 2
    if candidates and not found:  # e.g. the photos' drive is not mounted
        log.warning("none of the matching files exist (first: %s); is their drive connected?", candidates[0][2].path)
    tags_of = store.tags_of(r.id for _, _, r in found)
    kinds = store.file_kinds(r.id for _, _, r in found)
    found = [(s, _best_shot(store, query, r.id) if kinds.get(r.id) == "video" and part.time is None else part, r) for s, part, r in found]
    return [
        Hit(r.path, s, r.id, r.width, r.height, r.size, tuple(tags_of[r.id]), part.box, part.time, part.span, kinds.get(r.id, "image"))
        for s, part, r in found
    ]
