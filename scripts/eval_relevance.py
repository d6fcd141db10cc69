"""Measure the relevance cut-off of `query TEXT --sort date` with the bundled shapes model on freshly
generated scenes (scripts/render_eval_shapes.py, a seed used nowhere else). For every query
"a <colour> <shape>": the set SearchEngine.search(..., sort="date") returns, against the scenes
that show that colour and shape; prints JSON with precision, recall and F1 per query, their means
and the worst query.

    python scripts/eval_relevance.py --count 400 --seed 31 --shapes 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import render_eval_shapes  # noqa: E402

from searchlite import SearchEngine  # noqa: E402

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def evaluate(count: int, seed: int, shapes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scenes"
        scenes = render_eval_shapes.write(folder, count, seed, shapes)
        truth = {str(folder / f"{i:05d}.jpg"): set(scene.objects) for i, scene in enumerate(scenes)}
        per_query = {}
        with SearchEngine.open(Path(tmp) / "index", model="searchlite-shapes") as engine:
            engine.index(folder)
            seconds = []
            for color in COLORS:
                for shape in SHAPES:
                    started = time.perf_counter()
                    hits = engine.search(f"a {color} {shape}", sort="date")
                    seconds.append(time.perf_counter() - started)
                    returned = {h.path for h in hits}
                    wanted = {p for p, objects in truth.items() if (color, shape) in objects}
                    tp = len(returned & wanted)
                    precision = tp / len(returned) if returned else (1.0 if not wanted else 0.0)
                    recall = tp / len(wanted) if wanted else 1.0
                    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
                    per_query[f"a {color} {shape}"] = {
                        "returned": len(returned), "relevant": len(wanted),
                        "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                    }
    worst = min(per_query, key=lambda q: per_query[q]["f1"])
    n = len(per_query)
    return {
        "scenes": count, "seed": seed, "shapes_per_scene": shapes,
        "mean_precision": round(sum(q["precision"] for q in per_query.values()) / n, 4),
        "mean_recall": round(sum(q["recall"] for q in per_query.values()) / n, 4),
        "mean_f1": round(sum(q["f1"] for q in per_query.values()) / n, 4),
        "worst_query": worst, "worst": per_query[worst],
        "seconds_per_query": round(sum(seconds) / len(seconds), 3),
        "per_query": per_query,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--shapes", type=int, default=1, choices=(1, 2, 3))
    args = parser.parse_args()
    print(json.dumps(evaluate(args.count, args.seed, args.shapes), indent=2))


if __name__ == "__main__":
    main()
