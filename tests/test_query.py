"""Query terms: weights, negatives, combination."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from searchlite.errors import InvalidQueryError
from searchlite.query.terms import IMAGE, TEXT, Term, combine, parse_terms, split_weight


def test_weights_are_parsed_from_a_numeric_prefix_and_a_double_colon_only() -> None:
    assert split_weight("2::beach") == (2.0, "beach")
    assert split_weight("0.5::a dog") == (0.5, "a dog")
    assert split_weight("beach") == (1.0, "beach")
    assert split_weight("note:: a dog") == (1.0, "note:: a dog")
    assert split_weight("std::vector") == (1.0, "std::vector")


@pytest.mark.parametrize("raw", ["10:30 meeting", "http://x", "ratio 2:1", "2:beach", "note: a dog", "12:00"])
def test_a_single_colon_is_always_plain_text(raw: str) -> None:
    assert split_weight(raw) == (1.0, raw)
    assert parse_terms([raw]) == [Term(TEXT, raw, 1.0)]


def test_an_existing_path_with_a_colon_is_not_split(tmp_path: Path) -> None:
    for name in ["2:x.jpg", "2::x.jpg"]:
        path = tmp_path / name
        path.write_bytes(b"")
        assert split_weight(str(path), is_path=True) == (1.0, str(path))
    assert parse_terms([], ["0.5::a.jpg"]) == [Term(IMAGE, "a.jpg", 0.5)]


@pytest.mark.parametrize("raw", ["0::beach", "-1::beach", "inf::beach", "nan::beach", "0::x", "-1::x", "nan::x"])
def test_bad_weights_are_refused(raw: str) -> None:
    with pytest.raises(InvalidQueryError, match="positive number"):
        split_weight(raw)


def test_a_weight_needs_a_text() -> None:
    with pytest.raises(InvalidQueryError, match="empty text"):
        parse_terms(["2::  "])


def test_parse_terms_orders_texts_images_negatives() -> None:
    terms = parse_terms(["2::beach"], ["a.jpg"], ["3::people"])
    assert terms == [Term(TEXT, "beach", 2.0), Term(IMAGE, "a.jpg", 1.0), Term(TEXT, "people", -3.0)]


@pytest.mark.parametrize("texts,negatives", [([], []), ([], ["people"]), (["  "], [])])
def test_empty_queries_are_refused(texts: list[str], negatives: list[str]) -> None:
    with pytest.raises(InvalidQueryError, match="empty"):
        parse_terms(texts, [], negatives)


def test_combine_is_the_normalised_weighted_sum() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    q = combine(np.stack([a, b]), [1.0, 1.0])
    np.testing.assert_allclose(q, [[2**-0.5, 2**-0.5]], atol=1e-6)
    assert q.dtype == np.float32 and q.shape == (1, 2)


def test_terms_that_cancel_out_are_refused() -> None:
    a = np.array([1.0, 0.0], np.float32)
    with pytest.raises(InvalidQueryError, match="cancel"):
        combine(np.stack([a, a]), [1.0, -1.0])
