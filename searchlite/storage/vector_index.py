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
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .atomic_file import write_atomic


def _faiss() -> Any:
    import faiss  # heavy import, kept off the `--help` / `info` path

    return faiss


# below this many vectors exact search stays (a 100k x 512 flat scan takes ~25 ms on one core here)
ANN_MIN_VECTORS = 100_000
# on a GPU a flat scan of 1M x 512 takes about a millisecond and needs 2 GB of its memory
GPU_ANN_MIN_VECTORS = 1_000_000
TARGET_RECALL = 0.97  # on the tuning queries, for a margin over 0.95 on real ones
PARALLEL_MIN_QUERIES = 20  # fewer queries are searched on one thread (faiss's own BLAS threshold)
# the default memory budget of the vector index: this fraction of the machine's memory (or of the
# process's cgroup limit, when lower). IVF-Flat stays while its vectors fit; past it, IVF-PQ.
MEMORY_FRACTION = 0.25
# an approximate index is rebuilt (re-trained and re-tuned) once it has grown to this many times
# the size it was built at
REBUILD_GROWTH = 2.0
CHUNK = 65_536  # vectors per step while building: memory beyond the index stays one chunk
_NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192, 16384)
_SHORTLISTS = (40, 80, 160, 320, 640)
_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
# HNSW (faiss's IndexHNSWFlat, M links a node) is built beside IVF-Flat when IVF must probe more than
# this share of its lists for the target recall (queries out of the vectors' distribution, such as
# text queries across the modality gap) and the graph fits the memory budget; the faster of the two
# at the target recall is kept
HNSW_TRY_FRACTION = 0.02
HNSW_M = 32  # links a node of the HNSW graph keeps (half that over product-quantized codes)
AUTO = "auto"
# what optimize(structure=...) builds: AUTO picks for the size and the memory budget
STRUCTURES = (AUTO, "exact", "ivf", "hnsw", "ivfpq", "hnswpq")
_MAGIC = b"searchlite-vectors\n"  # then a 4-byte length, a JSON header and the faiss index


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


def _unit(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = as_vectors(queries, dim)
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    keep = np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)
    return np.ascontiguousarray(queries[keep] / norms[keep])


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
        faiss = _faiss()
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
        faiss = _faiss()
        if isinstance(self._index, faiss.IndexIVFPQ):
            return "ivfpq"
        if isinstance(self._index, faiss.IndexIVF):
            return "ivf"
        graph = self._hnsw()
        if graph is None:
            return "exact"
        return "hnswpq" if isinstance(graph, faiss.IndexHNSWPQ) else "hnsw"

    def _hnsw(self) -> Any:
        """The HNSW graph inside the id map, or None."""
        faiss = _faiss()
        if not isinstance(self._index, faiss.IndexIDMap2):
            return None
        inner = faiss.downcast_index(self._index.index)
        return inner if isinstance(inner, faiss.IndexHNSW) else None

    @property
    def nbytes(self) -> int:
        """Memory the structure holds (codes or vectors, ids, centroids), about."""
        faiss = _faiss()
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
        the size (a compressed one needs `exact`). Trained on a sample and filled in chunks: beyond
        the index being built, memory holds one chunk and the sample. The probes (and shortlist)
        are the cheapest that reach target_recall@10 against exact search on `queries` — give ones
        like those the index will get (text embeddings for a text-to-image search); without them,
        indexed vectors with noise added. Built from `exact` when there is one, else from what the
        index holds. Returns what was chosen and measured. Raises ValueError for an unknown
        structure, or one that cannot be built here."""
        if structure not in STRUCTURES:
            raise ValueError(f"unknown index structure {structure!r}: choose one of {', '.join(STRUCTURES)}")
        faiss = _faiss()
        budget = int(memory_budget or default_memory_budget())
        with self._lock:
            self._gpu_copy = None
            n = len(self) if self.exact is None else len(self.exact)
            compare = structure == AUTO  # auto also tries HNSW beside the inverted file
            if structure == AUTO:
                small = n < self.ann_min_vectors and not force or n < 40  # 39 points per list is k-means' minimum
                structure = "exact" if small else "ivfpq" if flat_bytes(n, self.dim) > budget else "ivf"
            if structure == "exact":
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
                for ids, chunk in self._source():
                    index.add_with_ids(as_vectors(chunk, self.dim), ids)
                self._index, self.tuning = index, {"vectors": n}
                return {"kind": "exact", "vectors": n}
            compress = structure in ("ivfpq", "hnswpq")
            if compress and self.exact is None:
                raise ValueError(
                    f"{n} vectors need {flat_bytes(n, self.dim)} bytes held exactly, over the memory budget of "
                    f"{budget}: a compressed index re-ranks with the exact vectors, so give VectorIndex(exact=...)"
                    if compare else f"a compressed index ({structure}) re-ranks with the exact vectors: give VectorIndex(exact=...)"
                )
            if n < 2:
                raise ValueError(f"an {structure} index needs at least 2 vectors to be built; this one holds {n}: keep it exact")
            rng = np.random.default_rng(seed)
            started = time.monotonic()
            if structure in ("ivf", "ivfpq"):
                new, sample_size = self._empty(n, budget, compress)
            else:
                new, sample_size = self._graph(*(self._pq_shape(n, budget) if compress else (0, 0))), min(n, 16_384)
            sample = _sample(self._source, n, sample_size, rng, self.dim)
            if not new.is_trained:
                new.train(sample)
            queries = _unit(queries, self.dim) if queries is not None else None
            tuned_on = "queries"
            if queries is None or not len(queries):
                queries, tuned_on = _noisy(sample[rng.choice(len(sample), size=min(200, len(sample)), replace=False)], rng), "indexed vectors"
            del sample
            if self.exact is not None:  # rebuilt from the source: the old structure can go first
                self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            truth = _Truth(queries, 10)
            for ids, chunk in self._source():
                chunk = as_vectors(chunk, self.dim)
                new.add_with_ids(chunk, np.ascontiguousarray(ids, dtype=np.int64))
                truth.update(ids, chunk)
            build_s = time.monotonic() - started
            self._index = new
            self.tuning = {"vectors": n}
            chosen = self._tune(queries, truth.ids, target_recall)
            if compare:
                code = new.code_size if compress else 4 * self.dim
                graph_bytes = n * (code + 8 + int(1.1 * 4 * 2 * (HNSW_M // 2 if compress else HNSW_M)))
                if new.nprobe > HNSW_TRY_FRACTION * new.nlist and graph_bytes <= budget:
                    chosen = self._keep_faster_of_ivf_and_hnsw(chosen, queries, truth.ids, target_recall, rng)
            self.tuning.update(chosen, tuned_on=tuned_on, queries=len(queries), checked_at=n)
            _trim_heap()
            return {"kind": self.kind, "vectors": n, **({"nlist": self._index.nlist} if self.kind.startswith("ivf") else {}), **chosen, "tuned_on": tuned_on,
                    "queries": len(queries), "bytes": self.nbytes, "build_seconds": round(build_s, 1)}

    def _keep_faster_of_ivf_and_hnsw(self, ivf_chosen: dict[str, Any], queries: np.ndarray, truth: np.ndarray, target: float, rng: np.random.Generator) -> dict[str, Any]:
        """Build HNSW beside the tuned inverted file (over the vectors for IVF-Flat, over the same
        product-quantized codes for IVF-PQ), tune it on the same queries, and keep whichever answers
        one query faster at the target recall."""
        faiss = _faiss()
        ivf, ivf_tuning = self._index, dict(self.tuning)
        ivf_s = self._median_seconds(queries)
        if isinstance(ivf, faiss.IndexIVFPQ):
            hnsw = self._graph(ivf.pq.M, ivf.pq.nbits)
            hnsw.train(_sample(self._source, len(self.exact) if self.exact is not None else len(self), 16_384, rng, self.dim))
        else:
            hnsw = self._graph()
        for ids, chunk in self._source() if self.exact is not None else self._held():
            hnsw.add_with_ids(as_vectors(chunk, self.dim), np.ascontiguousarray(ids, dtype=np.int64))
        self._index, self.tuning = hnsw, {"vectors": ivf_tuning["vectors"], "shortlist": ivf_tuning.get("shortlist")}
        hnsw_chosen = self._tune(queries, truth, target)
        hnsw_s = self._median_seconds(queries)
        compared = {"ivf_p50_ms": round(1000 * ivf_s, 3), "hnsw_p50_ms": round(1000 * hnsw_s, 3),
                    "ivf_recall_at_10": ivf_chosen["recall_at_10"], "hnsw_recall_at_10": hnsw_chosen["recall_at_10"]}
        if hnsw_chosen["recall_at_10"] >= min(target, ivf_chosen["recall_at_10"]) and hnsw_s < ivf_s:
            return {**hnsw_chosen, "compared": compared}
        self._index, self.tuning = ivf, ivf_tuning
        return {**ivf_chosen, "compared": compared}

    def _median_seconds(self, queries: np.ndarray) -> float:
        """Median seconds of one query on one thread, as the structure stands."""
        times = []
        with _single_thread(True):
            for q in queries[:50]:
                started = time.perf_counter()
                self._search_unlocked(q[None, :], 10)
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    def _empty(self, n: int, budget: int, compress: bool) -> tuple[Any, int]:
        """An untrained inverted file for n vectors, and how many vectors to train it on."""
        faiss = _faiss()
        nlist = int(max(1, min(16384, max(64, 4 * np.sqrt(n)), n // 40)))
        quantizer = faiss.IndexFlatIP(self.dim)
        if not compress:
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            _quiet(index.cp)
            return index, min(n, 40 * nlist)
        m, nbits = self._pq_shape(n, budget)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = 64  # k-means of the lists on a sample that fits
        _quiet(index.cp)
        _quick_codebooks(index.pq)
        index.cp.niter = 10
        return index, min(n, max(40 * nlist, 256 * 40), 32 * nlist + 65_536)

    def _pq_shape(self, n: int, budget: int) -> tuple[int, int]:
        """(bytes a code, bits a codeword) of the product quantizer for n vectors: the largest code
        (d/4, d/8 or d/16 bytes) whose codes and ids take at most half the budget."""
        m = next((m for m in (self.dim // 4, self.dim // 8, self.dim // 16) if m and self.dim % m == 0 and n * (m + 8) <= budget // 2), None)
        nbits = int(min(8, max(1, np.log2(max(2, n // 40)))))  # 256 codewords need 10k training points
        return m or max(1, self.dim // 16), nbits

    def _graph(self, pq_m: int = 0, pq_nbits: int = 8) -> Any:
        """An empty HNSW graph in an id map: over the vectors, or with pq_m over product-quantized
        codes of pq_m bytes (to be trained)."""
        faiss = _faiss()
        if not pq_m:
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT))
        # L2 on unit vectors ranks as inner product does; the shortlist is re-ranked exactly anyway
        graph = faiss.IndexHNSWPQ(self.dim, pq_m, HNSW_M // 2, pq_nbits)
        _quick_codebooks(faiss.downcast_index(graph.storage).pq)
        return faiss.IndexIDMap2(graph)

    def _source(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The vectors to build from, in chunks: the exact source when there is one, else what the
        index holds."""
        if self.exact is not None:
            yield from self.exact.chunks()
            return
        yield from self._held()

    def _held(self, among: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (m,), vectors (m, d)) the structure itself holds exactly (exact, ivf, hnsw), or those
        among (sorted ids), in chunks. The vectors may be views into the index: use them before
        the index changes (under the lock)."""
        faiss = _faiss()
        index = self._index
        if self.kind in ("ivfpq", "hnswpq"):
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
                    vectors = faiss.rev_swig_ptr(codes_ptr, size * index.code_size).view(np.float32).reshape(size, self.dim)
                    if among is not None:
                        keep = _members(among, ids)
                        ids, vectors = ids[keep], vectors[keep]
                    if len(ids):
                        yield ids, vectors
                finally:
                    invlists.release_codes(lst, codes_ptr)
                    invlists.release_ids(lst, ids_ptr)
            return
        graph = self._hnsw()
        flat = faiss.downcast_index(graph.storage if graph is not None else index.index)
        all_vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dim).reshape(-1, self.dim)
        id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
        if among is None and not self._dead:
            for start in range(0, len(id_map), CHUNK):
                yield id_map[start : start + CHUNK], all_vectors[start : start + CHUNK]
            return
        alive = id_map >= 0  # HNSW's removed nodes carry id -1
        positions = np.flatnonzero(alive if among is None else alive & _members(among, id_map))
        for start in range(0, len(positions), CHUNK):
            part = positions[start : start + CHUNK]
            yield id_map[part], all_vectors[part]

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
            best_s, best_i = _merge_top(best_s, best_i, scores, ids, k)
        return best_s, best_i

    def _tune(self, queries: np.ndarray, truth: np.ndarray, target: float, *, at_least: int = 1) -> dict[str, Any]:
        """Set the least search effort (lists probed, or the graph's efSearch; and for a compressed
        index the shortlist re-ranked) that reaches target recall@10 on queries whose true top 10 ids
        are truth; returns it with the recall measured."""
        graph = self._hnsw()
        name = "ef_search" if graph is not None else "nprobe"
        if graph is not None:
            efforts = _up_to([e for e in _EF_SEARCH if e >= at_least] or [_EF_SEARCH[-1]], len(self))
        else:
            efforts = [p for p in _NPROBES if at_least <= p < self._index.nlist] + [self._index.nlist]
        if self.kind not in ("ivfpq", "hnswpq"):
            for effort in efforts:
                self._set_effort(effort)
                recall = _recall(truth, self._candidates(queries, 10)[1])
                if recall >= target:
                    break
            return {name: effort, "recall_at_10": round(recall, 4)}
        # compressed: re-ranking puts every true top-10 id that is on the shortlist into the top 10,
        # so the recall after re-ranking is the shortlist's recall of the true top 10
        candidates: list[tuple[int, int, float]] = []
        shortlists = _up_to(_SHORTLISTS, len(self))
        for shortlist in shortlists:
            # a graph walk keeps efSearch candidates: at least the shortlist
            ladder = [e for e in efforts if graph is None or e >= shortlist] or efforts[-1:]
            for effort in ladder:
                self._set_effort(effort)
                recall = _recall(truth, self._candidates(queries, shortlist)[1])
                if recall >= target:
                    candidates.append((effort, shortlist, recall))
                    break
            if candidates and candidates[-1][:2] == (ladder[0], shortlist):
                break  # a longer shortlist cannot lower the effort further
        if not candidates:
            candidates.append((efforts[-1], shortlists[-1], recall))
        timed = [(self._time_search(queries, effort, shortlist), effort, shortlist, recall) for effort, shortlist, recall in candidates]
        _, effort, shortlist, recall = min(timed)
        self._set_effort(effort)
        self.tuning["shortlist"] = shortlist
        return {name: effort, "shortlist": shortlist, "recall_at_10": round(recall, 4)}

    def _set_effort(self, effort: int) -> None:
        graph = self._hnsw()
        if graph is not None:
            graph.hnsw.efSearch = effort
        else:
            self._index.nprobe = effort

    def _time_search(self, queries: np.ndarray, nprobe: int, shortlist: int) -> float:
        """Median seconds of one query, one thread, re-ranking included."""
        self._set_effort(nprobe)
        self.tuning["shortlist"] = shortlist
        times = []
        with _single_thread(True):
            for q in queries[:30]:
                started = time.perf_counter()
                self._search_reranked(q[None, :], 10)
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    def retune(self, queries: np.ndarray, *, target_recall: float = TARGET_RECALL, min_growth: float = 0.0) -> dict[str, Any] | None:
        """Check recall@10 on queries (recent real ones, say) against exact search, and probe more
        (never fewer) when it is below target_recall. With min_growth, only once the index has grown
        by that fraction since it was last checked; returns None when not due or not approximate."""
        n = len(self)
        if self.kind == "exact" or n < (1 + min_growth) * int(self.tuning.get("checked_at") or 0):
            return None
        queries = _unit(queries, self.dim)
        if not len(queries):
            return None
        with self._lock:
            truth = _Truth(queries, 10)
            for ids, chunk in self._source() if self.exact is not None else self._held():
                truth.update(ids, as_vectors(chunk, self.dim))
            before = _recall(truth.ids, self._search_unlocked(queries, 10)[1])
            result: dict[str, Any] = {"recall_before": round(before, 4)}
            if before < target_recall:
                graph = self._hnsw()
                current = graph.hnsw.efSearch if graph is not None else self._index.nprobe
                result.update(self._tune(queries, truth.ids, target_recall, at_least=current))
                self.tuning.update(result)
            self.tuning["checked_at"] = n
            return {"kind": self.kind, **result}

    def ids(self) -> np.ndarray:
        """Every id in the index, int64 (n,), in no particular order."""
        with self._lock:
            return self._ids()

    def _ids(self) -> np.ndarray:
        """ids(), for a caller holding the lock (it is not re-entrant)."""
        faiss = _faiss()
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
        faiss = _faiss()
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
        with self._lock, _single_thread(len(queries) < PARALLEL_MIN_QUERIES):
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
        graph = self._hnsw()
        if graph is None:
            return self._index.search(queries, k)
        faiss = _faiss()
        params = faiss.SearchParametersHNSW()
        params.efSearch = graph.hnsw.efSearch
        if self._dead:
            alive = faiss.IDSelectorRange(0, 2**63 - 1)  # removed nodes carry id -1
            params.sel = alive
        scores, found = self._index.search(queries, k, params=params)
        if graph.metric_type == faiss.METRIC_L2:  # squared distances of unit vectors, as inner products
            scores = np.where(found >= 0, 1 - scores / 2, -np.inf).astype(np.float32)
        return scores, found

    def _search_reranked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The compressed index's shortlist, scored again with the exact vectors."""
        assert self.exact is not None
        shortlist = min(max(k, int(self.tuning.get("shortlist") or 4 * k)), len(self))
        _, candidates = self._candidates(queries, shortlist)
        found, vectors = self.exact.fetch(np.unique(candidates[candidates >= 0]))
        order = np.argsort(found)
        found, vectors = found[order], np.asarray(vectors, np.float32)[order]
        return _rerank(queries, candidates, found, vectors, k)

    def scores(self, query: np.ndarray, *, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The exact score (cosine) of one query (1, d) against every vector, or only those among:
        (scores float32 (n,), ids int64 (n,)), best first. Whatever the structure: an inverted file
        is read list by list, a compressed one scores with its exact source, in chunks."""
        query = as_vectors(query, self.dim)[:1]
        with self._lock, _single_thread(True):
            parts = list(self._scored(query, among))
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.concatenate([s[0] for s, _ in parts]).astype(np.float32, copy=False)
        ids = np.concatenate([i for _, i in parts])
        order = np.argsort(-scores, kind="stable")
        return scores[order], ids[order]

    def _only(self, ids: np.ndarray) -> Any:
        faiss = _faiss()
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        if isinstance(self._index, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=self._index.nlist)
        return faiss.SearchParameters(sel=selector)

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search on the GPUs: the flat vectors are copied there, the id map stays here."""
        if self._gpu_copy is None:
            self._gpu_copy = _to_gpu(self._index.index)
        scores, positions = self._gpu_copy.search(queries, k)
        id_map = _faiss().vector_to_array(self._index.id_map)
        return scores, np.where(positions >= 0, id_map[np.maximum(positions, 0)], -1).astype(np.int64)

    def to_bytes(self) -> bytes:
        """The whole index (its structure and tuned search settings included) as bytes."""
        with self._lock:
            header = json.dumps(self.tuning, sort_keys=True).encode()
            return _MAGIC + struct.pack("<I", len(header)) + header + _faiss().serialize_index(self._index).tobytes()

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
        index = _faiss().deserialize_index(np.frombuffer(view, dtype=np.uint8))
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
    return int(_faiss().get_num_gpus())


def _to_gpu(flat: Any) -> Any:
    return _faiss().index_cpu_to_all_gpus(flat)


@contextmanager
def _single_thread(enabled: bool) -> Iterator[None]:
    """Run faiss on the calling thread alone (OpenMP's thread count is per calling thread). A few
    queries are answered in 2 ms by one thread; waking a team of threads, while numpy's BLAS
    threads still spin after encoding the query, made the same search take 20 ms here."""
    if not enabled:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)




class _Truth:
    """The exact top-k ids of some queries, merged chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.scores, self.ids = _merge_top(self.scores, self.ids, self.queries @ vectors.T, np.asarray(ids, np.int64), self.k)


def _merge_top(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def _rerank(queries: np.ndarray, candidates: np.ndarray, found: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def _up_to(ladder: list[int] | tuple[int, ...], n: int) -> list[int]:
    """The steps of an ascending ladder of search efforts up to the first that reaches n vectors
    (a longer walk or shortlist cannot find more): a small index is tuned in a few steps."""
    below = [x for x in ladder if x < n]
    return below + [x for x in ladder if x >= n][:1]


def _members(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of ids are in sorted_ids (ascending, unique), as a bool mask."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each row of truth (the true top 10) that found's row holds."""
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist()))
    return hits / max(1, int((truth >= 0).sum()))


def _sample(source: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], n: int, size: int, rng: np.random.Generator, dim: int) -> np.ndarray:
    """min(n, size) vectors drawn uniformly from the source (of n vectors), in one pass: exactly
    as many as asked, so that k-means gets the points a centroid it was sized for."""
    picks = np.sort(rng.choice(n, size=size, replace=False)) if size < n else None
    parts, offset = [], 0
    for _, chunk in source():
        chunk = as_vectors(chunk, dim)
        if picks is None:
            parts.append(chunk)
        else:
            lo, hi = np.searchsorted(picks, [offset, offset + len(chunk)])
            parts.append(chunk[picks[lo:hi] - offset])
        offset += len(chunk)
    return np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, dim), np.float32)


def _noisy(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tuning queries when none are given: indexed vectors with noise added, so a query is not
    simply its own neighbour."""
    queries = vectors + rng.normal(0, 0.3 / np.sqrt(vectors.shape[1]), vectors.shape).astype(np.float32)
    return np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))


def _trim_heap() -> None:
    """Hand the memory a build freed back to the system (glibc keeps freed blocks of the chunks read
    from SQLite in its arenas, which would count in the process's resident memory)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _quick_codebooks(pq: Any) -> None:
    """Train each sub-quantizer's k-means on 32 points a codeword (8k for 256), 8 rounds: faiss's
    k-means is slow in 4 dimensions (about 1 s each on 12k points here, and a 512-d vector has 128
    of them), and the shortlist is re-ranked with the exact vectors anyway."""
    pq.cp.max_points_per_centroid = 32
    pq.cp.niter = 8
    _quiet(pq.cp)


def _quiet(cp: Any) -> None:
    """Keep faiss's k-means from printing to the user's terminal (its C++ writes straight to
    stderr): it warns below 39 training points a centroid, a floor the samples here are drawn
    for, and that a forced structure on a small index is allowed to go under."""
    cp.min_points_per_centroid = 1
    cp.verbose = False
