"""Render captioned synthetic scenes (the training renderer): one to three coloured shapes drawn with
PIL's ImageDraw on a plain, textured, gradient or photographic background (crops of scikit-image
photos), with a caption naming each shape, e.g. "a red circle and a blue square", "a small green
triangle at the bottom right", "a photo of a yellow square.", "a photo of a circle.". Shapes range
from tiny (an eighth of the side) to large; colours, positions, rotations, blur, noise and JPEG
quality vary.

    python scripts/make_shapes.py shapes-train --count 30000 --seed 1   # training data (image + .txt)
    python scripts/make_shapes.py shapes-test --count 240 --seed 2 --shapes 1

This is the data behind the bundled toy model `searchlite-shapes` (see README). Its evaluation uses
an independent renderer too (scripts/render_eval_shapes.py).
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# hue (degrees), hue spread, min saturation, min value: a colour is drawn around its hue
COLOR_HSV = {"red": (0, 10, 0.65, 0.55), "green": (125, 22, 0.55, 0.45), "blue": (225, 16, 0.6, 0.5), "yellow": (54, 6, 0.7, 0.75)}
COLORS = {"red": (215, 35, 35), "green": (40, 170, 60), "blue": (40, 70, 215), "yellow": (235, 210, 30)}  # typical RGB
SHAPES = ("circle", "square", "triangle")
SIZE = 64
# photographs used as backgrounds in training (the evaluation renderer uses other ones)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "moon", "brick", "grass")


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size_word: str  # "small", "big" or ""
    where: str  # e.g. "top left", "bottom", "" (middle)


@dataclass(frozen=True)
class Scene:
    image: Image.Image | None
    objects: tuple[Obj, ...]
    caption: str

    @property
    def color(self) -> str:  # the first shape's (single-shape scenes have one)
        return self.objects[0].color

    @property
    def shape(self) -> str:
        return self.objects[0].shape


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3]).astype(np.uint8)


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    """A background colour: any hue, low saturation, so it never reads as one of the four colours."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.22), rng.uniform(0.15, 0.95))
    return int(r * 255), int(g * 255), int(b * 255)


def background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    kind = rng.choice(["plain", "texture", "gradient", "photo"], p=[0.25, 0.25, 0.2, 0.3])
    if kind == "plain":
        return np.broadcast_to(np.array(_muted(rng), np.float32), (size, size, 3)).copy()
    if kind == "gradient":
        a, b = np.array(_muted(rng), np.float32), np.array(_muted(rng), np.float32)
        theta = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        t = np.clip((x * math.cos(theta) + y * math.sin(theta)) + 0.5, 0, 1)[..., None]
        return a * (1 - t) + b * t
    if kind == "texture":
        a, b = np.array(_muted(rng), np.float32), np.array(_muted(rng), np.float32)
        pattern = rng.choice(["stripes", "checker", "blobs"])
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        period = rng.uniform(4, 16)
        if pattern == "stripes":
            theta = rng.uniform(0, math.pi)
            t = (np.sin((x * math.cos(theta) + y * math.sin(theta)) * 2 * math.pi / period) > 0).astype(np.float32)
        elif pattern == "checker":
            t = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
        else:
            coarse = rng.random((int(rng.integers(3, 9)),) * 2).astype(np.float32)
            t = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
        return a * (1 - t[..., None]) + b * t[..., None]
    photo = _photo(str(rng.choice(PHOTOS)))
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(crop, np.float32)
    gray = pixels.mean(axis=2, keepdims=True)
    keep = rng.uniform(0.0, 1.0)  # saturation kept
    return gray + (pixels - gray) * keep


def _fill(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    hue, spread, s_min, v_min = COLOR_HSV[color]
    h = ((hue + rng.uniform(-spread, spread)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s_min, 1.0), rng.uniform(v_min, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _place(rng: np.random.Generator, count: int, size: int) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) for count shapes that barely overlap."""
    for _ in range(200):
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            high = 0.32 if count == 1 else 0.24 if count == 2 else 0.18
            radius = float(rng.uniform(1 / 16, high)) * size  # extent from an eighth of the side up
            for _ in range(50):
                cx = float(rng.uniform(radius + 1, size - radius - 1))
                cy = float(rng.uniform(radius + 1, size - radius - 1))
                if all(math.hypot(cx - x, cy - y) > 1.05 * (radius + r) for x, y, r in placed):
                    placed.append((cx, cy, radius))
                    break
        if len(placed) == count:
            return placed
    raise RuntimeError("could not place the shapes")


def describe(obj: Obj, rng: np.random.Generator, detail: float) -> str:
    """'a small red circle at the top left' with each detail kept with probability detail."""
    words = ["a"]
    if obj.size_word and rng.random() < detail:
        words.append(obj.size_word)
    words += [obj.color, obj.shape]
    if obj.where and rng.random() < detail:
        words.append(f"at the {obj.where}" if rng.random() < 0.7 else f"on the {obj.where}")
    return " ".join(words)


def caption(objects: tuple[Obj, ...], rng: np.random.Generator) -> str:
    if len(objects) == 1:
        obj = objects[0]
        style = rng.random()
        if style < 0.3:
            return describe(obj, rng, 0.7)
        if style < 0.5:
            return f"a photo of {describe(obj, rng, 0.3)}."
        if style < 0.65:
            return f"a photo of a {obj.color}."
        if style < 0.8:
            return f"a photo of a {obj.shape}."
        if style < 0.9:
            return str(rng.choice([f"a {obj.color} shape", f"a photo of a {obj.color} shape.", f"something {obj.color}"]))
        return str(rng.choice([f"a picture of a {obj.color} {obj.shape}", f"an image of a {obj.shape}", f"{obj.color} {obj.shape}"]))
    detail = 0.4 if len(objects) == 2 else 0.0
    phrases = [describe(o, rng, detail) for o in rng.permutation(np.array(objects, dtype=object))]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"a photo of {text}." if rng.random() < 0.4 else text


def render(rng: np.random.Generator, shapes: int | None = None, size: int = SIZE) -> Scene:
    """One random scene with shapes shapes (1 to 3 at random when None)."""
    count = shapes or int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    img = Image.fromarray(np.clip(background(rng, size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    objects = []
    for cx, cy, radius in _place(rng, count, size):
        while True:  # no two shapes of the same colour and kind in one scene
            color, shape = str(rng.choice(list(COLOR_HSV))), str(rng.choice(SHAPES))
            if all((o.color, o.shape) != (color, shape) for o in objects):
                break
        angle = float(rng.uniform(0, 2 * math.pi))
        fill = _fill(rng, color)
        if shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            corners = 4 if shape == "square" else 3
            r = radius * (1.0 if shape == "triangle" else math.sqrt(2) * 0.8)
            draw.polygon([(cx + r * math.cos(angle + 2 * math.pi * i / corners), cy + r * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)], fill=fill)
        size_word = "small" if radius < 0.125 * size else "big" if radius > 0.24 * size else ""
        horizontal = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
        vertical = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
        objects.append(Obj(color, shape, size_word, " ".join(w for w in (vertical, horizontal) if w)))

    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, float(rng.uniform(0, 10)), (size, size, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(40, 95)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    objects_t = tuple(objects)
    return Scene(img, objects_t, caption(objects_t, rng))


def write(folder: Path, count: int, seed: int, shapes: int | None = None) -> list[Scene]:
    """count scenes as NNNNN.png with NNNNN.txt captions under folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(count):
        scene = render(rng, shapes)
        scene.image.save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(scene.caption + "\n")
        scenes.append(replace(scene, image=None))  # keep the truth, not thousands of images
    return scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=30000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shapes", type=int, choices=(1, 2, 3), help="shapes per scene (default: 1 to 3 at random)")
    args = parser.parse_args()
    write(args.folder, args.count, args.seed, args.shapes)
    print(f"wrote {args.count} scenes to {args.folder}")


if __name__ == "__main__":
    main()
