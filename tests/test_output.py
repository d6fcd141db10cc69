"""searchlite/output.py: the one place a hit becomes JSON or TSV, shared by the CLI, the HTTP API
and MCP."""

from __future__ import annotations

import json
import os

from searchlite import Hit
from searchlite.output import hit_json, hit_tsv, json_line


def test_a_hit_is_one_json_object_with_one_rounding() -> None:
    video = Hit(path="/p/clip.mp4", score=0.123456789, id=7, width=64, height=48, size=1000, tags=("red",),
                taken_at="2024-01-02T03:04:05", time=2.00049, span=1.99951, kind="video", copies=("/p/copy.mp4",))
    assert hit_json(video) == {
        "path": "/p/clip.mp4", "score": 0.123457, "id": 7, "width": 64, "height": 48, "size": 1000, "tags": ["red"],
        "type": "video", "time": 2.0, "span": 2.0, "copies": ["/p/copy.mp4"], "taken_at": "2024-01-02T03:04:05",
    }
    whole = hit_json(Hit(path="/p/a.jpg", score=0.5, id=1, box=(1, 2, 3, 4)))
    assert whole["box"] == [1, 2, 3, 4] and not {"type", "time", "span", "copies"} & set(whole)


def test_tsv_and_json_lines_keep_a_file_name_that_is_not_utf8() -> None:
    name = os.fsdecode(b"/p/caf\xe9.jpg")
    hit = Hit(path=name, score=0.25, id=1, time=12.44, span=2.0, kind="video")
    assert hit_tsv(hit, ["0.2500"], b"\0") == b"0.2500\t/p/caf\xe9.jpg\tt=12.4\0"
    assert hit_tsv(Hit(path="/p/a.jpg", score=0.5, id=2), ["0.5000", "-"]) == b"0.5000\t-\t/p/a.jpg\n"
    assert os.fsencode(json.loads(json_line(hit_json(hit)))["path"]) == b"/p/caf\xe9.jpg"
