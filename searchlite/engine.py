"""SearchEngine: the facade users embed. It opens an index folder, builds the parts that work on it
and wires them together, delegates to them, and closes them: the model (models/hub.py), the files
callers name (media/named_files.py), the vectors in memory and every change (ingest/writer.py),
searches (query/searcher.py), duplicates, explanations, classification and tags (classify/)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .classify import probe, zeroshot
from .classify.classifier import DEFAULT_TAG_THRESHOLD, LinearClassifier
from .classify.labeller import Labeller, TagSet
from .classify.tags import Classification
from .config import DB_FILENAME, LOCK_FILENAME, IndexSettings, resolve_index_dir
from .errors import IndexNotFoundError, InvalidInputError, PathNotFoundError
from .ingest.writer import IndexWriter, OpenVectors, create_index, unmake_index
from .media.named_files import NamedFiles
from .models.encoder import ClipEncoder, ImageEncoder
from .models.hub import EncoderFactory, ModelHub
from .models.loading import load_encoder
from .models.spec import ModelSpec, spec_from_flags
from .query.duplicates import NEAR, DuplicateGroup, groups_in_index
from .query.explain import Explanation
from .query.filters import Filters
from .query.search import Hit, Hits
from .query.searcher import SearchOptions, Searcher, checked_filters
from .query import tuning
from .storage import recent_queries, transfer
from .storage.store import FAILED, SKIPPED, FileRow, Store
from .storage.vector_cache import VectorCache
from .storage.vector_index import VectorIndex

if TYPE_CHECKING:  # imported where used: a cold text query needs no decoders, an index run no text tower
    from .evaluation.report import EvalReport
    from .ingest.indexer import IndexReport, ProgressFn
    from .media.safe_read import ReadPolicy
    from .text.tower import TextTower

__all__ = ["Classification", "Filters", "Hit", "Hits", "SearchEngine"]

T = TypeVar("T")


class SearchEngine:
    """An open index: SearchEngine.open(), then close() (or `with`); search() is safe from many threads.
    read_policy: how files named by callers are opened and read (media/safe_read.py; a server sets
    one). remember_queries: whether close() keeps the last query vectors beside the index."""

    def __init__(
        self, index_dir: Path | None, store: Store, requested: ModelSpec | None, device: str | None = None,
        settings: IndexSettings | None = None, encoder_factory: EncoderFactory = load_encoder, *, model_given: bool = True, exists: bool = True,
    ) -> None:
        self.index_dir = index_dir
        # opened on a missing index: store is a stand-in in memory until the first write creates it
        self._unborn = index_dir is not None and not exists
        self._lock_created = False  # the write lock's file, by this engine's first write
        self.settings = settings or IndexSettings()
        self._store = store
        self._lock = threading.RLock()
        self.remember_queries = True
        try:
            self._models = ModelHub.of_index(store, requested, self.settings, index_dir=index_dir, model_given=model_given, device=device, encoder_factory=encoder_factory)
        except BaseException:  # the store this engine was to own
            store.close()
            raise
        self._files = NamedFiles(self.settings, self._models.image_encoder, self._models.image_batch_size)
        self._wire()

    def _wire(self) -> None:
        """Build the parts that work on the store (again when the missing index is created)."""
        store, folder = self._store, None if self._unborn else self.index_dir
        self._models.record = store
        self._labeller = Labeller(store, self._models, self._files)
        self._recent = recent_queries.RecentQueries(folder / recent_queries.FILENAME) if folder is not None else None
        if folder is not None:
            queries = tuning.TuningQueries(folder / tuning.FILENAME, self._models, self._recent)
            self._vectors = OpenVectors(store, VectorCache(folder, store), self._models, queries)
            self._writer = IndexWriter(folder, store, self._vectors, self._models, self._recent, self.settings)

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike[str] | None = None, *, model: str | None = None, pretrained: str | None = None,
        device: str | None = None, settings: IndexSettings | None = None, create: bool = True, encoder_factory: EncoderFactory = load_encoder,
    ) -> SearchEngine:
        """Open the index in index_dir (default: $SEARCHLITE_INDEX, else ./index). model/pretrained
        matter for a new index only (an existing one remembers its model; pretrained alone gives its
        checkpoint's new location). A missing index is created by the first write (index(),
        import_embeddings()); until then reading it raises IndexNotFoundError, at once with create=False."""
        path = resolve_index_dir(index_dir)
        exists = (path / DB_FILENAME).exists()
        if not exists and not create:
            raise _no_index(path)
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        # a mistyped folder opened to search must not become an empty index
        store = Store.open(path / DB_FILENAME) if exists else Store.in_memory()
        return cls(path, store, requested, device, settings, encoder_factory, model_given=model is not None, exists=exists)

    @classmethod
    def without_index(
        cls, *, model: str | None = None, pretrained: str | None = None, device: str | None = None,
        settings: IndexSettings | None = None, encoder_factory: EncoderFactory = load_encoder,
    ) -> SearchEngine:
        """An engine without an index that embeds, classifies and trains probes; writes nothing to disk."""
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        return cls(None, Store.in_memory(), requested, device, settings, encoder_factory)

    def _folder(self) -> Path:
        """The index folder; refuses without one, and on a missing index (created by the first write)."""
        if self.index_dir is None:
            raise InvalidInputError("this engine has no index: open one with SearchEngine.open(folder) to index, search or tag")
        if self._unborn:
            raise _no_index(self.index_dir)
        return self.index_dir

    def _create(self) -> None:
        """Create the missing index opened (its first write); it takes over the model its stand-in recorded."""
        with self._lock:
            if not self._unborn:
                return
            assert self.index_dir is not None
            self._lock_created = not (self.index_dir / LOCK_FILENAME).exists()
            stand_in, self._store = self._store, create_index(self.index_dir, self._store)
            stand_in.close()
            self._unborn = False
            self._wire()

    def _first_write(self, write: Callable[[], T]) -> T:
        """write() on the index, created first when missing; when that first write fails before
        recording anything, the new index is removed again (the engine is back to a missing index)."""
        born_here = self._unborn
        self._create()
        self._folder()
        try:
            return write()
        except BaseException:
            if born_here:
                with self._lock:
                    assert self.index_dir is not None
                    if unmake_index(self.index_dir, self._store, lock_created=self._lock_created):
                        self._store, self._unborn = Store.in_memory(), True
                        self._wire()
            raise

    def close(self) -> None:
        if self._recent is not None and self.remember_queries and not self._store.read_only:
            self._recent.save()
        self._files.close()
        self._store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def spec(self) -> ModelSpec:
        """The index's model."""
        return self._models.spec

    @property
    def read_policy(self) -> ReadPolicy | None:
        return self._files.read_policy

    @read_policy.setter
    def read_policy(self, policy: ReadPolicy | None) -> None:
        self._files.read_policy = policy

    # --- changes -------------------------------------------------------------------------------

    def index(self, folder: str | os.PathLike[str], progress: ProgressFn | None = None, *, ray: str | None = None, shared_fs: bool | None = None) -> IndexReport:
        """Bring the index in line with folder (new, changed, moved and deleted files), reading only what
        changed; ray: encode on that Ray cluster, shared_fs: whether its workers see folder (IndexWriter.index)."""
        root = os.path.abspath(os.fspath(folder))
        if not os.path.exists(root):
            raise PathNotFoundError(f"folder {folder} not found")
        return self._first_write(lambda: self._writer.index(root, progress, ray=ray, shared_fs=shared_fs))

    def export_embeddings(self, npy_path: str | os.PathLike[str]) -> int:
        """Write every stored vector to npy_path, and beside it what import_embeddings() reads (storage/transfer.py). Returns n."""
        self._folder()
        return transfer.export_embeddings(self._store, Path(npy_path))

    def import_embeddings(self, npy_path: str | os.PathLike[str], paths_path: str | os.PathLike[str]) -> tuple[int, int]:
        """Load embeddings made elsewhere by this index's model (IndexWriter.import_embeddings). Returns
        (embeddings imported, files not found here)."""
        return self._first_write(lambda: self._writer.import_embeddings(Path(npy_path), Path(paths_path)))

    def optimize(self, *, force: bool = True, memory_budget: int | None = None, structure: str = "auto") -> dict[str, Any]:
        """Rebuild the vector index for its size (structure "auto") or as one of exact, ivf, hnsw,
        ivfpq, hnswpq, tuned on text queries (IndexWriter.optimize). Returns what was chosen."""
        self._folder()
        return self._writer.optimize(force=force, memory_budget=memory_budget, structure=structure)

    # --- search --------------------------------------------------------------------------------

    def search(
        self, text: str | Sequence[str] | None = None, *, image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        negative: str | Sequence[str] | None = None, k: int = 10, tag: str | None = None, type: str | None = None, filters: Filters | None = None,
        sort: str | None = None, min_score: float | None = None, all_ranked: bool = False, limit: int | None = None, **filter_values: Any,
    ) -> Hits:
        """Top-k files by cosine similarity to the query: texts and images (one or a list, each may
        carry a weight as "2::beach") less the negatives. The options (a tag, a type, filters or
        their fields, sort by date, min_score, all_ranked and its limit) are SearchOptions' (query/searcher.py)."""
        options = SearchOptions.checked(k=k, tag=tag, type=type, filters=filters, sort=sort, min_score=min_score, all_ranked=all_ranked, limit=limit,
                                        filter_values=filter_values)
        return self._searcher().search(_as_list(text), _as_list(image), _as_list(negative), options)

    def search_vector(
        self, vector: np.ndarray | Sequence[float], *, k: int = 10, tag: str | None = None, type: str | None = None, filters: Filters | None = None,
        sort: str | None = None, min_score: float | None = None, all_ranked: bool = False, limit: int | None = None, **filter_values: Any,
    ) -> Hits:
        """search() for a query embedding made elsewhere, (d,) or (1, d) (stored_vector's, a client's); normalised here."""
        options = SearchOptions.checked(k=k, tag=tag, type=type, filters=filters, sort=sort, min_score=min_score, all_ranked=all_ranked, limit=limit,
                                        filter_values=filter_values)
        return self._searcher().search_vector(vector, options)

    def _searcher(self) -> Searcher:
        self._folder()
        save = self.remember_queries and not self._store.read_only  # as close() does
        return Searcher(self._store, self._vectors.searched(), self._models, self._files, self._recent, save_recent=save)

    def filters(self, filters: Filters | None = None, **values: Any) -> Filters | None:
        """Filters from a Filters and/or its fields as keyword arguments, checked, a place resolved (.place_chosen)."""
        return checked_filters(filters, **values)

    def duplicates(self, tier: str = NEAR, *, path: str | os.PathLike[str] | None = None) -> list[DuplicateGroup]:
        """Groups of duplicate images of tier "exact", "near" or "similar" (query/duplicates.py), largest first,
        each with a suggested keeper; path: only under this folder or glob. Never deletes anything."""
        self._folder()
        return groups_in_index(self._store, tier, lambda file: self.decode_image(file, min_side=64), path)

    def files(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed files by id; ids that are not indexed are absent."""
        self._folder()
        return self._store.fetch(int(i) for i in ids)

    def stored_vector(self, image_id: int) -> np.ndarray | None:
        """The stored unit embedding (d,) of an indexed file, or None when the id is not indexed."""
        self._folder()
        row = self._store.fetch([int(image_id)]).get(int(image_id))
        return None if row is None or row.content_hash is None else self._store.vector_for_hash(row.content_hash)

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index of the stored vectors, loaded (or rebuilt from SQLite) on first use."""
        self._folder()
        return self._vectors.get()

    @property
    def sql_engine(self) -> Any:
        """The SQLAlchemy engine of the index's database: select from searchlite.storage.tables (docs/library.md)."""
        self._folder()
        return self._store.engine

    # --- files and the model -------------------------------------------------------------------

    def decode_image(self, path: str | os.PathLike[str], *, min_side: int | None = None, at: float = 0.0, read: ReadPolicy | None = None) -> Any:
        """The picture in a file as a viewer shows it (a PIL image; NamedFiles.decode). Safe from many threads."""
        return self._files.decode(os.fspath(path), min_side=min_side, at=at, read=read)

    def explain(
        self, image: str | os.PathLike[str], text: str, *, output: str | os.PathLike[str] | None = None, scale: float | None = None,
        read: ReadPolicy | None = None,
    ) -> Explanation:
        """Where text matches in an image file, cell by cell, and its peak (query/explain.py); output: the heat map (PNG)."""
        from .query.explain import explain_file

        return explain_file(os.fspath(image), text, self._models, self._files, output=output, scale=scale, read=read)

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Unit text embeddings (n, d) from the index's model, one row per text (a single string is one text)."""
        return self._models.embed_text(_as_list(texts))

    def embed_images(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Unit image embeddings (n, d), decoded as indexing decodes; an unreadable file raises naming it."""
        return self._files.embed_all([os.fspath(p) for p in _as_list(paths)])

    def text_encoder(self) -> ClipEncoder | TextTower:
        """What embeds text: the text tower exported to the user's cache (no torch), else the torch model."""
        return self._models.text_encoder()

    def image_encoder(self) -> ImageEncoder:
        """What embeds images: on a CPU the image tower exported to the user's cache (no torch), else the torch model."""
        return self._models.image_encoder()

    def load_model(self) -> ClipEncoder:
        """The index's CLIP model, loaded on first use (a new index records it then)."""
        return self._models.load_model()

    @property
    def model_loaded(self) -> bool:
        """Whether the torch model has been loaded (text queries and runs with nothing to encode never load it)."""
        return self._models.loaded

    def model_key(self) -> str:
        """Identifies the model's weights (not where its checkpoint lives)."""
        return self._models.key()

    # --- reporting -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts, model and sizes on disk. Loads no model."""
        from .ingest.status import index_info

        return index_info(self._store, self._folder())

    def failures(self) -> list[FileRow]:
        """Files that could not be indexed, with the reason in .error."""
        return self._store.rows_in_state(FAILED)

    def skipped(self) -> list[FileRow]:
        """Files not indexed on purpose (not images, links out of the collection), with the reason in .error."""
        return self._store.rows_in_state(SKIPPED)

    # --- CLIP beyond search: zero-shot classification, tags, linear probes ----------------------

    def zero_shot(self, labels: str | Sequence[str], templates: str | None = None) -> LinearClassifier:
        """The zero-shot classifier for labels; templates: None/"single", "imagenet" (the CLIP paper's 80) or a file."""
        return self._labeller.zero_shot(zeroshot.LabelSet.parse(labels, templates))

    def classify(self, paths: Sequence[str | os.PathLike[str]], labels: str | Sequence[str], templates: str | None = None) -> list[Classification]:
        """Zero-shot verdicts on image files (indexed or not); a file that cannot be read gets an error."""
        return self._labeller.classify(paths, zeroshot.LabelSet.parse(labels, templates))

    def tag(self, labels: str | Sequence[str], templates: str | None = None, *, name: str = "tags", threshold: float = DEFAULT_TAG_THRESHOLD) -> int:
        """Tag indexed images (later runs' too) with their best zero-shot label and others reaching threshold."""
        self._folder()
        self._store.check_writable()  # before any model is loaded
        return self._keep(self._labeller.zero_shot_tags(name, zeroshot.LabelSet.parse(labels, templates), templates, threshold))

    def train_probe(self, folder: str | os.PathLike[str]) -> probe.ProbeFit:
        """Fit a linear probe on a folder with one subfolder of example images per label."""
        return self._labeller.fit_probe(folder)

    def save_probe(self, fitted: probe.ProbeFit, path: str | os.PathLike[str]) -> None:
        """Write a fitted probe (.npz) that remembers this index's model."""
        probe.save(path, fitted, self.model_key())

    def apply_probe(self, path: str | os.PathLike[str], *, name: str | None = None, threshold: float = DEFAULT_TAG_THRESHOLD) -> int:
        """Tag the index with a saved probe (its name defaults to the file's stem)."""
        self._folder()
        self._store.check_writable()
        return self._keep(self._labeller.probe_tags(path, name, threshold))

    def _keep(self, tags: TagSet) -> int:
        self._folder()
        with self._writer.lock():
            return self._labeller.keep(tags)

    def evaluate(
        self, folder: str | os.PathLike[str] | None = None, *, captions: str | os.PathLike[str] | None = None,
        templates: str | Sequence[str] = "single,imagenet", shots: str | Sequence[int] | None = None, draws: int = 5, seed: int = 0,
        plot: str | os.PathLike[str] | None = None, progress: Callable[[str, int, int], None] | None = None,
    ) -> EvalReport:
        """The CLIP paper's protocol on your data (protocol.EvalSettings); an EvalReport. progress(stage, done, total)."""
        from .evaluation import protocol

        settings = protocol.EvalSettings(folder, captions, templates, shots, draws, seed, plot)
        return protocol.evaluate(self._store, self._models, self._files, self._labeller, settings, progress)


def _no_index(path: Path) -> IndexNotFoundError:
    path = Path(os.path.abspath(path))  # "no index in index" would say little
    return IndexNotFoundError(f"no index in {path}: index a folder into it first", setting="index_dir", problem=f"no index in {path}", index_dir=path)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
