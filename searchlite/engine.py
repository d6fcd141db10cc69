"""SearchEngine: the facade users embed. Opens an index folder, indexes photo folders into it,
searches it by text and image, reports on it. Owns the store, the vector index and the encoder."""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import images, query
from .config import DB_FILENAME, FAISS_FILENAME, LOCK_FILENAME, IndexSettings, resolve_index_dir
from .encoder import ClipEncoder, ModelSpec, load_encoder, reconcile, spec_from_flags
from .errors import (
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    IndexWriteError,
    InvalidQueryError,
    PathNotFoundError,
)
from .indexer import Indexer, IndexReport, ProgressFn
from .store import FAILED, INDEXED, SKIPPED, FileRow, Store
from .vector_index import VectorIndex, write_atomic
from .writelock import writer_lock

log = logging.getLogger(__name__)

EncoderFactory = Callable[[ModelSpec, "str | None"], ClipEncoder]


@dataclass(frozen=True)
class Hit:
    """One search result. score is the cosine similarity between the query and the image."""

    path: str
    score: float
    id: int
    width: int | None = None
    height: int | None = None
    size: int | None = None


class SearchEngine:
    """An open index. Use SearchEngine.open(); close it (or use `with`) when done.

    search() is safe to call from many threads.
    """

    def __init__(
        self,
        index_dir: Path,
        store: Store,
        requested: ModelSpec | None,
        device: str | None = None,
        settings: IndexSettings | None = None,
        encoder_factory: EncoderFactory = load_encoder,
    ) -> None:
        self.index_dir = index_dir
        self.settings = settings or IndexSettings()
        self._store = store
        self._device = device
        self._encoder_factory = encoder_factory
        self._lock = threading.RLock()  # guards lazy loading
        self._encoder: ClipEncoder | None = None
        self._vectors: VectorIndex | None = None
        recorded = store.get_info("model")
        if recorded is not None:
            self.spec = reconcile(ModelSpec.from_record(recorded), requested, index_dir)
        else:
            self.spec = requested or spec_from_flags(None, None)

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str] | None = None,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        settings: IndexSettings | None = None,
        create: bool = True,
        encoder_factory: EncoderFactory = load_encoder,
    ) -> SearchEngine:
        """Open the index in index_dir (default: $SEARCHLITE_INDEX, else ./index).

        model/pretrained are needed only to build a new index with a non-default model; an existing
        index remembers its model. With create=False a missing index raises IndexNotFoundError.
        """
        path = resolve_index_dir(index_dir)
        db = path / DB_FILENAME
        if not db.exists():
            if not create:
                raise IndexNotFoundError(
                    f"no index in {path}: run `searchlite index FOLDER` first, or pass --index"
                )
            path.mkdir(parents=True, exist_ok=True)
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        store = Store.open(db, create=create)
        try:
            return cls(path, store, requested, device, settings, encoder_factory)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- indexing ------------------------------------------------------------------------------

    def index(self, folder: str | os.PathLike[str], progress: ProgressFn | None = None) -> IndexReport:
        """Bring the index in line with folder: add new files, re-encode changed ones, follow moves,
        drop deleted ones. Only what changed since the last run is read."""
        root = os.path.abspath(os.fspath(folder))
        if not os.path.exists(root):
            raise PathNotFoundError(f"folder {folder} not found")
        with writer_lock(self.index_dir / LOCK_FILENAME):
            vectors = self._get_vectors(writer=True)
            indexer = Indexer(
                self._store,
                vectors,
                self._get_encoder,
                self.settings,
                on_snapshot=self._save_vectors,
                exclude=[str(self.index_dir.resolve()), os.path.abspath(self.index_dir)],
            )
            try:
                return indexer.run(root, progress)
            finally:
                self._save_vectors()

    # --- search --------------------------------------------------------------------------------

    def search(
        self,
        text: str | Sequence[str] | None = None,
        *,
        image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        negative: str | Sequence[str] | None = None,
        k: int = 10,
    ) -> list[Hit]:
        """Top-k images by cosine similarity to the query.

        text, image and negative each take one item or a list; a text or image term may carry a
        weight as "2:beach". Texts and images add up, negatives subtract, and the sum is
        re-normalised.
        """
        if k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        terms = query.parse_terms(_as_list(text), _as_list(image), _as_list(negative))
        if self._store.get_info("model") is None:
            raise IndexNotFoundError(f"the index in {self.index_dir} is empty: run `searchlite index FOLDER` first")
        vectors = self._get_vectors(writer=False)
        q = query.combine(self._embed(terms), [t.weight for t in terms])
        # Files deleted since the last `index` run are left out (one stat per hit), so ask FAISS
        # for more until k existing files are found or the index is exhausted.
        wanted = k
        while True:
            scores, ids = vectors.search(q, wanted)
            rows = self._store.fetch(int(i) for i in ids[0] if i >= 0)
            hits = [
                Hit(r.path, float(s), r.id, r.width, r.height, r.size)
                for s, i in zip(scores[0], ids[0])
                if (r := rows.get(int(i))) is not None and os.path.exists(r.path)
            ]
            if len(hits) >= k or wanted >= len(vectors):
                return hits[:k]
            wanted *= 2

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings (n, d) from the index's model."""
        return self._get_encoder().encode_texts(list(texts))

    def embed_images(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Unit image embeddings (n, d), decoded exactly as indexing decodes."""
        encoder = self._get_encoder()
        tensors = [encoder.preprocess(self._decode_query_image(os.fspath(p))) for p in paths]
        return encoder.encode_images(tensors)

    def _embed(self, terms: list[query.Term]) -> np.ndarray:
        texts = [t.value for t in terms if t.kind == query.TEXT]
        paths = [t.value for t in terms if t.kind == query.IMAGE]
        parts = []
        if texts:
            parts.append(self.embed_text(texts))
        if paths:
            parts.append(self.embed_images(paths))
        embedded = np.concatenate(parts)
        # put rows back in term order
        order = [i for i, t in enumerate(terms) if t.kind == query.TEXT] + [
            i for i, t in enumerate(terms) if t.kind == query.IMAGE
        ]
        result = np.empty_like(embedded)
        result[order] = embedded
        return result

    def _decode_query_image(self, path: str) -> Any:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise InvalidQueryError(f"query image {path} not found") from None
        except OSError as e:
            raise InvalidQueryError(f"cannot read query image {path}: {e.strerror or e}") from None
        try:
            return images.decode_rgb(data, self.settings.draft_factor * self._get_encoder().image_size).image
        except ImageDecodeError as e:
            raise InvalidQueryError(f"query image {path}: {e}") from None

    # --- reporting -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts, model and sizes on disk. Loads no model."""
        counts = self._store.counts()
        recorded = self._store.get_info("model")
        db = self.index_dir / DB_FILENAME
        db_bytes = sum(
            p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists()
        )
        faiss_file = self.index_dir / FAISS_FILENAME
        return {
            "index": str(self.index_dir.resolve()),
            "images": counts.get(INDEXED, 0),
            "failed": counts.get(FAILED, 0),
            "not_images": counts.get(SKIPPED, 0),
            "model": ModelSpec.from_record(recorded).describe() if recorded else None,
            "dim": self._store.get_info("embed_dim"),
            "database_bytes": db_bytes,
            "vectors_bytes": faiss_file.stat().st_size if faiss_file.exists() else 0,
        }

    def failures(self) -> list[FileRow]:
        """Files that could not be indexed, with the reason in .error."""
        return self._store.rows_in_state(FAILED)

    # --- the pieces, loaded on first use -------------------------------------------------------

    def _get_encoder(self) -> ClipEncoder:
        with self._lock:
            if self._encoder is None:
                encoder = self._encoder_factory(self.spec, self._device)
                if self._store.get_info("model") is None:
                    self._store.set_info("embed_dim", encoder.embed_dim)
                    self._store.set_info("model", self.spec.to_record())
                self._encoder = encoder
            return self._encoder

    def _get_vectors(self, *, writer: bool) -> VectorIndex:
        with self._lock:
            if self._vectors is None:
                dim = self._store.get_info("embed_dim") or self._get_encoder().embed_dim
                self._vectors = self._load_vectors(dim, writer)
            return self._vectors

    def _load_vectors(self, dim: int, writer: bool) -> VectorIndex:
        """The FAISS cache when it matches the database; otherwise rebuilt from the stored vectors."""
        path = self.index_dir / FAISS_FILENAME
        state = self._store.get_info("faiss")
        if state and state.get("generation") == self._store.generation and path.exists():
            try:
                data = path.read_bytes()
                if zlib.crc32(data) == state.get("crc32"):
                    vectors = VectorIndex.from_bytes(data)
                    if vectors.dim == dim and len(vectors) == state.get("count"):
                        return vectors
            except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt below
                log.debug("cannot load %s: %s", path, e)
        vectors = VectorIndex(dim)
        for ids, chunk in self._store.iter_vectors():
            vectors.add(ids, chunk)
        if len(vectors) or path.exists():
            log.warning("rebuilt the vector cache %s from the database (%d vectors)", path, len(vectors))
        self._vectors = vectors
        if writer:
            self._save_vectors()
        else:
            try:  # save the rebuilt cache unless an indexer is running, which will save it anyway
                with writer_lock(self.index_dir / LOCK_FILENAME):
                    self._save_vectors()
            except (IndexLockedError, IndexWriteError, OSError):
                pass
        return vectors

    def _save_vectors(self) -> None:
        """Write the FAISS cache and record which database generation it holds (with a checksum)."""
        assert self._vectors is not None
        path = self.index_dir / FAISS_FILENAME
        data = self._vectors.to_bytes()
        try:
            write_atomic(path, data)
        except OSError as e:
            raise IndexWriteError(
                f"cannot save {path} ({e.strerror or e}); the index is intact and still answers "
                "queries: free disk space or fix the disk, then run the same command again"
            ) from None
        state = {"generation": self._store.generation, "count": len(self._vectors), "crc32": zlib.crc32(data)}
        self._store.set_info("faiss", state)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
