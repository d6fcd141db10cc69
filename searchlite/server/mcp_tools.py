"""`searchlite mcp`: a Model Context Protocol server on stdio (the official `mcp` SDK) so that AI
agents can search the index. Tools: search, search_by_image (both with the CLI's filters), timeline
(every relevant file in date order, with the relevance cut-off's verdict), info, classify. stdout
carries only the protocol: everything else goes to stderr.

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

    def found(k: int, text: str | None = None, image: str | None = None, **options: Any) -> Any:
        """engine.search() of text or image with the options given (None and "" left out), its errors as ToolError."""
        options = {key: value for key, value in options.items() if value not in (None, "")}
        try:
            return engine.search(text, image=image, k=checked_k(k), **options)
        except SearchliteError as e:
            raise ToolError(str(e)) from None

    @server.tool()
    def search(
        text: str, k: int = 10, tag: str | None = None, negative: list[str] | None = None, type: str | None = None,
        after: str | None = None, before: str | None = None, camera: str | None = None, place: str | None = None,
        near: str | None = None, path: str | None = None, min_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """Find images (and videos) in the index matching a text description, best first. tag: only
        files carrying this tag; negative: texts to steer away from; type: "image" or "video";
        after, before: dates (2023, 2023-06, 2023-06-14); camera: part of its make or model; place:
        a city's name; near: "LAT,LON[,KM]"; path: a folder or a glob; min_score: only scores at
        least this. Returns paths and scores."""
        return hits(found(k, text=text, negative=negative or None, tag=tag, type=type, after=after, before=before, camera=camera,
                          place=place, near=near, path=path, min_score=min_score))

    @server.tool()
    def search_by_image(
        path: str, k: int = 10, tag: str | None = None, type: str | None = None, after: str | None = None, before: str | None = None,
        camera: str | None = None, place: str | None = None, near: str | None = None, folder: str | None = None,
    ) -> list[dict[str, Any]]:
        """Find indexed images that look like the image file at path (indexed or not), best first;
        the filters as search's (folder: search's path)."""
        return hits(found(k, image=readable(path), tag=tag, type=type, after=after, before=before, camera=camera, place=place,
                          near=near, path=folder))

    @server.tool()
    def timeline(
        text: str, order: str = "oldest", k: int = 50, offset: int = 0, tag: str | None = None, type: str | None = None,
        after: str | None = None, before: str | None = None, camera: str | None = None, place: str | None = None,
        near: str | None = None, path: str | None = None, min_score: float | None = None,
    ) -> dict[str, Any]:
        """Every file the text is relevant to, in capture order ("oldest" or "newest" first), as
        `query --sort date`: which are relevant is decided from the query's own scores unless
        min_score is given. Returns k of them from offset, how many there are in all, and the
        cut-off's verdict ("cutoff": its summary says in words what stood out, or why nothing did).
        The filters as search's."""
        if order not in ("oldest", "newest"):
            raise ToolError(f'order must be "oldest" or "newest", got {order!r}')
        if offset < 0:
            raise ToolError(f"offset must be 0 or more, got {offset}")
        k = checked_k(k)  # before the search
        listing = found(1, text=text, sort="date" if order == "oldest" else "-date", tag=tag, type=type, after=after, before=before,
                        camera=camera, place=place, near=near, path=path, min_score=min_score)
        return {"hits": hits(listing[offset : offset + k]), "total": len(listing),
                "cutoff": listing.cutoff.as_dict() if listing.cutoff is not None else None}

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
