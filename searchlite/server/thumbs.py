"""Thumbnails: decoded through the engine's isolated decoder processes (EXIF orientation applied,
time and memory limits), saved as WebP in a cache folder beside the index, remade when the file
changes (its size or mtime), served with an ETag."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from pathlib import Path
from typing import Any

from .. import ImageDecodeError, NotFoundError, PathNotFoundError

log = logging.getLogger(__name__)

LONG_SIDE_FACTOR = 3  # panoramas: the longer side is kept to this many times the shorter one


class ThumbnailCache:
    """get(id, path) -> (the cached WebP file, or its bytes when the cache cannot be written; its
    ETag); makes the thumbnail on first use."""

    def __init__(self, engine: Any, folder: Path, size: int = 320) -> None:
        self.engine = engine
        self.folder = folder
        self.size = size
        self._locks: dict[int, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def cached(self, image_id: int, path: str) -> tuple[Path | None, Path, str]:
        """(the thumbnail if it is cached and current, else None; where it belongs; its ETag):
        two system calls, cheap enough for the event loop."""
        try:
            st = os.stat(path)
        except OSError:
            raise NotFoundError(f"image {image_id} is indexed but its file is gone: index the folder again") from None
        key = hashlib.sha1(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.size}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
        target = self.folder / f"{image_id}-{key}.webp"
        return (target if target.exists() else None), target, key

    def get(self, image_id: int, path: str) -> tuple[Path | bytes, str]:
        found, target, key = self.cached(image_id, path)
        if found is not None:
            return found, key
        with self._lock_for(image_id):  # one request makes it; the others wait and read it
            if not target.exists():
                return self._make(image_id, path, target), key
        return target, key

    def _lock_for(self, image_id: int) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(image_id, threading.Lock())

    def _make(self, image_id: int, path: str, target: Path) -> Path | bytes:
        from PIL import Image

        try:
            img = self.engine.decode_image(path, min_side=self.size // 2)
        except PathNotFoundError:
            raise NotFoundError(f"image {image_id} is indexed but its file is gone: index the folder again") from None
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image {image_id} cannot be decoded any more: {e}") from None
        w, h = img.size
        scale = self.size / min(w, h)
        if scale < 1:
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
        limit = LONG_SIDE_FACTOR * self.size
        if max(img.size) > limit:
            img.thumbnail((limit, limit), Image.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, "WEBP", quality=80, method=4)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob(f"{image_id}-*.webp"):  # the file changed: drop older ones
                old.unlink(missing_ok=True)
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, target)
        except OSError as e:  # a full or read-only disk costs the cache, not the thumbnail
            log.warning("cannot cache thumbnails in %s: %s", self.folder, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return buffer.getvalue()
        return target
