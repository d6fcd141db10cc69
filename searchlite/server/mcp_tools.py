"""`searchlite mcp`: a Model Context Protocol server on stdio (the official `mcp` SDK) so that AI
agents can search the index. Tools: search, search_by_image, info, classify. stdout carries only the
protocol: everything else goes to stderr."""

from __future__ import annotations

import os
from typing import Any

from .. import SearchliteError

MAX_K = 200


def build_server(engine: Any) -> Any:
    """The MCP server (mcp 2's MCPServer, or FastMCP of mcp 1) with searchlite's tools."""
    try:
        from mcp.server.mcpserver import MCPServer as Server
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp import FastMCP as Server
        from mcp.server.fastmcp.exceptions import ToolError

    server = Server(
        name="searchlite",
        instructions="Semantic image search over a local photo index (CLIP). Search by text or by an image file; "
        "results are file paths with cosine-similarity scores (higher is closer).",
    )

    def hits(found: list[Any]) -> list[dict[str, Any]]:
        return [
            {"path": h.path, "score": round(float(h.score), 4), "width": h.width, "height": h.height, "tags": list(h.tags)}
            | ({"copies": list(h.copies)} if h.copies else {})  # exact copies of the file, collapsed into its hit
            | ({"type": h.kind} if h.kind != "image" else {})
            | ({"time": h.time, "span": h.span} if h.time is not None else {})  # the video's shot that matched
            | ({"box": list(h.box)} if h.box is not None else {})  # the image's region that matched
            for h in found
        ]

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
            return hits(engine.search(image=os.path.expanduser(path), k=checked_k(k), tag=tag or None))
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
            results = engine.classify([os.path.expanduser(p) for p in paths], labels)
        except SearchliteError as e:
            raise ToolError(str(e)) from None
        return [
            {"path": r.path, "label": r.label, "score": None if r.score is None else round(r.score, 4), "ranking": [[label, round(p, 4)] for label, p in r.ranking[:5]]}
            | ({"error": r.error} if r.error else {})
            for r in results
        ]

    return server


def serve_stdio(engine: Any) -> None:
    """Serve over stdin/stdout until the client closes them."""
    build_server(engine).run("stdio")
