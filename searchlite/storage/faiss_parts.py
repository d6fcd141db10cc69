"""FAISS structures at their lowest, shared by the vector index and the builder that tunes it: the
faiss import, the vector contract, where exact vectors are read from, what a structure is and holds,
its own top k (before any exact fallback) and the merges of top-k lists."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np


def load_faiss() -> Any:
    import faiss  # heavy import, kept off the `--help` / `info` path

    return faiss


CHUNK = 65_536  # vectors per step while building: memory beyond the index stays one chunk


class ExactVectors(Protocol):
    """Where a compressed index reads the exact vectors it re-ranks with (and rebuilds from)."""

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found int64 (m,), their vectors float32 (m, d)), in any order; absent ids are left out."""
        ...

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (ids (n,), vectors (n, d)), in chunks of bounded size."""
        ...

    def __len__(self) -> int:
        """How many vectors it holds."""
        ...


class ArrayVectors:
    """ExactVectors over arrays held by the caller (a np.memmap of a float32 file works too); the
    caller keeps them in step with the index's adds and removes."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._ids = np.asarray(ids, dtype=np.int64)
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted = self._ids[self._order]
        self._vectors = vectors

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self._sorted):
            return ids[:0], np.zeros((0, self._vectors.shape[1]), np.float32)
        pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        found = self._sorted[pos] == ids
        rows = self._order[pos[found]]
        order = np.argsort(rows)  # ascending rows: fewer seeks in a memory-mapped file
        return ids[found][order], np.asarray(self._vectors[rows[order]], dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self._ids), CHUNK):
            yield self._ids[start : start + CHUNK], np.asarray(self._vectors[start : start + CHUNK], np.float32)



def flat_bytes(n: int, dim: int) -> int:
    """Memory of n vectors held exactly (flat or IVF-Flat): the floats and an int64 id each."""
    return n * (4 * dim + 8)


def as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Check and normalise the one vector contract: float32, C-contiguous, (n, dim)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


def unit(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = as_vectors(queries, dim)
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    keep = np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)
    return np.ascontiguousarray(queries[keep] / norms[keep])


def hnsw_of(index: Any) -> Any:
    """The HNSW graph inside an id map, or None."""
    faiss = load_faiss()
    if not isinstance(index, faiss.IndexIDMap2):
        return None
    inner = faiss.downcast_index(index.index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def kind_of(index: Any) -> str:
    """"exact", "ivf", "hnsw", "ivfpq" or "hnswpq" (see VectorIndex.kind)."""
    faiss = load_faiss()
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    graph = hnsw_of(index)
    if graph is None:
        return "exact"
    return "hnswpq" if isinstance(graph, faiss.IndexHNSWPQ) else "hnsw"


def held(index: Any, dim: int, among: np.ndarray | None = None, dead: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids (m,), vectors (m, d)) a structure itself holds exactly (exact, ivf, hnsw), or those
    among (sorted ids), in chunks; dead: removed nodes an HNSW graph still holds. The vectors may be
    views into the index: use them before the index changes (under the lock)."""
    faiss = load_faiss()
    if kind_of(index) in ("ivfpq", "hnswpq"):
        raise ValueError("a compressed index holds no exact vectors: give VectorIndex(exact=...) to rebuild it")
    if isinstance(index, faiss.IndexIVF):
        invlists = faiss.downcast_InvertedLists(index.invlists)
        for lst in range(index.nlist):
            size = invlists.list_size(lst)
            if not size:
                continue
            ids_ptr, codes_ptr = invlists.get_ids(lst), invlists.get_codes(lst)
            try:
                ids = faiss.rev_swig_ptr(ids_ptr, size).astype(np.int64)  # a copy
                vectors = faiss.rev_swig_ptr(codes_ptr, size * index.code_size).view(np.float32).reshape(size, dim)
                if among is not None:
                    keep = members(among, ids)
                    ids, vectors = ids[keep], vectors[keep]
                if len(ids):
                    yield ids, vectors
            finally:
                invlists.release_codes(lst, codes_ptr)
                invlists.release_ids(lst, ids_ptr)
        return
    graph = hnsw_of(index)
    flat = faiss.downcast_index(graph.storage if graph is not None else index.index)
    all_vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * dim).reshape(-1, dim)
    id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
    if among is None and not dead:
        for start in range(0, len(id_map), CHUNK):
            yield id_map[start : start + CHUNK], all_vectors[start : start + CHUNK]
        return
    alive = id_map >= 0  # HNSW's removed nodes carry id -1
    positions = np.flatnonzero(alive if among is None else alive & members(among, id_map))
    for start in range(0, len(positions), CHUNK):
        part = positions[start : start + CHUNK]
        yield id_map[part], all_vectors[part]


def candidates(index: Any, queries: np.ndarray, k: int, dead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A structure's own top k (a compressed one's, before re-ranking)."""
    graph = hnsw_of(index)
    if graph is None:
        return index.search(queries, k)
    faiss = load_faiss()
    params = faiss.SearchParametersHNSW()
    params.efSearch = graph.hnsw.efSearch
    if dead:
        alive = faiss.IDSelectorRange(0, 2**63 - 1)  # removed nodes carry id -1
        params.sel = alive
    scores, found = index.search(queries, k, params=params)
    if graph.metric_type == faiss.METRIC_L2:  # squared distances of unit vectors, as inner products
        scores = np.where(found >= 0, 1 - scores / 2, -np.inf).astype(np.float32)
    return scores, found


def reranked(index: Any, exact: ExactVectors, queries: np.ndarray, k: int, shortlist: int, dead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A compressed structure's shortlist, scored again with the exact vectors."""
    _, found_ids = candidates(index, queries, shortlist, dead)
    found, vectors = exact.fetch(np.unique(found_ids[found_ids >= 0]))
    order = np.argsort(found)
    found, vectors = found[order], np.asarray(vectors, np.float32)[order]
    return rerank(queries, found_ids, found, vectors, k)


@contextmanager
def single_thread(enabled: bool) -> Iterator[None]:
    """Run faiss on the calling thread alone (OpenMP's thread count is per calling thread). A few
    queries are answered in 2 ms by one thread; waking a team of threads, while numpy's BLAS
    threads still spin after encoding the query, made the same search take 20 ms here."""
    if not enabled:
        yield
        return
    faiss = load_faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)




def merge_top(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of (best so far) and (scores (q, m) of ids (m,)), best first."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, cand = np.take_along_axis(scores, part, 1), ids[part]
    else:
        cand = np.broadcast_to(ids, scores.shape)
    all_s = np.concatenate([best_s, scores], axis=1)
    all_i = np.concatenate([best_i, cand], axis=1)
    order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_s, order, 1).astype(np.float32), np.take_along_axis(all_i, order, 1)


def rerank(queries: np.ndarray, candidates: np.ndarray, found: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of each row of candidates by inner product with its query, using found (sorted ids)
    and their vectors; candidates absent from found (removed meanwhile) are dropped."""
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    if not len(found):
        return scores, ids
    for row, (q, cand) in enumerate(zip(queries, candidates)):
        pos = np.minimum(np.searchsorted(found, cand), len(found) - 1)
        ok = (found[pos] == cand) & (cand >= 0)
        pos = pos[ok]
        s = vectors[pos] @ q
        top = np.argsort(-s, kind="stable")[:k]
        scores[row, : len(top)], ids[row, : len(top)] = s[top], found[pos[top]]
    return scores, ids


def members(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of ids are in sorted_ids (ascending, unique), as a bool mask."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids
