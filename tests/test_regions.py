"""`index --regions`: region vectors pooled from one forward pass find a small shape in a large
scene and say where it is (shapes model); the index remembers the setting; a ViT runs too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from searchlite import SearchEngine
from searchlite.cli import app
from tests.conftest import load_script

eval_regions = load_script("eval_regions")


def test_regions_find_a_small_shape_and_its_box(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    photos = tmp_path / "photos"
    photos.mkdir()
    boxes = {}
    for color, shape in [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")]:
        image, box = eval_regions.render(rng, color, shape, side=512)
        image.save(photos / f"{color}-{shape}.jpg", quality=90)
        boxes[f"{color}-{shape}.jpg"] = box
    index = tmp_path / "index"
    result = CliRunner().invoke(app, ["index", str(photos), "--regions", "--index", str(index), "--model", "searchlite-shapes"])
    assert result.exit_code == 0, result.output
    with SearchEngine.open(index, create=False) as engine:
        assert engine.info()["regions"] is True
        assert len(engine.vectors) > 4 * 10  # each 512-pixel scene has dozens of regions
        right = 0
        for name, box in boxes.items():
            color, shape = name[:-4].split("-")
            hit = engine.search(f"a {color} {shape}", k=1)[0]
            if Path(hit.path).name == name:  # (scripts/eval_regions.py measures how often)
                right += 1
                x0, y0, x1, y1 = hit.box
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                assert x0 <= cx <= x1 and y0 <= cy <= y1 and (x1 - x0) < 512 / 2, (hit.box, box)
        assert right >= 3
    tsv = CliRunner().invoke(app, ["query", "a red circle", "-k", "1", "--index", str(index)])
    assert tsv.stdout.split("\t")[2].startswith("box=")


def test_the_index_remembers_regions_and_a_vit_gives_them_too(engine_factory, photos: Path) -> None:
    from dataclasses import replace

    from searchlite import IndexSettings

    engine = engine_factory(settings=replace(IndexSettings(), regions=True))
    engine.index(photos)
    n_files = engine.info()["images"]
    assert len(engine.vectors) > 2 * n_files and engine.info()["regions"]
    engine.close()
    again = engine_factory()  # no flag: the index remembers
    extra = photos / "again.png"
    from PIL import Image

    # blocks of random colours: every window of the picture holds other content
    blocks = np.random.default_rng(3).integers(0, 256, (10, 15, 3), dtype=np.uint8)
    Image.fromarray(blocks).resize((300, 200), Image.NEAREST).save(extra)
    before = len(again.vectors)
    assert again.index(photos).added == 1
    assert len(again.vectors) > before + 1
    # the reference: the picture's regions recomputed with the model; each region's own vector
    # must find the new picture at that region's box (the box is where the matching content is)
    from searchlite.models import dense

    settings, encoder = again.settings, again.load_model()
    picture = again.decode_image(extra, min_side=int(settings.region_scale * encoder.image_size))
    regions = dense.region_features(encoder.model, picture, scale=settings.region_scale, stride=settings.region_stride)
    scale = np.array([300 / picture.width, 200 / picture.height] * 2)
    boxes = np.round(regions.boxes * scale).astype(np.int64)
    assert len(boxes) > 4 and len({tuple(b) for b in boxes.tolist()}) == len(boxes)
    for box, vector in zip(boxes.tolist(), regions.vectors):
        hit = again.search_vector(vector, k=1)[0]
        assert (hit.path, hit.box) == (str(extra), tuple(box)) and hit.score == pytest.approx(1.0, abs=1e-4)
