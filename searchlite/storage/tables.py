"""The schema of an index's SQLite database, written once: every table as a SQLAlchemy Core `Table`
on one `MetaData`. A new index is made from these (`metadata.create_all`); storage/migrations.py
brings an index written by an earlier searchlite to exactly these tables; storage/store.py reads and
writes them.

Apps may read them too, through an open index's engine (`SearchEngine.sql_engine`)::

    from sqlalchemy import select
    from searchlite.storage.tables import images

    with engine.sql_engine.connect() as conn:
        rows = conn.execute(select(images.c.path, images.c.taken_at).where(images.c.state == "indexed"))

`images` holds one row per file seen under an indexed folder, photos and videos alike
(`media_type`); `vectors` one row per vector in the FAISS index. Paths are the exact bytes the OS
gave (`os.fsdecode` turns one back into a name).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table

metadata = MetaData()

# One row per file. id is the FAISS id of the file's own vector in indexes from before the vectors
# table; ids are never reused (AUTOINCREMENT).
images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", LargeBinary, nullable=False, unique=True),  # os.fsencode(path): any name round-trips
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("content_hash", String),  # finds moves and exact copies without decoding
    Column("width", Integer),
    Column("height", Integer),
    Column("state", String, nullable=False),  # indexed | failed | skipped (not an image)
    Column("error", String),  # why a file failed
    Column("vector", LargeBinary),  # float32 (d,): the file's own vector
    Column("failed_under", String),  # JSON: the decode limits a failed file failed under
    # what the header says (media/metadata.py); metadata_version NULL: not read yet
    Column("taken_at", String),  # the photo's wall clock, "YYYY-MM-DDTHH:MM:SS"
    Column("taken_offset", String),  # its UTC offset, "+02:00", when known
    Column("taken_utc", Float),  # the instant (Unix seconds), when the offset is known
    Column("taken_source", String),  # "exif" or "mtime"
    Column("make", String),
    Column("model", String),
    Column("lens", String),
    Column("latitude", Float),
    Column("longitude", Float),
    Column("altitude", Float),
    Column("media_type", String),  # e.g. image/jpeg, video/mp4
    Column("phash", String),  # 64-bit perceptual hash, 16 hex digits
    Column("metadata_version", Integer),
    Index("ix_images_content_hash", "content_hash"),
    Index("ix_images_state", "state"),
    Index("ix_images_taken_at", "taken_at"),
    Index("ix_images_latitude", "latitude"),
    sqlite_autoincrement=True,
)

# Facts about the index by key, each value JSON: schema_version, model, dim, generation, faiss, ...
index_info = Table(
    "index_info",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)

# A named tag set: a linear classifier (zero-shot or a probe) whose verdicts are stored as tags.
tag_sets = Table(
    "tag_sets",
    metadata,
    Column("name", String, primary_key=True),
    Column("key", String, nullable=False),  # identifies the classifier: same key, same tags
    Column("labels", String, nullable=False),  # JSON list
    Column("weights", LargeBinary, nullable=False),  # float32 (n_labels, d)
    Column("bias", LargeBinary, nullable=False),  # float32 (n_labels,)
    Column("threshold", Float, nullable=False),
    Column("source", String, nullable=False),  # for people: how the classifier was made
)

# A tag set's verdicts: the labels each file got (images.id), with their scores.
tags = Table(
    "tags",
    metadata,
    Column("image_id", Integer, primary_key=True),
    Column("tag_set", String, primary_key=True),
    Column("label", String, primary_key=True),
    Column("score", Float, nullable=False),
    Column("best", Boolean, nullable=False),  # the file's likeliest label in its tag set
    Index("ix_tags_label", "label"),
)

# Zero-shot class weights by (model, labels, templates), so that text is embedded once.
class_weights = Table(
    "class_weights",
    metadata,
    Column("key", String, primary_key=True),
    Column("weights", LargeBinary, nullable=False),  # float32 (n_labels, d)
)

# Every vector in the FAISS index (id is the FAISS id, never reused) and what part of which file
# (images.id) it describes: the file's own (kind image or video, its numbers in images.vector), a
# region (a box in pixels of the oriented image) or a shot of a video (its start and length in
# seconds), whose numbers are here.
vectors = Table(
    "vectors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, nullable=False),
    Column("kind", String, nullable=False),  # image | video | region | shot
    Column("x0", Integer),
    Column("y0", Integer),
    Column("x1", Integer),
    Column("y1", Integer),
    Column("time", Float),
    Column("span", Float),
    Column("vector", LargeBinary),  # float32 (d,); NULL for a file's own vector (images.vector)
    Index("ix_vectors_image_id", "image_id"),
    sqlite_autoincrement=True,
)
