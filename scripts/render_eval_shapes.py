"""The evaluation renderer: scenes of coloured shapes drawn independently of the training renderer
(scripts/make_shapes.py), to measure how well the bundled toy model generalises.

Different drawing code (numpy coverage masks, 4x4 supersampled, so edges are anti-aliased, instead
of PIL's ImageDraw), other image sizes (80 to 160 pixels, not 64), other colour shades (RGB anchors
with per-channel jitter and a light shading across each shape), other backgrounds (radial
gradients, value noise, dots, and crops of scikit-image photos that training never sees), other
blur, noise and JPEG quality, and the files are JPEGs.

    python scripts/render_eval_shapes.py eval-scenes --count 200 --seed 3 --shapes 1
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SHADES = {"red": (205, 30, 45), "green": (55, 165, 75), "blue": (45, 85, 205), "yellow": (240, 205, 45)}
SHAPES = ("circle", "square", "triangle")
COLORS = tuple(SHADES)
SIZES = (80, 96, 128, 160)
SUPERSAMPLE = 4
PHOTOS = ("coins", "gravel", "clock", "cell", "hubble_deep_field", "immunohistochemistry", "page", "text")


@dataclass(frozen=True)
class Scene:
    objects: tuple[tuple[str, str], ...]  # (colour, shape) of each shape
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # (x0, y0, x1, y1) of each shape, pixels

    @property
    def color(self) -> str:
        return self.objects[0][0]

    @property
    def shape(self) -> str:
        return self.objects[0][1]


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    a = np.asarray(getattr(skimage.data, name)())
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a[..., :3].astype(np.float32)


def _neutral(rng: np.random.Generator) -> np.ndarray:
    level = rng.uniform(30, 230)
    return np.clip(level + rng.normal(0, 10, 3), 0, 255)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    y, x = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    kind = rng.integers(0, 4)
    if kind == 0:  # radial gradient between two near-neutral colours
        a, b = _neutral(rng), _neutral(rng)
        cx, cy = rng.uniform(0, 1, 2)
        t = np.clip(np.hypot(x - cx, y - cy) / rng.uniform(0.5, 1.2), 0, 1)[..., None]
        return a * (1 - t) + b * t
    if kind == 1:  # smooth value noise, bicubic from a coarse grid
        grid = rng.uniform(0, 1, (int(rng.integers(4, 12)),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(grid, mode="F").resize((n, n), Image.BICUBIC))[..., None]
        a, b = _neutral(rng), _neutral(rng)
        return a * (1 - t) + b * t
    if kind == 2:  # a field of small grey dots
        img = np.broadcast_to(_neutral(rng), (n, n, 3)).copy()
        dot = _neutral(rng)
        spacing = rng.uniform(0.05, 0.12)
        fx, fy = (x % spacing) / spacing - 0.5, (y % spacing) / spacing - 0.5
        img[np.hypot(fx, fy) < 0.25] = dot
        return img
    photo = _photo(str(rng.choice(PHOTOS)))
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = np.asarray(Image.fromarray(photo[top : top + side, left : left + side].astype(np.uint8)).resize((n, n), Image.LANCZOS), np.float32)
    gray = crop.mean(axis=2, keepdims=True)
    return gray + (crop - gray) * rng.uniform(0.2, 0.8)  # muted, so a photo's colours don't read as a shape's


def _mask(shape: str, cx: float, cy: float, half: float, angle: float, n: int) -> np.ndarray:
    """Coverage in [0, 1] of an n x n image, from a supersampled inside test."""
    m = n * SUPERSAMPLE
    y, x = (np.mgrid[0:m, 0:m].astype(np.float32) + 0.5) / SUPERSAMPLE
    dx, dy = x - cx, y - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if shape == "circle":
        inside = u * u + v * v <= half * half
    elif shape == "square":
        inside = (np.abs(u) <= half * 0.78) & (np.abs(v) <= half * 0.78)
    else:  # equilateral triangle, circumradius half: inside all three edges' half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            theta = angle + math.pi / 3 + 2 * math.pi * k / 3  # outward normal of edge k
            inside &= dx * math.cos(theta) + dy * math.sin(theta) <= half * 0.5
    return inside.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3))


def render(rng: np.random.Generator, shapes: int = 1, distinct: bool = False, first: tuple[str, str] | None = None) -> tuple[bytes, Scene]:
    """One scene as JPEG bytes, and what it holds; distinct: no two shapes of one kind; first: the
    (colour, shape) of the first shape (drawn at random when None)."""
    n = int(rng.choice(SIZES))
    img = _background(rng, n)
    placed: list[tuple[float, float, float]] = []
    objects: list[tuple[str, str]] = []
    boxes: list[tuple[float, float, float, float]] = []
    while len(objects) < shapes:
        half = rng.uniform(1 / 16, 0.3 if shapes == 1 else 0.2) * n  # extent: an eighth of the side and up
        cx, cy = rng.uniform(half + 1, n - half - 1, 2)
        if any(math.hypot(cx - x, cy - y) < 1.1 * (half + r) for x, y, r in placed):
            continue
        color, shape = str(rng.choice(COLORS)), str(rng.choice(SHAPES))
        if first is not None and not objects:
            color, shape = first
        if (color, shape) in objects or distinct and shape in (o[1] for o in objects):
            continue
        coverage = _mask(shape, cx, cy, half, float(rng.uniform(0, 2 * math.pi)), n)[..., None]
        base = np.clip(np.array(SHADES[color], np.float32) + rng.uniform(-25, 25, 3), 0, 255)
        yy = (np.arange(n, dtype=np.float32)[:, None, None] - cy) / max(half, 1)
        shading = 1 + rng.uniform(-0.12, 0.12) * np.clip(yy, -1, 1)  # lit from above or below
        img = img * (1 - coverage) + np.clip(base * shading, 0, 255) * coverage
        placed.append((cx, cy, half))
        objects.append((color, shape))
        boxes.append((float(cx - half), float(cy - half), float(cx + half), float(cy + half)))
    img = img + rng.normal(0, rng.uniform(0, 8), (1, 1, 3)) + rng.normal(0, rng.uniform(0, 6), img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.5)) * n / 96))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(30, 92)))
    return buf.getvalue(), Scene(tuple(objects), tuple(boxes))


def write(folder: Path, count: int, seed: int, shapes: int = 1, distinct: bool = False) -> list[Scene]:
    """count scenes as NNNNN.jpg under folder; returns what each holds (distinct: see render)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x5EC0D])
    scenes = []
    for i in range(count):
        data, scene = render(rng, shapes, distinct)
        (folder / f"{i:05d}.jpg").write_bytes(data)
        scenes.append(scene)
    return scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--shapes", type=int, default=1, choices=(1, 2, 3))
    args = parser.parse_args()
    write(args.folder, args.count, args.seed, args.shapes)
    print(f"wrote {args.count} scenes to {args.folder}")


if __name__ == "__main__":
    main()
