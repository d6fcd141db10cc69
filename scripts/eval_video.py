"""Measure video moments: index fresh synthetic videos (scripts/make_shape_videos.py: shots of
evaluation-renderer scenes at known times) with the shapes model, query "a <colour> <shape>" for
each (colour, shape) shown, and count each of its top n hits (n: the videos that show it) right
when it is one of those videos with a time within 1 s of the start of that video's shot. Reports the indexing cost per minute of video. Prints JSON.

    python scripts/eval_video.py --count 20 --seed 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_shape_videos  # noqa: E402

from searchlite import SearchEngine  # noqa: E402


def evaluate(count: int, seed: int, model: str = "searchlite-shapes") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        truth = make_shape_videos.write(folder, count, seed)
        minutes = sum(shots[-1].end for shots in truth.values()) / 60
        with SearchEngine.open(Path(tmp) / "index", model=model) as engine:
            engine.load_model()
            started = time.perf_counter()
            report = engine.index(folder)
            seconds = time.perf_counter() - started
            holders: dict[tuple[str, str], dict[str, float]] = {}  # what -> {video: its shot's start}
            for path, shots in truth.items():
                for shot in shots:
                    holders.setdefault((shot.color, shot.shape), {})[path] = shot.start
            right = right_video = total = 0
            errors = []
            for (color, shape), starts in holders.items():
                for hit in engine.search(f"a {color} {shape}", k=len(starts), type="video"):
                    total += 1
                    if hit.path in starts:
                        right_video += 1
                        errors.append(abs(hit.time - starts[hit.path]))
                        right += errors[-1] <= 1.0
            shots_found = engine.info()
    return {
        "model": model,
        "videos": count,
        "seed": seed,
        "minutes_of_video": round(minutes, 2),
        "queries": len(holders),
        "hits_judged": total,
        "right_video_and_time_within_1s": round(right / total, 4),
        "right_video": round(right_video / total, 4),
        "median_time_error_s": round(sorted(errors)[len(errors) // 2], 2) if errors else None,
        "index_seconds": round(seconds, 2),
        "index_seconds_per_minute_of_video": round(seconds / minutes, 2),
        "failed": report.failed,
        "files": shots_found["images"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--model", default="searchlite-shapes")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.count, args.seed, args.model)))


if __name__ == "__main__":
    main()
