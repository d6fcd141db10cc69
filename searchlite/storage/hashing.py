"""What identifies a file's content (apart from the store, so that processes that only read files,
such as Ray actors, need not import it)."""

from __future__ import annotations

import hashlib


def content_hash(data: bytes) -> str:
    """Hash that identifies a file's content across moves, renames and copies."""
    return hashlib.sha256(data).hexdigest()
