"""Approximate search tuned on the queries people send (text, across CLIP's modality gap), and the
compressed index past a memory budget, re-ranked with the exact vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite import SearchEngine, VectorIndex
from searchlite.storage.vector_index import ArrayVectors
from tests.conftest import load_script

bench = load_script("bench_ann")
D = 64


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), found.tolist())]))


def exact_top(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.fixture(scope="module")
def gapped() -> dict:
    """20k image vectors in one cone; text queries (for tuning, and others for evaluation) in another."""
    world = bench.directions(D, 0)
    vectors = bench.images(20_000, D, np.random.default_rng(1), world)
    text_eval, described = bench.texts(150, D, np.random.default_rng(2), world)
    text_tune, _ = bench.texts(300, D, np.random.default_rng(3), world)
    ids = np.arange(20_000, dtype=np.int64) * 7 + 3
    assert 0.2 <= float(np.mean(np.sum(text_eval * described, 1))) <= 0.35  # CLIP-like: a text and its image
    return {"vectors": vectors, "ids": ids, "text_eval": text_eval, "text_tune": text_tune,
            "truth": exact_top(ids, vectors, text_eval)[1]}


def test_tuning_on_text_like_queries_reaches_the_recall_that_tuning_on_images_misses(gapped: dict, monkeypatch) -> None:
    import searchlite.storage.ann_build as ann_build

    monkeypatch.setattr(ann_build, "HNSW_TRY_FRACTION", 1.0)  # IVF alone here; HNSW has its own test
    index = VectorIndex(D, use_gpu=False)
    index.add(gapped["ids"], gapped["vectors"])
    on_images = index.optimize(force=True)
    assert on_images["tuned_on"] == "indexed vectors" and on_images["recall_at_10"] >= 0.97
    assert recall(gapped["truth"], index.search(gapped["text_eval"], 10)[1]) < 0.9  # out of distribution

    on_texts = index.optimize(force=True, queries=gapped["text_tune"])
    assert on_texts["tuned_on"] == "queries" and on_texts["queries"] == 300 and on_texts["recall_at_10"] >= 0.97
    assert on_texts["nprobe"] > on_images["nprobe"]
    assert recall(gapped["truth"], index.search(gapped["text_eval"], 10)[1]) >= 0.95  # other texts, not tuned on


def test_retune_on_recent_queries_probes_more_only_when_recall_is_short(gapped: dict, monkeypatch) -> None:
    import searchlite.storage.ann_build as ann_build

    monkeypatch.setattr(ann_build, "HNSW_TRY_FRACTION", 1.0)  # IVF alone
    index = VectorIndex(D, use_gpu=False)
    index.add(gapped["ids"], gapped["vectors"])
    before = index.optimize(force=True)["nprobe"]
    checked = index.retune(gapped["text_tune"])
    assert checked["recall_before"] < 0.97 <= checked["recall_at_10"] and checked["nprobe"] > before
    assert recall(gapped["truth"], index.search(gapped["text_eval"], 10)[1]) >= 0.95
    assert index.retune(gapped["text_tune"], min_growth=0.1) is None  # not grown since: not due
    assert "nprobe" not in index.retune(gapped["text_tune"])  # recall already there: unchanged
    assert VectorIndex(D).retune(gapped["text_tune"]) is None  # exact search needs no tuning


def test_hnsw_is_kept_when_it_answers_faster_and_stays_incremental(gapped: dict, faster_structure, tmp_path: Path) -> None:
    # which is faster depends on the machine and the data: here HNSW is made to measure faster
    faster_structure("hnsw")
    ids, vectors = gapped["ids"][:5000], gapped["vectors"][:5000]
    index = VectorIndex(D, use_gpu=False)
    index.add(ids, vectors)
    chosen = index.optimize(force=True, queries=gapped["text_tune"])
    assert chosen["kind"] == index.kind == "hnsw" and chosen["recall_at_10"] >= 0.97
    assert set(chosen["compared"]) == {"ivf_p50_ms", "hnsw_p50_ms", "ivf_recall_at_10", "hnsw_recall_at_10"}
    queries = gapped["text_eval"]
    assert recall(exact_top(ids, vectors, queries)[1], index.search(queries, 10)[1]) >= 0.95

    # removes (the graph keeps the nodes, never returns them), replacing adds, ids, among
    assert index.remove(np.concatenate([ids[:100], [10**12]])) == 100 and len(index) == 4900
    assert not set(index.search(vectors[:100], 10)[1].ravel().tolist()) & set(ids[:100].tolist())
    index.add(ids[100:103], vectors[:3])  # replaces three ids' vectors
    assert len(index) == 4900 and index.search(vectors[:3], 1)[1].ravel().tolist() == ids[100:103].tolist()
    np.testing.assert_array_equal(np.sort(index.ids()), ids[100:])
    subset = ids[1000:1050]
    got = index.search(queries[:4], 10, among=subset)
    np.testing.assert_array_equal(got[1], exact_top(subset, vectors[1000:1050], queries[:4])[1])

    index.save(tmp_path / "hnsw.faiss")
    loaded = VectorIndex.load(tmp_path / "hnsw.faiss")
    assert loaded.kind == "hnsw" and len(loaded) == 4900
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    rebuilt = loaded.optimize(force=True, queries=gapped["text_tune"])  # drops the removed nodes
    assert rebuilt["vectors"] == 4900 and len(loaded) == 4900 and loaded._index.ntotal == 4900


class DictVectors:
    """An exact source the test keeps in step with the index, as the engine's SQLite is."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.rows = dict(zip(ids.tolist(), vectors))

    def __len__(self) -> int:
        return len(self.rows)

    def fetch(self, ids: np.ndarray):
        found = [i for i in np.asarray(ids).tolist() if i in self.rows]
        return np.array(found, np.int64), np.array([self.rows[i] for i in found], np.float32).reshape(len(found), D)

    def chunks(self):
        items = list(self.rows.items())
        for start in range(0, len(items), 5000):
            part = items[start : start + 5000]
            yield np.array([i for i, _ in part], np.int64), np.stack([v for _, v in part])


@pytest.mark.parametrize("kind", ["ivfpq", "hnswpq"])
def test_a_small_memory_budget_gives_a_compressed_index_re_ranked_exactly(kind: str, gapped: dict, tmp_path: Path, monkeypatch, faster_structure) -> None:
    # inverted lists or a graph over the codes: whichever measures faster is kept; here, `kind`
    import searchlite.storage.ann_build as ann_build

    faster_structure(kind)
    if kind == "ivfpq":
        monkeypatch.setattr(ann_build, "HNSW_TRY_FRACTION", 1.0)  # no graph built beside it: faster
    ids, vectors, queries = gapped["ids"][:12_000], gapped["vectors"][:12_000], gapped["text_eval"]
    source = DictVectors(ids, vectors)
    index = VectorIndex(D, use_gpu=False, exact=source)
    chosen = index.optimize(force=True, queries=gapped["text_tune"][:100], memory_budget=2_500_000)  # flat: 3.2 MB
    assert chosen["kind"] == index.kind == kind and chosen["recall_at_10"] >= 0.97
    # at 64 dimensions a graph's links outweigh the codes (at 512: a seventh of flat, with the codes)
    assert index.nbytes <= (0.3 if kind == "ivfpq" else 0.7) * 12_000 * (4 * D + 8) and len(index) == 12_000
    want_scores, want_ids = exact_top(ids, vectors, queries)
    scores, found = index.search(queries, 10)
    assert recall(want_ids, found) >= 0.95
    same = [(a == b).all() for a, b in zip(found, want_ids)]
    assert np.mean(same) >= 0.6  # most queries get exactly the exact top 10, in order
    exact_rows = [i for i, s in enumerate(same) if s]
    np.testing.assert_allclose(scores[exact_rows], want_scores[exact_rows], rtol=1e-5)  # exact scores, not codes'

    # among: exact over those ids, scored with the exact vectors
    subset = ids[::97]
    got = index.search(queries[:5], 10, among=subset)
    np.testing.assert_array_equal(got[1], exact_top(subset, vectors[::97], queries[:5])[1])

    # adds and removes keep working (the source first, as the engine's store commits first)
    for i in ids[:50].tolist():
        del source.rows[i]
    assert index.remove(ids[:50]) == 50
    assert not set(index.search(vectors[:50], 10)[1].ravel().tolist()) & set(ids[:50].tolist())
    fresh = bench.images(5, D, np.random.default_rng(9), bench.directions(D, 0))
    new_ids = np.arange(5, dtype=np.int64) + 10**9
    source.rows.update(zip(new_ids.tolist(), fresh))
    index.add(new_ids, fresh)
    assert index.search(fresh, 1)[1].ravel().tolist() == new_ids.tolist()
    assert len(index) == 12_000 - 50 + 5

    # the saved file keeps the structure and tuning; with its source it answers the same
    index.save(tmp_path / "pq.faiss")
    loaded = VectorIndex.load(tmp_path / "pq.faiss", exact=source)
    assert loaded.kind == kind and loaded.tuning["shortlist"] == index.tuning["shortlist"]
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


def test_compressing_needs_the_exact_vectors_and_bare_faiss_files_still_load(gapped: dict, tmp_path: Path) -> None:
    import faiss

    index = VectorIndex(D, use_gpu=False)
    index.add(gapped["ids"][:2000], gapped["vectors"][:2000])
    with pytest.raises(ValueError, match="exact="):
        index.optimize(force=True, memory_budget=10_000)
    assert index.kind == "exact" and len(index) == 2000  # left as it was
    (tmp_path / "old.faiss").write_bytes(faiss.serialize_index(index._index).tobytes())  # as earlier versions wrote
    old = VectorIndex.load(tmp_path / "old.faiss")
    assert len(old) == 2000 and old.tuning == {}


def test_array_vectors_fetch_what_they_hold_in_any_id_order() -> None:
    vectors = bench.unit(np.random.default_rng(0).standard_normal((6, 4)))
    source = ArrayVectors(np.array([50, 10, 40, 20, 30, 60]), vectors)
    found, got = source.fetch(np.array([60, 11, 10]))
    assert sorted(found.tolist()) == [10, 60] and len(source) == 6
    for i, v in zip(found.tolist(), got):
        np.testing.assert_array_equal(v, vectors[[50, 10, 40, 20, 30, 60].index(i)])
    assert sum(len(ids) for ids, _ in source.chunks()) == 6


def rotated_copies(photos: Path, n: int = 45) -> None:
    for i in range(n):  # enough vectors for small inverted lists
        Image.open(photos / "astronaut.jpg").rotate(i * 8).save(photos / f"r{i:02d}.jpg")


def test_engine_optimize_tunes_on_text_queries_and_the_recent_ones(engine_factory, photos: Path, index_dir: Path, faster_structure) -> None:
    faster_structure("ivf")
    rotated_copies(photos)
    engine = engine_factory()
    engine.index(photos)
    for text in ("a cat", "a red car", "the sea at night"):
        engine.search(text, k=3)
    engine.search_vector(engine.stored_vector(1), k=3)
    engine.close()  # remembers the queries beside the index
    recent = np.load(index_dir / "recent_queries.npy")
    assert recent.shape == (4, engine.vectors.dim)

    with SearchEngine.open(index_dir) as reopened:
        chosen = reopened.optimize()
        from searchlite.query.phrases import tuning_phrases

        assert chosen["kind"] == "ivf" and chosen["tuned_on"] == "queries"
        assert chosen["queries"] == len(tuning_phrases()) + 4 and chosen["recall_at_10"] >= 0.97
        tuned = reopened.vectors.tuning
        assert tuned["nprobe"] == chosen["nprobe"] and tuned["tuned_on"] == "queries"
    with SearchEngine.open(index_dir) as saved:  # the tuning was saved with the index, and is what it searches with
        assert saved.info()["vector_index"] == "ivf" and saved.vectors.tuning == tuned


def test_a_reader_rebuilding_an_approximate_index_loads_no_model(engine_factory, photos: Path, index_dir: Path, monkeypatch, faster_structure) -> None:
    """The tuning phrases are embedded once, by the writer that built the approximate index, and
    kept beside it: a reader that rebuilds a damaged FAISS file tunes on them without CLIP."""
    from searchlite.query.phrases import tuning_phrases

    faster_structure("ivf")
    monkeypatch.setattr("searchlite.storage.vector_index.ANN_MIN_VECTORS", 20)
    rotated_copies(photos)
    writer = engine_factory()
    writer.index(photos)
    assert writer.vectors.kind == "ivf" and (index_dir / "tuning_queries.npz").exists()
    writer.close()
    (index_dir / "vectors.faiss").write_bytes(b"damaged")

    def no_model(*_args):
        raise AssertionError("a reader's rebuild must not run CLIP")

    with SearchEngine.open(index_dir, encoder_factory=no_model) as reader:
        tuning = reader.vectors.tuning
        assert reader.vectors.kind == "ivf" and tuning["tuned_on"] == "queries" and tuning["queries"] == len(tuning_phrases())
        assert not reader.model_loaded


def test_engine_compresses_under_a_small_budget_and_reopens_it(engine_factory, photos: Path, index_dir: Path) -> None:
    rotated_copies(photos)
    engine = engine_factory()
    engine.index(photos)
    probe = str(photos / "r05.jpg")
    want = [h.path for h in engine.search(image=probe, k=5)]
    chosen = engine.optimize(memory_budget=1000)
    assert chosen["kind"] in ("ivfpq", "hnswpq") and engine.info()["vector_index"] == chosen["kind"]
    assert [h.path for h in engine.search(image=probe, k=5)] == want  # re-ranked with SQLite's vectors
    engine.close()
    with SearchEngine.open(index_dir) as reopened:  # the compressed file loads, and stays incremental
        assert [h.path for h in reopened.search(image=probe, k=5)] == want
        Image.open(photos / "astronaut.jpg").rotate(200).save(photos / "late.jpg")
        (photos / "r07.jpg").unlink()
        report = reopened.index(photos)
        assert report.added == 1 and reopened.info()["vector_index"] == chosen["kind"]
        assert [h.path for h in reopened.search(image=str(photos / "late.jpg"), k=1)] == [str(photos / "late.jpg")]
        assert str(photos / "r07.jpg") not in [h.path for h in reopened.search(image=probe, k=50)]


def test_the_server_remembers_no_queries(engine_factory, photos: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    engine.remember_queries = False  # as `searchlite serve` and `mcp` set it
    engine.search("a cat")
    engine.close()
    assert not (index_dir / "recent_queries.npy").exists()


def test_recent_queries_are_a_bounded_ring_and_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    from searchlite.storage.recent_queries import RecentQueries

    path = tmp_path / "recent_queries.npy"
    path.write_bytes(b"not numpy")
    ring = RecentQueries(path, size=5)
    assert len(ring.vectors()) == 0
    for i in range(7):
        ring.add(np.full(4, i, np.float32))
    ring.save()
    assert RecentQueries(path, size=5).vectors()[:, 0].tolist() == [2, 3, 4, 5, 6]
    (tmp_path / "folder").mkdir()
    unwritable = RecentQueries(tmp_path / "folder", size=5)  # not a file: saving is skipped, quietly
    unwritable.add(np.ones(4, np.float32))
    unwritable.save()
    assert (tmp_path / "folder").is_dir() and list((tmp_path / "folder").iterdir()) == []  # nothing written there
    assert unwritable.vectors().tolist() == [[1, 1, 1, 1]]  # and the ring goes on in memory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "recent_queries.npy"]  # no temporary file left behind


def test_the_benchmarks_stand_in_database_holds_what_a_compressed_index_re_ranks_with(tmp_path: Path) -> None:
    from searchlite.storage.store import Store
    from searchlite.storage.vector_cache import StoreVectors

    rows = bench.unit(np.random.default_rng(0).standard_normal((300, 8))).astype(np.float32)
    np.save(tmp_path / "images.npy", rows)
    bench.make_db(tmp_path / "stand-in.db", tmp_path / "images.npy", 300, 8)
    store = Store.open(tmp_path / "stand-in.db")
    try:
        exact = StoreVectors(store)
        assert len(exact) == 300
        ids, got = exact.fetch(np.array([299, 0, 17]))
        np.testing.assert_array_equal(got[np.argsort(ids)], rows[[0, 17, 299]])
        assert sum(len(chunk_ids) for chunk_ids, _ in exact.chunks()) == 300
    finally:
        store.close()
