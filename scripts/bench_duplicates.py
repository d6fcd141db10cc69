"""Measure `searchlite duplicates`: (1) on real photos (scikit-image's) with generated variants (JPEG
quality 60, 50% resize, 5% crop, EXIF rotation, PNG and WebP copies), indexed with the bundled
searchlite-shapes model: does every variant land in its original's near group, and do no two
originals share one? (2) the time to group N vectors (FAISS range search + connected components),
on synthetic unit vectors with planted near copies. Prints JSON.

    python scripts/bench_duplicates.py --vectors 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from searchlite import SearchEngine

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera",
          "coins", "moon", "page", "grass", "gravel", "brick", "cell", "clock", "horse", "text", "colorwheel")
VARIANTS = ("jpeg60", "half", "crop5", "exif-rotated", "png", "webp")


def write_photos(folder: Path) -> dict[str, list[str]]:
    """Each original as a JPEG (quality 95) and its variants; original path -> variant paths."""
    import skimage.data

    folder.mkdir(parents=True)
    groups = {}
    for name in PHOTOS:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        img = Image.fromarray(pixels).convert("RGB")
        original = folder / f"{name}.jpg"
        img.save(original, quality=95)
        w, h = img.size
        made = {
            "jpeg60": lambda p: img.save(p, quality=60),
            "half": lambda p: img.resize((w // 2, h // 2), Image.LANCZOS).save(p, quality=90),
            "crop5": lambda p: img.crop((round(0.025 * w), round(0.025 * h), w - round(0.025 * w), h - round(0.025 * h))).save(p, quality=90),
            # stored turned a quarter, with the EXIF tag that turns it back (orientation 6)
            "exif-rotated": lambda p: img.transpose(Image.Transpose.ROTATE_90).save(p, quality=90, exif=_orientation(6)),
            "png": lambda p: img.save(p),
            "webp": lambda p: img.save(p, quality=80),
        }
        paths = []
        for variant, save in made.items():
            ext = {"png": "png", "webp": "webp"}.get(variant, "jpg")
            path = folder / "variants" / f"{name}-{variant}.{ext}"
            path.parent.mkdir(exist_ok=True)
            save(path)
            paths.append(str(path))
        groups[str(original)] = paths
    return groups


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def real_photos() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        truth = write_photos(folder)
        with SearchEngine.open(Path(tmp) / "index", model="searchlite-shapes") as engine:
            engine.index(folder)
            started = time.perf_counter()
            near = engine.duplicates("near")
            seconds = time.perf_counter() - started
            similar = engine.duplicates("similar")
        group_of = {f.path: n for n, g in enumerate(near) for f in g.files}
        missed = [v for original, variants in truth.items() for v in variants if group_of.get(v) is None or group_of.get(v) != group_of.get(original)]
        shared = [sorted(Path(f.path).name for f in g.files if f.path in truth) for g in near]
        shared = [names for names in shared if len(names) > 1]
        keepers_are_originals = sum(g.keeper in truth for g in near)
        return {
            "originals": len(truth),
            "variants": sum(len(v) for v in truth.values()),
            "near_groups": len(near),
            "variants_outside_their_originals_group": [Path(m).name for m in missed],
            "groups_with_two_or_more_originals": shared,
            "near_groups_whose_keeper_is_the_original": keepers_are_originals,
            "similar_groups": len(similar),
            "largest_similar_group": max((len(g.files) for g in similar), default=0),
            "near_seconds": round(seconds, 3),
        }


def grouping_time(n: int, dim: int = 512, seed: int = 0) -> dict:
    """Group n synthetic unit vectors: clusters of 1-4 near copies (noise at cosine ~0.97) of
    random centres, as photos with a few re-encodes each."""
    from searchlite.query.duplicates import SIMILAR_COSINE, components, range_pairs

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 2, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.concatenate([np.arange(n // 2), rng.integers(0, n // 2, n - n // 2)])
    vectors = centres[owner] + rng.standard_normal((n, dim)).astype(np.float32) * (0.25 / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    left, right, _ = range_pairs(vectors, SIMILAR_COSINE)
    groups = components(n, left, right)
    seconds = time.perf_counter() - started
    expected = {frozenset(np.nonzero(owner == c)[0].tolist()) for c in np.unique(owner) if (owner == c).sum() > 1}
    found = {frozenset(g) for g in groups}
    return {
        "vectors": n, "dim": dim, "threshold": SIMILAR_COSINE, "pairs": int(len(left)), "groups": len(groups),
        "planted_groups": len(expected), "planted_groups_found_exactly": len(expected & found), "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--skip-photos", action="store_true")
    args = parser.parse_args()
    out = {}
    if not args.skip_photos:
        out["real_photos"] = real_photos()
    out["grouping"] = grouping_time(args.vectors)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
