"""The FAISS layer: unit vectors keyed by row id, inner-product search, atomic save and load.

The structures, picked by `VectorIndex.optimize` for the size and a memory budget:

- exact (IndexFlatIP) below ANN_MIN_VECTORS, where a flat scan costs a few milliseconds; with a
  GPU build of faiss and a GPU it runs there and stays exact up to GPU_ANN_MIN_VECTORS;
- "ivf", an inverted file of the vectors themselves (IVF-Flat, 4 d + 8 bytes a vector), or "hnsw",
  faiss's graph over them, when it answers the tuning queries faster: while the vectors fit the
  memory budget;
- past it, compressed: "ivfpq", an inverted file of product-quantized codes (d / 4 bytes a vector
  or less), or "hnswpq", a graph over such codes, whose shortlist is re-ranked with the exact
  vectors, read from where they are kept (SQLite, in the engine) through an ExactVectors source.

The search effort (lists probed, or the graph's efSearch; and for compressed ones the shortlist) is tuned for a target recall@10
against exact search, on queries like the ones the index will get: CLIP's text embeddings sit in
another cone than its image embeddings (the modality gap), so the engine tunes on text queries and
on recent real ones, not on the indexed vectors. Vector contract at this boundary: float32,
C-contiguous, shape (n, d), unit length.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import ann_build
from .ann_build import AUTO, STRUCTURES, TARGET_RECALL, Tuner, exact_truth, recall_of
from .atomic_file import write_atomic
from .faiss_parts import CHUNK, ArrayVectors, ExactVectors, as_vectors, candidates, flat_bytes, held, hnsw_of, kind_of, load_faiss, merge_top, reranked, single_thread, unit

# names its users import from here
__all__ = ["ANN_MIN_VECTORS", "AUTO", "CHUNK", "GPU_ANN_MIN_VECTORS", "MEMORY_FRACTION", "PARALLEL_MIN_QUERIES",
           "REBUILD_GROWTH", "STRUCTURES", "TARGET_RECALL", "ArrayVectors", "ExactVectors", "VectorIndex", "as_vectors", "default_memory_budget",
           "flat_bytes", "gpu_count"]


# below this many vectors exact search stays (a 100k x 512 flat scan takes ~25 ms on one core here)
ANN_MIN_VECTORS = 100_000
# on a GPU a flat scan of 1M x 512 takes about a millisecond and needs 2 GB of its memory
GPU_ANN_MIN_VECTORS = 1_000_000
PARALLEL_MIN_QUERIES = 20  # fewer queries are searched on one thread (faiss's own BLAS threshold)
# the default memory budget of the vector index: this fraction of the machine's memory (or of the
# process's cgroup limit, when lower). IVF-Flat stays while its vectors fit; past it, IVF-PQ.
MEMORY_FRACTION = 0.25
# an approximate index is rebuilt (re-trained and re-tuned) once it has grown to this many times
# the size it was built at
REBUILD_GROWTH = 2.0
_MAGIC = b"searchlite-vectors\n"  # then a 4-byte length, a JSON header and the faiss index



def default_memory_budget() -> int:
    """MEMORY_FRACTION of the machine's physical memory, or of this process's cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return int(MEMORY_FRACTION * total)



class VectorIndex:
    """Cosine (inner product of unit vectors) search over vectors keyed by int64 ids: exact, or
    approximate once optimize() picks an inverted file.

    Adding an id that is already present replaces its vector (never duplicates it).
    Thread-safe: searches may run while another thread adds or removes.
    exact: where the exact vectors are kept (an ExactVectors); a compressed index needs it to
    re-rank its candidates and to be rebuilt, and optimize() builds from it when given.
    """

    def __init__(self, dim: int, _index: Any = None, *, use_gpu: bool | None = None, exact: ExactVectors | None = None) -> None:
        """use_gpu: search exact indexes on the GPUs (default: when faiss has any)."""
        faiss = load_faiss()
        self.dim = dim
        self.exact = exact
        self._lock = threading.Lock()
        self._index = _index if _index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._gpu_copy: Any = None  # of the flat part, made on the first search after a change
        # what optimize() chose and measured (kept in the saved file): size built at, shortlist, recall
        self.tuning: dict[str, Any] = {}

    @property
    def ann_min_vectors(self) -> int:
        """The size from which an approximate index pays."""
        return GPU_ANN_MIN_VECTORS if self._use_gpu else ANN_MIN_VECTORS

    def __len__(self) -> int:
        return int(self._index.ntotal) - self._dead

    @property
    def _dead(self) -> int:
        """Removed entries an HNSW graph still holds (it cannot drop nodes: their ids become -1)."""
        return int(self.tuning.get("dead") or 0)

    @property
    def kind(self) -> str:
        """"exact" (flat scan), "ivf" (inverted lists of the vectors), "hnsw" (a graph over the
        vectors), or compressed and re-ranked with the exact vectors: "ivfpq" (inverted lists of
        product-quantized codes) or "hnswpq" (a graph over such codes)."""
        return kind_of(self._index)

    def _hnsw(self) -> Any:
        """The HNSW graph inside the id map, or None."""
        return hnsw_of(self._index)

    @property
    def nbytes(self) -> int:
        """Memory the structure holds (codes or vectors, ids, centroids), about."""
        faiss = load_faiss()
        index = self._index
        if isinstance(index, faiss.IndexIVF):
            code = index.code_size if isinstance(index, faiss.IndexIVFPQ) else 4 * self.dim
            return len(self) * (code + 8) + index.nlist * self.dim * 4 + (index.pq.M * 256 * index.pq.dsub * 4 if isinstance(index, faiss.IndexIVFPQ) else 0)
        graph = self._hnsw()
        if graph is not None:
            storage = faiss.downcast_index(graph.storage)
            code = storage.code_size if isinstance(storage, faiss.IndexPQ) else 4 * self.dim
            return int(index.ntotal) * (code + 8 + int(2.2 * 4 * graph.hnsw.nb_neighbors(0) // 2))
        return flat_bytes(len(self), self.dim)

    def optimize_if_large(self, *, queries: np.ndarray | Callable[[], np.ndarray | None] | None = None, memory_budget: int | None = None) -> bool:
        """Rebuild when the size calls for it: an exact index of ann_min_vectors or more becomes
        approximate; an approximate one that has grown REBUILD_GROWTH times since it was built is
        re-trained and re-tuned; IVF-Flat that outgrew memory_budget is compressed (when there is
        an exact source to re-rank with). queries: tuning queries, or a function giving them (called
        only when rebuilding). Returns whether it rebuilt."""
        n = len(self)
        budget = memory_budget or default_memory_budget()
        if self.kind == "exact":
            due = n >= self.ann_min_vectors
        else:
            built_at = int(self.tuning.get("vectors") or 0)
            due = bool(built_at) and n >= REBUILD_GROWTH * built_at
            due = due or (self.kind in ("ivf", "hnsw") and flat_bytes(n, self.dim) > budget and self.exact is not None)
            due = due or self._dead > 0.2 * int(self._index.ntotal)  # an HNSW graph of many removed nodes
        if not due:
            return False
        self.optimize(queries=queries() if callable(queries) else queries, memory_budget=budget)
        return True

    def optimize(
        self,
        *,
        queries: np.ndarray | None = None,
        memory_budget: int | None = None,
        force: bool = False,
        structure: str = AUTO,
        target_recall: float = TARGET_RECALL,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Rebuild as `structure` (one of STRUCTURES). AUTO picks for the current size: exact below
        ann_min_vectors (unless force); else IVF-Flat (or HNSW, when it answers faster) while the
        vectors fit memory_budget bytes (default: MEMORY_FRACTION of the machine's memory), IVF-PQ
        (or HNSW-PQ) re-ranked with the exact vectors past it. A structure named is built whatever
        the size (a compressed one needs `exact`). Trained on a sample and filled in chunks: beyond the old
        index (kept until the new one is built) and the new one, memory holds one chunk and the sample. The probes (and shortlist)
        are the cheapest that reach target_recall@10 against exact search on `queries` — give ones
        like those the index will get (text embeddings for a text-to-image search); without them,
        indexed vectors with noise added. Built from `exact` when there is one, else from what the
        index holds (ann_build does the building and tuning). Returns what was chosen and measured.
        Raises ValueError for an unknown structure, or one that cannot be built here."""
        budget = int(memory_budget or default_memory_budget())
        with self._lock:
            self._gpu_copy = None
            n = len(self) if self.exact is None else len(self.exact)
            chosen = ann_build.resolve(structure, n, self.dim, budget, ann_min=self.ann_min_vectors, force=force, has_exact=self.exact is not None)
            if chosen == "exact":
                self._index, self.tuning = ann_build.build_exact(self.dim, self._source), {"vectors": n}
                return {"kind": "exact", "vectors": n}
            queries = unit(queries, self.dim) if queries is not None else None
            # assigned only once built: a failed build leaves the old structure and its tuning answering
            self._index, self.tuning, report = ann_build.build(
                chosen, n=n, dim=self.dim, source=self._source, exact=self.exact, budget=budget, queries=queries,
                target_recall=target_recall, seed=seed, compare=structure == AUTO)  # auto also tries HNSW beside the inverted file
            build_seconds = report.pop("build_seconds")
            return {**report, "bytes": self.nbytes, "build_seconds": build_seconds}

    def _source(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The vectors to build from, in chunks: the exact source when there is one, else what the
        index holds."""
        if self.exact is not None:
            yield from self.exact.chunks()
            return
        yield from self._held()

    def _held(self, among: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (m,), vectors (m, d)) the structure itself holds exactly (exact, ivf, hnsw), or those
        among (sorted ids), in chunks (see faiss_parts.held)."""
        return held(self._index, self.dim, among, self._dead)

    def _stored(self, among: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (m,), vectors (m, d)) of every vector in the index, or of those among (sorted
        ids), exactly and in chunks: held by the structure, or for a compressed one read from the
        exact source (a chunk at a time, never a vector at a time)."""
        if self.kind not in ("ivfpq", "hnswpq"):
            yield from self._held(among)
            return
        if self.exact is None:
            raise ValueError("a compressed index scores every vector with the exact ones: give VectorIndex(exact=...)")
        if among is None:
            yield from self.exact.chunks()
            return
        for start in range(0, len(among), CHUNK):
            found, vectors = self.exact.fetch(among[start : start + CHUNK])
            if len(found):
                yield found, vectors

    def _scored(self, queries: np.ndarray, among: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(scores float32 (q, m), ids (m,)): the exact inner products of queries with every stored
        vector (or those among), in pieces of about CHUNK vectors (an inverted file's lists are
        scored in place, then gathered)."""
        among = None if among is None else np.unique(np.asarray(among, dtype=np.int64))
        scores: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        size = 0
        for part_ids, vectors in self._stored(among):
            scores.append(queries @ as_vectors(vectors, self.dim).T)
            ids.append(np.asarray(part_ids, dtype=np.int64))
            size += len(part_ids)
            if size >= CHUNK:
                yield np.concatenate(scores, axis=1), np.concatenate(ids)
                scores, ids, size = [], [], 0
        if size:
            yield np.concatenate(scores, axis=1), np.concatenate(ids)

    def _exact_top(self, queries: np.ndarray, k: int, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over every stored vector (or those among), whatever the structure; rows
        with fewer vectors end in id -1."""
        best_s = np.full((len(queries), k), -np.inf, np.float32)
        best_i = np.full((len(queries), k), -1, np.int64)
        for scores, ids in self._scored(queries, among):
            best_s, best_i = merge_top(best_s, best_i, scores, ids, k)
        return best_s, best_i

    def retune(self, queries: np.ndarray, *, target_recall: float = TARGET_RECALL, min_growth: float = 0.0) -> dict[str, Any] | None:
        """Check recall@10 on queries (recent real ones, say) against exact search, and probe more
        (never fewer) when it is below target_recall. With min_growth, only once the index has grown
        by that fraction since it was last checked; returns None when not due or not approximate."""
        n = len(self)
        if self.kind == "exact" or n < (1 + min_growth) * int(self.tuning.get("checked_at") or 0):
            return None
        queries = unit(queries, self.dim)
        if not len(queries):
            return None
        with self._lock:
            truth = exact_truth(queries, self._source() if self.exact is not None else self._held(), self.dim)
            before = recall_of(truth, self._search_unlocked(queries, 10)[1])
            result: dict[str, Any] = {"recall_before": round(before, 4)}
            if before < target_recall:
                graph = self._hnsw()
                current = graph.hnsw.efSearch if graph is not None else self._index.nprobe
                result.update(Tuner(self._index, self.dim, self.exact, self.tuning).tune(queries, truth, target_recall, at_least=current))
                self.tuning.update(result)
            self.tuning["checked_at"] = n
            return {"kind": self.kind, **result}

    def ids(self) -> np.ndarray:
        """Every id in the index, int64 (n,), in no particular order."""
        with self._lock:
            return self._ids()

    def _ids(self) -> np.ndarray:
        """ids(), for a caller holding the lock (it is not re-entrant)."""
        faiss = load_faiss()
        if not isinstance(self._index, faiss.IndexIVF):
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            return ids[ids >= 0] if self._dead else ids
        invlists = faiss.downcast_InvertedLists(self._index.invlists)
        parts = []
        for lst in range(self._index.nlist):
            part = np.zeros(invlists.list_size(lst), dtype=np.int64)
            ptr = invlists.get_ids(lst)
            try:
                if len(part):
                    faiss.memcpy(faiss.swig_ptr(part), ptr, part.nbytes)
            finally:
                invlists.release_ids(lst, ptr)
            parts.append(part)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under ids. A compressed index re-ranks with the exact source,
        which must hold them too (the engine's store does: it commits before the index is updated)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = as_vectors(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique within one add()")
        with self._lock:
            self._remove(ids)  # re-adding an id to an IDMap would duplicate it
            self._index.add_with_ids(vectors, ids)
            self._gpu_copy = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            return self._remove(ids)

    def _remove(self, ids: np.ndarray) -> int:
        if not len(ids) or not self._index.ntotal:
            return 0
        self._gpu_copy = None
        faiss = load_faiss()
        if self._hnsw() is not None:  # a graph keeps its nodes: their ids become -1, never returned
            id_map = faiss.vector_to_array(self._index.id_map)
            gone = np.isin(id_map, ids) & (id_map >= 0)
            removed = int(gone.sum())
            if removed:
                id_map[gone] = -1
                faiss.copy_array_to_vector(id_map, self._index.id_map)
                self.tuning["dead"] = self._dead + removed
            return removed
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, *, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores float32 (q, k'), ids int64 (q, k')), k' = min(k, len).
        among: search only these ids, exactly (an approximate index scans all its lists, skipping
        other ids; a compressed one scores them with the exact vectors); rows with fewer matches
        end in id -1."""
        queries = as_vectors(queries, self.dim)
        with self._lock, single_thread(len(queries) < PARALLEL_MIN_QUERIES):
            return self._search_unlocked(queries, k, among)

    def _search_unlocked(self, queries: np.ndarray, k: int, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        compressed = self.kind in ("ivfpq", "hnswpq") and self.exact is not None
        graph = self._hnsw()
        if among is not None:
            if compressed or graph is not None:  # a filtered graph walk can miss
                return self._exact_top(queries, k, among)
            return self._index.search(queries, k, params=self._only(among))
        if self.kind == "exact":
            return self._search_gpu(queries, k) if self._use_gpu else self._index.search(queries, k)
        scores, ids = self._search_reranked(queries, k) if compressed else self._candidates(queries, k)
        # the lists probed (or the graph walked) can hold fewer than k: those queries are answered
        # exactly, so that a search for k returns k while the index holds them
        short = (ids >= 0).sum(axis=1) < k
        if short.any():
            scores, ids = scores.copy(), ids.copy()
            scores[short], ids[short] = self._exact_top(queries[short], k)
        return scores, ids


    def _candidates(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The structure's own top k (a compressed one's, before re-ranking)."""
        return candidates(self._index, queries, k, self._dead)

    def _search_reranked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The compressed index's shortlist, scored again with the exact vectors."""
        assert self.exact is not None
        shortlist = min(max(k, int(self.tuning.get("shortlist") or 4 * k)), len(self))
        return reranked(self._index, self.exact, queries, k, shortlist, self._dead)


    def scores(self, query: np.ndarray, *, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The exact score (cosine) of one query (1, d) against every vector, or only those among:
        (scores float32 (n,), ids int64 (n,)), best first. Whatever the structure: an inverted file
        is read list by list, a compressed one scores with its exact source, in chunks."""
        query = as_vectors(query, self.dim)[:1]
        with self._lock, single_thread(True):
            parts = list(self._scored(query, among))
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.concatenate([s[0] for s, _ in parts]).astype(np.float32, copy=False)
        ids = np.concatenate([i for _, i in parts])
        order = np.argsort(-scores, kind="stable")
        return scores[order], ids[order]

    def _only(self, ids: np.ndarray) -> Any:
        faiss = load_faiss()
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        if isinstance(self._index, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=self._index.nlist)
        return faiss.SearchParameters(sel=selector)

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search on the GPUs: the flat vectors are copied there, the id map stays here."""
        if self._gpu_copy is None:
            self._gpu_copy = _to_gpu(self._index.index)
        scores, positions = self._gpu_copy.search(queries, k)
        id_map = load_faiss().vector_to_array(self._index.id_map)
        return scores, np.where(positions >= 0, id_map[np.maximum(positions, 0)], -1).astype(np.int64)

    def to_bytes(self) -> bytes:
        """The whole index (its structure and tuned search settings included) as bytes."""
        with self._lock:
            header = json.dumps(self.tuning, sort_keys=True).encode()
            return _MAGIC + struct.pack("<I", len(header)) + header + load_faiss().serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, exact: ExactVectors | None = None) -> VectorIndex:
        """Read to_bytes()'s output (or a bare faiss index, as earlier versions wrote)."""
        tuning: dict[str, Any] = {}
        view = memoryview(data)
        if data[: len(_MAGIC)] == _MAGIC:
            (size,) = struct.unpack_from("<I", data, len(_MAGIC))
            start = len(_MAGIC) + 4
            tuning = json.loads(bytes(view[start : start + size]))
            view = view[start + size :]
        index = load_faiss().deserialize_index(np.frombuffer(view, dtype=np.uint8))
        vectors = cls(index.d, index, exact=exact)
        vectors.tuning = tuning
        return vectors

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never a mix."""
        write_atomic(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, exact: ExactVectors | None = None) -> VectorIndex:
        return cls.from_bytes(Path(path).read_bytes(), exact=exact)


def gpu_count() -> int:
    """GPUs that faiss can use: 0 with faiss-cpu."""
    return int(load_faiss().get_num_gpus())


def _to_gpu(flat: Any) -> Any:
    return load_faiss().index_cpu_to_all_gpus(flat)

