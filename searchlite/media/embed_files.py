"""Embedding image files named by a user (query images, files to classify, probe examples): read
as indexing reads them, in a decoder process under its time and memory limits, then encoded.

Where one picture is expected, a video stands for one of its frames: "clip.mp4@12.5" for the frame
at 12.5 seconds, plain "clip.mp4" for its first frame."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IndexSettings
from ..errors import ImageDecodeError, InvalidInputError, PathNotFoundError, SearchliteError
from . import video
from .decode_worker import DecodePool, DecodeWorker
from .images import HEADER_BYTES, Decoded
from .safe_read import OpenedFile, ReadPolicy, open_checked, read_error

FRAME_SEPARATOR = "@"

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
    except OSError as e:
        raise read_error(e, path, what) from None


def split_frame_time(name: str) -> tuple[str, float | None]:
    """'clip.mp4@12.5' -> ('clip.mp4', 12.5); a name without a time, or a file that exists as
    given ('photo@2x.png'), -> (name, None). Raises ImageDecodeError for a time that is not a number
    of seconds from the start ('clip.mp4@-3')."""
    path, sep, tail = name.rpartition(FRAME_SEPARATOR)
    if not sep or not path or os.path.exists(name):
        return name, None
    try:
        seconds = float(tail)
    except ValueError:
        return name, None
    if not math.isfinite(seconds) or seconds < 0:
        raise ImageDecodeError(f"{name}: the time after {FRAME_SEPARATOR} must be seconds from the start, like {path}{FRAME_SEPARATOR}12.5")
    return path, seconds


def named_file_exists(name: str) -> bool:
    """Whether the file a name stands for exists (clip.mp4, for "clip.mp4@12.5")."""
    return os.path.exists(name) or os.path.exists(name.rpartition(FRAME_SEPARATOR)[0] or name)


def check_named(name: str, what: str = "file", read: ReadPolicy | None = None) -> None:
    """Raise what reading the file a name stands for would (PathNotFoundError, ImageDecodeError,
    InvalidInputError), cheaply: before a model loads. read: as decode_path's."""
    path = split_frame_time(name)[0]
    if read is None:
        read_image_file(path, what)
    else:
        open_checked(path, read, what).close()


def decode_named(
    name: str, settings: IndexSettings, decoder: DecodeWorker | DecodePool, what: str = "file", read: ReadPolicy | None = None, **options: Any
) -> Decoded:
    """The picture a file named by the user stands for, decoded in a decoder process with options
    (images.decode_rgb's): an image, or a frame of a video ("clip.mp4@12.5", else its first frame)
    reduced to no less than options' min_side. read: as decode_path's. Raises PathNotFoundError or
    ImageDecodeError naming it."""
    path, seconds = split_frame_time(name)
    return decode_path(path, settings, decoder, at=seconds, what=what, read=read, shown=name, **options)


def decode_path(
    path: str, settings: IndexSettings, decoder: DecodeWorker | DecodePool, *, at: float | None = None, what: str = "file",
    read: ReadPolicy | None = None, shown: str | None = None, **options: Any,
) -> Decoded:
    """The picture in the file at path, decoded in a decoder process with options: an image, or a
    video's first frame at or after `at` seconds (at given for an image is an error). read: how the
    file is opened and checked (safe_read.ReadPolicy: regular files only, a size cap, still the
    indexed file...), the decoder process then reading it through the descriptor, under its memory
    cap; None reads the file here as the CLI does (a pipe such as <(...) included). shown: the
    name that decoding errors begin with (none by default)."""
    opened = None
    if read is None:
        source: bytes | OpenedFile = read_image_file(path, what)
    else:
        source = opened = open_checked(path, read, what)
        options["max_bytes"] = read.max_bytes
    try:
        header = source[:HEADER_BYTES] if opened is None else opened.header(HEADER_BYTES)
        if video.detect_video(header) is not None:
            if not video.available():
                raise ImageDecodeError(f"it is a video, and reading its frames needs PyAV ({video.INSTALL_HINT})")
            frames = _decode_frame(decoder, source, at or 0.0, settings.video_timeout_s, options.get("min_side"))
            return Decoded(frames.images[0], frames.width, frames.height)
        if at is not None:
            raise ImageDecodeError(f"{path} is not a video: {FRAME_SEPARATOR}SECONDS picks a frame of a video only")
        return decoder.decode(source, **options, name=path)
    except ImageDecodeError as e:
        if shown is None:
            raise
        raise ImageDecodeError(f"{what} {shown}: {e}", setting=e.setting) from None
    finally:
        if opened is not None:
            opened.close()


def _decode_frame(decoder: DecodeWorker | DecodePool, data: bytes | OpenedFile, seconds: float, time_limit: float, min_side: int | None) -> video.Frames:
    """The first frame at or after seconds, decoded in a decoder process."""
    if isinstance(decoder, DecodePool):
        with decoder.worker() as worker:
            return worker.decode_video(data, time_limit, max_frames=1, min_side=min_side, start_s=seconds)
    return decoder.decode_video(data, time_limit, max_frames=1, min_side=min_side, start_s=seconds)


def embed_files(
    paths: list[str],
    settings: IndexSettings,
    get_encoder: Callable[[], ImageEncoder],
    batch_size: Callable[[], int],
    what: str = "file",
    decoder: DecodeWorker | DecodePool | None = None,
    read: ReadPolicy | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, SearchliteError]]:
    """Unit embeddings of image files by path (a frame for a video, see decode_named), and the error
    for each file that could not be read (PathNotFoundError or ImageDecodeError). batch_size() is
    asked before each batch (the model's device is known once it is loaded). decoder: running
    decoder processes to use (a pool is held per decode, not while encoding), saving a process
    start per call; by default one is started and stopped here. read: how files are opened and
    checked (see decode_path)."""
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
                    batch.append((path, decode_named(path, settings, decoder, what, read, **decode_options(settings, get_encoder())).image))
                except (PathNotFoundError, InvalidInputError) as e:  # ImageDecodeError included
                    errors[path] = e
            if batch:
                encoder = get_encoder()
                encoded = encoder.encode_images([encoder.preprocess(img) for _, img in batch])
                vectors.update({path: v for (path, _), v in zip(batch, encoded)})
    finally:
        if own_decoder:
            decoder.close()
    return vectors, errors
