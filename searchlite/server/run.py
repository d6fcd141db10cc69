"""`searchlite serve`: open the index, warm it, bind, print the address, run uvicorn."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from .. import InvalidInputError
from .settings import MIN_TOKEN_LENGTH, ServerSettings, is_loopback, is_wildcard

log = logging.getLogger(__name__)


def check_settings(settings: ServerSettings) -> None:
    """Refuse what would be unsafe: another machine may reach a non-loopback host, so it needs a token."""
    if not is_loopback(settings.host) and not settings.token:
        raise InvalidInputError(
            f"host {settings.host} makes the server reachable from other machines: give it a token (a secret only your users know)",
            setting="token",
        )
    if settings.token is not None and (len(settings.token) < MIN_TOKEN_LENGTH or not settings.token.isprintable() or " " in settings.token):
        raise InvalidInputError(
            f"a token must be at least {MIN_TOKEN_LENGTH} printable characters without spaces (auto makes one)", setting="token"
        )


def make_token() -> str:
    """A fresh random token (32 URL-safe characters)."""
    import secrets

    return secrets.token_urlsafe(24)


def setting_warnings(settings: ServerSettings) -> list[str]:
    """What is allowed but unwise in settings, one line each."""
    warnings = []
    if "*" in settings.cors_origins and not settings.token:
        warnings.append("--cors '*' without a token lets any web page you visit search your photos and read them: add --token auto")
    return warnings


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), with a message a user can act on."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # proto given: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
    # each keep-alive response waits ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise InvalidInputError(f"port {port} on {host} is in use: pick another port") from None
        raise InvalidInputError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(settings: ServerSettings, port: int) -> str:
    """The URL to print: loopback for wildcard binds; with the token that sets the cookie."""
    host = settings.host.strip("[]")
    if is_wildcard(host):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={settings.token}" if settings.token else "")


def warm(engine: Any) -> None:
    """Load what the first query would wait for: the vectors and the text tower."""
    engine.vectors  # noqa: B018
    try:
        engine.embed_text("a photo")
    except Exception as e:  # noqa: BLE001 - a model that cannot load is reported by the first query
        log.warning("the text model is not ready: %s", e)


def warm_image_tower(engine: Any) -> threading.Thread:
    """Load the image tower in the background (seconds: torch), so that the first image dropped on
    the page is answered at once; text queries go on meanwhile."""

    def load() -> None:
        try:
            engine.load_model()
        except Exception as e:  # noqa: BLE001 - the first image query reports it
            log.warning("the image model is not ready: %s", e)

    thread = threading.Thread(target=load, name="searchlite-warm-image-tower", daemon=True)
    thread.start()
    return thread


class RedactToken(logging.Filter):
    """Hides the token in the URLs of uvicorn's access log (`/?token=...`, which sets the cookie)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) > 2:  # (client, method, path?query, version, status)
            args = list(record.args)
            args[2] = TOKEN_IN_URL.sub(r"\1token=<hidden>", str(args[2]))
            record.args = tuple(args)
        return True


TOKEN_IN_URL = re.compile(r"([?&])token=[^&#]*")


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with the access log on stderr (stdout carries the URL alone) and tokens hidden."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_token": {"()": RedactToken}}
    config["handlers"]["access"].update(stream="ext://sys.stderr", filters=["redact_token"])
    return config


def guarded_protocol(header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol, closing a connection that has not sent a whole request's headers
    within header_timeout_s of opening or of starting its next request (uvicorn alone waits for
    ever: an idle or trickling connection held a slot, before any token was checked)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class GuardedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _timer: Any = None
        _waiting_after: Any = None  # the request cycle before the one whose headers are awaited

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # a new request begins
            super().data_received(data)
            if self._timer is not None and self.cycle is not None and self.cycle is not self._waiting_after:
                self._disarm()  # its headers are in; the guard times its body

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._waiting_after = self.cycle
            self._timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


class Server:
    """A uvicorn server on a bound socket, run in this thread (run) or another (start/stop), with
    settings' time-outs for headers and its cap on connections and requests at once (503 past it)."""

    def __init__(self, app: Any, sock: socket.socket, log_level: str = "warning", settings: ServerSettings | None = None) -> None:
        import uvicorn

        settings = settings or ServerSettings()
        self.sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level=log_level, access_log=log_level == "info", log_config=log_config(), timeout_graceful_shutdown=3,
            server_header=False, http=guarded_protocol(settings.header_timeout_s), limit_concurrency=settings.max_connections,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        if on_ready is not None:
            threading.Thread(target=self._when_started, args=(on_ready,), daemon=True).start()
        self._server.run(sockets=[self.sock])

    def _when_started(self, callback: Callable[[], None]) -> None:
        import time

        while not self._server.started and not self._server.should_exit:
            time.sleep(0.02)
        if self._server.started:
            callback()

    def start(self) -> None:
        """Serve from a background thread; returns once it accepts connections."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self.run, args=(ready.set,), daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the server did not start within 30 s")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.sock.close()
