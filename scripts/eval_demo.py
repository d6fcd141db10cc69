"""`searchlite eval` on fresh scenes of the bundled shapes model: the figures and the plot of the
README's "Evaluate a model on your photos". Renders held-out scenes with the evaluation renderer
(scripts/render_eval_shapes.py), lays them out as labelled folders three ways, writes a caption
CSV, runs `searchlite eval` on each and prints one JSON object with the results.

    python scripts/eval_demo.py                                   # into ./eval-demo, plot in docs/
    python scripts/eval_demo.py --out /tmp/demo --seed 5 --plot /tmp/demo/plot.png

- by colour: labelled/colour/<red|green|blue|yellow>/ (one-shape scenes)
- by shape: labelled/shape/<circle|square|triangle>/ (the same scenes)
- by colour and shape: labelled/colour_shape/<red_circle|...>/ (12 classes; "_" reads as a space)
- captions: pairs.csv, one two-shape scene per unordered pair of distinct (colour, shape) objects
  (up to 66 scenes), each with two captions naming both shapes in either order.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import render_eval_shapes  # noqa: E402

# Templates written from the phrasings of the training captions (scripts/make_shapes.py), before
# any measurement: "a red circle", "a photo of a red circle.", "a small red circle", ...
SHAPE_TEMPLATES = ["a {}", "a {}.", "a photo of a {}.", "a small {}", "a big {}", "a picture of a {}"]


def write_labelled(root: Path, count: int, seed: int) -> None:
    scenes = render_eval_shapes.write(root / "scenes", count, seed)
    for i, scene in enumerate(scenes):
        data = (root / "scenes" / f"{i:05d}.jpg").read_bytes()
        for layout, label in (("colour", scene.color), ("shape", scene.shape), ("colour_shape", f"{scene.color}_{scene.shape}")):
            folder = root / "labelled" / layout / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}.jpg").write_bytes(data)


def write_captions(root: Path, seed: int, tries: int = 2000) -> int:
    """One two-shape scene per unordered pair of objects; returns how many scenes."""
    rng = np.random.default_rng([seed, 0xCA9])
    seen: set[frozenset] = set()
    rows = []
    (root / "captioned").mkdir(parents=True, exist_ok=True)
    for _ in range(tries):
        data, scene = render_eval_shapes.render(rng, shapes=2)
        key = frozenset(scene.objects)
        if key in seen:
            continue
        seen.add(key)
        name = f"captioned/{len(seen):03d}.jpg"
        (root / name).write_bytes(data)
        (a_colour, a_shape), (b_colour, b_shape) = scene.objects
        rows.append((name, f"a {a_colour} {a_shape} and a {b_colour} {b_shape}"))
        rows.append((name, f"a {b_colour} {b_shape} and a {a_colour} {a_shape}"))
        if len(seen) == 66:
            break
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return len(seen)


def run_eval(args: list[str]) -> dict:
    command = [sys.executable, "-m", "searchlite", "eval", *args, "--json"]
    print("$ searchlite eval " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)


def summary(result: dict) -> dict:
    """The README's numbers from one eval's JSON."""
    out: dict = {}
    c = result.get("classification")
    if c:
        out["images"] = c["images"]
        out["classes"] = len(c["classes"])
        out["zero_shot"] = {z["templates"].split("/")[-1]: {"top1": z["top1"], "top5": z["top5"]} for z in c["zero_shot"]}
        out["probe"] = {p["shots"]: [p["mean"], p["std"]] for p in c["probe"]["points"]}
        out["probe_beats_zero_shot_at"] = {k.split("/")[-1]: v for k, v in c["probe"]["beats_zero_shot_at"].items()}
        worst = c["zero_shot"][0]["most_confused"][:3]
        out["most_confused_single"] = [f"{m['true']} -> {m['predicted']} ({m['images']})" for m in worst]
    r = result.get("retrieval")
    if r:
        out["retrieval"] = {"images": r["images"], "captions": r["captions"], "text_to_image": r["text_to_image"], "image_to_text": r["image_to_text"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("eval-demo"))
    parser.add_argument("--count", type=int, default=360, help="one-shape scenes in the labelled folders")
    parser.add_argument("--seed", type=int, default=2027, help="scenes (a seed used nowhere else); also the draws' seed")
    parser.add_argument("--model", default="searchlite-shapes")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "eval_shapes.png")
    args = parser.parse_args()

    write_labelled(args.out, args.count, args.seed)
    pairs = write_captions(args.out, args.seed)
    templates = args.out / "shape-templates.txt"
    templates.write_text("".join(t + "\n" for t in SHAPE_TEMPLATES))
    common = ["--model", args.model, "--templates", f"single,imagenet,{templates}", "--draws", str(args.draws), "--seed", str(args.seed)]
    results = {
        "colour": run_eval([str(args.out / "labelled" / "colour"), *common]),
        "shape": run_eval([str(args.out / "labelled" / "shape"), *common]),
        "colour_shape": run_eval([str(args.out / "labelled" / "colour_shape"), *common, "--plot", str(args.plot)]),
        "captions": run_eval(["--captions", str(args.out / "pairs.csv"), "--model", args.model]),
    }
    print(json.dumps({"seed": args.seed, "scenes": args.count, "captioned_scenes": pairs, "model": args.model, **{k: summary(v) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
