"""The metadata store: SQLite through SQLAlchemy 2.0, the source of truth, vectors included.

One row per file seen under an indexed folder (`images`), and one row per vector in the FAISS index
(`vectors`): a file owns its own vector (kind "image" or "video", whose numbers live in
images.vector) and may own more (kind "region" with a box, kind "shot" with a time and span), whose
numbers live in vectors.vector. `vectors.id` is the FAISS id; ids are never reused (AUTOINCREMENT),
so a stale FAISS cache can never point at the wrong file. Indexes from before the vectors table keep
their FAISS ids: each indexed file's own vector got vectors.id == images.id when it was migrated.
Paths are stored as the exact bytes the OS gave (os.fsencode), so any file name round-trips.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DatabaseError

from ..errors import (
    CorruptIndexError,
    IndexReadError,
    IndexVersionError,
    IndexWriteError,
    SearchliteError,
)
from . import migrations
from .writelock import read_only_error
from .migrations import SCHEMA_VERSION  # noqa: F401 - the version this code writes

log = logging.getLogger(__name__)

INDEXED = "indexed"
FAILED = "failed"
SKIPPED = "skipped"  # not an image

metadata = MetaData()

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("path", LargeBinary, nullable=False, unique=True),
    Column("size", Integer, nullable=False),
    Column("mtime_ns", Integer, nullable=False),
    Column("content_hash", String, index=True),
    Column("width", Integer),
    Column("height", Integer),
    Column("state", String, nullable=False, index=True),
    Column("error", String),
    Column("vector", LargeBinary),
    # a decode failure: the limits it failed under (JSON); a run with other limits tries it again
    Column("failed_under", String),
    # header metadata (media/metadata.py; m004): NULL metadata_version means not read yet
    Column("taken_at", String, index=True),  # the photo's wall clock, "YYYY-MM-DDTHH:MM:SS"
    Column("taken_offset", String),  # "+02:00", when known
    Column("taken_utc", Float),  # Unix seconds, when the offset is known
    Column("taken_source", String),  # "exif" or "mtime"
    Column("make", String),
    Column("model", String),
    Column("lens", String),
    Column("latitude", Float, index=True),
    Column("longitude", Float),
    Column("altitude", Float),
    Column("media_type", String),
    Column("phash", String),  # 64-bit perceptual hash, 16 hex digits
    Column("metadata_version", Integer),
    sqlite_autoincrement=True,
)

# the columns a metadata dict (ImageMetadata.to_dict() plus taken_utc) fills; width/height are the
# images' own columns
METADATA_COLUMNS = (
    "taken_at", "taken_offset", "taken_utc", "taken_source", "make", "model", "lens",
    "latitude", "longitude", "altitude", "media_type", "phash",
)

# FAISS ids: every vector in the vector index, and what part of which file it describes
vectors = Table(
    "vectors",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, nullable=False, index=True),
    Column("kind", String, nullable=False),  # image | video (the file's own vector) | region | shot
    Column("x0", Integer),  # a region's box, in pixels of the oriented image
    Column("y0", Integer),
    Column("x1", Integer),
    Column("y1", Integer),
    Column("time", Float),  # a shot's start, seconds
    Column("span", Float),  # a shot's length, seconds
    Column("vector", LargeBinary),  # float32 (d,); NULL: the file's own vector, images.vector
    sqlite_autoincrement=True,
)

OWN_KINDS = ("image", "video")  # the kinds of a file's own vector


# The vectors of indexed files. CROSS JOIN makes SQLite walk `vectors` first (by id), as these
# queries want: left to choose, it starts from the index on images.state, which it cannot know
# holds almost nothing but "indexed" (no statistics), and at 2M vectors took 45 s to fetch 80 of
# them, and 33 s before streaming the first.
_INDEXED_VECTORS = "FROM vectors v CROSS JOIN images i ON i.id = v.image_id WHERE i.state = :state"


@dataclass(frozen=True)
class VectorPart:
    """A vector a file owns besides its own: a region (box) or a shot of a video (time, span)."""

    kind: str
    vector: Any  # float32 (d,)
    box: tuple[int, int, int, int] | None = None
    time: float | None = None
    span: float | None = None


@dataclass(frozen=True)
class VectorRow:
    """What one FAISS id stands for."""

    id: int
    image_id: int
    kind: str
    box: tuple[int, int, int, int] | None = None
    time: float | None = None
    span: float | None = None


def _vector_row(r: Any) -> VectorRow:
    box = None if r.x0 is None else (r.x0, r.y0, r.x1, r.y1)
    return VectorRow(r.id, r.image_id, r.kind, box, r.time, r.span)


# A named tag set: a linear classifier (zero-shot or probe) whose verdicts are stored as tags.
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

tags = Table(
    "tags",
    metadata,
    Column("image_id", Integer, primary_key=True),
    Column("tag_set", String, primary_key=True),
    Column("label", String, primary_key=True, index=True),
    Column("score", Float, nullable=False),
    Column("best", Boolean, nullable=False),
)

# zero-shot class-weight matrices by (model, labels, templates): text is embedded once
class_weights = Table(
    "class_weights",
    metadata,
    Column("key", String, primary_key=True),
    Column("weights", LargeBinary, nullable=False),  # float32 (n_labels, d)
)

index_info = Table(
    "index_info",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),  # JSON
)


@dataclass(frozen=True)
class TagSetRow:
    """A stored tag set: its classifier and how it was made."""

    name: str
    key: str
    labels: tuple[str, ...]
    weights: Any  # float32 (n_labels, d)
    bias: Any  # float32 (n_labels,)
    threshold: float
    source: str


@dataclass(frozen=True)
class FileRow:
    """What the store knows about one file, without its vector."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    state: str
    width: int | None = None
    height: int | None = None
    error: str | None = None
    failed_under: dict[str, Any] | None = None  # see images.failed_under
    taken_at: str | None = None  # see images.taken_at
    metadata_version: int | None = None  # None: the header has not been read yet


def _row(r: Any) -> FileRow:
    return FileRow(
        id=r.id,
        path=os.fsdecode(r.path),
        size=r.size,
        mtime_ns=r.mtime_ns,
        content_hash=r.content_hash,
        state=r.state,
        width=r.width,
        height=r.height,
        error=r.error,
        failed_under=None if r.failed_under is None else json.loads(r.failed_under),
        taken_at=r.taken_at,
        metadata_version=r.metadata_version,
    )


_VECTOR_ROW = ("id", "image_id", "kind", "x0", "y0", "x1", "y1", "time", "span")

_ROW_COLUMNS = (
    images.c.id,
    images.c.path,
    images.c.size,
    images.c.mtime_ns,
    images.c.content_hash,
    images.c.state,
    images.c.width,
    images.c.height,
    images.c.error,
    images.c.failed_under,
    images.c.taken_at,
    images.c.metadata_version,
)


def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # NORMAL is durable across app crashes in WAL mode (which _prepare sets, once the file is known)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def is_writable(path: Path) -> bool:
    """Whether the database at path (and its folder, where SQLite puts the -wal and -shm files)
    can be written. False on a read-only mount even for root (access() reports EROFS)."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _read_only_uri(path: Path) -> str:
    """A URI that opens path without ever writing. Without a -wal file SQLite cannot open a WAL
    database read-only in a folder where it cannot create the -shm, but immutable=1 can (nothing
    is in a WAL then); with a -wal file immutable=1 would ignore committed rows in it, and mode=ro
    works (SQLite reads a read-only -shm)."""
    uri = f"file:{quote(os.fsencode(path.absolute()))}?mode=ro"  # the name's bytes, %-escaped
    return uri if path.with_name(path.name + "-wal").exists() else uri + "&immutable=1"


class Store:
    """The SQLite database of one index."""

    def __init__(
        self, engine: Engine, path: Path, *, read_only: bool = False, tables: set[str] | None = None, columns: set[str] | None = None
    ) -> None:
        self._engine = engine
        self.path = path
        self.read_only = read_only
        # an old schema opened read-only cannot be migrated: its missing tag tables read as empty,
        # and its missing columns of images as NULL
        self._has_tags = tables is None or {"tag_sets", "tags", "class_weights"} <= tables
        # before the vectors table, each indexed file had one vector whose FAISS id was its own id
        self._has_vectors = tables is None or "vectors" in tables
        self._row_columns = tuple(
            c if columns is None or c.name in columns else literal(None).label(c.name) for c in _ROW_COLUMNS
        )

    @classmethod
    def open(cls, path: Path, *, create: bool) -> Store:
        """Open (and with create=True, create) the database at path, bringing its schema up to
        date; a database on read-only media is opened read-only and never written."""
        read_only = path.exists() and not is_writable(path)
        if read_only:
            uri = _read_only_uri(path)
            engine = create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False),
            )
        else:
            engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _pragmas)
        try:
            tables = _prepare(engine, path, read_only=read_only, create=create)
            columns = None
            if read_only:
                with engine.connect() as conn:
                    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(images)")}
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, path, read_only=read_only, tables=tables if read_only else None, columns=columns)

    @classmethod
    def in_memory(cls) -> Store:
        """A new database that lives in memory only (for work that needs no index folder, such as
        classifying files): nothing is written to disk, and it is gone once closed."""
        from sqlalchemy.pool import StaticPool

        # one connection shared by all threads: each new connection to ":memory:" is another database
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        metadata.create_all(engine)
        store = cls(engine, Path(":memory:"))
        store.set_info("schema_version", SCHEMA_VERSION)
        return store

    def close(self) -> None:
        self._engine.dispose()

    # --- index_info ----------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads; a damaged file becomes one clear error (and is never touched)."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except DatabaseError as e:
            raise _read_error(self.path, e) from None

    def get_info(self, key: str) -> Any:
        with self._reading() as conn:
            return _get_info(conn, key)

    def set_info(self, key: str, value: Any) -> None:
        self.check_writable()
        with self._write_errors(), self._engine.begin() as conn:
            _set_info(conn, key, value)

    @property
    def generation(self) -> int:
        """Bumped by every committed change of vectors; the FAISS cache records the one it holds."""
        return self.get_info("generation") or 0

    # --- reads ---------------------------------------------------------------------------------

    def rows_under(self, root: str) -> dict[str, FileRow]:
        """Every row for root itself or for a path inside the folder root, by path."""
        raw = os.fsencode(root)
        prefix = raw.rstrip(b"/") + b"/"
        # b"0" sorts right after b"/": [prefix, prefix_end) is exactly the paths inside root
        prefix_end = prefix[:-1] + b"0"
        query = select(*self._row_columns).where(
            or_(images.c.path == raw, (images.c.path >= prefix) & (images.c.path < prefix_end))
        )
        with self._reading() as conn:
            return {row.path: row for row in map(_row, conn.execute(query))}

    def indexed_hashes(self) -> set[str]:
        """Content hashes that already have a vector."""
        query = select(images.c.content_hash).where(images.c.state == INDEXED).distinct()
        with self._reading() as conn:
            return set(conn.execute(query).scalars())

    def vector_for_hash(self, content_hash: str) -> np.ndarray | None:
        query = (
            select(images.c.vector)
            .where(images.c.content_hash == content_hash, images.c.state == INDEXED)
            .limit(1)
        )
        with self._reading() as conn:
            blob = conn.execute(query).scalar()
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def fetch(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed rows by id; ids that are gone are simply absent."""
        ids = list(ids)
        if not ids:
            return {}
        query = select(*self._row_columns).where(images.c.id.in_(ids), images.c.state == INDEXED)
        with self._reading() as conn:
            return {r.id: r for r in map(_row, conn.execute(query))}

    def rows_in_state(self, state: str) -> list[FileRow]:
        query = select(*self._row_columns).where(images.c.state == state).order_by(images.c.path)
        with self._reading() as conn:
            return [_row(r) for r in conn.execute(query)]

    def indexed_ids(self) -> np.ndarray:
        """Ids of every indexed row (those with a vector), int64, ascending."""
        with self._reading() as conn:
            ids = conn.execute(select(images.c.id).where(images.c.state == INDEXED).order_by(images.c.id)).scalars()
            return np.fromiter(ids, dtype=np.int64)

    def vectors_by_id(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found int64 (m,), vectors float32 (m, d)) of the vectors among FAISS ids (of indexed
        files), in any order: what a compressed vector index re-ranks its candidates with."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found: list[int] = []
        blobs: list[bytes] = []
        with self._reading() as conn:
            for start in range(0, len(ids), 900):  # within SQLite's limit on bound parameters
                part = ids[start : start + 900].tolist()
                marks = ",".join("?" * len(part))
                if self._has_vectors:  # FAISS ids: a file's own vector lives in images.vector
                    rows = conn.exec_driver_sql(
                        f"SELECT v.id, COALESCE(v.vector, i.vector) {_INDEXED_VECTORS.replace(':state', '?')} AND v.id IN ({marks})",
                        (INDEXED, *part),
                    )
                else:
                    rows = conn.exec_driver_sql(f"SELECT id, vector FROM images WHERE id IN ({marks}) AND state = ?", (*part, INDEXED))
                for row_id, blob in rows:
                    found.append(row_id)
                    blobs.append(blob)
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array(found, dtype=np.int64), np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(found), -1)

    def indexed_count(self) -> int:
        """Indexed files."""
        with self._reading() as conn:
            return int(conn.execute(select(func.count()).where(images.c.state == INDEXED)).scalar_one())

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of every indexed row, in chunks."""
        query = (
            select(images.c.id, images.c.vector)
            .where(images.c.state == INDEXED)
            .order_by(images.c.id)
        )
        yield from self._stream_vectors(query, chunk)

    def iter_faiss_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(FAISS ids int64 (n,), vectors float32 (n, d)) of every vector of every indexed file,
        in chunks: what the vector index holds."""
        if not self._has_vectors:
            yield from self.iter_vectors(chunk)
            return
        query = text(f"SELECT v.id AS id, COALESCE(v.vector, i.vector) AS vector {_INDEXED_VECTORS} ORDER BY v.id")
        yield from self._stream_vectors(query.bindparams(state=INDEXED), chunk)

    def _stream_vectors(self, query: Any, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of a query selecting (id, vector), in chunks."""
        with self._reading() as conn:
            result = conn.execution_options(stream_results=True).execute(query)
            while rows := result.fetchmany(chunk):
                ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
                data = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32)
                yield ids, data.reshape(len(rows), -1)

    def vector_count(self) -> int:
        """How many vectors the vector index holds (len(vector_ids()), without reading them)."""
        if not self._has_vectors:
            return self.indexed_count()
        with self._reading() as conn:
            return int(conn.execute(text(f"SELECT count(*) {_INDEXED_VECTORS}"), {"state": INDEXED}).scalar_one())

    def vector_ids(self) -> np.ndarray:
        """FAISS ids of every vector of every indexed file, int64, ascending."""
        if not self._has_vectors:
            return self.indexed_ids()
        with self._reading() as conn:
            return np.fromiter(conn.execute(text(f"SELECT v.id {_INDEXED_VECTORS} ORDER BY v.id"), {"state": INDEXED}).scalars(), dtype=np.int64)

    def vector_rows(self, ids: Iterable[int]) -> dict[int, VectorRow]:
        """What each FAISS id stands for; unknown ids are absent."""
        ids = list(ids)
        if not ids:
            return {}
        if not self._has_vectors:
            return {i: VectorRow(i, i, "image") for i in ids}
        with self._reading() as conn:
            rows = conn.execute(select(*(vectors.c[n] for n in _VECTOR_ROW)).where(vectors.c.id.in_(ids))).all()
        return {r.id: _vector_row(r) for r in rows}

    def vector_ids_of(self, image_ids: Iterable[int] | None = None, *, file_kind: str | None = None) -> np.ndarray:
        """FAISS ids of every vector of the files image_ids (all files when None) whose own
        vector is of file_kind ("image" or "video"; any when None), int64."""
        if not self._has_vectors:
            if file_kind == "video":
                return np.zeros(0, np.int64)
            return self.indexed_ids() if image_ids is None else np.fromiter(image_ids, dtype=np.int64)
        query = select(vectors.c.id)
        if file_kind is not None:
            owners = select(vectors.c.image_id).where(vectors.c.kind == file_kind)
            query = query.where(vectors.c.image_id.in_(owners))
        wanted = None if image_ids is None else list(image_ids)
        with self._reading() as conn:
            if wanted is None:
                return np.fromiter(conn.execute(query).scalars(), dtype=np.int64)
            found: list[int] = []
            for start in range(0, len(wanted), 10_000):
                chunk = wanted[start : start + 10_000]
                found.extend(conn.execute(query.where(vectors.c.image_id.in_(chunk))).scalars())
            return np.array(found, dtype=np.int64)

    def part_vectors(self, image_id: int) -> tuple[list[VectorRow], np.ndarray]:
        """A file's vectors other than its own (regions, shots) and their numbers (n, d)."""
        if not self._has_vectors:
            return [], np.zeros((0, 0), np.float32)
        query = select(vectors).where(vectors.c.image_id == image_id, vectors.c.vector.is_not(None)).order_by(vectors.c.id)
        with self._reading() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [_vector_row(r) for r in rows], np.frombuffer(b"".join(r.vector for r in rows), np.float32).reshape(len(rows), -1)

    def file_kinds(self, image_ids: Iterable[int]) -> dict[int, str]:
        """"image" or "video" by file id, from the kind of each file's own vector."""
        ids = list(image_ids)
        if not ids or not self._has_vectors:
            return {i: "image" for i in ids}
        query = select(vectors.c.image_id, vectors.c.kind).where(vectors.c.image_id.in_(ids), vectors.c.kind.in_(OWN_KINDS))
        with self._reading() as conn:
            return {i: kind for i, kind in conn.execute(query)}

    def parts_for_hash(self, content_hash: str) -> tuple[str, list[VectorPart]]:
        """(kind of the own vector, the other vectors) of an indexed file with this content."""
        if not self._has_vectors:
            return "image", []
        owner = (
            select(images.c.id).where(images.c.content_hash == content_hash, images.c.state == INDEXED).limit(1)
        ).scalar_subquery()
        query = select(vectors).where(vectors.c.image_id == owner).order_by(vectors.c.id)
        kind, parts = "image", []
        with self._reading() as conn:
            for r in conn.execute(query):
                if r.vector is None:
                    kind = r.kind
                else:
                    row = _vector_row(r)
                    parts.append(VectorPart(r.kind, np.frombuffer(r.vector, np.float32), row.box, row.time, row.span))
        return kind, parts

    def cached_weights(self, key: str) -> np.ndarray | None:
        if not self._has_tags:
            return None
        with self._reading() as conn:
            blob = conn.execute(select(class_weights.c.weights).where(class_weights.c.key == key)).scalar()
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def cache_weights(self, key: str, weights: np.ndarray) -> None:
        """Keep zero-shot class weights for next time; a read-only index just computes them again."""
        if self.read_only:
            return
        stmt = sqlite_insert(class_weights).values(key=key, weights=np.ascontiguousarray(weights, np.float32).tobytes())
        with self._write_errors(), self._engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_nothing())

    def tag_sets(self) -> list[TagSetRow]:
        if not self._has_tags:
            return []
        with self._reading() as conn:
            rows = conn.execute(select(tag_sets).order_by(tag_sets.c.name)).all()
        out = []
        for r in rows:
            labels = tuple(json.loads(r.labels))
            weights = np.frombuffer(r.weights, np.float32).reshape(len(labels), -1)
            out.append(TagSetRow(r.name, r.key, labels, weights, np.frombuffer(r.bias, np.float32), r.threshold, r.source))
        return out

    def untagged_vectors(self, tag_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of indexed images without tags from tag_set."""
        tagged = select(tags.c.image_id).where(tags.c.tag_set == tag_set)
        query = select(images.c.id, images.c.vector).where(images.c.state == INDEXED, images.c.id.not_in(tagged))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        ids = np.array([r.id for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, 0), np.float32)
        return ids, np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(len(rows), -1)

    def ids_tagged(self, label: str) -> set[int]:
        if not self._has_tags:
            return set()
        with self._reading() as conn:
            return set(conn.execute(select(tags.c.image_id).where(tags.c.label == label).distinct()).scalars())

    def tag_counts(self) -> dict[str, int]:
        if not self._has_tags:
            return {}
        query = select(tags.c.label, func.count(tags.c.image_id.distinct())).group_by(tags.c.label).order_by(tags.c.label)
        with self._reading() as conn:
            return {label: n for label, n in conn.execute(query)}

    def tags_of(self, image_ids: Iterable[int]) -> dict[int, list[str]]:
        ids = list(image_ids)
        out: dict[int, list[str]] = {i: [] for i in ids}
        if ids and self._has_tags:
            query = select(tags.c.image_id, tags.c.label).where(tags.c.image_id.in_(ids)).order_by(tags.c.score.desc())
            with self._reading() as conn:
                for image_id, label in conn.execute(query):
                    out[image_id].append(label)
        return out

    def ids_where(self, *conditions: Any) -> np.ndarray:
        """Ids of indexed rows meeting every SQLAlchemy condition on `images`, int64, ascending."""
        query = select(images.c.id).where(images.c.state == INDEXED, *conditions).order_by(images.c.id)
        with self._reading() as conn:
            return np.fromiter(conn.execute(query).scalars(), dtype=np.int64)

    def select_where(self, columns: Iterable[str], *conditions: Any) -> list[Any]:
        """Rows (id and the named columns of `images`) of indexed rows meeting every condition."""
        query = select(images.c.id, *(images.c[c] for c in columns)).where(images.c.state == INDEXED, *conditions)
        with self._reading() as conn:
            return list(conn.execute(query))

    def metadata_of(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The header metadata of indexed rows by id (see METADATA_COLUMNS), width and height included."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        names = ("width", "height") + METADATA_COLUMNS
        for start in range(0, len(ids), 10_000):
            for row in self.select_where(names, images.c.id.in_(ids[start : start + 10_000])):
                out[row.id] = {name: getattr(row, name) for name in names}
        return out

    def date_range(self) -> tuple[str | None, str | None, dict[str, int]]:
        """(earliest, latest) capture time of indexed images, and how many have a time by source."""
        query = select(func.min(images.c.taken_at), func.max(images.c.taken_at)).where(images.c.state == INDEXED)
        by_source = (
            select(images.c.taken_source, func.count())
            .where(images.c.state == INDEXED, images.c.taken_source.is_not(None))
            .group_by(images.c.taken_source)
        )
        with self._reading() as conn:
            first, last = conn.execute(query).one()
            return first, last, {source: n for source, n in conn.execute(by_source)}

    def camera_counts(self) -> list[tuple[str | None, str | None, int]]:
        """(make, model, images) of indexed images with a camera recorded, most images first."""
        query = (
            select(images.c.make, images.c.model, func.count())
            .where(images.c.state == INDEXED, or_(images.c.make.is_not(None), images.c.model.is_not(None)))
            .group_by(images.c.make, images.c.model)
            .order_by(func.count().desc(), images.c.make, images.c.model)
        )
        with self._reading() as conn:
            return [(make, model, n) for make, model, n in conn.execute(query)]

    def video_count(self) -> int:
        """Indexed files that are videos."""
        if not self._has_vectors:
            return 0
        with self._reading() as conn:
            return int(conn.execute(text(f"SELECT count(*) {_INDEXED_VECTORS} AND v.kind = 'video'"), {"state": INDEXED}).scalar_one())

    def counts(self) -> dict[str, int]:
        query = select(images.c.state, func.count()).group_by(images.c.state)
        with self._reading() as conn:
            return {state: n for state, n in conn.execute(query)}

    # --- writes --------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise IndexReadOnlyError on an index that cannot be written."""
        if self.read_only:
            raise read_only_error(self.path.parent)

    @contextmanager
    def _write_errors(self) -> Iterator[None]:
        """A failed write (disk full, I/O error) rolls back and becomes one clear error."""
        try:
            yield
        except DatabaseError as e:
            if _is_damage(e):
                raise _damaged(self.path, e) from None
            if isinstance(e.orig, sqlite3.OperationalError) and "readonly" in str(e.orig):
                raise read_only_error(self.path.parent) from None
            raise IndexWriteError(
                f"cannot write to the index database {self.path} ({e.orig}); nothing committed "
                "before is lost: free disk space or fix the disk, then run the same command again"
            ) from None

    @contextmanager
    def transaction(self, *, vectors_changed: bool = True) -> Iterator[Transaction]:
        """One atomic batch of changes; when vectors change, the generation moves on as it commits."""
        self.check_writable()
        with self._write_errors(), self._engine.begin() as conn:
            tx = Transaction(conn)
            yield tx
            if vectors_changed:
                _set_info(conn, "generation", (_get_info(conn, "generation") or 0) + 1)


class Transaction:
    """Changes inside Store.transaction(). The FAISS ids it drops and the vectors it adds are
    collected in removed_ids and added, for the vector index to follow once it has committed."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.removed_ids: list[int] = []
        self.added: list[tuple[int, np.ndarray]] = []

    def added_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(FAISS ids (n,), vectors (n, d)) added, or (empty, None)."""
        if not self.added:
            return np.zeros(0, np.int64), None
        return np.array([i for i, _ in self.added], dtype=np.int64), np.stack([v for _, v in self.added])

    def _drop_vectors(self, image_ids: list[int]) -> None:
        where = vectors.c.image_id.in_(image_ids)
        self.removed_ids.extend(self._conn.execute(select(vectors.c.id).where(where)).scalars())
        self._conn.execute(delete(vectors).where(where))

    def _add_vectors(self, row_id: int, kind: str, vector: np.ndarray, parts: Iterable[VectorPart]) -> None:
        vector = np.ascontiguousarray(vector, np.float32)
        own = self._conn.execute(vectors.insert().values(image_id=row_id, kind=kind).returning(vectors.c.id)).scalar_one()
        self.added.append((own, vector))
        for part in parts:
            box = part.box or (None, None, None, None)
            data = np.ascontiguousarray(part.vector, np.float32)
            stmt = vectors.insert().values(
                image_id=row_id, kind=part.kind, x0=box[0], y0=box[1], x1=box[2], y1=box[3], time=part.time,
                span=part.span, vector=data.tobytes(),
            )
            self.added.append((self._conn.execute(stmt.returning(vectors.c.id)).scalar_one(), data))

    def put(
        self,
        path: str,
        *,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        state: str,
        vector: np.ndarray | None = None,
        width: int | None = None,
        height: int | None = None,
        error: str | None = None,
        failed_under: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        metadata_version: int | None = None,
        kind: str = "image",
        parts: Iterable[VectorPart] = (),
    ) -> int:
        """Insert or replace the row for path; returns its id (kept when the path existed). Its
        vectors are replaced: with vector (the file's own, of kind "image" or "video") and parts,
        when it is indexed. metadata: header facts by METADATA_COLUMNS name (absent ones are NULL),
        read by the reader of metadata_version."""
        values = dict(
            size=size,
            mtime_ns=mtime_ns,
            content_hash=content_hash,
            state=state,
            vector=None if vector is None else np.ascontiguousarray(vector, np.float32).tobytes(),
            width=width,
            height=height,
            error=error,
            failed_under=None if failed_under is None else json.dumps(failed_under, sort_keys=True),
            **_metadata_values(metadata, metadata_version),
        )
        stmt = sqlite_insert(images).values(path=os.fsencode(path), **values)
        stmt = stmt.on_conflict_do_update(index_elements=[images.c.path], set_=values)
        row_id = self._conn.execute(stmt.returning(images.c.id)).scalar_one()
        self._conn.execute(delete(tags).where(tags.c.image_id == row_id))  # recomputed for the new content
        self._drop_vectors([row_id])
        if state == INDEXED and vector is not None:
            self._add_vectors(row_id, kind, vector, parts)
        return row_id

    def set_metadata(self, row_id: int, metadata: dict[str, Any] | None, metadata_version: int | None, *,
                     width: int | None = None, height: int | None = None) -> None:
        """Replace a row's header metadata (its vector and state stay; so does its perceptual hash
        when metadata has none, as a header read alone gives)."""
        values = _metadata_values(metadata, metadata_version)
        if values["phash"] is None:
            del values["phash"]
        if width is not None and height is not None:
            values.update(width=width, height=height)
        self._conn.execute(update(images).where(images.c.id == row_id).values(**values))

    def move(self, row_id: int, path: str, *, size: int, mtime_ns: int) -> None:
        """The file of row_id now lives at path (same content: the vector stays)."""
        self._conn.execute(
            update(images)
            .where(images.c.id == row_id)
            .values(path=os.fsencode(path), size=size, mtime_ns=mtime_ns)
        )

    def touch(self, row_id: int, *, size: int, mtime_ns: int) -> None:
        """Same content, new stat (e.g. the file was copied over itself)."""
        self._conn.execute(
            update(images).where(images.c.id == row_id).values(size=size, mtime_ns=mtime_ns)
        )

    def delete(self, row_ids: Iterable[int]) -> None:
        row_ids = list(row_ids)
        for start in range(0, len(row_ids), 10_000):  # stay under SQLite's bound-parameter limit
            chunk = row_ids[start : start + 10_000]
            self._drop_vectors(chunk)
            self._conn.execute(delete(images).where(images.c.id.in_(chunk)))
            self._conn.execute(delete(tags).where(tags.c.image_id.in_(chunk)))

    def set_tag_set(self, row: TagSetRow) -> None:
        """Create or replace a tag set; tags of a replaced classifier are dropped."""
        old_key = self._conn.execute(select(tag_sets.c.key).where(tag_sets.c.name == row.name)).scalar()
        if old_key is not None and old_key != row.key:
            self._conn.execute(delete(tags).where(tags.c.tag_set == row.name))
        values = dict(
            key=row.key, labels=json.dumps(list(row.labels)), weights=np.ascontiguousarray(row.weights, np.float32).tobytes(),
            bias=np.ascontiguousarray(row.bias, np.float32).tobytes(), threshold=row.threshold, source=row.source,
        )
        stmt = sqlite_insert(tag_sets).values(name=row.name, **values)
        self._conn.execute(stmt.on_conflict_do_update(index_elements=[tag_sets.c.name], set_=values))

    def add_tags(self, tag_set: str, rows: list[tuple[int, str, float, bool]]) -> None:
        if rows:
            self._conn.execute(
                tags.insert(),
                [{"image_id": i, "tag_set": tag_set, "label": label, "score": score, "best": best} for i, label, score, best in rows],
            )


def _metadata_values(metadata: dict[str, Any] | None, version: int | None) -> dict[str, Any]:
    metadata = metadata or {}
    values = {name: metadata.get(name) for name in METADATA_COLUMNS}
    values["metadata_version"] = version
    return values


def _prepare(engine: Engine, path: Path, *, read_only: bool, create: bool) -> set[str]:
    """Check that path is a searchlite database of a schema this code reads and migrate it (unless
    read-only); returns its tables (as they were, when read-only)."""
    try:
        raw = engine.raw_connection()  # runs _pragmas: a file that is not SQLite fails here
    except DatabaseError as e:
        raise _read_error(path, e) from None
    except sqlite3.DatabaseError as e:
        raise _read_error(path, DatabaseError(None, None, e)) from None
    try:
        conn = raw.driver_connection
        try:
            tables = migrations.table_names(conn)
            version = migrations.schema_version(conn)
        except sqlite3.DatabaseError as e:
            raise _read_error(path, DatabaseError(None, None, e)) from None
        if tables and not tables & {"images", "index_info"}:
            raise CorruptIndexError(
                f"{path} is not a searchlite database (it holds other tables); searchlite will not modify "
                "it: move it aside and index again into an empty folder, or pass another index folder"
            )
        if version > migrations.SCHEMA_VERSION:
            raise IndexVersionError(
                f"the index in {path.parent} was written by a newer searchlite (schema {version}; this one "
                f"reads up to {migrations.SCHEMA_VERSION}): upgrade searchlite (pip install -U searchlite)"
            )
        if read_only:
            if version < 1:
                raise read_only_error(path.parent, "and holds no index yet")
            return tables
        # WAL: any number of readers while one writer commits (kept in the file once set)
        conn.execute("PRAGMA journal_mode=WAL")
        if version < migrations.SCHEMA_VERSION:  # an empty file too: a first open cut short
            isolation = conn.isolation_level
            conn.isolation_level = None  # migrate() runs its own transaction
            try:
                before, after = migrations.migrate(conn)
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
                    raise read_only_error(path.parent) from None
                raise _read_error(path, DatabaseError(None, None, e)) from None
            finally:
                conn.isolation_level = isolation
            if before:
                log.info("upgraded %s from schema %d to %d", path, before, after)
        return migrations.table_names(conn)
    finally:
        raw.close()


def _is_damage(e: DatabaseError) -> bool:
    """SQLite's verdict that the file is corrupt or not a database (SQLITE_CORRUPT, SQLITE_NOTADB:
    sqlite3.DatabaseError itself). Its subclasses are other troubles: a missing table, a locked or
    read-only file, an I/O error, a constraint."""
    return type(e.orig) is sqlite3.DatabaseError


def _read_error(path: Path, e: DatabaseError) -> SearchliteError:
    if _is_damage(e):
        return _damaged(path, e)
    message = str(e.orig)
    if message.startswith(("no such table", "no such column")):
        return IndexVersionError(
            f"the index database {path} lacks part of the schema this searchlite expects ({message}); "
            "open it once with this searchlite where it can be written, which upgrades it"
        )
    return IndexReadError(
        f"cannot read the index database {path} ({message}); check the drive it is on and its "
        "permissions, then run the same command again"
    )


def _damaged(path: Path, e: DatabaseError) -> CorruptIndexError:
    return CorruptIndexError(
        f"{path} is damaged or is not a searchlite database ({e.orig}); searchlite will not modify "
        "it: move it aside (or restore a backup) and index again into an empty folder"
    )


def _get_info(conn: Connection, key: str) -> Any:
    value = conn.execute(select(index_info.c.value).where(index_info.c.key == key)).scalar()
    return None if value is None else json.loads(value)


def _set_info(conn: Connection, key: str, value: Any) -> None:
    stmt = sqlite_insert(index_info).values(key=key, value=json.dumps(value))
    conn.execute(stmt.on_conflict_do_update(index_elements=[index_info.c.key], set_={"value": stmt.excluded.value}))
