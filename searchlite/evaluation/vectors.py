"""Image embeddings for the files an evaluation names: the index's stored vector when it holds a
file with the same content (found by content hash, so copies and moves count), else encoded
through the isolated decoder like any file a user names; copies are encoded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..storage.hashing import content_hash
from ..storage.store import Store

EmbedFiles = Callable[[list[str]], "tuple[dict[str, np.ndarray], dict[str, Any]]"]

ENCODE_CHUNK = 64  # files encoded between progress reports


def image_vectors(
    paths: Sequence[str],
    store: Store,
    embed_files: EmbedFiles,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
    """(vectors by path, read errors by path, how many came from the index)."""
    vectors: dict[str, np.ndarray] = {}
    copies: dict[str, list[str]] = {}  # content hash -> paths with that content, to encode
    unhashed = []  # files that could not be read here: embed_files reports why
    for path in paths:
        try:
            with open(path, "rb") as f:
                digest = content_hash(f.read())
        except OSError:
            unhashed.append(path)
            continue
        stored = None if digest in copies else store.vector_for_hash(digest)
        if stored is None:
            copies.setdefault(digest, []).append(path)
        else:
            vectors[path] = stored
    reused = len(vectors)
    to_encode = [same[0] for same in copies.values()] + unhashed
    errors: dict[str, Any] = {}
    for start in range(0, len(to_encode), ENCODE_CHUNK):
        encoded, failed = embed_files(to_encode[start : start + ENCODE_CHUNK])
        vectors.update(encoded)
        errors.update(failed)
        if progress is not None:
            progress(min(start + ENCODE_CHUNK, len(to_encode)), len(to_encode))
    for same in copies.values():
        for path in same[1:]:
            if same[0] in vectors:
                vectors[path] = vectors[same[0]]
            else:
                errors[path] = errors[same[0]]
    return vectors, errors, reused
