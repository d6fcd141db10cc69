"""What an index holds, as `searchlite info` reports it: the verdicts of its files (indexed,
failed, not images, links not followed, RAW files beside a JPEG), its model, its sizes on disk,
its tags, and the capture dates and cameras of its photos. Loads no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DB_FILENAME, FAISS_FILENAME
from ..errors import IndexVersionError
from ..models.hub import TOWER_RECORD
from ..models.spec import ModelSpec
from ..storage.store import FAILED, INDEXED, SKIPPED, Store
from . import scanner


def index_info(store: Store, index_dir: Path) -> dict[str, Any]:
    """Counts, model and sizes on disk of the index in index_dir (see SearchEngine.info)."""
    counts = store.counts()
    recorded = store.get_info("model")
    db = index_dir / DB_FILENAME
    db_bytes = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    faiss_file = index_dir / FAISS_FILENAME
    reasons = [r.error for r in store.rows_in_state(SKIPPED)] if counts.get(SKIPPED) else []
    links = reasons.count(scanner.LINK_OUT_OF_COLLECTION)
    raw_siblings = reasons.count(scanner.RAW_SIBLING)
    videos = store.video_count() if counts.get(INDEXED) else 0
    return {
        "index": str(index_dir.resolve()),
        "images": counts.get(INDEXED, 0) - videos,
        "videos": videos,
        "failed": counts.get(FAILED, 0),
        "not_images": counts.get(SKIPPED, 0) - links - raw_siblings,
        "links_not_followed": links,
        "raw_siblings_skipped": raw_siblings,  # camera RAW files whose same-name JPEG is indexed
        "raw_siblings_indexed": bool(store.get_info("raw_siblings")),  # the remembered setting
        "model": ModelSpec.from_record(recorded).describe() if recorded else None,
        "dim": store.get_info("embed_dim"),
        "database_bytes": db_bytes,
        "vectors_bytes": faiss_file.stat().st_size if faiss_file.exists() else 0,
        "vector_index": (store.get_info("faiss") or {}).get("kind", "exact"),
        "tags": store.tag_counts(),
        "regions": bool(store.get_info("regions")),
        "image_tower": _tower_facts(store.get_info(TOWER_RECORD)),
        **_metadata_summary(store),
    }


def _tower_facts(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The image tower the index's vectors come from (ingest/tower_choice.py): its precision, every
    precision they have come from ("mixed" when more than one), why, and the check's figures."""
    if not record:
        return None  # nothing encoded yet, or by a searchlite before the record
    from ..models.int8 import Verdict  # it imports Pillow and the tower: info needs only the wording

    verdict = record.get("verdict") or {}
    precisions = record.get("precisions") or [record["precision"]]
    return {
        "precision": record["precision"], "precisions": precisions, "mixed": len(precisions) > 1,
        "reason": verdict.get("reason"), "description": Verdict.from_record(verdict).describe() if verdict else record["precision"],
        **{k: verdict.get(k) for k in ("images", "from_collection", "min_cosine", "mean_overlap", "seconds") if verdict.get(k) is not None},
    }


def _metadata_summary(store: Store) -> dict[str, Any]:
    """The capture dates and cameras (empty on an old index opened read-only)."""
    try:
        first, last, by_source = store.date_range()
        cameras = store.camera_counts()
    except IndexVersionError:  # read-only, before the metadata columns (schema 4)
        return {"dates": None, "cameras": []}
    return {
        # the photos' own wall clock; "from_mtime": how many have only their file's mtime
        "dates": None if first is None else {"first": first, "last": last, "from_exif": by_source.get("exif", 0), "from_mtime": by_source.get("mtime", 0)},
        "cameras": [{"make": make, "model": model, "images": n} for make, model, n in cameras],
    }
