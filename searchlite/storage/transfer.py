"""Embeddings in and out of an index: export to .npy + .jsonl, import embeddings computed elsewhere
(by the same model, e.g. on a GPU cluster) for files that exist here, without re-encoding."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, file_error
from .atomic_file import replaceable_target, write_atomic
from .hashing import content_hash
from .store import INDEXED, Store
from .vector_index import VectorIndex

CHUNK = 1000  # rows per transaction on import


def export_embeddings(store: Store, npy_path: Path) -> int:
    """Write every stored embedding to npy_path (float32 (n, d)) and, line by line in the same
    order, {"path": ...} objects to the .jsonl beside it. Returns n. Both must be regular files (or
    not exist yet): a device such as /dev/stdout, a pipe or a folder raises InvalidInputError before
    anything is written."""
    for target in (npy_path, npy_path.with_suffix(".jsonl")):
        replaceable_target(target)
    ids, vectors = [], []
    for chunk_ids, chunk in store.iter_vectors():
        ids.extend(chunk_ids.tolist())
        vectors.append(chunk)
    rows = store.fetch(ids)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, store.get_info("embed_dim") or 0), np.float32)
    buf = io.BytesIO()
    np.save(buf, matrix)
    lines = (json.dumps({"path": rows[i].path}) + "\n" for i in ids)
    for path, data in ((npy_path, buf.getvalue()), (npy_path.with_suffix(".jsonl"), "".join(lines).encode())):
        try:
            write_atomic(path, data)
        except OSError as e:
            raise file_error(path, e, writing=True) from None
    return len(ids)


def read_embeddings(npy_path: Path, paths_path: Path, dim: int, model: str) -> tuple[np.ndarray, list[str]]:
    """(unit float32 (n, d), n absolute paths) from an embeddings file and its paths file, checked
    against the index's dimension; model names the index's model in messages."""
    try:
        matrix = np.load(npy_path, allow_pickle=False)
    except OSError as e:
        raise file_error(npy_path, e, writing=False, what="embeddings file") from None
    except ValueError as e:
        raise InvalidInputError(f"cannot read embeddings {npy_path}: {e}") from None
    paths = _read_paths(paths_path)
    if matrix.ndim != 2 or matrix.shape[1] != dim or len(matrix) != len(paths):
        raise InvalidInputError(
            f"{npy_path} holds {matrix.shape} embeddings for {len(paths)} paths; this index needs "
            f"one {dim}-dimensional row per path (from its own model, {model})"
        )
    norms = np.linalg.norm(matrix, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InvalidInputError(f"{npy_path} has rows that are zero, NaN or infinite")
    return (matrix / norms[:, None]).astype(np.float32), paths


def import_rows(store: Store, vectors: VectorIndex, matrix: np.ndarray, paths: list[str]) -> tuple[int, int]:
    """Store each existing file as indexed with its row of matrix, in transactions of CHUNK rows,
    and add them to vectors. Returns (imported, not found here). The caller holds the write lock."""
    imported = missing = 0
    for start in range(0, len(paths), CHUNK):
        with store.transaction() as tx:
            for path, vector in zip(paths[start : start + CHUNK], matrix[start : start + CHUNK]):
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                        st = os.fstat(f.fileno())
                    width, height = _header_size(path)
                except OSError:
                    missing += 1
                    continue
                tx.put(path, size=st.st_size, mtime_ns=st.st_mtime_ns, content_hash=content_hash(data),
                       state=INDEXED, vector=vector, width=width, height=height)
                imported += 1
        # committed: the vector index follows (an imported file's regions or shots are replaced)
        vectors.remove(np.array(tx.removed_ids, dtype=np.int64))
        ids, added = tx.added_arrays()
        if added is not None:
            vectors.add(ids, added)
    return imported, missing


def _read_paths(path: Path) -> list[str]:
    """Absolute paths from a .jsonl of {"path": ...} objects or a file of plain lines."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if line.strip()]
    except OSError as e:
        raise file_error(path, e, writing=False, what="paths file") from None
    if path.suffix == ".jsonl":
        try:
            lines = [json.loads(line)["path"] for line in lines]
        except (ValueError, KeyError, TypeError):
            raise InvalidInputError(f"{path}: every line must be a JSON object with a \"path\"") from None
    return [os.path.abspath(os.path.join(path.parent, p)) for p in lines]


def _header_size(path: str) -> tuple[int | None, int | None]:
    """Width and height from the image header alone (None when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the size is informative only
        return None, None
