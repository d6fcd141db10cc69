"""Query latency: warm text queries through the library (p50/p95), a cold CLI query (a new process),
and `searchlite --help`, next to `python -c "import torch"` measured in the same run. Prints JSON.

    python scripts/bench_query.py --images 200
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 python scripts/bench_query.py  # after scripts/prefill_hf_cache.py /tmp/hf
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from searchlite import SearchEngine

QUERIES = ["a dog on grass", "a red car parked on the street", "sunset over the sea", "a cat", "two people hiking in the mountains"]


def timed(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    """Median wall time of a command, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="photos in the index (copies of samples)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each cold command")
    parser.add_argument("--warm-queries", type=int, default=50)
    parser.add_argument("--model")
    parser.add_argument("--pretrained")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from make_sample_photos import write_samples

    with tempfile.TemporaryDirectory() as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        samples = write_samples(Path(tmp) / "samples")
        photos.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):  # distinct files (one byte differs) so each one is encoded
            data = samples[i % len(samples)].read_bytes()
            (photos / f"{i:05d}{samples[i % len(samples)].suffix}").write_bytes(data + bytes(rng.integers(0, 255, 8)))
        with SearchEngine.open(index, model=args.model, pretrained=args.pretrained) as engine:
            engine.index(photos)
            engine.search(QUERIES[0])  # warm-up: model loaded, FAISS loaded
            latencies, naive, cached = [], [], []
            encoder = engine._get_encoder()
            for i in range(args.warm_queries):
                text = f"{QUERIES[i % len(QUERIES)]} {i}"  # distinct texts: no cache hits
                started = time.perf_counter()
                engine.search(text, k=10)
                latencies.append(time.perf_counter() - started)
                started = time.perf_counter()
                engine.search(text, k=10)  # the same text again: from the cache
                cached.append(time.perf_counter() - started)
                started = time.perf_counter()
                with torch.inference_mode():  # open_clip's own encode_text, all 77 positions
                    encoder.model.encode_text(encoder.tokenize([text + "!"]), normalize=True)
                naive.append(time.perf_counter() - started)

        env = {**os.environ, "SEARCHLITE_INDEX": str(index)}
        searchlite = [sys.executable, "-m", "searchlite"]
        import_torch = timed([sys.executable, "-c", "import torch"], env, args.repeats)
        cold_query = timed([*searchlite, "query", "a dog on grass"], env, args.repeats)
        help_time = timed([*searchlite, "--help"], env, args.repeats)
        result = {
            "images": args.images,
            "warm_query_p50_ms": round(1000 * statistics.median(latencies), 1),
            "warm_query_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
            "naive_encode_text_p50_ms": round(1000 * statistics.median(naive), 1),
            "warm_query_over_naive_encode_text": round(statistics.median(latencies) / statistics.median(naive), 3),
            "repeated_query_p50_ms": round(1000 * statistics.median(cached), 1),
            "cold_cli_query_s": round(cold_query, 2),
            "help_s": round(help_time, 3),
            "import_torch_s": round(import_torch, 2),
        }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
