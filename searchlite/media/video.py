"""Video files: recognised by content, sampled into frames (PyAV, the optional extra
`searchlite[video]`), and the frames' embeddings split into shots.

Frames are decoded in the isolated decoder processes (decode_worker.py), like images, under a time
limit and a memory cap; at most max_frames are kept. Sampling keeps every keyframe and at least one
frame every interval seconds (wider for long videos, so the cap covers the whole file).

PyAV is imported inside the functions that need it.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from ..errors import ImageDecodeError

INSTALL_HINT = "pip install 'searchlite[video]'"
NEEDS_PYAV = f"a video: indexing videos needs PyAV ({INSTALL_HINT})"

# a new shot starts where a frame's embedding has cosine below this with the shot so far
SHOT_THRESHOLD = 0.85


def detect_video(header: bytes) -> str | None:
    """The container named by a file's first bytes (MP4/MOV, MKV/WebM, AVI), or None."""
    if len(header) >= 12 and header[4:8] == b"ftyp":
        brand = header[8:12]
        return "MOV" if brand == b"qt  " else "MP4" if not brand.startswith((b"heic", b"heix", b"mif1", b"avif", b"msf1")) else None
    if header.startswith(b"\x1a\x45\xdf\xa3"):
        return "MKV"  # Matroska, WebM included
    if header[:4] == b"RIFF" and header[8:12] == b"AVI ":
        return "AVI"
    return None


def available() -> bool:
    """Whether PyAV is installed."""
    return importlib.util.find_spec("av") is not None


@dataclass(frozen=True)
class Frames:
    """Frames sampled from a video: times (seconds) and RGB PIL images, with the video's size
    (as displayed) and duration."""

    times: list[float]
    images: list[Any]
    width: int
    height: int
    duration: float


def sample_frames(
    data: bytes | BinaryIO, *, interval_s: float = 1.0, max_frames: int = 600, min_side: int | None = None, start_s: float = 0.0
) -> Frames:
    """Decode a video's frames: every keyframe, and at least one frame every interval_s seconds
    (widened so that max_frames cover the whole duration); each reduced to no less than min_side
    on its shorter side. start_s: begin with the first frame at or after that time (a seek to the
    keyframe before it, then decoding on). data: the file's bytes, or the file opened (read as far as
needed: a long video is never held whole). Raises ImageDecodeError for a file that is not a readable video."""
    import av

    try:
        container = av.open(io.BytesIO(data) if isinstance(data, bytes) else data, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise ImageDecodeError(f"cannot read video: {e}") from None
    with container:
        if not container.streams.video:
            raise ImageDecodeError("cannot read video: it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        if duration and duration / interval_s > max_frames:
            interval_s = duration / max_frames
        times: list[float] = []
        images: list[Any] = []
        width = height = 0
        next_t = 0.0
        last_t = 0.0
        try:
            if start_s > 0:
                container.seek(int(start_s * av.time_base))  # to the keyframe at or before start_s
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else last_t
                last_t = t
                if t < start_s:
                    continue
                if not (frame.key_frame or t >= next_t or not times):
                    continue
                if times and t <= times[-1]:
                    continue
                image = frame.to_image()  # RGB PIL image
                width, height = image.size
                if min_side and min(image.size) > 2 * min_side:
                    factor = min(image.size) / (2 * min_side)
                    image = image.reduce(int(factor)) if factor >= 2 else image
                times.append(t)
                images.append(image)
                next_t = t + interval_s
                if len(times) >= max_frames:
                    break
        except av.error.FFmpegError as e:
            if not times:
                raise ImageDecodeError(f"cannot read video: {e}") from None
            # a truncated file: keep the frames before the damage
    if not times:
        raise ImageDecodeError(f"the video has no frame at {start_s:g}s or later" if start_s > 0 else "cannot read video: it has no frames")
    return Frames(times, images, width, height, max(duration, last_t))


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


@dataclass(frozen=True)
class Shot:
    """A run of similar frames: its start and length (seconds) and unit mean embedding (d,)."""

    time: float
    span: float
    vector: np.ndarray


def split_shots(times: list[float], vectors: np.ndarray, duration: float, threshold: float = SHOT_THRESHOLD) -> list[Shot]:
    """Consecutive frames (unit embeddings (n, d) at times) grouped into shots: a frame whose
    cosine with the running mean of the current shot falls below threshold starts a new one."""
    starts = [0]
    total = vectors[0].copy()
    for i in range(1, len(vectors)):
        mean = total / np.linalg.norm(total)
        if float(vectors[i] @ mean) < threshold:
            starts.append(i)
            total = vectors[i].copy()
        else:
            total += vectors[i]
    shots = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(vectors)
        mean = vectors[start:end].sum(axis=0)
        t_end = times[end] if end < len(times) else max(duration, times[-1])
        shots.append(Shot(times[start], max(0.0, t_end - times[start]), (mean / np.linalg.norm(mean)).astype(np.float32)))
    return shots


def whole_video_vector(shots: list[Shot]) -> np.ndarray:
    """The video's own vector: its shots' embeddings weighted by their length (each at least a
    little, so a one-frame shot still counts), unit length."""
    weights = np.array([max(s.span, 0.1) for s in shots], np.float32)
    total = (weights[:, None] * np.stack([s.vector for s in shots])).sum(axis=0)
    return (total / np.linalg.norm(total)).astype(np.float32)
