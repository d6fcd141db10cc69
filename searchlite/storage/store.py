"""The metadata store: SQLite through the standard library's sqlite3, the source of truth, vectors
included. The schema is what storage/migrations.py builds; this module holds the SQL that reads and
writes it.

One row per file seen under an indexed folder (`images`), and one row per vector in the FAISS index
(`vectors`): a file owns its own vector (kind "image" or "video", whose numbers live in
images.vector) and may own more (kind "region" with a box, kind "shot" with a time and span), whose
numbers live in vectors.vector. `vectors.id` is the FAISS id; ids are never reused (AUTOINCREMENT),
so a stale FAISS cache can never point at the wrong file. Indexes from before the vectors table keep
their FAISS ids: each indexed file's own vector got vectors.id == images.id when it was migrated.
Paths are stored as the exact bytes the OS gave (os.fsencode), so any file name round-trips.

Connections are pooled, one per concurrent user, in autocommit mode: a read sees what was committed
when it ran, and Store.transaction() is one BEGIN IMMEDIATE ... COMMIT.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import (
    CorruptIndexError,
    IndexReadError,
    IndexVersionError,
    IndexWriteError,
    SearchliteError,
)
from . import migrations
from .writelock import read_only_error

log = logging.getLogger(__name__)

INDEXED = "indexed"
FAILED = "failed"
SKIPPED = "skipped"  # not an image

# the columns a metadata dict (ImageMetadata.to_dict() plus taken_utc) fills; width/height are the
# images' own columns
METADATA_COLUMNS = (
    "taken_at", "taken_offset", "taken_utc", "taken_source", "make", "model", "lens",
    "latitude", "longitude", "altitude", "media_type", "phash",
)

OWN_KINDS = ("image", "video")  # the kinds of a file's own vector

# The vectors of indexed files. CROSS JOIN makes SQLite walk `vectors` first (by id), as these
# queries want: left to choose, it starts from the index on images.state, which it cannot know
# holds almost nothing but "indexed" (no statistics), and at 2M vectors took 45 s to fetch 80 of
# them, and 33 s before streaming the first.
_INDEXED_VECTORS = "FROM vectors v CROSS JOIN images i ON i.id = v.image_id WHERE i.state = ?"

# SQLite binds at most 32,766 values per statement: long id lists go in parts
_IDS_PER_STATEMENT = 10_000


@dataclass(frozen=True)
class Where:
    """A condition on the columns of `images`: SQL with ? placeholders, and the values they take."""

    sql: str
    params: tuple[Any, ...] = ()

    @staticmethod
    def all_of(*conditions: Where) -> Where:
        return Where(" AND ".join(f"({c.sql})" for c in conditions) or "1", tuple(p for c in conditions for p in c.params))

    @staticmethod
    def any_of(*conditions: Where) -> Where:
        return Where(" OR ".join(f"({c.sql})" for c in conditions) or "0", tuple(p for c in conditions for p in c.params))


_INDEXED_ROW = Where("state = ?", (INDEXED,))


def path_under(folder: str) -> Where:
    """The file folder itself, or any path inside the folder."""
    raw = os.fsencode(folder)
    prefix = raw.rstrip(b"/") + b"/"
    # b"0" sorts right after b"/": [prefix, prefix_end) is exactly the paths inside folder
    return Where("path = ? OR (path >= ? AND path < ?)", (raw, prefix, prefix[:-1] + b"0"))


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


_VECTOR_ROW = "id, image_id, kind, x0, y0, x1, y1, time, span"


def _vector_row(r: Sequence[Any]) -> VectorRow:
    row_id, image_id, kind, x0, y0, x1, y1, time, span = r[:9]
    return VectorRow(row_id, image_id, kind, None if x0 is None else (x0, y0, x1, y1), time, span)


@dataclass(frozen=True)
class TagSetRow:
    """A stored tag set: its classifier and how it was made (a linear classifier, zero-shot or a
    probe, whose verdicts are stored as tags)."""

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
    failed_under: dict[str, Any] | None = None  # see migrations.m003_failed_under
    taken_at: str | None = None  # see migrations.m004_image_metadata
    metadata_version: int | None = None  # None: the header has not been read yet


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


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _parts(ids: Iterable[Any], size: int = _IDS_PER_STATEMENT) -> Iterator[list[int]]:
    """ids as Python ints (SQLite binds no numpy ones), in lists of at most size."""
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _parts_of(values: list[Any], size: int = _IDS_PER_STATEMENT) -> Iterator[list[Any]]:
    """values in lists of at most size (SQLite's limit on bound values)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _vectors_of(rows: list[Any], column: int = 1) -> np.ndarray:
    """The float32 BLOBs in rows[i][column], stacked (n, d)."""
    return np.frombuffer(b"".join(r[column] for r in rows), dtype=np.float32).reshape(len(rows), -1)


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


def _connect(database: str | Path, *, uri: bool = False, writable: bool = True) -> sqlite3.Connection:
    # autocommit: no transaction is opened behind our back; Store.transaction() opens its own
    conn = sqlite3.connect(database, uri=uri, timeout=30, check_same_thread=False, isolation_level=None)
    if writable:
        # NORMAL is durable across app crashes in WAL mode (which _prepare sets, once the file is known)
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class _Pool:
    """Connections to one database, each lent to one user at a time and made when none is free (so
    there are as many as users at once): threads (the web server's) read side by side, each seeing
    what was committed."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = threading.RLock()  # re-entrant: a generator's cleanup may run inside it (gc)
        self._idle: list[sqlite3.Connection] = []
        self._lent: set[sqlite3.Connection] = set()
        self._retired: set[sqlite3.Connection] = set()  # lent when the pool closed: closed once back

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        with self._lock:
            self._lent.add(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction:  # a transaction cut short
                conn.rollback()
            with self._lock:
                self._lent.discard(conn)
                retired = conn in self._retired
                if retired:
                    self._retired.discard(conn)
                else:
                    self._idle.append(conn)
            if retired:
                conn.close()

    def close(self) -> None:
        """Close the idle connections now, and those lent out as they come back."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._retired |= self._lent
        for conn in idle:
            conn.close()


class _OneConnection:
    """One connection that users take in turn (an in-memory database lives in its connection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self._depth = 0  # a thread may nest uses (a read while it iterates)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
                if not self._depth and self._conn.in_transaction:  # a transaction cut short
                    self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


class Store:
    """The SQLite database of one index."""

    def __init__(
        self, pool: _Pool | _OneConnection, path: Path, *, read_only: bool = False, tables: set[str] | None = None, columns: set[str] | None = None
    ) -> None:
        self._pool = pool
        self.path = path
        self.read_only = read_only
        # an old schema opened read-only cannot be migrated: its missing tag tables read as empty,
        # and its missing columns of images as NULL
        self._has_tags = tables is None or {"tag_sets", "tags", "class_weights"} <= tables
        # before the vectors table, each indexed file had one vector whose FAISS id was its own id
        self._has_vectors = tables is None or "vectors" in tables
        self._row_select = ", ".join(c if columns is None or c in columns else f"NULL AS {c}" for c in _ROW_COLUMNS)
        self._vector_files: tuple[int, np.ndarray, np.ndarray] | None = None  # vector_files() at a generation

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (or create) the database at path, bringing its schema up to date; a database on
        read-only media is opened read-only and never written."""
        read_only = path.exists() and not is_writable(path)
        if read_only:
            uri = _read_only_uri(path)
            pool = _Pool(lambda: _connect(uri, uri=True, writable=False))
        else:
            pool = _Pool(lambda: _connect(path))
        try:
            with pool.connection() as conn:
                tables = _prepare(conn, path, read_only=read_only)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(images)")} if read_only else None
        except sqlite3.DatabaseError as e:
            pool.close()
            raise _read_error(path, e) from None
        except BaseException:
            pool.close()
            raise
        return cls(pool, path, read_only=read_only, tables=tables if read_only else None, columns=columns)

    @classmethod
    def in_memory(cls) -> Store:
        """A new database that lives in memory only (for work that needs no index folder, such as
        classifying files): nothing is written to disk, and it is gone once closed."""
        conn = _connect(":memory:", writable=False)
        try:
            migrations.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(_OneConnection(conn), Path(":memory:"))

    def close(self) -> None:
        self._pool.close()

    # --- index_info ----------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads; a damaged file becomes one clear error (and is never touched)."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except sqlite3.DatabaseError as e:
            raise _read_error(self.path, e) from None

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._reading() as conn:
            return conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None without rows."""
        rows = self._all(sql, params)
        return rows[0][0] if rows else None

    def _ids(self, sql: str, params: Sequence[Any] = ()) -> np.ndarray:
        with self._reading() as conn:
            return np.fromiter((row_id for (row_id,) in conn.execute(sql, params)), dtype=np.int64)

    def get_info(self, key: str) -> Any:
        with self._reading() as conn:
            return _get_info(conn, key)

    def set_info(self, key: str, value: Any) -> None:
        self.check_writable()
        with self._write_errors(), self._pool.connection() as conn:
            _set_info(conn, key, value)

    @property
    def generation(self) -> int:
        """Bumped by every committed change of vectors; the FAISS cache records the one it holds."""
        return self.get_info("generation") or 0

    # --- reads ---------------------------------------------------------------------------------

    def rows_under(self, root: str) -> dict[str, FileRow]:
        """Every row for root itself or for a path inside the folder root, by path."""
        where = path_under(root)
        rows = self._all(f"SELECT {self._row_select} FROM images WHERE {where.sql}", where.params)
        return {row.path: row for row in map(_row, rows)}

    def indexed_hashes(self) -> set[str]:
        """Content hashes that already have a vector."""
        return {h for (h,) in self._all("SELECT DISTINCT content_hash FROM images WHERE state = ?", (INDEXED,))}

    def vector_for_hash(self, content_hash: str) -> np.ndarray | None:
        blob = self._one("SELECT vector FROM images WHERE content_hash = ? AND state = ? LIMIT 1", (content_hash, INDEXED))
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def metadata_for_hash(self, content_hash: str) -> dict[str, Any] | None:
        """Width, height, the METADATA_COLUMNS and metadata_version of an indexed file with this
        content (one whose size is known, when any is), or None: what an exact copy shares."""
        names = ("width", "height", *METADATA_COLUMNS, "metadata_version")
        sql = f"SELECT {', '.join(names)} FROM images WHERE content_hash = ? AND state = ? ORDER BY width IS NULL, id LIMIT 1"
        rows = self._all(sql, (content_hash, INDEXED))
        return dict(zip(names, rows[0])) if rows else None

    def copies_by_hash(self, hashes: Iterable[str]) -> dict[str, list[str]]:
        """The paths of indexed files by content hash, sorted, for those of hashes that more than
        one indexed file has (exact copies)."""
        shared: list[str] = []
        # +state: SQLite, without statistics, would walk the index on state (nearly every row) instead
        # of the one on content_hash (2.3 s instead of 7 ms for 500 hashes among 1M rows)
        for part in _parts_of(sorted(set(hashes))):
            sql = f"SELECT content_hash FROM images WHERE +state = ? AND content_hash IN ({_marks(part)}) GROUP BY content_hash HAVING count(*) > 1"
            shared += [h for (h,) in self._all(sql, (INDEXED, *part))]
        out: dict[str, list[str]] = {}
        for part in _parts_of(shared):
            sql = f"SELECT content_hash, path FROM images WHERE +state = ? AND content_hash IN ({_marks(part)}) ORDER BY path"
            for digest, path in self._all(sql, (INDEXED, *part)):
                out.setdefault(digest, []).append(os.fsdecode(path))
        return out

    def fetch(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed rows by id; ids that are gone are simply absent."""
        out: dict[int, FileRow] = {}
        for part in _parts(ids):
            rows = self._all(f"SELECT {self._row_select} FROM images WHERE id IN ({_marks(part)}) AND state = ?", (*part, INDEXED))
            out.update((r.id, r) for r in map(_row, rows))
        return out

    def rows_in_state(self, state: str) -> list[FileRow]:
        return [_row(r) for r in self._all(f"SELECT {self._row_select} FROM images WHERE state = ? ORDER BY path", (state,))]

    def indexed_ids(self) -> np.ndarray:
        """Ids of every indexed row (those with a vector), int64, ascending."""
        return self._ids("SELECT id FROM images WHERE state = ? ORDER BY id", (INDEXED,))

    def vectors_by_id(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids found int64 (m,), vectors float32 (m, d)) of the vectors among FAISS ids (of indexed
        files), in any order: what a compressed vector index re-ranks its candidates with."""
        rows: list[Any] = []
        for part in _parts(np.asarray(ids, dtype=np.int64).reshape(-1), 900):
            if self._has_vectors:  # FAISS ids: a file's own vector lives in images.vector
                sql = f"SELECT v.id, COALESCE(v.vector, i.vector) {_INDEXED_VECTORS} AND v.id IN ({_marks(part)})"
                rows += self._all(sql, (INDEXED, *part))
            else:
                rows += self._all(f"SELECT id, vector FROM images WHERE id IN ({_marks(part)}) AND state = ?", (*part, INDEXED))
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return np.array([r[0] for r in rows], dtype=np.int64), _vectors_of(rows)

    def indexed_count(self) -> int:
        """Indexed files."""
        return int(self._one("SELECT count(*) FROM images WHERE state = ?", (INDEXED,)))

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of every indexed row, in chunks."""
        yield from self._stream_vectors("SELECT id, vector FROM images WHERE state = ? ORDER BY id", chunk)

    def iter_faiss_vectors(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(FAISS ids int64 (n,), vectors float32 (n, d)) of every vector of every indexed file,
        in chunks: what the vector index holds."""
        if not self._has_vectors:
            yield from self.iter_vectors(chunk)
            return
        yield from self._stream_vectors(f"SELECT v.id, COALESCE(v.vector, i.vector) {_INDEXED_VECTORS} ORDER BY v.id", chunk)

    def _stream_vectors(self, sql: str, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of a query selecting (id, vector) of indexed
        rows, in chunks."""
        with self._reading() as conn:
            cursor = conn.execute(sql, (INDEXED,))
            while rows := cursor.fetchmany(chunk):
                yield np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), _vectors_of(rows)

    def vector_count(self) -> int:
        """How many vectors the vector index holds (len(vector_ids()), without reading them)."""
        if not self._has_vectors:
            return self.indexed_count()
        return int(self._one(f"SELECT count(*) {_INDEXED_VECTORS}", (INDEXED,)))

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
                cursor = conn.execute(f"SELECT v.id, v.image_id {_INDEXED_VECTORS} ORDER BY v.id", (INDEXED,))
                pairs = np.fromiter(itertools.chain.from_iterable(cursor), dtype=np.int64).reshape(-1, 2)
            ids, owners = pairs[:, 0].copy(), pairs[:, 1].copy()
        ids.flags.writeable = owners.flags.writeable = False
        self._vector_files = (generation, ids, owners)
        return ids, owners

    def vector_ids(self) -> np.ndarray:
        """FAISS ids of every vector of every indexed file, int64, ascending."""
        if not self._has_vectors:
            return self.indexed_ids()
        return self._ids(f"SELECT v.id {_INDEXED_VECTORS} ORDER BY v.id", (INDEXED,))

    def vector_rows(self, ids: Iterable[int]) -> dict[int, VectorRow]:
        """What each FAISS id stands for; unknown ids are absent."""
        out: dict[int, VectorRow] = {}
        for part in _parts(ids):
            if not self._has_vectors:
                out.update((i, VectorRow(i, i, "image")) for i in part)
                continue
            for r in self._all(f"SELECT {_VECTOR_ROW} FROM vectors WHERE id IN ({_marks(part)})", part):
                out[r[0]] = _vector_row(r)
        return out

    def vector_ids_of(self, image_ids: Iterable[int] | None = None, *, file_kind: str | None = None) -> np.ndarray:
        """FAISS ids of every vector of the files image_ids (all files when None) whose own
        vector is of file_kind ("image" or "video"; any when None), int64."""
        if not self._has_vectors:
            if file_kind == "video":
                return np.zeros(0, np.int64)
            return self.indexed_ids() if image_ids is None else np.fromiter(image_ids, dtype=np.int64)
        kind = Where("image_id IN (SELECT image_id FROM vectors WHERE kind = ?)", (file_kind,)) if file_kind else Where("1")
        if image_ids is None:
            return self._ids(f"SELECT id FROM vectors WHERE {kind.sql}", kind.params)
        found = [np.zeros(0, np.int64)]
        for part in _parts(image_ids):
            found.append(self._ids(f"SELECT id FROM vectors WHERE {kind.sql} AND image_id IN ({_marks(part)})", (*kind.params, *part)))
        return np.concatenate(found)

    def part_vectors(self, image_id: int) -> tuple[list[VectorRow], np.ndarray]:
        """A file's vectors other than its own (regions, shots) and their numbers (n, d)."""
        if not self._has_vectors:
            return [], np.zeros((0, 0), np.float32)
        sql = f"SELECT {_VECTOR_ROW}, vector FROM vectors WHERE image_id = ? AND vector IS NOT NULL ORDER BY id"
        rows = self._all(sql, (int(image_id),))
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [_vector_row(r) for r in rows], _vectors_of(rows, 9)

    def file_kinds(self, image_ids: Iterable[int]) -> dict[int, str]:
        """"image" or "video" by file id, from the kind of each file's own vector."""
        out: dict[int, str] = {}
        for part in _parts(image_ids):
            if not self._has_vectors:
                out.update((i, "image") for i in part)
                continue
            sql = f"SELECT image_id, kind FROM vectors WHERE image_id IN ({_marks(part)}) AND kind IN ({_marks(OWN_KINDS)})"
            out.update(self._all(sql, (*part, *OWN_KINDS)))
        return out

    def parts_for_hash(self, content_hash: str) -> tuple[str, list[VectorPart]]:
        """(kind of the own vector, the other vectors) of an indexed file with this content."""
        if not self._has_vectors:
            return "image", []
        owner = "SELECT id FROM images WHERE content_hash = ? AND state = ? LIMIT 1"
        rows = self._all(f"SELECT {_VECTOR_ROW}, vector FROM vectors WHERE image_id = ({owner}) ORDER BY id", (content_hash, INDEXED))
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
        blob = self._one("SELECT weights FROM class_weights WHERE key = ?", (key,))
        return None if blob is None else np.frombuffer(blob, dtype=np.float32)

    def cache_weights(self, key: str, weights: np.ndarray) -> None:
        """Keep zero-shot class weights for next time; a read-only index just computes them again."""
        if self.read_only:
            return
        with self._write_errors(), self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO class_weights (key, weights) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, np.ascontiguousarray(weights, np.float32).tobytes()),
            )

    def tag_sets(self) -> list[TagSetRow]:
        if not self._has_tags:
            return []
        out = []
        for name, key, labels, weights, bias, threshold, source in self._all(
            "SELECT name, key, labels, weights, bias, threshold, source FROM tag_sets ORDER BY name"
        ):
            labels = tuple(json.loads(labels))
            weights = np.frombuffer(weights, np.float32).reshape(len(labels), -1)
            out.append(TagSetRow(name, key, labels, weights, np.frombuffer(bias, np.float32), threshold, source))
        return out

    def untagged_vectors(self, tag_set: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of indexed images without tags from tag_set."""
        sql = "SELECT id, vector FROM images WHERE state = ? AND id NOT IN (SELECT image_id FROM tags WHERE tag_set = ?)"
        rows = self._all(sql, (INDEXED, tag_set))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, 0), np.float32)
        return ids, _vectors_of(rows)

    def ids_tagged(self, label: str) -> set[int]:
        if not self._has_tags:
            return set()
        return {i for (i,) in self._all("SELECT DISTINCT image_id FROM tags WHERE label = ?", (label,))}

    def tag_counts(self) -> dict[str, int]:
        if not self._has_tags:
            return {}
        return dict(self._all("SELECT label, count(DISTINCT image_id) FROM tags GROUP BY label ORDER BY label"))

    def tags_of(self, image_ids: Iterable[int]) -> dict[int, list[str]]:
        """Labels by file id, the likeliest first."""
        out: dict[int, list[str]] = {}
        for part in _parts(image_ids):
            out.update((i, []) for i in part)
            if self._has_tags:
                for image_id, label in self._all(f"SELECT image_id, label FROM tags WHERE image_id IN ({_marks(part)}) ORDER BY score DESC", part):
                    out[image_id].append(label)
        return out

    def ids_where(self, *conditions: Where) -> np.ndarray:
        """Ids of indexed rows meeting every condition, int64, ascending."""
        where = Where.all_of(_INDEXED_ROW, *conditions)
        return self._ids(f"SELECT id FROM images WHERE {where.sql} ORDER BY id", where.params)

    def select_where(self, columns: Sequence[str], *conditions: Where) -> list[Any]:
        """Rows (named tuples of id and the named columns of `images`) of indexed rows meeting
        every condition."""
        columns = tuple(columns)
        row_type = namedtuple("ImageRow", ("id", *columns))  # type: ignore[misc]
        where = Where.all_of(_INDEXED_ROW, *conditions)
        return [row_type(*r) for r in self._all(f"SELECT id, {', '.join(columns)} FROM images WHERE {where.sql}", where.params)]

    def metadata_of(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The header metadata of indexed rows by id (see METADATA_COLUMNS), width and height included."""
        out: dict[int, dict[str, Any]] = {}
        names = ("width", "height") + METADATA_COLUMNS
        for part in _parts(ids):
            for row in self.select_where(names, Where(f"id IN ({_marks(part)})", tuple(part))):
                out[row.id] = {name: getattr(row, name) for name in names}
        return out

    def date_range(self) -> tuple[str | None, str | None, dict[str, int]]:
        """(earliest, latest) capture time of indexed images, and how many have a time by source."""
        [(first, last)] = self._all("SELECT min(taken_at), max(taken_at) FROM images WHERE state = ?", (INDEXED,))
        sql = "SELECT taken_source, count(*) FROM images WHERE state = ? AND taken_source IS NOT NULL GROUP BY taken_source"
        return first, last, dict(self._all(sql, (INDEXED,)))

    def camera_counts(self) -> list[tuple[str | None, str | None, int]]:
        """(make, model, images) of indexed images with a camera recorded, most images first."""
        sql = (
            "SELECT make, model, count(*) AS n FROM images WHERE state = ? AND (make IS NOT NULL OR model IS NOT NULL) "
            "GROUP BY make, model ORDER BY n DESC, make, model"
        )
        return [(make, model, n) for make, model, n in self._all(sql, (INDEXED,))]

    def video_count(self) -> int:
        """Indexed files that are videos."""
        if not self._has_vectors:
            return 0
        return int(self._one(f"SELECT count(*) {_INDEXED_VECTORS} AND v.kind = 'video'", (INDEXED,)))

    def counts(self) -> dict[str, int]:
        return dict(self._all("SELECT state, count(*) FROM images GROUP BY state"))

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
        except sqlite3.DatabaseError as e:
            if _is_damage(e):
                raise _damaged(self.path, e) from None
            if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
                raise read_only_error(self.path.parent) from None
            raise IndexWriteError(
                f"cannot write to the index database {self.path} ({e}); nothing committed "
                "before is lost: free disk space or fix the disk, then run the same command again"
            ) from None

    @contextmanager
    def transaction(self, *, vectors_changed: bool = True) -> Iterator[Transaction]:
        """One atomic batch of changes; when vectors change, the generation moves on as it commits.
        It takes SQLite's write lock at once (waiting up to 30 s for another writer's commit)."""
        self.check_writable()
        with self._write_errors(), self._pool.connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            tx = Transaction(conn)
            yield tx  # an exception leaves the transaction open: the pool rolls it back
            if vectors_changed:
                _set_info(conn, "generation", (_get_info(conn, "generation") or 0) + 1)
            conn.execute("COMMIT")


class Transaction:
    """Changes inside Store.transaction(). The FAISS ids it drops and the vectors it adds are
    collected in removed_ids and added, for the vector index to follow once it has committed."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.removed_ids: list[int] = []
        self.added: list[tuple[int, np.ndarray]] = []

    def added_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(FAISS ids (n,), vectors (n, d)) added, or (empty, None)."""
        if not self.added:
            return np.zeros(0, np.int64), None
        return np.array([i for i, _ in self.added], dtype=np.int64), np.stack([v for _, v in self.added])

    def _drop_vectors(self, image_ids: list[int]) -> None:
        where = f"image_id IN ({_marks(image_ids)})"
        self.removed_ids.extend(i for (i,) in self._conn.execute(f"SELECT id FROM vectors WHERE {where}", image_ids))
        self._conn.execute(f"DELETE FROM vectors WHERE {where}", image_ids)

    def _add_vectors(self, row_id: int, kind: str, vector: np.ndarray, parts: Iterable[VectorPart]) -> None:
        own = self._conn.execute("INSERT INTO vectors (image_id, kind) VALUES (?, ?)", (row_id, kind)).lastrowid
        self.added.append((own, np.ascontiguousarray(vector, np.float32)))
        for part in parts:
            box = part.box or (None, None, None, None)
            data = np.ascontiguousarray(part.vector, np.float32)
            cursor = self._conn.execute(
                "INSERT INTO vectors (image_id, kind, x0, y0, x1, y1, time, span, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row_id, part.kind, *box, part.time, part.span, data.tobytes()),
            )
            self.added.append((cursor.lastrowid, data))

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
        names = ", ".join(values)
        updates = ", ".join(f"{name} = excluded.{name}" for name in values)
        sql = (
            f"INSERT INTO images (path, {names}) VALUES (?, {_marks(values)}) "
            f"ON CONFLICT (path) DO UPDATE SET {updates} RETURNING id"
        )
        [(row_id,)] = self._conn.execute(sql, (os.fsencode(path), *values.values())).fetchall()
        self._conn.execute("DELETE FROM tags WHERE image_id = ?", (row_id,))  # recomputed for the new content
        self._drop_vectors([row_id])
        if state == INDEXED and vector is not None:
            self._add_vectors(row_id, kind, vector, parts)
        return row_id

    def _update(self, row_id: int, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._conn.execute(f"UPDATE images SET {assignments} WHERE id = ?", (*values.values(), int(row_id)))

    def set_metadata(self, row_id: int, metadata: dict[str, Any] | None, metadata_version: int | None, *,
                     width: int | None = None, height: int | None = None) -> None:
        """Replace a row's header metadata (its vector and state stay; so does its perceptual hash
        when metadata has none, as a header read alone gives)."""
        values = _metadata_values(metadata, metadata_version)
        if values["phash"] is None:
            del values["phash"]
        if width is not None and height is not None:
            values.update(width=width, height=height)
        self._update(row_id, **values)

    def move(self, row_id: int, path: str, *, size: int, mtime_ns: int) -> None:
        """The file of row_id now lives at path (same content: the vector stays)."""
        self._update(row_id, path=os.fsencode(path), size=size, mtime_ns=mtime_ns)

    def touch(self, row_id: int, *, size: int, mtime_ns: int) -> None:
        """Same content, new stat (e.g. the file was copied over itself)."""
        self._update(row_id, size=size, mtime_ns=mtime_ns)

    def delete(self, row_ids: Iterable[int]) -> None:
        for part in _parts(row_ids):
            self._drop_vectors(part)
            self._conn.execute(f"DELETE FROM images WHERE id IN ({_marks(part)})", part)
            self._conn.execute(f"DELETE FROM tags WHERE image_id IN ({_marks(part)})", part)

    def set_tag_set(self, row: TagSetRow) -> None:
        """Create or replace a tag set; tags of a replaced classifier are dropped."""
        old_key = self._conn.execute("SELECT key FROM tag_sets WHERE name = ?", (row.name,)).fetchone()
        if old_key is not None and old_key[0] != row.key:
            self._conn.execute("DELETE FROM tags WHERE tag_set = ?", (row.name,))
        self._conn.execute(
            "INSERT INTO tag_sets (name, key, labels, weights, bias, threshold, source) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET key = excluded.key, labels = excluded.labels, weights = excluded.weights, "
            "bias = excluded.bias, threshold = excluded.threshold, source = excluded.source",
            (
                row.name, row.key, json.dumps(list(row.labels)), np.ascontiguousarray(row.weights, np.float32).tobytes(),
                np.ascontiguousarray(row.bias, np.float32).tobytes(), float(row.threshold), row.source,
            ),
        )

    def add_tags(self, tag_set: str, rows: list[tuple[int, str, float, bool]]) -> None:
        self._conn.executemany(
            "INSERT INTO tags (image_id, tag_set, label, score, best) VALUES (?, ?, ?, ?, ?)",
            [(int(i), tag_set, label, float(score), bool(best)) for i, label, score, best in rows],
        )



def _metadata_values(metadata: dict[str, Any] | None, version: int | None) -> dict[str, Any]:
    metadata = metadata or {}
    values = {name: metadata.get(name) for name in METADATA_COLUMNS}
    values["metadata_version"] = version
    return values


def _prepare(conn: sqlite3.Connection, path: Path, *, read_only: bool) -> set[str]:
    """Check that path is a searchlite database of a schema this code reads and migrate it (unless
    read-only); returns its tables (as they were, when read-only). sqlite3 errors pass through."""
    tables = migrations.table_names(conn)  # a file that is not SQLite fails here
    version = migrations.schema_version(conn)
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
    try:
        # WAL: any number of readers while one writer commits (kept in the file once set)
        conn.execute("PRAGMA journal_mode=WAL")
        if version < migrations.SCHEMA_VERSION:  # an empty file too: a first open cut short
            before, after = migrations.migrate(conn)
            if before:
                log.info("upgraded %s from schema %d to %d", path, before, after)
    except sqlite3.OperationalError as e:
        if "readonly" in str(e):
            raise read_only_error(path.parent) from None
        raise
    return migrations.table_names(conn)


def _is_damage(e: sqlite3.DatabaseError) -> bool:
    """SQLite's verdict that the file is corrupt or not a database (SQLITE_CORRUPT, SQLITE_NOTADB:
    sqlite3.DatabaseError itself). Its subclasses are other troubles: a missing table, a locked or
    read-only file, an I/O error, a constraint."""
    return type(e) is sqlite3.DatabaseError


def _read_error(path: Path, e: sqlite3.DatabaseError) -> SearchliteError:
    if _is_damage(e):
        return _damaged(path, e)
    message = str(e)
    if message.startswith(("no such table", "no such column")):
        return IndexVersionError(
            f"the index database {path} lacks part of the schema this searchlite expects ({message}); "
            "open it once with this searchlite where it can be written, which upgrades it"
        )
    return IndexReadError(
        f"cannot read the index database {path} ({message}); check the drive it is on and its "
        "permissions, then run the same command again"
    )


def _damaged(path: Path, e: sqlite3.DatabaseError) -> CorruptIndexError:
    return CorruptIndexError(
        f"{path} is damaged or is not a searchlite database ({e}); searchlite will not modify "
        "it: move it aside (or restore a backup) and index again into an empty folder"
    )


def _get_info(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM index_info WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def _set_info(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO index_info (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value)),
    )
