"""What changes an index, one writer at a time (the index's write lock): creating it, index runs
(encoding here or on a Ray cluster), imports of embeddings made elsewhere, and optimize(); and the
vectors in memory that readers and the writer share (OpenVectors)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classify.tags import refresh_tags
from ..config import DB_FILENAME, LOCK_FILENAME, IndexSettings
from ..errors import IndexNotFoundError, InvalidInputError, file_error
from ..storage import transfer
from ..storage.store import Store
from ..storage.vector_cache import VectorCache
from ..storage.vector_index import VectorIndex
from ..storage.writelock import writer_lock

if TYPE_CHECKING:  # imported where used: a cold text query needs no decoders
    from ..models.hub import ModelHub
    from ..query.tuning import TuningQueries
    from ..storage.recent_queries import RecentQueries
    from .indexer import IndexReport, ProgressFn

log = logging.getLogger(__name__)

MIN_RECENT_QUERIES = 20  # recent queries needed to re-check approximate search on them
RECHECK_GROWTH = 0.1  # re-checked after an index run that grew the index by this fraction


def create_index(path: Path, stand_in: Store) -> Store:
    """The database of a new index in the folder path (a first write), made with the folder when
    missing (and removed again when the database cannot be made). It takes over the model that
    stand_in, the store in memory that stood for it, recorded if the model loaded first."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise file_error(path, e, writing=True, what="index folder") from None
    try:
        store = Store.open(path / DB_FILENAME)
    except BaseException:
        if created:  # leave no empty index behind
            _remove_new_index(path)
        raise
    for key in ("model", "embed_dim"):
        if stand_in.get_info(key) is not None and store.get_info(key) is None:
            store.set_info(key, stand_in.get_info(key))
    return store


def _remove_new_index(path: Path) -> None:
    """Remove an index folder this process has just created (only its database files)."""
    for name in (DB_FILENAME, DB_FILENAME + "-wal", DB_FILENAME + "-shm"):
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def unmake_index(path: Path, store: Store, *, lock_created: bool) -> bool:
    """Remove the index just created in path when its first write recorded no file (e.g. the
    model's weights could not be had): a failed first run leaves no empty index behind, and a folder
    that was there keeps only what it held. Closes store when it does; returns whether it did."""
    if store.counts():
        return False
    store.close()
    if lock_created:  # the lock file this first write made (released by now)
        (path / LOCK_FILENAME).unlink(missing_ok=True)
    _remove_new_index(path)
    return True


class OpenVectors:
    """The FAISS index of an open index folder in memory: read from its cache file (or rebuilt
    from SQLite) on first use, saved after changes, dropped when it may lag the database (then
    read again). A reader's rebuild is tuned on the stored tuning queries and loads no model."""

    def __init__(self, store: Store, cache: VectorCache, models: ModelHub, tuning: TuningQueries) -> None:
        self.store = store
        self.cache = cache
        self.models = models
        self.tuning = tuning
        self._lock = threading.Lock()
        self._vectors: VectorIndex | None = None

    @property
    def loaded(self) -> bool:
        return self._vectors is not None

    def get(self, *, writer: bool = False) -> VectorIndex:
        with self._lock:
            if self._vectors is None:
                dim = self.store.get_info("embed_dim") or self.models.image_encoder().embed_dim
                queries = self.tuning.embedded if writer else self.tuning.stored
                self._vectors = self.cache.load(dim, writer=writer, queries=queries)
            return self._vectors

    def searched(self) -> VectorIndex:
        """A reader's vectors to search; an index that has no model yet (nothing indexed) is empty."""
        if self._vectors is None and self.store.get_info("model") is None:
            folder = self.cache.path.parent
            raise IndexNotFoundError(
                f"the index in {folder} is empty: index a folder into it first", setting="index_dir",
                problem=f"the index in {folder} is empty", index_dir=folder,
            )
        return self.get()

    def save(self) -> None:
        vectors = self._vectors  # read once: drop() may clear it meanwhile
        if vectors is not None:
            self.cache.save(vectors)

    def drop(self) -> None:
        """Forget the vectors in memory (half changed): the saved cache (or SQLite) is read again."""
        with self._lock:  # not while get() loads them
            self._vectors = None


class IndexWriter:
    """Changes the index in index_dir, taking its write lock around each change."""

    def __init__(
        self, index_dir: Path, store: Store, vectors: OpenVectors, models: ModelHub, recent: RecentQueries | None, settings: IndexSettings,
    ) -> None:
        self.index_dir = index_dir
        self.store = store
        self.vectors = vectors
        self.models = models
        self.recent = recent
        self.settings = settings

    def lock(self) -> AbstractContextManager[Any]:
        """The index's write lock (one writer at a time, across processes)."""
        return writer_lock(self.index_dir / LOCK_FILENAME)

    def index(self, root: str, progress: ProgressFn | None = None, *, ray: str | None = None, shared_fs: bool | None = None) -> IndexReport:
        """Bring the index in line with the folder at root (an absolute path); see SearchEngine.index.

        ray: encode on the Ray cluster at this address ("auto", "ray://host:port" or "host:port";
        ray_stage.py) instead of here; this process still scans, reads and writes. shared_fs:
        whether the cluster's workers see the folder at the same path (None: found out per worker).
        settings.raw_siblings, when given, is remembered by the index for later runs: a camera RAW
        file beside a same-name JPEG is skipped (the JPEG is indexed) unless it is True."""
        self.store.check_writable()
        if ray is None:
            return self._run(root, progress, None)
        from . import ray_stage

        if self.settings.regions or self.store.get_info("regions"):  # grid features of the torch model, on the driver
            raise InvalidInputError("--ray cannot store region vectors (--regions, or an index that keeps them): index without --ray")
        connected = ray_stage.connect(ray)  # an unreachable cluster fails here, before any work
        try:  # decodes on the cluster, not with the run's decoders
            return self._run(root, progress, lambda _decoders: ray_stage.RayEncoding(self.settings, self.models, shared_fs))
        finally:
            if connected:
                ray_stage.disconnect()

    def _run(self, root: str, progress: ProgressFn | None, stage: Any) -> IndexReport:
        from .indexer import Indexer

        started = time.monotonic()
        loading_before = self.models.load_seconds
        with self.lock():
            self.models.record_checkpoint_location()
            vectors = self.vectors.get(writer=True)
            settings = self._remembered_settings()
            exclude = [str(self.index_dir.resolve()), os.path.abspath(self.index_dir)]
            indexer = Indexer(self.store, vectors, self.vectors.cache, self.models, settings, exclude=exclude, stage=stage)
            try:
                report = indexer.run(root, progress)
                self._fit_structure(vectors)
            except BaseException:
                # Interrupted between a batch's commit and its FAISS update, the vectors in memory
                # lag the database: then keep the older cache, which the next open rebuilds.
                if not np.array_equal(np.sort(vectors.ids()), self.store.vector_ids()):
                    self.vectors.drop()
                raise
            finally:
                self.vectors.save()
            self.models.export_text_tower()
            self.models.move_legacy_text_tower()
            report.tagged = refresh_tags(self.store)
            # the run's own time, and apart from it the model's loading (seconds of start-up that
            # later runs in the same process do not pay again)
            report.model_seconds = self.models.load_seconds - loading_before
            report.seconds = time.monotonic() - started - report.model_seconds
            return report

    def _fit_structure(self, vectors: VectorIndex) -> None:
        """After a run: an approximate structure once the index is large (tuned on text queries),
        or probes re-checked on the recent real queries once it has grown."""
        if vectors.optimize_if_large(queries=self.vectors.tuning.embedded):
            log.warning("%d vectors: built a %s index, tuned on text queries", len(vectors), vectors.kind)
        elif vectors.kind != "exact":
            self.vectors.tuning.keep()  # for readers that rebuild the file (an index approximate before they were kept)
            if self.recent is not None and len(recent := self.recent.vectors()) >= MIN_RECENT_QUERIES:
                checked = vectors.retune(recent, min_growth=RECHECK_GROWTH)
                if checked and "nprobe" in checked:
                    log.warning("recall@10 on recent queries was %s: now probing %d lists", checked["recall_before"], checked["nprobe"])

    def _remembered_settings(self) -> IndexSettings:
        """This run's settings, with those the index remembers (raw_siblings, regions) filled in
        where not given, and remembered where given."""
        settings = self.settings
        stored = bool(self.store.get_info("raw_siblings"))
        if settings.raw_siblings is None:
            settings = dataclasses.replace(settings, raw_siblings=stored)
        elif settings.raw_siblings != stored:
            self.store.set_info("raw_siblings", settings.raw_siblings)
        if settings.regions and not self.store.get_info("regions"):
            self.store.set_info("regions", True)  # remembered: later runs store regions too
        elif self.store.get_info("regions") and not settings.regions:
            settings = dataclasses.replace(settings, regions=True)
        return settings

    def import_embeddings(self, npy_path: Path, paths_path: Path) -> tuple[int, int]:
        """Load embeddings computed elsewhere (by this index's model) for files that exist here:
        npy_path holds float32 (n, d); paths_path the n paths, as .jsonl {"path": ...} lines (as
        export_embeddings writes them, with shots, regions and metadata) or plain lines; the tag
        sets and settings of an .index.json beside npy_path are taken too. Later index runs treat
        these files as unchanged. Returns (embeddings imported, files not found here)."""
        self.store.check_writable()
        dim = self.store.get_info("embed_dim") or self.models.image_encoder().embed_dim
        files = transfer.read_embeddings(npy_path, paths_path, dim, self.models.spec.describe())
        with self.lock():
            self.models.record_checkpoint_location()
            self.models.record_model(dim)
            transfer.import_facts(self.store, npy_path, dim)
            counts = transfer.import_rows(self.store, self.vectors.get(writer=True), files)
            self.vectors.save()
            refresh_tags(self.store)
        return counts

    def optimize(self, *, force: bool = True, memory_budget: int | None = None, structure: str = "auto") -> dict[str, Any]:
        """Rebuild the vector index for its size: approximate when large or forced, exact otherwise;
        IVF-Flat (or HNSW, when faster) while the vectors fit memory_budget bytes (default: a
        quarter of the machine's memory), IVF-PQ re-ranked with the vectors in SQLite past it.
        structure: "auto" (that choice) or one of exact, ivf, hnsw, ivfpq, hnswpq, built whatever
        the size. Its probes are tuned on text queries (TuningQueries) and the recent real queries.
        Returns what was chosen."""
        self.store.check_writable()
        with self.lock():
            vectors = self.vectors.get(writer=True)
            try:
                chosen = vectors.optimize(queries=self.vectors.tuning.embedded(), force=force, memory_budget=memory_budget, structure=structure)
            except BaseException as e:
                self.vectors.drop()  # half rebuilt
                if isinstance(e, ValueError):  # ann_build.resolve (the one check): unknown, or not buildable here
                    raise InvalidInputError(str(e)) from e
                raise
            self.vectors.save()
            return chosen
