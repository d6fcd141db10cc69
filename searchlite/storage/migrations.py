"""Schema history as code: numbered migrations, applied in order when an index is opened.

storage/tables.py describes the schema as it is now, and a new index is made from it. Each migration
is plain SQL that brought a database from the schema before it to the schema after it: it describes
history (the tables of its time, not today's), so it never changes once released, and together they
bring an index written by any earlier searchlite to exactly the tables of tables.py (a test checks
every old fixture index against metadata.create_all).
To change the schema, change tables.py, write `m00N_what_it_does(conn)` and append it to MIGRATIONS.
The number of migrations applied is recorded in index_info as "schema_version".
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import Connection, select
from sqlalchemy.dialects.sqlite import insert

from .tables import index_info, metadata

Migration = Callable[[Connection], None]


def m001_images_and_index_info(conn: Connection) -> None:
    """The first schema (commit ac4cc81): one row per file, and facts about the index."""
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS images (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
            path BLOB NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            content_hash VARCHAR,
            width INTEGER,
            height INTEGER,
            state VARCHAR NOT NULL,
            error VARCHAR,
            vector BLOB,
            UNIQUE (path)
        );
        CREATE INDEX IF NOT EXISTS ix_images_content_hash ON images (content_hash);
        CREATE INDEX IF NOT EXISTS ix_images_state ON images (state);
        CREATE TABLE IF NOT EXISTS index_info (
            "key" VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            PRIMARY KEY ("key")
        );
        """
    )


def m002_tag_tables(conn: Connection) -> None:
    """Tag sets, tags and cached zero-shot class weights (commit d6d5ac6). That commit added them
    without a version bump, so some version-1 files already have them: create only what is missing."""
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS tag_sets (
            name VARCHAR NOT NULL,
            "key" VARCHAR NOT NULL,
            labels VARCHAR NOT NULL,
            weights BLOB NOT NULL,
            bias BLOB NOT NULL,
            threshold FLOAT NOT NULL,
            source VARCHAR NOT NULL,
            PRIMARY KEY (name)
        );
        CREATE TABLE IF NOT EXISTS tags (
            image_id INTEGER NOT NULL,
            tag_set VARCHAR NOT NULL,
            label VARCHAR NOT NULL,
            score FLOAT NOT NULL,
            best BOOLEAN NOT NULL,
            PRIMARY KEY (image_id, tag_set, label)
        );
        CREATE INDEX IF NOT EXISTS ix_tags_label ON tags (label);
        CREATE TABLE IF NOT EXISTS class_weights (
            "key" VARCHAR NOT NULL,
            weights BLOB NOT NULL,
            PRIMARY KEY ("key")
        );
        """
    )


def m003_failed_under(conn: Connection) -> None:
    """images.failed_under: for a file that failed to decode, the limits it failed under (JSON), so
    that a run with other limits tries it again though the file has not changed."""
    _run(conn, "ALTER TABLE images ADD COLUMN failed_under VARCHAR")


def m004_image_metadata(conn: Connection) -> None:
    """What a photo's header says (media/metadata.py): capture time (the photo's wall clock, its UTC
    offset and instant when known, and whether it came from EXIF or the file's mtime), camera, lens,
    GPS position, media type, a perceptual hash of the pixels; metadata_version records which
    reader filled them (NULL: not read yet, so the next `index` run reads the header)."""
    _run(
        conn,
        """
        ALTER TABLE images ADD COLUMN taken_at VARCHAR;
        ALTER TABLE images ADD COLUMN taken_offset VARCHAR;
        ALTER TABLE images ADD COLUMN taken_utc FLOAT;
        ALTER TABLE images ADD COLUMN taken_source VARCHAR;
        ALTER TABLE images ADD COLUMN make VARCHAR;
        ALTER TABLE images ADD COLUMN model VARCHAR;
        ALTER TABLE images ADD COLUMN lens VARCHAR;
        ALTER TABLE images ADD COLUMN latitude FLOAT;
        ALTER TABLE images ADD COLUMN longitude FLOAT;
        ALTER TABLE images ADD COLUMN altitude FLOAT;
        ALTER TABLE images ADD COLUMN media_type VARCHAR;
        ALTER TABLE images ADD COLUMN phash VARCHAR;
        ALTER TABLE images ADD COLUMN metadata_version INTEGER;
        CREATE INDEX IF NOT EXISTS ix_images_taken_at ON images (taken_at);
        CREATE INDEX IF NOT EXISTS ix_images_latitude ON images (latitude)
        """
    )


def m005_vectors(conn: Connection) -> None:
    """The vectors table: a file may own several vectors (its own, regions, shots of a video).
    Each indexed file's vector keeps its FAISS id (vectors.id = images.id) and its numbers in
    images.vector (vectors.vector NULL), so nothing is re-encoded and the FAISS cache stays valid;
    new vectors take ids after every file id ever given, so no FAISS id is ever reused."""
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS vectors (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
            image_id INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            x0 INTEGER,
            y0 INTEGER,
            x1 INTEGER,
            y1 INTEGER,
            time FLOAT,
            span FLOAT,
            vector BLOB
        );
        CREATE INDEX IF NOT EXISTS ix_vectors_image_id ON vectors (image_id);
        INSERT INTO vectors (id, image_id, kind)
            SELECT id, id, 'image' FROM images WHERE state = 'indexed' AND vector IS NOT NULL;
        DELETE FROM sqlite_sequence WHERE name = 'vectors';
        INSERT INTO sqlite_sequence (name, seq)
            SELECT 'vectors', MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'images'), 0),
                                  COALESCE((SELECT MAX(id) FROM vectors), 0))
        """,
    )


def m006_exact_copies_share_size(conn: Connection) -> None:
    """Exact copies indexed after their content (which reused its vector) were stored without a
    width, a height and a perceptual hash: each takes those of an indexed file with the same
    content hash. Data only; the schema is unchanged."""
    same = "FROM images o WHERE o.content_hash = images.content_hash AND o.state = 'indexed'"
    _run(
        conn,
        f"""
        UPDATE images SET
            width = (SELECT o.width {same} AND o.width IS NOT NULL AND o.height IS NOT NULL ORDER BY o.id LIMIT 1),
            height = (SELECT o.height {same} AND o.width IS NOT NULL AND o.height IS NOT NULL ORDER BY o.id LIMIT 1)
        WHERE state = 'indexed' AND content_hash IS NOT NULL AND (width IS NULL OR height IS NULL)
            AND EXISTS (SELECT 1 {same} AND o.width IS NOT NULL AND o.height IS NOT NULL);
        UPDATE images SET phash = (SELECT o.phash {same} AND o.phash IS NOT NULL ORDER BY o.id LIMIT 1)
        WHERE state = 'indexed' AND content_hash IS NOT NULL AND phash IS NULL
        """,
    )


MIGRATIONS: list[Migration] = [
    m001_images_and_index_info, m002_tag_tables, m003_failed_under, m004_image_metadata, m005_vectors,
    m006_exact_copies_share_size,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _run(conn: Connection, script: str) -> None:
    """Each statement of script in the open transaction."""
    for statement in script.split(";"):
        if statement.strip():
            conn.exec_driver_sql(statement)


def table_names(conn: Connection) -> set[str]:
    return set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'").scalars())


def schema_version(conn: Connection) -> int:
    """The migrations a database has had: 0 for an empty file. A file with the first tables but no
    recorded version (its first open was cut short) has had m001."""
    tables = table_names(conn)
    value = None
    if "index_info" in tables:
        value = conn.execute(select(index_info.c.value).where(index_info.c.key == "schema_version")).scalar()
    if value is None:
        return 1 if "images" in tables else 0
    return int(json.loads(value))


def migrate(conn: Connection, upto: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Bring a database to schema `upto` in one transaction: an empty one is made from tables.py
    (when upto is the latest), an older one takes the migrations it lacks. Returns (version before,
    version after). conn must not be in a transaction; its begin should take the write lock
    (storage/database.py: BEGIN IMMEDIATE), so that the version is read under it and two openers
    migrate once."""
    with conn.begin():
        before = schema_version(conn)
        if before == 0 and upto == SCHEMA_VERSION:
            metadata.create_all(conn)
        else:
            for migration in MIGRATIONS[before:upto]:
                migration(conn)
        if upto > before:
            version = insert(index_info).values(key="schema_version", value=json.dumps(upto))
            conn.execute(version.on_conflict_do_update(index_elements=[index_info.c.key], set_={"value": version.excluded.value}))
    return before, max(before, upto)
