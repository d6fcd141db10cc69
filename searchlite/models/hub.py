"""ModelHub: the one owner of an index's model. Which model the index uses, loading it (the torch
model, or its towers exported to the user's cache, which answer without importing torch), embedding
texts, and what Ray actors load. The engine builds one per open index and hands it to what needs a
model: indexing (and Ray), search, classification, evaluation, the tuning queries."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..config import IndexSettings, model_cache_dir
from ..errors import InvalidInputError
from ..text.cache import TextCache
from .encoder import ClipEncoder, ImageEncoder
from .loading import load_encoder, surely_cpu
from .spec import ModelSpec, reconcile, spec_from_flags

if TYPE_CHECKING:
    from ..text.tower import TextTower
    from .image_tower import ImageTower

log = logging.getLogger(__name__)

TOWER_RECORD = "image_tower"  # index_info: the image tower of the index's vectors (ingest/tower_choice.py)

EncoderFactory = Callable[[ModelSpec, "str | None"], ClipEncoder]


class ModelRecord(Protocol):
    """Where an index records the model that fills it (its store's index_info)."""

    @property
    def read_only(self) -> bool: ...

    def get_info(self, key: str) -> Any: ...

    def set_info(self, key: str, value: Any) -> None: ...


class ModelHub:
    """The model of one index, loaded on first use; safe from many threads.

    record: where a new index records its model once it loads (the engine points it at the real
    store when the missing index it stood in for is created). encoder_factory: how the torch model
    is loaded; a caller's own factory means its encoder is the one to use, so no exported tower
    stands in for it. index_dir: the index folder, where searchlite < 0.2 kept the text tower."""

    def __init__(
        self,
        spec: ModelSpec,
        record: ModelRecord,
        settings: IndexSettings,
        *,
        device: str | None = None,
        encoder_factory: EncoderFactory = load_encoder,
        index_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.record = record
        self.settings = settings
        self.device = device
        self._factory = encoder_factory
        self._index_dir = index_dir
        self._lock = threading.RLock()  # guards lazy loading
        self._encoder: ClipEncoder | None = None
        self._image_encoder: ImageEncoder | None = None
        self._text_tower: TextTower | None = None
        self._tower_checked = False  # whether an exported text tower has been looked for
        self._text_cache = TextCache()
        self.load_seconds = 0.0  # spent loading the model in this process
        self._precision: str | None = None  # of the image tower, once an index run chose it (use_precision)
        self._judging = False  # while an index run judges int8 (use_precision)

    @classmethod
    def of_index(
        cls, record: ModelRecord, requested: ModelSpec | None, settings: IndexSettings, *, index_dir: Path | None = None,
        model_given: bool = True, device: str | None = None, encoder_factory: EncoderFactory = load_encoder,
    ) -> ModelHub:
        """The hub of the model an index recorded (requested must agree with it: spec.reconcile;
        pretrained alone may give its checkpoint's new location), or of requested for a new index
        (default: the default model)."""
        recorded = record.get_info("model")
        if recorded is not None:
            spec = reconcile(ModelSpec.from_record(recorded), requested, index_dir, model_given=model_given)
        else:
            spec = requested or spec_from_flags(None, None)
        return cls(spec, record, settings, device=device, encoder_factory=encoder_factory, index_dir=index_dir)

    def key(self) -> str:
        """Identifies the model's weights (not where its checkpoint lives)."""
        record = {k: v for k, v in self.spec.to_record().items() if k != "checkpoint"}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    @property
    def loaded(self) -> bool:
        """Whether the torch model has been loaded."""
        return self._encoder is not None

    @property
    def own_model(self) -> bool:
        """Whether the hub loads the model itself (not through a caller's factory), so that
        exports of the model may stand in for it."""
        return self._factory is load_encoder

    def load_model(self) -> ClipEncoder:
        """The torch model, loaded on first use (a new index records it then)."""
        with self._lock:
            if self._encoder is None:
                started = time.monotonic()
                encoder = self._factory(self.spec, self.device)
                encoder.choose_precision(self.settings.precision)
                self.load_seconds += time.monotonic() - started
                self.record_model(encoder.embed_dim)
                self._encoder = encoder
            return self._encoder

    def image_encoder(self) -> ImageEncoder:
        """What embeds images: on a CPU, the image tower exported to the user's cache (exported the
        first time the torch model loads here); elsewhere, and for models the export does not
        cover, the torch model."""
        with self._lock:
            if self._image_encoder is None:
                self._image_encoder = self._image_tower() or self.load_model()
                if self._judging and hasattr(self._image_encoder, "hold_faster"):
                    self._image_encoder.hold_faster()
            return self._image_encoder

    def image_precision(self) -> str:
        """The image tower this hub encodes with on a CPU: "int8" when asked for (--precision int8),
        or when the index's vectors are int8 (auto keeps an index's precision, so that its vectors
        never mix silently) or an index run chose it (use_precision); else "fp32"."""
        if self._precision is not None:
            return self._precision
        if self.settings.precision == "int8":
            return "int8"
        recorded = self.record.get_info(TOWER_RECORD) or {}
        return "int8" if self.settings.precision == "auto" and recorded.get("precision") == "int8" else "fp32"

    def use_precision(self, precision: str, tower: ImageTower | None = None, *, judging: bool = False) -> None:
        """Encode images with the "int8" or "fp32" exported tower from now on (an index run's
        choice, ingest/tower_choice.py): tower, when given (one int8_towers() gave), else loaded
        when next needed. judging: the fp32 tower only prepares images until int8 is judged, and
        may be dropped then: it builds no faster session meanwhile."""
        with self._lock:
            self._precision = precision
            self._judging = judging
            if tower is not None:
                self._image_encoder = tower
            elif getattr(self._image_encoder, "precision", precision) != precision:
                self._image_encoder = None
            if hasattr(self._image_encoder, "hold_faster"):
                self._image_encoder.hold_faster(judging)

    def exports_image_tower(self) -> bool:
        """Whether images are encoded by a tower exported to the cache (so int8 is possible):
        a model the hub loads itself, on a CPU, not asked for bf16 or fp16."""
        return self.own_model and surely_cpu(self.device) and self.settings.precision in ("auto", "fp32", "int8")

    def int8_towers(self) -> tuple[ImageTower, ImageTower] | None:
        """(the fp32 tower, the int8 one) to judge against each other, the int8 one quantized the
        first time; None where either cannot be had."""
        from . import int8
        from .image_tower import ImageTower

        with self._lock:
            fp32 = self._image_encoder if getattr(self._image_encoder, "precision", None) == "fp32" else self._fp32_tower()
            if not isinstance(fp32, ImageTower):
                return None
            started = time.monotonic()
            quantized = int8.tower(model_cache_dir(self.key()), self.key())
            self.load_seconds += time.monotonic() - started
            return None if quantized is None else (fp32, quantized)

    def int8_verdict(self) -> Any:
        """The verdict kept in the cache on this model's int8 tower (int8.Verdict), if judged."""
        from . import int8

        return int8.cached_verdict(model_cache_dir(self.key())) if self.exports_image_tower() else None

    def int8_export(self) -> str | None:
        """Which int8 tower of this model the cache holds now (int8.export_id); None: none yet."""
        from . import int8

        return int8.export_id(model_cache_dir(self.key()))

    def image_batch_size(self) -> int:
        """Images per batch on the image encoder's device (a CPU's until it is loaded)."""
        return self.settings.batch_size_on(self._image_encoder.device if self._image_encoder else "cpu")

    def text_encoder(self) -> ClipEncoder | TextTower:
        """What embeds text: the text tower exported to the user's cache (no torch); the torch
        model where there is no usable export, which is then written."""
        tower = self._text_tower
        if tower is not None:  # no lock once loaded: text queries never wait on the image tower loading
            return tower
        with self._lock:
            if self._text_tower is None and not self._tower_checked and self.own_model:
                from ..text.tower import TextTower

                self._tower_checked = True
                self._text_tower = TextTower.load(self._tower_path(), self.key()) or self._legacy_text_tower()
                if self._text_tower is None:
                    self._export_text_tower(self.load_model())
            return self._text_tower or self.load_model()

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings (n, d), one row per text; repeated texts come from a cache."""
        return self._text_cache.encode(list(texts), self.text_encoder().encode_texts)

    def export_text_tower(self) -> None:
        """Once the torch model is loaded here (an index run that encoded), its text tower is
        exported, so later text queries skip torch."""
        with self._lock:
            if self._encoder is not None:
                self._export_text_tower(self._encoder)

    def _export_text_tower(self, encoder: ClipEncoder) -> None:
        with self._lock:  # an RLock: text_encoder() calls this holding it
            if self._text_tower is None and self.own_model:  # once in use (its onnxruntime session too), it stays
                from ..text.export import export_text_tower

                self._text_tower = export_text_tower(encoder, self._tower_path(), self.key())

    def _tower_path(self) -> Path:
        from ..text.tower import FILENAME

        return model_cache_dir(self.key()) / FILENAME

    # searchlite < 0.2 kept the text tower beside each index (250 MB for the default model): read
    # from there until a writer moves it to the user's cache, where every index of the model finds it

    def _legacy_text_tower(self) -> TextTower | None:
        from ..text.tower import FILENAME, TextTower

        return TextTower.load(self._index_dir / FILENAME, self.key()) if self._index_dir is not None else None

    def move_legacy_text_tower(self) -> None:
        """Move a text tower kept beside the index to the user's cache (a writer's job)."""
        from ..text.tower import FILENAME, TextTower

        if self._index_dir is None or not (legacy := self._index_dir / FILENAME).exists():
            return
        key, target = self.key(), self._tower_path()
        try:
            if TextTower.load(target, key) is None and TextTower.load(legacy, key) is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                shutil.copyfile(legacy, temporary)
                os.replace(temporary, target)
            legacy.unlink()
        except OSError as e:  # it stays where it was, and keeps answering from there
            log.info("cannot move %s to %s: %s", legacy, target.parent, e.strerror or e)

    def _image_tower(self) -> ImageTower | None:
        """The exported tower of image_precision(); None where images are encoded by torch."""
        from . import int8

        if not self.exports_image_tower():
            if self.settings.precision == "int8":
                raise InvalidInputError("precision int8 runs on a CPU, with a model searchlite loads itself: pass --device cpu", setting="precision")
            return None
        key = self.key()
        if self.image_precision() == "int8":
            started = time.monotonic()
            tower = int8.load(model_cache_dir(key), key)
            if tower is not None:
                self.load_seconds += time.monotonic() - started
                self.record_model(tower.embed_dim)
            elif (towers := self.int8_towers()) is not None:
                tower = towers[1]
            if tower is not None:
                return self._int8_for_queries(tower)
            if self.settings.precision == "int8":
                raise InvalidInputError(f"precision int8: the int8 image tower cannot be made: {int8.unavailable(model_cache_dir(key))}",
                                        setting="precision")
            log.warning("the int8 image tower cannot be made (%s): encoding in fp32", int8.unavailable(model_cache_dir(key)))
        return self._fp32_tower()

    def _int8_for_queries(self, tower: ImageTower) -> ImageTower | None:
        """tower, or the fp32 one where tower failed its check. Outside index runs (query images),
        an int8 tower other than the one that encoded the index's vectors is said: they may score
        a little apart until an index run checks it (ingest/tower_choice.py)."""
        from . import int8

        if self._precision is not None or self.settings.precision != "auto":
            return tower  # an index run's choice, or the user's
        recorded = ((self.record.get_info(TOWER_RECORD) or {}).get("verdict") or {}).get("export")
        if recorded == tower.meta.get("export_id"):
            return tower
        verdict = int8.cached_verdict(model_cache_dir(self.key()))
        if verdict is not None and verdict.precision == "fp32":
            log.warning("the model's int8 image tower changed since this index's vectors and failed its check: encoding images in fp32")
            return self._fp32_tower()
        log.warning("the model's int8 image tower changed since this index's vectors (not checked yet: an index run checks it); "
                    "query images may score a little apart from them")
        return tower

    def _fp32_tower(self) -> ImageTower | None:
        """The float32 tower exported to the cache (exported the first time); None for models the
        export does not cover."""
        from .image_tower import ImageTower, export_image_tower

        key = self.key()
        folder = model_cache_dir(key)
        started = time.monotonic()
        tower = ImageTower.load(folder, key)
        if tower is not None:
            self.load_seconds += time.monotonic() - started
            self.record_model(tower.embed_dim)
            return tower
        encoder = self.load_model()
        if encoder.device != "cpu":
            return None
        started = time.monotonic()
        tower = export_image_tower(encoder, folder, key)
        self.load_seconds += time.monotonic() - started
        return tower

    def ray_recipe(self, gpu: bool) -> dict[str, Any]:
        """What Ray actors load to encode as this hub does (ray_stage.ModelRecipe): on GPUs, the
        torch model; on CPUs, the image tower exported here (torch stays off the workers)."""
        if not self.own_model:
            raise InvalidInputError("indexing on Ray needs a model searchlite loads itself (not an encoder factory)")
        from .image_tower import ImageTower

        torch_model = {"kind": "torch", "spec": self.spec, "precision": self.settings.precision}
        if gpu:
            return {**torch_model, "device": "cuda"}
        from . import image_tower, int8

        encoder = self.image_encoder()
        folder = model_cache_dir(self.key())
        export = (int8.FILES, int8.FORMAT) if encoder.precision == "int8" else (ImageTower.FILES, image_tower.FORMAT)
        if isinstance(encoder, ImageTower) and all((folder / name).exists() for name in export[0]):
            return {"kind": "tower", "key": self.key(), "folder": str(folder), "names": list(export[0]), "format": export[1]}
        return {**torch_model, "device": "cpu"}

    def record_model(self, dim: int) -> None:
        """A new index records the model that fills it and its embedding dimension."""
        if not self.record.read_only and self.record.get_info("model") is None:
            self.record.set_info("embed_dim", dim)
            self.record.set_info("model", self.spec.to_record())

    def record_checkpoint_location(self) -> None:
        """An index opened with its checkpoint's new location (the same weights) records it, so
        that later commands find the checkpoint without flags."""
        recorded = self.record.get_info("model")
        if recorded is not None and recorded != self.spec.to_record():
            self.record.set_info("model", self.spec.to_record())
            log.info("recorded the checkpoint's new location: %s", self.spec.checkpoint)
