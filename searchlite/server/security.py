"""The guard in front of every request (plain ASGI, so that it costs microseconds): the Host header
(against DNS rebinding), the token (wrong ones throttled), the body-size cap and body time-out, HEAD
as GET, and the security headers on every answer."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOKEN_COOKIE = "searchlite_token"

# No inline scripts or style attributes anywhere: the page is static files from 'self'.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self'; "
        b"connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = (), security: list[tuple[bytes, bytes]] = SECURITY_HEADERS  # type: ignore[assignment]
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers, *security],
        }
    )
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware. allowed_hosts: Host values (no port) we answer; token: required when set
    (as `Authorization: Bearer`, or the cookie that opening `/?token=...` once sets), wrong ones
    throttled per client (token_failures per token_window_s, then 429); max_body: request bodies
    larger than this are refused with 413 before they are read, and a body that stalls for
    body_timeout_s gets 408; cors_origins: origins whose preflights are let through without the
    token (the CORS middleware answers them) and whose pages may read this guard's refusals.
    HEAD is answered as GET without the body."""

    def __init__(
        self, app: Any, *, allowed_hosts: set[str], token: str | None, max_body: int, cors_origins: tuple[str, ...] = (),
        body_timeout_s: float = 30.0, token_failures: int = 10, token_window_s: float = 60.0,
    ) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.token = token
        self.max_body = max_body
        self.cors_origins = frozenset(cors_origins)
        self.body_timeout_s = body_timeout_s
        self.throttle = Throttle(token_failures, token_window_s)
        # images must not be embedded by other sites' pages, unless the user let other origins in
        self.headers = SECURITY_HEADERS + ([] if cors_origins else [(b"cross-origin-resource-policy", b"same-origin")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        cors = []
        if origin and ("*" in self.cors_origins or origin in self.cors_origins):  # its page may read why it was refused
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

        async def refuse(status: int, message: str, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
            await send_json(send, status, {"error": message}, [*extra, *cors], self.headers)

        head = scope["method"] == "HEAD"
        if head:  # answered as GET; the body is dropped on the way out
            scope = {**scope, "method": "GET"}

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.allowed_hosts:
            return await refuse(421, "this server does not answer for that host name: use the address it printed")
        preflight = scope["method"] == "OPTIONS" and bool(self.cors_origins) and b"access-control-request-method" in headers
        if self.token is not None and not preflight:  # a preflight carries no credentials, by the standard
            client = (scope.get("client") or ("?", 0))[0]
            if self.throttle.blocked(client):
                return await refuse(429, "too many wrong tokens from this address: wait a minute", [(b"retry-after", str(self.throttle.retry_after(client)).encode())])
            query = scope.get("query_string", b"").decode("latin-1")
            params = parse_qsl(query, keep_blank_values=True)
            given = next((v for k, v in params if k == "token"), None)
            if given is not None and scope["method"] == "GET":
                if not hmac.compare_digest(given.encode(), self.token.encode()):
                    self.throttle.failed(client)
                    return await refuse(401, "wrong token: open the address the server printed")
                rest = urlencode([(k, v) for k, v in params if k != "token"])
                location = same_origin_path(scope["path"]) + (f"?{rest}" if rest else "")
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                return await send_json(send, 303, {"redirect": location}, [(b"location", location.encode("ascii")), (b"set-cookie", cookie.encode())], self.headers)
            if not self._authorized(headers):
                if b"authorization" in headers or TOKEN_COOKIE.encode() in headers.get(b"cookie", b""):
                    self.throttle.failed(client)  # a guess; a request with no token at all is not one
                return await refuse(401, "this server needs a token: open the address it printed, or send authorization: bearer <token>")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                if not length.isdigit():
                    return await refuse(400, "malformed content-length header")
                return await refuse(413, f"the request is larger than the {self.max_body // (1 << 20)} MB limit")
            body = bytearray()
            while True:
                try:
                    message = await asyncio.wait_for(receive(), self.body_timeout_s)
                except asyncio.TimeoutError:
                    return await refuse(408, f"the request body stalled for {self.body_timeout_s:g}s: send it again", [(b"connection", b"close")])
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await refuse(413, f"the request is larger than the {self.max_body // (1 << 20)} MB limit")
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            return await self.app(scope, replay, send_secured)
        await self.app(scope, receive, send_secured)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None
        expected = self.token.encode()
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), expected):
            return True
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == TOKEN_COOKIE.encode() and hmac.compare_digest(value, expected):
                return True
        return False


class Throttle:
    """Wrong tokens per client address: past `limit` within `window` seconds, the address is
    refused until its oldest failure in the window ages out. Guessing a 16-character token at
    10 a minute takes longer than the universe has."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        cutoff = time.monotonic() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def blocked(self, client: str) -> bool:
        return len(self._recent(client)) >= self.limit

    def retry_after(self, client: str) -> int:
        times = self._recent(client)
        return max(1, math.ceil(times[0] + self.window - time.monotonic())) if times else 1

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # many addresses (IPv6): forget the oldest
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque()).append(time.monotonic())


def same_origin_path(path: str) -> str:
    """A path to redirect to that a browser cannot read as another origin: one leading slash, no
    backslashes ("/\\host" is "//host" to browsers), every other character percent-encoded."""
    path = path.replace("\\", "/").lstrip("/")
    return "/" + quote(path, safe="/-._~!$&'()*+,;=:@")


def _host_name(host: str) -> str:
    """The Host header without its port: "[::1]:8765" -> "::1", "localhost:80" -> "localhost"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
