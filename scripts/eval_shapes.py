"""Evaluate a shapes model on freshly generated scenes, through the public API. Prints JSON:

- precision@5 of the text query "a <colour> <shape>" for all 12 combinations (mean and worst) on
  one-shape scenes;
- zero-shot classification by colour (the 4 colour names) and by shape (the 3 shape names) with the
  default template "a photo of a {}.", and with a prompt ensemble naming the other attribute
  ("a {} circle", "a {} square", ... for colours);
- on two-shape scenes: precision@5 of "a <colour> <shape>", a hit counting when the scene contains
  that shape in that colour (so a red square beside a blue circle is no "red circle").

    python scripts/eval_shapes.py                        # the bundled model, the evaluation renderer
    python scripts/eval_shapes.py --renderer train       # scenes from the training renderer
    python scripts/eval_shapes.py --model M.json --pretrained CKPT

--renderer eval (the default) draws with scripts/render_eval_shapes.py, written independently of
the training renderer scripts/make_shapes.py (--renderer train); use a seed never trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import make_shapes  # noqa: E402
import render_eval_shapes  # noqa: E402

from searchlite import SearchEngine  # noqa: E402
from searchlite.config import IndexSettings  # noqa: E402

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
RENDERERS = {"train": make_shapes, "eval": render_eval_shapes}


def _scenes(renderer: str, folder: Path, count: int, seed: int, shapes: int) -> dict[str, set[tuple[str, str]]]:
    """Render count scenes into folder; path -> the (colour, shape) pairs it holds."""
    scenes = RENDERERS[renderer].write(folder, count, seed, shapes)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    return {str(f): {(o.color, o.shape) if hasattr(o, "color") else tuple(o) for o in s.objects} for f, s in zip(files, scenes)}


def _precision(engine: SearchEngine, truth: dict[str, set[tuple[str, str]]]) -> dict[str, float]:
    precision = {}
    for color in COLORS:
        for shape in SHAPES:
            hits = engine.search(f"a {color} {shape}", k=5)
            precision[f"{color} {shape}"] = sum((color, shape) in truth[h.path] for h in hits) / 5
    return precision


def evaluate(model: str, pretrained: str | None, count: int = 200, seed: int = 3, renderer: str = "eval", precision: str = "auto") -> dict:
    settings = IndexSettings(precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        one = _scenes(renderer, Path(tmp) / "one", count, seed, 1)
        two = _scenes(renderer, Path(tmp) / "two", count, seed + 1000, 2)
        color_templates, shape_templates = Path(tmp) / "colors.txt", Path(tmp) / "shapes.txt"
        color_templates.write_text("".join(f"a {{}} {shape}\n" for shape in SHAPES))
        shape_templates.write_text("".join(f"a {color} {{}}\n" for color in COLORS))
        with SearchEngine.open(Path(tmp) / "index-one", model=model, pretrained=pretrained, settings=settings) as engine:
            engine.index(Path(tmp) / "one")
            tower = (engine.info()["image_tower"] or {}).get("description")
            precision = _precision(engine, one)
            paths = list(one)
            color, shape = {p: next(iter(one[p]))[0] for p in paths}, {p: next(iter(one[p]))[1] for p in paths}

            def accuracy(labels: tuple[str, ...], templates: str | None, truth: dict[str, str]) -> float:
                results = engine.classify(paths, list(labels), templates)
                return round(sum(r.label == truth[r.path] for r in results) / len(paths), 4)

            accuracies = {
                "color_accuracy": accuracy(COLORS, None, color),
                "shape_accuracy": accuracy(SHAPES, None, shape),
                "color_accuracy_ensemble": accuracy(COLORS, str(color_templates), color),
                "shape_accuracy_ensemble": accuracy(SHAPES, str(shape_templates), shape),
            }
        with SearchEngine.open(Path(tmp) / "index-two", model=model, pretrained=pretrained, settings=settings) as engine:
            engine.index(Path(tmp) / "two")
            two_precision = _precision(engine, two)
    return {
        "renderer": renderer,
        "image_tower": tower,
        "scenes": count,
        "seed": seed,
        "precision_at_5": round(sum(precision.values()) / len(precision), 4),
        "worst_query": min(precision, key=precision.get),
        "worst_precision_at_5": min(precision.values()),
        **accuracies,
        "two_shape_precision_at_5": round(sum(two_precision.values()) / len(two_precision), 4),
        "two_shape_worst_query": min(two_precision, key=two_precision.get),
        "two_shape_worst_precision_at_5": min(two_precision.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="searchlite-shapes")
    parser.add_argument("--pretrained")
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default="eval")
    parser.add_argument("--count", type=int, default=200, help="scenes of each kind (one shape, two shapes)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--precision", default="auto", help="the image tower's: auto, fp32, int8 (on a CPU)")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.model, args.pretrained, args.count, args.seed, args.renderer, args.precision)))


if __name__ == "__main__":
    main()
