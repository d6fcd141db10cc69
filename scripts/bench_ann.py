"""Approximate vs exact search at scale, through searchlite's VectorIndex. Prints JSON.

    python scripts/bench_ann.py                  # 1,000,000 x 512 (about 6 GB of RAM while it runs)
    python scripts/bench_ann.py --n 200000

The vectors are unit vectors drawn around 2,000 centres (clustered, like real image embeddings);
the queries come from the same distribution and are not in the index. Single queries, one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from searchlite import VectorIndex


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for start in range(0, n, 100_000):  # in chunks: bounded temporary memory
        m = min(100_000, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, d)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def p50_ms(index: VectorIndex, queries: np.ndarray) -> tuple[float, np.ndarray]:
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q[None, :], 10)
        times.append(time.perf_counter() - started)
        found.append(ids[0])
    return 1000 * statistics.median(times), np.stack(found)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, args.dim)).astype(np.float32)
    vectors = clustered(args.n, args.dim, rng, centres)
    queries = clustered(args.queries, args.dim, rng, centres)
    ids = np.arange(args.n, dtype=np.int64)

    index = VectorIndex(args.dim)
    index.add(ids, vectors)
    del vectors
    exact_ms, truth = p50_ms(index, queries)
    faiss.omp_set_num_threads(2)  # building may use both cores
    started = time.perf_counter()
    chosen = index.optimize()
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    ann_ms, found = p50_ms(index, queries)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), found.tolist())]))
    result = {
        "vectors": args.n,
        "dim": args.dim,
        "structure": chosen,
        "build_seconds": round(build_s, 1),
        "exact_p50_ms": round(exact_ms, 2),
        "ann_p50_ms": round(ann_ms, 3),
        "latency_ratio": round(ann_ms / exact_ms, 4),
        "recall_at_10": round(recall, 4),
        "index_bytes": len(index.to_bytes()),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
