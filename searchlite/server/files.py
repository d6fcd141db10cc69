"""Sending an indexed file that was opened and checked (media/safe_read.py) from its descriptor,
never by its name again: whole, or one byte range so that a browser can seek in a video."""

from __future__ import annotations

import hashlib
import os
import re
from email.utils import formatdate
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response

from ..media.safe_read import OpenedFile

CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class OpenedFileResponse(Response):
    """An opened file, sent in chunks read from its descriptor in a thread (a slow disk never holds
    the event loop), closed once sent or when the client goes away. Range: one range of bytes
    (a-b, a-, -n) gets 206; several, or a stale If-Range, get the whole file."""

    def __init__(self, opened: OpenedFile, media_type: str, headers: dict[str, str] | None = None) -> None:
        self.opened = opened
        try:  # the response owns the file from here: a failure before it exists must not leak it
            self.status_code = 200
            self.media_type = media_type
            self.background = None
            self.init_headers(headers)  # no body: the length is set per request (whole or a range)
            st = opened.stat
            self.etag = '"' + hashlib.sha1(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()[:16] + '"'
            self.raw_headers += [
                (b"accept-ranges", b"bytes"),
                (b"etag", self.etag.encode()),
                (b"last-modified", formatdate(st.st_mtime, usegmt=True).encode()),
            ]
        except BaseException:
            opened.close()
            raise

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            size = self.opened.size
            start, end, status, headers = 0, size, 200, list(self.raw_headers)
            request = Headers(scope=scope)
            wanted = request.get("range")
            if wanted is not None and request.get("if-range", self.etag) == self.etag:
                found = _one_range(wanted, size)
                if found is None:
                    await send({"type": "http.response.start", "status": 416, "headers": [(b"content-range", f"bytes */{size}".encode()), (b"content-length", b"0")]})
                    await send({"type": "http.response.body", "body": b""})
                    return
                if found != (0, size):
                    (start, end), status = found, 206
                    headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
            headers.append((b"content-length", str(end - start).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._send_body(send, start, end)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()  # the client went away: read no more
        finally:
            self.opened.close()

    async def _send_body(self, send: Any, start: int, end: int) -> None:
        offset = start
        while offset < end:
            chunk = await anyio.to_thread.run_sync(os.pread, self.opened.fd, min(CHUNK, end - offset), offset)
            if not chunk:  # the file shrank while being sent: the connection is cut short
                raise OSError(f"{self.opened.path} shrank while being sent")
            offset += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": offset < end})
        if start == end:
            await send({"type": "http.response.body", "body": b""})


def _one_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) of the one byte range asked for, end exclusive; (0, size) for a header that
    asks for several or that this does not understand (the whole file goes out); None when the
    range lies past the end (416)."""
    found = _RANGE.fullmatch(header.strip())
    if found is None:
        return 0, size
    first, last = found.groups()
    if not first and not last:
        return 0, size
    if not first:  # the last n bytes
        return (max(0, size - int(last)), size) if int(last) and size else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        return None
    return start, end
