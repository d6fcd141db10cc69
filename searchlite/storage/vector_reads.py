"""Reads of the vectors table, in two schemas: the current one (`VectorReads`) and the one before
the vectors table (`LegacyVectorReads`), where each indexed file had one vector, in images.vector,
whose FAISS id was its own id. An old index opened read-only cannot be migrated, so the store picks
one of the two when it opens; every other read is the same in both schemas and stays in the store."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from sqlalchemy import Connection, Join, Select, func, select
from sqlalchemy.ext.compiler import compiles

from .rows import INDEXED, OWN_KINDS, VectorPart, VectorRow, id_parts
from .tables import images, vectors

INDEXED_ROW = images.c.state == INDEXED
INDEXED_IDS = select(images.c.id).where(INDEXED_ROW).order_by(images.c.id)
INDEXED_VECTORS = select(images.c.id, images.c.vector).where(INDEXED_ROW).order_by(images.c.id)


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
    return select(*columns).select_from(CrossJoin(vectors, images, images.c.id == vectors.c.image_id)).where(INDEXED_ROW)


_VECTOR_ROW = (vectors.c.id, vectors.c.image_id, vectors.c.kind, vectors.c.x0, vectors.c.y0, vectors.c.x1, vectors.c.y1, vectors.c.time, vectors.c.span)


def _vector_row(r: Sequence[Any]) -> VectorRow:
    row_id, image_id, kind, x0, y0, x1, y1, time, span = r[:9]
    return VectorRow(row_id, image_id, kind, None if x0 is None else (x0, y0, x1, y1), time, span)


def vectors_of(rows: list[Any], column: int = 1) -> np.ndarray:
    """The float32 BLOBs in rows[i][column], stacked (n, d)."""
    return np.frombuffer(b"".join(r[column] for r in rows), dtype=np.float32).reshape(len(rows), -1)


class Reads:
    """Statements run on the connections `reading` lends (a damaged file there is one clear error)."""

    def __init__(self, reading: Callable[[], AbstractContextManager[Connection]]) -> None:
        self.reading = reading

    def all(self, statement: Any) -> list[Any]:
        with self.reading() as conn:
            return conn.execute(statement).all()

    def one(self, statement: Any) -> Any:
        """The first column of the first row, or None without rows."""
        with self.reading() as conn:
            return conn.execute(statement).scalar()

    def ids(self, statement: Any) -> np.ndarray:
        with self.reading() as conn:
            return np.fromiter(conn.execute(statement).scalars(), dtype=np.int64)

    def stream(self, statement: Select[Any], chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 (n,), vectors float32 (n, d)) of a statement selecting (id, vector), in chunks."""
        with self.reading() as conn:
            result = conn.execute(statement)
            while rows := result.fetchmany(chunk):
                yield np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), vectors_of(rows)


class VectorReads:
    """The vectors of indexed files, by FAISS id, in the current schema (see Store's methods of the
    same names, which these answer)."""

    def __init__(self, reads: Reads) -> None:
        self._reads = reads

    def vectors_by_id(self, part: Sequence[int]) -> list[Any]:
        # a file's own vector lives in images.vector
        return self._reads.all(indexed_vectors(vectors.c.id, func.coalesce(vectors.c.vector, images.c.vector)).where(vectors.c.id.in_(part)))

    def iter_faiss_vectors(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        statement = indexed_vectors(vectors.c.id, func.coalesce(vectors.c.vector, images.c.vector)).order_by(vectors.c.id)
        yield from self._reads.stream(statement, chunk)

    def vector_count(self) -> int:
        return int(self._reads.one(indexed_vectors(func.count())))

    def vector_files(self) -> tuple[np.ndarray, np.ndarray]:
        with self._reads.reading() as conn:
            result = conn.execute(indexed_vectors(vectors.c.id, vectors.c.image_id).order_by(vectors.c.id))
            pairs = np.fromiter(itertools.chain.from_iterable(result), dtype=np.int64).reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def vector_ids(self) -> np.ndarray:
        return self._reads.ids(indexed_vectors(vectors.c.id).order_by(vectors.c.id))

    def vector_rows(self, part: Sequence[int]) -> dict[int, VectorRow]:
        return {r[0]: _vector_row(r) for r in self._reads.all(select(*_VECTOR_ROW).where(vectors.c.id.in_(part)))}

    def vector_ids_of(self, image_ids: Iterable[int] | None, file_kind: str | None) -> np.ndarray:
        statement = select(vectors.c.id)
        if file_kind:
            statement = statement.where(vectors.c.image_id.in_(select(vectors.c.image_id).where(vectors.c.kind == file_kind)))
        if image_ids is None:
            return self._reads.ids(statement)
        found = [np.zeros(0, np.int64)]
        for part in id_parts(image_ids):
            found.append(self._reads.ids(statement.where(vectors.c.image_id.in_(part))))
        return np.concatenate(found)

    def part_vectors(self, image_id: int) -> tuple[list[VectorRow], np.ndarray]:
        statement = select(*_VECTOR_ROW, vectors.c.vector).where(vectors.c.image_id == int(image_id), vectors.c.vector.is_not(None))
        rows = self._reads.all(statement.order_by(vectors.c.id))
        if not rows:
            return [], np.zeros((0, 0), np.float32)
        return [_vector_row(r) for r in rows], vectors_of(rows, 9)

    def file_kinds(self, part: Sequence[int]) -> dict[int, str]:
        statement = select(vectors.c.image_id, vectors.c.kind).where(vectors.c.image_id.in_(part), vectors.c.kind.in_(OWN_KINDS))
        return dict(self._reads.all(statement))

    def parts_for_hash(self, content_hash: str) -> tuple[str, list[VectorPart]]:
        owner = select(images.c.id).where(images.c.content_hash == content_hash, INDEXED_ROW).limit(1).scalar_subquery()
        rows = self._reads.all(select(*_VECTOR_ROW, vectors.c.vector).where(vectors.c.image_id == owner).order_by(vectors.c.id))
        kind, parts = "image", []
        for r in rows:
            if r[9] is None:
                kind = r[2]
            else:
                row = _vector_row(r)
                parts.append(VectorPart(row.kind, np.frombuffer(r[9], np.float32), row.box, row.time, row.span))
        return kind, parts

    def video_count(self) -> int:
        return int(self._reads.one(indexed_vectors(func.count()).where(vectors.c.kind == "video")))


class LegacyVectorReads(VectorReads):
    """The same reads of an index from before the vectors table: one vector per indexed file, an
    image, in images.vector, with the file's id as its FAISS id; no regions, shots or videos."""

    def vectors_by_id(self, part: Sequence[int]) -> list[Any]:
        return self._reads.all(select(images.c.id, images.c.vector).where(images.c.id.in_(part), INDEXED_ROW))

    def iter_faiss_vectors(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self._reads.stream(INDEXED_VECTORS, chunk)

    def vector_count(self) -> int:
        return int(self._reads.one(select(func.count()).select_from(images).where(INDEXED_ROW)))

    def vector_files(self) -> tuple[np.ndarray, np.ndarray]:
        ids = self.vector_ids()
        return ids, ids

    def vector_ids(self) -> np.ndarray:
        return self._reads.ids(INDEXED_IDS)

    def vector_rows(self, part: Sequence[int]) -> dict[int, VectorRow]:
        return {i: VectorRow(i, i, "image") for i in part}

    def vector_ids_of(self, image_ids: Iterable[int] | None, file_kind: str | None) -> np.ndarray:
        if file_kind == "video":
            return np.zeros(0, np.int64)
        return self.vector_ids() if image_ids is None else np.fromiter(image_ids, dtype=np.int64)

    def part_vectors(self, image_id: int) -> tuple[list[VectorRow], np.ndarray]:
        return [], np.zeros((0, 0), np.float32)

    def file_kinds(self, part: Sequence[int]) -> dict[int, str]:
        return {i: "image" for i in part}

    def parts_for_hash(self, content_hash: str) -> tuple[str, list[VectorPart]]:
        return "image", []

    def video_count(self) -> int:
        return 0
