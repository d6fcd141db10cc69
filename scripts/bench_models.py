"""Which default model: CPU images/s and text-query latency of candidate CLIP models, measured in one
run on this machine, next to their published zero-shot ImageNet accuracy. Prints JSON lines.

Speed does not depend on the weights, so each model is built with random weights (no download).
Models are loaded the way searchlite loads them (MobileCLIP's branches reparameterized for
inference); "text" is one query through searchlite's text path, "text_open_clip" open_clip's own
encode_text.

    python scripts/bench_models.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from searchlite.models.loading import load_encoder
from searchlite.models.spec import spec_from_flags

# (open_clip name, pretrained tag, published zero-shot ImageNet top-1 %)
CANDIDATES = [
    ("ViT-B-32-256", "datacomp_s34b_b86k", 72.8),
    ("MobileCLIP2-S0", "dfndr2b", 71.5),
    ("MobileCLIP2-S2", "dfndr2b", 77.2),
]


def images_per_second(encoder, batch_size: int, repeats: int) -> float:
    size = encoder.image_size
    batch = list(torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)))
    encoder.encode_images(batch)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        encoder.encode_images(batch)
    return batch_size * repeats / (time.perf_counter() - started)


def p50_ms(fn, n: int) -> float:
    fn(0)  # warm-up
    times = []
    for i in range(1, n + 1):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="image batches timed per model")
    parser.add_argument("--queries", type=int, default=20, help="text queries timed per model")
    args = parser.parse_args()

    for name, tag, imagenet in CANDIDATES:
        encoder = load_encoder(spec_from_flags(name, None, random_init=True), "cpu")
        rate = images_per_second(encoder, args.batch_size, args.repeats)
        text = p50_ms(lambda i: encoder.encode_texts([f"a dog on grass {i}"]), args.queries)
        with torch.inference_mode():
            naive = p50_ms(lambda i: encoder.model.encode_text(encoder.tokenize([f"a dog on grass {i}"]), normalize=True), args.queries)
        result = {
            "model": f"{name}/{tag}",
            "imagenet_zero_shot": imagenet,
            "img_per_s": round(rate, 2),
            "cpu_ms_per_img": round(1000 * torch.get_num_threads() / rate, 1),
            "text_ms": text,
            "text_open_clip_ms": naive,
            "params_m": round(sum(p.numel() for p in encoder.model.parameters()) / 1e6, 1),
        }
        print(json.dumps(result), flush=True)
        del encoder
    sys.exit(0)


if __name__ == "__main__":
    main()
