"""What a server is told (host, port, token, limits) and what follows from it; no web imports."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 50.0
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
