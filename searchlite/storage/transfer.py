"""Embeddings in and out of an index: export to .npy + .jsonl (+ .index.json), import embeddings
computed elsewhere (by the same model, e.g. on a GPU cluster) for files that exist here, without
re-encoding. An export imported again gives the same index: every vector of every file (a video's
shots, an image's regions), the files' header metadata, and the tag sets with the index's settings
and the record of the image tower that encoded the vectors (an import into an index of another
precision is a mix, said).

The .jsonl has one line per row of the .npy, in the same order: a file's own vector
{"path": ..., "type": "video" (videos only), "metadata": {...}, "metadata_version": N}, then its
parts {"path": ..., "part": "shot", "time": T, "span": S} or {"path": ..., "part": "region",
"box": [x0, y0, x1, y1]}. A line with only a path (or a plain file of paths) is an image's own
vector, as other tools write them.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, file_error
from .atomic_file import replaceable_target, write_atomic
from .hashing import content_hash
from .store import INDEXED, OWN_KINDS, Store, TagSetRow, VectorPart
from .vector_index import VectorIndex

log = logging.getLogger(__name__)

TOWER_RECORD = "image_tower"  # index_info's record of the image tower (models.hub.TOWER_RECORD, which sits above)

CHUNK = 1000  # files per transaction on import
PART_KINDS = ("shot", "region")
UNIT_TOLERANCE = 1e-5  # rows this close to unit length are kept bit for bit (a round trip changes no score)


def facts_path(npy_path: Path) -> Path:
    """Where the index's tag sets and settings go beside an embeddings file (OUT.index.json)."""
    return npy_path.with_suffix(".index.json")


def export_embeddings(store: Store, npy_path: Path) -> int:
    """Write every stored vector to npy_path (float32 (n, d)), what each row is to the .jsonl beside
    it (line by line in the same order; see the module's docstring), and the index's tag sets and
    settings to the .index.json beside it. Returns n. All three must be regular files (or not exist
    yet): a device such as /dev/stdout, a pipe or a folder raises InvalidInputError before anything
    is written."""
    targets = (npy_path, npy_path.with_suffix(".jsonl"), facts_path(npy_path))
    for target in targets:
        replaceable_target(target)
    ids, vectors = [], []
    for chunk_ids, chunk in store.iter_faiss_vectors():
        ids.extend(chunk_ids.tolist())
        vectors.append(chunk)
    what = store.vector_rows(ids)
    # each file's own vector first, then its parts in the order they were made
    order = sorted(range(len(ids)), key=lambda n: (what[ids[n]].image_id, what[ids[n]].kind not in OWN_KINDS, ids[n]))
    file_ids = sorted({row.image_id for row in what.values()})
    rows, metadata = store.fetch(file_ids), store.metadata_of(file_ids)
    matrix = np.concatenate(vectors)[order] if vectors else np.zeros((0, store.get_info("embed_dim") or 0), np.float32)
    lines = (json.dumps(_line(what[ids[n]], rows, metadata)) + "\n" for n in order)
    buf = io.BytesIO()
    np.save(buf, matrix)
    contents = (buf.getvalue(), "".join(lines).encode(), json.dumps(_index_facts(store)).encode())
    for path, data in zip(targets, contents):
        try:
            write_atomic(path, data)
        except OSError as e:
            raise file_error(path, e, writing=True) from None
    return len(ids)


def _line(vector: Any, rows: dict[int, Any], metadata: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The .jsonl object for one vector (a VectorRow)."""
    line: dict[str, Any] = {"path": rows[vector.image_id].path}
    if vector.kind in OWN_KINDS:
        if vector.kind != "image":
            line["type"] = vector.kind
        facts = {name: value for name, value in metadata.get(vector.image_id, {}).items() if value is not None}
        if facts:
            line["metadata"] = facts
        if rows[vector.image_id].metadata_version is not None:
            line["metadata_version"] = rows[vector.image_id].metadata_version
    else:
        line["part"] = vector.kind
        if vector.box is not None:
            line["box"] = list(vector.box)
        if vector.time is not None:
            line["time"], line["span"] = vector.time, vector.span
    return line


def _index_facts(store: Store) -> dict[str, Any]:
    """What an index holds besides its files' vectors: its tag sets (classifiers, whose tags are
    computed again on import) and the settings it remembers for later index runs."""
    return {
        "regions": bool(store.get_info("regions")),
        "raw_siblings": bool(store.get_info("raw_siblings")),
        "image_tower": store.get_info(TOWER_RECORD),
        "tag_sets": [
            {"name": t.name, "key": t.key, "labels": list(t.labels), "weights": t.weights.tolist(), "bias": t.bias.tolist(),
             "threshold": t.threshold, "source": t.source}
            for t in store.tag_sets()
        ],
    }


@dataclass
class FileEntry:
    """One file to import: its own vector, its parts and what its header said."""

    path: str
    vector: np.ndarray | None = None
    kind: str = "image"
    metadata: dict[str, Any] | None = None
    metadata_version: int | None = None
    parts: list[VectorPart] = field(default_factory=list)


def read_embeddings(npy_path: Path, paths_path: Path, dim: int, model: str) -> list[FileEntry]:
    """The files to import from an embeddings file and its paths file (absolute paths), checked
    against the index's dimension; model names the index's model in messages."""
    try:
        matrix = np.load(npy_path, allow_pickle=False)
    except OSError as e:
        raise file_error(npy_path, e, writing=False, what="embeddings file") from None
    except ValueError as e:
        raise InvalidInputError(f"cannot read embeddings {npy_path}: {e}") from None
    lines = _read_lines(paths_path)
    if matrix.ndim != 2 or matrix.shape[1] != dim or len(matrix) != len(lines):
        raise InvalidInputError(
            f"{npy_path} holds {matrix.shape} embeddings for {len(lines)} paths; this index needs "
            f"one {dim}-dimensional row per path (from its own model, {model})"
        )
    norms = np.linalg.norm(matrix, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InvalidInputError(f"{npy_path} has rows that are zero, NaN or infinite")
    matrix = matrix.astype(np.float32)
    off = np.abs(norms - 1.0) > UNIT_TOLERANCE
    matrix[off] /= norms[off, None].astype(np.float32)
    return _entries(matrix, lines, paths_path)


def _entries(matrix: np.ndarray, lines: list[dict[str, Any]], source: Path) -> list[FileEntry]:
    """Lines grouped by file: own vectors (the last one of a path wins) with their parts."""
    files: dict[str, FileEntry] = {}
    for n, (line, vector) in enumerate(zip(lines, matrix), 1):
        path = line["path"]
        part = line.get("part")
        if part is None:
            kind = line.get("type", "image")
            if kind not in OWN_KINDS:
                raise InvalidInputError(f"{source} line {n}: type {kind!r} is not one of {', '.join(OWN_KINDS)}")
            entry = files.setdefault(path, FileEntry(path))
            entry.vector, entry.kind = vector, kind
            entry.metadata, entry.metadata_version = line.get("metadata"), line.get("metadata_version")
            continue
        if part not in PART_KINDS:
            raise InvalidInputError(f"{source} line {n}: part {part!r} is not one of {', '.join(PART_KINDS)}")
        box, time, span = line.get("box"), line.get("time"), line.get("span")
        if part == "region" and not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)):
            raise InvalidInputError(f"{source} line {n}: a region needs \"box\": [x0, y0, x1, y1] in pixels")
        if part == "shot" and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (time, span)):
            raise InvalidInputError(f"{source} line {n}: a shot needs \"time\" and \"span\" in seconds")
        files.setdefault(path, FileEntry(path)).parts.append(
            VectorPart(part, vector, tuple(box) if box else None, time, span)  # type: ignore[arg-type]
        )
    for entry in files.values():
        if entry.vector is None:
            raise InvalidInputError(f"{source}: {entry.path} has {entry.parts[0].kind} lines but no line for the file's own vector")
    return list(files.values())


def import_facts(store: Store, npy_path: Path, dim: int) -> None:
    """Store the tag sets and settings an export wrote beside npy_path (nothing when it wrote
    none, as other tools do not); the caller holds the write lock."""
    path = facts_path(npy_path)
    if not path.exists():
        return
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
        tag_sets = [
            TagSetRow(t["name"], t["key"], tuple(t["labels"]), np.asarray(t["weights"], np.float32).reshape(len(t["labels"]), dim),
                      np.asarray(t["bias"], np.float32).reshape(len(t["labels"])), float(t["threshold"]), t["source"])
            for t in facts.get("tag_sets", [])
        ]
    except OSError as e:
        raise file_error(path, e, writing=False, what="index facts file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(f"{path} is not an index facts file written by searchlite export ({e}); remove it to import the embeddings alone") from None
    for key in ("regions", "raw_siblings"):  # remembered for later index runs
        if facts.get(key) and not store.get_info(key):
            store.set_info(key, True)
    if isinstance(facts.get("image_tower"), dict):
        _merge_tower(store, facts["image_tower"])
    if tag_sets:
        with store.transaction(vectors_changed=False) as tx:
            for row in tag_sets:
                tx.set_tag_set(row)


def _merge_tower(store: Store, imported: dict[str, Any]) -> None:
    """Record the image tower of imported vectors (ingest/tower_choice.py's record): a new index
    takes it whole; one with vectors keeps its own and adds the imported precisions, a mix said
    here and by `info`."""
    recorded = store.get_info(TOWER_RECORD)
    has_vectors = bool(store.counts().get(INDEXED))
    if not has_vectors and not recorded:
        store.set_info(TOWER_RECORD, imported)
        return
    mine = recorded or {"precision": "fp32"}  # vectors from before the record are fp32
    before = set(mine.get("precisions") or [mine["precision"]])
    precisions = sorted(before | set(imported.get("precisions") or [imported.get("precision", "fp32")]))
    if len(precisions) > 1 and len(before) == 1:
        log.warning("this index now holds vectors from the %s image tower beside %s ones (searchlite info says so)",
                    " and ".join(p for p in precisions if p not in before), next(iter(before)))
    if {**mine, "precisions": precisions} != recorded:
        store.set_info(TOWER_RECORD, {**mine, "precisions": precisions})


def import_rows(store: Store, vectors: VectorIndex, files: list[FileEntry]) -> tuple[int, int]:
    """Store each file that exists here as indexed with its vectors and metadata, in transactions
    of CHUNK files, and add the vectors to vectors. Returns (vectors imported, files not found
    here). The caller holds the write lock."""
    imported = missing = 0
    for start in range(0, len(files), CHUNK):
        with store.transaction() as tx:
            for entry in files[start : start + CHUNK]:
                try:
                    with open(entry.path, "rb") as f:
                        data = f.read()
                        st = os.fstat(f.fileno())
                except OSError:
                    missing += 1
                    continue
                metadata = entry.metadata or {}
                width, height = (metadata["width"], metadata["height"]) if "width" in metadata else _header_size(entry.path)
                tx.put(entry.path, size=st.st_size, mtime_ns=st.st_mtime_ns, content_hash=content_hash(data), state=INDEXED,
                       vector=entry.vector, width=width, height=height, metadata=entry.metadata,
                       metadata_version=entry.metadata_version, kind=entry.kind, parts=entry.parts)
                imported += 1 + len(entry.parts)
        # committed: the vector index follows (an imported file's old regions or shots are replaced)
        vectors.remove(np.array(tx.removed_ids, dtype=np.int64))
        ids, added = tx.added_arrays()
        if added is not None:
            vectors.add(ids, added)
    return imported, missing


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """One object per line, its path absolute: a .jsonl of objects with a "path" or a file of plain
    paths."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if line.strip()]
    except OSError as e:
        raise file_error(path, e, writing=False, what="paths file") from None
    if path.suffix == ".jsonl":
        try:
            records = [json.loads(line) for line in lines]
            if not all(isinstance(r, dict) and isinstance(r["path"], str) for r in records):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise InvalidInputError(f"{path}: every line must be a JSON object with a \"path\"") from None
    else:
        records = [{"path": line} for line in lines]
    return [r | {"path": os.path.abspath(os.path.join(path.parent, r["path"]))} for r in records]


def _header_size(path: str) -> tuple[int | None, int | None]:
    """Width and height from the image header alone (None when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the size is informative only
        return None, None
