"""Indexing throughput: end-to-end `SearchEngine.index` on camera-sized JPEGs vs. the model alone
on ready inputs (the image encoder an index run uses: on a CPU the exported ONNX tower; torch's
encode_image beside it), vs. decoding alone, and vs. the serial estimate 1/(1/model + 1/decode): the
rate if decoding and encoding took turns on the cores. It is not a ceiling: an index run decodes the
next batch in the model's idle time, so it can pass it. Same model, same machine, same run; prints
JSON with every round.

    python scripts/bench_index.py --images 64                      # default model (needs its weights)
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 python scripts/bench_index.py  # after scripts/prefill_hf_cache.py /tmp/hf
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from searchlite import SearchEngine
from searchlite.config import IndexSettings


def make_photos(folder: Path, n: int, size: tuple[int, int]) -> None:
    """n distinct camera-sized JPEGs made from scikit-image's photos (rotated, shifted, tinted)."""
    import skimage.data

    sources = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(0)
    for i in range(n):
        base = Image.fromarray(sources[i % len(sources)]).convert("RGB")
        img = base.rotate(float(rng.uniform(-20, 20)), expand=False).resize(size, Image.BICUBIC)
        tint = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
        Image.blend(img, tint, 0.1).save(folder / f"photo_{i:04d}.jpg", quality=90)


def model_only(engine: SearchEngine, folder: Path, batch_size: int, repeats: int) -> float:
    """img/s of the image encoder an index run uses (on a CPU, the exported ONNX tower) on ready
    inputs: decoded, preprocessed and batched before the clock starts."""
    encoder = engine.image_encoder()
    img = Image.open(next(folder.glob("*.jpg"))).convert("RGB")
    batch = [encoder.preprocess(img)] * batch_size
    encoder.encode_images(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        encoder.encode_images(batch)
    return batch_size * repeats / (time.perf_counter() - started)


def torch_only(engine: SearchEngine, folder: Path, batch_size: int, repeats: int) -> float:
    """img/s of open_clip's encode_image on ready tensors (the torch tower, for comparison)."""
    import torch

    encoder = engine.load_model()
    img = Image.open(next(folder.glob("*.jpg"))).convert("RGB")
    batch = torch.stack([encoder.open_clip_transform(img)] * batch_size)
    with torch.inference_mode():
        encoder.model.encode_image(batch, normalize=True)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            encoder.model.encode_image(batch, normalize=True)
    return batch_size * repeats / (time.perf_counter() - started)


def decode_only(engine: SearchEngine, folder: Path, settings: IndexSettings) -> float:
    """img/s of what an index run does before the model: read each file and decode it in the
    decoder processes (all workers at once, as an index run drives them), then preprocess."""
    from concurrent.futures import ThreadPoolExecutor

    from searchlite.media.decode_worker import DecodePool
    from searchlite.media.embed_files import decode_options

    encoder = engine.image_encoder()
    options = decode_options(settings, encoder)
    paths = sorted(folder.glob("*.jpg"))
    pool = DecodePool(settings.workers, settings.decode_timeout_s, settings.decoder_memory_limit)
    try:
        pool.decode(paths[0].read_bytes(), **options)  # the decoder processes start before the clock
        started = time.perf_counter()
        with ThreadPoolExecutor(settings.workers) as threads:
            list(threads.map(lambda p: encoder.preprocess(pool.decode(p.read_bytes(), **options).image), paths))
        return len(paths) / (time.perf_counter() - started)
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--model")
    parser.add_argument("--pretrained")
    parser.add_argument("--batch-size", type=int, default=IndexSettings.batch_size, help="0: by device (32 on a CPU)")
    parser.add_argument("--workers", type=int, default=IndexSettings.workers)
    parser.add_argument("--draft-factor", type=int, default=IndexSettings.draft_factor)
    parser.add_argument("--rounds", type=int, default=3, help="index runs (each into a new index), each after a model-only run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photos(photos, args.images, (args.width, args.height))
        settings = IndexSettings(batch_size=args.batch_size, workers=args.workers, draft_factor=args.draft_factor)
        indexing, model, decoding = [], [], []
        # rounds alternate the model alone with an index run: on a shared machine the speed drifts,
        # and the medians of alternating rounds compare like with like
        for i in range(args.rounds):
            with SearchEngine.open(Path(tmp) / f"index{i}", model=args.model, pretrained=args.pretrained, settings=settings) as engine:
                # export the model's towers (once per model) and load them before the clock starts
                engine.image_encoder()
                engine.text_encoder()
                batch_size = settings.batch_size_on(engine.image_encoder().device)
                if i == 0:
                    torch_rate = torch_only(engine, photos, batch_size, repeats=4)
                model.append(model_only(engine, photos, batch_size, repeats=4))
                decoding.append(decode_only(engine, photos, settings))
                started = time.perf_counter()
                report = engine.index(photos)
                indexing.append(report.encoded / (time.perf_counter() - started))
        serial = 1 / (1 / statistics.median(model) + 1 / statistics.median(decoding))
        result = {
            "model": engine.spec.describe(),
            "images": report.encoded,
            "image_size": [args.width, args.height],
            "batch_size": batch_size,
            "workers": args.workers,
            "draft_factor": args.draft_factor,
            "image_encoder": type(engine.image_encoder()).__name__,
            "index_img_per_s": round(statistics.median(indexing), 2),
            "model_only_img_per_s": round(statistics.median(model), 2),
            "torch_model_only_img_per_s": round(torch_rate, 2),
            "decode_only_img_per_s": round(statistics.median(decoding), 2),
            # decoding and the model taking turns: one image costs 1/model + 1/decode seconds
            "serial_estimate_img_per_s": round(serial, 2),
            "ratio_to_model": round(statistics.median(indexing) / statistics.median(model), 3),
            "ratio_to_serial_estimate": round(statistics.median(indexing) / serial, 3),
            "rounds_index_img_per_s": [round(x, 2) for x in indexing],
            "rounds_model_only_img_per_s": [round(x, 2) for x in model],
            "rounds_decode_only_img_per_s": [round(x, 2) for x in decoding],
        }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
