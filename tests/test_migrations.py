"""Schema history: each migration from the schema before it, every old fixture index brought to
exactly the tables of storage/tables.py and answering like a fresh one, newer schemas refused, and
missing tables never called damage."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sqlite3
from pathlib import Path

import pytest

from searchlite import IndexVersionError, SearchEngine
from searchlite.config import DB_FILENAME
from searchlite.storage import database, migrations
from searchlite.storage.tables import metadata

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_INDEXES = ["2e598f4", "9e1518f", "52856a0"]  # before the tag tables; v1 with them and a tag set; schema 3


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_schema_fixtures", FIXTURES / "make_schema_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fixtures = _load_fixture_script()


def old_index(commit: str, root: Path) -> tuple[Path, Path, dict[str, str]]:
    """(index dir, photos, the model flags) as commit's code left them, moved under root, with the
    fixtures' tiny model (fixed weights, whatever torch draws) where the index records it."""
    photos = fixtures.write_folder(root)
    config, checkpoint = fixtures.write_tiny_model(root / "model")
    index = root / "index"
    index.mkdir()
    fixtures.load(FIXTURES / f"schema-{commit}.sql", index / DB_FILENAME, root)
    with sqlite3.connect(index / DB_FILENAME) as conn:
        recorded = json.loads(conn.execute("SELECT value FROM index_info WHERE key = 'model'").fetchone()[0])
    from searchlite.models.spec import file_sha256

    assert recorded["checkpoint_sha256"] == file_sha256(str(checkpoint)), "the fixture's model changed: run tests/fixtures/make_schema_fixtures.py"
    return index, photos, {"model": str(config), "pretrained": str(checkpoint)}


def schema_of(db: Path) -> dict[str, dict[str, object]]:
    """Every table of db: its columns (name, type, NOT NULL, default, primary key), whether its ids
    are AUTOINCREMENT, its foreign keys and its indexes (name, or how SQLite made it; unique;
    columns): what two databases of one schema share, whatever statements made them."""
    with sqlite3.connect(db) as conn:
        tables = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()
        out = {}
        for name, sql in tables:
            indexes = sorted(
                (index if origin == "c" else origin, unique, partial, conn.execute(f"PRAGMA index_xinfo('{index}')").fetchall())
                for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list('{name}')")
            )
            out[name] = {
                "columns": conn.execute(f"PRAGMA table_info('{name}')").fetchall(),
                "autoincrement": "AUTOINCREMENT" in sql.upper(),
                "foreign_keys": conn.execute(f"PRAGMA foreign_key_list('{name}')").fetchall(),
                "indexes": indexes,
            }
        return out


def declared_schema(tmp_path: Path) -> dict[str, dict[str, object]]:
    """The schema of storage/tables.py, as metadata.create_all makes it."""
    from sqlalchemy import create_engine

    db = tmp_path / "declared.db"
    engine = create_engine(f"sqlite:///{db}")
    metadata.create_all(engine)
    engine.dispose()
    return schema_of(db)


def migrate(db: Path, upto: int = migrations.SCHEMA_VERSION) -> tuple[int, int]:
    """migrations.migrate on the database at db, through the engine an index opens with."""
    engine = database.file_engine(db, read_only=False)
    try:
        with engine.connect() as conn:
            return migrations.migrate(conn.execution_options(**{database.WRITES: True}), upto)
    finally:
        engine.dispose()


def test_each_migration_builds_on_the_schema_before_it(tmp_path: Path) -> None:
    db = tmp_path / "db"
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(db, upto=1) == (0, 1)
    assert {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"images", "index_info", "sqlite_sequence"}
    conn.execute("INSERT INTO images (path, size, mtime_ns, state, vector) VALUES (x'2f61', 1, 2, 'indexed', x'0000803f')")
    assert migrate(db, upto=2) == (1, 2)
    assert {"tag_sets", "tags", "class_weights"} <= {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert migrate(db, upto=3) == (2, 3)
    assert conn.execute("SELECT path, failed_under FROM images").fetchall() == [(b"/a", None)]
    assert migrate(db, upto=4) == (3, 4)
    assert conn.execute("SELECT path, taken_at, make, phash, metadata_version FROM images").fetchall() == [(b"/a", None, None, None, None)]
    conn.execute("INSERT INTO images (path, size, mtime_ns, state) VALUES (x'2f62', 1, 2, 'failed')")
    assert migrate(db, upto=5) == (4, 5)
    # the indexed file's own vector keeps its FAISS id; new vectors come after every file id
    assert conn.execute("SELECT id, image_id, kind, vector FROM vectors").fetchall() == [(1, 1, "image", None)]
    conn.execute("INSERT INTO vectors (image_id, kind) VALUES (1, 'region')")
    assert conn.execute("SELECT MAX(id) FROM vectors").fetchone() == (3,)
    assert migrate(db) == (5, migrations.SCHEMA_VERSION)
    assert migrate(db) == (migrations.SCHEMA_VERSION,) * 2  # nothing left to do
    conn.close()
    assert schema_of(db) == declared_schema(tmp_path)  # the whole history leads to the declared tables


@pytest.mark.parametrize("commit", OLD_INDEXES)
def test_an_old_index_is_migrated_to_exactly_the_declared_tables(commit: str, tmp_path: Path) -> None:
    db = tmp_path / DB_FILENAME
    fixtures.load(FIXTURES / f"schema-{commit}.sql", db, tmp_path)
    assert migrate(db)[1] == migrations.SCHEMA_VERSION
    assert schema_of(db) == declared_schema(tmp_path)


def test_m006_gives_exact_copies_the_size_and_hash_of_their_content(tmp_path: Path) -> None:
    # schema 5 stored a copy indexed after its content (a reused vector) without width, height or phash
    db = tmp_path / "db"
    migrate(db, upto=5)
    conn = sqlite3.connect(db, isolation_level=None)
    rows = [
        (b"/photo.jpg", "h1", 512, 384, "ab12", "indexed"),
        (b"/photo copy.jpg", "h1", None, None, None, "indexed"),
        (b"/clip.mp4", "h2", 640, 480, None, "indexed"),
        (b"/clip copy.mp4", "h2", None, None, None, "indexed"),
        (b"/lonely.jpg", "h3", None, None, None, "indexed"),  # no sized row shares its content
        (b"/broken.jpg", "h1", None, None, None, "failed"),
    ]
    conn.executemany("INSERT INTO images (path, size, mtime_ns, content_hash, width, height, phash, state) VALUES (?, 1, 2, ?, ?, ?, ?, ?)", rows)
    assert migrate(db, upto=6) == (5, 6)
    got = {os.fsdecode(p): (w, h, ph) for p, w, h, ph in conn.execute("SELECT path, width, height, phash FROM images")}
    assert got == {
        "/photo.jpg": (512, 384, "ab12"), "/photo copy.jpg": (512, 384, "ab12"), "/clip.mp4": (640, 480, None),
        "/clip copy.mp4": (640, 480, None), "/lonely.jpg": (None, None, None), "/broken.jpg": (None, None, None),
    }
    conn.close()


def test_m002_keeps_tag_tables_a_version_1_file_already_has(tmp_path: Path) -> None:
    db = tmp_path / DB_FILENAME
    fixtures.load(FIXTURES / "schema-9e1518f.sql", db, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    tags = conn.execute("SELECT * FROM tags ORDER BY image_id, label").fetchall()
    assert tags and migrate(db, upto=2) == (1, 2)
    assert conn.execute("SELECT * FROM tags ORDER BY image_id, label").fetchall() == tags
    conn.close()


@pytest.mark.parametrize("commit", OLD_INDEXES)
def test_an_index_written_by_old_code_answers_like_a_fresh_one(commit: str, tmp_path: Path) -> None:
    index, photos, flags = old_index(commit, tmp_path)
    labels = fixtures.TAG_LABELS
    with SearchEngine.open(tmp_path / "fresh", **flags) as fresh, SearchEngine.open(index, **flags) as old:
        fresh.index(photos)
        if commit != "2e598f4":  # its tags were migrated, and no model ran to keep them
            fresh.tag(labels)
            assert old.info()["tags"] == fresh.info()["tags"] != {}
        counts = ("images", "failed", "not_images", "dim")
        assert {k: old.info()[k] for k in counts} == {k: fresh.info()[k] for k in counts}
        want, got = fresh.search("a red square", k=10), old.search("a red square", k=10)
        assert [h.path for h in got] == [h.path for h in want] and len(got) == 6
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
        old.tag(labels)
        fresh.tag(labels)
        assert old.info()["tags"] == fresh.info()["tags"]
        assert [h.path for h in old.search("a red square", tag="red")] == [h.path for h in fresh.search("a red square", tag="red")]
        # its "not an image" verdicts predate the formats this searchlite knows (HEIC, RAW): the
        # first run looks at those files once more, and finds them still no images
        # and reads its images' header metadata (once, without re-encoding)
        rejudged = old.index(photos)
        assert (rejudged.skipped, rejudged.unchanged, rejudged.encoded, rejudged.metadata_read) == (1, 6, 0, 6)
        again_old, again_fresh = old.index(photos), fresh.index(photos)
        assert again_old.metadata_read == 0 and again_fresh.metadata_read == 0
        assert dataclasses.replace(again_old, seconds=0) == dataclasses.replace(again_fresh, seconds=0)
        assert again_old.unchanged == 7 and again_old.encoded == 0
        assert old.info()["dates"] == fresh.info()["dates"] == {
            "first": fresh.info()["dates"]["first"], "last": fresh.info()["dates"]["last"], "from_exif": 0, "from_mtime": 6
        }
        assert [h.path for h in old.search(sort="date", path=photos / "sub")] == [str(photos / "sub" / n) for n in ("d.bmp", "e.bmp", "f.bmp")]
        assert [h.path for h in old.search("a red square", k=10)] == [h.path for h in want]
    with sqlite3.connect(index / DB_FILENAME) as conn:
        assert conn.execute("SELECT value FROM index_info WHERE key = 'schema_version'").fetchone() == (str(migrations.SCHEMA_VERSION),)
    assert schema_of(index / DB_FILENAME) == schema_of(tmp_path / "fresh" / DB_FILENAME) == declared_schema(tmp_path)


def test_a_newer_schema_is_refused_naming_both_versions(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from searchlite.cli import app

    index = tmp_path / "index"
    index.mkdir()
    migrate(index / DB_FILENAME)
    with sqlite3.connect(index / DB_FILENAME) as conn:
        conn.execute("UPDATE index_info SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    before = (index / DB_FILENAME).read_bytes()
    with pytest.raises(IndexVersionError):
        SearchEngine.open(index)
    result = CliRunner().invoke(app, ["info", "--index", str(index)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"searchlite: error: the index in {index} was written by a newer searchlite (schema 99; this one reads "
        f"up to {migrations.SCHEMA_VERSION}): upgrade searchlite (pip install -U searchlite)\n"
    )
    assert (index / DB_FILENAME).read_bytes() == before


def test_a_missing_table_is_not_called_damage(engine_factory, photos: Path, index_dir: Path) -> None:
    from searchlite import CorruptIndexError

    engine_factory().index(photos)
    with sqlite3.connect(index_dir / DB_FILENAME) as conn:
        conn.execute("DROP TABLE tags")  # at the current version: no migration brings it back
    with SearchEngine.open(index_dir) as engine:
        with pytest.raises(IndexVersionError, match="no such table: tags") as e:
            engine.info()  # counts tags
    assert not isinstance(e.value, CorruptIndexError) and "damaged" not in str(e.value)


def test_a_sqlite_file_of_another_program_is_not_migrated(tmp_path: Path) -> None:
    from searchlite import CorruptIndexError

    index = tmp_path / "index"
    index.mkdir()
    with sqlite3.connect(index / DB_FILENAME) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
    with pytest.raises(CorruptIndexError, match="is not a searchlite database"):
        SearchEngine.open(index)
    with sqlite3.connect(index / DB_FILENAME) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("recipes",)]
