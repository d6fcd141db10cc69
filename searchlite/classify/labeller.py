"""CLIP as a classifier on an open index: zero-shot classifiers (their class weights cached in the
store), verdicts on files, tag sets made from zero-shot labels or saved probes, and probes fitted
on folders of examples."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, ModelMismatchError, PathNotFoundError, file_error
from ..storage.store import Store
from . import probe, zeroshot
from .classifier import LinearClassifier
from .tags import Classification, classify, refresh_tags, store_tag_set

if TYPE_CHECKING:
    from ..media.named_files import NamedFiles
    from ..models.hub import ModelHub

log = logging.getLogger(__name__)


class TagSet:
    """A classifier to keep as the tag set `name`, with what identifies it (key) and made it (source)."""

    def __init__(self, name: str, classifier: LinearClassifier, key: str, threshold: float, source: str) -> None:
        self.name, self.classifier, self.key, self.threshold, self.source = name, classifier, key, threshold, source


class Labeller:
    """Classifies with the index's model (models), reading the files callers name through files."""

    def __init__(self, store: Store, models: ModelHub, files: NamedFiles) -> None:
        self.store = store
        self.models = models
        self.files = files

    def zero_shot(self, label_set: zeroshot.LabelSet) -> LinearClassifier:
        """The zero-shot classifier of label_set; its class weights are cached in the store."""
        key = label_set.key(self.models.key())
        cached = self.store.cached_weights(key)
        if cached is not None:
            n = len(label_set.labels)
            return LinearClassifier(label_set.labels, cached.reshape(n, -1), np.zeros(n, np.float32))
        classifier = zeroshot.build(label_set, self.models.embed_text, self.models.image_encoder().logit_scale)
        self.store.cache_weights(key, classifier.weights)
        return classifier

    def classify(self, paths: Sequence[str | os.PathLike[str]], label_set: zeroshot.LabelSet) -> list[Classification]:
        """Verdicts on files (see SearchEngine.classify); missing files are found before any model loads."""
        from ..media.embed_files import named_file_exists

        names = [os.fspath(p) for p in paths]
        missing: dict[str, Any] = {p: PathNotFoundError(f"file {p} not found") for p in names if not named_file_exists(p)}
        present = [p for p in names if p not in missing]
        if not present:
            return [Classification(p, None, None, error=str(missing[p])) for p in names]
        classifier = self.zero_shot(label_set)
        vectors, errors = self.files.embed(present)
        return classify(classifier, names, vectors, errors | missing)

    def zero_shot_tags(self, name: str, label_set: zeroshot.LabelSet, templates: str | None, threshold: float) -> TagSet:
        """The tag set of zero-shot labels (templates: as given, for its source)."""
        key = label_set.key(self.models.key())
        source = f"zero-shot, templates: {templates or 'single'}"
        return TagSet(name, self.zero_shot(label_set), f"{key}:{threshold}", threshold, source)

    def probe_tags(self, path: str | os.PathLike[str], name: str | None, threshold: float) -> TagSet:
        """The tag set of a saved probe (named by the file's stem by default), which must have been
        trained with this index's model."""
        classifier, model_key = probe.load(path)
        if model_key != self.models.key():
            raise ModelMismatchError(
                f"probe {path} was trained with another model than this index's ({self.models.spec.describe()}); "
                "train it again on this index"
            )
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return TagSet(name or Path(path).stem, classifier, f"{digest}:{threshold}", threshold, f"probe {path}")

    def keep(self, tags: TagSet) -> int:
        """Store a tag set and tag the images it has not seen yet (the caller holds the write lock).
        Returns images newly tagged."""
        store_tag_set(self.store, tags.name, tags.classifier, key=tags.key, threshold=tags.threshold, source=tags.source)
        return refresh_tags(self.store)

    def fit_probe(self, folder: str | os.PathLike[str]) -> probe.ProbeFit:
        """A linear probe fitted on a folder with one subfolder of example images per label."""
        from ..ingest import scanner

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
        vectors, errors = self.files.embed(paths)
        for path, error in errors.items():
            log.warning("skipping %s: %s", path, error)
        kept = [i for i, p in enumerate(paths) if p not in errors]
        if not kept:
            raise InvalidInputError(f"no images in the subfolders of {folder}: make one subfolder of examples per label")
        return probe.fit(np.stack([vectors[paths[i]] for i in kept]), [labels[i] for i in kept])
