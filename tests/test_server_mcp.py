"""`searchlite mcp`: the Model Context Protocol server, driven by the official SDK's own client
(stdio_client spawning `python -m searchlite mcp --index ...`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

mcp = pytest.importorskip("mcp", reason="the mcp SDK is not installed: pip install 'searchlite[serve]'")

from tests.server_fixtures import caption_of, media_index, shapes_index  # noqa: F401,E402
from tests.timeline_photos import timeline_index  # noqa: F401,E402

ROOT = Path(__file__).resolve().parent.parent


def run_session(index: Path, steps):
    """Start the server with the SDK's stdio client, initialise, run steps(session)."""
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "searchlite", "mcp", "--index", str(index)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    async def main():
        with anyio.fail_after(120):
            async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                return await steps(session)

    return anyio.run(main)


def field(obj, snake: str, camel: str):
    """mcp 2 names fields in snake_case, mcp 1 as on the wire."""
    return getattr(obj, snake, None) if hasattr(obj, snake) else getattr(obj, camel, None)


def structured(result) -> object:
    """A tool's answer: structured content when the SDK gives it, else the JSON text."""
    assert not field(result, "is_error", "isError"), result.content
    content = field(result, "structured_content", "structuredContent")
    if content is not None:
        return content.get("result", content) if isinstance(content, dict) and set(content) == {"result"} else content
    texts = [c.text for c in result.content]
    return json.loads(texts[0]) if len(texts) == 1 else [json.loads(t) for t in texts]


def test_mcp_tools_answer_through_the_sdk_client(shapes_index) -> None:
    photos, index, scenes = shapes_index
    blue = next(p for p in sorted(photos.glob("*.png")) if "blue" in caption_of(str(p)))

    async def steps(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        searched = structured(await session.call_tool("search", {"text": "a red triangle", "k": 3}))
        tagged = structured(await session.call_tool("search", {"text": "a shape", "k": 5, "tag": "green"}))
        by_image = structured(await session.call_tool("search_by_image", {"path": str(blue), "k": 2}))
        info = structured(await session.call_tool("info", {}))
        classified = structured(await session.call_tool("classify", {"paths": [str(blue), str(photos / "missing.png")], "labels": ["red", "green", "blue", "yellow"]}))
        bad = await session.call_tool("search", {"text": "", "k": 3})
        return tools, searched, tagged, by_image, info, classified, bad

    tools, searched, tagged, by_image, info, classified, bad = run_session(index, steps)
    assert {"search", "search_by_image", "info", "classify"} <= set(tools)
    assert "text" in field(tools["search"], "input_schema", "inputSchema")["properties"]
    assert len(searched) == 3 and "red triangle" in caption_of(searched[0]["path"])
    assert searched[0]["score"] >= searched[-1]["score"]
    assert tagged and all(h["tags"] == ["green"] for h in tagged)
    assert by_image[0]["path"] == str(blue) and by_image[0]["score"] > 0.999
    assert info["images"] == len(scenes) and "searchlite-shapes" in info["model"]
    assert classified[0]["label"] == "blue" and "error" in classified[1]
    assert field(bad, "is_error", "isError") and "empty" in " ".join(c.text for c in bad.content).lower()


def test_mcp_timeline_lists_every_relevant_file_by_date_with_the_verdict_and_the_filters_hold(timeline_index) -> None:
    from searchlite import SearchEngine

    _, _, index = timeline_index
    with SearchEngine.open(index, create=False) as engine:
        expected = engine.search("a red circle", sort="date")
        newest = engine.search("a red circle", sort="-date", camera="iPhone", after="2023-03")
        filtered = engine.search("a red circle", k=5, camera="iPhone", after="2023-03", type="image")
        near = engine.search("a shape", k=200, near="41.15,-8.61,30", before="2023-04")
    assert expected.cutoff is not None and 5 < len(expected) < 144

    async def steps(session):
        pages = [structured(await session.call_tool("timeline", {"text": "a red circle", "k": 5, "offset": offset}))
                 for offset in range(0, len(expected) + 5, 5)]
        later = structured(await session.call_tool("timeline", {"text": "a red circle", "order": "newest", "camera": "iPhone", "after": "2023-03"}))
        searched = structured(await session.call_tool("search", {"text": "a red circle", "k": 5, "camera": "iPhone", "after": "2023-03", "type": "image"}))
        placed = structured(await session.call_tool("search", {"text": "a shape", "k": 200, "near": "41.15,-8.61,30", "before": "2023-04"}))
        bad_date = await session.call_tool("timeline", {"text": "a red circle", "after": "2023-13"})
        bad_order = await session.call_tool("timeline", {"text": "a red circle", "order": "sideways"})
        blank = await session.call_tool("timeline", {"text": " "})
        return pages, later, searched, placed, bad_date, bad_order, blank

    pages, later, searched, placed, bad_date, bad_order, blank = run_session(index, steps)
    assert [h["path"] for page in pages for h in page["hits"]] == [h.path for h in expected]  # every relevant one, oldest first
    assert all(page["total"] == len(expected) for page in pages)
    assert pages[0]["cutoff"] == expected.cutoff.as_dict() and pages[0]["cutoff"]["summary"].startswith(f"{len(expected)} of ")
    assert [h["path"] for h in later["hits"]] == [h.path for h in newest] and later["total"] == len(newest) > 0
    assert [h["path"] for h in searched] == [h.path for h in filtered] and len(searched) == 5
    assert [h["path"] for h in placed] == [h.path for h in near] and 0 < len(placed) < 144
    message = " ".join(c.text for c in bad_date.content)
    assert field(bad_date, "is_error", "isError") and "2023-13" in message and "Traceback" not in message
    assert field(bad_order, "is_error", "isError") and 'order must be "oldest" or "newest"' in " ".join(c.text for c in bad_order.content)
    assert field(blank, "is_error", "isError") and "empty text" in " ".join(c.text for c in blank.content)  # not every file listed


def test_mcp_says_which_shot_of_a_video_matched(media_index) -> None:
    paths, index = media_index

    async def steps(session):
        return structured(await session.call_tool("search", {"text": "a red circle", "k": 2}))

    hits = run_session(index, steps)
    assert hits[0]["path"] == str(paths["mp4"]) and hits[0]["type"] == "video"
    assert (hits[0]["time"], hits[0]["span"]) == (2.0, 2.0)  # the red circle's shot, not the blue square's
    assert "type" not in hits[1] and "time" not in hits[1]


def test_mcp_refuses_a_missing_index_with_a_message(tmp_path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "searchlite", "mcp", "--index", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1 and "no index in" in result.stderr and result.stdout == ""
