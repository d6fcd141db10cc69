"""The metadata store: SQLite through SQLAlchemy 2.0 Core, the source of truth, vectors included.
The tables are storage/tables.py's; this module holds the statements that read and write them,
storage/vector_reads.py those that read vectors (in the current schema or the one before the vectors
table), and storage/database.py the engine they run on.

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
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    distinct,
    func,
    null,
    or_,
    select,
)
from sqlalchemy.dialects.sqlite import insert as upsert
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from ..errors import SearchliteError
from . import database, migrations
from .rows import FAILED, INDEXED, METADATA_COLUMNS, OWN_KINDS, SKIPPED, FileRow, TagSetRow, VectorPart, VectorRow, id_parts, value_parts
from .tables import class_weights, images, index_info, tag_sets, tags
from .transaction import Transaction
from .vector_reads import INDEXED_IDS, INDEXED_ROW, INDEXED_VECTORS, LegacyVectorReads, Reads, VectorReads, indexed_vectors, vectors_of
from .writelock import read_only_error

# the store, and the rows and states it reads and writes (storage/rows.py), for its users to import
__all__ = [
    "FAILED", "INDEXED", "METADATA_COLUMNS", "OWN_KINDS", "SKIPPED", "FileRow", "Store", "TagSetRow", "Transaction", "VectorPart",
    "VectorRow", "indexed_vectors", "path_under",
]


def path_under(folder: str) -> ColumnElement[bool]:
    """The file folder itself, or any path inside the folder (a condition on `images`)."""
    raw = os.fsencode(folder)
    prefix = raw.rstrip(b"/") + b"/"
    # b"0" sorts right after b"/": [prefix, prefix_end) is exactly the paths inside folder
    return or_(images.c.path == raw, and_(images.c.path >= prefix, images.c.path < prefix[:-1] + b"0"))


_ROW_COLUMNS = (
    "id", "path", "size", "mtime_ns", "content_hash", "state", "width", "height", "error", "failed_under", "taken_at",
    "metadata_version",
)


def _row(r: Sequence[Any]) -> FileRow:
    row_id, path, size, mtime_ns, content_hash, state, width, height, error, failed_under, taken_at, version = r
    return FileRow(
        id=row_id,
        path=os.fsdecode(path),
        size=size,
        mtime_ns=mtime_ns,
        content_hash=content_hash,
        state=state,
        width=width,
        height=height,
        error=error,
        failed_under=None if failed_under is None else json.loads(failed_under),
        taken_at=taken_at,
        metadata_version=version,
    )


class Store:
    """The SQLite database of one index."""

    def __init__(
        self, pool: database.Pool | database.OneConnection, path: Path, *, read_only: bool = False, tables: set[str] | None = None,
        columns: set[str] | None = None,
    ) -> None:
        self._pool = pool
        self.path = path
        self.read_only = read_only
        # an old schema opened read-only cannot be migrated: its missing tag tables read as empty,
        # and its missing columns of images as NULL
        self._has_tags = tables is None or {"tag_sets", "tags", "class_weights"} <= tables
        self._reads = Reads(self._reading)
        # before the vectors table, each indexed file had one vector whose FAISS id was its own id
        self._vectors = VectorReads(self._reads) if tables is None or "vectors" in tables else LegacyVectorReads(self._reads)
        self._row_columns = tuple(images.c[c] if columns is None or c in columns else null().label(c) for c in _ROW_COLUMNS)
        self._vector_files: tuple[int, np.ndarray, np.ndarray] | None = None  # vector_files() at a generation

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (or create) the database at path, bringing its schema up to date; a database on
        read-only media is opened read-only and never written."""
        read_only = path.exists() and not database.is_writable(path)
        pool = database.Pool(database.file_engine(path, read_only=read_only))
        try:
            with pool.connection() as conn:
                tables = database.prepare(conn, path, read_only=read_only)
                columns = set(conn.exec_driver_sql("PRAGMA table_info(images)").scalars(1)) if read_only else None
        except BaseException as e:
            pool.close()
            error = database.sqlite_error(e)
            if error is not None:
                raise database.read_error(path, error) from None
            raise
        return cls(pool, path, read_only=read_only, tables=tables, columns=columns)

    @classmethod
    def in_memory(cls) -> Store:
        """A new database that lives in memory only (for work that needs no index folder, such as
        classifying files): nothing is written to disk, and it is gone once closed."""
        pool = database.OneConnection(database.memory_engine())
        try:
            with pool.connection() as conn:
                migrations.migrate(conn)
        except BaseException:
            pool.close()
            raise
        return cls(pool, Path(":memory:"))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine of this database, for apps that select from its tables
        (storage/tables.py) and join them with their own (docs/library.md)."""
        return self._pool.engine

    def close(self) -> None:
        """Close the connections: idle ones now, those lent out (a read under way) as they come back."""
        self._pool.close()

    # --- index_info ----------------------------------------------------------------------------

    @contextmanager
    def _errors(
        self, mapper: Callable[[Path, sqlite3.DatabaseError], SearchliteError], busy: Callable[[Path], SearchliteError]
    ) -> Iterator[None]:
        """SQLite's errors inside become one clear error (mapper's), a pool timeout busy's."""
        try:
            yield
        except PoolTimeout:
            raise busy(self.path) from None
        except Exception as e:
            error = database.sqlite_error(e)
            if error is None:
                raise
            raise mapper(self.path, error) from None

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads; a damaged file becomes one clear error (and is never touched)."""
        with self._errors(database.read_error, database.busy_error), self._pool.connection() as conn:
            yield conn

    def get_info(self, key: str) -> Any:
        with self._reading() as conn:
            return _get_info(conn, key)

    def set_info(self, key: str, value: Any) -> None:
        with self._writing() as conn:
            _set_info(conn, key, value)

    @property
    def generation(self) -> int:
        """Bumped by every committed change of vectors; the FAISS cache records the one it holds."""
        return self.get_info("generation") or 0

    # --- reads ---------------------------------------------------------------------------------

    def rows_under(self, root: str) -> dict[str, FileRow]:
        """Every row for root itself or for a path inside the folder root, by path."""
        rows = self._reads.all(select(*self._row_columns).where(path_under(root)))
        return {row.path: row for row in map(_row, rows)}

    def indexed_hashes(self) -> set[str]:
        """Content hashes that already have a vector."""
        return {h for (h,) in self._reads.all(select(images.c.content_hash).where(INDEXED_ROW).distinct())}

    def vector_for_hash(self, content_hash: str) -> np.ndarray | None:
        blob = self._reads.one(select(images.c.vector).where(images.c.content_hash == content_hash, INDEXED_ROW).limit(1))
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def metadata_for_hash(self, content_hash: str) -> dict[str, Any] | None:
        """Width, height, the METADATA_COLUMNS and metadata_version of an indexed file with this
        content (one whose size is known, when any is), or None: what an exact copy shares."""
        names = ("width", "height", *METADATA_COLUMNS, "metadata_version")
        statement = (
            select(*(images.c[n] for n in names))
            .where(images.c.content_hash == content_hash, INDEXED_ROW)
            .order_by(images.c.width.is_(None), images.c.id)
            .limit(1)
        )
        rows = self._reads.all(statement)
        return dict(zip(names, rows[0])) if rows else None

    def copies_by_hash(self, hashes: Iterable[str]) -> dict[str, list[str]]:
        """The paths of indexed files by content hash, sorted, for those of hashes that more than
        one indexed file has (exact copies)."""
        # +state: SQLite, without statistics, would walk the index on state (nearly every row) instead
        # of the one on content_hash (2.3 s instead of 7 ms for 500 hashes among 1M rows)
        indexed_row = UnaryExpression(images.c.state, operator=custom_op("+")) == INDEXED
        shared: list[str] = []
        for part in value_parts(sorted(set(hashes))):
            statement = (
                select(images.c.content_hash)
                .where(indexed_row, images.c.content_hash.in_(part))
                .group_by(images.c.content_hash)
                .having(func.count() > 1)
            )
            shared += [h for (h,) in self._reads.all(statement)]
        out: dict[str, list[str]] = {}
        for part in value_parts(shared):
            statement = select(images.c.content_hash, images.c.path).where(indexed_row, images.c.content_hash.in_(part)).order_by(images.c.path)
            for digest, path in self._reads.all(statement):
                out.setdefault(digest, []).append(os.fsdecode(path))
        return out

    def fetch(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed rows by id; ids that are gone are simply absent."""
        out: dict[int, FileRow] = {}
        for part in id_parts(ids):
            rows = self._reads.all(select(*self._row_columns).where(images.c.id.in_(part), INDEXED_ROW))
            out.update((r.id, r) for r in map(_row, rows))
        return out

    def rows_in_state(self, state: str) -> list[FileRow]:
        return [_row(r) for r in self._reads.all(select(*self._row_columns).where(images.c.state == state).order_by(images.c.path))]

    def indexed_ids(self) -> np.ndarray:
        """Ids of every indexed row (those with a vector), int64, ascending."""
        return self._reads.ids(INDEXED_IDS)

    def vectors_by_id(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found int64 (m,), vectors float32 (m, d)) of the vectors among FAISS ids (of indexed
        files), in any order: what a compressed vector index re-ranks its candidates with."""
        rows: list[Any] = []
        for part in id_parts(np.asarray(ids, dtype=np.int64).reshape(-1), 900):
            rows += self._vectors.vectors_by_id(part)
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array([r[0] for r in rows], dtype=np.int64), vectors_of(rows)

    def indexed_count(self) -> int:
        """Indexed files."""
        return int(self._reads.one(select(func.count()).select_from(images).where(INDEXED_ROW)))

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of every indexed row, in chunks."""
        yield from self._reads.stream(INDEXED_VECTORS, chunk)

    def iter_faiss_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(FAISS ids int64 (n,), vectors float32 (n, d)) of every vector of every indexed file,
        in chunks: what the vector index holds."""
        yield from self._vectors.iter_faiss_vectors(chunk)

    def vector_count(self) -> int:
        """How many vectors the vector index holds (len(vector_ids()), without reading them)."""
        return self._vectors.vector_count()

    def vector_files(self) -> tuple[np.ndarray, np.ndarray]:
        """(FAISS ids int64 (n,), ascending; the file id each belongs to int64 (n,)) of every vector
        of every indexed file, in one read: how a search scoring every vector finds their files.
        Kept until the vectors change (the generation moves on): at 1M vectors the read takes ~1 s.
        Read-only arrays."""
        generation = self.generation
        cached = self._vector_files
        if cached is not None and cached[0] == generation:
            return cached[1], cached[2]
        ids, owners = self._vectors.vector_files()
        ids.flags.writeable = owners.flags.writeable = False
        self._vector_files = (generation, ids, owners)
        return ids, owners

    def vector_ids(self) -> np.ndarray:
        """FAISS ids of every vector of every indexed file, int64, ascending."""
        return self._vectors.vector_ids()

    def vector_rows(self, ids: Iterable[int]) -> dict[int, VectorRow]:
        """What each FAISS id stands for; unknown ids are absent."""
        out: dict[int, VectorRow] = {}
        for part in id_parts(ids):
            out.update(self._vectors.vector_rows(part))
        return out

    def vector_ids_of(self, image_ids: Iterable[int] | None = None, *, file_kind: str | None = None) -> np.ndarray:
        """FAISS ids of every vector of the files image_ids (all files when None) whose own
        vector is of file_kind ("image" or "video"; any when None), int64."""
        return self._vectors.vector_ids_of(image_ids, file_kind)

    def part_vectors(self, image_id: int) -> tuple[list[VectorRow], np.ndarray]:
        """A file's vectors other than its own (regions, shots) and their numbers (n, d)."""
        return self._vectors.part_vectors(image_id)

    def file_kinds(self, image_ids: Iterable[int]) -> dict[int, str]:
        """"image" or "video" by file id, from the kind of each file's own vector."""
        out: dict[int, str] = {}
        for part in id_parts(image_ids):
            out.update(self._vectors.file_kinds(part))
        return out

    def parts_for_hash(self, content_hash: str) -> tuple[str, list[VectorPart]]:
        """(kind of the own vector, the other vectors) of an indexed file with this content."""
        return self._vectors.parts_for_hash(content_hash)

    def cached_weights(self, key: str) -> np.ndarray | None:
        """Zero-shot class weights by (model, labels, templates), so that text is embedded once."""
        if not self._has_tags:
            return None
        blob = self._reads.one(select(class_weights.c.weights).where(class_weights.c.key == key))
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def cache_weights(self, key: str, weights: np.ndarray) -> None:
        """Keep zero-shot class weights for next time; a read-only index just computes them again."""
        if self.read_only:
            return
        with self._writing() as conn:
            values = {"key": key, "weights": np.ascontiguousarray(weights, np.float32).tobytes()}
            conn.execute(upsert(class_weights).values(values).on_conflict_do_nothing(index_elements=[class_weights.c.key]))

    def tag_sets(self) -> list[TagSetRow]:
        if not self._has_tags:
            return []
        out = []
        columns = (tag_sets.c.name, tag_sets.c.key, tag_sets.c.labels, tag_sets.c.weights, tag_sets.c.bias, tag_sets.c.threshold, tag_sets.c.source)
        for name, key, labels, weights, bias, threshold, source in self._reads.all(select(*columns).order_by(tag_sets.c.name)):
            labels = tuple(json.loads(labels))
            weights = np.frombuffer(weights, np.float32).reshape(len(labels), -1)
            out.append(TagSetRow(name, key, labels, weights, np.frombuffer(bias, np.float32), threshold, source))
        return out

    def untagged_vectors(self, tag_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of indexed images without tags from tag_set."""
        tagged = select(tags.c.image_id).where(tags.c.tag_set == tag_set)
        rows = self._reads.all(select(images.c.id, images.c.vector).where(INDEXED_ROW, images.c.id.not_in(tagged)))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, 0), np.float32)
        return ids, vectors_of(rows)

    def ids_tagged(self, label: str) -> set[int]:
        if not self._has_tags:
            return set()
        return {i for (i,) in self._reads.all(select(tags.c.image_id).where(tags.c.label == label).distinct())}

    def tag_counts(self) -> dict[str, int]:
        if not self._has_tags:
            return {}
        return dict(self._reads.all(select(tags.c.label, func.count(distinct(tags.c.image_id))).group_by(tags.c.label).order_by(tags.c.label)))

    def tags_of(self, image_ids: Iterable[int]) -> dict[int, list[str]]:
        """Labels by file id, the likeliest first."""
        out: dict[int, list[str]] = {}
        for part in id_parts(image_ids):
            out.update((i, []) for i in part)
            if self._has_tags:
                statement = select(tags.c.image_id, tags.c.label).where(tags.c.image_id.in_(part)).order_by(tags.c.score.desc())
                for image_id, label in self._reads.all(statement):
                    out[image_id].append(label)
        return out

    def ids_where(self, *conditions: ColumnElement[bool]) -> np.ndarray:
        """Ids of indexed rows meeting every condition (on the columns of tables.images), int64, ascending."""
        return self._reads.ids(select(images.c.id).where(INDEXED_ROW, *conditions).order_by(images.c.id))

    def select_where(self, columns: Sequence[str], *conditions: ColumnElement[bool]) -> list[Any]:
        """Rows (named tuples of id and the named columns of `images`) of indexed rows meeting
        every condition."""
        return self._reads.all(select(images.c.id, *(images.c[name] for name in columns)).where(INDEXED_ROW, *conditions))

    def metadata_of(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The header metadata of indexed rows by id (see METADATA_COLUMNS), width and height included."""
        out: dict[int, dict[str, Any]] = {}
        names = ("width", "height") + METADATA_COLUMNS
        for part in id_parts(ids):
            for row in self.select_where(names, images.c.id.in_(part)):
                out[row.id] = {name: getattr(row, name) for name in names}
        return out

    def date_range(self) -> tuple[str | None, str | None, dict[str, int]]:
        """(earliest, latest) capture time of indexed images, and how many have a time by source."""
        [(first, last)] = self._reads.all(select(func.min(images.c.taken_at), func.max(images.c.taken_at)).where(INDEXED_ROW))
        statement = (
            select(images.c.taken_source, func.count()).where(INDEXED_ROW, images.c.taken_source.is_not(None)).group_by(images.c.taken_source)
        )
        return first, last, dict(self._reads.all(statement))

    def camera_counts(self) -> list[tuple[str | None, str | None, int]]:
        """(make, model, images) of indexed images with a camera recorded, most images first."""
        n = func.count().label("n")
        statement = (
            select(images.c.make, images.c.model, n)
            .where(INDEXED_ROW, or_(images.c.make.is_not(None), images.c.model.is_not(None)))
            .group_by(images.c.make, images.c.model)
            .order_by(n.desc(), images.c.make, images.c.model)
        )
        return [(make, model, n) for make, model, n in self._reads.all(statement)]

    def video_count(self) -> int:
        """Indexed files that are videos."""
        return self._vectors.video_count()

    def counts(self) -> dict[str, int]:
        return dict(self._reads.all(select(images.c.state, func.count()).group_by(images.c.state)))

    # --- writes --------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise IndexReadOnlyError on an index that cannot be written."""
        if self.read_only:
            raise read_only_error(self.path.parent)

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A connection in a write transaction, committed at the end unless an exception cuts it
        short. It takes SQLite's write lock at once (waiting up to 30 s for another writer's commit); a
        failed write (disk full, I/O error, the lock never freed) rolls back and becomes one clear error."""
        self.check_writable()
        with self._errors(database.write_error, database.write_busy_error), self._pool.connection(writes=True) as conn:
            # only the in-memory store's one connection can be inside a read (of this thread) already
            with conn.begin_nested() if conn.in_transaction() else conn.begin():
                yield conn

    @contextmanager
    def transaction(self, *, vectors_changed: bool = True) -> Iterator[Transaction]:
        """One atomic batch of changes; when vectors change, the generation moves on as it commits."""
        with self._writing() as conn:
            yield Transaction(conn)
            if vectors_changed:
                _set_info(conn, "generation", (_get_info(conn, "generation") or 0) + 1)


def _get_info(conn: Connection, key: str) -> Any:
    value = conn.execute(select(index_info.c.value).where(index_info.c.key == key)).scalar()
    return None if value is None else json.loads(value)


def _set_info(conn: Connection, key: str, value: Any) -> None:
    statement = upsert(index_info).values(key=key, value=json.dumps(value))
    conn.execute(statement.on_conflict_do_update(index_elements=[index_info.c.key], set_={"value": statement.excluded.value}))
