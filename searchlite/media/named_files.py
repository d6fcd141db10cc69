"""Files named by callers (query images, files to classify, probe and evaluation examples, pictures
to explain or show): decoded in decoder processes kept for them (started on first use) and
embedded with the index's image encoder, as indexing reads them (embed_files.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IndexSettings

if TYPE_CHECKING:  # imported where used: a cold text query starts no decoder
    from ..models.encoder import ImageEncoder
    from .decode_worker import DecodePool
    from .safe_read import ReadPolicy


class NamedFiles:
    """Reads and embeds the files callers name. image_encoder() gives the model (loaded on first
    need); batch_size() the images per batch on its device. read_policy: how files are opened and
    checked (safe_read.ReadPolicy; a server sets one), None reading them as the CLI does."""

    def __init__(self, settings: IndexSettings, image_encoder: Callable[[], ImageEncoder], batch_size: Callable[[], int]) -> None:
        self.settings = settings
        self.image_encoder = image_encoder
        self.batch_size = batch_size
        self.read_policy: ReadPolicy | None = None
        self._lock = threading.Lock()
        self._decoders: DecodePool | None = None

    def decoders(self) -> DecodePool:
        """The decoder processes kept for these files (started on first use, stopped by close())."""
        with self._lock:
            if self._decoders is None:
                from .decode_worker import DecodePool

                self._decoders = DecodePool(self.settings.workers, self.settings.decode_timeout_s, self.settings.decoder_memory_limit)
            return self._decoders

    def embed(self, paths: list[str], what: str = "file") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(unit vectors by path, read errors by path); what names the files in messages."""
        from .embed_files import embed_files

        return embed_files(paths, self.settings, self.image_encoder, self.batch_size, what, self.decoders(), self.read_policy)

    def embed_all(self, paths: list[str], what: str = "file") -> np.ndarray:
        """Unit vectors (n, d) of paths in order; the first file that cannot be read raises
        PathNotFoundError or ImageDecodeError naming it."""
        vectors, errors = self.embed(paths, what)
        if errors:
            raise next(iter(errors.values()))
        return np.stack([vectors[p] for p in paths])

    def decode(self, path: str, *, min_side: int | None = None, at: float = 0.0, read: ReadPolicy | None = None) -> Any:
        """The picture in a file as a viewer shows it (RGB, EXIF orientation applied, a PIL image),
        decoded in a decoder process under the settings' time and memory limits; with min_side,
        reduced cheaply to no less than twice that on its shorter side. A video gives its first
        frame at or after `at` seconds (PyAV). read: how the file is opened and checked (default:
        read_policy). Raises PathNotFoundError or ImageDecodeError."""
        from .embed_files import decode_path

        options = {"min_side": min_side, "max_pixels": self.settings.max_pixels}
        return decode_path(path, self.settings, self.decoders(), at=at or None, read=read or self.read_policy, **options).image

    def close(self) -> None:
        with self._lock:
            if self._decoders is not None:
                self._decoders.close()
                self._decoders = None
