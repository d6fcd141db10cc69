"""`searchlite mcp`: a Model Context Protocol server on stdio (the official `mcp` SDK) so that AI
agents can search the index. Tools: search, search_by_image, info, classify. stdout carries only the
protocol: everything else goes to stderr.

search_by_image and classify read files an agent names, and an agent may follow instructions hidden
in what it reads (prompt injection): they read only regular files (never a pipe, a device, /proc,
/sys or /dev), at most max_file_bytes, in the isolated decoder process; folders, when given, keep
them to files inside those folders (with the same answer for a path outside them whether or not it
exists)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .. import SearchliteError
from ..media.safe_read import ReadPolicy, inside
from ..output import hit_json
from .settings import DEFAULT_MAX_FILE_MB

MAX_K = 200
DEFAULT_MAX_FILE_BYTES = int(DEFAULT_MAX_FILE_MB * 1024 * 1024)


def build_server(engine: Any, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, folders: Sequence[str] = ()) -> Any:
    """The MCP server (mcp 2's MCPServer, or FastMCP of mcp 1) with searchlite's tools. Files the
    tools read: regular files of at most max_file_bytes, inside folders when given."""
    try:
        from mcp.server.mcpserver import MCPServer as Server
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp import FastMCP as Server
        from mcp.server.fastmcp.exceptions import ToolError

    reading = ReadPolicy(regular_only=True, max_bytes=max_file_bytes, roots=tuple(os.path.abspath(f) for f in folders))
    engine.read_policy = reading

    def readable(path: str) -> str:
        """path as the engine reads it; ToolError for one outside the folders, said before anything
        else (whether it exists is not told)."""
        path = os.path.abspath(os.path.expanduser(path))
        if reading.roots and not inside(path, reading.roots):
            raise ToolError(f"file {path} is outside the folders this server reads ({', '.join(reading.roots)})")
        return path

    server = Server(
        name="searchlite",
        instructions="Semantic image search over a local photo index (CLIP). Search by text or by an image file; "
        "results are file paths with cosine-similarity scores (higher is closer).",
    )

    def hits(found: list[Any]) -> list[dict[str, Any]]:
        return [hit_json(h) for h in found]  # as the CLI's --json: a video's shot, a region's box, exact copies

    def checked_k(k: int) -> int:
        if not 1 <= k <= MAX_K:
            raise ToolError(f"k must be between 1 and {MAX_K}, got {k}")
        return k

    @server.tool()
    def search(text: str, k: int = 10, tag: str | None = None, negative: list[str] | None = None) -> list[dict[str, Any]]:
        """Find images in the index matching a text description, best first. tag: only images
        carrying this tag; negative: texts to steer away from. Returns paths and scores."""
        try:
            return hits(engine.search(text, negative=negative or [], k=checked_k(k), tag=tag or None))
        except SearchliteError as e:
            raise ToolError(str(e)) from None

    @server.tool()
    def search_by_image(path: str, k: int = 10, tag: str | None = None) -> list[dict[str, Any]]:
        """Find indexed images that look like the image file at path (indexed or not), best first."""
        try:
            return hits(engine.search(image=readable(path), k=checked_k(k), tag=tag or None))
        except SearchliteError as e:
            raise ToolError(str(e)) from None

    @server.tool()
    def info() -> dict[str, Any]:
        """What the index holds: images indexed and failed, model, embedding size, sizes on disk, tags."""
        try:
            return engine.info()
        except SearchliteError as e:
            raise ToolError(str(e)) from None

    @server.tool()
    def classify(paths: list[str], labels: list[str]) -> list[dict[str, Any]]:
        """Zero-shot classify image files into one of labels; each result has the best label, its
        probability and the ranking, or an error for a file that cannot be read."""
        if not paths or not labels:
            raise ToolError("give at least one path and one label")
        try:
            results = engine.classify([readable(p) for p in paths], labels)
        except SearchliteError as e:
            raise ToolError(str(e)) from None
        return [
            {"path": r.path, "label": r.label, "score": None if r.score is None else round(r.score, 4), "ranking": [[label, round(p, 4)] for label, p in r.ranking[:5]]}
            | ({"error": r.error} if r.error else {})
            for r in results
        ]

    return server


def serve_stdio(engine: Any, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, folders: Sequence[str] = ()) -> None:
    """Serve over stdin/stdout until the client closes them (see build_server)."""
    build_server(engine, max_file_bytes=max_file_bytes, folders=folders).run("stdio")
