"""Measure `index --regions`: fresh 1024x1024 scenes, each holding one small shape (an eighth of
the side, drawn by scripts/render_eval_shapes.py's masks and colours) among distractor blobs;
precision@5 for every "a <colour> <shape>" on an index with regions and on one without, and the
indexing time of each. Prints JSON.

    python scripts/eval_regions.py --per-query 5 --seed 61
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_eval_shapes as R  # noqa: E402

from searchlite import IndexSettings, SearchEngine  # noqa: E402

SIDE = 1024


def render(
    rng: np.random.Generator, color: str, shape: str, blobs: int = 12, side: int = SIDE, muted: bool = False
) -> tuple[Image.Image, tuple[float, ...]]:
    """A side x side scene: a muted background, blobs (irregular, not shapes) of any hue, or with
    muted=True of low saturation like the training backgrounds (none reads as one of the four
    colours), and the one shape, its extent an eighth of the side, somewhere; and its box."""
    SIDE = side  # noqa: N806
    small = R._background(rng, SIDE // 8)  # drawn small, then enlarged: a smooth background
    img = np.asarray(Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    for _ in range(blobs):
        cx, cy, r = rng.uniform(0, SIDE), rng.uniform(0, SIDE), rng.uniform(SIDE / 20, SIDE / 7)
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.35 * np.sin(3 * angle + rng.uniform(0, 6.3)) + 0.2 * np.sin(5 * angle + rng.uniform(0, 6.3))
        inside = (np.hypot(xx - cx, yy - cy) < r * wobble)[..., None]
        if muted:
            level = rng.uniform(40, 220)
            hue = np.clip(level + rng.uniform(-0.2, 0.2, 3) * level, 0, 255)
        else:
            hue = np.array(R._neutral(rng)) * 0.5 + rng.uniform(0, 255, 3) * 0.5
        img = np.where(inside, hue, img)
    half = SIDE / 16
    cx, cy = rng.uniform(half + 2, SIDE - half - 2, 2)
    n = min(256, SIDE)  # the shape drawn on a patch, supersampled, then composed
    x0, y0 = int(cx - n / 2), int(cy - n / 2)
    x0, y0 = min(max(x0, 0), SIDE - n), min(max(y0, 0), SIDE - n)
    coverage = R._mask(shape, cx - x0, cy - y0, half, float(rng.uniform(0, 2 * math.pi)), n)[..., None]
    base = np.clip(np.array(R.SHADES[color], np.float32) + rng.uniform(-25, 25, 3), 0, 255)
    patch = img[y0 : y0 + n, x0 : x0 + n]
    img[y0 : y0 + n, x0 : x0 + n] = patch * (1 - coverage) + base * coverage
    out = Image.fromarray(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(1.0)), (cx - half, cy - half, cx + half, cy + half)


def evaluate(per_query: int, seed: int, model: str = "searchlite-shapes", scale: float = 4.0, stride: int = 1, mode: str = "pooled", muted: bool = False) -> dict:
    rng = np.random.default_rng([seed, 0x2E610])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scenes"
        folder.mkdir()
        truth = {}
        for color in R.COLORS:
            for shape in R.SHAPES:
                for i in range(per_query):
                    path = folder / f"{color}-{shape}-{i}.jpg"
                    render(rng, color, shape, muted=muted)[0].save(path, quality=90)
                    truth[str(path)] = (color, shape)
        out: dict = {"model": model, "images": len(truth), "seed": seed, "region_scale": scale, "region_stride": stride, "region_mode": mode, "blobs": "muted" if muted else "any hue"}
        for name, settings in (("without_regions", IndexSettings()), ("with_regions", replace(IndexSettings(), regions=True, region_scale=scale, region_stride=stride, region_mode=mode))):
            with SearchEngine.open(Path(tmp) / name, model=model, settings=settings) as engine:
                engine.load_model()
                started = time.perf_counter()
                engine.index(folder)
                seconds = time.perf_counter() - started
                precision = []
                for color in R.COLORS:
                    for shape in R.SHAPES:
                        hits = engine.search(f"a {color} {shape}", k=5)
                        precision.append(sum(truth[h.path] == (color, shape) for h in hits) / 5)
                out[name] = {"precision_at_5": round(float(np.mean(precision)), 4), "worst": min(precision),
                             "index_seconds": round(seconds, 2), "vectors": len(engine.vectors)}
        out["cost_ratio"] = round(out["with_regions"]["index_seconds"] / out["without_regions"]["index_seconds"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-query", type=int, default=5, help="scenes per (colour, shape)")
    parser.add_argument("--seed", type=int, default=61)
    parser.add_argument("--model", default="searchlite-shapes")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--mode", choices=("pooled", "crops"), default="pooled")
    parser.add_argument("--muted-blobs", action="store_true", help="distractor blobs of low saturation (default: any hue)")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.per_query, args.seed, args.model, args.scale, args.stride, args.mode, args.muted_blobs)))


if __name__ == "__main__":
    main()
