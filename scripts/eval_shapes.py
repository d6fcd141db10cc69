"""Evaluate a shapes model on freshly generated held-out scenes. Prints JSON:

- text retrieval: precision@5 of the query "a <color> <shape>" for all 12 combinations;
- zero-shot classification by colour and by shape, each with a prompt ensemble (templates that
  name the other attribute, e.g. "a {} circle", "a {} square", "a {} triangle" for colours).

    python scripts/eval_shapes.py                        # the bundled searchlite-shapes model
    python scripts/eval_shapes.py --model M.json --pretrained CKPT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_shapes import COLORS, SHAPES, write  # noqa: E402

from searchlite import SearchEngine  # noqa: E402


def evaluate(model: str, pretrained: str | None, count: int = 240, seed: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder, index = Path(tmp) / "scenes", Path(tmp) / "index"
        scenes = write(folder, count, seed)
        truth = {str(folder / f"{i:05d}.png"): (s.color, s.shape) for i, s in enumerate(scenes)}
        color_templates, shape_templates = Path(tmp) / "colors.txt", Path(tmp) / "shapes.txt"
        color_templates.write_text("".join(f"a {{}} {shape}\n" for shape in SHAPES))
        shape_templates.write_text("".join(f"a {color} {{}}\n" for color in COLORS))
        with SearchEngine.open(index, model=model, pretrained=pretrained) as engine:
            engine.index(folder)
            precision = {}
            for color in COLORS:
                for shape in SHAPES:
                    hits = engine.search(f"a {color} {shape}", k=5)
                    precision[f"{color} {shape}"] = sum(truth[h.path] == (color, shape) for h in hits) / 5
            paths = list(truth)
            by_color = engine.classify(paths, list(COLORS), str(color_templates))
            by_shape = engine.classify(paths, list(SHAPES), str(shape_templates))
    return {
        "scenes": count,
        "precision_at_5": round(sum(precision.values()) / len(precision), 4),
        "worst_query": min(precision, key=precision.get),
        "worst_precision_at_5": min(precision.values()),
        "color_accuracy": round(sum(r.label == truth[r.path][0] for r in by_color) / count, 4),
        "shape_accuracy": round(sum(r.label == truth[r.path][1] for r in by_shape) / count, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="searchlite-shapes")
    parser.add_argument("--pretrained")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(evaluate(args.model, args.pretrained, args.count, args.seed)))


if __name__ == "__main__":
    main()
