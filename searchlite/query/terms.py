"""Query terms: parsing "2::beach"-style weights and combining term embeddings into one unit vector.

A query is taken as typed: only a number followed by a double colon weights a term, so ordinary
text ("10:30 meeting", "http://x", "ratio 2:1") is never read as a weight."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidQueryError

TEXT = "text"
IMAGE = "image"


@dataclass(frozen=True)
class Term:
    """One part of a query: a text or an image file, with a weight (negative for --not terms)."""

    kind: str
    value: str
    weight: float = 1.0


WEIGHT_SEPARATOR = "::"


def split_weight(raw: str, *, is_path: bool = False) -> tuple[float, str]:
    """'2::beach' -> (2.0, 'beach'); 'beach' and '10:30 meeting' -> (1.0, as given).

    Only a number before a double colon is a weight; a single colon is always plain text, and a path
    that exists as given is never split. Raises InvalidQueryError for a weight that is not a positive
    finite number ('0::x', '-1::x', 'nan::x')."""
    head, sep, rest = raw.partition(WEIGHT_SEPARATOR)
    if not sep or (is_path and os.path.exists(raw)):
        return 1.0, raw
    try:
        weight = float(head)
    except ValueError:  # "std::vector", "a::b": text
        return 1.0, raw
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidQueryError(f"weight in {raw!r} must be a positive number, like 2{WEIGHT_SEPARATOR}{rest}")
    return weight, rest


def texts_from_words(words: Sequence[str]) -> list[str]:
    """The texts of a query typed as command-line words. Plain words are one text, as a person
    means them (`query a yellow triangle` is "a yellow triangle", not three terms added up);
    several arguments stay separate terms only when they say so: one of them holds a space (it
    was quoted: `query "a beach" "a sunset"`) or a weight (`query 2::beach sunset`)."""
    if len(words) > 1 and not any(len(w.split()) > 1 or _weighted(w) for w in words):
        return [" ".join(words)]
    return list(words)


def _weighted(raw: str) -> bool:
    """Whether raw starts with a weight ("2::beach"; also "0::x", which parse_terms refuses)."""
    head, sep, _ = raw.partition(WEIGHT_SEPARATOR)
    if not sep:
        return False
    try:
        float(head)
    except ValueError:
        return False
    return True


def parse_terms(
    texts: Sequence[str] = (), images: Sequence[str] = (), negatives: Sequence[str] = ()
) -> list[Term]:
    """Terms from a query as typed: texts and images add, negatives (texts) subtract."""
    terms: list[Term] = []
    for raw in texts:
        weight, text = split_weight(raw)
        terms.append(Term(TEXT, _nonblank(text, raw), weight))
    for raw in images:
        weight, path = split_weight(os.fspath(raw), is_path=True)
        terms.append(Term(IMAGE, path, weight))
    for raw in negatives:
        weight, text = split_weight(raw)
        terms.append(Term(TEXT, _nonblank(text, raw), -weight))
    if not any(t.weight > 0 for t in terms):
        raise InvalidQueryError("empty query: give a text, an image, or both", setting="query")
    return terms


def _nonblank(text: str, raw: str) -> str:
    if not text.strip():
        raise InvalidQueryError(f"empty text in query term {raw!r}")
    return text


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors (n, d), re-normalised: a (1, d) unit float32 query."""
    combined = (np.asarray(weights, dtype=np.float64)[:, None] * vectors).sum(axis=0)
    norm = float(np.linalg.norm(combined))
    if norm < 1e-6:
        raise InvalidQueryError("the query terms cancel each other out; change their weights")
    return (combined / norm).astype(np.float32).reshape(1, -1)
