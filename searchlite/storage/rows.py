"""What the store's rows are in Python: a file (FileRow), a vector (VectorRow, VectorPart), a tag
set (TagSetRow), the states a file is in, and how many ids one statement binds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

INDEXED = "indexed"
FAILED = "failed"
SKIPPED = "skipped"  # not an image

# the columns a metadata dict (ImageMetadata.to_dict() plus taken_utc) fills; width/height are the
# images' own columns
METADATA_COLUMNS = (
    "taken_at", "taken_offset", "taken_utc", "taken_source", "make", "model", "lens",
    "latitude", "longitude", "altitude", "media_type", "phash",
)

OWN_KINDS = ("image", "video")  # the kinds of a file's own vector

# SQLite binds at most 32,766 values per statement: long id lists go in parts
IDS_PER_STATEMENT = 10_000


@dataclass(frozen=True)
class VectorPart:
    """A vector a file owns besides its own: a region (box) or a shot of a video (time, span)."""

    kind: str
    vector: Any  # float32 (d,)
    box: tuple[int, int, int, int] | None = None
    time: float | None = None
    span: float | None = None


@dataclass(frozen=True)
class VectorRow:
    """What one FAISS id stands for."""

    id: int
    image_id: int
    kind: str
    box: tuple[int, int, int, int] | None = None
    time: float | None = None
    span: float | None = None


@dataclass(frozen=True)
class TagSetRow:
    """A stored tag set: its classifier and how it was made (a linear classifier, zero-shot or a
    probe, whose verdicts are stored as tags)."""

    name: str
    key: str
    labels: tuple[str, ...]
    weights: Any  # float32 (n_labels, d)
    bias: Any  # float32 (n_labels,)
    threshold: float
    source: str


@dataclass(frozen=True)
class FileRow:
    """What the store knows about one file, without its vector."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    state: str
    width: int | None = None
    height: int | None = None
    error: str | None = None
    failed_under: dict[str, Any] | None = None  # see tables.images
    taken_at: str | None = None  # see tables.images
    metadata_version: int | None = None  # None: the header has not been read yet


def id_parts(ids: Iterable[Any], size: int = IDS_PER_STATEMENT) -> Iterator[list[int]]:
    """ids as Python ints (SQLite binds no numpy ones), in lists of at most size."""
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def value_parts(values: list[Any], size: int = IDS_PER_STATEMENT) -> Iterator[list[Any]]:
    """values in lists of at most size (SQLite's limit on bound values)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
