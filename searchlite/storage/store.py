"""The metadata store: SQLite through SQLAlchemy 2.0 Core, the source of truth, vectors included.
The tables are storage/tables.py's; this module holds the statements that read and write them, and
storage/database.py the engine they run on.

One row per file seen under an indexed folder (`images`), and one row per vector in the FAISS index
(`vectors`): a file owns its own vector (kind "image" or "video", whose numbers live in
images.vector) and may own more (kind "region" with a box, kind "shot" with a time and span), whose
numbers live in vectors.vector. `vectors.id` is the FAISS id; ids are never reused (AUTOINCREMENT),
so a stale FAISS cache can never point at the wrong file. Indexes from before the vectors table keep
their FAISS ids: each indexed file's own vector got vectors.id == images.id when it was migrated.
Paths are stored as the exact bytes the OS gave (os.fsencode), so any file name round-trips.
"""

from __future__ import annotations

import itertools
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
    Join,
    Select,
    and_,
    distinct,
    func,
    null,
    or_,
    select,
)
from sqlalchemy.dialects.sqlite import insert as upsert
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from ..errors import SearchliteError
from . import database, migrations
from .rows import FAILED, INDEXED, METADATA_COLUMNS, OWN_KINDS, SKIPPED, FileRow, TagSetRow, VectorPart, VectorRow, id_parts, value_parts
from .tables import class_weights, images, index_info, tag_sets, tags, vectors
from .transaction import Transaction
from .writelock import read_only_error

# the store, and the rows and states it reads and writes (storage/rows.py), for its users to import
__all__ = [
    "FAILED", "INDEXED", "METADATA_COLUMNS", "OWN_KINDS", "SKIPPED", "FileRow", "Store", "TagSetRow", "Transaction", "VectorPart",
    "VectorRow", "indexed_vectors", "path_under",
]

_INDEXED_ROW = images.c.state == INDEXED


class CrossJoin(Join):
    """An inner join that SQLite walks left table first: its CROSS JOIN."""

    inherit_cache = True


@compiles(CrossJoin)
def _cross_join(join: CrossJoin, compiler: Any, **kw: Any) -> str:
    kw["asfrom"] = True
    left = join.left._compiler_dispatch(compiler, **kw)
    joined = compiler.visit_join(join, **kw)  # "<left> JOIN <right> ON <condition>"
    return f"{left} CROSS{joined[len(left):]}"


def indexed_vectors(*columns: Any) -> Select[Any]:
    """columns of the vectors of indexed files. CROSS JOIN makes SQLite walk `vectors` first (by
    id), as these queries want: left to choose, it starts from the index on images.state, which it
    cannot know holds almost nothing but "indexed" (no statistics), and at 2M vectors took 45 s to
    fetch 80 of them, and 33 s before streaming the first."""
    return select(*columns).select_from(CrossJoin(vectors, images, images.c.id == vectors.c.image_id)).where(_INDEXED_ROW)


def path_under(folder: str) -> ColumnElement[bool]:
    """The file folder itself, or any path inside the folder (a condition on `images`)."""
    raw = os.fsencode(folder)
    prefix = raw.rstrip(b"/") + b"/"
    # b"0" sorts right after b"/": [prefix, prefix_end) is exactly the paths inside folder
    return or_(images.c.path == raw, and_(images.c.path >= prefix, images.c.path < prefix[:-1] + b"0"))


_VECTOR_ROW = (vectors.c.id, vectors.c.image_id, vectors.c.kind, vectors.c.x0, vectors.c.y0, vectors.c.x1, vectors.c.y1, vectors.c.time, vectors.c.span)


def _vector_row(r: Sequence[Any]) -> VectorRow:
    row_id, image_id, kind, x0, y0, x1, y1, time, span = r[:9]
    return VectorRow(row_id, image_id, kind, None if x0 is None else (x0, y0, x1, y1), time, span)


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


def _vectors_of(rows: list[Any], column: int = 1) -> np.ndarray:
    """The float32 BLOBs in rows[i][column], stacked (n, d)."""
    return np.frombuffer(b"".join(r[column] for r in rows), dtype=np.float32).reshape(len(rows), -1)


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
        # before the vectors table, each indexed file had one vector whose FAISS id was its own id
        self._has_vectors = tables is None or "vectors" in tables
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

    def _all(self, statement: Any) -> list[Any]:
        with self._reading() as conn:
            return conn.execute(statement).all()

    def _one(self, statement: Any) -> Any:
        """The first column of the first row, or None without rows."""
        with self._reading() as conn:
            return conn.execute(statement).scalar()

    def _ids(self, statement: Any) -> np.ndarray:
        with self._reading() as conn:
            return np.fromiter(conn.execute(statement).scalars(), dtype=np.int64)

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
        rows = self._all(select(*self._row_columns).where(path_under(root)))
        return {row.path: row for row in map(_row, rows)}

    def indexed_hashes(self) -> set[str]:
        """Content hashes that already have a vector."""
        return {h for (h,) in self._all(select(images.c.content_hash).where(_INDEXED_ROW).distinct())}

    def vector_for_hash(self, content_hash: str) -> np.ndarray | None:
        blob = self._one(select(images.c.vector).where(images.c.content_hash == content_hash, _INDEXED_ROW).limit(1))
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def metadata_for_hash(self, content_hash: str) -> dict[str, Any] | None:
        """Width, height, the METADATA_COLUMNS and metadata_version of an indexed file with this
        content (one whose size is known, when any is), or None: what an exact copy shares."""
        names = ("width", "height", *METADATA_COLUMNS, "metadata_version")
        statement = (
            select(*(images.c[n] for n in names))
            .where(images.c.content_hash == content_hash, _INDEXED_ROW)
            .order_by(images.c.width.is_(None), images.c.id)
            .limit(1)
        )
        rows = self._all(statement)
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
            shared += [h for (h,) in self._all(statement)]
        out: dict[str, list[str]] = {}
        for part in value_parts(shared):
            statement = select(images.c.content_hash, images.c.path).where(indexed_row, images.c.content_hash.in_(part)).order_by(images.c.path)
            for digest, path in self._all(statement):
                out.setdefault(digest, []).append(os.fsdecode(path))
        return out

    def fetch(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed rows by id; ids that are gone are simply absent."""
        out: dict[int, FileRow] = {}
        for part in id_parts(ids):
            rows = self._all(select(*self._row_columns).where(images.c.id.in_(part), _INDEXED_ROW))
            out.update((r.id, r) for r in map(_row, rows))
        return out

    def rows_in_state(self, state: str) -> list[FileRow]:
        return [_row(r) for r in self._all(select(*self._row_columns).where(images.c.state == state).order_by(images.c.path))]

    def indexed_ids(self) -> np.ndarray:
        """Ids of every indexed row (those with a vector), int64, ascending."""
        return self._ids(select(images.c.id).where(_INDEXED_ROW).order_by(images.c.id))

    def vectors_by_id(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found int64 (m,), vectors float32 (m, d)) of the vectors among FAISS ids (of indexed
        files), in any order: what a compressed vector index re-ranks its candidates with."""
        rows: list[Any] = []
        for part in id_parts(np.asarray(ids, dtype=np.int64).reshape(-1), 900):
            if self._has_vectors:  # FAISS ids: a file's own vector lives in images.vector
                rows += self._all(indexed_vectors(vectors.c.id, func.coalesce(vectors.c.vector, images.c.vector)).where(vectors.c.id.in_(part)))
            else:
                rows += self._all(select(images.c.id, images.c.vector).where(images.c.id.in_(part), _INDEXED_ROW))
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array([r[0] for r in rows], dtype=np.int64), _vectors_of(rows)

    def indexed_count(self) -> int:
        """Indexed files."""
        return int(self._one(select(func.count()).select_from(images).where(_INDEXED_ROW)))

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of every indexed row, in chunks."""
        yield from self._stream_vectors(select(images.c.id, images.c.vector).where(_INDEXED_ROW).order_by(images.c.id), chunk)

    def iter_faiss_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(FAISS ids int64 (n,), vectors float32 (n, d)) of every vector of every indexed file,
        in chunks: what the vector index holds."""
        if not self._has_vectors:
            yield from self.iter_vectors(chunk)
            return
        statement = indexed_vectors(vectors.c.id, func.coalesce(vectors.c.vector, images.c.vector)).order_by(vectors.c.id)
        yield from self._stream_vectors(statement, chunk)

    def _stream_vectors(self, statement: Select[Any], chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of a statement selecting (id, vector), in chunks."""
        with self._reading() as conn:
            result = conn.execute(statement)
            while rows := result.fetchmany(chunk):
                yield np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), _vectors_of(rows)

    def vector_count(self) -> int:
        """How many vectors the vector index holds (len(vector_ids()), without reading them)."""
        if not self._has_vectors:
            return self.indexed_count()
        return int(self._one(indexed_vectors(func.count())))

    def vector_files(self) -> tuple[np.ndarray, np.ndarray]:
        """(FAISS ids int64 (n,), ascending; the file id each belongs to int64 (n,)) of every vector
        of every indexed file, in one read: how a search scoring every vector finds their files.
        Kept until the vectors change (the generation moves on): at 1M vectors the read takes ~1 s.
        Read-only arrays."""
        generation = self.generation
        cached = self._vector_files
        if cached is not None and cached[0] == generation:
            return cached[1], cached[2]
        if not self._has_vectors:
            ids = owners = self.indexed_ids()
        else:
            with self._reading() as conn:
                result = conn.execute(indexed_vectors(vectors.c.id, vectors.c.image_id).order_by(vectors.c.id))
                pairs = np.fromiter(itertools.chain.from_iterable(result), dtype=np.int64).reshape(-1, 2)
            ids, owners = pairs[:, 0].copy(), pairs[:, 1].copy()
        ids.flags.writeable = owners.flags.writeable = False
        self._vector_files = (generation, ids, owners)
        return ids, owners

    def vector_ids(self) -> np.ndarray:
        """FAISS ids of every vector of every indexed file, int64, ascending."""
        if not self._has_vectors:
            return self.indexed_ids()
        return self._ids(indexed_vectors(vectors.c.id).order_by(vectors.c.id))

    def vector_rows(self, ids: Iterable[int]) -> dict[int, VectorRow]:
        """What each FAISS id stands for; unknown ids are absent."""
        out: dict[int, VectorRow] = {}
        for part in id_parts(ids):
            if not self._has_vectors:
                out.update((i, VectorRow(i, i, "image")) for i in part)
                continue
            for r in self._all(select(*_VECTOR_ROW).where(vectors.c.id.in_(part))):
                out[r[0]] = _vector_row(r)
        return out

    def vector_ids_of(self, image_ids: Iterable[int] | None = None, *, file_kind: str | None = None) -> np.ndarray:
        """FAISS ids of every vector of the files image_ids (all files when None) whose own
        vector is of file_kind ("image" or "video"; any when None), int64."""
        if not self._has_vectors:
            if file_kind == "video":
                return np.zeros(0, np.int64)
            return self.indexed_ids() if image_ids is None else np.fromiter(image_ids, dtype=np.int64)
        statement = select(vectors.c.id)
        if file_kind:
            statement = statement.where(vectors.c.image_id.in_(select(vectors.c.image_id).where(vectors.c.kind == file_kind)))
        if image_ids is None:
            return self._ids(statement)
        found = [np.zeros(0, np.int64)]
        for part in id_parts(image_ids):
            found.append(self._ids(statement.where(vectors.c.image_id.in_(part))))
        return np.concatenate(found)

    def part_vectors(self, image_id: int) -> tuple[list[VectorRow], np.ndarray]:
        """A file's vectors other than its own (regions, shots) and their numbers (n, d)."""
        if not self._has_vectors:
            return [], np.zeros((0, 0), np.float32)
        statement = select(*_VECTOR_ROW, vectors.c.vector).where(vectors.c.image_id == int(image_id), vectors.c.vector.is_not(None))
        rows = self._all(statement.order_by(vectors.c.id))
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [_vector_row(r) for r in rows], _vectors_of(rows, 9)

    def file_kinds(self, image_ids: Iterable[int]) -> dict[int, str]:
        """"image" or "video" by file id, from the kind of each file's own vector."""
        out: dict[int, str] = {}
        for part in id_parts(image_ids):
            if not self._has_vectors:
                out.update((i, "image") for i in part)
                continue
            statement = select(vectors.c.image_id, vectors.c.kind).where(vectors.c.image_id.in_(part), vectors.c.kind.in_(OWN_KINDS))
            out.update(self._all(statement))
        return out

    def parts_for_hash(self, content_hash: str) -> tuple[str, list[VectorPart]]:
        """(kind of the own vector, the other vectors) of an indexed file with this content."""
        if not self._has_vectors:
            return "image", []
        owner = select(images.c.id).where(images.c.content_hash == content_hash, _INDEXED_ROW).limit(1).scalar_subquery()
        rows = self._all(select(*_VECTOR_ROW, vectors.c.vector).where(vectors.c.image_id == owner).order_by(vectors.c.id))
        kind, parts = "image", []
        for r in rows:
            if r[9] is None:
                kind = r[2]
            else:
                row = _vector_row(r)
                parts.append(VectorPart(row.kind, np.frombuffer(r[9], np.float32), row.box, row.time, row.span))
        return kind, parts

    def cached_weights(self, key: str) -> np.ndarray | None:
        """Zero-shot class weights by (model, labels, templates), so that text is embedded once."""
        if not self._has_tags:
            return None
        blob = self._one(select(class_weights.c.weights).where(class_weights.c.key == key))
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
        for name, key, labels, weights, bias, threshold, source in self._all(select(*columns).order_by(tag_sets.c.name)):
            labels = tuple(json.loads(labels))
            weights = np.frombuffer(weights, np.float32).reshape(len(labels), -1)
            out.append(TagSetRow(name, key, labels, weights, np.frombuffer(bias, np.float32), threshold, source))
        return out

    def untagged_vectors(self, tag_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of indexed images without tags from tag_set."""
        tagged = select(tags.c.image_id).where(tags.c.tag_set == tag_set)
        rows = self._all(select(images.c.id, images.c.vector).where(_INDEXED_ROW, images.c.id.not_in(tagged)))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, 0), np.float32)
        return ids, _vectors_of(rows)

    def ids_tagged(self, label: str) -> set[int]:
        if not self._has_tags:
            return set()
        return {i for (i,) in self._all(select(tags.c.image_id).where(tags.c.label == label).distinct())}

    def tag_counts(self) -> dict[str, int]:
        if not self._has_tags:
            return {}
        return dict(self._all(select(tags.c.label, func.count(distinct(tags.c.image_id))).group_by(tags.c.label).order_by(tags.c.label)))

    def tags_of(self, image_ids: Iterable[int]) -> dict[int, list[str]]:
        """Labels by file id, the likeliest first."""
        out: dict[int, list[str]] = {}
        for part in id_parts(image_ids):
            out.update((i, []) for i in part)
            if self._has_tags:
                statement = select(tags.c.image_id, tags.c.label).where(tags.c.image_id.in_(part)).order_by(tags.c.score.desc())
                for image_id, label in self._all(statement):
                    out[image_id].append(label)
        return out

    def ids_where(self, *conditions: ColumnElement[bool]) -> np.ndarray:
        """Ids of indexed rows meeting every condition (on the columns of tables.images), int64, ascending."""
        return self._ids(select(images.c.id).where(_INDEXED_ROW, *conditions).order_by(images.c.id))

    def select_where(self, columns: Sequence[str], *conditions: ColumnElement[bool]) -> list[Any]:
        """Rows (named tuples of id and the named columns of `images`) of indexed rows meeting
        every condition."""
        return self._all(select(images.c.id, *(images.c[name] for name in columns)).where(_INDEXED_ROW, *conditions))

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
        [(first, last)] = self._all(select(func.min(images.c.taken_at), func.max(images.c.taken_at)).where(_INDEXED_ROW))
        statement = (
            select(images.c.taken_source, func.count()).where(_INDEXED_ROW, images.c.taken_source.is_not(None)).group_by(images.c.taken_source)
        )
        return first, last, dict(self._all(statement))

    def camera_counts(self) -> list[tuple[str | None, str | None, int]]:
        """(make, model, images) of indexed images with a camera recorded, most images first."""
        n = func.count().label("n")
        statement = (
            select(images.c.make, images.c.model, n)
            .where(_INDEXED_ROW, or_(images.c.make.is_not(None), images.c.model.is_not(None)))
            .group_by(images.c.make, images.c.model)
            .order_by(n.desc(), images.c.make, images.c.model)
        )
        return [(make, model, n) for make, model, n in self._all(statement)]

    def video_count(self) -> int:
        """Indexed files that are videos."""
        if not self._has_vectors:
            return 0
        return int(self._one(indexed_vectors(func.count()).where(vectors.c.kind == "video")))

    def counts(self) -> dict[str, int]:
        return dict(self._all(select(images.c.state, func.count()).group_by(images.c.state)))

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
