"""Videos: indexed by content with PyAV into shots plus one vector for the whole video; a query
finds the moment (with the shapes model); --type filters; without PyAV, or on a damaged file, a
video is recorded as failed with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite import ImageDecodeError, SearchEngine
from searchlite.cli import app
from tests.conftest import load_script

pytest.importorskip("av")
make_shape_videos = load_script("make_shape_videos")
render_eval_shapes = load_script("render_eval_shapes")


@pytest.fixture(scope="module")
def video_index(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("videos")
    folder = root / "media"
    truth = make_shape_videos.write(folder, 3, seed=11, shots=(3, 3), seconds=(2.0, 5.0))
    render_eval_shapes.write(folder / "stills", 4, seed=11)
    with SearchEngine.open(root / "index", model="searchlite-shapes") as engine:
        report = engine.index(folder)
    assert (report.added, report.failed) == (7, 0)
    with SearchEngine.open(root / "index", create=False) as engine:
        assert (engine.info()["images"], engine.info()["videos"]) == (4, 3)
    return root / "index", folder, truth


def test_a_query_finds_the_video_and_the_moment(video_index) -> None:
    index, _, truth = video_index
    holders: dict[tuple[str, str], dict[str, float]] = {}
    for path, shots in truth.items():
        for shot in shots:
            holders.setdefault((shot.color, shot.shape), {})[path] = shot.start
    right = total = 0
    with SearchEngine.open(index, create=False) as engine:
        for (color, shape), starts in holders.items():
            for hit in engine.search(f"a {color} {shape}", k=len(starts), type="video"):
                assert hit.kind == "video" and hit.span is not None and hit.span > 0
                right += hit.path in starts and abs(hit.time - starts[hit.path]) <= 1.0
                total += 1
        assert all(h.kind == "image" for h in engine.search("a red circle", k=4, type="image"))
    assert right / total >= 0.8, (right, total)


def test_cli_prints_the_time_for_videos_only(video_index) -> None:
    index, _, truth = video_index
    shot = next(iter(truth.values()))[1]
    result = CliRunner().invoke(app, ["query", f"a {shot.color} {shot.shape}", "-k", "7", "--index", str(index)])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert {len(r) for r in rows} == {2, 3}
    assert all(r[2].startswith("t=") and r[1].endswith(".mp4") for r in rows if len(r) == 3)
    assert all(r[1].endswith(".jpg") for r in rows if len(r) == 2)
    as_json = CliRunner().invoke(app, ["query", "a shape", "--type", "video", "--json", "--index", str(index)])
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(records) == 3 and all(r["type"] == "video" and r["span"] > 0 and "box" not in r for r in records)


def test_without_pyav_or_with_a_damaged_file_a_video_fails_with_a_reason(
    video_index, engine_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, folder, truth = video_index
    videos = tmp_path / "videos"
    videos.mkdir()
    source = Path(next(iter(truth)))
    shutil.copy(source, videos / "clip.mov")
    (videos / "cut.mp4").write_bytes(source.read_bytes()[:200])  # the header, and no frames
    (videos / "empty.mp4").write_bytes(b"")
    from searchlite.media import video

    monkeypatch.setattr(video, "available", lambda: False)
    engine = engine_factory()
    report = engine.index(videos)
    assert sorted(report.failures) == [
        (str(videos / "clip.mov"), "a video: indexing videos needs PyAV (pip install 'searchlite[video]')"),
        (str(videos / "cut.mp4"), "a video: indexing videos needs PyAV (pip install 'searchlite[video]')"),
    ]
    assert report.skipped == 1  # empty: not a video
    monkeypatch.undo()  # installed: the failed videos are tried again though unchanged
    report = engine.index(videos)
    assert report.added == 0 and report.updated == 1
    assert [(Path(p).name, reason.startswith("cannot read video")) for p, reason in report.failures] == [("cut.mp4", True)]


def _clip_and_shot(truth: dict) -> tuple[str, object, float]:
    """A video, one of its later shots, and a time inside that shot."""
    path, shots = next(iter(truth.items()))
    shot = shots[-1]
    return path, shot, (shot.start + shot.end) / 2


def test_query_image_takes_a_video_frame_at_a_time_or_its_first(video_index) -> None:
    index, _, truth = video_index
    path, shot, t = _clip_and_shot(truth)
    for name, start in ((f"{path}@{t:g}", shot.start), (path, 0.0)):  # plain: the first frame
        result = CliRunner().invoke(app, ["query", "--image", name, "-k", "1", "--json", "--index", str(index)])
        assert result.exit_code == 0, result.output
        [hit] = [json.loads(line) for line in result.stdout.splitlines()]
        assert hit["path"] == path and abs(hit["time"] - start) <= 1.0, (name, hit)
    with SearchEngine.open(index, create=False) as engine:
        assert engine.search(image=f"{path}@{t:g}", k=1)[0].path == path
        with pytest.raises(ImageDecodeError, match=r"query image .*@99: the video has no frame at 99s or later"):
            engine.search(image=f"{path}@99")
        still = str(next((Path(path).parent / "stills").glob("*.jpg")))
        with pytest.raises(ImageDecodeError, match=r"is not a video: @SECONDS picks a frame of a video only"):
            engine.search(image=f"{still}@2")
        with pytest.raises(ImageDecodeError, match=r"must be seconds from the start, like .*\.mp4@12\.5"):
            engine.search(image=f"{path}@-1")


def test_classify_and_explain_take_a_video_frame(video_index, tmp_path: Path) -> None:
    index, _, truth = video_index
    path, shot, t = _clip_and_shot(truth)
    labels = sorted({f"{s.color} {s.shape}" for shots in truth.values() for s in shots})
    result = CliRunner().invoke(app, ["classify", f"{path}@{t:g}", path, "--labels", ",".join(labels), "--index", str(index)])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == [f"{path}@{t:g}", path]
    assert rows[0][1] == f"{shot.color} {shot.shape}"
    first = truth[path][0]
    assert rows[1][1] == f"{first.color} {first.shape}"  # its first frame
    with SearchEngine.open(index, create=False) as engine:
        [missing] = engine.classify([f"{tmp_path}/gone.mp4@3"], labels)
        assert missing.error == f"file {tmp_path}/gone.mp4@3 not found"
        explained = engine.explain(f"{path}@{t:g}", f"a {shot.color} {shot.shape}")
        assert (explained.width, explained.height) == (make_shape_videos.SIDE, make_shape_videos.SIDE)
    result = CliRunner().invoke(app, ["explain", f"{path}@{t:g}", f"a {shot.color} {shot.shape}", "--index", str(index)])
    assert result.exit_code == 0, result.output
    x, y = map(float, result.stdout.split("\t"))
    assert 0 <= x <= make_shape_videos.SIDE and 0 <= y <= make_shape_videos.SIDE
