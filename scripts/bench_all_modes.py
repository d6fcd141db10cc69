"""The "all" query modes at scale: `--sort date`, `--all` and `--sort date --min-score` answered by
a warm SearchEngine over --n indexed files (1,000,000 x 512 by default), on each structure asked
for. Prints JSON: seconds per mode (median, min, max over --rounds rounds) and the hits returned.

    python scripts/bench_all_modes.py --structures exact --modes sort_date,sort_date_min_score   # 1M x 512
    python scripts/bench_all_modes.py --n 100000 --structures exact,ivf,hnsw,ivfpq,hnswpq

The stand-in index is built once under --work: --n small distinct files (their pixels are never
read), a tiny random CLIP whose embedding has --dim numbers (for the model's identity and the
tuning queries only), and bench_ann's CLIP-like vectors. The first rows go in through
SearchEngine.import_embeddings (which records the model); the rest are written to SQLite in bulk,
as bench_ann writes its stand-in database (importing a million files one by one through the API
takes half an hour here), with capture times spread over ten years. The FAISS file is then built
from SQLite, the source of truth, by optimize(structure=...) for each structure measured. Queries
are bench_ann's text-like vectors (across the modality gap), given to search_vector(); "warm" means
the engine has answered the same query once before the rounds are timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from searchlite import SearchEngine

HERE = Path(__file__).resolve().parent
SEED_ROWS = 1000  # imported through the public API; the rest is written to SQLite in bulk
IMPORT_CHUNK = 100_000  # rows per bulk insert
MODES = {
    "sort_date": {"sort": "date"},
    "all": {"all_ranked": True},
    "all_k100": {"all_ranked": True, "limit": 100},  # --all -k 100
    "sort_date_min_score": {"sort": "date", "min_score": 0.15},
}


def bench_ann():
    spec = importlib.util.spec_from_file_location("bench_ann", HERE / "bench_ann.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ann"] = module
    spec.loader.exec_module(module)
    return module


def tiny_model(folder: Path, dim: int) -> tuple[str, str]:
    """(config, checkpoint) of a tiny random CLIP with dim-number embeddings."""
    import open_clip
    import torch

    config = {
        "embed_dim": dim,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    path = folder / f"tiny-clip-{dim}.json"
    checkpoint = folder / f"tiny-clip-{dim}.pt"
    if not checkpoint.exists():
        path.write_text(json.dumps(config))
        torch.manual_seed(0)
        torch.save(open_clip.CLIP(**config).state_dict(), checkpoint)
    return str(path), str(checkpoint)


def build(work: Path, n: int, dim: int, seed: int) -> tuple[Path, tuple[str, str]]:
    """The stand-in index under work (made once)."""
    ann = bench_ann()
    index = work / "index"
    model = tiny_model(work, dim)
    if (work / "built").exists():
        return index, model
    world = ann.directions(dim, seed)
    started = time.perf_counter()
    paths = []
    for i in range(n):
        path = work / "files" / f"{i // 1000:04d}" / f"{i:07d}.jpg"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(b"\xff\xd8" + i.to_bytes(4, "little"))  # distinct files; their pixels are never read
        paths.append(str(path))
    print(f"{n} files ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    with SearchEngine.open(index, model=model[0], pretrained=model[1]) as engine:  # the index, its model and the first rows
        np.save(work / "seed.npy", ann.images(min(n, SEED_ROWS), dim, np.random.default_rng([seed, 1, 0]), world))
        (work / "seed.txt").write_text("\n".join(paths[:SEED_ROWS]))
        assert engine.import_embeddings(work / "seed.npy", work / "seed.txt") == (min(n, SEED_ROWS), 0)
    conn = sqlite3.connect(index / "searchlite.db")
    for start in range(SEED_ROWS, n, IMPORT_CHUNK):
        vectors = ann.images(min(IMPORT_CHUNK, n - start), dim, np.random.default_rng([seed, 1, start]), world)
        rows = [(start + 1 + j, os.fsencode(paths[start + j]), 6, 0, f"stand-in-{start + j}", "indexed", v.tobytes()) for j, v in enumerate(vectors)]
        conn.executemany("INSERT INTO images (id, path, size, mtime_ns, content_hash, state, vector) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO vectors (image_id, kind) VALUES (?, 'image')", ((r[0],) for r in rows))
        conn.commit()
        print(f"{start + len(rows)} of {n} rows ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    # capture times over ten years, in no relation to the files' order
    conn.execute("UPDATE images SET taken_at = strftime('%Y-%m-%dT%H:%M:%S', 1420070400 + (id * 2654435761) % 315360000, 'unixepoch')")
    conn.commit()
    conn.close()
    for name in ("seed.npy", "seed.txt"):
        (work / name).unlink()
    (work / "built").touch()
    return index, model


def timed(fn, rounds: int) -> tuple[dict, int]:
    fn()  # warm: the first call after a rebuild
    times, count = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        count = len(fn())
        times.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "max_s": round(max(times), 3)}, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--structures", default="exact,ivf", help="comma-separated: exact, ivf, hnsw, ivfpq, hnswpq, auto")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="where the stand-in index is kept (default: /tmp/searchlite-bench-all-modes/NxD)")
    args = parser.parse_args()
    work = Path(args.work or f"/tmp/searchlite-bench-all-modes/{args.n}x{args.dim}")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    index, model = build(work, args.n, args.dim, args.seed)
    report: dict = {"vectors": args.n, "dim": args.dim, "rounds": args.rounds, "build_seconds": round(time.perf_counter() - started, 1), "cpus": os.cpu_count()}
    query = bench_ann().texts(1, args.dim, np.random.default_rng([args.seed, 2]), bench_ann().directions(args.dim, args.seed))[0][0]
    for structure in args.structures.split(","):
        with SearchEngine.open(index, model=model[0], pretrained=model[1]) as engine:
            started = time.perf_counter()
            chosen = engine.optimize(structure=structure)
            result: dict = {"kind": chosen["kind"], "optimize_seconds": round(time.perf_counter() - started, 1)}
            for name in args.modes.split(","):
                result[name], result[f"{name}_hits"] = timed(lambda: engine.search_vector(query, **MODES[name]), args.rounds)
            report[structure] = result
        print(json.dumps({structure: result}), file=sys.stderr)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
