"""The int8 image tower against the float32 one on real photos: each photo's cosine between the two
embeddings, the agreement of each photo's 10 nearest neighbours among the set, and what each tower
costs per image, through the public API (`--precision fp32` and `--precision int8` engines). Prints JSON.

    python scripts/eval_int8.py PHOTO_FOLDER... [--model searchlite-shapes]
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 python scripts/eval_int8.py PHOTO_FOLDER...   # ViT-B-32-256, random weights

--skimage adds scikit-image's photos (written to a temporary folder). Random weights show how the
recipe behaves on weights without outliers only: on a user's machine the same check runs on the real
weights before int8 is used (models/int8.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_photos import write_samples  # noqa: E402

from searchlite import SearchEngine  # noqa: E402
from searchlite.config import IndexSettings  # noqa: E402

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def photos_in(folders: list[Path]) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)


def embed(model: str | None, precision: str, paths: list[str], rounds: int) -> tuple[np.ndarray, list[float]]:
    """The embeddings of paths, and seconds per image of each round (decoding included)."""
    with SearchEngine.without_index(model=model, settings=IndexSettings(precision=precision)) as engine:
        engine.image_encoder()  # exported and quantized before the clock starts
        seconds = []
        for _ in range(rounds):
            started = time.perf_counter()
            vectors = engine.embed_images(paths)
            seconds.append((time.perf_counter() - started) / len(paths))
    return vectors, seconds


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    k = min(k, len(a) - 1)
    tops = []
    for v in (a, b):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        tops.append(np.argsort(-s, axis=1, kind="stable")[:, :k])
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(*tops)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--model", help="default: searchlite's default model (from the Hugging Face cache)")
    parser.add_argument("--skimage", action="store_true", help="add scikit-image's photos")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = list(args.folders)
        if args.skimage:
            write_samples(Path(tmp) / "skimage")
            folders.append(Path(tmp) / "skimage")
        paths = photos_in(folders)
        fp32, fp32_s = embed(args.model, "fp32", paths, args.rounds)
        int8, int8_s = embed(args.model, "int8", paths, args.rounds)
    cosines = (fp32 * int8).sum(axis=1)
    worst = int(np.argmin(cosines))
    print(json.dumps({
        "model": args.model or "default",
        "photos": len(paths),
        "min_cosine": round(float(cosines.min()), 5),
        "worst_photo": Path(paths[worst]).name,
        "mean_cosine": round(float(cosines.mean()), 5),
        "top10_agreement": round(neighbour_overlap(fp32, int8), 4),
        "fp32_ms_per_image": round(1000 * statistics.median(fp32_s), 1),
        "int8_ms_per_image": round(1000 * statistics.median(int8_s), 1),
        "fp32_ms_rounds": [round(1000 * s, 1) for s in fp32_s],
        "int8_ms_rounds": [round(1000 * s, 1) for s in int8_s],
    }))


if __name__ == "__main__":
    main()
