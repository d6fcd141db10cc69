"""Defaults in one place. Precedence everywhere: command-line flag > environment > these defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"

INDEX_ENV = "SEARCHLITE_INDEX"
CACHE_ENV = "SEARCHLITE_CACHE"
DEFAULT_INDEX_DIR = "index"

DB_FILENAME = "searchlite.db"
FAISS_FILENAME = "vectors.faiss"
LOCK_FILENAME = "write.lock"

CPU_BATCH_SIZE = 32
CUDA_BATCH_SIZE = 256


@dataclass(frozen=True)
class IndexSettings:
    """Tunables of an indexing run."""

    # images per model call; 0: by device (batch_size_on)
    batch_size: int = 0
    # decoder processes (each driven by a thread); on a GPU they decode while it encodes
    workers: int = max(1, min(4, os.cpu_count() or 1))
    # save the FAISS cache at least this often during long runs (seconds)
    snapshot_interval_s: float = 300.0
    # JPEGs are decoded at a reduced DCT scale (Image.draft) to at least this multiple of the model's
    # input size. 1x keeps embeddings at cosine >= 0.99996 with a full decode on detailed, noisy 12 MP
    # photos (2x: 0.999998) for 40% less decoding, the cost that competes with the model for the CPU
    draft_factor: int = 1
    # larger images are refused from their header alone, before any pixel is decoded
    max_megapixels: float = 150.0
    # a file whose decoding takes longer is recorded as failed (its decoder process is killed)
    decode_timeout_s: float = 30.0
    # follow symbolic links to folders and out of the collection
    follow_links: bool = False
    # index a camera RAW file even when a same-name JPEG lies beside it (IMG_1.CR2 + IMG_1.JPG);
    # None: as the index remembers from the last run that set it (off until then)
    raw_siblings: bool | None = None
    # videos: at least one frame every this many seconds (keyframes too), at most video_max_frames
    # frames per video (the interval widens for long videos), and this long to decode one
    video_interval_s: float = 1.0
    video_max_frames: int = 600
    video_timeout_s: float = 300.0
    # also store vectors for regions of each image at least twice the model's input on its shorter
    # side: windows of the model's input size slid (region_stride cells at a time) over the picture
    # resized to region_scale x that size, pooled from one forward pass (models/dense.py). An index
    # remembers that it has regions.
    regions: bool = False
    region_scale: float = 4.0
    region_stride: int = 1
    # "pooled": the windows pooled from one forward pass; "crops": each window encoded on its own
    # (the model on every crop: more exact, and as many encodings as windows). See models/dense.py.
    region_mode: str = "pooled"
    # image tower precision: auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), or forced
    precision: str = "auto"

    def batch_size_on(self, device: str) -> int:
        """The setting, else 32 on a CPU (its throughput is flat past that) or 256 on CUDA (whose
        throughput keeps rising with size)."""
        return self.batch_size or (CUDA_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    @property
    def decoder_memory_limit(self) -> int:
        """Address-space cap of a decoder process: room for the largest allowed image, a few copies."""
        return (1 << 30) + 16 * self.max_pixels


def resolve_index_dir(flag: str | os.PathLike[str] | None) -> Path:
    """The index directory: the flag, else $SEARCHLITE_INDEX, else ./index."""
    if flag:
        return Path(flag)
    env = os.environ.get(INDEX_ENV)
    return Path(env) if env else Path(DEFAULT_INDEX_DIR)


def model_cache_dir(model_key: str) -> Path:
    """Where a model's exported towers live, once per model for every index: $SEARCHLITE_CACHE,
    else $XDG_CACHE_HOME/searchlite, else ~/.cache/searchlite; then models/<model key>."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "searchlite")
    return Path(root) / "models" / model_key
