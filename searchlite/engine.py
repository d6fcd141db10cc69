"""SearchEngine: the facade users embed. Opens an index folder and delegates: indexing to
ingest/, searching to query/, classification and tags to classify/, the FAISS cache and
import/export to storage/, the text tower to text/. It owns the open store, the loaded model and
the vectors in memory, and the write lock around every change."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .classify import probe, zeroshot
from .classify.classifier import DEFAULT_TAG_THRESHOLD, LinearClassifier
from .classify.tags import Classification, classify, refresh_tags, store_tag_set
from .config import DB_FILENAME, FAISS_FILENAME, LOCK_FILENAME, IndexSettings, model_cache_dir, resolve_index_dir
from .errors import (
    IndexNotFoundError,
    IndexVersionError,
    InvalidInputError,
    InvalidQueryError,
    ModelMismatchError,
    PathNotFoundError,
    SearchliteError,
    TagNotFoundError,
    file_error,
)
from .ingest import scanner
from .media.metadata import perceptual_hash
from .models.encoder import ClipEncoder, ImageEncoder
from .models.loading import load_encoder, surely_cpu
from .models.spec import ModelSpec, reconcile, spec_from_flags
from .query import duplicates, relevance
from .query.duplicates import DuplicateGroup
from .query.explain import Explanation
from .query.filters import Filters
from .query.phrases import tuning_phrases
from .query.relevance import fixed_cutoff
from .query.search import SORTS, Hit, list_by_date, query_vector, rank_all, search
from .query.terms import parse_terms
from .storage import transfer
from .storage.atomic_file import write_atomic
from .storage.recent_queries import FILENAME as RECENT_QUERIES_FILENAME
from .storage.recent_queries import RecentQueries
from .storage.store import FAILED, INDEXED, SKIPPED, FileRow, Store
from .storage.vector_cache import VectorCache
from .storage.vector_index import VectorIndex
from .storage.writelock import writer_lock
from .text.cache import TextCache

if TYPE_CHECKING:  # imported where used: a cold text query needs no decoders, an index run no text tower
    from .evaluation.report import EvalReport
    from .ingest.indexer import IndexReport, ProgressFn
    from .media.decode_worker import DecodePool
    from .media.safe_read import ReadPolicy
    from .models.image_tower import ImageTower
    from .text.tower import TextTower

log = logging.getLogger(__name__)

MIN_RECENT_QUERIES = 20  # recent queries needed to re-check approximate search on them
RECHECK_GROWTH = 0.1  # re-checked after an index run that grew the index by this fraction

EncoderFactory = Callable[[ModelSpec, "str | None"], ClipEncoder]

__all__ = ["Classification", "Filters", "Hit", "SearchEngine"]

FILE_TYPES = ("image", "video")  # what search(type=...) keeps


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
        exists: bool = True,
    ) -> None:
        self.index_dir = index_dir
        # opened on a missing index: store is a stand-in in memory until the first write creates it
        self._unborn = index_dir is not None and not exists
        self.settings = settings or IndexSettings()
        self._store = store
        self._device = device
        self._encoder_factory = encoder_factory
        self._lock = threading.RLock()  # guards lazy loading
        self._encoder: ClipEncoder | None = None
        self._image_encoder: ImageEncoder | None = None
        self._text_tower: TextTower | None = None
        self._tower_checked = False  # whether an exported text tower has been looked for
        self._text_cache = TextCache()
        self._cache = VectorCache(index_dir, store) if index_dir is not None and exists else None
        self._vectors: VectorIndex | None = None
        # the last query vectors, kept beside the index (at close) to re-check approximate search on;
        # an engine that must not write to its index (the server's) sets remember_queries = False
        self._recent = RecentQueries(index_dir / RECENT_QUERIES_FILENAME) if index_dir is not None and exists else None
        self.remember_queries = True
        # how files named by callers (query images, classify, explain, decode_image) are opened and
        # read (media/safe_read.py); a server sets one (regular files only, capped), None reads as the CLI does
        self.read_policy: ReadPolicy | None = None
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
        moved). A missing index is created by the first write (index(), import_embeddings()), not
        here: until then what reads it (search(), info(), ...) raises IndexNotFoundError, and
        nothing is on disk. With create=False a missing index raises IndexNotFoundError at once.
        """
        path = resolve_index_dir(index_dir)
        db = path / DB_FILENAME
        if not db.exists() and not create:
            raise _no_index(path)
        requested = spec_from_flags(model, pretrained) if (model or pretrained) else None
        if not db.exists():  # a mistyped folder opened to search must not become an empty index
            return cls(path, Store.in_memory(), requested, device, settings, encoder_factory, model_given=model is not None, exists=False)
        return cls._open_existing(path, requested, device, settings, encoder_factory, model_given=model is not None)

    @classmethod
    def _open_existing(
        cls, path: Path, requested: ModelSpec | None, device: str | None, settings: IndexSettings | None,
        encoder_factory: EncoderFactory, *, model_given: bool,
    ) -> SearchEngine:
        """The engine on the database in path, made (with the folder) when missing."""
        db = path / DB_FILENAME
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise file_error(path, e, writing=True, what="index folder") from None
        try:
            store = Store.open(db)
            try:
                return cls(path, store, requested, device, settings, encoder_factory, model_given=model_given)
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
        """The index folder; an engine without one refuses what needs it, and one opened on a
        missing index what reads it."""
        if self.index_dir is None:
            raise InvalidInputError("this engine has no index: open one with SearchEngine.open(folder) to index, search or tag")
        if self._unborn:
            raise _no_index(self.index_dir)
        return self.index_dir

    def _create(self) -> None:
        """Create the missing index this engine was opened on (its first write): the folder and
        the database, which takes over the model the stand-in recorded if the model loaded first."""
        with self._lock:
            if not self._unborn:
                return
            assert self.index_dir is not None
            opened = self._open_existing(self.index_dir, self.spec, self._device, self.settings, self._encoder_factory, model_given=True)
            stand_in, self._store = self._store, opened._store
            for key in ("model", "embed_dim"):
                if stand_in.get_info(key) is not None and self._store.get_info(key) is None:
                    self._store.set_info(key, stand_in.get_info(key))
            stand_in.close()
            self.spec, self._cache, self._recent, self._unborn = opened.spec, opened._cache, opened._recent, False

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

    def index(
        self,
        folder: str | os.PathLike[str],
        progress: ProgressFn | None = None,
        *,
        ray: str | None = None,
        shared_fs: bool | None = None,
    ) -> IndexReport:
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
        index_dir = self._folder()
        self._store.check_writable()
        stage: Callable[[Any], Any] | None = None
        connected = False
        if ray is not None:
            from .ingest import ray_stage

            if self.settings.regions or self._store.get_info("regions"):  # grid features of the torch model, on the driver
                raise InvalidInputError(
                    "--ray cannot store region vectors (--regions, or an index that keeps them): index without --ray"
                )
            connected = ray_stage.connect(ray)  # an unreachable cluster fails here, before any work

            def ray_encoding(decoders: Any) -> ray_stage.RayEncoding:  # decodes on the cluster, not with these
                return ray_stage.RayEncoding(self.settings, self.image_encoder, self._ray_model, shared_fs)

            stage = ray_encoding

        try:
            return self._index(root, index_dir, progress, stage)
        finally:
            if connected:
                ray_stage.disconnect()

    def _index(self, root: str, index_dir: Path, progress: ProgressFn | None, stage: Any) -> IndexReport:
        from .ingest.indexer import Indexer

        started = time.monotonic()
        loading_before = self.model_load_seconds
        with self._writing():
            self._record_checkpoint_location()
            vectors = self._get_vectors(writer=True)
            settings = self._remembered_settings()
            if settings.regions and not self._store.get_info("regions"):
                self._store.set_info("regions", True)  # remembered: later runs store regions too
            elif self._store.get_info("regions") and not settings.regions:
                settings = dataclasses.replace(settings, regions=True)
            indexer = Indexer(
                self._store,
                vectors,
                # region vectors come from the torch model's grid features (models/dense.py)
                self.load_model if settings.regions else self.image_encoder,
                settings,
                on_snapshot=self._save_vectors,
                exclude=[str(index_dir.resolve()), os.path.abspath(index_dir)],
                stage=stage,
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
                if not np.array_equal(np.sort(vectors.ids()), self._store.vector_ids()):
                    self._vectors = None
                raise
            finally:
                if self._vectors is not None:
                    self._save_vectors()
            if self._encoder is not None:
                self._export_text_tower(self._encoder)
            self._move_text_tower_to_cache(index_dir)
            report.tagged = refresh_tags(self._store)
            # the run's own time, and apart from it the model's loading (seconds of start-up that
            # later runs in the same process do not pay again)
            report.model_seconds = self.model_load_seconds - loading_before
            report.seconds = time.monotonic() - started - report.model_seconds
            return report

    def _remembered_settings(self) -> IndexSettings:
        """This run's settings, with those the index remembers (raw_siblings) filled in where not
        given, and remembered where given."""
        stored = bool(self._store.get_info("raw_siblings"))
        if self.settings.raw_siblings is None:
            return replace(self.settings, raw_siblings=stored)
        if self.settings.raw_siblings != stored:
            self._store.set_info("raw_siblings", self.settings.raw_siblings)
        return self.settings

    # --- search --------------------------------------------------------------------------------

    def search(
        self,
        text: str | Sequence[str] | None = None,
        *,
        image: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        negative: str | Sequence[str] | None = None,
        k: int = 10,
        tag: str | None = None,
        type: str | None = None,
        filters: Filters | None = None,
        sort: str | None = None,
        min_score: float | None = None,
        all_ranked: bool = False,
        **filter_values: Any,
    ) -> list[Hit]:
        """Top-k files by cosine similarity to the query (a file with several vectors, such as a
        video's shots or an image's regions, by its best one, named in the hit's time or box).

        text, image and negative each take one item or a list; a term may carry a weight as
        "2::beach" (a number and a double colon; a single colon is plain text, and an image path
        that exists as given is never split). Texts and images add up, negatives subtract, and the
        sum is re-normalised. tag keeps only images carrying that tag (see tag()); a tag that no
        tag set of the index has raises TagNotFoundError listing the known ones.

        filters (a Filters), or its fields as keyword arguments (after, before, camera, path,
        near, place), keep only the images whose metadata and path match; they are exact.
        sort="date" (oldest first) or "-date" (newest first) returns every image the query is
        relevant to in date order instead of a top-k: relevance is decided from the query's scores
        against all the images searched (query/relevance.py), or is score >= min_score when given;
        with no query at all it lists the matching images by date. all_ranked returns every image
        searched, each with Hit.relevant set. Without sort, min_score drops top-k hits below it.
        """
        if k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        if sort is not None and sort not in SORTS:
            raise InvalidQueryError(f"unknown sort {sort!r}: give date (oldest first) or -date (newest first)")
        filters = self.filters(filters, **filter_values)
        index_dir = self._folder()
        if self._vectors is None and self._store.get_info("model") is None:
            raise IndexNotFoundError(
                f"the index in {index_dir} is empty: index a folder into it first", setting="index_dir",
                problem=f"the index in {index_dir} is empty", index_dir=index_dir,
            )
        vectors = self.vectors
        if sort is not None and text in (None, [], ()) and image in (None, [], ()) and negative in (None, [], ()):
            _check_type(type)
            files = self._files_among(tag, filters)
            files = self._store.indexed_ids() if files is None else files
            if type is not None:
                kinds = self._store.file_kinds(int(i) for i in files)
                files = np.array([i for i in files if kinds.get(int(i), "image") == type], dtype=np.int64)
            return list_by_date(self._store, files, sort)
        among = self._among(tag, filters, type)
        terms = parse_terms(_as_list(text), _as_list(image), _as_list(negative))
        if among is not None and not len(among):
            return []
        query = query_vector(terms, self.embed_text, lambda paths: self._embed_images(paths, "query image"))
        self._remember(query)
        return self._ranked(vectors, query, k, among, sort, min_score, all_ranked)

    def _remember(self, query: np.ndarray) -> None:
        if self._recent is not None:
            self._recent.add(query)

    def _ranked(
        self, vectors: VectorIndex, query: np.ndarray, k: int, among: np.ndarray | None,
        sort: str | None, min_score: float | None, all_ranked: bool,
    ) -> list[Hit]:
        if sort is None and not all_ranked:
            hits = search(self._store, vectors, query, k, among)
            return hits if min_score is None else [h for h in hits if h.score >= min_score]
        decide = (lambda _: fixed_cutoff(min_score)) if min_score is not None else relevance.cutoff
        hits, verdict = rank_all(self._store, vectors, query, decide, among, keep_irrelevant=all_ranked, sort=sort)
        log.info("relevance: %s", verdict.describe())
        return hits

    def filters(self, filters: Filters | None = None, **values: Any) -> Filters | None:
        """Filters from a Filters and/or its fields as keyword arguments, checked (InvalidInputError
        names a bad value) and with any place resolved (Filters.place_chosen says which city)."""
        unknown = set(values) - {"after", "before", "camera", "path", "near", "place"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            filters = dataclasses.replace(filters or Filters(), **given)
        if not filters:
            return None
        checked = filters.checked()
        chosen = checked.place_chosen
        if chosen is not None and chosen.others and filters.place_chosen is None:
            log.info("place %r: chose %s, the most populous of %d places of that name", checked.place, chosen.describe(), len(chosen.others) + 1)
        return checked

    def _among(self, tag: str | None, filters: Filters | None = None, type: str | None = None) -> np.ndarray | None:
        """The FAISS ids to search among: the vectors of the files carrying tag, matching filters and
        of the type given (searched exactly, however rare); None for all."""
        _check_type(type)
        files = self._files_among(tag, filters)
        if files is None:
            return None if type is None else self._store.vector_ids_of(file_kind=type)
        return self._store.vector_ids_of(files.tolist(), file_kind=type)  # Python ints: SQLite binds no numpy ones

    def _files_among(self, tag: str | None, filters: Filters | None) -> np.ndarray | None:
        """The file ids carrying tag and matching filters; None for all."""
        among = self._tagged(tag)
        if filters:
            matching = filters.matching_ids(self._store)
            among = matching if among is None else np.intersect1d(among, matching)
        return among

    def _tagged(self, tag: str | None) -> np.ndarray | None:
        """The file ids carrying tag; None for all."""
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

    def search_vector(
        self,
        vector: np.ndarray | Sequence[float],
        *,
        k: int = 10,
        tag: str | None = None,
        type: str | None = None,
        filters: Filters | None = None,
        sort: str | None = None,
        min_score: float | None = None,
        all_ranked: bool = False,
        **filter_values: Any,
    ) -> list[Hit]:
        """search() for a query embedding made elsewhere (d,) or (1, d), e.g. a stored one
        (stored_vector) or a client's; it is normalised here."""
        if k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        if sort is not None and sort not in SORTS:
            raise InvalidQueryError(f"unknown sort {sort!r}: give date (oldest first) or -date (newest first)")
        filters = self.filters(filters, **filter_values)
        vectors = self.vectors
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != vectors.dim or not np.all(np.isfinite(query)):
            raise InvalidQueryError(f"a query embedding must be {vectors.dim} finite numbers, got {query.shape[1]}")
        norm = float(np.linalg.norm(query))
        if norm == 0.0:
            raise InvalidQueryError("a query embedding must not be all zeros")
        among = self._among(tag, filters, type)
        if among is not None and not len(among):
            return []
        query = np.ascontiguousarray(query / norm)
        self._remember(query)
        return self._ranked(vectors, query, k, among, sort, min_score, all_ranked)

    def duplicates(self, tier: str = duplicates.NEAR, *, path: str | os.PathLike[str] | None = None) -> list[DuplicateGroup]:
        """Groups of duplicate images, largest first, each with a suggested keeper and why (see
        query/duplicates.py for the tiers: "exact", "near", "similar"); path: only images under
        this folder or matching this glob. Reads the index only; never deletes anything."""
        if tier not in duplicates.TIERS:
            raise InvalidInputError(f"unknown duplicate tier {tier!r}: give exact, near or similar")
        self._folder()
        among = self.filters(path=path).matching_ids(self._store) if path is not None else None
        rows = {
            r.id: {"path": os.fsdecode(r.path), "width": r.width, "height": r.height, "size": r.size, "taken_at": r.taken_at,
                   "content_hash": r.content_hash, "phash": r.phash}
            for r in self._store.select_where(("path", "width", "height", "size", "taken_at", "content_hash", "phash"))
        }
        wanted = set(rows) if among is None else set(among.tolist()) & set(rows)
        wanted = {i for i in wanted if os.path.exists(rows[i]["path"])}  # files deleted since the last index run
        ids_parts, vector_parts = [], []
        for chunk_ids, chunk_vectors in self._store.iter_vectors():
            keep = np.fromiter((int(i) in wanted for i in chunk_ids), dtype=bool, count=len(chunk_ids))
            ids_parts.append(chunk_ids[keep])
            vector_parts.append(chunk_vectors[keep])
        if not ids_parts:
            return []
        ids, vectors = np.concatenate(ids_parts), np.concatenate(vector_parts)

        def phash_of(image_id: int) -> str | None:  # rows indexed before hashes were stored
            try:
                return perceptual_hash(self.decode_image(rows[image_id]["path"], min_side=64))
            except SearchliteError as e:
                log.info("no perceptual hash for %s: %s", rows[image_id]["path"], e)
                return None

        return duplicates.find_groups(tier, ids, vectors, rows, phash_of)

    def files(self, ids: Iterable[int]) -> dict[int, FileRow]:
        """Indexed files by id; ids that are not indexed are absent."""
        return self._store.fetch(int(i) for i in ids)

    def stored_vector(self, image_id: int) -> np.ndarray | None:
        """The stored unit embedding (d,) of an indexed file, or None when the id is not indexed."""
        row = self._store.fetch([int(image_id)]).get(int(image_id))
        if row is None or row.content_hash is None:
            return None
        return self._store.vector_for_hash(row.content_hash)

    def decode_image(self, path: str | os.PathLike[str], *, min_side: int | None = None, at: float = 0.0, read: ReadPolicy | None = None) -> Any:
        """The picture in a file as a viewer shows it (RGB, EXIF orientation applied, a PIL image),
        decoded in an isolated decoder process under the index's time and memory limits; with
        min_side, reduced cheaply to no less than twice that on its shorter side. A video gives
        its first frame at or after `at` seconds (PyAV). read: how the file is opened and checked
        (default: read_policy), the decoder process then reading it. Raises PathNotFoundError or
        ImageDecodeError. Safe from many threads (a pool of decoders)."""
        from .media.embed_files import decode_path

        options = {"min_side": min_side, "max_pixels": self.settings.max_pixels}
        return decode_path(os.fspath(path), self.settings, self._decoder_pool(), at=at or None, read=read or self.read_policy, **options).image

    def explain(
        self, image: str | os.PathLike[str], text: str, *, output: str | os.PathLike[str] | None = None, scale: float | None = None,
        read: ReadPolicy | None = None,
    ) -> Explanation:
        """Where text matches in an image file: the cosine of the text with each cell of the
        image tower's grid features (with the training-free correction of models/dense.py), less
        the empty text's, and its peak in pixels of the oriented image. output: also write the image overlaid with the
        heat map there (PNG). read: as decode_image's. Raises InvalidInputError for a model without grid features."""
        from .media.embed_files import check_named, decode_named
        from .models import dense
        from .query.explain import explain, overlay

        path = os.fspath(image)
        read = read or self.read_policy
        check_named(path, read=read)  # a missing file is reported before any model loads
        empty, query = self.embed_text(["", text])
        encoder = self.load_model()
        scale = scale or dense.DEFAULT_SCALE
        decoded = decode_named(path, self.settings, self._decoder_pool(), read=read, min_side=int(scale * encoder.image_size), max_pixels=self.settings.max_pixels)
        grid = dense.grid_features(encoder.model, decoded.image, scale=scale, device=encoder.device)
        rows, cols = grid.vectors.shape[:2]
        grid = dense.Grid(grid.vectors, decoded.width / cols, decoded.height / rows)  # cells in the original's pixels
        result = explain(grid, query, empty, decoded.width, decoded.height)
        if output is not None:
            buf = io.BytesIO()
            overlay(decoded.image, result).save(buf, "PNG")
            try:
                write_atomic(Path(output), buf.getvalue())
            except OSError as e:
                raise file_error(Path(output), e, writing=True) from None
        return result

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
        from .media.embed_files import embed_files

        def batch_size() -> int:
            return self.settings.batch_size_on(self._image_encoder.device if self._image_encoder else "cpu")

        return embed_files(paths, self.settings, self.image_encoder, batch_size, what, self._decoder_pool(), self.read_policy)

    def _decoder_pool(self) -> DecodePool:
        """Decoder processes kept for query images, classification and decode_image (started on
        first use, stopped by close())."""
        with self._lock:
            if self._decoders is None:
                from .media.decode_worker import DecodePool

                self._decoders = DecodePool(self.settings.workers, self.settings.decode_timeout_s, self.settings.decoder_memory_limit)
            return self._decoders

    def text_encoder(self) -> ClipEncoder | TextTower:
        """What embeds text: the model's text tower exported to the user's cache, which gives the
        torch model's embeddings without importing torch (seconds saved per cold query); the torch
        model where there is no usable export, which is then written."""
        tower = self._text_tower
        if tower is not None:  # no lock once loaded: text queries never wait on the image tower loading
            return tower
        with self._lock:
            if self._text_tower is None and not self._tower_checked and self._uses_own_model():
                from .text.tower import FILENAME as TEXT_TOWER_FILENAME
                from .text.tower import TextTower

                self._tower_checked = True
                key = self.model_key()
                self._text_tower = TextTower.load(model_cache_dir(key) / TEXT_TOWER_FILENAME, key)
                if self._text_tower is None and self.index_dir is not None:  # written by searchlite < 0.2
                    self._text_tower = TextTower.load(self.index_dir / TEXT_TOWER_FILENAME, key)
                if self._text_tower is None:
                    self._export_text_tower(self.load_model())
            return self._text_tower or self.load_model()

    def _export_text_tower(self, encoder: ClipEncoder) -> None:
        if self._text_tower is None and self._uses_own_model():  # once in use (its onnxruntime session too), it stays
            from .text.export import export_text_tower
            from .text.tower import FILENAME as TEXT_TOWER_FILENAME

            key = self.model_key()
            self._text_tower = export_text_tower(encoder, model_cache_dir(key) / TEXT_TOWER_FILENAME, key)

    def _move_text_tower_to_cache(self, index_dir: Path) -> None:
        """searchlite 0.1 kept a copy of the text tower beside each index (250 MB for the default
        model); a writer moves it to the user's cache, where every index of the model finds it."""
        from .text.tower import FILENAME as TEXT_TOWER_FILENAME
        from .text.tower import TextTower

        legacy = index_dir / TEXT_TOWER_FILENAME
        if not legacy.exists():
            return
        key = self.model_key()
        target = model_cache_dir(key) / TEXT_TOWER_FILENAME
        try:
            if TextTower.load(target, key) is None and TextTower.load(legacy, key) is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                shutil.copyfile(legacy, temporary)
                os.replace(temporary, target)
            legacy.unlink()
        except OSError as e:  # it stays where it was, and keeps answering from there
            log.info("cannot move %s to %s: %s", legacy, target.parent, e.strerror or e)

    def _uses_own_model(self) -> bool:
        """Whether this engine loads its model itself (not through an encoder factory its caller
        gave, whose encoder is then the one to use), so that exports of the model stand in for it."""
        return self._encoder_factory is load_encoder

    def image_encoder(self) -> ImageEncoder:
        """What embeds images. On a CPU, the model's image tower exported to the user's cache
        (image_tower.py): the torch model's embeddings without importing torch, and faster; exported
        the first time the torch model is loaded here. Elsewhere, and for models the export does not
        cover, the torch model."""
        with self._lock:
            if self._image_encoder is None:
                self._image_encoder = self._image_tower() or self.load_model()
            return self._image_encoder

    def _image_tower(self) -> ImageTower | None:
        from .models.image_tower import ImageTower, export_image_tower

        if not (self._uses_own_model() and surely_cpu(self._device) and self.settings.precision in ("auto", "fp32")):
            return None
        key = self.model_key()
        folder = model_cache_dir(key)
        started = time.monotonic()
        tower = ImageTower.load(folder, key)
        if tower is not None:
            self.model_load_seconds += time.monotonic() - started
            if not self._store.read_only:
                self._record_model(tower.embed_dim)
            return tower
        encoder = self.load_model()
        if encoder.device != "cpu":
            return None
        started = time.monotonic()
        tower = export_image_tower(encoder, folder, key)
        self.model_load_seconds += time.monotonic() - started
        return tower

    def _ray_model(self, gpu: bool) -> dict[str, Any]:
        """What Ray actors load to encode like this engine (ray_stage.ModelRecipe): on GPUs, the
        torch model; on CPUs, the image tower exported here (torch stays off the workers)."""
        if not self._uses_own_model():
            raise InvalidInputError("indexing on Ray needs a model searchlite loads itself (not an encoder factory)")
        from .models.image_tower import ImageTower

        torch_model = {"kind": "torch", "spec": self.spec, "precision": self.settings.precision}
        if gpu:
            return {**torch_model, "device": "cuda"}
        encoder = self.image_encoder()
        folder = model_cache_dir(self.model_key())
        if isinstance(encoder, ImageTower) and all((folder / name).exists() for name in ImageTower.FILES):
            return {"kind": "tower", "key": self.model_key(), "folder": str(folder)}
        return {**torch_model, "device": "cpu"}

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
        reasons = [r.error for r in self.skipped()] if counts.get(SKIPPED) else []
        links = reasons.count(scanner.LINK_OUT_OF_COLLECTION)
        raw_siblings = reasons.count(scanner.RAW_SIBLING)
        videos = self._store.video_count() if counts.get(INDEXED) else 0
        return {
            "index": str(index_dir.resolve()),
            "images": counts.get(INDEXED, 0) - videos,
            "videos": videos,
            "failed": counts.get(FAILED, 0),
            "not_images": counts.get(SKIPPED, 0) - links - raw_siblings,
            "links_not_followed": links,
            "raw_siblings_skipped": raw_siblings,  # camera RAW files whose same-name JPEG is indexed
            "raw_siblings_indexed": bool(self._store.get_info("raw_siblings")),  # the remembered setting
            "model": ModelSpec.from_record(recorded).describe() if recorded else None,
            "dim": self._store.get_info("embed_dim"),
            "database_bytes": db_bytes,
            "vectors_bytes": faiss_file.stat().st_size if faiss_file.exists() else 0,
            "vector_index": (self._store.get_info("faiss") or {}).get("kind", "exact"),
            "tags": self._store.tag_counts(),
            "regions": bool(self._store.get_info("regions")),
            **self._metadata_summary(),
        }

    def _metadata_summary(self) -> dict[str, Any]:
        """info()'s capture dates and cameras (empty on an old index opened read-only)."""
        try:
            first, last, by_source = self._store.date_range()
            cameras = self._store.camera_counts()
        except IndexVersionError:  # read-only, before the metadata columns (schema 4)
            return {"dates": None, "cameras": []}
        return {
            # the photos' own wall clock; "from_mtime": how many have only their file's mtime
            "dates": None if first is None else {"first": first, "last": last, "from_exif": by_source.get("exif", 0), "from_mtime": by_source.get("mtime", 0)},
            "cameras": [{"make": make, "model": model, "images": n} for make, model, n in cameras],
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
        """Write every stored vector to npy_path (float32 (n, d)), what each row is to the .jsonl
        beside it ({"path": ...} objects, line by line in the same order: a file's own vector with
        its metadata, then its shots or regions) and the tag sets and settings to the .index.json
        beside it, so that import_embeddings() gives back the same index. Returns n."""
        return transfer.export_embeddings(self._store, Path(npy_path))

    def import_embeddings(self, npy_path: str | os.PathLike[str], paths_path: str | os.PathLike[str]) -> tuple[int, int]:
        """Load embeddings computed elsewhere (by this index's model) for files that exist here:
        npy_path holds float32 (n, d); paths_path the n paths, as .jsonl {"path": ...} lines (as
        export_embeddings() writes them, with shots, regions and metadata) or plain lines; the tag
        sets and settings of an .index.json beside npy_path are taken too. Later index runs treat
        these files as unchanged. Returns (embeddings imported, files not found here)."""
        self._create()
        self._store.check_writable()
        dim = self._store.get_info("embed_dim") or self.image_encoder().embed_dim
        files = transfer.read_embeddings(Path(npy_path), Path(paths_path), dim, self.spec.describe())
        with self._writing():
            self._record_checkpoint_location()
            self._record_model(dim)
            transfer.import_facts(self._store, Path(npy_path), dim)
            counts = transfer.import_rows(self._store, self._get_vectors(writer=True), files)
            self._save_vectors()
            refresh_tags(self._store)
        return counts

    def optimize(self, *, force: bool = True, memory_budget: int | None = None, structure: str = "auto") -> dict[str, Any]:
        """Rebuild the vector index for its size: approximate when large or forced, exact otherwise;
        IVF-Flat (or HNSW, when faster) while the vectors fit memory_budget bytes (default: a
        quarter of the machine's memory), IVF-PQ re-ranked with the vectors in SQLite past it.
        structure: "auto" (that choice) or one of exact, ivf, hnsw, ivfpq, hnswpq, built whatever
        the size. Its probes are tuned on text queries (a fixed set of generic photo-search phrases,
        embedded with the index's text tower) and the recent real queries. Returns what was chosen."""
        from .storage.vector_index import STRUCTURES

        if structure not in STRUCTURES:
            raise InvalidInputError(f"unknown index structure {structure!r}: choose one of {', '.join(STRUCTURES)}")
        self._store.check_writable()
        with self._writing():
            vectors = self._get_vectors(writer=True)
            if structure != "auto" and len(vectors) < 2:
                raise InvalidInputError(f"an {structure} index needs at least 2 images; this index holds {len(vectors)}: index more first")
            try:
                chosen = vectors.optimize(queries=self._tuning_queries(), force=force, memory_budget=memory_budget, structure=structure)
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
        classifier = zeroshot.build(label_set, self.embed_text, self.image_encoder().logit_scale)
        self._store.cache_weights(key, classifier.weights)
        return classifier

    def classify(
        self, paths: Sequence[str | os.PathLike[str]], labels: str | Sequence[str], templates: str | None = None
    ) -> list[Classification]:
        """Zero-shot classify image files (indexed or not); a file that cannot be read gets an error
        ("file … not found" for a missing one). Missing files are found before any model is loaded."""
        label_set = zeroshot.LabelSet.parse(labels, templates)
        names = [os.fspath(p) for p in paths]
        from .media.embed_files import named_file_exists

        missing: dict[str, Any] = {p: PathNotFoundError(f"file {p} not found") for p in names if not named_file_exists(p)}
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

    def evaluate(
        self,
        folder: str | os.PathLike[str] | None = None,
        *,
        captions: str | os.PathLike[str] | None = None,
        templates: str | Sequence[str] = "single,imagenet",
        shots: str | Sequence[int] | None = None,
        draws: int = 5,
        seed: int = 0,
        plot: str | os.PathLike[str] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
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

        parts = protocol.Collaborators(self._store, self._embed_files, self._zero_shot, self.embed_text, self.spec.describe())
        return protocol.evaluate(
            parts, folder, captions=captions, templates=templates, shots=shots, draws=draws, seed=seed, plot_path=plot, progress=progress
        )

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
                dim = self._store.get_info("embed_dim") or self.image_encoder().embed_dim
                self._vectors = self._cache.load(dim, writer=writer, queries=self._tuning_queries)
            return self._vectors

    def _save_vectors(self) -> None:
        assert self._vectors is not None and self._cache is not None
        self._cache.save(self._vectors)

    def _writing(self) -> Any:
        """The index's write lock (one writer at a time, across processes)."""
        return writer_lock(self._folder() / LOCK_FILENAME)


def _no_index(path: Path) -> IndexNotFoundError:
    path = Path(os.path.abspath(path))  # "no index in index" would say little
    return IndexNotFoundError(f"no index in {path}: index a folder into it first", setting="index_dir", problem=f"no index in {path}", index_dir=path)


def _remove_new_index(path: Path) -> None:
    """Remove an index folder this process has just created (only its database files)."""
    for name in (DB_FILENAME, DB_FILENAME + "-wal", DB_FILENAME + "-shm"):
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _check_type(type: str | None) -> None:
    if type is not None and type not in FILE_TYPES:
        raise InvalidQueryError(f"type {type!r}: use one of {', '.join(FILE_TYPES)}")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
