"""What a server is told (host, port, token, limits) and what follows from it; no web imports."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..media.safe_read import ReadPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 50.0
# files larger than this are not decoded for the page (thumbnails, views, explain) or MCP's tools;
# originals are streamed whatever their size
DEFAULT_MAX_FILE_MB = 256.0
MIN_TOKEN_LENGTH = 16
TOKEN_ENV = "SEARCHLITE_TOKEN"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerSettings:
    """How a server runs. token: required from every client when set (and always when the host is
    not a loopback address); cors_origins: origins allowed to call the API from their pages."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    cors_origins: tuple[str, ...] = ()
    thumb_dir: Path | None = None  # default: thumbnail_dir(index)
    thumb_size: int = 320  # the shorter side of a thumbnail, in pixels
    extra_hosts: tuple[str, ...] = field(default_factory=tuple)  # more Host header values to accept
    max_file_bytes: int = int(DEFAULT_MAX_FILE_MB * 1024 * 1024)  # the largest file decoded for the page
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers by then is closed
    body_timeout_s: float = 30.0  # a request body that stalls this long gets 408
    max_connections: int = 100  # connections and requests at once; past it, 503
    max_explains: int = 1  # explain requests computed at once (each runs the image model); more wait, then 503
    token_failures: int = 10  # wrong tokens a client may send per token_window_s before it gets 429
    token_window_s: float = 60.0

    def read_policy(self) -> ReadPolicy:
        """How the server opens files for decoding: regular files only, at most max_file_bytes."""
        from ..media.safe_read import ReadPolicy

        return ReadPolicy(regular_only=True, max_bytes=self.max_file_bytes)

    def allowed_hosts(self) -> set[str]:
        """Host header values (without port) that this server answers: against DNS rebinding."""
        hosts = {*LOOPBACK_NAMES, *(h.lower() for h in self.extra_hosts)}
        host = self.host.strip("[]").lower()
        hosts.add(host)
        if is_wildcard(host):  # reachable on every interface: the names this machine goes by
            hosts.update(machine_names())
        return hosts


def is_loopback(host: str) -> bool:
    """Whether binding host keeps the server to this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")


def machine_names() -> set[str]:
    """This machine's host names and addresses, as a LAN client would type them."""
    names: set[str] = set()
    try:
        hostname = socket.gethostname()
        names.update({hostname.lower(), f"{hostname.lower()}.local"})
        names.update(socket.gethostbyname_ex(hostname)[2])
    except OSError:
        pass
    try:  # the address of the default route's interface; connecting a UDP socket sends nothing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            names.add(s.getsockname()[0])
    except OSError:
        pass
    return names


def thumbnail_dir(index_dir: Path) -> Path:
    """Where thumbnails of an index are cached: a hidden folder beside the index (so that indexing
    the folder around it skips it), or under the user's cache folder when that is not writable.
    The index folder itself is never written."""
    index_dir = Path(os.path.abspath(index_dir))
    beside = index_dir.parent / f".{index_dir.name}-thumbs"
    if os.access(index_dir, os.W_OK) and (os.access(beside, os.W_OK) or (not beside.exists() and os.access(index_dir.parent, os.W_OK))):
        return beside
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "searchlite" / "thumbs" / hashlib.sha256(str(index_dir).encode()).hexdigest()[:16]
