"""The FAISS layer: unit vectors keyed by row id, inner-product search, atomic save and load.

Exact (IndexFlatIP) below ANN_MIN_VECTORS, where a flat scan costs a few milliseconds; above, an
inverted-file index (IVF-Flat) whose number of probed lists is tuned on the data itself for a
target recall. With a GPU build of faiss and a GPU, exact search runs there and stays exact up to
GPU_ANN_MIN_VECTORS. Vector contract at this boundary: float32, C-contiguous, shape (n, d), unit length.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Check and normalise the one vector contract: float32, C-contiguous, (n, dim)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


class VectorIndex:
    """Exact cosine (inner product of unit vectors) search over vectors keyed by int64 ids.

    Adding an id that is already present replaces its vector (never duplicates it).
    Thread-safe: searches may run while another thread adds or removes.
    """

    def __init__(self, dim: int, _index: Any = None, *, use_gpu: bool | None = None) -> None:
        """use_gpu: search exact indexes on the GPUs (default: when faiss has any)."""
        faiss = _faiss()
        self.dim = dim
        self._lock = threading.Lock()
        self._index = _index if _index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._gpu_copy: Any = None  # of the flat part, made on the first search after a change

    @property
    def ann_min_vectors(self) -> int:
        """The size from which an approximate index pays."""
        return GPU_ANN_MIN_VECTORS if self._use_gpu else ANN_MIN_VECTORS

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """"exact" (flat scan) or "ivf" (approximate, inverted lists)."""
        return "ivf" if isinstance(self._index, _faiss().IndexIVF) else "exact"

    def optimize_if_large(self) -> bool:
        """Switch an exact index of ann_min_vectors or more to an approximate one (once: an IVF
        index stays as it is). Returns whether it did."""
        if self.kind != "exact" or len(self) < self.ann_min_vectors:
            return False
        self.optimize()
        return True

    def optimize(self, *, force: bool = False, target_recall: float = TARGET_RECALL, seed: int = 0) -> dict[str, Any]:
        """Pick the structure for the current size: exact below ann_min_vectors (unless force),
        else an IVF index trained on the vectors, probing just enough lists for target_recall@10
        (measured on a sample of the vectors against exact search). Returns what was chosen."""
        faiss = _faiss()
        with self._lock:
            ids, vectors = self._contents()
            n = len(ids)
            self._gpu_copy = None
            if n < self.ann_min_vectors and not force or n < 40:  # 39 points per list is k-means' minimum
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
                if n:
                    index.add_with_ids(vectors, ids)
                self._index = index
                return {"kind": "exact", "vectors": n}
            nlist = int(max(1, min(16384, max(64, 4 * np.sqrt(n)), n // 40)))
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(sample)
            ivf.add_with_ids(vectors, ids)
            ivf.nprobe, recall = _tune_nprobe(ivf, ids, vectors, rng, target_recall)
            self._index = ivf
            return {"kind": "ivf", "vectors": n, "nlist": nlist, "nprobe": ivf.nprobe, "recall_at_10": round(recall, 4)}

    def ids(self) -> np.ndarray:
        """Every id in the index, int64 (n,), in no particular order."""
        faiss = _faiss()
        with self._lock:
            if not isinstance(self._index, faiss.IndexIVF):
                return faiss.vector_to_array(self._index.id_map).astype(np.int64)
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

    def _contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), vectors (n, d)) of everything in the index."""
        faiss = _faiss()
        if isinstance(self._index, faiss.IndexIVF):
            from faiss.contrib.inspect_tools import get_invlist

            parts = [get_invlist(self._index.invlists, i) for i in range(self._index.nlist)]
            ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
            codes = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, self.dim * 4), np.uint8)
            return ids, np.ascontiguousarray(codes).view(np.float32).reshape(len(ids), self.dim)
        n = int(self._index.ntotal)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)
        return ids, vectors

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under ids."""
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
        return int(self._index.remove_ids(_faiss().IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, *, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores float32 (q, k'), ids int64 (q, k')), k' = min(k, len).
        among: search only these ids, exactly (an approximate index scans all its lists, skipping
        other ids); rows with fewer matches end in id -1."""
        queries = as_vectors(queries, self.dim)
        with self._lock, _single_thread(len(queries) < PARALLEL_MIN_QUERIES):
            k = min(k, len(self))
            if k <= 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            if among is not None:
                return self._index.search(queries, k, params=self._only(among))
            if self._use_gpu and self.kind == "exact":
                return self._search_gpu(queries, k)
            return self._index.search(queries, k)

    def scores(self, query: np.ndarray, *, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The exact score of one query (1, d) against every vector (or only those among):
        (scores float32 (n,), ids int64 (n,)), best first. An approximate index scans all its lists."""
        query = as_vectors(query, self.dim)
        with self._lock, _single_thread(True):
            if among is None and self.kind == "ivf":
                among = self.ids()
            n = len(self) if among is None else min(len(self), len(among))
            if n <= 0:
                return np.zeros(0, np.float32), np.zeros(0, np.int64)
            # on the CPU: the GPU's search takes k <= 2048
            scores, ids = self._index.search(query, n) if among is None else self._index.search(query, n, params=self._only(among))
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

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
            return _faiss().serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index.d, index)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never a mix."""
        write_atomic(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        return cls.from_bytes(Path(path).read_bytes())


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


def _tune_nprobe(ivf: Any, ids: np.ndarray, vectors: np.ndarray, rng: np.random.Generator, target: float) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 against exact search reaches target, on
    sample queries: indexed vectors with noise added, so a query is not simply its own neighbour."""
    faiss = _faiss()
    queries = vectors[rng.choice(len(vectors), size=min(200, len(vectors)), replace=False)]
    queries = queries + rng.normal(0, 0.3 / np.sqrt(vectors.shape[1]), queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    exact.add_with_ids(vectors, ids)
    _, truth = exact.search(queries, 10)
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = nprobe
        _, found = ivf.search(queries, 10)
        recall = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist())) / truth.size
        if recall >= target or nprobe >= ivf.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, ivf.nlist)
