"""Measure `searchlite explain`: on fresh scenes holding two different shapes, from the evaluation
renderer (scripts/render_eval_shapes.py, which knows each shape's box), how often the heat map's peak for
"a <colour> <shape>" lies inside that shape's box. Prints JSON.

    python scripts/eval_explain.py --count 100 --seed 41
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_eval_shapes  # noqa: E402

from searchlite import SearchEngine  # noqa: E402


def evaluate(count: int, seed: int, model: str = "searchlite-shapes", scale: float | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scenes = render_eval_shapes.write(folder, count, seed, shapes=2, distinct=True)
        inside = total = 0
        with SearchEngine.without_index(model=model) as engine:
            engine.explain(folder / "00000.jpg", "a red circle", scale=scale)  # load the model first
            started = time.perf_counter()
            for i, scene in enumerate(scenes):
                for (color, shape), (x0, y0, x1, y1) in zip(scene.objects, scene.boxes):
                    x, y = engine.explain(folder / f"{i:05d}.jpg", f"a {color} {shape}", scale=scale).peak
                    inside += x0 <= x <= x1 and y0 <= y <= y1
                    total += 1
            seconds = time.perf_counter() - started
    return {
        "model": model,
        "scenes": count,
        "seed": seed,
        "queries": total,
        "peak_inside_box": round(inside / total, 4),
        "ms_per_explain": round(1000 * seconds / total, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--model", default="searchlite-shapes")
    parser.add_argument("--scale", type=float, default=None, help="shorter side, in multiples of the model's input")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.count, args.seed, args.model, args.scale)))


if __name__ == "__main__":
    main()
