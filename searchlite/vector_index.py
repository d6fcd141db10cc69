"""The FAISS layer: unit vectors keyed by row id, exact inner-product search, atomic save and load.

Vector contract at this boundary: float32, C-contiguous, shape (n, d), unit length.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np


def _faiss() -> Any:
    import faiss  # heavy import, kept off the `--help` / `info` path

    return faiss


def as_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Check and normalise the one vector contract: float32, C-contiguous, (n, dim)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


class VectorIndex:
    """Exact cosine (inner product of unit vectors) search over vectors keyed by int64 ids.

    Adding an id that is already present replaces its vector (never duplicates it).
    Thread-safe: searches may run while another thread adds or removes.
    """

    def __init__(self, dim: int, _index: Any = None) -> None:
        faiss = _faiss()
        self.dim = dim
        self._lock = threading.Lock()
        self._index = _index if _index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under ids."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = as_vectors(vectors, self.dim)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique within one add()")
        with self._lock:
            self._remove(ids)  # re-adding an id to an IDMap would duplicate it
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            return self._remove(ids)

    def _remove(self, ids: np.ndarray) -> int:
        if not len(ids) or not self._index.ntotal:
            return 0
        return int(self._index.remove_ids(_faiss().IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores float32 (q, k'), ids int64 (q, k')), k' = min(k, len)."""
        queries = as_vectors(queries, self.dim)
        with self._lock:
            k = min(k, len(self))
            if k <= 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            return self._index.search(queries, k)

    def to_bytes(self) -> bytes:
        with self._lock:
            return _faiss().serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index.d, index)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never a mix."""
        write_atomic(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        return cls.from_bytes(Path(path).read_bytes())


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, os.replace, fsync the folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); keep the permissions of the file it replaces
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
