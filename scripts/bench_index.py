"""Indexing throughput: end-to-end `SearchEngine.index` on camera-sized JPEGs vs. the model alone
(open_clip encode_image on ready tensors, same model, same machine, same run). Prints JSON.

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
    """img/s of open_clip's encode_image on ready tensors: decoded, preprocessed by open_clip's own
    transform and stacked before the clock starts."""
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
        indexing, model = [], []
        # rounds alternate the model alone with an index run: on a shared machine the speed drifts,
        # and the medians of alternating rounds compare like with like
        for i in range(args.rounds):
            with SearchEngine.open(Path(tmp) / f"index{i}", model=args.model, pretrained=args.pretrained, settings=settings) as engine:
                # load the model and write its text tower (once per index) before the clock starts
                engine.load_model()
                engine.text_encoder()
                batch_size = settings.batch_size_on(engine.load_model().device)
                model.append(model_only(engine, photos, batch_size, repeats=4))
                started = time.perf_counter()
                report = engine.index(photos)
                indexing.append(report.encoded / (time.perf_counter() - started))
        result = {
            "model": engine.spec.describe(),
            "images": report.encoded,
            "image_size": [args.width, args.height],
            "batch_size": batch_size,
            "workers": args.workers,
            "draft_factor": args.draft_factor,
            "index_img_per_s": round(statistics.median(indexing), 2),
            "model_only_img_per_s": round(statistics.median(model), 2),
            "ratio": round(statistics.median(indexing) / statistics.median(model), 3),
            "rounds_index_img_per_s": [round(x, 2) for x in indexing],
            "rounds_model_only_img_per_s": [round(x, 2) for x in model],
        }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
