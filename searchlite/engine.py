"""SearchEngine: the facade users embed. Opens an index folder and delegates: indexing to
ingest/, searching to query/, classification and tags to classify/, the FAISS cache and
import/export to storage/, the text tower to text/. It owns the open store, the loaded model and
the vectors in memory, and the write lock around every change."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .classify import probe, zeroshot
from .classify.classifier import DEFAULT_TAG_THRESHOLD, LinearClassifier
from .classify.tags import Classification, classify, refresh_tags, store_tag_set
from .config import DB_FILENAME, FAISS_FILENAME, LOCK_FILENAME, IndexSettings, resolve_index_dir
from .errors import (
    IndexNotFoundError,
    InvalidInputError,
    InvalidQueryError,
    ModelMismatchError,
    PathNotFoundError,
    SearchliteError,
    TagNotFoundError,
    file_error,
)
from .ingest import scanner
from .ingest.indexer import Indexer, IndexReport, ProgressFn
from .media.decode_worker import DecodePool
from .media.embed_files import embed_files, read_image_file
from .models.encoder import ClipEncoder
from .models.loading import load_encoder
from .models.spec import ModelSpec, reconcile, spec_from_flags
from .query.phrases import tuning_phrases
from .query.search import Hit, query_vector, search
from .query.terms import parse_terms
from .storage import transfer
from .storage.recent_queries import FILENAME as RECENT_QUERIES_FILENAME
from .storage.recent_queries import RecentQueries
from .storage.store import FAILED, INDEXED, SKIPPED, FileRow, Store
from .storage.vector_cache import VectorCache
from .storage.vector_index import VectorIndex
from .storage.writelock import writer_lock
from .text.cache import TextCache
from .text.export import export_text_tower
from .text.tower import FILENAME as TEXT_TOWER_FILENAME
from .text.tower import TextTower

log = logging.getLogger(__name__)

MIN_RECENT_QUERIES = 20  # recent queries needed to re-check approximate search on them
RECHECK_GROWTH = 0.1  # re-checked after an index run that grew the index by this fraction

EncoderFactory = Callable[[ModelSpec, "str | None"], ClipEncoder]

__all__ = ["Classification", "Hit", "SearchEngine"]


class SearchEngine:
    """An open index. Use SearchEngine.open(); close it (or use `with`) when done.

    search() is safe to call from many threads. SearchEngine.without_index() gives one with no index
    folder, which embeds and classifies files but cannot index, search or tag.
    """

    def __init__(
        self,
        index_dir: Path | None,
        store: Store,
        requested: ModelSpec | None,
        device: str | None = None,
        settings: IndexSettings | None = None,
        encoder_factory: EncoderFactory = load_encoder,
        *,
        model_given: bool = True,
    ) -> None:
        self.index_dir = index_dir
        self.settings = settings or IndexSettings()
        self._store = store
        self._device = device
        self._encoder_factory = encoder_factory
        self._lock = threading.RLock()  # guards lazy loading
        self._encoder: ClipEncoder | None = None
        self._text_tower: TextTower | None = None
        self._tower_checked = False  # whether the export beside the index has been looked for
        self._text_cache = TextCache()
        self._cache = VectorCache(index_dir, store) if index_dir is not None else None
        self._vectors: VectorIndex | None = None
        # the last query vectors, kept beside the index (at close) to re-check approximate search on;
        # an engine that must not write to its index (the server's) sets remember_queries = False
        self._recent = RecentQueries(index_dir / RECENT_QUERIES_FILENAME) if index_dir is not None else None
        self.remember_queries = True
        self.model_load_seconds = 0.0  # spent loading the model in this process
        self._decoders: DecodePool | None = None  # decoder processes kept for query images, made on first use
        recorded = store.get_info("model")
        if recorded is not None:
            self.spec = reconcile(ModelSpec.from_record(recorded), requested, index_dir, model_given=model_given)
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
        index remembers its model (pretrained alone gives its checkpoint's new location, once it
        moved). With create=False a missing index raises IndexNotFoundError. Flags are checked
        before anything is created: a refused open leaves no folder behind.
        """
        path = resolve_index_dir(index_dir)
        db = path / DB_FILENAME
        if not db.exists() and not create:
            raise IndexNotFoundError(f"no index in {path}: index a folder into it first", setting="index_dir")
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise file_error(path, e, writing=True, what="index folder") from None
        try:
            store = Store.open(db, create=create)
            try:
                return cls(path, store, requested, device, settings, encoder_factory, model_given=model is not None)
            except BaseException:
                store.close()
                raise
        except BaseException:
            if created:  # leave no empty index behind
                _remove_new_index(path)
            raise

    @classmethod
    def without_index(
        cls,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        settings: IndexSettings | None = None,
        encoder_factory: EncoderFactory = load_encoder,
    ) -> SearchEngine:
        """An engine with no index folder, for the model given (default: the default model): it
        embeds texts and image files, classifies files and trains probes, and writes nothing to disk
        (zero-shot class weights are cached in memory). index(), search(), tag() and the other
        methods that need an index raise InvalidInputError."""
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        store = Store.in_memory()
        try:
            return cls(None, store, requested, device, settings, encoder_factory)
        except BaseException:
            store.close()
            raise

    def _folder(self) -> Path:
        """The index folder; an engine without one refuses what needs it."""
        if self.index_dir is None:
            raise InvalidInputError("this engine has no index: open one with SearchEngine.open(folder) to index, search or tag")
        return self.index_dir

    def close(self) -> None:
        if self._recent is not None and self.remember_queries and not self._store.read_only:
            self._recent.save()
        if self._decoders is not None:
            self._decoders.close()
            self._decoders = None
        self._store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- indexing ------------------------------------------------------------------------------

    def index(self, folder: str | os.PathLike[str], progress: ProgressFn | None = None) -> IndexReport:
        """Bring the index in line with folder: add new files, re-encode changed ones, follow moves,
        drop deleted ones. Only what changed since the last run is read."""
        index_dir = self._folder()
        self._store.check_writable()
        root = os.path.abspath(os.fspath(folder))
        if not os.path.exists(root):
            raise PathNotFoundError(f"folder {folder} not found")
        started = time.monotonic()
        loading_before = self.model_load_seconds
        with self._writing():
            self._record_checkpoint_location()
            vectors = self._get_vectors(writer=True)
            indexer = Indexer(
                self._store,
                vectors,
                self.load_model,
                self.settings,
                on_snapshot=self._save_vectors,
                exclude=[str(index_dir.resolve()), os.path.abspath(index_dir)],
            )
            try:
                report = indexer.run(root, progress)
                if vectors.optimize_if_large(queries=self._tuning_queries):
                    log.warning("%d vectors: built a %s index, tuned on text queries", len(vectors), vectors.kind)
                elif vectors.kind != "exact" and self._recent is not None and len(recent := self._recent.vectors()) >= MIN_RECENT_QUERIES:
                    checked = vectors.retune(recent, min_growth=RECHECK_GROWTH)
                    if checked and "nprobe" in checked:
                        log.warning("recall@10 on recent queries was %s: now probing %d lists", checked["recall_before"], checked["nprobe"])
            except BaseException:
                # Interrupted between a batch's commit and its FAISS update, the vectors in memory
                # lag the database: then keep the older cache, which the next open rebuilds.
                if not np.array_equal(np.sort(vectors.ids()), self._store.indexed_ids()):
                    self._vectors = None
                raise
            finally:
                if self._vectors is not None:
                    self._save_vectors()
            if self._encoder is not None:
                self._export_text_tower(self._encoder)
            report.tagged = refresh_tags(self._store)
            # the run's own time, and apart from it the model's loading (seconds of start-up that
            # later runs in the same process do not pay again)
            report.model_seconds = self.model_load_seconds - loading_before
            report.seconds = time.monotonic() - started - report.model_seconds
            return report

    # --- search --------------------------------------------------------------------------------

    def search(
        self,
        text: str | Sequence[str] | None = None,
        *,
        image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        negative: str | Sequence[str] | None = None,
        k: int = 10,
        tag: str | None = None,
    ) -> list[Hit]:
        """Top-k images by cosine similarity to the query.

        text, image and negative each take one item or a list; a term may carry a weight as
        "2::beach" (a number and a double colon; a single colon is plain text, and an image path
        that exists as given is never split). Texts and images add up, negatives subtract, and the
        sum is re-normalised. tag keeps only images carrying that tag (see tag()); a tag that no
        tag set of the index has raises TagNotFoundError listing the known ones.
        """
        if k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        terms = parse_terms(_as_list(text), _as_list(image), _as_list(negative))
        index_dir = self._folder()
        if self._vectors is None and self._store.get_info("model") is None:
            raise IndexNotFoundError(f"the index in {index_dir} is empty: index a folder into it first", setting="index_dir")
        vectors = self.vectors
        among = self._among(tag)
        if among is not None and not len(among):
            return []
        query = query_vector(terms, self.embed_text, lambda paths: self._embed_images(paths, "query image"))
        self._remember(query)
        return search(self._store, vectors, query, k, among)

    def _remember(self, query: np.ndarray) -> None:
        if self._recent is not None:
            self._recent.add(query)

    def _among(self, tag: str | None) -> np.ndarray | None:
        """The ids to search among: those carrying tag (searched exactly, however rare the tag);
        None for all."""
        if tag is None:
            return None
        known = sorted({label for tag_set in self._store.tag_sets() for label in tag_set.labels})
        if tag not in known:
            if not known:
                raise TagNotFoundError(
                    f"unknown tag {tag!r}: this index has no tags yet; tag its images first with zero-shot "
                    "labels (searchlite tag, SearchEngine.tag) or a probe (searchlite probe apply)"
                )
            raise TagNotFoundError(f"unknown tag {tag!r}: this index's tags are {', '.join(known)}")
        return np.fromiter(self._store.ids_tagged(tag), dtype=np.int64)

    def search_vector(self, vector: np.ndarray | Sequence[float], *, k: int = 10, tag: str | None = None) -> list[Hit]:
        """search() for a query embedding made elsewhere (d,) or (1, d), e.g. a stored one
        (stored_vector) or a client's; it is normalised here."""
        if k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        vectors = self.vectors
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != vectors.dim or not np.all(np.isfinite(query)):
            raise InvalidQueryError(f"a query embedding must be {vectors.dim} finite numbers, got {query.shape[1]}")
        norm = float(np.linalg.norm(query))
        if norm == 0.0:
            raise InvalidQueryError("a query embedding must not be all zeros")
        among = self._among(tag)
        if among is not None and not len(among):
            return []
        query = np.ascontiguousarray(query / norm)
        self._remember(query)
        return search(self._store, vectors, query, k, among)

    def files(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed files by id; ids that are not indexed are absent."""
        return self._store.fetch(int(i) for i in ids)

    def stored_vector(self, image_id: int) -> np.ndarray | None:
        """The stored unit embedding (d,) of an indexed file, or None when the id is not indexed."""
        row = self._store.fetch([int(image_id)]).get(int(image_id))
        if row is None or row.content_hash is None:
            return None
        return self._store.vector_for_hash(row.content_hash)

    def decode_image(self, path: str | os.PathLike[str], *, min_side: int | None = None) -> Any:
        """The picture in a file as a viewer shows it (RGB, EXIF orientation applied, a PIL image),
        decoded in an isolated decoder process under the index's time and memory limits; with
        min_side, reduced cheaply to no less than twice that on its shorter side. Raises
        PathNotFoundError or ImageDecodeError. Safe from many threads (a pool of decoders)."""
        data = read_image_file(os.fspath(path))
        return self._decoder_pool().decode(data, min_side=min_side, max_pixels=self.settings.max_pixels).image

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Unit text embeddings (n, d) from the index's model, one row per text (a single string is
        one text); repeated texts come from a cache."""
        return self._text_cache.encode(_as_list(texts), self.text_encoder().encode_texts)

    def embed_images(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Unit image embeddings (n, d), decoded as indexing decodes; a file that cannot be read
        raises PathNotFoundError or ImageDecodeError naming it."""
        return self._embed_images([os.fspath(p) for p in _as_list(paths)], "file")

    def _embed_images(self, paths: list[str], what: str) -> np.ndarray:
        vectors, errors = self._embed_files(paths, what)
        if errors:
            raise next(iter(errors.values()))
        return np.stack([vectors[p] for p in paths])

    def _embed_files(self, paths: list[str], what: str = "file") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        def batch_size() -> int:
            return self.settings.batch_size_on(self._encoder.device if self._encoder else "cpu")

        return embed_files(paths, self.settings, self.load_model, batch_size, what, self._decoder_pool())

    def _decoder_pool(self) -> DecodePool:
        """Decoder processes kept for query images, classification and decode_image (started on
        first use, stopped by close())."""
        with self._lock:
            if self._decoders is None:
                self._decoders = DecodePool(self.settings.workers, self.settings.decode_timeout_s, self.settings.decoder_memory_limit)
            return self._decoders

    def text_encoder(self) -> ClipEncoder | TextTower:
        """What embeds text: the text tower exported beside the index, which gives the torch model's
        embeddings without importing torch (seconds saved per cold query); the torch model where
        there is no usable export, which is then written."""
        tower = self._text_tower
        if tower is not None:  # no lock once loaded: text queries never wait on the image tower loading
            return tower
        with self._lock:
            if self.index_dir is None:  # nowhere to keep an export: the model itself
                return self.load_model()
            if self._text_tower is None and not self._tower_checked and self._store.get_info("model") is not None:
                self._tower_checked = True
                self._text_tower = TextTower.load(self.index_dir / TEXT_TOWER_FILENAME, self.model_key())
                if self._text_tower is None:  # none was usable: an older index, or a damaged one
                    self._export_text_tower(self.load_model())
            return self._text_tower or self.load_model()

    def _export_text_tower(self, encoder: ClipEncoder) -> None:
        if self._text_tower is None:  # once in use (its onnxruntime session too), it stays
            self._text_tower = export_text_tower(encoder, self.index_dir / TEXT_TOWER_FILENAME, self.model_key())

    @property
    def model_loaded(self) -> bool:
        """Whether the torch model has been loaded (text queries and index runs with nothing new
        to encode never load it)."""
        return self._encoder is not None

    def load_model(self) -> ClipEncoder:
        """The index's CLIP model, loaded on first use (a new index records it then)."""
        with self._lock:
            if self._encoder is None:
                started = time.monotonic()
                encoder = self._encoder_factory(self.spec, self._device)
                encoder.choose_precision(self.settings.precision)
                self.model_load_seconds += time.monotonic() - started
                if not self._store.read_only:
                    self._record_model(encoder.embed_dim)
                self._encoder = encoder
            return self._encoder

    def _record_model(self, dim: int) -> None:
        """A new index records the model that fills it and its embedding dimension."""
        if self._store.get_info("model") is None:
            self._store.set_info("embed_dim", dim)
            self._store.set_info("model", self.spec.to_record())

    def _record_checkpoint_location(self) -> None:
        """An index opened with its checkpoint's new location (the same weights) records it, so
        that later commands find the checkpoint without flags."""
        recorded = self._store.get_info("model")
        if recorded is not None and recorded != self.spec.to_record():
            self._store.set_info("model", self.spec.to_record())
            log.info("recorded the checkpoint's new location: %s", self.spec.checkpoint)

    # --- reporting -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts, model and sizes on disk. Loads no model."""
        index_dir = self._folder()
        counts = self._store.counts()
        recorded = self._store.get_info("model")
        db = index_dir / DB_FILENAME
        db_bytes = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
        faiss_file = index_dir / FAISS_FILENAME
        links = sum(r.error == scanner.LINK_OUT_OF_COLLECTION for r in self.skipped()) if counts.get(SKIPPED) else 0
        return {
            "index": str(index_dir.resolve()),
            "images": counts.get(INDEXED, 0),
            "failed": counts.get(FAILED, 0),
            "not_images": counts.get(SKIPPED, 0) - links,
            "links_not_followed": links,
            "model": ModelSpec.from_record(recorded).describe() if recorded else None,
            "dim": self._store.get_info("embed_dim"),
            "database_bytes": db_bytes,
            "vectors_bytes": faiss_file.stat().st_size if faiss_file.exists() else 0,
            "vector_index": (self._store.get_info("faiss") or {}).get("kind", "exact"),
            "tags": self._store.tag_counts(),
        }

    def failures(self) -> list[FileRow]:
        """Files that could not be indexed, with the reason in .error."""
        return self._store.rows_in_state(FAILED)

    def skipped(self) -> list[FileRow]:
        """Files not indexed on purpose, with the reason in .error: not images, and links to files
        out of the collection (followed with follow_links)."""
        return self._store.rows_in_state(SKIPPED)

    # --- import / export -----------------------------------------------------------------------

    def export_embeddings(self, npy_path: str | os.PathLike[str]) -> int:
        """Write every stored embedding to npy_path (float32 (n, d)) and, line by line in the same
        order, {"path": ...} objects to the .jsonl beside it. Returns n."""
        return transfer.export_embeddings(self._store, Path(npy_path))

    def import_embeddings(self, npy_path: str | os.PathLike[str], paths_path: str | os.PathLike[str]) -> tuple[int, int]:
        """Load embeddings computed elsewhere (by this index's model) for files that exist here:
        npy_path holds float32 (n, d); paths_path the n paths, as .jsonl {"path": ...} lines or plain
        lines. Later index runs treat these files as unchanged. Returns (imported, not found here)."""
        self._store.check_writable()
        dim = self._store.get_info("embed_dim") or self.load_model().embed_dim
        matrix, paths = transfer.read_embeddings(Path(npy_path), Path(paths_path), dim, self.spec.describe())
        with self._writing():
            self._record_checkpoint_location()
            self._record_model(dim)
            counts = transfer.import_rows(self._store, self._get_vectors(writer=True), matrix, paths)
            self._save_vectors()
            refresh_tags(self._store)
        return counts

    def optimize(self, *, force: bool = True, memory_budget: int | None = None) -> dict[str, Any]:
        """Rebuild the vector index for its size: approximate when large or forced, exact otherwise;
        IVF-Flat while the vectors fit memory_budget bytes (default: a quarter of the machine's
        memory), IVF-PQ re-ranked with the vectors in SQLite past it. Its probes are tuned on text
        queries (a fixed set of generic photo-search phrases, embedded with the index's text tower)
        and the recent real queries. Returns what was chosen."""
        self._store.check_writable()
        with self._writing():
            vectors = self._get_vectors(writer=True)
            try:
                chosen = vectors.optimize(queries=self._tuning_queries(), force=force, memory_budget=memory_budget)
            except BaseException:
                self._vectors = None  # half rebuilt: the saved cache (or SQLite) is read again
                raise
            self._save_vectors()
            return chosen

    def _tuning_queries(self) -> np.ndarray | None:
        """What approximate search is tuned on: the index's text tower's embeddings of generic
        photo-search phrases, and the recent real queries; None when no text model can load (then
        the indexed vectors stand in)."""
        parts = []
        try:
            parts.append(self.embed_text(tuning_phrases()))
        except SearchliteError as e:
            log.warning("tuning approximate search on the indexed vectors: no text model (%s)", e)
        if self._recent is not None:
            recent = self._recent.vectors()
            if len(recent) and (not parts or recent.shape[1] == parts[0].shape[1]):
                parts.append(recent)
        return np.concatenate(parts).astype(np.float32) if parts else None

    # --- CLIP beyond search: zero-shot classification, tags, linear probes ----------------------

    def zero_shot(self, labels: str | Sequence[str], templates: str | None = None) -> LinearClassifier:
        """The zero-shot classifier for labels; templates: None/"single", "imagenet" (the CLIP
        paper's 80-template ensemble) or a file. Its class weights are cached in the index."""
        return self._zero_shot(zeroshot.LabelSet.parse(labels, templates))

    def _zero_shot(self, label_set: zeroshot.LabelSet) -> LinearClassifier:
        key = label_set.key(self.model_key())
        cached = self._store.cached_weights(key)
        if cached is not None:
            n = len(label_set.labels)
            return LinearClassifier(label_set.labels, cached.reshape(n, -1), np.zeros(n, np.float32))
        classifier = zeroshot.build(label_set, self.embed_text, self.load_model().logit_scale)
        self._store.cache_weights(key, classifier.weights)
        return classifier

    def classify(
        self, paths: Sequence[str | os.PathLike[str]], labels: str | Sequence[str], templates: str | None = None
    ) -> list[Classification]:
        """Zero-shot classify image files (indexed or not); a file that cannot be read gets an error
        ("file … not found" for a missing one). Missing files are found before any model is loaded."""
        label_set = zeroshot.LabelSet.parse(labels, templates)
        names = [os.fspath(p) for p in paths]
        missing: dict[str, Any] = {p: PathNotFoundError(f"file {p} not found") for p in names if not os.path.exists(p)}
        present = [p for p in names if p not in missing]
        if not present:
            return [Classification(p, None, None, error=str(missing[p])) for p in names]
        classifier = self._zero_shot(label_set)
        vectors, errors = self._embed_files(present)
        return classify(classifier, names, vectors, errors | missing)

    def tag(
        self,
        labels: str | Sequence[str],
        templates: str | None = None,
        *,
        name: str = "tags",
        threshold: float = DEFAULT_TAG_THRESHOLD,
    ) -> int:
        """Tag every indexed image with the zero-shot labels (kept up to date by later index runs).
        An image carries its best label, and any other label whose probability reaches threshold.
        A new label set under the same name replaces the old one. Returns images newly tagged."""
        self._store.check_writable()  # before any model is loaded
        label_set = zeroshot.LabelSet.parse(labels, templates)
        classifier = self._zero_shot(label_set)
        key = label_set.key(self.model_key())
        source = f"zero-shot, templates: {templates or 'single'}"
        return self.apply_classifier(name, classifier, key=f"{key}:{threshold}", threshold=threshold, source=source)

    def train_probe(self, folder: str | os.PathLike[str]) -> probe.ProbeFit:
        """Fit a linear probe on a folder with one subfolder of example images per label."""
        root = Path(folder)
        if not root.is_dir():
            raise PathNotFoundError(f"folder {folder} not found")
        paths, labels = [], []
        try:
            subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not scanner.is_hidden(p.name))
        except OSError as e:
            raise file_error(root, e, writing=False, what="folder") from None
        for sub in subfolders:
            for f in scanner.scan(sub):
                if f.error is None and f.skip is None:
                    paths.append(f.path)
                    labels.append(sub.name)
        vectors, errors = self._embed_files(paths)
        for path, error in errors.items():
            log.warning("skipping %s: %s", path, error)
        kept = [i for i, p in enumerate(paths) if p not in errors]
        if not kept:
            raise InvalidInputError(f"no images in the subfolders of {folder}: make one subfolder of examples per label")
        return probe.fit(np.stack([vectors[paths[i]] for i in kept]), [labels[i] for i in kept])

    def save_probe(self, fitted: probe.ProbeFit, path: str | os.PathLike[str]) -> None:
        """Write a fitted probe (.npz) that remembers this index's model."""
        probe.save(path, fitted, self.model_key())

    def apply_probe(self, path: str | os.PathLike[str], *, name: str | None = None, threshold: float = DEFAULT_TAG_THRESHOLD) -> int:
        """Tag the index with a saved probe (its name defaults to the file's stem)."""
        self._store.check_writable()
        classifier, model_key = probe.load(path)
        if model_key != self.model_key():
            raise ModelMismatchError(
                f"probe {path} was trained with another model than this index's ({self.spec.describe()}); "
                "train it again on this index"
            )
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self.apply_classifier(
            name or Path(path).stem, classifier, key=f"{digest}:{threshold}", threshold=threshold, source=f"probe {path}"
        )

    def apply_classifier(self, name: str, classifier: LinearClassifier, *, key: str, threshold: float, source: str) -> int:
        """Store a classifier as the tag set `name` and tag the images it has not seen yet."""
        with self._writing():
            store_tag_set(self._store, name, classifier, key=key, threshold=threshold, source=source)
            return refresh_tags(self._store)

    def model_key(self) -> str:
        """Identifies the model's weights (not where its checkpoint lives)."""
        record = {k: v for k, v in self.spec.to_record().items() if k != "checkpoint"}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    # --- the vectors in memory -----------------------------------------------------------------

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index of the stored vectors, loaded (or rebuilt from SQLite) on first use."""
        return self._get_vectors(writer=False)

    def _get_vectors(self, *, writer: bool) -> VectorIndex:
        with self._lock:
            if self._vectors is None:
                if self._cache is None:
                    self._folder()  # raises: no index, no vectors
                dim = self._store.get_info("embed_dim") or self.load_model().embed_dim
                self._vectors = self._cache.load(dim, writer=writer, queries=self._tuning_queries)
            return self._vectors

    def _save_vectors(self) -> None:
        assert self._vectors is not None and self._cache is not None
        self._cache.save(self._vectors)

    def _writing(self) -> Any:
        """The index's write lock (one writer at a time, across processes)."""
        return writer_lock(self._folder() / LOCK_FILENAME)


def _remove_new_index(path: Path) -> None:
    """Remove an index folder this process has just created (only its database files)."""
    for name in (DB_FILENAME, DB_FILENAME + "-wal", DB_FILENAME + "-shm"):
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
