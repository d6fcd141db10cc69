"""Approximate vs exact search at scale, through searchlite's VectorIndex, on a stand-in with CLIP's
modality gap. Prints JSON.

    python scripts/bench_ann.py                                     # 1,000,000 x 512: flat, ivf, hnsw, auto
    python scripts/bench_ann.py --n 2000000 --memory-budget 600000000 --structures flat,ivf,ivfpq
    python scripts/bench_ann.py --n 200000 --structures flat,ivf,hnsw,ivfpq --memory-budget 60000000

The stand-in: image vectors are unit vectors around 2,000 concept centres, all shifted along one
"image" direction (their cone); text queries describe a concept of a new image with noise and are
shifted along another, orthogonal "text" direction, so that a text and its image have cosine
~0.25-0.3, as CLIP's do. Evaluation queries are texts (out of distribution) and, apart, new images.
Every structure is searchlite's own, built and tuned by VectorIndex.optimize(structure=...): ivf,
hnsw and ivfpq as named, "auto" what optimize(queries=...) picks (IVF-Flat or HNSW, or IVF-PQ past
the budget).
Tuning queries are other texts drawn the same way (the engine embeds generic phrases), or indexed
vectors with noise (what optimize() tunes on without queries).

Each structure is measured in a process of its own, so that its resident memory (memory-mapped
pages included) is its own: the data is generated once, in chunks, into a .npy under --cache
(deterministic), and read back in chunks. Queries run one at a time on one thread; builds use all
cores. ivfpq re-ranks with the exact vectors from SQLite, as the engine does (--rerank-from file
reads them from the .npy instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = 50_000
GAP = 1.0  # length of the modality offset added to a unit content vector
TEXT_NOISE = 1.5  # a text's content = its image's concept content + this much noise


def directions(d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    image_dir, text_dir = rng.standard_normal((2, d))
    image_dir /= np.linalg.norm(image_dir)
    text_dir -= (text_dir @ image_dir) * image_dir
    text_dir /= np.linalg.norm(text_dir)
    centres = rng.standard_normal((2000, d)).astype(np.float32)
    return image_dir.astype(np.float32), text_dir.astype(np.float32), centres


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def contents(m: int, d: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    return unit(centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, d)).astype(np.float32))


def images(m: int, d: int, rng: np.random.Generator, world: tuple) -> np.ndarray:
    image_dir, _, centres = world
    return unit(GAP * image_dir + contents(m, d, rng, centres))


def texts(m: int, d: int, rng: np.random.Generator, world: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(text queries, the images they describe)."""
    image_dir, text_dir, centres = world
    z = contents(m, d, rng, centres)
    noise = unit(rng.standard_normal((m, d))) * TEXT_NOISE
    return unit(GAP * text_dir + unit(z + noise)), unit(GAP * image_dir + z)


def read_rows(path: Path, start: int, count: int, d: int) -> np.ndarray:
    """Rows of the .npy by reading (not memory-mapping) them: they count in no process's memory."""
    with open(path, "rb") as f:
        f.seek(header_bytes(path) + start * d * 4)
        return np.fromfile(f, dtype=np.float32, count=count * d).reshape(-1, d)


def header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


class FileVectors:
    """ExactVectors from the .npy, read with pread (ids are row numbers)."""

    def __init__(self, path: Path, n: int, d: int) -> None:
        self.path, self.n, self.d = path, n, d
        self._fd = os.open(path, os.O_RDONLY)
        self._offset = header_bytes(path)

    def __len__(self) -> int:
        return self.n

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.sort(np.asarray(ids, np.int64))
        ids = ids[(ids >= 0) & (ids < self.n)]
        row = self.d * 4
        data = b"".join(os.pread(self._fd, row, self._offset + int(i) * row) for i in ids)
        return ids, np.frombuffer(data, np.float32).reshape(len(ids), self.d)

    def chunks(self):
        for start in range(0, self.n, CHUNK):
            rows = read_rows(self.path, start, min(CHUNK, self.n - start), self.d)
            yield np.arange(start, start + len(rows), dtype=np.int64), rows


def prepare(args: argparse.Namespace) -> dict:
    """Data, queries and exact answers under args.cache (made once per size and seed)."""
    d, n = args.dim, args.n
    folder = Path(args.cache) / f"{n}x{d}-seed{args.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    world = directions(d, args.seed)
    data = folder / "images.npy"
    if not (folder / "images.done").exists():
        out = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=(n, d))
        for i, start in enumerate(range(0, n, CHUNK)):
            out[start : start + CHUNK] = images(min(CHUNK, n - start), d, np.random.default_rng([args.seed, 1, i]), world)
            out.flush()
        del out
        (folder / "images.done").touch()
    queries = folder / "queries.npz"
    if not queries.exists():
        text_eval, described = texts(args.queries, d, np.random.default_rng([args.seed, 2]), world)
        text_tune, _ = texts(300, d, np.random.default_rng([args.seed, 3]), world)
        image_eval = images(args.queries, d, np.random.default_rng([args.seed, 4]), world)
        truth = {}
        for name, q in (("text_eval", text_eval), ("image_eval", image_eval)):
            best_s = np.full((len(q), 10), -np.inf, np.float32)
            best_i = np.full((len(q), 10), -1, np.int64)
            for start in range(0, n, CHUNK):
                s = q @ read_rows(data, start, min(CHUNK, n - start), d).T
                all_s = np.concatenate([best_s, s], 1)
                all_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)], 1)
                top = np.argsort(-all_s, 1)[:, :10]
                best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
            truth[name] = best_i
        gap = {
            "cos_text_to_its_image": round(float(np.mean(np.sum(text_eval * described, 1))), 3),
            "cos_text_to_nearest_image": round(float(np.mean(text_eval @ read_rows(data, 0, min(n, CHUNK), d).T.max(1))), 3),
            "cos_image_to_image_mean": round(float(np.mean(image_eval[:100] @ image_eval[100:200].T)), 3),
            "cos_text_to_image_mean": round(float(np.mean(text_eval[:100] @ image_eval[:100].T)), 3),
        }
        np.savez(queries, text_eval=text_eval, text_tune=text_tune, image_eval=image_eval, **{f"truth_{k}": v for k, v in truth.items()},
                 gap=json.dumps(gap))
    db = folder / "searchlite.db"
    if "ivfpq" in args.structures and args.rerank_from == "sqlite" and not (folder / "db.done").exists():
        make_db(db, data, n, d)
        (folder / "db.done").touch()
    return {"folder": str(folder), "data": str(data), "queries": str(queries), "db": str(db)}


def make_db(db: Path, data: Path, n: int, d: int) -> None:
    """A searchlite database (its own schema, via Store) holding the vectors as indexed rows."""
    from searchlite.storage.store import Store

    Store.open(db).close()
    conn = sqlite3.connect(db)
    for start in range(0, n, CHUNK):
        rows = read_rows(data, start, min(CHUNK, n - start), d)
        conn.executemany(
            "INSERT INTO images (id, path, size, mtime_ns, state, vector) VALUES (?, ?, 0, 0, 'indexed', ?)",
            ((start + i, f"/stand-in/{start + i}.jpg".encode(), row.tobytes()) for i, row in enumerate(rows)),
        )
        # each file's own vector (kept in images.vector), under the FAISS id the truth uses
        conn.executemany("INSERT INTO vectors (id, image_id, kind) VALUES (?, ?, 'image')", ((start + i, start + i) for i in range(len(rows))))
        conn.commit()
    conn.close()


def memory() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_bytes": int(status["VmRSS"].split()[0]) * 1024, "peak_rss_bytes": int(status["VmHWM"].split()[0]) * 1024}


def timed_search(search, queries: np.ndarray, limit: int | None = None) -> tuple[float, float, np.ndarray]:
    times, found = [], []
    for q in queries[:limit]:
        started = time.perf_counter()
        ids = search(q[None, :])
        times.append(time.perf_counter() - started)
        found.append(ids[0])
    times.sort()
    return 1000 * statistics.median(times), 1000 * times[min(len(times) - 1, int(0.99 * len(times)))], np.stack(found)


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), found.tolist())]))


def measure(search, q: dict, limit: int | None = None) -> dict:
    p50, p99, found = timed_search(search, q["text_eval"], limit)
    out = {"text_queries": {"recall_at_10": round(recall(q["truth_text_eval"][: len(found)], found), 4), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}}
    p50, p99, found = timed_search(search, q["image_eval"], limit)
    out["image_queries"] = {"recall_at_10": round(recall(q["truth_image_eval"][: len(found)], found), 4), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
    return out


def child(args: argparse.Namespace, paths: dict) -> dict:
    import faiss

    from searchlite import VectorIndex

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    q = dict(np.load(paths["queries"]))
    n, d = args.n, args.dim
    data = Path(paths["data"])
    result: dict = {"structure": args.child, "baseline": memory()}
    source = FileVectors(data, n, d)
    started = time.perf_counter()
    if args.child == "flat":
        index = VectorIndex(d, use_gpu=False)
        for ids, rows in source.chunks():
            index.add(ids, rows)
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        result.update(measure(lambda x: index.search(x, 10)[1], q, limit=args.flat_queries))
    elif args.child == "ivf":
        index = VectorIndex(d, use_gpu=False, exact=source)
        chosen = index.optimize(force=True, structure="ivf")  # no queries: noisy indexed vectors
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        faiss.omp_set_num_threads(1)
        result["tuned_on_image_queries"] = {"chosen": chosen, **measure(lambda x: index.search(x, 10)[1], q)}
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        checked = index.retune(q["text_tune"])  # the same lists, probes re-tuned on text-like queries
        faiss.omp_set_num_threads(1)
        result["tuned_on_text_queries"] = {"chosen": checked, **measure(lambda x: index.search(x, 10)[1], q)}
    elif args.child == "ivfpq":
        from searchlite.storage.store import Store
        from searchlite.storage.vector_cache import StoreVectors

        exact = StoreVectors(Store.open(Path(paths["db"]))) if args.rerank_from == "sqlite" else source
        index = VectorIndex(d, use_gpu=False, exact=exact)
        chosen = index.optimize(force=True, structure="ivfpq", queries=q["text_tune"], memory_budget=args.memory_budget)
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        result["build_peak_rss_bytes"] = memory()["peak_rss_bytes"]
        faiss.omp_set_num_threads(1)
        result["tuned_on_text_queries"] = {"chosen": chosen, "rerank_from": args.rerank_from, **measure(lambda x: index.search(x, 10)[1], q)}
    elif args.child == "auto":  # what the engine's optimize picks when tuned on text-like queries
        index = VectorIndex(d, use_gpu=False, exact=source)
        chosen = index.optimize(force=True, queries=q["text_tune"], memory_budget=args.memory_budget)
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        result["build_peak_rss_bytes"] = memory()["peak_rss_bytes"]
        faiss.omp_set_num_threads(1)
        result["tuned_on_text_queries"] = {"chosen": chosen, **measure(lambda x: index.search(x, 10)[1], q)}
    elif args.child == "hnsw":  # searchlite's own graph (optimize(structure="hnsw")), tuned as ivf is
        index = VectorIndex(d, use_gpu=False, exact=source)
        chosen = index.optimize(force=True, structure="hnsw", memory_budget=10**15)  # no queries: noisy indexed vectors
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        faiss.omp_set_num_threads(1)
        result["tuned_on_image_queries"] = {"chosen": chosen, **measure(lambda x: index.search(x, 10)[1], q)}
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        checked = index.retune(q["text_tune"])  # the same graph, efSearch re-tuned on text-like queries
        faiss.omp_set_num_threads(1)
        result["tuned_on_text_queries"] = {"chosen": checked, **measure(lambda x: index.search(x, 10)[1], q)}
    result["memory"] = memory()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300, help="evaluation queries of each kind")
    parser.add_argument("--flat-queries", type=int, default=40, help="of them, timed on the flat index")
    parser.add_argument("--structures", default="flat,ivf,hnsw,auto",
                        help="flat, ivf (tuned on images, then on texts), hnsw (searchlite's graph, tuned the same two ways), "
                        "ivfpq (compressed, re-ranked), auto (what optimize(queries=texts) picks)")
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes, for ivfpq (default: the library's)")
    parser.add_argument("--rerank-from", choices=["sqlite", "file"], default="sqlite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="/tmp/searchlite-bench-ann")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.structures = args.structures.split(",")
    paths = prepare(args)
    if args.child:
        json.dump(child(args, paths), sys.stdout)
        return
    results = {}
    for structure in args.structures:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", structure], capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"{structure}: exit {out.returncode}")
        results[structure] = json.loads(out.stdout)
    gap = json.loads(str(np.load(paths["queries"])["gap"]))
    report = {"vectors": args.n, "dim": args.dim, "modality_gap": gap, "memory_budget": args.memory_budget, **results}
    if "flat" in results:
        flat = results["flat"]
        for name, r in results.items():
            for tuned in ("tuned_on_image_queries", "tuned_on_text_queries"):
                if tuned in r:
                    r[tuned]["text_latency_vs_flat"] = round(r[tuned]["text_queries"]["p50_ms"] / flat["text_queries"]["p50_ms"], 4)
            r["rss_vs_flat"] = round(r["memory"]["rss_bytes"] / flat["memory"]["rss_bytes"], 3)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
