"""Pictures made from indexed files for the page: thumbnails (WebP) and display renditions (JPEG)
of formats a browser cannot show (HEIC, TIFF, camera RAW). Both are decoded through the engine's
isolated decoder processes (EXIF orientation applied, time and memory limits; a video gives the
frame at the asked time), saved in a cache folder beside the index, remade when the file changes
(its size or mtime), and served with an ETag."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ImageDecodeError, NotFoundError, PathNotFoundError

if TYPE_CHECKING:
    from ..media.safe_read import ReadPolicy

log = logging.getLogger(__name__)

LONG_SIDE_FACTOR = 3  # panoramas: a thumbnail's longer side is kept to this many times the shorter one
DISPLAY_SIZE = 2048  # a display rendition's longer side, at most


class PictureCache:
    """get(id, path) -> (the cached picture file, or its bytes when the cache cannot be written;
    its ETag); makes the picture on first use. Subclasses say how (render) and in which format."""

    suffix = ""
    media_type = ""

    def __init__(self, engine: Any, folder: Path, size: int) -> None:
        self.engine = engine
        self.folder = folder
        self.size = size
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # name -> (its lock, requests holding or waiting)
        self._locks_lock = threading.Lock()

    def cached(self, image_id: int, path: str, at: float | None = None) -> tuple[Path | None, Path, str]:
        """(the picture if it is cached and current, else None; where it belongs; its ETag): two
        system calls, cheap enough for the event loop. at: a video's time (seconds)."""
        try:
            st = os.stat(path)
        except OSError:
            raise NotFoundError(f"image {image_id} is indexed but its file has changed or is gone: index the folder again") from None
        key = hashlib.sha1(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.size}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
        if at is not None:
            key += f"-t{round(at * 10)}"  # tenths of a second: the names stay few and stable
        target = self.folder / f"{image_id}-{key}{self.suffix}"
        return (target if target.exists() else None), target, key

    def get(
        self, image_id: int, path: str, at: float | None = None, dims: tuple[int | None, int | None] = (None, None), read: ReadPolicy | None = None
    ) -> tuple[Path | bytes, str]:
        """The picture and its ETag. dims: the file's (width, height) when known (a rendition's
        decoder then reduces the picture cheaply on the way); read: how the file is opened and
        checked when the picture is made (the engine's read_policy by default)."""
        found, target, key = self.cached(image_id, path, at)
        if found is not None:
            return found, key
        with self._locked(target.name):  # one request makes it; the others wait and read it
            if not target.exists():
                return self._make(image_id, path, at, dims, target, f"{image_id}-{key.split('-')[0]}", read), key
        return target, key

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold name's lock. Its entry goes when the last request that held or waited for it is
        done, so a long-running server does not keep one lock per picture ever made."""
        with self._locks_lock:
            lock, users = self._locks.get(name, (threading.Lock(), 0))
            self._locks[name] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_lock:
                users = self._locks[name][1] - 1
                if users:
                    self._locks[name] = (lock, users)
                else:
                    del self._locks[name]

    def render(self, engine: Any, path: str, at: float, dims: tuple[int | None, int | None], read: ReadPolicy | None) -> bytes:
        """The picture's bytes, decoded by engine.decode_image (read: as its)."""
        raise NotImplementedError

    def _make(
        self, image_id: int, path: str, at: float | None, dims: tuple[int | None, int | None], target: Path, current: str, read: ReadPolicy | None
    ) -> Path | bytes:
        """Render the picture and cache it at target; current: the prefix of this version of the file's names."""
        try:
            data = self.render(self.engine, path, at or 0.0, dims, read)
        except PathNotFoundError:
            raise NotFoundError(f"image {image_id} is indexed but its file has changed or is gone: index the folder again") from None
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image {image_id} cannot be decoded any more: {e}") from None
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob(f"{image_id}-*{self.suffix}"):  # the file changed: drop older ones
                if not old.name.startswith(current):
                    old.unlink(missing_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as e:  # a full or read-only disk costs the cache, not the picture
            log.warning("cannot cache pictures in %s: %s", self.folder, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return data
        return target


class ThumbnailCache(PictureCache):
    """WebP thumbnails, size pixels on the shorter side (a panorama's longer side at most
    LONG_SIDE_FACTOR times that); a video's is its frame at the asked time."""

    suffix = ".webp"
    media_type = "image/webp"

    def __init__(self, engine: Any, folder: Path, size: int = 320) -> None:
        super().__init__(engine, folder, size)

    def render(self, engine: Any, path: str, at: float, dims: tuple[int | None, int | None], read: ReadPolicy | None) -> bytes:
        from PIL import Image

        img = engine.decode_image(path, min_side=self.size // 2, at=at, read=read)
        w, h = img.size
        scale = self.size / min(w, h)
        if scale < 1:
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
        limit = LONG_SIDE_FACTOR * self.size
        if max(img.size) > limit:
            img.thumbnail((limit, limit), Image.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, "WEBP", quality=80, method=4)
        return buffer.getvalue()


class DisplayCache(PictureCache):
    """JPEG renditions, at most size pixels on the longer side, of pictures a browser cannot show
    as they are (HEIC, TIFF, camera RAW)."""

    suffix = ".jpg"
    media_type = "image/jpeg"

    def __init__(self, engine: Any, folder: Path, size: int = DISPLAY_SIZE) -> None:
        super().__init__(engine, folder, size)

    def render(self, engine: Any, path: str, at: float, dims: tuple[int | None, int | None], read: ReadPolicy | None) -> bytes:
        from PIL import Image

        width, height = dims
        # min_side = the rendition's shorter side: a RAW's preview serves when at least that big,
        # and other pictures are reduced cheaply to no less than twice it before the resize below
        min_side = math.ceil(self.size * min(width, height) / max(width, height)) if width and height else None
        img = engine.decode_image(path, min_side=min_side, at=at, read=read)
        if max(img.size) > self.size:
            img.thumbnail((self.size, self.size), Image.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=88)
        return buffer.getvalue()
