"""The FAISS layer, checked against brute-force numpy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from searchlite import VectorIndex


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def test_search_matches_brute_force() -> None:
    vectors, queries = unit(500, 32), unit(7, 32, seed=1)
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = VectorIndex(32)
    index.add(ids, vectors)
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(ids, vectors, queries, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (found == want_ids).all()


def test_re_adding_an_id_replaces_it_instead_of_duplicating() -> None:
    index = VectorIndex(8)
    v = unit(2, 8)
    index.add(np.array([5]), v[:1])
    index.add(np.array([5]), v[1:])
    assert len(index) == 1
    scores, ids = index.search(v[1:], 5)
    assert ids.tolist() == [[5]]
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_remove_drops_ids_and_ignores_unknown_ones() -> None:
    index = VectorIndex(8)
    index.add(np.arange(10), unit(10, 8))
    assert index.remove(np.array([3, 4, 99])) == 2
    _, ids = index.search(unit(1, 8, seed=3), 10)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 5, 6, 7, 8, 9]


def test_k_larger_than_the_index_returns_what_there_is() -> None:
    index = VectorIndex(8)
    assert index.search(unit(1, 8), 5)[1].shape == (1, 0)
    index.add(np.arange(3), unit(3, 8))
    assert index.search(unit(1, 8), 5)[1].shape == (1, 3)


def test_wrong_shapes_are_refused() -> None:
    index = VectorIndex(8)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        index.add(np.arange(2), unit(2, 9))
    with pytest.raises(ValueError, match="ids for"):
        index.add(np.arange(3), unit(2, 8))
    with pytest.raises(ValueError, match="unique"):
        index.add(np.array([1, 1]), unit(2, 8))


def test_save_and_load_round_trip_without_leaving_temp_files(tmp_path: Path) -> None:
    index = VectorIndex(16)
    vectors = unit(50, 16)
    index.add(np.arange(50) * 3, vectors)
    index.save(tmp_path / "v.faiss")
    assert os.listdir(tmp_path) == ["v.faiss"]
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    assert len(loaded) == 50 and loaded.dim == 16
    q = unit(3, 16, seed=2)
    for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres: structured like real embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ann_index_is_tuned_to_the_recall_target_and_keeps_working(tmp_path: Path, faster_structure) -> None:
    faster_structure("ivf")
    both = clustered(20100, 32)
    vectors, queries = both[:20000], both[20000:]  # queries from the same distribution, not indexed
    ids = np.arange(20000, dtype=np.int64) * 5 + 1
    index = VectorIndex(32)
    index.add(ids, vectors)
    assert index.optimize()["kind"] == "exact"  # small: exact stays
    chosen = index.optimize(force=True)
    assert index.kind == "ivf" and chosen["recall_at_10"] >= 0.95 and len(index) == 20000
    _, want = brute_force(ids, vectors, queries, 10)
    _, got = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want.tolist(), got.tolist())])
    assert recall >= 0.95
    # incremental adds and removes after the ANN structure exists
    index.remove(ids[:100])
    assert len(index) == 19900
    assert not set(index.search(vectors[:100], 10)[1].ravel().tolist()) & set(ids[:100].tolist())
    fresh = clustered(10, 32, seed=3)
    index.add(np.arange(10) + 10**9, fresh)
    assert index.search(fresh, 1)[1].ravel().tolist() == list(range(10**9, 10**9 + 10))
    index.add(np.arange(10) + 10**9, fresh)  # re-adding replaces
    assert len(index) == 19910
    # it saves and loads with its structure and tuned probes
    index.save(tmp_path / "ivf.faiss")
    loaded = VectorIndex.load(tmp_path / "ivf.faiss")
    assert loaded.kind == "ivf" and loaded._index.nprobe == index._index.nprobe
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(a, b)
    # and goes back to exact search when asked to fit a small size
    assert index.optimize()["kind"] == "exact" and len(index) == 19910


def test_the_gpu_path_answers_like_the_cpu_through_adds_and_removes(monkeypatch) -> None:
    """No GPU here: the GPU copy is stood in for by a CPU clone of the same flat index, which checks
    everything around it (id mapping, copies dropped after changes, reuse between searches)."""
    import faiss

    import searchlite.storage.vector_index as vector_index

    copies = []
    monkeypatch.setattr(vector_index, "_to_gpu", lambda flat: copies.append(1) or faiss.clone_index(flat))
    gpu, cpu = VectorIndex(16, use_gpu=True), VectorIndex(16, use_gpu=False)
    vectors, queries = unit(300, 16), unit(5, 16, seed=1)
    for index in (gpu, cpu):
        index.add(np.arange(5000, 5300), vectors)
    for change in (None, lambda ix: ix.remove(np.arange(5000, 5100)), lambda ix: ix.add(np.array([5200, 9]), unit(2, 16, seed=3))):
        if change:
            for index in (gpu, cpu):
                change(index)
        for k in (1, 10, 400):  # 400: more than there are (both return them all)
            g, c = gpu.search(queries, k), cpu.search(queries, k)
            np.testing.assert_array_equal(g[1], c[1])
            np.testing.assert_allclose(g[0], c[0], rtol=1e-6)
    assert len(copies) == 3  # one per state of the index, reused across searches


def test_where_things_run_without_a_gpu(monkeypatch) -> None:
    import torch

    from searchlite.config import IndexSettings
    from searchlite.models.loading import resolve_device
    from searchlite.storage.vector_index import ANN_MIN_VECTORS, GPU_ANN_MIN_VECTORS, gpu_count

    import faiss

    # faiss-cpu (no GPU classes) counts none whatever the machine has; a GPU build counts torch's
    assert gpu_count() == (torch.cuda.device_count() if hasattr(faiss, "StandardGpuResources") else 0)
    assert VectorIndex(8).ann_min_vectors == ANN_MIN_VECTORS
    assert VectorIndex(8, use_gpu=True).ann_min_vectors == GPU_ANN_MIN_VECTORS
    assert (IndexSettings().batch_size_on("cpu"), IndexSettings().batch_size_on("cuda:1")) == (32, 256)
    assert IndexSettings(batch_size=7).batch_size_on("cuda") == 7  # --batch-size wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_search_among_some_ids_is_exact_over_them_even_when_approximate(kind: str, faster_structure) -> None:
    """query --tag: a rare tag's images must be found even if they sit in lists IVF would not probe."""
    vectors, queries = unit(4000, 32), unit(5, 32, seed=1)
    ids = np.arange(4000, dtype=np.int64) * 3
    index = VectorIndex(32)
    index.add(ids, vectors)
    if kind != "exact":
        faster_structure(kind)
        assert index.optimize(force=True)["kind"] == kind
    rng = np.random.default_rng(2)
    for size in (3, 50, 900):
        subset = np.sort(rng.choice(len(ids), size=size, replace=False))
        scores, found = index.search(queries, 10, among=ids[subset])
        want_scores, want_ids = brute_force(ids[subset], vectors[subset], queries, 10)
        n = min(10, size)
        np.testing.assert_array_equal(found[:, :n], want_ids)
        np.testing.assert_allclose(scores[:, :n], want_scores, rtol=1e-5)
        assert (found[:, n:] == -1).all()  # fewer matches than k: the rest is padding


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_ids_lists_what_the_index_holds(kind: str, faster_structure) -> None:
    index = VectorIndex(16)
    index.add(np.arange(0, 3000, 3), unit(1000, 16))
    index.remove(np.arange(0, 300, 3))
    if kind != "exact":
        faster_structure(kind)
        assert index.optimize(force=True)["kind"] == kind
    np.testing.assert_array_equal(np.sort(index.ids()), np.arange(300, 3000, 3))


STRUCTURES = ["exact", "ivf", "hnsw", "ivfpq", "hnswpq"]


def built(structure: str, n: int = 300, d: int = 32, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """An index of n random unit vectors (ids 7i+1, the first ten removed again) rebuilt as
    structure, with an exact source kept in step; and its (ids, vectors)."""
    from searchlite.storage.vector_index import ArrayVectors

    ids, vectors = np.arange(n, dtype=np.int64) * 7 + 1, unit(n, d, seed)
    index = VectorIndex(d, use_gpu=False)
    index.add(ids, vectors)
    index.remove(ids[:10])
    ids, vectors = ids[10:], vectors[10:]
    index.exact = ArrayVectors(ids, vectors)
    assert index.optimize(structure=structure)["kind"] == index.kind == structure
    return index, ids, vectors


def finished(fn, *args, **kwargs):
    """fn's result, run on a thread that must finish in 30 s: a lock taken twice fails, not hangs."""
    import threading

    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"{fn.__name__} did not finish (a lock taken twice?)"
    return out[0]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_scores_are_the_true_cosines_of_every_vector_on_every_structure(structure: str) -> None:
    """query --sort date/--all/--min-score score every vector: ivf deadlocked, ivfpq gave codes'
    scores from the probed lists only, hnswpq gave L2 distances."""
    index, ids, vectors = built(structure)
    query = unit(1, 32, seed=5)
    truth = vectors @ query[0]
    order = np.argsort(-truth, kind="stable")
    scores, found = finished(index.scores, query)
    assert len(found) == len(ids) == len(index)
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(scores, truth[order], atol=1e-6)
    subset = ids[::3][::-1]  # any order, and ids the index does not hold
    scores, found = finished(index.scores, query, among=np.concatenate([subset, [2, 10**9]]))
    np.testing.assert_array_equal(found, ids[::3][np.argsort(-truth[::3], kind="stable")])
    np.testing.assert_allclose(scores, np.sort(truth[::3])[::-1], atol=1e-6)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_search_for_k_returns_k_while_the_index_holds_them(structure: str) -> None:
    """IVF of 2 lists probing 1 returned 61 of 94 for k=500: short rows are answered exactly."""
    index, ids, vectors = built(structure, n=104)
    if structure in ("ivf", "ivfpq"):
        index._index.nprobe = 1  # what tuning picks when one list holds the top 10
    elif structure in ("hnsw", "hnswpq"):
        index._hnsw().hnsw.efSearch = 1
    queries = unit(4, 32, seed=6)
    for k in (10, 60, 94, 500):
        scores, found = index.search(queries, k)
        assert found.shape == (4, min(k, 94)) and (found >= 0).all(), (k, (found >= 0).sum(axis=1))
        assert all(len(set(row)) == len(row) for row in found.tolist())
    _, want = brute_force(ids, vectors, queries, 94)
    assert (np.sort(index.search(queries, 500)[1], axis=1) == np.sort(want, axis=1)).all()


@pytest.mark.parametrize("n", [2, 39, 94])
def test_faiss_prints_nothing_while_building_any_structure(n: int, capfd) -> None:
    """faiss's C++ k-means wrote 'WARNING clustering 75 points to 2 centroids' to the terminal."""
    from searchlite.storage.vector_index import ArrayVectors

    ids, vectors = np.arange(n, dtype=np.int64), unit(n, 32)
    for structure in STRUCTURES:
        index = VectorIndex(32, use_gpu=False, exact=ArrayVectors(ids, vectors))
        index.add(ids, vectors)
        assert index.optimize(structure=structure)["kind"] == structure
        assert index.optimize(force=True)["kind"] in ("exact", "ivf", "hnsw")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_an_unknown_or_impossible_structure_is_refused() -> None:
    index = VectorIndex(8, use_gpu=False)
    with pytest.raises(ValueError, match="unknown index structure 'ivfflat': choose one of auto, exact, ivf, hnsw, ivfpq, hnswpq"):
        index.optimize(structure="ivfflat")
    index.add(np.arange(1), unit(1, 8))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        index.optimize(structure="ivf")
    index.add(np.arange(1, 50), unit(49, 8, seed=1))
    with pytest.raises(ValueError, match="exact="):
        index.optimize(structure="ivfpq")
    assert index.kind == "exact" and len(index) == 50


def test_a_build_that_fails_leaves_the_old_index_and_its_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    # with an exact source the old structure was dropped before the build: a failure left it empty
    from searchlite.storage import ann_build
    from searchlite.storage.vector_index import ArrayVectors

    ids, vectors = np.arange(60, dtype=np.int64), unit(60, 8)
    index = VectorIndex(8, use_gpu=False, exact=ArrayVectors(ids, vectors))
    index.add(ids, vectors)
    index.optimize(structure="ivf")
    tuning, before = dict(index.tuning), index.search(vectors[:3], 5)

    def broken(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(ann_build, "build", broken)
    with pytest.raises(MemoryError):
        index.optimize(structure="hnsw")
    assert index.kind == "ivf" and len(index) == 60 and index.tuning == tuning
    assert all((a == b).all() for a, b in zip(index.search(vectors[:3], 5), before))
