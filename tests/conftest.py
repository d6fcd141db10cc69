"""Shared fixtures: a tiny random open_clip model saved as a real checkpoint, real photos from
scikit-image, and an environment that can never reach the network or a user's caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "logo", "hubble_deep_field", "retina", "horse", "camera", "grass"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the user's caches or reaches a hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.delenv("SEARCHLITE_INDEX", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a tiny random CLIP, saved the way users save real ones."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("tiny_model")
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CONFIG)
    checkpoint = root / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos (scikit-image's) as JPEG and PNG files in nested folders with awkward names."""
    root = tmp_path_factory.mktemp("photos_master")
    write_photos(root)
    return root


def write_photos(root: Path) -> list[Path]:
    import skimage.data

    layout = [
        "astronaut.jpg",
        "cats/chelsea the cat.JPG",
        "cats/über café/coffee.png",
        "space/rocket.jpeg",
        "space/hubble deep field.jpg",
        "logos/skimage logo.webp",
        "nature/horse.png",
        "nature/grass.bmp",
        "misc/retina.tiff",
        "misc/camera.gif",
    ]
    paths = []
    for name, rel in zip(SKIMAGE_PHOTOS, layout):
        pixels = getattr(skimage.data, name)()
        if pixels.dtype != np.uint8:  # horse is a boolean mask
            pixels = pixels.astype(np.uint8) * 255
        img = Image.fromarray(pixels)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def photos(photo_dir: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the photo folder for one test."""
    dest = tmp_path / "photos"
    shutil.copytree(photo_dir, dest)
    return dest


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def engine_factory(tiny_model: tuple[Path, Path], index_dir: Path):
    """Open SearchEngines on the test index with the tiny model; closes them afterwards."""
    from searchlite import SearchEngine

    config, checkpoint = tiny_model
    opened = []

    def make(**kwargs):
        kwargs.setdefault("model", str(config))
        kwargs.setdefault("pretrained", str(checkpoint))
        engine = SearchEngine.open(kwargs.pop("index", index_dir), **kwargs)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()
