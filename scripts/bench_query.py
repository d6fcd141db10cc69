"""Query latency, each next to its naive baseline measured in the same run. Prints JSON.

- warm text queries through the library (p50/p95; the exported text tower in onnxruntime), against
  open_clip's own encode_text, and against the truncated torch tower searchlite uses when a model
  has no export; the first text query of a fresh engine (the exported tower in numpy);
- a cold `searchlite query` (a new process) on an index of --index-size images, against the naive
  cold path: a new Python process that imports torch and open_clip, creates the model with its
  weights and encodes one text; and a cold library query that loads the torch model;
- `searchlite --help` against `python -c "import torch"`.

--images photos are encoded; the rest of the index (up to --index-size) gets random unit vectors
through `import_embeddings`, which costs the cold query the same as encoded ones.

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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from searchlite import SearchEngine
from searchlite.config import model_cache_dir
from searchlite.text.tower import TextTower

QUERIES = ["a dog on grass", "a red car parked on the street", "sunset over the sea", "a cat", "two people hiking in the mountains"]


def timed(cmd: list[str], env: dict[str, str], repeats: int) -> float:
    """Median wall time of a command, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# the naive cold path: what a script using open_clip directly pays for one text query
NAIVE_COLD = """
import sys, torch, open_clip
model, _, _ = open_clip.create_model_and_transforms(sys.argv[1], pretrained=sys.argv[2])
tokenizer = open_clip.get_tokenizer(sys.argv[1])
with torch.inference_mode():
    model.encode_text(tokenizer(["a dog on grass"]), normalize=True)
"""

# a cold query through the torch text tower (the model loaded, as before searchlite/text/tower.py)
TORCH_QUERY = """
import sys
from searchlite import SearchEngine
with SearchEngine.open(sys.argv[1]) as engine:
    engine.load_model().encode_texts(["a dog on grass"])
    engine.search("a dog on grass")
"""


def timed_call(fn: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def ms(seconds: float) -> float:
    return round(1000 * seconds, 1)


def add_imported(engine: SearchEngine, folder: Path, n: int, rng: np.random.Generator) -> None:
    """n more indexed images (small JPEG files) with random unit vectors, without encoding them."""
    if n <= 0:
        return
    extra = folder / "extra"
    extra.mkdir()
    paths = []
    for i in range(n):
        path = extra / f"{i:06d}.jpg"
        path.write_bytes(b"\xff\xd8" + i.to_bytes(4, "little"))  # distinct files; their pixels are never read
        paths.append(str(path))
    dim = engine.embed_text(["a"]).shape[1]
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    np.save(folder / "extra.npy", vectors)
    (folder / "extra.txt").write_text("\n".join(paths))
    engine.import_embeddings(folder / "extra.npy", folder / "extra.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="photos encoded into the index (copies of samples)")
    parser.add_argument("--index-size", type=int, default=10_000, help="images in the index in all")
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
            add_imported(engine, Path(tmp), args.index_size - args.images, rng)
            engine.search(QUERIES[0])  # warm-up: the text tower and FAISS loaded, onnxruntime set up
            engine.search(QUERIES[1])
            assert isinstance(engine.text_encoder(), TextTower) and engine.text_encoder().uses_onnx
            encoder, tower = engine.load_model(), engine.text_encoder()
            numpy_only = TextTower.load(model_cache_dir(engine.model_key()) / "text_tower.safetensors", engine.model_key())
            numpy_only._start_onnx = lambda x, mask, eot: numpy_only._transformer(x, mask)  # never moves to onnxruntime

            def naive_encode_text(text: str) -> None:  # open_clip's own encode_text, all 77 positions
                with torch.inference_mode():
                    encoder.model.encode_text(encoder.tokenize([text]), normalize=True)

            methods = {
                "warm_query": lambda text: engine.search(text, k=10),
                "naive_encode_text": naive_encode_text,
                "text_tower_onnx": lambda text: tower.encode_texts([text]),
                "text_tower_numpy": lambda text: numpy_only.encode_texts([text]),
                "text_tower_torch": lambda text: encoder.encode_texts([text]),
            }
            # Each in a block of its own (two rounds), with distinct texts (no cache hits): torch's,
            # onnxruntime's and OpenBLAS's threads each keep spinning for a while after a call, and
            # would slow whichever runs next on these two cores.
            times: dict[str, list[float]] = {name: [] for name in methods}
            for round_ in range(2):
                for name, method in methods.items():
                    for i in range(args.warm_queries // 2):
                        text = f"{QUERIES[i % len(QUERIES)]} {name} {round_} {i}"
                        times[name].append(timed_call(method, text))
            cached = [timed_call(engine.search, QUERIES[0]) for _ in range(args.warm_queries)]
            model_name, tag = engine.spec.name, engine.spec.pretrained
        first = []
        for i in range(args.repeats):  # as an app opens it: the first text query runs in numpy
            with SearchEngine.open(index) as engine:
                engine.vectors
                first.append(timed_call(engine.search, f"{QUERIES[i % len(QUERIES)]} first {i}"))
                assert not engine.text_encoder().uses_onnx

        env = {**os.environ, "SEARCHLITE_INDEX": str(index)}
        searchlite = [sys.executable, "-m", "searchlite"]
        import_torch = timed([sys.executable, "-c", "import torch"], env, args.repeats)
        cold_query = timed([*searchlite, "query", "a dog on grass"], env, args.repeats)
        torch_query = timed([sys.executable, "-c", TORCH_QUERY, str(index)], env, args.repeats)
        naive_cold = timed([sys.executable, "-c", NAIVE_COLD, model_name, tag], env, args.repeats) if model_name and tag else None
        help_time = timed([*searchlite, "--help"], env, args.repeats)
        result = {
            "images": args.index_size,
            **{f"{name}_p50_ms": ms(statistics.median(values)) for name, values in times.items()},
            "warm_query_p95_ms": ms(float(np.percentile(times["warm_query"], 95))),
            "warm_query_over_naive_encode_text": round(statistics.median(times["warm_query"]) / statistics.median(times["naive_encode_text"]), 3),
            "first_query_of_an_engine_ms": ms(statistics.median(first)),
            "repeated_query_p50_ms": ms(statistics.median(cached)),
            "cold_cli_query_s": round(cold_query, 2),
            "cold_library_query_torch_s": round(torch_query, 2),
            "naive_cold_query_s": naive_cold and round(naive_cold, 2),
            "cold_cli_query_over_naive": naive_cold and round(cold_query / naive_cold, 3),
            "help_s": round(help_time, 3),
            "import_torch_s": round(import_torch, 2),
            "help_over_import_torch": round(help_time / import_torch, 3),
        }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
