"""Tag sets: a named linear classifier (zero-shot or probe) stored in the index, whose verdicts are
kept as tags on every indexed image, new ones included (no model needed to apply them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..storage.store import Store, TagSetRow
from .classifier import LinearClassifier


@dataclass(frozen=True)
class Classification:
    """Zero-shot verdict on one file: best label, its probability, and all labels ranked."""

    path: str
    label: str | None
    score: float | None
    ranking: tuple[tuple[str, float], ...] = ()
    error: str | None = None  # the file could not be read as an image


def store_tag_set(store: Store, name: str, classifier: LinearClassifier, *, key: str, threshold: float, source: str) -> None:
    """Create or replace the tag set `name` (the caller holds the write lock)."""
    row = TagSetRow(name, key, classifier.labels, classifier.weights, classifier.bias, threshold, source)
    with store.transaction(vectors_changed=False) as tx:
        tx.set_tag_set(row)


def refresh_tags(store: Store) -> int:
    """Apply every stored tag set to the images it has not tagged yet. Returns the most images any
    one set tagged."""
    tagged = 0
    for ts in store.tag_sets():
        ids, vectors = store.untagged_vectors(ts.name)
        if len(ids):
            rows = LinearClassifier(ts.labels, ts.weights, ts.bias).tags(ids, vectors, ts.threshold)
            with store.transaction(vectors_changed=False) as tx:
                tx.add_tags(ts.name, rows)
            tagged = max(tagged, len(ids))
    return tagged


def classify(classifier: LinearClassifier, paths: Sequence[str], vectors: dict, errors: dict) -> list[Classification]:
    """Verdicts for paths in order, from their embeddings (or their read errors)."""
    out = []
    for path in paths:
        if path in errors:
            out.append(Classification(path, None, None, error=str(errors[path])))
            continue
        probs = classifier.probabilities(vectors[path][None, :])[0]
        ranking = tuple(sorted(zip(classifier.labels, map(float, probs)), key=lambda x: -x[1]))
        out.append(Classification(path, ranking[0][0], ranking[0][1], ranking))
    return out
