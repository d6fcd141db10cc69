"""The indexing flow: scan -> diff against the store -> read and hash in parallel -> decode and
encode in batches (an EncodeStage) -> one SQLite transaction per batch -> FAISS.

Where images are decoded and encoded is the EncodeStage's business (encoding.py): LocalEncoding here
(worker threads each drive a decoder process, decode_worker.py; on a GPU they decode the next batch
while the model encodes one, on a CPU each batch is decoded on all cores, then encoded on all
cores), or ray_stage.RayEncoding on a Ray cluster. Either way this module alone writes: batches are committed in
the order they were formed, one transaction each.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config import IndexSettings
from ..errors import ImageDecodeError
from ..media import images, video
from ..media.decode_worker import DecodeCancelled, DecodePool
from ..media.metadata import HEADER_READ_BYTES, METADATA_VERSION, ImageMetadata
from ..storage.hashing import content_hash
from ..storage.store import FAILED, INDEXED, METADATA_COLUMNS, SKIPPED, FileRow, Store, Transaction
from ..storage.vector_cache import VectorCache
from ..storage.vector_index import VectorIndex
from . import scanner
from .encoding import EncodeStage, LocalEncoding, Prepared
from .scanner import FileInfo
from .tower_choice import TowerChoice

if TYPE_CHECKING:
    from ..models.hub import ModelHub

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

NOT_AN_IMAGE = "not an image"  # the skip reason of a file no decoder recognises

def decode_settings(settings: IndexSettings, *, for_video: bool = False) -> dict[str, Any]:
    """The settings a decoding verdict depends on; a video's, whether PyAV is installed too (a
    video that failed without it is tried again once it is)."""
    current: dict[str, Any] = {"max_megapixels": settings.max_megapixels, "decode_timeout_s": settings.decode_timeout_s}
    if for_video:
        current |= {"pyav": video.available(), "video_timeout_s": settings.video_timeout_s}
    return current


@dataclass
class IndexReport:
    """What one `index` run did."""

    added: int = 0  # new files indexed
    updated: int = 0  # files whose content changed, re-indexed
    moved: int = 0  # known content at a new path (moved or renamed), no re-encoding
    removed: int = 0  # files gone from disk, dropped from the index
    unchanged: int = 0
    reused: int = 0  # of added/updated: vectors copied from identical content, no re-encoding
    encoded: int = 0  # images run through the model
    failed: int = 0
    skipped: int = 0  # files that are not images
    links_not_followed: int = 0  # links to files out of the collection (see --follow-links)
    raw_siblings: int = 0  # camera RAW files not indexed because their same-name JPEG is
    retry_later: int = 0  # files that changed while being read: the next run takes them
    tagged: int = 0  # images given tags by the index's tag sets
    metadata_read: int = 0  # of the unchanged: images whose header metadata was read (no re-encoding)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    not_followed: list[str] = field(default_factory=list)  # the links counted in links_not_followed
    seconds: float = 0.0  # the run, not counting the model's loading
    model_seconds: float = 0.0  # loading the model, when this run loaded it

    def summary(self) -> str:
        parts = [
            f"{self.added} added",
            f"{self.updated} updated",
            f"{self.moved} moved",
            f"{self.removed} removed",
            f"{self.unchanged} unchanged",
            f"{self.failed} failed",
            f"{self.skipped} not images",
        ]
        if self.links_not_followed:
            parts.append(f"{self.links_not_followed} link{'s' if self.links_not_followed != 1 else ''} not followed")
        if self.raw_siblings:
            parts.append(f"{self.raw_siblings} raw{'s' if self.raw_siblings != 1 else ''} with a JPEG beside")
        if self.retry_later:
            parts.append(f"{self.retry_later} changing (next run)")
        if self.metadata_read:
            parts.append(f"{self.metadata_read} with metadata read")
        rate = f", {self.encoded / self.seconds:.1f} img/s" if self.encoded and self.seconds else ""
        loading = f", plus {self.model_seconds:.1f}s loading the model" if self.model_seconds else ""
        return f"{', '.join(parts)} in {self.seconds:.1f}s{loading} ({self.encoded} encoded{rate})"


class Indexer:
    """Brings the store and the vector index in line with one folder."""

    def __init__(
        self,
        store: Store,
        vectors: VectorIndex,
        cache: VectorCache,
        models: ModelHub,
        settings: IndexSettings,
        exclude: Sequence[str] = (),
        stage: Callable[[DecodePool], EncodeStage] | None = None,
    ) -> None:
        """vectors: the index's FAISS vectors, kept in line with the store and saved to cache now
        and then (settings.snapshot_interval_s). stage: makes the EncodeStage of a run that has
        files to read, given the run's decoder processes (LocalEncoding by default, which may
        judge the int8 image tower on the run's first images: tower_choice.py)."""
        self.exclude = exclude
        self.own_stage = stage is None
        self.make_stage = stage or (lambda decoders: LocalEncoding(models, settings, decoders))
        self.store = store
        self.vectors = vectors
        self.cache = cache
        self.models = models
        self.settings = settings

    def run(self, root: str, progress: ProgressFn | None = None) -> IndexReport:
        started = time.monotonic()
        report = IndexReport()
        files = list(scanner.scan(root, self.exclude, follow_links=self.settings.follow_links,
                                  raw_siblings=bool(self.settings.raw_siblings)))
        known = self.store.rows_under(root)
        seen = {f.path for f in files}
        missing = [row for path, row in known.items() if path not in seen]
        current = decode_settings(self.settings)
        extra_available = functools.cache(images.extra_available)
        current_video = decode_settings(self.settings, for_video=True)
        work = []
        unread: list[tuple[FileInfo, FileRow]] = []  # unchanged images whose header was not read yet
        for f in files:
            row = known.get(f.path)
            if row is not None and row.size == f.size and row.mtime_ns == f.mtime_ns:
                if row.state == FAILED and _judge_again(row.failed_under, current, current_video, extra_available):
                    work.append(f)  # failed under other limits, or for an extra now installed
                elif row.state == SKIPPED and row.error == NOT_AN_IMAGE and _formats_version(row) != images.FORMATS_VERSION:
                    work.append(f)  # judged by a searchlite that knew fewer formats
                elif (f.skip == scanner.RAW_SIBLING) != (row.state == SKIPPED and row.error == scanner.RAW_SIBLING):
                    work.append(f)  # the sibling rule's verdict changed (the setting, or the JPEG came or went)
                else:
                    report.unchanged += 1
                    if row.state == INDEXED and (row.metadata_version or 0) < METADATA_VERSION:
                        unread.append((f, row))
            else:
                work.append(f)
        log.info("%d files: %d to process, %d gone", len(files), len(work), len(missing))

        # content of vanished rows, to recognise moves and renames
        missing_by_hash: dict[str, list[FileRow]] = {}
        for row in missing:
            if row.state == INDEXED and row.content_hash:
                missing_by_hash.setdefault(row.content_hash, []).append(row)

        if work:
            run = _Run(self, report, known, missing_by_hash, started)
            run.process(work, progress)
        if unread:
            self._read_metadata(unread, report)
        gone = [row for rows in missing_by_hash.values() for row in rows]
        gone += [row for row in missing if row.state != INDEXED or not row.content_hash]
        if gone:
            with self.store.transaction() as tx:
                tx.delete(row.id for row in gone)
            self.vectors.remove(np.array(tx.removed_ids, dtype=np.int64))
            report.removed += len(gone)
        report.seconds = time.monotonic() - started
        return report

    def _read_metadata(self, unread: list[tuple[FileInfo, FileRow]], report: IndexReport) -> None:
        """Fill in the header metadata of unchanged images indexed before it was read (or by an
        older reader): the first HEADER_READ_BYTES of each file, parsed in a decoder process; the
        model is neither loaded nor run."""
        settings = self.settings
        decoders = DecodePool(settings.workers, settings.decode_timeout_s, settings.decoder_memory_limit)

        def read(item: tuple[FileInfo, FileRow]) -> ImageMetadata | None:
            f, _ = item
            try:
                with open(f.path, "rb") as fh:
                    data = fh.read(HEADER_READ_BYTES)
                return decoders.read_metadata(data).with_mtime(f.mtime_ns)
            except (OSError, ImageDecodeError, DecodeCancelled) as e:
                log.debug("no metadata for %s: %s", f.path, e)
                return None

        try:
            with ThreadPoolExecutor(settings.workers, thread_name_prefix="searchlite-metadata") as pool:
                for start in range(0, len(unread), 1000):
                    chunk = unread[start : start + 1000]
                    found = list(pool.map(read, chunk))
                    with self.store.transaction(vectors_changed=False) as tx:
                        for (_, row), meta in zip(chunk, found):
                            if meta is not None:
                                tx.set_metadata(row.id, meta.to_columns(), METADATA_VERSION, width=meta.width, height=meta.height)
                                report.metadata_read += 1
        finally:
            decoders.close()


def _formats_version(row: FileRow) -> int:
    """The images.FORMATS_VERSION a "not an image" verdict was given under (1: before it was kept)."""
    return int((row.failed_under or {}).get("formats", 1))


def _judge_again(
    failed_under: dict[str, Any] | None, current: dict[str, Any], current_video: dict[str, Any], extra_available: Callable[[str], bool]
) -> bool:
    """Whether a file that failed (unchanged since) is decoded again: when it failed for want of an
    extra that is installed now, or under other limits (or PyAV's presence, for a video) than these."""
    if failed_under is None:
        return False
    needs = failed_under.get("needs")
    if needs is not None:
        return extra_available(needs)
    return failed_under != (current_video if "pyav" in failed_under else current)


class _Run:
    """State of one run's processing stage."""

    def __init__(
        self,
        indexer: Indexer,
        report: IndexReport,
        known: dict[str, FileRow],
        missing_by_hash: dict[str, list[FileRow]],
        started: float,
    ) -> None:
        self.ix = indexer
        self.report = report
        self.known = known
        self.missing_by_hash = missing_by_hash
        self.last_snapshot = started
        self.known_hashes = indexer.store.indexed_hashes()
        self.pending: list[Prepared] = []  # waiting to be sent to the stage
        # batches sent to the stage, not yet committed:
        # (files, those of them to encode, the copy encoded per content, wait)
        self.in_flight: deque[tuple[list[Prepared], list[Prepared], dict[str | None, Prepared], Callable[[], Any]]] = deque()
        self.stage: EncodeStage
        self.local: EncodeStage  # for the videos of a stage that takes none

    def process(self, work: list[FileInfo], progress: ProgressFn | None) -> None:
        settings = self.ix.settings
        # this machine's decoders: the stage's, when it decodes here, and for the headers of known content
        # a run of several batches decodes the next while the model encodes one (see chunks_ahead)
        background = len(work) > settings.batch_size_on("cpu")
        decoders = self.decoders = DecodePool(settings.workers, settings.decode_timeout_s, settings.decoder_memory_limit, background=background)
        choice = TowerChoice.start(self.ix.models, self.ix.store, settings, len(work), can_judge=self.ix.own_stage)
        choice.apply()
        stage = self.stage = self.ix.make_stage(decoders)
        if isinstance(stage, LocalEncoding):
            stage.choice = choice
        else:  # encoded elsewhere, by the tower the hub gives it
            choice.record(self.ix.models.image_encoder().precision)
        self.local = stage if stage.videos else LocalEncoding(self.ix.models, settings, decoders, start=False, choice=choice)
        pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="searchlite-decode")
        try:
            done = 0
            for chunk in _chunked_map(pool, self._prepare, work, stage.batch_size, stage.chunks_ahead):
                self.pending.extend(chunk)
                n_tensors = sum(p.n_inputs for p in self.pending)
                if n_tensors >= stage.batch_size() or len(self.pending) >= 4 * stage.batch_size():
                    self._flush()
                if progress:
                    done += len(chunk)
                    progress(done, len(work))
            self._flush()
            while self.in_flight:
                self._commit(*self.in_flight.popleft())
        except BaseException:
            decoders.cancel()  # interrupted or failed: stop decoding now, keep what was committed
            stage.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            stage.close()
            decoders.close()

    def _prepare(self, f: FileInfo) -> Prepared:
        """Runs in a worker thread: read, hash, sniff, then the stage's part (decoding, here or
        later). Returns a verdict for every file; raises only when the model cannot be loaded."""
        if f.error is not None or f.skip is not None:
            return Prepared(f, error=f.error, skipped=f.skip)
        try:
            with open(f.path, "rb") as fh:
                data = fh.read()
                st = os.fstat(fh.fileno())
        except FileNotFoundError:
            return Prepared(f, vanished=True)
        except OSError as e:
            return Prepared(f, error=f"cannot read file: {e.strerror or e}")
        if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns) or len(data) != st.st_size:
            return Prepared(f, changing=True)
        digest = content_hash(data)
        if digest in self.known_hashes:
            try:  # a copy or a move of known content: its header only
                meta = self.decoders.read_metadata(data).with_mtime(f.mtime_ns)
            except (ImageDecodeError, DecodeCancelled):
                meta = None
            return Prepared(f, digest, reuse=True, metadata=meta)
        is_video = False
        fmt = images.detect_format(data[: images.HEADER_BYTES], f.path)
        if fmt is None:
            if video.detect_video(data[: images.HEADER_BYTES]) is None:
                return Prepared(f, digest, skipped=NOT_AN_IMAGE)
            if not video.available():
                return Prepared(f, digest, error=video.NEEDS_PYAV, by_settings=True, kind="video")
            is_video = True
        elif (needs := images.missing_extra(fmt)) is not None:  # known without a decoder; judged again once the extra is installed
            return Prepared(f, digest, error=images.missing_extra_reason(needs), by_settings=True, needs=needs)
        if is_video:  # a stage that takes no videos leaves them to this machine
            return self.local.prepare(Prepared(f, digest, kind="video"), data)
        return self.stage.prepare(Prepared(f, digest), data)

    def _flush(self) -> None:
        """Send what waits to the stage for encoding; commit batches past the stage's window."""
        if not self.pending:
            return
        batch = [p for p in self.pending if p.n_inputs]
        # Copies of one content met in this run are encoded once: the first copy in the batch is
        # encoded, later ones take its vector, and content committed by an earlier batch of this
        # run takes the stored vector (a move or a copy, as for content known before the run).
        first_of: dict[str | None, Prepared] = {}
        for p in batch:
            if p.content_hash in self.known_hashes:
                p.tensor, p.frame_tensors, p.reuse = None, [], True
            else:
                first_of.setdefault(p.content_hash, p)
        to_encode = list(first_of.values())
        waits = []
        if self.local is self.stage:
            if to_encode:
                waits.append(self.stage.submit(to_encode))
        else:  # videos here, the rest on the stage
            videos = [p for p in to_encode if p.kind == "video"]
            others = [p for p in to_encode if p.kind != "video"]
            if others:
                waits.append(self.stage.submit(others))
            if videos:
                waits.append(self.local.submit(videos))
        self.in_flight.append((self.pending, batch, first_of, lambda: [wait() for wait in waits]))
        self.pending = []
        while len(self.in_flight) > self.stage.batches_in_flight():
            self._commit(*self.in_flight.popleft())

    def _commit(self, pending: list[Prepared], batch: list[Prepared], first_of: dict[str | None, Prepared], wait: Callable[[], Any]) -> None:
        """Wait for a batch's vectors, then write everything in it in one transaction (batch: its
        files that were to be encoded)."""
        wait()
        for p in batch:
            if p.reuse:
                continue
            if p.content_hash in self.known_hashes:  # committed by a batch encoded beside this one
                p.tensor, p.frame_tensors, p.reuse = None, [], True
                continue
            first = first_of[p.content_hash]
            if first is not p:  # a copy takes the verdict of the copy that was encoded
                p.width, p.height, p.error, p.by_settings, p.changing = first.width, first.height, first.error, first.by_settings, first.changing
                if p.metadata is None and first.metadata is not None:
                    p.metadata = first.metadata.with_mtime(p.file.mtime_ns)
        encoded_hashes = {h for h, p in first_of.items() if p.vector is not None and not p.reuse}
        report = self.report

        removed_ids: list[int] = []
        added: list[tuple[int, np.ndarray]] = []
        with self.ix.store.transaction() as tx:
            for p in pending:
                f = p.file
                old = self.known.get(f.path)
                if p.changing:
                    report.retry_later += 1
                    continue
                if p.vanished:
                    if old is not None:
                        tx.delete([old.id])
                        report.removed += 1
                    continue
                if p.error is not None or p.skipped is not None:
                    state, reason = (FAILED, p.error) if p.error is not None else (SKIPPED, p.skipped)
                    failed_under = decode_settings(self.ix.settings, for_video=p.kind == "video") if p.by_settings else None
                    if p.needs is not None:
                        failed_under = {**(failed_under or {}), "needs": p.needs}
                    if p.skipped == NOT_AN_IMAGE:  # the column keeps what a verdict was reached under
                        failed_under = {"formats": images.FORMATS_VERSION}
                    tx.put(f.path, size=f.size, mtime_ns=f.mtime_ns, content_hash=p.content_hash, state=state, error=reason,
                           failed_under=failed_under)
                    if p.error is not None:
                        report.failed += 1
                        report.failures.append((f.path, p.error))
                    elif p.skipped == scanner.LINK_OUT_OF_COLLECTION:
                        report.links_not_followed += 1
                        report.not_followed.append(f.path)
                    elif p.skipped == scanner.RAW_SIBLING:
                        report.raw_siblings += 1
                    else:
                        report.skipped += 1
                    continue
                metadata = p.metadata.to_columns() if p.metadata else None
                version = METADATA_VERSION if p.metadata else None
                if p.reuse:
                    if self._reuse(tx, p, old):
                        continue
                    vector = self.ix.store.vector_for_hash(p.content_hash)
                    assert vector is not None  # hashes are only deleted at the end of a run
                    kind, parts = self.ix.store.parts_for_hash(p.content_hash)
                    metadata, version = self._copy_of(p, metadata, version)
                    report.reused += 1
                else:
                    vector = first_of[p.content_hash].vector
                    kind, parts = p.kind, p.parts
                    if first_of[p.content_hash] is p:
                        report.encoded += 1
                    else:
                        first = first_of[p.content_hash]
                        kind, parts = first.kind, first.parts
                        report.reused += 1
                tx.put(
                    f.path,
                    size=f.size,
                    mtime_ns=f.mtime_ns,
                    content_hash=p.content_hash,
                    state=INDEXED,
                    vector=vector,
                    width=p.width,
                    height=p.height,
                    metadata=metadata,
                    metadata_version=version,
                    kind=kind,
                    parts=parts,
                )
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
            removed_ids, added = tx.removed_ids, tx.added
        # committed: bring FAISS in line
        if removed_ids:
            self.ix.vectors.remove(np.array(removed_ids, dtype=np.int64))
        if added:
            self.ix.vectors.add(np.array([i for i, _ in added], dtype=np.int64), np.stack([v for _, v in added]))
        self.known_hashes.update(h for h in encoded_hashes if h is not None)
        if time.monotonic() - self.last_snapshot >= self.ix.settings.snapshot_interval_s:
            self.ix.cache.save(self.ix.vectors)
            self.last_snapshot = time.monotonic()

    def _reuse(self, tx: Transaction, p: Prepared, old: FileRow | None) -> bool:
        """Handle known content without a new vector row: a touched file or a move. True if done."""
        f = p.file
        if old is not None and old.state == INDEXED and old.content_hash == p.content_hash:
            tx.touch(old.id, size=f.size, mtime_ns=f.mtime_ns)  # same bytes, new mtime
            self._keep_metadata(tx, old.id, p)
            self.report.unchanged += 1
            return True
        candidates = self.missing_by_hash.get(p.content_hash or "")
        if old is None and candidates:
            moved = candidates.pop()
            tx.move(moved.id, f.path, size=f.size, mtime_ns=f.mtime_ns)
            self._keep_metadata(tx, moved.id, p)
            self.report.moved += 1
            return True
        return False

    def _copy_of(self, p: Prepared, metadata: dict[str, Any] | None, version: int | None) -> tuple[dict[str, Any] | None, int | None]:
        """An exact copy of stored content shows the same picture: its size (p.width, p.height) and
        perceptual hash are the stored file's, and so is the rest of its metadata when its own
        header was not read (a video's, or a header the reader could not parse). Returns
        (metadata, metadata_version) to store."""
        same = self.ix.store.metadata_for_hash(p.content_hash or "")
        if same is None:
            return metadata, version
        p.width, p.height = same["width"], same["height"]
        if metadata is None:
            return {name: same[name] for name in METADATA_COLUMNS}, same["metadata_version"]
        return metadata | {"phash": metadata.get("phash") or same["phash"]}, version

    @staticmethod
    def _keep_metadata(tx: Transaction, row_id: int, p: Prepared) -> None:
        """A touched or moved file's header, read again (its mtime may stand in for a capture
        time); the perceptual hash of its unchanged pixels stays."""
        if p.metadata is not None:
            tx.set_metadata(row_id, p.metadata.to_columns(), METADATA_VERSION)


T = TypeVar("T")
R = TypeVar("R")


def _chunked_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T], size: Callable[[], int], ahead: Callable[[], int]
) -> Iterator[list[R]]:
    """pool.map over items in order, given in chunks of size() results; ahead() more chunks are
    computed while the caller works on one (so memory stays bounded)."""
    start = 0
    in_flight: deque[list[Future[R]]] = deque()
    while start < len(items) or in_flight:
        while start < len(items) and len(in_flight) <= ahead():
            chunk = items[start : start + size()]
            in_flight.append([pool.submit(fn, item) for item in chunk])
            start += len(chunk)
        yield [future.result() for future in in_flight.popleft()]
