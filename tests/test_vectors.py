"""Files owning several vectors: a search ranks a file by its best vector, says which one matched
(box, or time and span), and index runs (moves, changes, deletes), tags and exports keep the
vectors table, the FAISS index and the files in line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from searchlite import InvalidQueryError, SearchEngine
from searchlite.cli import app
from searchlite.config import DB_FILENAME, FAISS_FILENAME
from searchlite.storage.store import INDEXED, Store, VectorPart


def _give_parts(index_dir: Path, path: str, parts: list[VectorPart]) -> None:
    """Store extra vectors for an indexed file, as an indexing run with regions or shots would."""
    store = Store.open(index_dir / DB_FILENAME)
    try:
        row = store.rows_under(path)[path]
        kind, _ = store.parts_for_hash(row.content_hash)
        with store.transaction() as tx:
            tx.put(path, size=row.size, mtime_ns=row.mtime_ns, content_hash=row.content_hash, state=INDEXED,
                   vector=store.vector_for_hash(row.content_hash), width=row.width, height=row.height, kind=kind, parts=parts)
    finally:
        store.close()


def _faiss_matches_store(engine: SearchEngine) -> None:
    store = Store.open(engine.index_dir / DB_FILENAME)
    try:
        assert np.array_equal(np.sort(engine.vectors.ids()), store.vector_ids())
    finally:
        store.close()


@pytest.fixture
def indexed(engine_factory, photos: Path, index_dir: Path):
    engine = engine_factory()
    engine.index(photos)
    query = engine.embed_text("a region")[0]
    target = sorted(h.path for h in engine.search("x", k=100))[0]
    other = -query  # matches nothing
    _give_parts(index_dir, target, [VectorPart("region", query, box=(10, 20, 30, 40)), VectorPart("region", other, box=(0, 0, 5, 5))])
    engine.close()
    return engine_factory(), target, photos


def test_a_file_is_found_once_at_its_best_vector_and_says_where(indexed, index_dir: Path) -> None:
    engine, target, _ = indexed
    hits = engine.search("a region", k=100)
    assert hits[0].path == target and hits[0].box == (10, 20, 30, 40) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].time is None and hits[0].kind == "image"
    assert len({h.path for h in hits}) == len(hits)  # each file once
    assert all(h.box is None for h in hits[1:])
    _faiss_matches_store(engine)

    tsv = CliRunner().invoke(app, ["query", "a region", "-k", "3", "--index", str(index_dir)])
    assert tsv.exit_code == 0, tsv.output
    lines = [line.split("\t") for line in tsv.stdout.splitlines()]
    assert lines[0][1:] == [target, "box=10,20,30,40"]
    assert all(len(cols) == 2 for cols in lines[1:])  # scripts reading two columns keep working
    as_json = CliRunner().invoke(app, ["query", "a region", "-k", "2", "--json", "--index", str(index_dir)])
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert records[0]["box"] == [10, 20, 30, 40] and "box" not in records[1] and "time" not in records[0]


def test_moves_changes_and_deletes_carry_or_drop_a_files_vectors(indexed, index_dir: Path) -> None:
    engine, target, photos = indexed
    moved = os.path.join(os.path.dirname(target), "moved-" + os.path.basename(target))
    os.rename(target, moved)
    report = engine.index(photos)
    assert report.moved == 1 and report.encoded == 0
    hit = engine.search("a region", k=1)[0]
    assert (hit.path, hit.box) == (moved, (10, 20, 30, 40))
    _faiss_matches_store(engine)

    copy = os.path.join(os.path.dirname(moved), "copy-" + os.path.basename(moved))
    shutil.copy(moved, copy)  # known content: its vectors are copied, none encoded
    assert engine.index(photos).encoded == 0
    hit = engine.search("a region", k=2)[0]  # one hit for both files
    assert (hit.box, {hit.path, *hit.copies}) == ((10, 20, 30, 40), {moved, copy})
    _faiss_matches_store(engine)

    os.remove(copy)
    with open(moved, "ab") as f:  # new content: re-encoded, its regions dropped
        f.write(b"\0")
    report = engine.index(photos)
    assert report.updated == 1 and report.removed == 1
    assert all(h.box is None for h in engine.search("a region", k=100))
    _faiss_matches_store(engine)


def test_tags_exports_and_a_fresh_open_see_one_vector_per_file(indexed, index_dir: Path, tmp_path: Path) -> None:
    engine, target, _ = indexed
    n_files = engine.info()["images"]
    engine.tag("red,green")
    assert sum(engine.info()["tags"].values()) >= n_files
    hits = engine.search("a region", k=3, tag=engine.search("a region", k=1)[0].tags[0])
    assert hits[0].path == target and hits[0].box == (10, 20, 30, 40)
    assert engine.export_embeddings(tmp_path / "e.npy") == n_files + 2  # each file's own vector, and the two regions
    engine.close()
    (index_dir / FAISS_FILENAME).unlink()
    with SearchEngine.open(index_dir, create=False) as again:  # rebuilt from SQLite
        assert len(again.vectors) == n_files + 2
        assert again.search("a region", k=1)[0].box == (10, 20, 30, 40)


def test_type_filters_images_from_videos(indexed) -> None:
    engine, _, _ = indexed
    assert engine.search("a region", k=5, type="video") == []
    assert len(engine.search("a region", k=5, type="image")) == 5
    with pytest.raises(InvalidQueryError, match="type 'movie': use one of image, video"):
        engine.search("a region", type="movie")


def test_the_vectors_of_indexed_files_are_read_by_id(engine_factory, photos: Path, index_dir: Path) -> None:
    # Without statistics SQLite would start from the index on images.state, which holds almost
    # only "indexed": re-ranking 80 vectors of 2M then took 45 s (scripts/bench_ann.py)
    import sqlite3

    from sqlalchemy.dialects import sqlite

    from searchlite.storage.store import indexed_vectors
    from searchlite.storage.tables import vectors as table

    with engine_factory() as engine:
        engine.index(photos)
        ids = engine._store.vector_ids()[:3]
        found, vectors = engine._store.vectors_by_id(ids[::-1])
        assert sorted(found.tolist()) == sorted(ids.tolist()) and vectors.shape == (3, engine.vectors.dim)
    with sqlite3.connect(index_dir / DB_FILENAME) as conn:
        for statement in (indexed_vectors(table.c.id).where(table.c.id.in_(range(80))),  # a shortlist
                          indexed_vectors(table.c.id).order_by(table.c.id)):  # a rebuild's stream
            compiled = statement.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
            args = [compiled.params[name] for name in compiled.positiontup]
            plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {compiled}", args)]
            assert plan[0].startswith(("SCAN vectors", "SEARCH vectors USING INTEGER PRIMARY KEY")) and "TEMP B-TREE" not in str(plan), plan
