"""A small library for the timeline's tests: scenes of the evaluation renderer (which the bundled
searchlite-shapes model knows) as JPEGs with EXIF headers, taken across six months of 2023 by two
cameras, in Lisbon, in Porto or nowhere known, in two folders; red circles among them at known
places; and, where PyAV is installed, one video of a red circle (with no capture time)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_script
from tests.exif_photos import exif_for

SCENES = 144  # 24 a month
MONTHS = ("2023-01", "2023-02", "2023-03", "2023-04", "2023-05", "2023-06")
CAMERAS = (("Canon", "Canon EOS R5"), ("Apple", "iPhone 13"))
PLACES = ((38.7223, -9.1393, 20.0), (41.1496, -8.6110, 30.0), None)  # Lisbon, Porto, none
FOLDERS = ("trip", "home")


@dataclass(frozen=True)
class Photo:
    path: Path
    taken: str  # the EXIF capture time as searchlite reports it, "2023-01-05T10:00:00"
    colour: str
    shape: str
    camera: str
    place: int  # index into PLACES
    folder: str


def is_red_circle(i: int) -> bool:
    return i % 9 == 4


def write_photos(root: Path) -> tuple[list[Photo], Path | None]:
    """The photos (in date order) under root/photos/{trip,home}, and the video when PyAV is here."""
    render = load_script("render_eval_shapes")
    rng = np.random.default_rng(27)
    names = rng.permutation(SCENES)  # file names not in date order
    others = [(c, s) for c in render.COLORS for s in render.SHAPES if (c, s) != ("red", "circle")]
    photos = []
    for i in range(SCENES):
        month, day = divmod(i, 24)
        taken = f"2023-{month + 1:02d}-{day + 1:02d}T{10 + i % 8:02d}:00:00"
        first = ("red", "circle") if is_red_circle(i) else others[int(rng.integers(len(others)))]
        data, scene = render.render(rng, first=first)
        make, model = CAMERAS[i % 2]
        place, folder = i % 3, FOLDERS[i % 2 if i % 4 else 0]
        path = root / "photos" / folder / f"{names[i]:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        exif = exif_for(make, model, taken.replace("-", ":").replace("T", " "), None, PLACES[place], 1)
        from PIL import Image

        Image.open(io.BytesIO(data)).save(path, "JPEG", quality=92, exif=exif)
        photos.append(Photo(path, taken, scene.color, scene.shape, model, place, folder))
    return photos, _write_video(root / "photos" / "home" / "clip.mp4")


def _write_video(path: Path) -> Path | None:
    try:
        import av  # noqa: F401
    except ImportError:
        return None
    from tests.server_fixtures import make_shape_videos, shape_picture

    make_shape_videos.write_video(path, [(shape_picture("red", "circle", (160, 160)), 2.0)])
    return path


def build_timeline_index(root: Path) -> tuple[list[Photo], Path | None, Path]:
    """(photos, video or None, index folder): indexed with searchlite-shapes, colours as tags."""
    from searchlite import SearchEngine

    photos, video = write_photos(root)
    index = root / "index"
    with SearchEngine.open(index, model="searchlite-shapes") as engine:
        engine.index(root / "photos")
        engine.tag("red,green,blue,yellow", name="colour")
        assert engine.failures() == [], [(r.path, r.error) for r in engine.failures()]
    return photos, video, index


@pytest.fixture(scope="session")
def timeline_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Photo], Path | None, Path]:
    return build_timeline_index(tmp_path_factory.mktemp("timeline"))
