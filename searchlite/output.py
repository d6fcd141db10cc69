"""How a search hit leaves searchlite: one JSON object (the CLI's --json, the HTTP API and MCP
add to it, never reshape it) and one TSV record, with one rounding. Imports nothing heavy, so the
CLI and the server both use it without importing each other."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .query.search import Hit

SCORE_DIGITS = 6  # a cosine to 1e-6: finer is float32 noise
SECONDS_DIGITS = 3  # a video's time and span, to the millisecond


def rounded_score(score: float) -> float:
    """A score as every surface prints it."""
    return round(float(score), SCORE_DIGITS)


def hit_json(hit: Hit) -> dict[str, Any]:
    """A hit as a JSON object: type, box, time and span, and the paths of exact copies only where
    the hit has them (where in the file it matched, when a part of it did)."""
    record: dict[str, Any] = {
        "path": hit.path, "score": rounded_score(hit.score), "id": hit.id, "width": hit.width, "height": hit.height,
        "size": hit.size, "tags": list(hit.tags),
    }
    if hit.kind != "image":
        record["type"] = hit.kind
    if hit.box is not None:
        record["box"] = list(hit.box)
    if hit.time is not None:
        record["time"] = round(hit.time, SECONDS_DIGITS)
        record["span"] = None if hit.span is None else round(hit.span, SECONDS_DIGITS)
    if hit.copies:
        record["copies"] = list(hit.copies)
    record["taken_at"] = hit.taken_at
    return record


def hit_tsv(hit: Hit, lead: Sequence[str], end: bytes = b"\n") -> bytes:
    """A hit as a TSV record: the lead columns (score, date, verdict), the path exactly as the OS
    has it, then where in the file it matched when a part of it did ("t=12.4", "box=...")."""
    where = hit.where()
    return "".join(f"{column}\t" for column in lead).encode() + os.fsencode(hit.path) + (f"\t{where}".encode() if where else b"") + end


def json_line(obj: dict[str, Any]) -> bytes:
    """One JSON line as bytes. File names that are not valid UTF-8 hold lone surrogates;
    backslashreplace turns each into a JSON \\udcXX escape, which json.loads + os.fsencode turn
    back into the original bytes."""
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
