"""Changes to an index's database inside one transaction (Store.transaction()): files put, moved,
touched and deleted with their vectors and tags, tag sets and their verdicts."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.dialects.sqlite import insert as upsert

from .rows import INDEXED, METADATA_COLUMNS, TagSetRow, VectorPart, id_parts
from .tables import images, tag_sets, tags, vectors


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
        """Drop the files' vectors and tags."""
        ids_of, drop, untag = _file_statements()
        self.removed_ids.extend(self._conn.execute(ids_of, {"ids": image_ids}).scalars())
        self._conn.execute(drop, {"ids": image_ids})
        self._conn.execute(untag, {"ids": image_ids})

    def _add_vectors(self, row_id: int, kind: str, vector: np.ndarray, parts: Iterable[VectorPart]) -> None:
        own = self._conn.execute(insert(vectors), {"image_id": row_id, "kind": kind}).inserted_primary_key[0]
        self.added.append((own, np.ascontiguousarray(vector, np.float32)))
        for part in parts:
            x0, y0, x1, y1 = part.box or (None, None, None, None)
            data = np.ascontiguousarray(part.vector, np.float32)
            values = dict(image_id=row_id, kind=part.kind, x0=x0, y0=y0, x1=x1, y1=y1, time=part.time, span=part.span, vector=data.tobytes())
            self.added.append((self._conn.execute(insert(vectors), values).inserted_primary_key[0], data))

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
        row_id = self._conn.execute(_put_statement(), {"path": os.fsencode(path), **values}).scalar_one()
        self._drop_vectors([row_id])  # and its tags, recomputed for the new content
        if state == INDEXED and vector is not None:
            self._add_vectors(row_id, kind, vector, parts)
        return row_id

    def _update(self, row_id: int, **values: Any) -> None:
        self._conn.execute(update(images).where(images.c.id == int(row_id)).values(**values))

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
        for part in id_parts(row_ids):
            self._drop_vectors(part)
            self._conn.execute(delete(images).where(images.c.id.in_(part)))

    def set_tag_set(self, row: TagSetRow) -> None:
        """Create or replace a tag set; tags of a replaced classifier are dropped."""
        old_key = self._conn.execute(select(tag_sets.c.key).where(tag_sets.c.name == row.name)).scalar()
        if old_key is not None and old_key != row.key:
            self._conn.execute(delete(tags).where(tags.c.tag_set == row.name))
        values = dict(
            name=row.name, key=row.key, labels=json.dumps(list(row.labels)), weights=np.ascontiguousarray(row.weights, np.float32).tobytes(),
            bias=np.ascontiguousarray(row.bias, np.float32).tobytes(), threshold=float(row.threshold), source=row.source,
        )
        statement = upsert(tag_sets).values(values)
        self._conn.execute(statement.on_conflict_do_update(index_elements=[tag_sets.c.name], set_={n: statement.excluded[n] for n in values if n != "name"}))

    def add_tags(self, tag_set: str, rows: list[tuple[int, str, float, bool]]) -> None:
        if rows:
            values = [{"image_id": int(i), "tag_set": tag_set, "label": label, "score": float(score), "best": bool(best)} for i, label, score, best in rows]
            self._conn.execute(insert(tags), values)


# The statements of every put are built once: building one (an upsert's `excluded` columns above
# all) costs more than running it.
_IDS = bindparam("ids", expanding=True)
# what a put replaces in the row of its path
_PUT_COLUMNS = ("size", "mtime_ns", "content_hash", "state", "vector", "width", "height", "error", "failed_under", *METADATA_COLUMNS, "metadata_version")


@functools.cache
def _put_statement() -> Any:
    statement = upsert(images)
    replaced = {name: statement.excluded[name] for name in _PUT_COLUMNS}
    return statement.on_conflict_do_update(index_elements=[images.c.path], set_=replaced).returning(images.c.id)


@functools.cache
def _file_statements() -> tuple[Any, Any, Any]:
    """(FAISS ids of the files' vectors, delete those, delete the files' tags), for ids=[file ids]."""
    owned = vectors.c.image_id.in_(_IDS)
    return select(vectors.c.id).where(owned), delete(vectors).where(owned), delete(tags).where(tags.c.image_id.in_(_IDS))


def _metadata_values(metadata: dict[str, Any] | None, version: int | None) -> dict[str, Any]:
    metadata = metadata or {}
    values = {name: metadata.get(name) for name in METADATA_COLUMNS}
    values["metadata_version"] = version
    return values
