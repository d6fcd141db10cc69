"""A model's image tower without torch: an ONNX export run by onnxruntime, with open_clip's
preprocessing redone in Pillow and numpy.

Importing torch and open_clip costs about 4 s, which `searchlite index` paid even to add one photo,
and on this machine's CPUs onnxruntime runs the ViT image tower as fast as torch (0.96-1.10x). So the
first time a model encodes images on a CPU, its image tower is exported (export_image_tower), checked
against the torch model on test pictures (cosine >= MIN_COSINE, through each side's own
preprocessing) and kept in the user's cache (models/cache.py); later runs load it from there without
torch. Models whose preprocessing is not open_clip's usual one (bicubic resize of the shorter side,
centre crop, ToTensor, Normalize), or that the exporter cannot trace, keep the torch path.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from ..media.images import resize_shortest_side
from ..storage.atomic_file import fsync_folder

if TYPE_CHECKING:
    from .encoder import ClipEncoder

log = logging.getLogger(__name__)

FILENAME = "image_tower.onnx"  # the graph; its weights are in WEIGHTS beside it
WEIGHTS = "image_tower.weights"
FORMAT = "searchlite-image-tower-1"
MIN_COSINE = 0.9999  # against the torch tower on CHECK_SIZES pictures, before an export is kept
# (width, height) of the test pictures: landscape, portrait, a strip, one smaller than the input
CHECK_SIZES = ((320, 240), (180, 300), (700, 90), (40, 50))
PREPACK_BATCH = 8  # this many images mean a run worth onnxruntime's prepacked weights


class ImageTower:
    """RGB PIL images -> unit float32 embeddings (n, d), as open_clip's
    encode_image(preprocess(img), normalize=True) computes them, on the CPU. The image side of a
    ClipEncoder: what indexing and query images need from a model. Safe to call from many threads."""

    device = "cpu"
    FILES = (FILENAME, WEIGHTS)  # what an export is made of
    # the preprocessing is always open_clip's usual one (export_image_tower refuses others)
    crops_center = True
    resizes_shortest_bicubic = True

    def __init__(self, session: Any, meta: dict[str, Any], faster: Callable[[], Any] | None = None) -> None:
        """faster: builds a session that encodes faster than `session`, worth building once
        PREPACK_BATCH images are preprocessed or come in one batch (in a thread; `session` serves
        until it is ready)."""
        self._session = session
        self._make_faster = faster
        self._faster: Future[Any] | None = None
        self._preprocessed = 0
        self._faster_held = False  # hold_faster()
        self._lock = threading.Lock()
        self.image_size: int = int(meta["image_size"])
        self.embed_dim: int = int(meta["embed_dim"])
        self.logit_scale: float = float(meta["logit_scale"])
        self._mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(meta["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.precision: str = meta.get("precision", "fp32")  # of its matrix products: "fp32", or "int8" (int8.py)
        self.meta = meta

    @classmethod
    def load(
        cls, folder: Path, model_key: str, threads: int | None = None, *, filename: str = FILENAME, fmt: str = FORMAT,
        source: str | None = None,
    ) -> ImageTower | None:
        """The exported tower of model_key in folder; None when there is none. A file that belongs to
        another model or cannot be loaded is reported (once, here) and also gives None: the caller
        exports it again. threads: onnxruntime's, when not one per core (a Ray actor's share).
        filename, fmt: another export of the tower (int8.py's), whose metadata must name source,
        the float32 export it was made from."""
        path = folder / filename
        if not path.exists():
            return None
        try:
            # decoding waits for the model's input size: a session without onnxruntime's weight
            # prepacking opens at once (0.07 s instead of 0.4 s: adding one photo waits less), and
            # the prepacked one, which encodes 10-25% faster, is built when a run has many images
            session = _session(path, threads, prepack=False)
            meta = json.loads(session.get_modelmeta().custom_metadata_map.get("searchlite", "{}"))
            if meta.get("format") != fmt or meta.get("model") != model_key:
                raise ValueError("it was exported for another model")
            if source is not None and meta.get("source") != source:  # the float32 tower was exported again
                log.info("%s was made from another export of the float32 tower: making it again", path)
                return None
            return cls(session, meta, faster=lambda: _session(path, threads))
        except Exception as e:  # noqa: BLE001 - damaged or foreign: exporting it again mends it
            log.warning("the exported image tower %s is unusable (%s); exporting it again from the weights", path, _first_line(e))
            return None

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, S, S) uint8: torchvision's Resize(S, BICUBIC) and CenterCrop(S) as
        open_clip composes them, pixel for pixel; the scaling to [0, 1] and Normalize wait for
        encode_images, which does them for a whole batch. Thread-safe."""
        with self._lock:
            self._preprocessed += 1
            # a run of many images: build the faster session while the first batch decodes
            self._build_faster(self._preprocessed)
        size = self.image_size
        if image.mode != "RGB":
            image = image.convert("RGB")
        if min(image.size) != size:
            image = resize_shortest_side(image, size)
        w, h = image.size
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))  # as torchvision rounds
        if (w, h) != (size, size):
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)

    def encode_images(self, batch: list[np.ndarray]) -> np.ndarray:
        """Arrays from preprocess() -> (n, d) unit float32."""
        x = np.stack(batch).astype(np.float32)  # (n, 3, S, S)
        x /= np.float32(255)  # ToTensor, then Normalize: the same float32 operations as torch's
        x -= self._mean
        x /= self._std
        with self._lock:
            self._build_faster(len(batch))
            if self._faster is not None and self._faster.done():
                self._session, self._faster = self._faster.result() or self._session, None
            session = self._session
        if self.precision == "int8":
            # dynamic quantization scales activations by their range over the whole input: one image
            # per run keeps an image's vector independent of the batch it came in (as fast here)
            out = np.concatenate([session.run(None, {"pixels": x[i : i + 1]})[0] for i in range(len(x))])
        else:
            (out,) = session.run(None, {"pixels": x})
        return np.ascontiguousarray(out, dtype=np.float32)

    def hold_faster(self, held: bool = True) -> None:
        """While held, the faster session is not built: a tower that may soon be dropped (the fp32
        one the int8 tower is judged against) would spend a core and 1.4 GB building it."""
        with self._lock:
            self._faster_held = held

    def _build_faster(self, images: int) -> None:
        """Start building the faster session when images make it worth it (under self._lock)."""
        if self._make_faster is not None and not self._faster_held and images >= PREPACK_BATCH:
            self._faster, self._make_faster = _in_thread(self._make_faster), None


def _in_thread(make: Callable[[], Any]) -> Future[Any]:
    """make() run in a thread of its own: its result, or None if it failed (then the session in
    use stays)."""
    future: Future[Any] = Future()

    def build() -> None:
        try:
            future.set_result(make())
        except Exception as e:  # noqa: BLE001
            log.debug("the prepacked session of the image tower failed to build: %s", _first_line(e))
            future.set_result(None)

    threading.Thread(target=build, name="searchlite-tower").start()
    return future


def export_image_tower(encoder: ClipEncoder, folder: Path, model_key: str) -> ImageTower | None:
    """The encoder's image tower exported to folder (FILENAME and WEIGHTS) after checking it against
    the torch model; None when the model's preprocessing or tower is not one this covers, or the
    export drifts (images are then encoded by torch). A folder that cannot be written costs only
    the next run's start-up: the export is used from a temporary folder."""
    meta = _preprocess_meta(encoder)
    if meta is None:
        log.info("not exporting the image tower: its preprocessing is not open_clip's usual one")
        return None
    meta.update(format=FORMAT, model=model_key, embed_dim=encoder.embed_dim, logit_scale=encoder.logit_scale)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".export-"))
    except OSError as e:
        log.info("cannot keep the image tower in %s (%s)", folder, e.strerror or e)
        staging = Path(tempfile.mkdtemp(prefix="searchlite-export-"))
    try:
        try:
            _write_export(encoder, meta, staging)
            candidate = ImageTower(_session(staging / FILENAME), meta)
        except Exception as e:  # noqa: BLE001 - a tower the exporter cannot trace keeps the torch path
            log.info("not exporting the image tower: %s", _first_line(e))
            return None
        pictures = check_pictures()
        precision, encoder.precision = encoder.precision, "fp32"  # the export is fp32: compare like with like
        try:
            reference = encoder.encode_images([encoder.open_clip_transform(p) for p in pictures])
        finally:
            encoder.precision = precision
        cosine = float((reference * candidate.encode_images([candidate.preprocess(p) for p in pictures])).sum(axis=1).min())
        if cosine < MIN_COSINE:
            log.info("not exporting the image tower: it drifts from the torch model (cosine %.6f)", cosine)
            return None
        if staging.parent == folder:
            # the weights first: a graph is never there without the weights it names (two processes
            # exporting one model write the same bytes, so any interleaving leaves a whole pair)
            for name in (WEIGHTS, FILENAME):
                os.replace(staging / name, folder / name)
            fsync_folder(folder)
        return candidate
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_pictures() -> list[Image.Image]:
    """Deterministic test pictures with structure at every scale (gradients plus noise)."""
    rng = np.random.default_rng(0)
    pictures = []
    for w, h in CHECK_SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1)
        noisy = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        pictures.append(Image.fromarray(noisy, "RGB"))
    return pictures


def _preprocess_meta(encoder: ClipEncoder) -> dict[str, Any] | None:
    """{image_size, mean, std} when the encoder's preprocessing is open_clip's usual Resize(S,
    BICUBIC) of the shorter side, CenterCrop(S), conversion to RGB, ToTensor and Normalize."""
    from open_clip.transform import MaybeConvertMode
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    deferred = encoder.deferred_preprocessing
    if deferred is None:
        return None
    steps, mean, std = deferred
    size = encoder.image_size

    def one(value: Any) -> int | None:
        values = [value] if isinstance(value, int) else list(value)
        return values[0] if len(set(values)) == 1 else None

    kinds = []
    for step in steps:
        if isinstance(step, Resize):
            if one(step.size) != size or step.interpolation != InterpolationMode.BICUBIC or step.max_size is not None:
                return None
            kinds.append("resize")
        elif isinstance(step, CenterCrop):
            if one(step.size) != size:
                return None
            kinds.append("crop")
        elif isinstance(step, MaybeConvertMode) and step.mode == "RGB" or getattr(step, "__name__", "") == "_convert_to_rgb":
            continue
        else:
            return None
    if kinds != ["resize", "crop"]:
        return None
    return {"image_size": size, "mean": mean.flatten().tolist(), "std": std.flatten().tolist()}


def _onnx_bytes(encoder: ClipEncoder) -> bytes:
    """The image tower as ONNX: normalized pixels (n, 3, S, S) -> unit embeddings (n, d)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, visual: torch.nn.Module) -> None:
            super().__init__()
            self.visual = visual

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            features = self.visual(pixels)  # (n, d)
            return features / features.norm(dim=-1, keepdim=True)

    size = encoder.image_size
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False):  # no no_grad: it would select fused kernels that do not export
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            Tower(encoder.model.visual).eval(), (example,), buffer, dynamo=False, opset_version=17,
            input_names=["pixels"], output_names=["embeddings"],
            dynamic_axes={"pixels": {0: "n"}, "embeddings": {0: "n"}},
        )
    return buffer.getvalue()


def _session(model: Path | bytes, threads: int | None = None, prepack: bool = True) -> Any:
    """An onnxruntime session on the CPU, with every optimization (including those for this CPU);
    without prepack, the weights are used as stored instead of re-laid out for the CPU's kernels
    (quicker to open, slower to run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3  # errors only: they are reported as one line by the caller
    # idle threads sleep instead of spinning: between batches the cores belong to the decoder
    # processes (64 camera JPEGs indexed: 7.5 img/s instead of 7.0)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, options, providers=["CPUExecutionProvider"])


def _write_export(encoder: ClipEncoder, meta: dict[str, Any], folder: Path) -> None:
    """FILENAME (the graph, with meta) and WEIGHTS (its weights, raw) in folder: the tower after
    onnxruntime's portable graph optimizations (fused attention, layer norms, GELUs), with the
    weights outside the graph, which onnxruntime maps instead of parsing and copying them. That
    makes a cold session of ViT-B-32-256's tower 0.5 s instead of 1.0-1.5 s; the CPU-specific
    optimizations run at each load (they cannot be saved portably)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(_onnx_bytes(encoder), options, providers=["CPUExecutionProvider"])
    model = onnx.load(folder / "optimized.onnx")
    (folder / "optimized.onnx").unlink()
    onnx.helper.set_model_props(model, {"searchlite": json.dumps(meta)})
    onnx.save_model(model, folder / FILENAME, save_as_external_data=True, all_tensors_to_one_file=True, location=WEIGHTS, size_threshold=1024)
    for name in (WEIGHTS, FILENAME):
        with open(folder / name, "rb+") as f:
            os.fsync(f.fileno())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
