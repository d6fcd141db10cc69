"""`export` then `import` gives the same index: `info --json` and the results of every kind of
query (videos and their shots, regions, tags, capture metadata, exact copies) equal the original's,
and a later index run finds nothing to encode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from searchlite import SearchEngine
from searchlite.cli import app
from tests.conftest import load_script
from tests.exif_photos import write_exif_photos

pytest.importorskip("av")
make_shape_videos = load_script("make_shape_videos")
eval_regions = load_script("eval_regions")

QUERIES = [
    ["a red circle", "-k", "20"],
    ["a blue square", "--type", "video"],
    ["a green triangle", "--type", "image", "-k", "3"],
    ["a red circle", "--tag", "red"],
    ["a photo", "--camera", "iphone"],
    ["a yellow circle", "--all"],
    ["--sort", "date"],
]


def cli(*args: object) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def answers(index: Path) -> tuple[dict, list[list[dict]]]:
    """info --json without what depends on the folder and the files' sizes on disk, and every query's
    records without their ids (new rows get new ids)."""
    info = json.loads(cli("info", "--json", "--index", index).stdout)
    for key in ("index", "database_bytes", "vectors_bytes"):
        del info[key]
    results = []
    for query in QUERIES:
        records = [json.loads(line) for line in cli("query", *query, "--json", "--index", index).stdout.splitlines()]
        results.append([{k: v for k, v in r.items() if k != "id"} for r in records])
    return info, results


def test_an_exported_index_imports_as_the_same_index(tmp_path: Path) -> None:
    media = tmp_path / "media"
    [clip] = make_shape_videos.write(media / "clips", 1, seed=3, shots=(2, 2), seconds=(1.0, 1.5))
    write_exif_photos(media)  # capture times, cameras, places
    scene, _ = eval_regions.render(np.random.default_rng(2), "red", "circle", side=512)
    scene.save(media / "scene.jpg", quality=90)  # large enough for regions
    original = tmp_path / "original"
    cli("index", media, "--regions", "--index", original, "--model", "searchlite-shapes")
    shutil.copy(clip, media / "clips" / "copy of the clip.mp4")  # an exact copy, indexed later
    cli("index", media, "--index", original)
    cli("tag", "--labels", "red,green,blue,yellow", "--index", original)
    info, results = answers(original)
    # what must travel is there to begin with
    assert info["videos"] == 2 and info["regions"] and info["tags"] and info["cameras"] and info["dates"]
    hits = [r for result in results for r in result]
    assert any("time" in r for r in hits) and any("box" in r for r in hits) and any(r.get("copies") for r in hits)
    [video] = results[1]
    assert video["width"] == video["height"] == make_shape_videos.SIDE and len(video["copies"]) == 1

    assert "wrote" in cli("export", tmp_path / "e.npy", "--index", original).stderr
    copy = tmp_path / "copy"
    cli("import", tmp_path / "e.npy", tmp_path / "e.jsonl", "--index", copy, "--model", "searchlite-shapes")
    assert answers(copy) == (info, results)
    with SearchEngine.open(copy, create=False) as engine:  # the imported files count as indexed
        report = engine.index(media)
    assert (report.unchanged, report.added, report.updated, report.encoded) == (info["images"] + info["videos"], 0, 0, 0)
