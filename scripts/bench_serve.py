"""`searchlite serve` under load: --clients concurrent clients for --duration seconds of mixed text
and image queries (POST /api/search with a file) against an index of --index-size images; errors,
p50/p95 per kind, next to the same text queries as library calls (engine.search) in this process,
one at a time and from as many threads as there are clients. Prints JSON.

The server is a real `python -m searchlite serve --port 0` process; the clients are threads here,
each with its own HTTP connection. Texts are drawn from ~18,000 distinct phrases (so the text cache
rarely answers); image queries upload sample photos with a few random bytes after their end (so
each one is decoded in the isolated decoder and encoded, never answered from the upload cache).
A few real photos are indexed; the rest of the index is hard links to them whose embeddings are
random unit vectors (import_embeddings), which costs a search the same as encoded ones.

    python scripts/prefill_hf_cache.py /tmp/hf    # RANDOM weights for the default model (timing only)
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 python scripts/bench_serve.py --duration 60
    python scripts/bench_serve.py --model searchlite-shapes --duration 10   # a quick run, tiny model
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ADJECTIVES = "red blue green yellow old young small big happy sleepy wet snowy sunny dark bright wooden shiny rusty tall tiny striped spotted fluffy quiet busy empty broken golden silver purple".split()
NOUNS = "dog cat car bicycle house tree boat horse bird child woman man bridge mountain flower coffee cup train airplane street beach lake sofa guitar book clock lamp window door garden".split()
PLACES = "on grass,in the city,at night,in the rain,by the sea,in a forest,on a table,in the snow,at sunset,indoors,on a road,in a field,under a tree,on a beach,in the mountains,near a river,in a kitchen,at a market,in a park,on a bridge".split(",")


def phrases(rng: random.Random) -> str:
    return f"a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(PLACES)}"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    }


def build_index(root: Path, size: int, model: str | None, pretrained: str | None) -> tuple[Path, list[Path]]:
    """A few real photos indexed for real; hard links to them up to size, with random vectors."""
    from searchlite import SearchEngine

    spec = importlib.util.spec_from_file_location("make_sample_photos", Path(__file__).parent / "make_sample_photos.py")
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    photos = root / "photos"
    real = [p for p in samples.write_samples(photos) if p.suffix.lower() in (".jpg", ".png")]
    index = root / "index"
    with SearchEngine.open(index, model=model, pretrained=pretrained) as engine:
        engine.index(photos)
        dim = engine.info()["dim"]
        copies = photos / "copies"
        copies.mkdir()
        paths = []
        for i in range(size - engine.info()["images"]):
            source = real[i % len(real)]
            target = copies / f"{i:06d}{source.suffix}"
            os.link(source, target)
            paths.append(str(target))
        vectors = np.random.default_rng(0).standard_normal((len(paths), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        np.save(root / "emb.npy", vectors)
        (root / "emb.txt").write_text("\n".join(paths) + "\n")
        engine.import_embeddings(root / "emb.npy", root / "emb.txt")
        assert engine.info()["images"] == size, engine.info()
    return index, real


def library_latencies(index: Path, texts: list[str], threads: int, k: int) -> tuple[dict, dict]:
    """engine.search(text) one at a time, then from `threads` threads at once."""
    from searchlite import SearchEngine

    with SearchEngine.open(index, create=False) as engine:
        engine.search("warm up", k=k)
        alone = []
        for text in texts:
            start = time.perf_counter()
            engine.search(text, k=k)
            alone.append(time.perf_counter() - start)
        together: list[float] = []
        lock = threading.Lock()

        def one(text: str) -> None:
            start = time.perf_counter()
            engine.search(text, k=k)
            with lock:
                together.append(time.perf_counter() - start)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, [t + " again" for t in texts]))
    return percentiles(alone), percentiles(together)


def start_server(index: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "searchlite", "serve", "--index", str(index), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the server did not start: {proc.stderr.read()}")
    return proc, url


def load(url: str, clients: int, duration: float, image_share: float, images: list[Path], k: int) -> dict:
    import httpx

    results: dict[str, list[float]] = {"text": [], "image": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration
    blobs = [p.read_bytes() for p in images]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.perf_counter() < stop_at:
                kind = "image" if rng.random() < image_share else "text"
                start = time.perf_counter()
                try:
                    if kind == "text":
                        response = http.get("/api/search", params={"q": phrases(rng), "k": k})
                    else:
                        i = rng.randrange(len(blobs))
                        data = blobs[i] + rng.randbytes(16)  # new bytes: no upload-cache hit
                        response = http.post("/api/search", files={"image": (images[i].name, data)}, data={"k": str(k)})
                    ok = response.status_code == 200 and "hits" in response.json()
                    if not ok:
                        raise RuntimeError(f"{response.status_code} {response.text[:200]}")
                except Exception as e:  # noqa: BLE001 - every failure counts as an error
                    with lock:
                        errors.append(f"{kind}: {e}")
                    continue
                with lock:
                    results[kind].append(time.perf_counter() - start)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    total = sum(len(v) for v in results.values())
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "errors": len(errors),
        "first_errors": errors[:5],
        "text": percentiles(results["text"]),
        "image": percentiles(results["image"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--index-size", type=int, default=10_000)
    parser.add_argument("--image-share", type=float, default=0.2, help="share of image queries")
    parser.add_argument("--k", type=int, default=60, help="results per query (a page of the web UI)")
    parser.add_argument("--library-queries", type=int, default=100)
    parser.add_argument("--model")
    parser.add_argument("--pretrained")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        index, real = build_index(Path(tmp), args.index_size, args.model, args.pretrained)
        rng = random.Random(1)
        texts = [phrases(rng) for _ in range(args.library_queries)]
        alone, together = library_latencies(index, texts, args.clients, args.k)
        proc, url = start_server(index)
        try:
            import httpx

            with httpx.Client(base_url=url, timeout=120) as http:  # one client: the HTTP overhead alone
                start = time.perf_counter()  # the first image query waits for the image tower (torch)
                http.post("/api/search", files={"image": (real[0].name, real[0].read_bytes())}).raise_for_status()
                first_image = time.perf_counter() - start
                single = []
                for text in texts:
                    start = time.perf_counter()
                    http.get("/api/search", params={"q": text + " once more", "k": args.k}).raise_for_status()
                    single.append(time.perf_counter() - start)
            loaded = load(url, args.clients, args.duration, args.image_share, real, args.k)
        finally:
            proc.terminate()
            proc.wait(30)
        from searchlite import SearchEngine

        with SearchEngine.open(index, create=False) as engine:
            model = engine.info()["model"]
    single_p = percentiles(single)
    report = {
        "model": model,
        "index_images": args.index_size,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "library_text_one_at_a_time": alone,
        f"library_text_{args.clients}_threads": together,
        "server_first_image_query_ms": round(1000 * first_image, 1),
        "server_text_one_client": single_p,
        "server_under_load": loaded,
        "ratio_text_p50_one_client_vs_library": round(single_p["p50_ms"] / alone["p50_ms"], 2),
        f"ratio_text_p50_under_load_vs_library_{args.clients}_threads": round(loaded["text"]["p50_ms"] / together["p50_ms"], 2)
        if loaded["text"].get("n") else None,
        "ratio_text_p50_under_load_vs_library_one_at_a_time": round(loaded["text"]["p50_ms"] / alone["p50_ms"], 2) if loaded["text"].get("n") else None,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
