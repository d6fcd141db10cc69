"""Building and tuning an approximate structure for the vector index: which structure a size and a
memory budget call for, an empty inverted file or graph, its training sample, and the least search
effort (lists probed or efSearch, and a compressed one's shortlist) that reaches a target recall@10
against exact search. Given the index's parts (dim, the vectors to build from, the exact source);
returns the built faiss index and its tuning. The vector index imports this, never the other way."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .faiss_parts import ExactVectors, as_vectors, candidates, flat_bytes, held, hnsw_of, kind_of, load_faiss, merge_top, reranked, single_thread

Source = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]

TARGET_RECALL = 0.97  # on the tuning queries, for a margin over 0.95 on real ones
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


def resolve(structure: str, n: int, dim: int, budget: int, *, ann_min: int, force: bool, has_exact: bool) -> str:
    """The structure to build for n vectors (AUTO picks for the size and the budget). Raises
    ValueError for an unknown structure, or one that cannot be built here."""
    if structure not in STRUCTURES:
        raise ValueError(f"unknown index structure {structure!r}: choose one of {', '.join(STRUCTURES)}")
    chosen = structure
    if structure == AUTO:
        small = n < ann_min and not force or n < 40  # 39 points per list is k-means' minimum
        chosen = "exact" if small else "ivfpq" if flat_bytes(n, dim) > budget else "ivf"
    if chosen in ("ivfpq", "hnswpq") and not has_exact:
        raise ValueError(
            f"{n} vectors need {flat_bytes(n, dim)} bytes held exactly, over the memory budget of "
            f"{budget}: a compressed index re-ranks with the exact vectors, so give VectorIndex(exact=...)"
            if structure == AUTO else f"a compressed index ({chosen}) re-ranks with the exact vectors: give VectorIndex(exact=...)"
        )
    if chosen != "exact" and n < 2:
        raise ValueError(f"an {chosen} index needs at least 2 vectors to be built; this one holds {n}: keep it exact")
    return chosen


def build_exact(dim: int, source: Source) -> Any:
    """A flat index (in an id map) of the source's vectors."""
    faiss = load_faiss()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for ids, chunk in source():
        index.add_with_ids(as_vectors(chunk, dim), ids)
    return index


class Tuner:
    """An approximate structure being tuned: the faiss index, its dimension, the exact source a
    compressed one re-ranks with, and the tuning (shortlist, dead nodes) its searches read."""

    def __init__(self, index: Any, dim: int, exact: ExactVectors | None, tuning: dict[str, Any]) -> None:
        self.index, self.dim, self.exact, self.tuning = index, dim, exact, tuning

    @property
    def kind(self) -> str:
        return kind_of(self.index)

    @property
    def size(self) -> int:
        return int(self.index.ntotal) - int(self.tuning.get("dead") or 0)

    def _candidates(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return candidates(self.index, queries, k, int(self.tuning.get("dead") or 0))

    def _top(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The structure's answer (re-ranked when compressed), as a search times it."""
        k = min(k, self.size)
        if kind_of(self.index) in ("ivfpq", "hnswpq") and self.exact is not None:
            shortlist = min(max(k, int(self.tuning.get("shortlist") or 4 * k)), self.size)
            return reranked(self.index, self.exact, queries, k, shortlist, int(self.tuning.get("dead") or 0))
        return self._candidates(queries, k)

    def tune(self, queries: np.ndarray, truth: np.ndarray, target: float, *, at_least: int = 1) -> dict[str, Any]:
        """Set the least search effort (lists probed, or the graph's efSearch; and for a compressed
        index the shortlist re-ranked) that reaches target recall@10 on queries whose true top 10 ids
        are truth; returns it with the recall measured."""
        graph = hnsw_of(self.index)
        name = "ef_search" if graph is not None else "nprobe"
        if graph is not None:
            efforts = _up_to([e for e in _EF_SEARCH if e >= at_least] or [_EF_SEARCH[-1]], self.size)
        else:
            efforts = [p for p in _NPROBES if at_least <= p < self.index.nlist] + [self.index.nlist]
        if kind_of(self.index) not in ("ivfpq", "hnswpq"):
            for effort in efforts:
                self._set_effort(effort)
                recall = recall_of(truth, self._candidates(queries, 10)[1])
                if recall >= target:
                    break
            return {name: effort, "recall_at_10": round(recall, 4)}
        # compressed: re-ranking puts every true top-10 id that is on the shortlist into the top 10,
        # so the recall after re-ranking is the shortlist's recall of the true top 10
        candidates: list[tuple[int, int, float]] = []
        shortlists = _up_to(_SHORTLISTS, self.size)
        for shortlist in shortlists:
            # a graph walk keeps efSearch candidates: at least the shortlist
            ladder = [e for e in efforts if graph is None or e >= shortlist] or efforts[-1:]
            for effort in ladder:
                self._set_effort(effort)
                recall = recall_of(truth, self._candidates(queries, shortlist)[1])
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
        graph = hnsw_of(self.index)
        if graph is not None:
            graph.hnsw.efSearch = effort
        else:
            self.index.nprobe = effort

    def _time_search(self, queries: np.ndarray, nprobe: int, shortlist: int) -> float:
        """Median seconds of one query, one thread, re-ranking included."""
        self._set_effort(nprobe)
        self.tuning["shortlist"] = shortlist
        return self._median(queries[:30])

    def median_seconds(self, queries: np.ndarray) -> float:
        """Median seconds of one query on one thread, as the structure stands."""
        return self._median(queries[:50])

    def _median(self, queries: np.ndarray) -> float:
        times = []
        with single_thread(True):
            for q in queries:
                started = time.perf_counter()
                self._top(q[None, :], 10)
                times.append(time.perf_counter() - started)
        return statistics.median(times)


def build(structure: str, *, n: int, dim: int, source: Source, exact: ExactVectors | None, budget: int, queries: np.ndarray | None,
          target_recall: float, seed: int, compare: bool) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Train and fill `structure` (one of "ivf", "hnsw", "ivfpq", "hnswpq") from source's n vectors,
    and tune it on queries (unit vectors; without them, indexed vectors with noise added); with
    compare, HNSW is also built and the faster kept. Returns (the faiss index, its tuning, what was
    chosen and measured)."""
    compress = structure in ("ivfpq", "hnswpq")
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    if structure in ("ivf", "ivfpq"):
        new, sample_size = _empty(dim, n, budget, compress)
    else:
        new, sample_size = _graph(dim, *(_pq_shape(dim, n, budget) if compress else (0, 0))), min(n, 16_384)
    sample = _sample(source, n, sample_size, rng, dim)
    if not new.is_trained:
        new.train(sample)
    tuned_on = "queries"
    if queries is None or not len(queries):
        queries, tuned_on = _noisy(sample[rng.choice(len(sample), size=min(200, len(sample)), replace=False)], rng), "indexed vectors"
    del sample
    truth = _Truth(queries, 10)
    for ids, chunk in source():
        chunk = as_vectors(chunk, dim)
        new.add_with_ids(chunk, np.ascontiguousarray(ids, dtype=np.int64))
        truth.update(ids, chunk)
    build_s = time.monotonic() - started
    tuner = Tuner(new, dim, exact, {"vectors": n})
    chosen = tuner.tune(queries, truth.ids, target_recall)
    if compare:
        code = new.code_size if compress else 4 * dim
        graph_bytes = n * (code + 8 + int(1.1 * 4 * 2 * (HNSW_M // 2 if compress else HNSW_M)))
        if new.nprobe > HNSW_TRY_FRACTION * new.nlist and graph_bytes <= budget:
            tuner, chosen = _keep_faster_of_ivf_and_hnsw(tuner, chosen, queries, truth.ids, target_recall, rng, source)
    tuner.tuning.update(chosen, tuned_on=tuned_on, queries=len(queries), checked_at=n)
    _trim_heap()
    kind = kind_of(tuner.index)
    return tuner.index, tuner.tuning, {"kind": kind, "vectors": n, **({"nlist": tuner.index.nlist} if kind.startswith("ivf") else {}), **chosen,
                                       "tuned_on": tuned_on, "queries": len(queries), "build_seconds": round(build_s, 1)}


def _keep_faster_of_ivf_and_hnsw(ivf: Tuner, ivf_chosen: dict[str, Any], queries: np.ndarray, truth: np.ndarray, target: float,
                                 rng: np.random.Generator, source: Source) -> tuple[Tuner, dict[str, Any]]:
    """Build HNSW beside the tuned inverted file (over the vectors for IVF-Flat, over the same
    product-quantized codes for IVF-PQ), tune it on the same queries, and keep whichever answers
    one query faster at the target recall."""
    faiss = load_faiss()
    dim = ivf.dim
    ivf_s = ivf.median_seconds(queries)
    if isinstance(ivf.index, faiss.IndexIVFPQ):
        hnsw = _graph(dim, ivf.index.pq.M, ivf.index.pq.nbits)
        hnsw.train(_sample(source, len(ivf.exact) if ivf.exact is not None else ivf.size, 16_384, rng, dim))
    else:
        hnsw = _graph(dim)
    for ids, chunk in source() if ivf.exact is not None else held(ivf.index, dim):
        hnsw.add_with_ids(as_vectors(chunk, dim), np.ascontiguousarray(ids, dtype=np.int64))
    graph = Tuner(hnsw, dim, ivf.exact, {"vectors": ivf.tuning["vectors"], "shortlist": ivf.tuning.get("shortlist")})
    hnsw_chosen = graph.tune(queries, truth, target)
    hnsw_s = graph.median_seconds(queries)
    compared = {"ivf_p50_ms": round(1000 * ivf_s, 3), "hnsw_p50_ms": round(1000 * hnsw_s, 3),
                "ivf_recall_at_10": ivf_chosen["recall_at_10"], "hnsw_recall_at_10": hnsw_chosen["recall_at_10"]}
    if hnsw_chosen["recall_at_10"] >= min(target, ivf_chosen["recall_at_10"]) and hnsw_s < ivf_s:
        return graph, {**hnsw_chosen, "compared": compared}
    return ivf, {**ivf_chosen, "compared": compared}


def _empty(dim: int, n: int, budget: int, compress: bool) -> tuple[Any, int]:
    """An untrained inverted file for n vectors, and how many vectors to train it on."""
    faiss = load_faiss()
    nlist = int(max(1, min(16384, max(64, 4 * np.sqrt(n)), n // 40)))
    quantizer = faiss.IndexFlatIP(dim)
    if not compress:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        _quiet(index.cp)
        return index, min(n, 40 * nlist)
    m, nbits = _pq_shape(dim, n, budget)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64  # k-means of the lists on a sample that fits
    _quiet(index.cp)
    _quick_codebooks(index.pq)
    index.cp.niter = 10
    return index, min(n, max(40 * nlist, 256 * 40), 32 * nlist + 65_536)

def _pq_shape(dim: int, n: int, budget: int) -> tuple[int, int]:
    """(bytes a code, bits a codeword) of the product quantizer for n vectors: the largest code
    (d/4, d/8 or d/16 bytes) whose codes and ids take at most half the budget."""
    m = next((m for m in (dim // 4, dim // 8, dim // 16) if m and dim % m == 0 and n * (m + 8) <= budget // 2), None)
    nbits = int(min(8, max(1, np.log2(max(2, n // 40)))))  # 256 codewords need 10k training points
    return m or max(1, dim // 16), nbits

def _graph(dim: int, pq_m: int = 0, pq_nbits: int = 8) -> Any:
    """An empty HNSW graph in an id map: over the vectors, or with pq_m over product-quantized
    codes of pq_m bytes (to be trained)."""
    faiss = load_faiss()
    if not pq_m:
        return faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT))
    # L2 on unit vectors ranks as inner product does; the shortlist is re-ranked exactly anyway
    graph = faiss.IndexHNSWPQ(dim, pq_m, HNSW_M // 2, pq_nbits)
    _quick_codebooks(faiss.downcast_index(graph.storage).pq)
    return faiss.IndexIDMap2(graph)


def exact_truth(queries: np.ndarray, chunks: Iterator[tuple[np.ndarray, np.ndarray]], dim: int) -> np.ndarray:
    """The true top 10 ids (q, 10) of queries among the chunks' vectors."""
    truth = _Truth(queries, 10)
    for ids, chunk in chunks:
        truth.update(ids, as_vectors(chunk, dim))
    return truth.ids


class _Truth:
    """The exact top-k ids of some queries, merged chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.scores, self.ids = merge_top(self.scores, self.ids, self.queries @ vectors.T, np.asarray(ids, np.int64), self.k)



def _up_to(ladder: list[int] | tuple[int, ...], n: int) -> list[int]:
    """The steps of an ascending ladder of search efforts up to the first that reaches n vectors
    (a longer walk or shortlist cannot find more): a small index is tuned in a few steps."""
    below = [x for x in ladder if x < n]
    return below + [x for x in ladder if x >= n][:1]


def recall_of(truth: np.ndarray, found: np.ndarray) -> float:
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
