"""Duplicate photos in three tiers, each group with a suggested keeper. Nothing is ever deleted.

- exact: the same bytes (content hash).
- near: the same picture re-encoded, resized, slightly cropped, rotated or converted: CLIP vectors
  at cosine >= NEAR_COSINE, confirmed by perceptual hashes (imagehash's DCT pHash of the picture as
  shown, media/metadata.py) at most PHASH_MAX_DISTANCE bits apart, so that two photos of one scene, whose CLIP vectors
  are as close, are not called duplicates.
- similar: vectors at cosine >= SIMILAR_COSINE (burst shots, the same scene), no pixel check.

Candidate pairs come from a FAISS range search (for large sets over an IVF index of PCA-reduced
vectors: each vector is compared with the few lists near it, not with every other one, and each
candidate is then checked exactly); groups are the connected components of the confirmed pairs. The keeper is the largest picture, then the earliest taken, then the shortest path.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, SearchliteError
from ..media.metadata import perceptual_hash
from .filters import Filters

if TYPE_CHECKING:
    from ..storage.store import Store

log = logging.getLogger(__name__)

EXACT, NEAR, SIMILAR = "exact", "near", "similar"
TIERS = (EXACT, NEAR, SIMILAR)
NEAR_COSINE = 0.85
SIMILAR_COSINE = 0.90
PHASH_MAX_DISTANCE = 12  # of 64 bits: re-encodes and resizes stay within ~4, 5% crops within ~12; other photos >= 20
IVF_MIN_VECTORS = 5_000  # below, an exact range search is fast enough (about a second here)
REDUCED_DIM = 64  # candidate pairs are found in this many PCA dimensions...
CANDIDATE_MARGIN = 0.15  # ...at the threshold less this, then checked exactly
NPROBE = 16


@dataclass(frozen=True)
class DuplicateFile:
    id: int
    path: str
    width: int | None
    height: int | None
    size: int | None
    taken_at: str | None
    keeper: bool = False


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are copies of one another (tier says how close); keeper: the one to keep, why."""

    tier: str
    files: tuple[DuplicateFile, ...]
    keeper: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier, "keeper": self.keeper, "reason": self.reason,
            "files": [f.__dict__ for f in self.files],
        }


def range_pairs(vectors: np.ndarray, threshold: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, positions in vectors) of unit vectors with inner product >= threshold, and
    their scores. Below IVF_MIN_VECTORS: an exact FAISS range search. Above: candidates from a range
    search at threshold - CANDIDATE_MARGIN over an IVF index of the vectors projected by PCA to
    REDUCED_DIM dimensions (close pairs stay close there; each vector is compared with the
    NPROBE lists nearest it, not with every other vector), each candidate then checked exactly."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if n < IVF_MIN_VECTORS:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return _upper(*index.range_search(vectors, float(threshold)), n)
    rng = np.random.default_rng(seed)
    reduced = vectors
    if d > REDUCED_DIM:
        pca = faiss.PCAMatrix(d, REDUCED_DIM)
        pca.train(vectors[rng.choice(n, size=min(n, 20_000), replace=False)])
        reduced = pca.apply(vectors)
        reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
    dim = reduced.shape[1]
    nlist = int(min(8192, max(64, round(2 * math.sqrt(n)))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter, index.cp.min_points_per_centroid = seed, 10, 5
    index.train(reduced[rng.choice(n, size=min(n, 20 * nlist), replace=False)])
    index.add(reduced)
    index.nprobe = min(NPROBE, nlist)
    left, right, _ = _upper(*index.range_search(reduced, float(threshold) - CANDIDATE_MARGIN), n)
    scores = np.empty(len(left), np.float32)
    for start in range(0, len(left), 200_000):  # exact scores of the candidates, in bounded memory
        part = slice(start, start + 200_000)
        scores[part] = np.einsum("ij,ij->i", vectors[left[part]], vectors[right[part]])
    keep = scores >= threshold
    return left[keep], right[keep], scores[keep]


def _upper(limits: np.ndarray, scores: np.ndarray, found: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A range search's results as pairs i < j."""
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(limits).astype(np.int64))
    keep = rows < found
    return rows[keep], found[keep].astype(np.int64), scores[keep]


def components(n: int, left: np.ndarray, right: np.ndarray) -> list[list[int]]:
    """Connected components (of 2 or more) of the graph on n nodes with edges left[k]-right[k]."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def phash_distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def groups_in_index(store: Store, tier: str, decode: Callable[[str], Any], path: str | os.PathLike[str] | None = None) -> list[DuplicateGroup]:
    """Groups of tier among the indexed files that still exist (path: under this folder or
    matching this glob), largest first. decode(path) gives the picture of a file indexed before
    perceptual hashes were kept."""
    if tier not in TIERS:
        raise InvalidInputError(f"unknown duplicate tier {tier!r}: give exact, near or similar")
    among = Filters(path=path).matching_ids(store) if path is not None else None
    rows = {
        r.id: {"path": os.fsdecode(r.path), "width": r.width, "height": r.height, "size": r.size, "taken_at": r.taken_at,
               "content_hash": r.content_hash, "phash": r.phash}
        for r in store.select_where(("path", "width", "height", "size", "taken_at", "content_hash", "phash"))
    }
    wanted = set(rows) if among is None else set(among.tolist()) & set(rows)
    wanted = {i for i in wanted if os.path.exists(rows[i]["path"])}  # files deleted since the last index run
    ids_parts, vector_parts = [], []
    for chunk_ids, chunk_vectors in store.iter_vectors():
        keep = np.fromiter((int(i) in wanted for i in chunk_ids), dtype=bool, count=len(chunk_ids))
        ids_parts.append(chunk_ids[keep])
        vector_parts.append(chunk_vectors[keep])
    if not ids_parts:
        return []

    def phash_of(image_id: int) -> str | None:  # rows indexed before perceptual hashes were kept
        try:
            return perceptual_hash(decode(rows[image_id]["path"]))
        except SearchliteError as e:
            log.info("no perceptual hash for %s: %s", rows[image_id]["path"], e)
            return None

    return find_groups(tier, np.concatenate(ids_parts), np.concatenate(vector_parts), rows, phash_of)


def find_groups(
    tier: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    rows: dict[int, dict[str, Any]],
    phash_of: Callable[[int], str | None],
) -> list[DuplicateGroup]:
    """Groups of tier among ids (with their unit vectors); rows: each id's path, width, height,
    size, taken_at, content_hash and phash; phash_of(id) computes a missing perceptual hash."""
    if tier == EXACT:
        by_hash: dict[str, list[int]] = {}
        for i in ids.tolist():
            if rows[i].get("content_hash"):
                by_hash.setdefault(rows[i]["content_hash"], []).append(i)
        members = [g for g in by_hash.values() if len(g) > 1]
    else:
        left, right, _ = range_pairs(vectors, NEAR_COSINE if tier == NEAR else SIMILAR_COSINE)
        if tier == NEAR:
            left, right = _confirmed(ids, left, right, rows, phash_of)
        members = [[int(ids[p]) for p in group] for group in components(len(ids), left, right)]
    groups = [_group(tier, [rows[i] | {"id": i} for i in group]) for group in members]
    return sorted(groups, key=lambda g: (-len(g.files), g.keeper))


def _confirmed(ids: np.ndarray, left: np.ndarray, right: np.ndarray, rows: dict[int, dict[str, Any]],
               phash_of: Callable[[int], str | None]) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs whose pictures' perceptual hashes agree (same content always does)."""
    hashes: dict[int, str | None] = {}

    def phash(i: int) -> str | None:
        if i not in hashes:
            hashes[i] = rows[i].get("phash") or phash_of(i)
        return hashes[i]

    keep = []
    for k, (a, b) in enumerate(zip(ids[left].tolist(), ids[right].tolist())):
        if rows[a].get("content_hash") and rows[a].get("content_hash") == rows[b].get("content_hash"):
            keep.append(k)
            continue
        ha, hb = phash(a), phash(b)
        if ha is not None and hb is not None and phash_distance(ha, hb) <= PHASH_MAX_DISTANCE:
            keep.append(k)
    keep_at = np.array(keep, dtype=np.int64)
    return left[keep_at], right[keep_at]


def _group(tier: str, rows: list[dict[str, Any]]) -> DuplicateGroup:
    def pixels(r: dict[str, Any]) -> int:
        return (r.get("width") or 0) * (r.get("height") or 0)

    ranked = sorted(rows, key=lambda r: (-pixels(r), r.get("taken_at") or "\uffff", len(r["path"]), r["path"]))
    best, runner_up = ranked[0], ranked[1]
    if pixels(best) > pixels(runner_up):
        reason = f"largest picture ({best.get('width')}x{best.get('height')})"
    elif (best.get("taken_at") or "\uffff") < (runner_up.get("taken_at") or "\uffff"):
        reason = f"as large as any, and taken first ({best['taken_at'].replace('T', ' ')})"
    else:
        reason = "as large and as early as any, and the shortest path"
    files = tuple(
        DuplicateFile(r["id"], r["path"], r.get("width"), r.get("height"), r.get("size"), r.get("taken_at"), keeper=r is best)
        for r in ranked
    )
    return DuplicateGroup(tier, files, best["path"], reason)
