"""Fixtures shared by the server's tests: a small index of searchlite-shapes scenes (semantic
tests) and helpers to make clients. The scenes are fresh (seeded), not the model's training data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.conftest import load_script

make_shapes = load_script("make_shapes")

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
def shapes_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    return build_shapes_index(tmp_path_factory.mktemp("serve_shapes"))
