"""The image tower with int8 matrix products, and the check that decides whether an index may use it.

The float32 tower exported to the user's cache (image_tower.py) is quantized once per export to
onnxruntime's dynamic quantization operator (DynamicQuantizeMatMul): the weights of the
transformer's matrix products (attention in/out projections, MLP) as int8 per output channel,
activations quantized per input as it runs.
The patch embedding (a convolution), the layer norms, the attention's products of activations and
the final projection stay float32. The int8 files sit beside the float32 ones and name the float32
export they were made from (source_id): exporting the float32 tower again makes them again.

Quantization error depends on the weights (real CLIP towers have outlier activations that random or
toy weights lack), and no machine this is built on has real weights. So int8 is used only once it
has proven itself where the weights are, on the user's own photos: validate() encodes a sample of
a collection with both towers and accepts int8 only if every image keeps cosine >= MIN_COSINE to
float32 and its NEIGHBOURS nearest neighbours in the sample agree (mean overlap >= MIN_OVERLAP).
The verdict is kept beside the export (one per int8 export: the first index run large enough
judges, later runs and indexes read it) and recorded in each index that uses it (ingest/tower_choice.py).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..storage.atomic_file import fsync_folder
from . import image_tower
from .image_tower import ImageTower

log = logging.getLogger(__name__)

FILENAME = "image_tower.int8.onnx"  # the graph with its small tensors (scales, biases, norms)
WEIGHTS = "image_tower.int8.weights"  # its large tensors, raw
VERDICT = "image_tower.int8.json"  # the verdict on the export, once judged
FILES = (FILENAME, WEIGHTS)
FORMAT = "searchlite-image-tower-int8-2"  # the recipe; a new one makes the files again
SAMPLE = 64  # images of the collection encoded by both towers
NEIGHBOURS = 10
MIN_COSINE = 0.995  # every sample image's, to float32
MIN_OVERLAP = 0.9  # mean share of the top-NEIGHBOURS that float32 and int8 agree on
# index runs with fewer files to encode keep float32 without judging int8: the check's own cost
# (the sample through the float32 tower, and the first quantization) exceeds what int8 saves them.
# Measured break-even (docs/performance.md): a judged run of 128 camera photos takes as long as fp32
MIN_IMAGES = 128
_EXTERNAL_BYTES = 64 * 1024  # tensors past this go to WEIGHTS; scales and biases stay in the graph
# scikit-image's photos that ship inside its package (no download): the sample's complement
_SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "moon", "horse", "hubble_deep_field",
                  "immunohistochemistry", "brick", "grass", "gravel")


def source_id(folder: Path) -> str | None:
    """Identifies the float32 export in folder (its graph, which names its weights, and their size);
    None when there is none."""
    try:
        graph = (folder / image_tower.FILENAME).read_bytes()
        weights = (folder / image_tower.WEIGHTS).stat().st_size
    except OSError:
        return None
    return hashlib.sha256(graph + str(weights).encode()).hexdigest()[:16]


def export_id(folder: Path, source: str | None = None) -> str | None:
    """Identifies the int8 export in folder: its graph (scales and zero points included), its
    weights file (size and time written: hashing ~90 MB on every run would cost more than it
    guards), and the float32 export there now (one made from another is made again: a new
    export; source: its source_id, for an int8 export made elsewhere). None when any is missing."""
    source = source or source_id(folder)
    try:
        graph = (folder / FILENAME).read_bytes()
        weights = (folder / WEIGHTS).stat()
    except OSError:
        return None
    if source is None:
        return None
    return hashlib.sha256(graph + f"{weights.st_size}:{weights.st_mtime_ns}:{source}".encode()).hexdigest()[:16]


def load(folder: Path, model_key: str, threads: int | None = None, source: str | None = None) -> ImageTower | None:
    """The int8 tower of model_key in folder, made from the float32 export there now (or the one
    source names); None when there is none (or it was made from an earlier export)."""
    source = source or source_id(folder)
    loaded = None if source is None else ImageTower.load(folder, model_key, threads, filename=FILENAME, fmt=FORMAT, source=source)
    if loaded is not None:
        loaded.meta["export_id"] = export_id(folder, source)
    return loaded


def tower(folder: Path, model_key: str) -> ImageTower | None:
    """The int8 tower in folder, quantized from the float32 one the first time; None when there is
    no float32 tower or quantizing it fails."""
    return load(folder, model_key) or quantize(folder, model_key)


def quantize(folder: Path, model_key: str) -> ImageTower | None:
    """Quantize the float32 tower in folder and keep the result beside it (a folder that cannot be
    written: used from a temporary one until the process ends, made again next time). None when
    it cannot be made."""
    source = source_id(folder)
    if source is None:
        return None
    started = time.monotonic()
    try:
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".int8-"))
    except OSError as e:
        log.info("cannot keep an int8 image tower in %s (%s): made in a temporary folder", folder, e.strerror or e)
        return _quantize_elsewhere(folder, model_key, source)
    try:
        _write(folder, staging, source)
        for name in FILES:
            with open(staging / name, "rb+") as f:
                os.fsync(f.fileno())
        for name in (WEIGHTS, FILENAME):  # the weights first: a graph is never there without its weights
            os.replace(staging / name, folder / name)
        (folder / VERDICT).unlink(missing_ok=True)  # it judged another export
        fsync_folder(folder)
    except Exception as e:  # noqa: BLE001 - without int8 the float32 tower serves
        log.info("cannot quantize the image tower to int8: %s", _first_line(e))
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("quantized the image tower to int8 in %.1fs", time.monotonic() - started)
    return load(folder, model_key)


def unavailable(folder: Path) -> str:
    """Why the int8 tower of the float32 one in folder could not be had, in a few words."""
    if source_id(folder) is None:
        return (f"the float32 image tower it is made from is not in {folder} (a cache folder that cannot be written, "
                "or a model the export does not cover)")
    return "quantizing the float32 image tower failed (searchlite --verbose says why)"


def _write(folder: Path, staging: Path, source: str) -> None:
    """FILENAME and WEIGHTS in staging: the float32 tower in folder (its source_id: source), quantized."""
    import onnx

    model = onnx.load(folder / image_tower.FILENAME)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["searchlite"])
    if not _quantize_products(model):
        raise ValueError("the tower has no matrix product with a weight to quantize")
    onnx.helper.set_model_props(model, {"searchlite": json.dumps({**meta, "format": FORMAT, "precision": "int8", "source": source})})
    onnx.save_model(model, staging / FILENAME, save_as_external_data=True, all_tensors_to_one_file=True, location=WEIGHTS,
                    size_threshold=_EXTERNAL_BYTES)
    (staging / WEIGHTS).touch()  # a small model's tensors may all fit in the graph


def _quantize_elsewhere(folder: Path, model_key: str, source: str) -> ImageTower | None:
    """The int8 tower of the float32 one in folder, made in a temporary folder that lives as long
    as this process (its faster session is built from the files later)."""
    staging = Path(tempfile.mkdtemp(prefix="searchlite-int8-"))
    atexit.register(shutil.rmtree, staging, True)
    try:
        _write(folder, staging, source)
    except Exception as e:  # noqa: BLE001 - without int8 the float32 tower serves
        log.info("cannot quantize the image tower to int8: %s", _first_line(e))
        return None
    return load(staging, model_key, source=source)


def _quantize_products(model: Any) -> int:
    """Replace, in the onnx model, each matrix product with a weight (MatMul x @ W; Gemm x @ W.T + b)
    by onnxruntime's DynamicQuantizeMatMul: W in int8 per output column, symmetric (as onnxruntime's
    quantize_dynamic makes it, per channel, in one numpy pass instead of its loop over 83k
    channels: 6 s of a 9 s quantization of ViT-B-32), the input in uint8 over the whole input as it
    runs. The attention's products of two activations lose more than they gain; the patch embedding
    (a convolution) and the final projection are cheap and sensitive: they stay float32. Returns
    how many products were replaced."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    projection = [n.name for n in graph.node if n.op_type == "MatMul"][-1:]
    added: dict[str, list[str]] = {}  # a weight (transposed or not) -> its int8 tensors' names
    nodes, replaced = [], 0
    for node in graph.node:
        operand = _weight_operand(node, weights) if node.name not in projection else None
        if operand is None:
            nodes.append(node)
            continue
        name, transposed, bias = operand
        key = f"{name}_t" if transposed else name
        if key not in added:
            w = numpy_helper.to_array(weights[name]).astype(np.float32)
            w = w.T if transposed else w  # (K, N)
            scale = np.abs(w).max(axis=0) / np.float32(127)
            scale[scale == 0] = 1
            q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
            added[key] = [f"{key}_int8", f"{key}_int8_scale", f"{key}_int8_zero_point"]
            for array, tensor_name in zip((q, scale.astype(np.float32), np.zeros(len(scale), np.int8)), added[key]):
                graph.initializer.append(numpy_helper.from_array(array, tensor_name))
        inputs = [node.input[0], *added[key], *([bias] if bias else [])]
        nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, list(node.output), name=f"{node.name}_int8", domain="com.microsoft"))
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def _weight_operand(node: Any, weights: dict[str, Any]) -> tuple[str, bool, str | None] | None:
    """(the weight's name, whether it is used transposed, the bias's name) of a product with a
    2-D weight that DynamicQuantizeMatMul computes alike; None for others."""
    from onnx import helper

    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
        return None
    if node.op_type == "MatMul":
        return node.input[1], False, None
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and (bias not in weights or len(weights[bias].dims) != 1):
        return None
    return node.input[1], bool(attributes.get("transB", 0)), bias


@dataclass(frozen=True)
class Verdict:
    """Which image tower an index's vectors come from, and why: int8 when it passed validate() (or
    was asked for), else fp32 with the reason."""

    precision: str  # "int8" or "fp32"
    reason: str
    images: int = 0  # in the sample judged
    from_collection: int = 0  # of them, the collection's own (the rest: sample photos)
    min_cosine: float | None = None  # int8 to float32, the sample's lowest
    mean_overlap: float | None = None  # of the top-NEIGHBOURS
    seconds: float = 0.0  # the check's own time
    export: str | None = None  # the int8 export judged (export_id)
    judged_on: str | None = None  # the index whose photos were the sample

    def seen_from(self, index: str) -> Verdict:
        """The verdict as another index reads it from the model's cache: its reason says whose
        photos judged it (not "this collection")."""
        if self.judged_on == index or "this collection" not in self.reason:
            return self
        where = f"the photos of the index {self.judged_on}" if self.judged_on else "another index's photos"
        return replace(self, reason=self.reason.replace("this collection", where))

    def to_record(self) -> dict[str, Any]:
        """As JSON holds it: a non-finite figure (never valid JSON) becomes None."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Verdict:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in fields})

    @property
    def judged(self) -> bool:
        return self.min_cosine is not None

    def describe(self) -> str:
        """One line: the precision, and why."""
        figures = ""
        if self.judged:
            own = f", {self.from_collection} of them the collection's" if self.from_collection != self.images else ""
            figures = (f" (checked on {self.images} images{own}: lowest cosine to fp32 {self.min_cosine:.5f}, "
                       f"top-{NEIGHBOURS} agreement {self.mean_overlap:.2f})")
        return f"{self.precision}: {self.reason}{figures}"


def validate(reference: ImageTower, candidate: ImageTower, inputs: list[np.ndarray], from_collection: int, batch: int = 32) -> tuple[Verdict, np.ndarray, np.ndarray]:
    """Judge candidate (int8) against reference (float32) on preprocessed inputs. Returns (the
    verdict, reference's vectors, candidate's vectors), so that the sample is not encoded again."""
    started = time.monotonic()

    def encode(tower: ImageTower) -> np.ndarray:
        return np.concatenate([tower.encode_images(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])

    expected, got = encode(reference), encode(candidate)  # (n, d) each
    broken = {name: int((~np.isfinite(v)).any(axis=1).sum()) for name, v in (("fp32", expected), ("int8", got))}
    if any(broken.values()):  # NaN compares false with every threshold: refused before the figures
        name = "int8" if broken["int8"] else "fp32"
        reason = f"{name} gives non-finite vectors ({broken[name]} of {len(inputs)} images)"
        verdict = Verdict("fp32", reason, images=len(inputs), from_collection=from_collection,
                          seconds=round(time.monotonic() - started, 2), export=candidate.meta.get("export_id"))
        return verdict, expected, got
    cosine = float((expected * got).sum(axis=1).min())
    overlap = neighbour_overlap(expected, got, NEIGHBOURS)
    passed = cosine >= MIN_COSINE and overlap >= MIN_OVERLAP
    if passed:
        reason = "validated on this collection"
    elif cosine < MIN_COSINE:
        reason = f"int8 drifts from fp32 on this collection (cosine {cosine:.4f} < {MIN_COSINE})"
    else:
        reason = f"int8 reorders neighbours on this collection (top-{NEIGHBOURS} agreement {overlap:.2f} < {MIN_OVERLAP})"
    verdict = Verdict(
        "int8" if passed else "fp32", reason, images=len(inputs), from_collection=from_collection, min_cosine=round(cosine, 5),
        mean_overlap=round(overlap, 4), seconds=round(time.monotonic() - started, 2), export=candidate.meta.get("export_id"),
    )
    return verdict, expected, got


def neighbour_overlap(expected: np.ndarray, got: np.ndarray, k: int) -> float:
    """The mean share of each vector's k nearest others (by expected) that got's k nearest keep."""
    n = len(expected)
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    shares = []
    for vectors in (expected, got):
        similarity = vectors @ vectors.T  # (n, n)
        np.fill_diagonal(similarity, -np.inf)
        shares.append(np.argsort(-similarity, axis=1, kind="stable")[:, :k])
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(*shares)]))


def sample_pictures(n: int) -> list[Image.Image]:
    """Up to n real photos to complete a small collection's sample: scikit-image's (the samples
    extra), else the test pictures of image_tower."""
    pictures: list[Image.Image] = []
    try:
        import skimage.data
    except ImportError:
        return image_tower.check_pictures()[:n]
    for name in _SAMPLE_PHOTOS:
        if len(pictures) >= n:
            break
        try:
            pixels = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a photo this scikit-image lacks, or would download
            continue
        if pixels.dtype != np.uint8:
            pixels = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
        pictures.append(Image.fromarray(pixels).convert("RGB"))
    return pictures


def cached_verdict(folder: Path) -> Verdict | None:
    """The verdict kept on the int8 export in folder, if that export was judged (and was made
    from the float32 export there now)."""
    try:
        record = json.loads((folder / VERDICT).read_text())
    except (OSError, ValueError):
        return None
    if record.get("export") != export_id(folder) or record.get("source") != source_id(folder):
        return None
    return Verdict.from_record(record)


def keep_verdict(folder: Path, verdict: Verdict) -> None:
    """Keep a verdict beside the export it judged (a cache that cannot be written: judged again next time)."""
    temporary = folder / f".{VERDICT}.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps({**verdict.to_record(), "source": source_id(folder)}))
        os.replace(temporary, folder / VERDICT)
    except OSError as e:
        log.info("cannot keep the int8 verdict in %s: %s", folder, e.strerror or e)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
