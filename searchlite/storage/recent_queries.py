"""The last query vectors an index answered, kept in a small file beside it (a bounded ring), so
that the approximate search can be re-checked on queries like the real ones now and then."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from .atomic_file import write_atomic

log = logging.getLogger(__name__)

FILENAME = "recent_queries.npy"
RING_SIZE = 256  # query vectors kept (512 KB at 512 dimensions)
SAVE_EVERY = 64  # new queries between saves of a long-lived engine (a server); close() saves too


class RecentQueries:
    """A ring of the last RING_SIZE unit query vectors, loaded from and saved to path (.npy)."""

    def __init__(self, path: Path, size: int = RING_SIZE) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()
        self._vectors: np.ndarray | None = None  # read on first use
        self._unsaved = 0

    def vectors(self) -> np.ndarray:
        """The remembered vectors (n, d), oldest first; (0, 0) when there are none."""
        with self._lock:
            return self._loaded().copy()

    def add(self, query: np.ndarray) -> bool:
        """Remember one query vector; returns whether enough are unsaved to save now."""
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        with self._lock:
            ring = self._loaded()
            if ring.shape[1] != query.shape[1]:  # none yet, or another model's
                ring = np.zeros((0, query.shape[1]), np.float32)
            self._vectors = np.concatenate([ring, query])[-self.size :]
            self._unsaved += 1
            return self._unsaved >= SAVE_EVERY

    def save(self) -> None:
        """Write the ring atomically when it changed; a folder that cannot be written is skipped."""
        with self._lock:
            if not self._unsaved or self._vectors is None:
                return
            buffer = io.BytesIO()
            np.save(buffer, self._vectors)
            try:
                write_atomic(self.path, buffer.getvalue())
            except (OSError, InvalidInputError) as e:  # a full disk, or not a regular file: only a hint lost
                log.debug("cannot save %s: %s", self.path, e)
            self._unsaved = 0

    def _loaded(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.zeros((0, 0), np.float32)
            try:
                ring = np.load(self.path, allow_pickle=False)
                if ring.ndim == 2 and ring.dtype == np.float32 and np.all(np.isfinite(ring)):
                    self._vectors = ring[-self.size :]
            except (OSError, ValueError) as e:  # missing or damaged: start afresh
                log.debug("no recent queries from %s: %s", self.path, e)
        return self._vectors
