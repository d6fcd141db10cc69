"""An index's SQLite database as one SQLAlchemy Engine: how it is opened (writable, read-only or in
memory), how its connections are lent, how writers take the write lock, and what its errors mean to
a user. storage/store.py holds the statements.

Transactions follow SQLAlchemy's recipe for its sqlite dialect: the sqlite3 connection is in
autocommit mode (isolation_level=None), so it never opens a transaction on its own, and the engine's
"begin" event emits ours: BEGIN IMMEDIATE on a connection that writes (it takes the write lock at
once, waiting for another writer's commit, instead of failing when a read would upgrade), BEGIN
for reads (WAL: they never wait for the writer, and see what was committed when they began).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool, StaticPool

from ..errors import (
    CorruptIndexError,
    IndexLockedError,
    IndexReadError,
    IndexVersionError,
    IndexWriteError,
    SearchliteError,
)
from . import migrations
from .writelock import read_only_error

log = logging.getLogger(__name__)

# the execution option that marks a connection that writes: its BEGIN is BEGIN IMMEDIATE
WRITES = "searchlite_writes"
BUSY_SECONDS = 30  # how long a statement waits for another writer's lock, and a user for a connection
# connections kept open between uses, and how many more may be open at once (the server's threads)
POOL_SIZE = 4
POOL_OVERFLOW = 28


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
    # isolation_level=None: sqlite3 opens no transaction behind our back; _begin emits each BEGIN
    conn = sqlite3.connect(database, uri=uri, timeout=BUSY_SECONDS, check_same_thread=False, isolation_level=None)
    if writable:
        # NORMAL is durable across app crashes in WAL mode (which prepare() sets, once the file is known)
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITES) else "BEGIN")


def _engine(connect: Callable[[], sqlite3.Connection], **pool: Any) -> Engine:
    engine = create_engine("sqlite://", creator=connect, **pool)
    event.listen(engine, "begin", _begin)
    return engine


def file_engine(path: Path, *, read_only: bool) -> Engine:
    """The engine of the database at path: a pool of at most POOL_SIZE + POOL_OVERFLOW connections
    (one per thread using it at once; more wait for one to come back); on read-only media, each
    connection opens the file read-only."""
    if read_only:
        uri = _read_only_uri(path)
        connect = lambda: _connect(uri, uri=True, writable=False)  # noqa: E731
    else:
        connect = lambda: _connect(path)  # noqa: E731
    return _engine(connect, poolclass=QueuePool, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_timeout=BUSY_SECONDS)


def memory_engine() -> Engine:
    """The engine of a new database in memory: one connection (the database lives in it)."""
    return _engine(lambda: _connect(":memory:", writable=False), poolclass=StaticPool)


class Pool:
    """Lends the connections of a file's engine, one per user at a time. Once closed, connections
    still lent are closed as they come back (a read under way finishes first)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._closed = False
        event.listen(engine, "checkin", self._checkin)

    def _checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if self._closed and dbapi_connection is not None:
            record.invalidate()  # closes it

    @contextmanager
    def connection(self, *, writes: bool = False) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if writes:
                conn.execution_options(**{WRITES: True})
            yield conn

    def close(self) -> None:
        self._closed = True
        self.engine.dispose()  # closes the idle connections


class OneConnection:
    """The one connection of an in-memory database, which users take in turn. A thread may nest
    uses (a write while it iterates a read): a nested write is a savepoint, and what the outermost
    use leaves open commits when it ends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn = engine.connect()
        self._lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def connection(self, *, writes: bool = False) -> Iterator[Connection]:
        with self._lock:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
                if not self._depth and self._conn.in_transaction():
                    self._conn.commit()  # a read's BEGIN, or a read holding a nested write

    def close(self) -> None:
        self._conn.close()
        self.engine.dispose()


def prepare(conn: Connection, path: Path, *, read_only: bool) -> set[str] | None:
    """Check that path is a searchlite database of a schema this code reads and migrate it, unless
    read-only: then returns its tables as they are (an old schema may lack some), else None.
    Database errors pass through."""
    tables = migrations.table_names(conn)  # a file that is not SQLite fails here
    version = migrations.schema_version(conn)
    conn.rollback()  # ends the read: the journal mode changes, and the migrations begin, outside it
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
        # WAL: any number of readers while one writer commits (kept in the file once set). A
        # statement of the engine's would begin a transaction, in which the journal mode is fixed.
        conn.connection.driver_connection.execute("PRAGMA journal_mode=WAL")
        if version < migrations.SCHEMA_VERSION:  # an empty file too: a first open cut short
            before, after = migrations.migrate(conn.execution_options(**{WRITES: True}))
            if before:
                log.info("upgraded %s from schema %d to %d", path, before, after)
    except (sqlite3.OperationalError, DBAPIError) as e:
        if "readonly" in str(sqlite_error(e) or e):
            raise read_only_error(path.parent) from None
        raise
    return None


def sqlite_error(e: BaseException) -> sqlite3.DatabaseError | None:
    """The sqlite3 error behind e (SQLAlchemy wraps the driver's errors), or None."""
    orig = e.orig if isinstance(e, DBAPIError) else e
    return orig if isinstance(orig, sqlite3.DatabaseError) else None


def is_damage(e: sqlite3.DatabaseError) -> bool:
    """SQLite's verdict that the file is corrupt or not a database (SQLITE_CORRUPT, SQLITE_NOTADB:
    sqlite3.DatabaseError itself). Its subclasses are other troubles: a missing table, a locked or
    read-only file, an I/O error, a constraint."""
    return type(e) is sqlite3.DatabaseError


def read_error(path: Path, e: sqlite3.DatabaseError) -> SearchliteError:
    """What a failed read means to a user."""
    if is_damage(e):
        return damaged(path, e)
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


def write_error(path: Path, e: sqlite3.DatabaseError) -> SearchliteError:
    """What a failed write (it rolled back) means to a user."""
    if is_damage(e):
        return damaged(path, e)
    if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
        return read_only_error(path.parent)
    if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(e):
        # BEGIN IMMEDIATE waited BUSY_SECONDS for another process's write lock: not the disk's fault
        return IndexLockedError(
            f"another process held the write lock of the index database {path} for {BUSY_SECONDS} s "
            f"({e}); nothing committed before is lost: wait for it to finish, or stop it, then run the "
            "same command again"
        )
    return IndexWriteError(
        f"cannot write to the index database {path} ({e}); nothing committed "
        "before is lost: free disk space or fix the disk, then run the same command again"
    )


def damaged(path: Path, e: sqlite3.DatabaseError) -> CorruptIndexError:
    return CorruptIndexError(
        f"{path} is damaged or is not a searchlite database ({e}); searchlite will not modify "
        "it: move it aside (or restore a backup) and index again into an empty folder"
    )


def busy_error(path: Path) -> IndexReadError:
    """A read found every connection of the pool lent for BUSY_SECONDS."""
    return IndexReadError(
        f"the index database {path} is busy: {POOL_SIZE + POOL_OVERFLOW} connections stayed in use for "
        f"{BUSY_SECONDS} s; try again when fewer searches run at once"
    )


def write_busy_error(path: Path) -> IndexWriteError:
    """A write found every connection of the pool lent for BUSY_SECONDS: it never began."""
    return IndexWriteError(
        f"the index database {path} is busy: {POOL_SIZE + POOL_OVERFLOW} connections stayed in use for "
        f"{BUSY_SECONDS} s, so the change was not made (nothing committed before is lost); run the same "
        "command again when fewer searches and changes run at once"
    )
