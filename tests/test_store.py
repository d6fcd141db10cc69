"""The store's connections: readers in other threads (the web server's) while a run writes, a store
closed while a read is under way, writers that wait for each other, the pool's bound, and the
in-memory store of an engine without an index."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from searchlite.errors import IndexWriteError
from searchlite.storage.store import INDEXED, Store


def _put(store: Store, names: list[str]) -> None:
    with store.transaction() as tx:
        for name in names:
            tx.put(f"/photos/{name}", size=1, mtime_ns=1, content_hash=name, state=INDEXED, vector=np.ones(4, np.float32))


def _ids_after_reopen(path: Path) -> list[int]:
    reopened = Store.open(path)
    try:
        return reopened.vector_ids().tolist()
    finally:
        reopened.close()


@pytest.fixture
def store(tmp_path: Path):
    store = Store.open(tmp_path / "index.db")
    _put(store, ["a", "b", "c"])
    yield store
    store.close()


def test_other_threads_read_what_was_committed_while_a_transaction_is_open(store: Store) -> None:
    seen: list[int] = []
    with store.transaction() as tx:
        tx.put("/photos/d", size=1, mtime_ns=1, content_hash="d", state=INDEXED, vector=np.ones(4, np.float32))
        reader = threading.Thread(target=lambda: seen.append(store.indexed_count()))
        reader.start()
        reader.join(timeout=10)
    assert seen == [3]  # at once, and without the uncommitted row
    assert store.indexed_count() == 4


def test_a_failed_transaction_leaves_nothing_and_the_next_one_works(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put("/photos/d", size=1, mtime_ns=1, content_hash="d", state=INDEXED, vector=np.ones(4, np.float32))
            raise RuntimeError("interrupted")
    assert sorted(store.rows_under("/photos")) == ["/photos/a", "/photos/b", "/photos/c"]
    generation = store.generation
    _put(store, ["e"])
    assert store.indexed_count() == 4 and store.generation == generation + 1


def test_a_write_that_breaks_a_constraint_is_one_error_and_rolls_back(store: Store) -> None:
    with pytest.raises(IndexWriteError, match="NOT NULL constraint failed.*nothing committed before is lost"):
        with store.transaction() as tx:
            tx.put("/photos/d", size=1, mtime_ns=1, content_hash="d", state=INDEXED, vector=np.ones(4, np.float32))
            tx.put("/photos/e", size=None, mtime_ns=1, content_hash="e", state=INDEXED)  # type: ignore[arg-type]
    assert store.indexed_count() == 3


def test_a_read_under_way_finishes_when_the_store_closes(store: Store) -> None:
    chunks = store.iter_faiss_vectors(chunk=1)
    first_ids, _ = next(chunks)
    store.close()
    rest = [int(i) for ids, _ in chunks for i in ids]
    assert sorted([int(first_ids[0]), *rest]) == _ids_after_reopen(store.path)


def test_the_in_memory_store_writes_while_a_read_is_under_way() -> None:
    store = Store.in_memory()
    try:
        _put(store, ["a", "b", "c"])
        chunks = store.iter_vectors(chunk=1)
        next(chunks)
        _put(store, ["d"])
        assert sum(len(ids) for ids, _ in chunks) >= 2
        store.cache_weights("zero-shot", np.ones(3, np.float32))
        assert store.cached_weights("zero-shot").tolist() == [1, 1, 1] and store.indexed_count() == 4
    finally:
        store.close()


def _open_files(path: Path) -> int:
    """How many file descriptors of this process are open on path."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve())) if fds.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files in /proc")
def test_a_closed_store_closes_a_connection_lent_out_once_it_comes_back(store: Store) -> None:
    chunks = store.iter_faiss_vectors(chunk=1)
    next(chunks)
    store.close()
    assert _open_files(store.path) == 1  # the idle connections are closed; the reading one is not
    assert len(list(chunks)) == 2
    assert _open_files(store.path) == 0


def test_a_writer_waits_for_another_writer_instead_of_failing(store: Store) -> None:
    # BEGIN IMMEDIATE: a transaction that reads before it writes (the generation) takes the write lock
    # first; begun as a read, it would hold a stale snapshot once the other commits, and fail
    other = Store.open(store.path)
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            with other.transaction():
                pass
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        generation = store.generation
        with store.transaction() as tx:
            tx.put("/photos/d", size=1, mtime_ns=1, content_hash="d", state=INDEXED, vector=np.ones(4, np.float32))
            waiting = threading.Thread(target=bump)
            waiting.start()
            waiting.join(timeout=0.3)
            assert waiting.is_alive()  # waits for the write lock
        waiting.join(timeout=10)
        assert errors == [] and store.generation == generation + 2
    finally:
        other.close()


def test_readers_beyond_the_pools_bound_wait_and_then_are_told(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from searchlite.errors import IndexReadError
    from searchlite.storage import database

    monkeypatch.setattr(database, "BUSY_SECONDS", 0.2)
    with every_connection_held(store.path) as bounded:
        with pytest.raises(IndexReadError, match="is busy: 32 connections stayed in use"):
            bounded.indexed_count()
    assert bounded.indexed_count() == 3
    bounded.close()


@contextmanager
def every_connection_held(path: Path) -> Iterator[Store]:
    """A store of path whose pool is used up by open reads, each holding a connection, until the block ends."""
    from searchlite.storage import database

    bounded = Store.open(path)
    reads = [bounded.iter_faiss_vectors(chunk=1) for _ in range(database.POOL_SIZE + database.POOL_OVERFLOW)]
    try:
        for read in reads:
            next(read)
        yield bounded
    finally:
        for read in reads:
            read.close()


def test_a_write_that_waits_too_long_for_another_writers_lock_says_so(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from searchlite.errors import IndexLockedError
    from searchlite.storage import database

    monkeypatch.setattr(database, "BUSY_SECONDS", 0.1)
    waiting = Store.open(store.path)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer, which never commits
        with pytest.raises(IndexLockedError, match="held the write lock .* for 0.1 s"):
            with waiting.transaction():
                pass
        other.execute("ROLLBACK")
        with waiting.transaction():
            pass
    finally:
        other.close()
        waiting.close()


def test_a_write_beyond_the_pools_bound_is_told_the_change_was_not_made(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from searchlite.errors import IndexWriteError
    from searchlite.storage import database

    monkeypatch.setattr(database, "BUSY_SECONDS", 0.2)
    with every_connection_held(store.path) as bounded:
        with pytest.raises(IndexWriteError, match="the change was not made"):
            with bounded.transaction():
                pass
    bounded.close()

def test_the_library_docs_example_joins_searchlites_tables_with_an_apps_own(
    engine_factory, photos: Path, index_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    section = (Path(__file__).resolve().parent.parent / "docs" / "library.md").read_text().split("## The metadata tables")[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    with engine_factory() as engine:
        engine.index(photos)
    monkeypatch.chdir(index_dir.parent)  # the example opens "index"
    exec(compile(example, "docs/library.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == [
        f"{photos}/space/hubble deep field.jpg 1000x872 *****", f"{photos}/space/rocket.jpeg 640x427 *****"
    ]
