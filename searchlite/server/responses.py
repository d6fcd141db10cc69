"""The API's JSON responses: the response class every route answers with, and errors as
{"error": "..."}."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import Response


class JSON(Response):
    """JSON with ASCII escapes: file names that are not UTF-8 (lone surrogates) survive."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def error(status: int, message: str) -> JSON:
    """An error answer: {"error": message} with status."""
    return JSON({"error": message}, status_code=status)
