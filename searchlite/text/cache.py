"""A small LRU cache of text embeddings: a repeated query, or a prompt seen before, is not encoded
again, whichever text tower (torch or tower.py) encodes it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

DEFAULT_SIZE = 1024


class TextCache:
    """text -> unit embedding, for the most recent `size` texts. Thread-safe."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """(n, d) embeddings of texts; only those not cached go to encode(), once each."""
        with self._lock:
            found = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in found:
                self._vectors.move_to_end(t)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            encoded = encode(missing)
            with self._lock:
                for t, v in zip(missing, encoded):
                    found[t] = self._vectors[t] = v
                while len(self._vectors) > self._size:
                    self._vectors.popitem(last=False)
        return np.stack([found[t] for t in texts])
