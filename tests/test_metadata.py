"""Photo metadata and filters, as a user meets them: EXIF capture times, cameras and GPS read at
index time (and filled in later for images indexed before, without re-encoding), `info`'s dates and
cameras, each filter through the CLI and the library, and date order."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite import Filters, InvalidInputError, SearchEngine
from searchlite.cli import app
from searchlite.config import DB_FILENAME
from tests.exif_photos import write_exif_photos
from tests.test_engine import counting_encoders

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(index, photos): the EXIF photos indexed once for the tests that only read."""
    root = tmp_path_factory.mktemp("exif")
    folder = write_exif_photos(root)
    config, checkpoint = tiny_model
    with SearchEngine.open(root / "index", model=str(config), pretrained=str(checkpoint)) as engine:
        engine.index(folder)
    return root / "index", folder


@pytest.fixture
def exif_index(built: tuple[Path, Path]):
    index, folder = built
    with SearchEngine.open(index, create=False) as engine:
        yield engine, folder


@pytest.fixture
def built_index(built: tuple[Path, Path]) -> Path:
    return built[0]


def names(hits) -> list[str]:
    return [Path(h.path).name for h in hits]


def cli(index_dir: Path, *args: str):
    return runner.invoke(app, [*args, "--index", str(index_dir)])


def test_the_header_facts_are_stored_at_index_time(built_index: Path) -> None:
    with sqlite3.connect(built_index / DB_FILENAME) as conn:
        conn.row_factory = sqlite3.Row
        rows = {Path(bytes(r["path"]).decode()).name: dict(r) for r in conn.execute("SELECT * FROM images")}
    lisbon, old, plain = rows["lisbon.jpg"], rows["old.jpg"], rows["plain.png"]
    assert (lisbon["taken_at"], lisbon["taken_offset"], lisbon["taken_source"]) == ("2023-06-14T10:30:00", "+01:00", "exif")
    assert lisbon["taken_utc"] == 1686735000.0  # 09:30 UTC
    assert (lisbon["make"], lisbon["model"], lisbon["lens"]) == ("Canon", "Canon EOS R5", "Canon EOS R5 lens")
    assert lisbon["latitude"] == pytest.approx(38.7223, abs=1e-4) and lisbon["longitude"] == pytest.approx(-9.1393, abs=1e-4)
    assert lisbon["altitude"] == 50.0 and lisbon["media_type"] == "image/jpeg" and len(lisbon["phash"]) == 16
    assert (old["taken_offset"], old["taken_utc"], old["latitude"]) == (None, None, None)
    assert (old["width"], old["height"]) == (64, 96)  # EXIF orientation 6: shown upright, sides swapped
    assert (plain["taken_source"], plain["media_type"], plain["make"]) == ("mtime", "image/png", None)
    assert plain["taken_at"].startswith("2021-03-0")  # its mtime, in this machine's time zone


def test_info_shows_the_date_range_and_the_cameras(built_index: Path) -> None:
    index_dir = built_index
    result = cli(index_dir, "info")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())  # "key:" and its value, whatever the column width
    assert lines["taken:"] == "2019-12-31 23:59:59 to 2023-08-02 09:00:00 (1 from file times, no EXIF date)", result.stdout
    assert lines["cameras:"] == "Apple iPhone 13 2, Canon EOS R5 1, NIKON D750 1"
    facts = json.loads(cli(index_dir, "info", "--json").stdout)
    assert facts["dates"] == {"first": "2019-12-31T23:59:59", "last": "2023-08-02T09:00:00", "from_exif": 4, "from_mtime": 1}
    assert facts["cameras"][0] == {"make": "Apple", "model": "iPhone 13", "images": 2}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"after": "2023"}, {"lisbon.jpg", "alps.jpg"}),
        ({"before": "2023"}, {"old.jpg", "party.png", "plain.png"}),
        ({"after": "2023-06", "before": "2023-07"}, {"lisbon.jpg"}),
        ({"after": "2019-12-31T23:59:59", "before": "2020"}, {"old.jpg"}),
        ({"before": "2023-06-14T09:00:00Z"}, {"old.jpg", "party.png", "plain.png"}),  # Lisbon's 10:30+01:00 is 09:30Z
        ({"before": "2023-06-14T09:31:00+00:00"}, {"old.jpg", "party.png", "plain.png", "lisbon.jpg"}),
        ({"camera": "iphone"}, {"alps.jpg", "party.png"}),
        ({"camera": "canon eos"}, {"lisbon.jpg"}),
        ({"camera": "nikon corporation nikon"}, {"old.jpg"}),
        ({"near": "46.55,7.98,20"}, {"alps.jpg"}),
        ({"near": (38.72, -9.14)}, {"lisbon.jpg"}),
        ({"near": "38.72,-9.14,0.01"}, set()),
        ({"place": "Lisbon"}, {"lisbon.jpg"}),
        ({"place": "lisboa"}, {"lisbon.jpg"}),
        ({"camera": "iphone", "after": "2023"}, {"alps.jpg"}),
    ],
)
def test_each_filter_keeps_exactly_the_matching_photos(exif_index, filters: dict, expected: set[str]) -> None:
    engine, _ = exif_index
    assert set(names(engine.search("a photo", k=10, **filters))) == expected
    assert set(names(engine.search("a photo", k=10, filters=Filters(**filters)))) == expected


def test_path_filters_take_a_folder_or_a_glob(exif_index) -> None:
    engine, folder = exif_index
    assert names(engine.search("a photo", k=10, path=folder / "sub")) == ["party.png"]
    assert set(names(engine.search("a photo", k=10, path=str(folder / "*.jpg")))) == {"lisbon.jpg", "alps.jpg", "old.jpg"}
    assert set(names(engine.search("a photo", k=10, path=str(folder / "**" / "*.png")))) == {"party.png"}
    assert engine.search("a photo", k=10, path=folder / "elsewhere") == []


def test_filters_combine_with_image_queries_and_the_rare_match_is_found(exif_index) -> None:
    engine, folder = exif_index
    # the query image is old.jpg itself, but the filter leaves only Lisbon: a filter is not a re-rank
    hits = engine.search(image=str(folder / "old.jpg"), k=1, place="Lisbon")
    assert names(hits) == ["lisbon.jpg"]


def test_bad_filter_values_are_one_line_errors_naming_them(exif_index, built_index: Path) -> None:
    engine, _ = exif_index
    index_dir = built_index
    for kwargs, message in [
        ({"after": "2023-13"}, "cannot read the date '2023-13': give 2023, 2023-06, 2023-06-14 or an ISO time"),
        ({"before": "last week"}, "cannot read the date 'last week'"),
        ({"near": "46.5"}, "cannot read the position '46.5': give LAT,LON or LAT,LON,KM"),
        ({"near": "100,7"}, "the position '100,7' is off the globe"),
        ({"near": "46,7,-1"}, "the radius in '46,7,-1' must be more than 0 km"),
        ({"place": "Qwxzborough"}, "unknown place 'Qwxzborough'"),
        ({"camera": " "}, "a camera filter must not be empty"),
    ]:
        with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            engine.search("a photo", **kwargs)
    result = cli(index_dir, "query", "a photo", "--after", "2023-13")
    assert result.exit_code == 1
    assert result.stderr == (
        "searchlite: error: cannot read the date '2023-13': give 2023, 2023-06, 2023-06-14 or an ISO time such as 2023-06-14T18:30\n"
    )
    result = cli(index_dir, "query", "a photo", "--sort", "size")
    assert result.exit_code == 2 and "give --sort date (oldest first) or --sort -date" in result.stderr


def test_cli_filters_and_the_place_notice(built_index: Path) -> None:
    index_dir = built_index
    result = cli(index_dir, "query", "a photo", "--camera", "iphone", "--after", "2023-01-01", "--json")
    assert result.exit_code == 0, result.output
    [hit] = [json.loads(line) for line in result.stdout.splitlines()]
    assert Path(hit["path"]).name == "alps.jpg" and hit["taken_at"] == "2023-08-02T09:00:00"
    result = cli(index_dir, "query", "a photo", "--place", "Lisbon", "--near", "38.7,-9.1,30")
    assert result.exit_code == 0 and [Path(line.split("\t")[1]).name for line in result.stdout.splitlines()] == ["lisbon.jpg"]
    assert "place 'Lisbon' is Lisbon, Portugal (38.7251,-9.1498, within 10 km)" in result.stderr
    result = cli(index_dir, "query", "a photo", "--place", "Paris")  # two Parises: the notice says which
    assert result.exit_code == 0 and result.stdout == ""
    assert "place 'Paris' is Paris, France" in result.stderr and "Paris, United States" in result.stderr


def test_no_query_with_sort_date_lists_the_matching_photos_by_date(exif_index, built_index: Path) -> None:
    index_dir = built_index
    result = cli(index_dir, "query", "--sort", "date")
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [Path(p).name for _, p in lines] == ["old.jpg", "plain.png", "party.png", "lisbon.jpg", "alps.jpg"]
    assert lines[0][0] == "2019-12-31T23:59:59"
    result = cli(index_dir, "query", "--sort", "-date", "--camera", "iphone", "--json")
    assert [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()] == ["alps.jpg", "party.png"]
    assert "score" not in json.loads(result.stdout.splitlines()[0])
    engine, _ = exif_index
    assert names(engine.search(sort="date", before="2022")) == ["old.jpg", "plain.png"]


def test_the_next_index_run_fills_in_metadata_without_re_encoding(engine_factory, tmp_path: Path, index_dir: Path) -> None:
    folder = write_exif_photos(tmp_path)
    engine_factory().index(folder)
    with sqlite3.connect(index_dir / DB_FILENAME) as conn:  # as an index built before metadata was read
        conn.execute("UPDATE images SET taken_at = NULL, make = NULL, model = NULL, latitude = NULL, longitude = NULL, metadata_version = NULL")
    engine = engine_factory()
    assert engine.search("a photo", camera="iphone") == []
    encoded: list[int] = []
    report = engine_factory(encoder_factory=counting_encoders(encoded)).index(folder)
    assert (report.metadata_read, report.encoded, report.unchanged) == (5, 0, 5) and encoded == []
    assert "5 with metadata read" in report.summary()
    engine = engine_factory()
    assert set(names(engine.search("a photo", camera="iphone"))) == {"alps.jpg", "party.png"}
    assert names(engine.search("a photo", place="Lisbon")) == ["lisbon.jpg"]
    assert engine_factory(encoder_factory=counting_encoders(encoded)).index(folder).metadata_read == 0  # once
    assert encoded == []


def test_moved_and_copied_photos_keep_their_metadata(engine_factory, tmp_path: Path) -> None:
    folder = write_exif_photos(tmp_path)
    engine = engine_factory()
    engine.index(folder)
    (folder / "lisbon.jpg").rename(folder / "sub" / "lisbon moved.jpg")
    (folder / "copy.jpg").write_bytes((folder / "alps.jpg").read_bytes())
    report = engine.index(folder)
    assert (report.moved, report.added, report.encoded) == (1, 1, 0)
    assert names(engine.search("a photo", place="Lisbon")) == ["lisbon moved.jpg"]
    [hit] = engine.search("a photo", camera="iphone", after="2023")  # the copy too, as one hit with the original
    assert {Path(p).name for p in (hit.path, *hit.copies)} == {"alps.jpg", "copy.jpg"}


def test_the_http_api_takes_the_same_filters(exif_index) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from searchlite.server.app import create_app

    engine, folder = exif_index
    with TestClient(create_app(engine), base_url="http://127.0.0.1") as client:
        response = client.get("/api/search", params={"q": "a photo", "camera": "iphone", "after": "2023"})
        assert response.status_code == 200, response.text
        [hit] = response.json()["hits"]
        assert Path(hit["path"]).name == "alps.jpg" and hit["taken_at"] == "2023-08-02T09:00:00"
        response = client.get("/api/search", params={"sort": "-date", "near": "46.55,7.98,20"})
        assert [Path(h["path"]).name for h in response.json()["hits"]] == ["alps.jpg"]
        response = client.get("/api/search", params={"sort": "date", "path": str(folder / "*.jpg")})
        assert [Path(h["path"]).name for h in response.json()["hits"]] == ["old.jpg", "lisbon.jpg", "alps.jpg"]
        response = client.get("/api/search", params={"q": "a photo", "before": "2023-13"})
        assert response.status_code == 400 and "cannot read the date '2023-13'" in response.json()["error"]
