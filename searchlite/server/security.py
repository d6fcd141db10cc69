"""The guard in front of every request (plain ASGI, so that it costs microseconds): the Host header
(against DNS rebinding), the token, the body-size cap, and the security headers on every answer."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

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


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers, *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware. allowed_hosts: Host values (no port) we answer; token: required when set
    (as `Authorization: Bearer`, or the cookie that opening `/?token=...` once sets);
    max_body: request bodies larger than this are refused with 413 before they are read."""

    def __init__(self, app: Any, *, allowed_hosts: set[str], token: str | None, max_body: int) -> None:
        self.app = app
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            return
        headers = dict(scope["headers"])

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.allowed_hosts:
            return await send_json(send, 421, {"error": "this server does not answer for that host name: use the address it printed"})
        if self.token is not None:
            query = scope.get("query_string", b"").decode("latin-1")
            params = parse_qsl(query, keep_blank_values=True)
            given = next((v for k, v in params if k == "token"), None)
            if given is not None and scope["method"] == "GET":
                if not hmac.compare_digest(given.encode(), self.token.encode()):
                    return await send_json(send, 401, {"error": "wrong token: open the address the server printed"})
                rest = urlencode([(k, v) for k, v in params if k != "token"])
                # one leading slash: "//host/..." would send the browser to another site
                location = "/" + scope["path"].lstrip("/") + (f"?{rest}" if rest else "")
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                return await send_json(send, 303, {"redirect": location}, [(b"location", location.encode("latin-1", "replace")), (b"set-cookie", cookie.encode())])
            if not self._authorized(headers):
                return await send_json(
                    send, 401, {"error": "this server needs a token: open the address it printed, or send authorization: bearer <token>"}
                )
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                if not length.isdigit():
                    return await send_json(send, 400, {"error": "malformed content-length header"})
                return await send_json(send, 413, {"error": f"the request is larger than the {self.max_body // (1 << 20)} MB limit"})
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await send_json(send, 413, {"error": f"the request is larger than the {self.max_body // (1 << 20)} MB limit"})
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


def _host_name(host: str) -> str:
    """The Host header without its port: "[::1]:8765" -> "::1", "localhost:80" -> "localhost"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
