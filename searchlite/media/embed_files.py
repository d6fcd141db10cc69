"""Embedding image files named by a user (query images, files to classify, probe examples): read
as indexing reads them, in a decoder process under its time and memory limits, then encoded."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IndexSettings
from ..errors import ImageDecodeError, PathNotFoundError, SearchliteError
from .decode_worker import DecodePool, DecodeWorker

if TYPE_CHECKING:
    from ..models.encoder import ImageEncoder


def decode_options(settings: IndexSettings, encoder: ImageEncoder) -> dict[str, Any]:
    """images.decode_rgb's arguments for this model: how every image (indexed or a query) is read."""
    return {
        "min_side": settings.draft_factor * encoder.image_size,
        "max_pixels": settings.max_pixels,
        "center_crop": encoder.crops_center,
        "resize_shortest": encoder.image_size if encoder.resizes_shortest_bicubic else None,
    }


def read_image_file(path: str, what: str = "file") -> bytes:
    """The bytes of a file the user named; what names it in messages ("file", "query image")."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PathNotFoundError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{what} {path} is a folder, not an image") from None
    except OSError as e:
        raise ImageDecodeError(f"cannot read {what} {path}: {e.strerror or e}") from None


def embed_files(
    paths: list[str],
    settings: IndexSettings,
    get_encoder: Callable[[], ImageEncoder],
    batch_size: Callable[[], int],
    what: str = "file",
    decoder: DecodeWorker | DecodePool | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, SearchliteError]]:
    """Unit embeddings of image files by path, and the error for each file that could not be read
    (PathNotFoundError or ImageDecodeError). batch_size() is asked before each batch (the model's
    device is known once it is loaded). decoder: running decoder processes to use (a pool is held
    per decode, not while encoding), saving a process start per call; by default one is started
    and stopped here."""
    vectors: dict[str, np.ndarray] = {}
    errors: dict[str, SearchliteError] = {}
    own_decoder = decoder is None
    decoder = decoder or DecodeWorker(settings.decode_timeout_s, settings.decoder_memory_limit)
    start = 0
    try:
        while start < len(paths):
            chunk = paths[start : start + batch_size()]
            start += len(chunk)
            batch = []
            for path in chunk:
                try:
                    data = read_image_file(path, what)
                    try:
                        image = decoder.decode(data, **decode_options(settings, get_encoder()), name=path).image
                    except ImageDecodeError as e:
                        raise ImageDecodeError(f"{what} {path}: {e}", setting=e.setting) from None
                    batch.append((path, image))
                except (PathNotFoundError, ImageDecodeError) as e:
                    errors[path] = e
            if batch:
                encoder = get_encoder()
                encoded = encoder.encode_images([encoder.preprocess(img) for _, img in batch])
                vectors.update({path: v for (path, _), v in zip(batch, encoded)})
    finally:
        if own_decoder:
            decoder.close()
    return vectors, errors
