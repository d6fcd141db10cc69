"""The FAISS file beside the database: a cache of the vectors SQLite holds.

It records the database generation it holds and a checksum; a missing, truncated, stale or foreign
file is rebuilt from SQLite (no model needed) and saved again when no writer is busy.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..config import FAISS_FILENAME, LOCK_FILENAME
from ..errors import IndexLockedError, IndexWriteError
from .atomic_file import write_atomic
from .store import Store
from .vector_index import VectorIndex
from .writelock import writer_lock

log = logging.getLogger(__name__)


class StoreVectors:
    """The exact vectors in SQLite, as a compressed VectorIndex reads them (ExactVectors)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._store.vectors_by_id(ids)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self._store.iter_faiss_vectors()

    def __len__(self) -> int:
        return self._store.vector_count()


class VectorCache:
    """Loads and saves the FAISS cache of one index folder."""

    def __init__(self, index_dir: Path, store: Store) -> None:
        self.path = index_dir / FAISS_FILENAME
        self._lock_path = index_dir / LOCK_FILENAME
        self._store = store

    def load(self, dim: int, *, writer: bool, queries: Callable[[], np.ndarray | None] | None = None) -> VectorIndex:
        """The cached vectors when the file matches the database; otherwise rebuilt from it and
        saved (by a writer at once; by a reader only when no writer holds the lock). A large index
        is rebuilt straight into an approximate structure (tuned on queries(), when given)."""
        exact = StoreVectors(self._store)
        cached = self._read(dim)
        if cached is not None:
            cached.exact = exact
            return cached
        vectors = VectorIndex(dim, exact=exact)
        if len(exact) >= vectors.ann_min_vectors:
            vectors.optimize(queries=queries() if queries else None)
        else:
            for ids, chunk in self._store.iter_faiss_vectors():
                vectors.add(ids, chunk)
        if len(vectors) or self.path.exists():
            log.warning("rebuilt the vector cache %s from the database (%d vectors)", self.path, len(vectors))
        if writer:
            self.save(vectors)
        elif not self._store.read_only:
            try:  # an indexer that is running saves it anyway
                with writer_lock(self._lock_path):
                    self.save(vectors)
            except (IndexLockedError, IndexWriteError, OSError):
                pass
        return vectors

    def _read(self, dim: int) -> VectorIndex | None:
        state = self._store.get_info("faiss")
        if not (state and state.get("generation") == self._store.generation and self.path.exists()):
            return None
        try:
            data = self.path.read_bytes()
            if zlib.crc32(data) == state.get("crc32"):
                vectors = VectorIndex.from_bytes(data)
                if vectors.dim == dim and len(vectors) == state.get("count"):
                    return vectors
        except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
            log.debug("cannot load %s: %s", self.path, e)
        return None

    def save(self, vectors: VectorIndex) -> None:
        """Write the file and record which database generation it holds (with a checksum)."""
        data = vectors.to_bytes()
        try:
            write_atomic(self.path, data)
        except OSError as e:
            raise IndexWriteError(
                f"cannot save {self.path} ({e.strerror or e}); the index is intact and still answers "
                "queries: free disk space or fix the disk, then run the same command again"
            ) from None
        state = {"generation": self._store.generation, "count": len(vectors), "crc32": zlib.crc32(data), "kind": vectors.kind}
        self._store.set_info("faiss", state)
