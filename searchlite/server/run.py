"""`searchlite serve`: open the index, warm it, bind, print the address, run uvicorn."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from .. import InvalidInputError
from .settings import ServerSettings, is_loopback, is_wildcard

log = logging.getLogger(__name__)


def check_settings(settings: ServerSettings) -> None:
    """Refuse what would be unsafe: another machine may reach a non-loopback host, so it needs a token."""
    if not is_loopback(settings.host) and not settings.token:
        raise InvalidInputError(
            f"host {settings.host} makes the server reachable from other machines: give it a token (a secret only your users know)",
            setting="token",
        )
    if settings.token is not None and (len(settings.token) < 8 or not settings.token.isprintable() or " " in settings.token):
        raise InvalidInputError("a token must be at least 8 printable characters without spaces", setting="token")


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


class Server:
    """A uvicorn server on a bound socket, run in this thread (run) or another (start/stop)."""

    def __init__(self, app: Any, sock: socket.socket, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "info", timeout_graceful_shutdown=3, server_header=False)
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
