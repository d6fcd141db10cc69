"""SearchEngine: the facade users embed. Opens an index folder, indexes photo folders into it,
searches it by text and image, reports on it. Owns the store, the vector index and the encoder."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .classify import probe, zeroshot
from .ingest import scanner
from .query import terms as query
from .text import tower as text_tower
from .storage.atomic_file import write_atomic
from .classify.classifier import DEFAULT_TAG_THRESHOLD, LinearClassifier
from .config import (
    DB_FILENAME,
    FAISS_FILENAME,
    LOCK_FILENAME,
    IndexSettings,
    resolve_index_dir,
)
from .models.encoder import ClipEncoder
from .models.loading import load_encoder
from .models.spec import ModelSpec, reconcile, spec_from_flags
from .errors import (
    ImageDecodeError,
    IndexLockedError,
    IndexNotFoundError,
    IndexWriteError,
    InvalidQueryError,
    ModelMismatchError,
    PathNotFoundError,
)
from .media.decode_worker import DecodeWorker
from .ingest.indexer import Indexer, IndexReport, ProgressFn, decode_options
from .storage.store import FAILED, INDEXED, SKIPPED, FileRow, Store, TagSetRow
from .text.cache import TextCache
from .text.tower import TextTower
from .storage.vector_index import VectorIndex
from .storage.writelock import writer_lock

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
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Classification:
    """Zero-shot verdict on one file: best label, its probability, and all labels ranked."""

    path: str
    label: str | None
    score: float | None
    ranking: tuple[tuple[str, float], ...] = ()
    error: str | None = None  # the file could not be read as an image


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
        self._text_tower: TextTower | None = None
        self._tower_checked = False  # whether the export beside the index has been looked for
        self._text_cache = TextCache()
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
        self._store.check_writable()
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
                report = indexer.run(root, progress)
                if vectors.kind == "exact" and len(vectors) >= vectors.ann_min_vectors:
                    log.warning("%d vectors: building an approximate index (once; `searchlite optimize` redoes it)", len(vectors))
                    vectors.optimize()
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
            report.tagged = self._refresh_tags()
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

        text, image and negative each take one item or a list; a text or image term may carry a
        weight as "2:beach". Texts and images add up, negatives subtract, and the sum is
        re-normalised. tag keeps only images carrying that tag (see tag()).
        """
        if k < 1:
            raise InvalidQueryError(f"k must be at least 1, got {k}")
        terms = query.parse_terms(_as_list(text), _as_list(image), _as_list(negative))
        if self._vectors is None and self._store.get_info("model") is None:
            raise IndexNotFoundError(f"the index in {self.index_dir} is empty: run `searchlite index FOLDER` first")
        vectors = self._get_vectors(writer=False)
        among = None
        if tag is not None:  # searched exactly among the tagged images, however rare the tag
            among = np.fromiter(self._store.ids_tagged(tag), dtype=np.int64)
            if not len(among):
                return []
        q = query.combine(self._embed(terms), [t.weight for t in terms])
        # Files deleted since the last `index` run are left out (one stat per hit), so ask FAISS
        # for more until k existing files are found or the index is exhausted.
        wanted, available = k, len(vectors) if among is None else min(len(vectors), len(among))
        while True:
            scores, ids = vectors.search(q, wanted, among=among)
            rows = self._store.fetch(int(i) for i in ids[0] if i >= 0)
            candidates = [(float(s), r) for s, i in zip(scores[0], ids[0]) if (r := rows.get(int(i))) is not None]
            found = [(s, r) for s, r in candidates if os.path.exists(r.path)][:k]
            if len(found) >= k or wanted >= available:
                break
            wanted *= 2
        if candidates and not found:  # e.g. the photos' drive is not mounted
            log.warning("none of the matching files exist (first: %s); is their drive connected?", candidates[0][1].path)
        tags_of = self._store.tags_of(r.id for _, r in found)
        return [Hit(r.path, s, r.id, r.width, r.height, r.size, tuple(tags_of[r.id])) for s, r in found]

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings (n, d) from the index's model; repeated texts come from a cache."""
        return self._text_cache.encode(list(texts), self._text_encoder().encode_texts)

    def _text_encoder(self) -> ClipEncoder | TextTower:
        """The text tower exported beside the index, which gives the torch model's embeddings
        without importing torch (seconds saved per cold query) and faster; the torch model where
        there is no usable export, which is then written."""
        with self._lock:
            if self._text_tower is None and not self._tower_checked and self._store.get_info("model") is not None:
                self._tower_checked = True
                self._text_tower = TextTower.load(self.index_dir / text_tower.FILENAME, self.model_key())
                if self._text_tower is None:  # none was usable: an older index, or a damaged one
                    self._export_text_tower(self._get_encoder())
            return self._text_tower or self._get_encoder()

    def _export_text_tower(self, encoder: ClipEncoder) -> None:
        """Write the model's text tower beside the index and use it for text queries, unless a
        usable one is there or the model's text side is not one text_tower.py runs. It is written
        only after giving the same tokens and embeddings as the torch model on test texts."""
        if self._text_tower is not None:  # in use (its onnxruntime session too): each index run comes here
            return
        path = self.index_dir / text_tower.FILENAME
        if (existing := TextTower.load(path, self.model_key())) is not None:
            self._text_tower = existing
            return
        exported = encoder.text_tower_weights()
        if exported is None:
            return
        tensors, heads, quick_gelu = exported
        tower = TextTower.from_tensors(tensors, heads, quick_gelu)
        texts = list(text_tower.CHECK_TEXTS)
        if tower is None or not np.array_equal(tower.tokenizer(texts), encoder.tokenize(texts).numpy()):
            log.info("not exporting the text tower: this model's text side differs from text_tower.py's")
            return
        cosine = float((tower.encode_texts(texts) * encoder.encode_texts(texts)).sum(axis=1).min())
        if cosine < text_tower.MIN_COSINE:
            log.info("not exporting the text tower: it drifts from the torch model (cosine %.6f)", cosine)
            return
        try:
            write_atomic(path, text_tower.export_bytes(tensors, heads=heads, quick_gelu=quick_gelu, model_key=self.model_key()))
        except OSError as e:  # a read-only index still answers, through torch
            log.info("cannot write %s (%s); text queries will use torch", path, e.strerror or e)
            return
        self._text_tower = TextTower.load(path, self.model_key())

    def embed_images(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Unit image embeddings (n, d), decoded as indexing decodes; a bad file raises."""
        vectors, errors = self._embed_files([os.fspath(p) for p in paths])
        if errors:
            raise InvalidQueryError(next(iter(errors.values())))
        return np.stack([vectors[os.fspath(p)] for p in paths])

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

    def _decode_query_image(self, path: str, decoder: DecodeWorker) -> Any:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise InvalidQueryError(f"query image {path} not found") from None
        except OSError as e:
            raise InvalidQueryError(f"cannot read query image {path}: {e.strerror or e}") from None
        try:
            return decoder.decode(data, **decode_options(self.settings, self._get_encoder())).image
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
            "vector_index": (self._store.get_info("faiss") or {}).get("kind", "exact"),
            "tags": self._store.tag_counts(),
        }

    def export_embeddings(self, npy_path: str | os.PathLike[str]) -> int:
        """Write every stored embedding to npy_path (float32 (n, d)) and, line by line in the same
        order, {"path": ...} objects to the .jsonl beside it. Returns n."""
        ids, vectors = [], []
        for chunk_ids, chunk in self._store.iter_vectors():
            ids.extend(chunk_ids.tolist())
            vectors.append(chunk)
        rows = self._store.fetch(ids)
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self._store.get_info("embed_dim") or 0), np.float32)
        buf = io.BytesIO()
        np.save(buf, matrix)
        npy = Path(npy_path)
        write_atomic(npy, buf.getvalue())
        lines = (json.dumps({"path": rows[i].path}) + "\n" for i in ids)
        write_atomic(npy.with_suffix(".jsonl"), "".join(lines).encode())
        return len(ids)

    def import_embeddings(self, npy_path: str | os.PathLike[str], paths_path: str | os.PathLike[str]) -> tuple[int, int]:
        """Load embeddings computed elsewhere (by this index's model) for files that exist here:
        npy_path holds float32 (n, d); paths_path the n paths, as .jsonl {"path": ...} lines or plain
        lines. Later index runs treat these files as unchanged. Returns (imported, not found here)."""
        self._store.check_writable()
        try:
            matrix = np.load(npy_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidQueryError(f"cannot read embeddings {npy_path}: {e}") from None
        paths = _read_paths(Path(paths_path))
        dim = self._store.get_info("embed_dim") or self._get_encoder().embed_dim
        if matrix.ndim != 2 or matrix.shape[1] != dim or len(matrix) != len(paths):
            raise InvalidQueryError(
                f"{npy_path} holds {matrix.shape} embeddings for {len(paths)} paths; this index needs "
                f"one {dim}-dimensional row per path (from its own model, {self.spec.describe()})"
            )
        norms = np.linalg.norm(matrix, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise InvalidQueryError(f"{npy_path} has rows that are zero, NaN or infinite")
        matrix = (matrix / norms[:, None]).astype(np.float32)
        if self._store.get_info("model") is None:
            self._store.set_info("embed_dim", dim)
            self._store.set_info("model", self.spec.to_record())
        imported = missing = 0
        with writer_lock(self.index_dir / LOCK_FILENAME):
            vectors = self._get_vectors(writer=True)
            for start in range(0, len(paths), 1000):
                ids, chunk = [], []
                with self._store.transaction() as tx:
                    for path, vector in zip(paths[start : start + 1000], matrix[start : start + 1000]):
                        try:
                            with open(path, "rb") as f:
                                data = f.read()
                                st = os.fstat(f.fileno())
                            width, height = _header_size(path)
                        except OSError:
                            missing += 1
                            continue
                        ids.append(tx.put(path, size=st.st_size, mtime_ns=st.st_mtime_ns, content_hash=scanner.content_hash(data),
                                          state=INDEXED, vector=vector, width=width, height=height))
                        chunk.append(vector)
                if ids:
                    vectors.add(np.array(ids, dtype=np.int64), np.stack(chunk))
                    imported += len(ids)
            self._save_vectors()
            self._refresh_tags()
        return imported, missing

    def optimize(self, *, force: bool = True) -> dict[str, Any]:
        """Rebuild the vector index for its size: approximate (IVF, tuned on the data) when large or
        forced, exact otherwise. Searches keep working meanwhile; returns what was chosen."""
        self._store.check_writable()
        with writer_lock(self.index_dir / LOCK_FILENAME):
            vectors = self._get_vectors(writer=True)
            chosen = vectors.optimize(force=force)
            self._save_vectors()
            return chosen

    # --- CLIP beyond search: zero-shot classification, tags, linear probes ----------------------

    def zero_shot(self, labels: str | Sequence[str], templates: str | None = None) -> LinearClassifier:
        """The zero-shot classifier for labels; templates: None/"single", "imagenet" (the CLIP
        paper's 80-template ensemble) or a file. Its class weights are cached in the index."""
        return self._zero_shot(_label_set(labels, templates))

    def _zero_shot(self, label_set: zeroshot.LabelSet) -> LinearClassifier:
        key = label_set.key(self.model_key())
        cached = self._store.cached_weights(key)
        if cached is not None:
            n = len(label_set.labels)
            return LinearClassifier(label_set.labels, cached.reshape(n, -1), np.zeros(n, np.float32))
        encoder = self._get_encoder()
        classifier = zeroshot.build(label_set, self.embed_text, encoder.logit_scale)
        self._store.cache_weights(key, classifier.weights)
        return classifier

    def classify(
        self, paths: Sequence[str | os.PathLike[str]], labels: str | Sequence[str], templates: str | None = None
    ) -> list[Classification]:
        """Zero-shot classify image files (indexed or not); a file that cannot be read gets an error."""
        classifier = self.zero_shot(labels, templates)
        vectors, errors = self._embed_files([os.fspath(p) for p in paths])
        out = []
        for path in map(os.fspath, paths):
            if path in errors:
                out.append(Classification(path, None, None, error=errors[path]))
                continue
            probs = classifier.probabilities(vectors[path][None, :])[0]
            ranking = tuple(sorted(zip(classifier.labels, map(float, probs)), key=lambda x: -x[1]))
            out.append(Classification(path, ranking[0][0], ranking[0][1], ranking))
        return out

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
        label_set = _label_set(labels, templates)
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
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not scanner.is_hidden(p.name)):
            for f in scanner.scan(sub):
                if f.error is None and f.skip is None:
                    paths.append(f.path)
                    labels.append(sub.name)
        vectors, errors = self._embed_files(paths)
        for path, reason in errors.items():
            log.warning("skipping %s: %s", path, reason)
        kept = [i for i, p in enumerate(paths) if p not in errors]
        if not kept:
            raise InvalidQueryError(f"no images in the subfolders of {folder}: make one subfolder of examples per label")
        return probe.fit(np.stack([vectors[paths[i]] for i in kept]), [labels[i] for i in kept])

    def save_probe(self, fitted: probe.ProbeFit, path: str | os.PathLike[str]) -> None:
        probe.save(path, fitted, self.model_key())

    def apply_probe(self, path: str | os.PathLike[str], *, name: str | None = None, threshold: float = DEFAULT_TAG_THRESHOLD) -> int:
        """Tag the index with a saved probe (its name defaults to the file's stem)."""
        self._store.check_writable()
        classifier, model_key = probe.load(path)
        if model_key != self.model_key():
            raise ModelMismatchError(
                f"probe {path} was trained with another model than this index's ({self.spec.describe()}); "
                "train it again with `searchlite probe train` on this index"
            )
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return self.apply_classifier(
            name or Path(path).stem, classifier, key=f"{digest}:{threshold}", threshold=threshold, source=f"probe {path}"
        )

    def apply_classifier(self, name: str, classifier: LinearClassifier, *, key: str, threshold: float, source: str) -> int:
        """Store a classifier as the tag set `name` and tag the images it has not seen yet."""
        with writer_lock(self.index_dir / LOCK_FILENAME):
            row = TagSetRow(name, key, classifier.labels, classifier.weights, classifier.bias, threshold, source)
            with self._store.transaction(vectors_changed=False) as tx:
                tx.set_tag_set(row)
            return self._refresh_tags()

    def _refresh_tags(self) -> int:
        """Apply every stored tag set to the images it has not tagged yet (no model needed)."""
        tagged = 0
        for ts in self._store.tag_sets():
            ids, vectors = self._store.untagged_vectors(ts.name)
            if len(ids):
                rows = LinearClassifier(ts.labels, ts.weights, ts.bias).tags(ids, vectors, ts.threshold)
                with self._store.transaction(vectors_changed=False) as tx:
                    tx.add_tags(ts.name, rows)
                tagged = max(tagged, len(ids))
        return tagged

    def model_key(self) -> str:
        """Identifies the model's weights (not where its checkpoint lives)."""
        record = {k: v for k, v in self.spec.to_record().items() if k != "checkpoint"}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def _embed_files(self, paths: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Unit embeddings of image files by path, and the reasons for those that failed. Files
        are read as indexing reads them: in a decoder process, under its time and memory limits."""
        vectors: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        decoder = DecodeWorker(self.settings.decode_timeout_s, self.settings.decoder_memory_limit)
        start = 0
        try:
            while start < len(paths):
                # the model's device is known once it is loaded (after the first batch that decodes)
                size = self.settings.batch_size_on(self._encoder.device if self._encoder else "cpu")
                chunk, start = paths[start : start + size], start + size
                batch = []
                for path in chunk:
                    try:
                        batch.append((path, self._decode_query_image(path, decoder)))
                    except InvalidQueryError as e:
                        errors[path] = str(e)
                if batch:
                    encoder = self._get_encoder()
                    encoded = encoder.encode_images([encoder.preprocess(img) for _, img in batch])
                    vectors.update({path: v for (path, _), v in zip(batch, encoded)})
        finally:
            decoder.close()
        return vectors, errors

    def failures(self) -> list[FileRow]:
        """Files that could not be indexed, with the reason in .error."""
        return self._store.rows_in_state(FAILED)

    # --- the pieces, loaded on first use -------------------------------------------------------

    def _get_encoder(self) -> ClipEncoder:
        with self._lock:
            if self._encoder is None:
                encoder = self._encoder_factory(self.spec, self._device)
                encoder.choose_precision(self.settings.precision)
                if self._store.get_info("model") is None and not self._store.read_only:
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
        if len(vectors) >= vectors.ann_min_vectors:
            vectors.optimize()
        if len(vectors) or path.exists():
            log.warning("rebuilt the vector cache %s from the database (%d vectors)", path, len(vectors))
        self._vectors = vectors
        if writer:
            self._save_vectors()
        elif not self._store.read_only:
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
        state = {"generation": self._store.generation, "count": len(self._vectors), "crc32": zlib.crc32(data), "kind": self._vectors.kind}
        self._store.set_info("faiss", state)


def _read_paths(path: Path) -> list[str]:
    """Absolute paths from a .jsonl of {"path": ...} objects or a file of plain lines."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines() if line.strip()]
    except OSError as e:
        raise InvalidQueryError(f"cannot read paths {path}: {e.strerror or e}") from None
    if path.suffix == ".jsonl":
        try:
            lines = [json.loads(line)["path"] for line in lines]
        except (ValueError, KeyError, TypeError):
            raise InvalidQueryError(f"{path}: every line must be a JSON object with a \"path\"") from None
    return [os.path.abspath(os.path.join(path.parent, p)) for p in lines]


def _header_size(path: str) -> tuple[int | None, int | None]:
    """Width and height from the image header alone (None when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the size is informative only
        return None, None


def _label_set(labels: str | Sequence[str], templates: str | None) -> zeroshot.LabelSet:
    return zeroshot.LabelSet(tuple(zeroshot.parse_labels(labels)), tuple(zeroshot.resolve_templates(templates)))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
