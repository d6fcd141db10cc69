"""Fixtures shared by the server's tests: a small index of searchlite-shapes scenes (semantic
tests) and helpers to make clients. The scenes are fresh (seeded), not the model's training data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.conftest import load_script

make_shapes = load_script("make_shapes")
make_shape_videos = load_script("make_shape_videos")
write_dng = load_script("make_dng").write_dng

SCENES = 64
LABELS = "red,green,blue,yellow"


def build_shapes_index(root: Path, count: int = SCENES, seed: int = 20261203, size: int = 64) -> tuple[Path, Path, list]:
    """(photos folder, index folder, scenes) with the colours as a tag set named colour."""
    from searchlite import SearchEngine

    photos, index = root / "shapes", root / "index"
    scenes = make_shapes.write(photos, count, seed, shapes=1) if size == 64 else _write_sized(photos, count, seed, size)
    for i, scene in enumerate(scenes):  # the truth beside each scene (captions vary their phrasing)
        (photos / f"{i:05d}.txt").write_text(" and ".join(f"{o.color} {o.shape}" for o in scene.objects) + "\n")
    with SearchEngine.open(index, model="searchlite-shapes") as engine:
        engine.index(photos)
        engine.tag(LABELS, name="colour")
    return photos, index, scenes


def _write_sized(folder: Path, count: int, seed: int, size: int) -> list:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(count):
        scene = make_shapes.render(rng, shapes=1, size=size)
        scene.image.save(folder / f"{i:05d}.png")
        scenes.append(scene)
    return scenes


# one file of each kind the page must show, each a scene the shapes model knows: kind -> (file
# name, colour, shape). The video shows a blue square for 2 s, then a red circle for 2 s.
MEDIA = {
    "jpeg": ("photo.jpg", "green", "circle"),
    "png": ("drawing.png", "yellow", "square"),
    "tiff": ("scan.tif", "blue", "circle"),
    "bmp": ("paint.bmp", "green", "triangle"),
    "gif": ("anim.gif", "yellow", "circle"),
    "webp": ("web.webp", "blue", "triangle"),
    "heic": ("IMG_0001.HEIC", "green", "square"),
    "avif": ("IMG_0002.avif", "yellow", "triangle"),
    "dng": ("DSC_0003.DNG", "red", "square"),
    "mp4": ("clip.mp4", "red", "circle"),
}
MEDIA_SIZE = (240, 160)
VIDEO_SHOTS = (("blue", "square", 2.0), ("red", "circle", 2.0))  # (colour, shape, seconds)


def shape_picture(color: str, shape: str, size: tuple[int, int] = MEDIA_SIZE):
    """A plain scene: one big shape of a colour on a light grey ground (RGB PIL image)."""
    import math

    from PIL import Image, ImageDraw

    fill = make_shapes.COLORS[color]
    img = Image.new("RGB", size, (205, 205, 200))
    draw = ImageDraw.Draw(img)
    cx, cy, r = size[0] / 2, size[1] / 2, min(size) * 0.36
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)], fill=fill)
    return img


def write_media(folder: Path) -> dict[str, Path]:
    """One file of each kind in MEDIA under folder (HEIC needs pillow-heif, AVIF Pillow's AVIF
    support, the DNG rawpy to be read back, the MP4 PyAV with libx264); kind -> path."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    folder.mkdir(parents=True, exist_ok=True)
    formats = {"jpeg": "JPEG", "png": "PNG", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF", "webp": "WEBP", "heic": "HEIF", "avif": "AVIF"}
    paths = {}
    for kind, (name, color, shape) in MEDIA.items():
        path = paths[kind] = folder / name
        if kind == "dng":
            picture = shape_picture(color, shape)
            path.write_bytes(write_dng(picture, picture.resize((120, 80))))
        elif kind == "mp4":
            make_shape_videos.write_video(path, [(shape_picture(c, s, (160, 160)), seconds) for c, s, seconds in VIDEO_SHOTS], codec="libx264")
        else:
            shape_picture(color, shape).save(path, formats[kind], quality=90)
    return paths


def build_media_index(root: Path) -> tuple[dict[str, Path], Path]:
    """(kind -> file, index folder): every kind in MEDIA indexed with searchlite-shapes."""
    from searchlite import SearchEngine

    paths = write_media(root / "media")
    index = root / "index"
    with SearchEngine.open(index, model="searchlite-shapes") as engine:
        engine.index(root / "media")
        assert engine.failures() == [], [(r.path, r.error) for r in engine.failures()]
    return paths, index


def caption_of(path: str) -> str:
    return Path(path).with_suffix(".txt").read_text().strip()


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (48, 48)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def clip_client_body(**query: object) -> str:
    """Exactly what clip-retrieval's ClipClient.__search_knn_api__ posts (its defaults), as a string
    sent without a content type, as `requests.post(url, data=json.dumps(...))` does."""
    body = {
        "text": None,
        "image": None,
        "image_url": None,
        "embedding_input": None,
        "deduplicate": True,
        "use_safety_model": True,
        "use_violence_detector": True,
        "indice_name": "index",
        "use_mclip": False,
        "aesthetic_score": 9,
        "aesthetic_weight": 0.5,
        "modality": "image",
        "num_images": 40,
        "num_result_ids": 40,
        "verbose": False,
    }
    body.update(query)
    return json.dumps(body)


@pytest.fixture(scope="session")
def media_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    pytest.importorskip("av", reason="videos need PyAV: pip install 'searchlite[video]'")
    pytest.importorskip("pillow_heif", reason="HEIC needs pillow-heif: pip install 'searchlite[heif]'")
    pytest.importorskip("rawpy", reason="RAW files need rawpy: pip install 'searchlite[raw]'")
    return build_media_index(tmp_path_factory.mktemp("serve_media"))


@pytest.fixture(scope="session")
def shapes_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    return build_shapes_index(tmp_path_factory.mktemp("serve_shapes"))
