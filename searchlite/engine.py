"""SearchEngine: the facade users embed. It opens an index folder, builds the parts that work on it
and wires them together, delegates to them, and closes them: the model (models/hub.py), the files
callers name (media/named_files.py), the vectors in memory and every change (ingest/writer.py),
searches (query/searcher.py), duplicates, explanations, classification and tags (classify/)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .classify import probe, zeroshot
from .classify.classifier import DEFAULT_TAG_THRESHOLD, LinearClassifier
from .classify.labeller import Labeller, TagSet
from .classify.tags import Classification
from .config import DB_FILENAME, IndexSettings, resolve_index_dir
from .errors import IndexNotFoundError, InvalidInputError, PathNotFoundError, file_error
from .ingest.writer import IndexWriter, OpenVectors
from .media.named_files import NamedFiles
from .models.encoder import ClipEncoder, ImageEncoder
from .models.hub import EncoderFactory, ModelHub
from .models.loading import load_encoder
from .models.spec import ModelSpec, reconcile, spec_from_flags
from .query.duplicates import NEAR, DuplicateGroup
from .query.explain import Explanation
from .query.filters import Filters
from .query.search import Hit
from .query.searcher import SearchOptions, Searcher, checked_filters
from .query.tuning import FILENAME as TUNING_FILENAME
from .query.tuning import TuningQueries
from .storage import transfer
from .storage.recent_queries import FILENAME as RECENT_QUERIES_FILENAME
from .storage.recent_queries import RecentQueries
from .storage.store import FAILED, SKIPPED, FileRow, Store
from .storage.vector_cache import VectorCache
from .storage.vector_index import VectorIndex

if TYPE_CHECKING:  # imported where used: a cold text query needs no decoders, an index run no text tower
    from .evaluation.report import EvalReport
    from .ingest.indexer import IndexReport, ProgressFn
    from .media.safe_read import ReadPolicy
    from .text.tower import TextTower

__all__ = ["Classification", "Filters", "Hit", "SearchEngine"]


class SearchEngine:
    """An open index. Use SearchEngine.open(); close it (or use `with`) when done.

    search() is safe to call from many threads. SearchEngine.without_index() gives one with no index
    folder, which embeds and classifies files but cannot index, search or tag. read_policy: how
    files named by callers are opened and read (media/safe_read.py; a server sets one).
    remember_queries: whether close() keeps the last query vectors beside the index.
    """

    def __init__(
        self, index_dir: Path | None, store: Store, requested: ModelSpec | None, device: str | None = None,
        settings: IndexSettings | None = None, encoder_factory: EncoderFactory = load_encoder, *, model_given: bool = True, exists: bool = True,
    ) -> None:
        self.index_dir = index_dir
        # opened on a missing index: store is a stand-in in memory until the first write creates it
        self._unborn = index_dir is not None and not exists
        self.settings = settings or IndexSettings()
        self._store = store
        self._lock = threading.RLock()
        self.remember_queries = True
        recorded = store.get_info("model")
        if recorded is not None:
            spec = reconcile(ModelSpec.from_record(recorded), requested, index_dir, model_given=model_given)
        else:
            spec = requested or spec_from_flags(None, None)
        self._models = ModelHub(spec, store, self.settings, device=device, encoder_factory=encoder_factory, index_dir=index_dir)
        self._files = NamedFiles(self.settings, self._models.image_encoder, self._models.image_batch_size)
        self._wire()

    def _wire(self) -> None:
        """Build the parts that work on the store (again when the missing index is created)."""
        store, folder = self._store, None if self._unborn else self.index_dir
        self._models.record = store
        self._labeller = Labeller(store, self._models, self._files)
        self._recent = RecentQueries(folder / RECENT_QUERIES_FILENAME) if folder is not None else None
        if folder is not None:
            tuning = TuningQueries(folder / TUNING_FILENAME, self._models, self._recent)
            self._vectors = OpenVectors(store, VectorCache(folder, store), self._models, tuning)
            self._writer = IndexWriter(folder, store, self._vectors, self._models, self._recent, self.settings)

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike[str] | None = None, *, model: str | None = None, pretrained: str | None = None,
        device: str | None = None, settings: IndexSettings | None = None, create: bool = True, encoder_factory: EncoderFactory = load_encoder,
    ) -> SearchEngine:
        """Open the index in index_dir (default: $SEARCHLITE_INDEX, else ./index).

        model/pretrained are needed only to build a new index with a non-default model; an existing
        index remembers its model (pretrained alone gives its checkpoint's new location, once it
        moved). A missing index is created by the first write (index(), import_embeddings()), not
        here: until then what reads it (search(), info(), ...) raises IndexNotFoundError, and
        nothing is on disk. With create=False a missing index raises IndexNotFoundError at once.
        """
        path = resolve_index_dir(index_dir)
        exists = (path / DB_FILENAME).exists()
        if not exists and not create:
            raise _no_index(path)
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        # a mistyped folder opened to search must not become an empty index
        store = Store.open(path / DB_FILENAME) if exists else Store.in_memory()
        try:
            return cls(path, store, requested, device, settings, encoder_factory, model_given=model is not None, exists=exists)
        except BaseException:
            store.close()
            raise

    @classmethod
    def without_index(
        cls, *, model: str | None = None, pretrained: str | None = None, device: str | None = None,
        settings: IndexSettings | None = None, encoder_factory: EncoderFactory = load_encoder,
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
        """The index folder; an engine without one refuses what needs it, and one opened on a
        missing index what reads it."""
        if self.index_dir is None:
            raise InvalidInputError("this engine has no index: open one with SearchEngine.open(folder) to index, search or tag")
        if self._unborn:
            raise _no_index(self.index_dir)
        return self.index_dir

    def _create(self) -> None:
        """Create the missing index this engine was opened on (its first write): the folder and the
        database, which takes over the model the stand-in recorded if the model loaded first."""
        with self._lock:
            if not self._unborn:
                return
            assert self.index_dir is not None
            stand_in, self._store = self._store, _open_store(self.index_dir)
            for key in ("model", "embed_dim"):
                if stand_in.get_info(key) is not None and self._store.get_info(key) is None:
                    self._store.set_info(key, stand_in.get_info(key))
            stand_in.close()
            self._unborn = False
            self._wire()

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
        """Bring the index in line with folder: add new files, re-encode changed ones, follow moves,
        drop deleted ones. Only what changed since the last run is read.

        ray: encode on the Ray cluster at this address ("auto", "ray://host:port" or "host:port";
        ingest/ray_stage.py) instead of here; this process still scans, reads and writes. shared_fs:
        whether the cluster's workers see folder at the same path (None: found out per worker).
        settings.raw_siblings, when given, is remembered by the index for later runs: a camera RAW
        file beside a same-name JPEG is skipped (the JPEG is indexed) unless it is True."""
        root = os.path.abspath(os.fspath(folder))
        if not os.path.exists(root):
            raise PathNotFoundError(f"folder {folder} not found")
        self._create()
        self._folder()
        return self._writer.index(root, progress, ray=ray, shared_fs=shared_fs)

    def export_embeddings(self, npy_path: str | os.PathLike[str]) -> int:
        """Write every stored vector to npy_path (float32 (n, d)), what each row is to the .jsonl
        beside it (a file's own vector with its metadata, then its shots or regions) and the tag
        sets and settings to the .index.json beside it, for import_embeddings(). Returns n."""
        return transfer.export_embeddings(self._store, Path(npy_path))

    def import_embeddings(self, npy_path: str | os.PathLike[str], paths_path: str | os.PathLike[str]) -> tuple[int, int]:
        """Load embeddings computed elsewhere (by this index's model) for files that exist here:
        npy_path holds float32 (n, d); paths_path the n paths, as .jsonl {"path": ...} lines (as
        export_embeddings() writes them) or plain lines; the tag sets and settings of an .index.json
        beside npy_path are taken too. Later index runs treat these files as unchanged. Returns
        (embeddings imported, files not found here)."""
        self._create()
        self._folder()
        return self._writer.import_embeddings(Path(npy_path), Path(paths_path))

    def optimize(self, *, force: bool = True, memory_budget: int | None = None, structure: str = "auto") -> dict[str, Any]:
        """Rebuild the vector index for its size: approximate when large or forced, exact otherwise;
        IVF-Flat (or HNSW, when faster) while the vectors fit memory_budget bytes (default: a
        quarter of the machine's memory), IVF-PQ re-ranked with the vectors in SQLite past it.
        structure: "auto" (that choice) or one of exact, ivf, hnsw, ivfpq, hnswpq, built whatever
        the size. Probes are tuned on text queries (generic photo-search phrases embedded with the
        index's text tower) and the recent real queries. Returns what was chosen."""
        self._folder()
        return self._writer.optimize(force=force, memory_budget=memory_budget, structure=structure)

    # --- search --------------------------------------------------------------------------------

    def search(
        self, text: str | Sequence[str] | None = None, *, image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        negative: str | Sequence[str] | None = None, k: int = 10, tag: str | None = None, type: str | None = None,
        filters: Filters | None = None, sort: str | None = None, min_score: float | None = None, all_ranked: bool = False,
        **filter_values: Any,
    ) -> list[Hit]:
        """Top-k files by cosine similarity to the query (a file with several vectors, such as a
        video's shots or an image's regions, by its best one, named in the hit's time or box).

        text, image and negative each take one item or a list; a term may carry a weight as
        "2::beach" (a number and a double colon; a single colon is plain text, and an image path
        that exists as given is never split). Texts and images add up, negatives subtract, and the
        sum is re-normalised. tag keeps only images carrying that tag (see tag()); a tag that no
        tag set of the index has raises TagNotFoundError listing the known ones. type: "image" or
        "video". filters (a Filters), or its fields as keyword arguments (after, before, camera,
        path, near, place), keep only the images whose metadata and path match; they are exact.
        sort="date" (oldest first) or "-date" (newest first) returns every image the query is
        relevant to in date order instead of a top-k: relevance is decided from the query's scores
        against all the images searched (query/relevance.py), or is score >= min_score when given;
        with no query at all it lists the matching images by date. all_ranked returns every image
        searched, each with Hit.relevant set. Without sort, min_score drops top-k hits below it.
        """
        options = SearchOptions.checked(
            k=k, tag=tag, type=type, filters=filters, sort=sort, min_score=min_score, all_ranked=all_ranked, filter_values=filter_values
        )
        return self._searcher().search(_as_list(text), _as_list(image), _as_list(negative), options)

    def search_vector(
        self, vector: np.ndarray | Sequence[float], *, k: int = 10, tag: str | None = None, type: str | None = None,
        filters: Filters | None = None, sort: str | None = None, min_score: float | None = None, all_ranked: bool = False,
        **filter_values: Any,
    ) -> list[Hit]:
        """search() for a query embedding made elsewhere (d,) or (1, d), e.g. a stored one
        (stored_vector) or a client's; it is normalised here."""
        options = SearchOptions.checked(
            k=k, tag=tag, type=type, filters=filters, sort=sort, min_score=min_score, all_ranked=all_ranked, filter_values=filter_values
        )
        return self._searcher().search_vector(vector, options)

    def _searcher(self) -> Searcher:
        index_dir = self._folder()
        if not self._vectors.loaded and self._store.get_info("model") is None:
            raise IndexNotFoundError(
                f"the index in {index_dir} is empty: index a folder into it first", setting="index_dir",
                problem=f"the index in {index_dir} is empty", index_dir=index_dir,
            )
        return Searcher(self._store, self.vectors, self._models, self._files, self._recent)

    def filters(self, filters: Filters | None = None, **values: Any) -> Filters | None:
        """Filters from a Filters and/or its fields as keyword arguments, checked (InvalidInputError
        names a bad value) and with any place resolved (Filters.place_chosen says which city)."""
        return checked_filters(filters, **values)

    def duplicates(self, tier: str = NEAR, *, path: str | os.PathLike[str] | None = None) -> list[DuplicateGroup]:
        """Groups of duplicate images, largest first, each with a suggested keeper and why (see
        query/duplicates.py for the tiers: "exact", "near", "similar"); path: only images under
        this folder or matching this glob. Reads the index only; never deletes anything."""
        from .query import duplicates

        self._folder()
        return duplicates.in_index(self._store, tier, lambda file: self.decode_image(file, min_side=64), path)

    def files(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed files by id; ids that are not indexed are absent."""
        return self._store.fetch(int(i) for i in ids)

    def stored_vector(self, image_id: int) -> np.ndarray | None:
        """The stored unit embedding (d,) of an indexed file, or None when the id is not indexed."""
        row = self._store.fetch([int(image_id)]).get(int(image_id))
        return None if row is None or row.content_hash is None else self._store.vector_for_hash(row.content_hash)

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index of the stored vectors, loaded (or rebuilt from SQLite) on first use."""
        self._folder()
        return self._vectors.get()

    sql_engine = property(lambda self: self._store.engine, doc="The SQLAlchemy engine of the index's database: select from searchlite.storage.tables (docs/library.md).")

    # --- files and the model -------------------------------------------------------------------

    def decode_image(self, path: str | os.PathLike[str], *, min_side: int | None = None, at: float = 0.0, read: ReadPolicy | None = None) -> Any:
        """The picture in a file as a viewer shows it (RGB, EXIF orientation applied, a PIL image),
        decoded in an isolated decoder process under the index's time and memory limits; with
        min_side, reduced cheaply to no less than twice that on its shorter side. A video gives
        its first frame at or after `at` seconds (PyAV). read: how the file is opened and checked
        (default: read_policy). Raises PathNotFoundError or ImageDecodeError. Safe from many threads."""
        return self._files.decode(os.fspath(path), min_side=min_side, at=at, read=read)

    def explain(
        self, image: str | os.PathLike[str], text: str, *, output: str | os.PathLike[str] | None = None, scale: float | None = None,
        read: ReadPolicy | None = None,
    ) -> Explanation:
        """Where text matches in an image file: the cosine of the text with each cell of the
        image tower's grid features (with the training-free correction of models/dense.py), less
        the empty text's, and its peak in pixels of the oriented image. output: also write the image
        overlaid with the heat map there (PNG). read: as decode_image's. Raises InvalidInputError
        for a model without grid features."""
        from .query.explain import explain_file

        return explain_file(os.fspath(image), text, self._models, self._files, output=output, scale=scale, read=read)

    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Unit text embeddings (n, d) from the index's model, one row per text (a single string is
        one text); repeated texts come from a cache."""
        return self._models.embed_text(_as_list(texts))

    def embed_images(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Unit image embeddings (n, d), decoded as indexing decodes; a file that cannot be read
        raises PathNotFoundError or ImageDecodeError naming it."""
        return self._files.embed_all([os.fspath(p) for p in _as_list(paths)])

    def text_encoder(self) -> ClipEncoder | TextTower:
        """What embeds text: the model's text tower exported to the user's cache (no torch); the
        torch model where there is no usable export, which is then written."""
        return self._models.text_encoder()

    def image_encoder(self) -> ImageEncoder:
        """What embeds images: on a CPU the model's image tower exported to the user's cache (no
        torch, and faster); elsewhere, and for models the export does not cover, the torch model."""
        return self._models.image_encoder()

    def load_model(self) -> ClipEncoder:
        """The index's CLIP model, loaded on first use (a new index records it then)."""
        return self._models.load_model()

    @property
    def model_loaded(self) -> bool:
        """Whether the torch model has been loaded (text queries and index runs with nothing new
        to encode never load it)."""
        return self._models.loaded

    @property
    def model_load_seconds(self) -> float:
        """Spent loading the model in this process."""
        return self._models.load_seconds

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
        """Files not indexed on purpose, with the reason in .error: not images, and links to files
        out of the collection (followed with follow_links)."""
        return self._store.rows_in_state(SKIPPED)

    # --- CLIP beyond search: zero-shot classification, tags, linear probes ----------------------

    def zero_shot(self, labels: str | Sequence[str], templates: str | None = None) -> LinearClassifier:
        """The zero-shot classifier for labels; templates: None/"single", "imagenet" (the CLIP
        paper's 80-template ensemble) or a file. Its class weights are cached in the index."""
        return self._labeller.zero_shot(zeroshot.LabelSet.parse(labels, templates))

    def classify(self, paths: Sequence[str | os.PathLike[str]], labels: str | Sequence[str], templates: str | None = None) -> list[Classification]:
        """Zero-shot classify image files (indexed or not); a file that cannot be read gets an error
        ("file … not found" for a missing one). Missing files are found before any model is loaded."""
        return self._labeller.classify(paths, zeroshot.LabelSet.parse(labels, templates))

    def tag(self, labels: str | Sequence[str], templates: str | None = None, *, name: str = "tags", threshold: float = DEFAULT_TAG_THRESHOLD) -> int:
        """Tag every indexed image with the zero-shot labels (kept up to date by later index runs).
        An image carries its best label, and any other label whose probability reaches threshold.
        A new label set under the same name replaces the old one. Returns images newly tagged."""
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
        self._store.check_writable()
        return self._keep(self._labeller.probe_tags(path, name, threshold))

    def apply_classifier(self, name: str, classifier: LinearClassifier, *, key: str, threshold: float, source: str) -> int:
        """Store a classifier as the tag set `name` and tag the images it has not seen yet."""
        return self._keep(TagSet(name, classifier, key, threshold, source))

    def _keep(self, tags: TagSet) -> int:
        self._folder()
        with self._writer.lock():
            return self._labeller.keep(tags)

    def evaluate(
        self, folder: str | os.PathLike[str] | None = None, *, captions: str | os.PathLike[str] | None = None,
        templates: str | Sequence[str] = "single,imagenet", shots: str | Sequence[int] | None = None, draws: int = 5, seed: int = 0,
        plot: str | os.PathLike[str] | None = None, progress: Callable[[str, int, int], None] | None = None,
    ) -> EvalReport:
        """The CLIP paper's protocol on your data; returns an EvalReport (.tables(), .to_json()).

        folder: one subfolder of images per class (its name is the label; _ reads as a space).
        Zero-shot top-1/top-5, per-class accuracy and confusion for each template set
        ("single", "imagenet" or a file); a linear probe at each shot count (default 1,2,4,8,16,
        those that fit) on `draws` random draws, tested on the images not drawn. captions: a CSV
        of image,caption rows for text<->image recall@1/5/10. Images the index holds (same
        content) reuse their stored embeddings. plot: a PNG of the probe curve and the confusion
        matrix (needs matplotlib). Deterministic given seed. progress(stage, done, total)."""
        from .evaluation import protocol

        settings = protocol.EvalSettings(folder, captions, templates, shots, draws, seed, plot)
        return protocol.evaluate(self._store, self._models, self._files, self._labeller, settings, progress)


def _no_index(path: Path) -> IndexNotFoundError:
    path = Path(os.path.abspath(path))  # "no index in index" would say little
    return IndexNotFoundError(f"no index in {path}: index a folder into it first", setting="index_dir", problem=f"no index in {path}", index_dir=path)


def _open_store(path: Path) -> Store:
    """The database in the index folder path, made (with the folder) when missing; a folder made
    here is removed again when the database cannot be opened."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(path, e, writing=True, what="index folder") from None
    try:
        return Store.open(path / DB_FILENAME)
    except BaseException:
        if created:  # leave no empty index behind
            _remove_new_index(path)
        raise


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
