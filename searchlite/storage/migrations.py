"""Schema history as code: numbered migrations, applied in order when an index is opened.

Each migration is plain SQL that brings a database from the schema before it to the schema after
it; it describes history, so it never changes once released. Together they are the schema:
store.py holds the SQL that reads and writes it, and a test checks that every old index they
upgrade ends with the schema of a new one.
To change the schema, write `m00N_what_it_does(conn)` and append it to MIGRATIONS. The number of
migrations applied is recorded in index_info as "schema_version".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]


def m001_images_and_index_info(conn: sqlite3.Connection) -> None:
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


def m002_tag_tables(conn: sqlite3.Connection) -> None:
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


def m003_failed_under(conn: sqlite3.Connection) -> None:
    """images.failed_under: for a file that failed to decode, the limits it failed under (JSON), so
    that a run with other limits tries it again though the file has not changed."""
    _run(conn, "ALTER TABLE images ADD COLUMN failed_under VARCHAR")


def m004_image_metadata(conn: sqlite3.Connection) -> None:
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


def m005_vectors(conn: sqlite3.Connection) -> None:
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


def m006_exact_copies_share_size(conn: sqlite3.Connection) -> None:
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


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of script in the open transaction (executescript would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def schema_version(conn: sqlite3.Connection) -> int:
    """The migrations a database has had: 0 for an empty file. A file with the first tables but no
    recorded version (its first open was cut short) has had m001."""
    tables = table_names(conn)
    if "index_info" not in tables:
        return 1 if "images" in tables else 0
    row = conn.execute("SELECT value FROM index_info WHERE key = 'schema_version'").fetchone()
    if row is None:
        return 1 if "images" in tables else 0
    return int(json.loads(row[0]))


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Apply the migrations a database lacks (up to `upto`), all in one transaction that waits for
    any other writer; returns (version before, version after). conn must be in autocommit mode."""
    conn.execute("BEGIN IMMEDIATE")  # the version is read under the write lock: two openers migrate once
    try:
        before = schema_version(conn)
        for migration in MIGRATIONS[before:upto]:
            migration(conn)
        if upto > before:
            conn.execute(
                "INSERT INTO index_info (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(upto),),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return before, max(before, upto)
