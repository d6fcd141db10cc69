"""Every kind of file through every surface: JPEG, PNG, TIFF, BMP, GIF, WebP, HEIC, AVIF, a DNG, an
MP4 and an exact copy, in one searchlite-shapes index, each a scene the model knows (server_fixtures.
MEDIA), looked for through the CLI, the library, MCP, export and import, duplicates, and each given
where an image is expected (query --image, classify, explain). The web page and HTTP API go through
the same index in test_server.py and test_server_browser.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite.cli import app
from tests.server_fixtures import MEDIA, VIDEO_SHOTS, media_index  # noqa: F401

# what each kind shows, as a query: the video's second shot is the red circle (from 2 s)
WANTED = {kind: f"a {colour} {shape}" for kind, (_, colour, shape) in MEDIA.items()}
RED_CIRCLE_AT = VIDEO_SHOTS[0][2] + 1.0  # seconds into clip.mp4, inside its red-circle shot


@pytest.fixture(scope="module")
def media(media_index, tmp_path_factory):
    """(kind -> path, index): a copy of the session's media index with an exact copy of the JPEG."""
    paths, index = media_index
    root = tmp_path_factory.mktemp("surfaces")
    folder = root / "media"
    shutil.copytree(paths["jpeg"].parent, folder)
    shutil.copy(folder / paths["jpeg"].name, folder / "photo copy.jpg")
    mine = root / "index"
    run("index", str(folder), "--index", str(mine), "--model", "searchlite-shapes")
    return {kind: folder / p.name for kind, p in paths.items()}, mine


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.stdout


def hits(index: Path, *args: str) -> list[dict]:
    return [json.loads(line) for line in run("query", *args, "--json", "--index", str(index)).splitlines()]


def as_image(kind: str, path: Path) -> str:
    """How a user names this file where one picture is expected: a video at a time."""
    return f"{path}@{RED_CIRCLE_AT}" if kind == "mp4" else str(path)


def test_each_kind_is_found_by_describing_it_through_cli_and_library(media) -> None:
    from searchlite import SearchEngine

    paths, index = media
    with SearchEngine.open(index, create=False) as engine:
        for kind, text in WANTED.items():
            top = hits(index, text, "-k", "3")
            found = {top[0]["path"], *top[0].get("copies", [])}
            assert str(paths[kind]) in found, (kind, top)
            assert engine.search(text, k=1)[0].path in found
    video = hits(index, "a red circle", "-k", "1", "--type", "video")
    assert video[0]["path"] == str(paths["mp4"]) and video[0]["time"] == VIDEO_SHOTS[0][2], video


def test_an_exact_copy_is_one_hit_with_its_size_and_a_true_keeper_reason(media) -> None:
    paths, index = media
    copy = str(paths["jpeg"].with_name("photo copy.jpg"))
    results = hits(index, WANTED["jpeg"], "-k", "20")
    listed = [h["path"] for h in results] + [c for h in results for c in h.get("copies", [])]
    assert sorted(listed) == sorted(set(listed))  # no file twice
    one = next(h for h in results if copy in [h["path"], *h.get("copies", [])])
    assert {one["path"], *one["copies"]} == {copy, str(paths["jpeg"])}
    assert (one["width"], one["height"]) == (240, 160)
    groups = [json.loads(line) for line in run("duplicates", "--tier", "exact", "--json", "--index", str(index)).splitlines()]
    assert len(groups) == 1, groups
    text = json.dumps(groups[0])
    assert "240" in text and "512" not in text, groups  # the keeper is judged on real sizes


@pytest.mark.parametrize("kind", list(MEDIA))
def test_each_kind_given_as_the_query_image_finds_itself(media, kind) -> None:
    paths, index = media
    top = hits(index, "--image", as_image(kind, paths[kind]), "-k", "1")
    assert str(paths[kind]) in {top[0]["path"], *top[0].get("copies", [])}, top
    assert top[0]["score"] > 0.99, top


def test_each_kind_is_classified_and_explained(media, tmp_path: Path) -> None:
    paths, index = media
    named = [as_image(kind, p) for kind, p in paths.items()]
    out = run("classify", *named, "--labels", "red,green,blue,yellow", "--json", "--index", str(index))
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] == ["red" if k == "mp4" else MEDIA[k][1] for k in paths], rows
    for kind, name in zip(paths, named):
        grid = json.loads(run("explain", name, WANTED[kind] if kind != "mp4" else "a red circle", "--json", "--index", str(index)))
        x, y = grid["peak"]
        width, height = (160, 160) if kind == "mp4" else (240, 160)
        assert abs(x - width / 2) < width / 3 and abs(y - height / 2) < height / 3, (kind, grid["peak"])


def test_each_kind_survives_export_and_import(media, tmp_path: Path) -> None:
    paths, index = media
    run("export", str(tmp_path / "out.npy"), "--index", str(index))
    again = tmp_path / "again"
    run("import", str(tmp_path / "out.npy"), str(tmp_path / "out.jsonl"), "--index", str(again), "--model", "searchlite-shapes")
    assert json.loads(run("info", "--json", "--index", str(again)))["videos"] == 1
    for text in WANTED.values():
        assert hits(again, text, "-k", "3") == hits(index, text, "-k", "3"), text


def test_each_kind_through_mcp(media) -> None:
    from tests.test_server_mcp import run_session, structured

    paths, index = media

    async def steps(session):
        found = {}
        for kind, text in WANTED.items():
            by_text = structured(await session.call_tool("search", {"text": text, "k": 1}))
            by_image = structured(await session.call_tool("search_by_image", {"path": as_image(kind, paths[kind]), "k": 1}))
            # min_score: one scene of each kind among a dozen files is one match, which the cut-off does not keep
            by_date = structured(await session.call_tool("timeline", {"text": text, "k": 200, "min_score": -1}))
            found[kind] = (by_text[0], by_image[0], by_date)
        return found

    found = run_session(index, steps)
    for kind, (by_text, by_image, _) in found.items():
        for hit in (by_text, by_image):
            assert str(paths[kind]) in {hit["path"], *hit.get("copies", [])}, (kind, hit)
    from searchlite import SearchEngine

    with SearchEngine.open(index, create=False) as engine:  # the reference: the library's by-date listing
        for kind, (_, _, by_date) in found.items():
            expected = engine.search(WANTED[kind], sort="date", min_score=-1)
            assert [(h["path"], h.get("time")) for h in by_date["hits"]] == [(h.path, h.time) for h in expected], kind
            assert by_date["total"] == len(expected) and by_date["cutoff"] == expected.cutoff.as_dict(), kind
            assert str(paths[kind]) in {p for h in by_date["hits"] for p in (h["path"], *h.get("copies", []))}, kind
