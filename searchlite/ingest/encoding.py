"""What an index run hands to where files are decoded and encoded: Prepared (a reading thread's
verdict on one file), the EncodeStage protocol, and LocalEncoding, the stage of this machine (the
other is ray_stage.RayEncoding)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..config import IndexSettings
from ..errors import ImageDecodeError
from ..media import video
from ..media.decode_worker import DecodeCancelled, DecodePool
from ..media.embed_files import decode_options
from ..media.metadata import ImageMetadata
from ..models import int8
from ..storage.store import VectorPart
from .scanner import FileInfo

if TYPE_CHECKING:
    from ..models.encoder import ImageEncoder
    from ..models.hub import ModelHub
    from .tower_choice import TowerChoice

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A worker's verdict on one file."""

    file: FileInfo
    content_hash: str | None = None
    tensor: Any = None  # when the file needs encoding: the model input, or what the stage makes it from
    width: int | None = None
    height: int | None = None
    reuse: bool = False  # content already has a vector
    skipped: str | None = None  # why it is not indexed (not an image, a link out of the collection)
    error: str | None = None  # why it failed
    metadata: ImageMetadata | None = None  # the header's facts
    by_settings: bool = False  # the failure came from decoding, under decode_settings()
    needs: str | None = None  # the optional extra whose absence failed it (images.missing_extra)
    vanished: bool = False  # deleted while the run went on
    changing: bool = False  # written to while it was read: left for the next run
    kind: str = "image"  # of the file's own vector: "image" or "video"
    frame_times: list[float] = field(default_factory=list)  # a video's sampled frames
    frame_tensors: list[Any] = field(default_factory=list)
    duration: float = 0.0
    region_image: Any = None  # the picture regions are cut from (with settings.regions)
    parts: list[VectorPart] = field(default_factory=list)  # its other vectors (regions, shots), set by the encoding stage
    vector: np.ndarray | None = None  # its own vector, set by the encoding stage

    @property
    def n_inputs(self) -> int:
        """Model inputs waiting to be encoded."""
        return len(self.frame_tensors) if self.frame_tensors else int(self.tensor is not None)


class EncodeStage(Protocol):
    """Where files that need encoding are decoded and encoded. prepare() runs in reading threads on
    each such file (p.kind says whether it is a video); submit() starts encoding a batch and
    returns a function that waits for it and sets, on each item, vector (with width, height, and
    parts: a video's shots, an image's regions), or error (by_settings), or changing.
    batches_in_flight() batches are encoded while the writer commits earlier ones. A stage whose
    videos is False gets no videos: the run decodes and encodes them on this machine."""

    videos: bool

    def batch_size(self) -> int: ...

    def chunks_ahead(self) -> int: ...

    def batches_in_flight(self) -> int: ...

    def prepare(self, p: Prepared, data: bytes) -> Prepared: ...

    def submit(self, batch: list[Prepared]) -> Callable[[], None]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


class LocalEncoding:
    """Decoding in this machine's decoder processes (threads drive them), encoding with the model
    here: images (with their regions, under settings.regions) and videos (sampled frames, split
    into shots)."""

    videos = True

    def __init__(
        self, models: ModelHub, settings: IndexSettings, decoders: DecodePool, *, start: bool = True, choice: TowerChoice | None = None,
    ) -> None:
        """choice: the run's image tower; while it is judging int8, the first batches are held
        until int8.SAMPLE inputs are in (or the run ends), then judged and encoded together."""
        # region vectors come from the torch model's grid features (models/dense.py)
        self.get_encoder: Callable[[], ImageEncoder] = models.load_model if settings.regions else models.image_encoder
        self.settings = settings
        self.choice = choice
        self._held: list[list[Prepared]] = []  # batches waiting for the choice
        self.device: str | None = None  # the model's, once it is loaded
        self.decoders = decoders
        if start:
            decoders.start()  # their start-up overlaps the model's loading

    def batch_size(self) -> int:
        return self.settings.batch_size_on(self.device or "cpu")

    def chunks_ahead(self) -> int:
        """Batches decoded while the model encodes one. On a GPU, one: the CPU is free to decode.
        On a CPU, one when the decoders run in the background, else none: the model's threads fill
        every core, and a decoder taking one of them stalls the others at each step's barrier (on
        two cores the model lost a quarter of its speed to decoders using a tenth of the CPU);
        background decoders only take the cycles the model leaves idle (160 camera JPEGs: 8%
        faster end to end)."""
        return 1 if (self.device or "cpu").startswith("cuda") or self.decoders.background else 0

    def batches_in_flight(self) -> int:
        return len(self._held)  # encoded when submitted, but while the tower is judged

    def prepare(self, p: Prepared, data: bytes) -> Prepared:
        """Decode (in a child process) and preprocess; raises only when the model cannot be loaded."""
        encoder = self.get_encoder()  # the model loads on first need; its errors stop the run
        self.device = encoder.device
        if self.device.startswith("cuda"):  # the CPU is the GPU's feeder: decoders in the foreground
            self.decoders.to_foreground()
        settings = self.settings
        try:
            if p.kind == "video":
                return self._prepare_video(p, data, encoder)
            options = decode_options(settings, encoder)
            if settings.regions:  # a larger picture, uncropped, for the regions' pass
                options |= {"min_side": int(settings.region_scale * encoder.image_size), "center_crop": False, "resize_shortest": None}
            with self.decoders.worker() as decoder:
                decoded, meta = decoder.decode_with_metadata(data, **options, name=p.file.path)
            p.tensor = encoder.preprocess(decoded.image)
            if settings.regions and min(decoded.width, decoded.height) >= 2 * encoder.image_size:
                p.region_image = decoded.image
        except ImageDecodeError as e:
            p.tensor, p.error, p.by_settings = None, str(e), True
            return p
        except DecodeCancelled:
            p.tensor, p.changing = None, True  # not judged: the run is stopping
            return p
        except Exception as e:  # noqa: BLE001 - one bad file must never stop the run
            log.debug("unexpected failure on %s", p.file.path, exc_info=True)
            p.tensor, p.frame_tensors, p.region_image = None, [], None
            p.error, p.by_settings = f"cannot decode {p.kind}: {type(e).__name__}: {e}", True
            return p
        p.width, p.height, p.metadata = decoded.width, decoded.height, meta.with_mtime(p.file.mtime_ns)
        return p

    def _prepare_video(self, p: Prepared, data: bytes, encoder: ImageEncoder) -> Prepared:
        """Sample a video's frames in a decoder process and preprocess them."""
        settings = self.settings
        with self.decoders.worker() as decoder:
            frames = decoder.decode_video(
                data, settings.video_timeout_s, interval_s=settings.video_interval_s, max_frames=settings.video_max_frames,
                min_side=settings.draft_factor * encoder.image_size,
            )
        p.frame_tensors = [encoder.preprocess(image) for image in frames.images]
        p.width, p.height, p.frame_times, p.duration = frames.width, frames.height, frames.times, frames.duration
        return p

    def submit(self, batch: list[Prepared]) -> Callable[[], None]:
        """Own vectors of the files to encode; a video's shots and an image's regions go to its parts."""
        if self.choice is not None and self.choice.judging:
            self._held.append(batch)
            if sum(p.n_inputs for held in self._held for p in held) >= int8.SAMPLE:
                self._judge()
            return self._judge  # the run ends before the sample is full: judged on what came
        encoder = self.get_encoder()
        if self.choice is not None:
            self.choice.record(encoder.precision)
        self._assign(batch, self._encode(encoder, [t for p in batch for t in (p.frame_tensors or [p.tensor])]))
        return lambda: None

    def _judge(self) -> None:
        """Judge int8 on the held batches' inputs (TowerChoice.judge) and set their vectors."""
        if not self._held:
            return
        held, self._held = [p for batch in self._held for p in batch], []
        assert self.choice is not None
        inputs = [t for p in held for t in (p.frame_tensors or [p.tensor])]
        judged, verdict = self.choice.judge(inputs)
        self.choice.record(verdict.precision)
        done = 0 if judged is None else len(judged)
        rest = self._encode(self.get_encoder(), inputs[done:]) if done < len(inputs) else None
        parts = [v for v in (judged, rest) if v is not None]
        self._assign(held, np.concatenate(parts))

    def _encode(self, encoder: ImageEncoder, inputs: list[Any]) -> np.ndarray:
        step = self.batch_size()
        return np.concatenate([encoder.encode_images(inputs[i : i + step]) for i in range(0, len(inputs), step)])

    def _assign(self, batch: list[Prepared], encoded: np.ndarray) -> None:
        """Set each file's vectors from encoded, the vectors of its inputs in order."""
        encoder = self.get_encoder()
        offset = 0
        for p in batch:
            if p.frame_tensors:
                frames = encoded[offset : offset + len(p.frame_tensors)]
                offset += len(p.frame_tensors)
                shots = video.split_shots(p.frame_times, frames, p.duration)
                p.parts = [VectorPart("shot", s.vector, time=s.time, span=s.span) for s in shots]
                p.vector = video.whole_video_vector(shots)
                p.frame_tensors = []  # encoded: free the frames
            else:
                p.vector = encoded[offset]
                offset += 1
                if p.region_image is not None:
                    p.parts = self._regions(encoder, p.region_image, p.width or 0, p.height or 0)
                    p.region_image = None

    def _regions(self, encoder: Any, image: Any, width: int, height: int) -> list[VectorPart]:
        """Region vectors of a picture, boxes in pixels of the oriented original (width x height)."""
        from ..models import dense

        settings = self.settings
        regions = dense.region_features(encoder.model, image, scale=settings.region_scale, stride=settings.region_stride, device=encoder.device)
        vectors = regions.vectors
        if settings.region_mode == "crops":  # each window through the model on its own
            crops = [encoder.preprocess(image.crop(tuple(int(v) for v in box))) for box in regions.boxes]
            step = self.batch_size()
            vectors = np.concatenate([encoder.encode_images(crops[i : i + step]) for i in range(0, len(crops), step)])
        sx, sy = width / image.size[0], height / image.size[1]
        boxes = np.round(regions.boxes * np.array([sx, sy, sx, sy])).astype(np.int64)
        return [VectorPart("region", v, box=tuple(int(b) for b in box)) for box, v in zip(boxes, vectors)]

    def cancel(self) -> None:
        pass  # the run cancels its decoders

    def close(self) -> None:
        pass
