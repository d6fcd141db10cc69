"""`searchlite info`: what an index holds, as aligned lines a person reads or as JSON."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from ..output import json_line
from .console import write
from .opening import open_index
from .options import IndexOpt, JsonOpt
from .user_errors import printable, user_errors

_SEARCH_KINDS = {
    "exact": "exact search", "ivf": "approximate search (IVF)", "hnsw": "approximate search (HNSW)",
    "ivfpq": "approximate search (IVF-PQ, re-ranked exactly)", "hnswpq": "approximate search (HNSW-PQ, re-ranked exactly)",
}


def info(
    as_json: JsonOpt = False,
    failed: Annotated[bool, typer.Option("--failed", help="List the files that failed, with reasons.")] = False,
    skipped: Annotated[
        bool, typer.Option("--skipped", help="List the files skipped (not images, links out of the collection), with reasons.")
    ] = False,
    index: IndexOpt = None,
) -> None:
    """What the index holds: images indexed and failed, model, dimensions, sizes on disk."""
    with user_errors(), open_index(index, create=False) as engine:
        rows = (engine.failures() if failed else []) + (engine.skipped() if skipped else [])
        facts = engine.info()
    if failed or skipped:
        write(
            json_line({"path": r.path, "error": r.error}) if as_json else os.fsencode(r.path) + f"\t{r.error}\n".encode()
            for r in rows
        )
    elif as_json:
        write([json_line(facts)])
    else:
        write([describe_info(facts).encode("utf-8", "backslashreplace")])


def describe_info(facts: dict[str, Any]) -> str:
    """info's facts as aligned lines a person reads (--json keeps the machine values)."""
    tags = ", ".join(f"{label} {n}" for label, n in facts["tags"].items()) or "none"
    rows = [
        ("index", printable(facts["index"])),
        ("images", str(facts["images"])),
        *([("videos", str(facts["videos"]))] if facts.get("videos") else []),
        ("failed", str(facts["failed"]) + (" (searchlite info --failed lists them)" if facts["failed"] else "")),
        ("not images", str(facts["not_images"])),
        *_raw_sibling_row(facts),
        ("model", facts["model"] or "none yet (the first index run records it)"),
        ("dimensions", str(facts["dim"] or "none yet")),
        *_tower_row(facts.get("image_tower")),
        ("database", human_size(facts["database_bytes"])),
        ("vectors", f"{human_size(facts['vectors_bytes'])}, " + _SEARCH_KINDS.get(facts["vector_index"], facts["vector_index"])),
        ("tags", tags),
        ("taken", _describe_dates(facts.get("dates"))),
        ("cameras", ", ".join(f"{_camera_name(c)} {c['images']}" for c in facts.get("cameras") or []) or "none recorded"),
    ]
    width = max(len(key) for key, _ in rows) + 2
    return "".join(f"{key + ':':<{width}}{value}\n" for key, value in rows)


def _tower_row(tower: dict[str, Any] | None) -> list[tuple[str, str]]:
    """info's line on the image tower that encoded the vectors, and a mix of precisions."""
    if not tower:
        return []
    mixed = f"; mixed: vectors from the {' and '.join(tower['precisions'])} towers (index into a new index for one)" if tower["mixed"] else ""
    return [("image tower", tower["description"] + mixed)]


def _raw_sibling_row(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """info's line on camera RAW files beside same-name JPEGs, when there is something to say."""
    if facts.get("raw_siblings_indexed"):
        return [("raw siblings", "indexed beside their JPEGs (--no-raw-siblings skips them)")]
    if facts.get("raw_siblings_skipped"):
        return [("raw siblings", f"{facts['raw_siblings_skipped']} not indexed, their same-name JPEGs are (--raw-siblings indexes both)")]
    return []


def _describe_dates(dates: dict[str, Any] | None) -> str:
    if not dates:
        return "no dates yet"
    guessed = f" ({dates['from_mtime']} from file times, no EXIF date)" if dates["from_mtime"] else ""
    return f"{dates['first'].replace('T', ' ')} to {dates['last'].replace('T', ' ')}{guessed}"


def _camera_name(camera: dict[str, Any]) -> str:
    """"Canon EOS R5", not "Canon Canon EOS R5": the model often repeats the make."""
    make, model = camera.get("make") or "", camera.get("model") or ""
    return model if make and model.lower().startswith(make.lower().split()[0]) else " ".join(p for p in (make, model) if p)


def human_size(n: int) -> str:
    """12345678 -> '12.3 MB' (powers of 1000, as disk sizes are sold)."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")
