"""Render captioned synthetic scenes: a coloured shape on a noisy neutral background, with a caption
like "a small red circle on the left". Sizes, positions, rotations, backgrounds and noise vary.

    python scripts/make_shapes.py shapes-train --count 20000 --seed 1   # training data (.png + .txt)
    python scripts/make_shapes.py shapes-test --count 240 --seed 2      # held-out scenes

This is the data behind the bundled toy model `searchlite-shapes` (see README).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (215, 35, 35), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (235, 210, 30)}
SHAPES = ("circle", "square", "triangle")
SIZE = 64


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    color: str
    shape: str
    caption: str


def render(rng: np.random.Generator, size: int = SIZE) -> Scene:
    """One random scene."""
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    gray = int(rng.integers(70, 190))
    tint = rng.integers(-12, 13, 3)
    background = tuple(int(np.clip(gray + t, 0, 255)) for t in tint)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)

    radius = float(rng.uniform(0.14, 0.34)) * size  # half the shape's extent
    cx = float(rng.uniform(radius + 1, size - radius - 1))
    cy = float(rng.uniform(radius + 1, size - radius - 1))
    angle = float(rng.uniform(0, 2 * math.pi))
    jitter = rng.integers(-20, 21, 3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter))
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        corners = 4 if shape == "square" else 3
        r = radius * (1.0 if shape == "triangle" else math.sqrt(2) * 0.8)
        points = [(cx + r * math.cos(angle + 2 * math.pi * i / corners), cy + r * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]
        draw.polygon(points, fill=fill)

    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, float(rng.uniform(2, 12)), (size, size, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    size_word = "small" if radius < 0.21 * size else "big" if radius > 0.28 * size else ""
    horizontal = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    vertical = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    where = " ".join(w for w in (vertical, horizontal) if w)
    parts = ["a", size_word, color, shape] + ([f"at the {where}"] if where and rng.random() < 0.7 else [])
    return Scene(img, color, shape, " ".join(p for p in parts if p))


def write(folder: Path, count: int, seed: int) -> list[Scene]:
    """count scenes as NNNNN.png with NNNNN.txt captions under folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(count):
        scene = render(rng)
        scene.image.save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(scene.caption + "\n")
        scenes.append(scene)
    return scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write(args.folder, args.count, args.seed)
    print(f"wrote {args.count} scenes to {args.folder}")


if __name__ == "__main__":
    main()
