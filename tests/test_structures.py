"""Every query mode on every index structure, against numpy brute force over the stored vectors.

One small index (photos in two folders with capture times, regions, exact copies, two videos when
PyAV is there, zero-shot tags; the tiny random model) is rebuilt as each structure with
`searchlite optimize --structure`, and every mode is compared with the brute-force answer computed
from the vectors SQLite holds: exact top-k equal; approximate top-k within the recall target, with
true scores; every "all" mode (--sort date, --all, --min-score) exact whatever the structure; a
query for k returns min(k, matching files). The modes also run at once from threads against one
engine, each thread joined with a timeout, so that a lock taken twice fails here instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite import IndexSettings, SearchEngine
from searchlite.cli import app
from searchlite.config import DB_FILENAME
from searchlite.query.relevance import cutoff
from searchlite.storage.store import Store
from tests.conftest import load_script

STRUCTURES = ("exact", "ivf", "hnsw", "ivfpq", "hnswpq")
RECALL = 0.9  # approximate top-10 (tuned for 0.97 on the tuning queries)
TEXT = "a red square"
DAY = 86_400 * 10**9


def run_within(seconds: float, fn, *args, **kwargs):
    """fn's result, on a thread that must finish in time (a deadlock fails the test)."""
    out, errors = [], []

    def target() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not finish in {seconds} s: a lock taken twice?"
    if errors:
        raise errors[0]
    return out[0]


@pytest.fixture(scope="module")
def library(tiny_model, tmp_path_factory: pytest.TempPathFactory):
    """(index folder, photos folder): built once with regions, tags, copies and videos."""
    root = tmp_path_factory.mktemp("structures")
    photos = root / "photos"
    rng = np.random.default_rng(24)
    for i in range(110):
        folder = photos / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        size = (176, 144) if i % 5 == 0 else (64, 64)  # the larger ones get region vectors
        path = folder / f"p{i:03d}.png"
        Image.fromarray(blocks).resize(size, Image.NEAREST).save(path)
        t = 1_704_067_200 * 10**9 + (i * 37 % 110) * DAY  # capture times from file times, over 110 days
        os.utime(path, ns=(t, t))
    for i in (3, 8):  # exact copies (same bytes, same time) in the other folder
        source = photos / ("a" if i % 2 else "b") / f"p{i:03d}.png"
        shutil.copy2(source, photos / ("b" if i % 2 else "a") / f"copy{i:03d}.png")
    try:
        import av  # noqa: F401 - videos need the extra

        load_script("make_shape_videos").write(photos / "videos", 2, seed=5, shots=(2, 2), seconds=(1.0, 1.5))
    except ImportError:
        pass
    config, checkpoint = tiny_model
    with pytest.MonkeyPatch.context() as mp:  # as conftest's per-test isolation, for the whole module
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
        mp.setenv("SEARCHLITE_CACHE", str(tmp_path_factory.getbasetemp() / "searchlite_cache"))
        mp.delenv("SEARCHLITE_INDEX", raising=False)
        settings = replace(IndexSettings(), regions=True)
        with SearchEngine.open(root / "index", model=str(config), pretrained=str(checkpoint), settings=settings) as engine:
            report = engine.index(photos)
            assert report.failed == 0
            engine.tag("red,green,blue,yellow")
        yield root / "index", photos


@dataclass
class Oracle:
    """The stored vectors and what they belong to, read from SQLite: the brute-force reference."""

    vectors: np.ndarray  # (n, d), every vector the index should hold
    owner: np.ndarray  # the file id of each
    rows: dict
    kinds: dict
    content: dict  # file id -> content hash: exact copies are one result
    tagged: dict

    @classmethod
    def read(cls, index: Path) -> Oracle:
        store = Store.open(index / DB_FILENAME)
        try:
            parts = list(store.iter_faiss_vectors())
            ids = np.concatenate([i for i, _ in parts])
            vectors = np.concatenate([v for _, v in parts])
            owners = store.vector_rows(ids.tolist())
            owner = np.array([owners[int(i)].image_id for i in ids])
            rows = store.fetch(np.unique(owner).tolist())
            kinds = store.file_kinds(rows)
            tagged = {label: store.ids_tagged(label) for label in ("red", "green", "blue", "yellow")}
        finally:
            store.close()
        return cls(vectors, owner, rows, kinds, {i: r.content_hash for i, r in rows.items()}, tagged)

    def file_scores(self, query: np.ndarray) -> dict[int, float]:
        """Each file's best cosine with the query (1, d)."""
        scores = self.vectors @ query.reshape(-1)
        best: dict[int, float] = {}
        for f, s in zip(self.owner.tolist(), scores.tolist()):
            best[f] = max(best.get(f, -2.0), s)
        return best

    def ranked(self, query: np.ndarray, files=None) -> list[tuple[str, float]]:
        """(content, score) of the files (all, or those in files), best first, each content once."""
        best = self.file_scores(query)
        seen, out = set(), []
        for f in sorted(best, key=lambda f: -best[f]):
            if (files is None or f in files) and self.content[f] not in seen:
                seen.add(self.content[f])
                out.append((self.content[f], best[f]))
        return out


def contents(oracle: Oracle, hits) -> list[str]:
    return [oracle.content[h.id] for h in hits]


@pytest.fixture(scope="module")
def oracle(library) -> Oracle:
    return Oracle.read(library[0])


@pytest.fixture(scope="module", params=STRUCTURES)
def engine(request, library, oracle):
    """The library rebuilt as one structure through the CLI, then opened."""
    structure = request.param
    result = CliRunner().invoke(app, ["optimize", "--structure", structure, "--index", str(library[0])])
    assert result.exit_code == 0, result.output
    assert f"vector index: {structure} (" in result.stderr
    with SearchEngine.open(library[0], create=False) as opened:
        opened.remember_queries = False
        assert opened.vectors.kind == structure and len(opened.vectors) == len(oracle.vectors)
        yield opened


def check_top(engine: SearchEngine, oracle: Oracle, hits, query: np.ndarray, k: int, files=None) -> None:
    """hits against brute force: equal on exact search, within the recall target otherwise; every
    score a true cosine of the file's vectors; min(k, matching) of them."""
    want = oracle.ranked(query, files)
    best = oracle.file_scores(query)
    assert len(hits) == min(k, len(want))
    assert all(files is None or h.id in files for h in hits)
    got = contents(oracle, hits)
    assert len(set(got)) == len(got)
    if engine.vectors.kind == "exact":
        assert got == [c for c, _ in want[:k]]
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in want[:k]], atol=1e-5)
    else:
        top = {c for c, _ in want[:k]}
        assert len(top & set(got)) >= RECALL * len(top)
        assert all(h.score <= best[h.id] + 1e-5 for h in hits)  # a vector's true cosine, never more
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).reshape(1, -1).astype(np.float32)


def test_top_k_text_and_image_queries_negatives_and_weights(engine: SearchEngine, oracle: Oracle, library) -> None:
    text = engine.embed_text([TEXT])
    for k in (1, 10, 500):
        check_top(engine, oracle, engine.search(TEXT, k=k), text, k)
    photo = str(library[1] / "a" / "p011.png")
    check_top(engine, oracle, engine.search(image=photo, k=10), engine.embed_images([photo]), 10)
    e = engine.embed_text(["a red square", "green", "blue"])
    mixed = unit(2 * e[0] + e[1] - e[2])
    check_top(engine, oracle, engine.search(["2::a red square", "green"], negative="blue", k=10), mixed, 10)
    some = next(iter(oracle.rows))  # more like this: a stored vector as the query
    check_top(engine, oracle, engine.search_vector(engine.stored_vector(some), k=10), engine.stored_vector(some), 10)


def test_filters_tags_and_type_search_exactly_among_their_files(engine: SearchEngine, oracle: Oracle, library) -> None:
    text = engine.embed_text([TEXT])
    folder = str(library[1] / "a")
    under = {i for i, r in oracle.rows.items() if r.path.startswith(folder + os.sep)}
    after = {i for i, r in oracle.rows.items() if r.taken_at and r.taken_at >= "2024-03-01"}
    for k in (10, 500):  # a filter's ids are searched exactly, on every structure
        for hits, files in (
            (engine.search(TEXT, k=k, path=folder), under),
            (engine.search(TEXT, k=k, after="2024-03-01"), after),
            (engine.search(TEXT, k=k, tag="red"), oracle.tagged["red"]),
            (engine.search(TEXT, k=k, type="image"), {i for i in oracle.rows if oracle.kinds.get(i) == "image"}),
            (engine.search(TEXT, k=k, type="video"), {i for i in oracle.rows if oracle.kinds.get(i) == "video"}),
        ):
            want = oracle.ranked(text, files)
            assert contents(oracle, hits) == [c for c, _ in want[:k]]
            np.testing.assert_allclose([h.score for h in hits], [s for _, s in want[:k]], atol=1e-5)
    assert 0 < len(under) < len(oracle.rows) and 0 < len(after) < len(oracle.rows)


def test_every_all_mode_is_exact_on_every_structure(engine: SearchEngine, oracle: Oracle) -> None:
    text = engine.embed_text([TEXT])
    best = oracle.file_scores(text)
    verdict = cutoff(np.array(list(best.values()), np.float32))
    near_cut = {c for f, c in oracle.content.items() if abs(best[f] - verdict.threshold) < 1e-5}

    ranked = engine.search(TEXT, all_ranked=True)  # --all: every file once, its true score, marked
    want = oracle.ranked(text)
    assert contents(oracle, ranked) == [c for c, _ in want]
    np.testing.assert_allclose([h.score for h in ranked], [s for _, s in want], atol=1e-5)
    assert all(h.relevant == (h.score >= verdict.threshold) for h in ranked if oracle.content[h.id] not in near_cut)

    dated = engine.search(TEXT, sort="date")  # the relevant files by capture time
    relevant = {c for c, s in want if s >= verdict.threshold}
    assert set(contents(oracle, dated)) - near_cut == relevant - near_cut
    assert [h.taken_at for h in dated] == sorted(h.taken_at for h in dated)

    middle = float(np.median(list(best.values())))  # --min-score: score >= it, exactly
    kept = engine.search(TEXT, sort="-date", min_score=middle)
    assert set(contents(oracle, kept)) == {c for c, s in want if s >= middle} and kept
    assert [h.taken_at for h in kept] == sorted((h.taken_at for h in kept), reverse=True)
    marked = engine.search(TEXT, all_ranked=True, min_score=middle)
    assert [h.relevant for h in marked] == [s >= middle for _, s in want]

    among = engine.search(TEXT, sort="date", min_score=middle, tag="red")  # and among a filter's files
    assert set(contents(oracle, among)) == {c for c, s in oracle.ranked(text, oracle.tagged["red"]) if s >= middle}

    # limit (-k with --sort or --all): the limit most relevant, still in their order
    capped = engine.search(TEXT, sort="date", min_score=middle, limit=5)
    assert set(contents(oracle, capped)) == {c for c, _ in want[:5]}
    assert [h.taken_at for h in capped] == sorted(h.taken_at for h in capped)
    assert contents(oracle, engine.search(TEXT, all_ranked=True, limit=7)) == [c for c, _ in want[:7]]
    listed = engine.search(sort="-date", limit=3)  # no query: the newest three
    assert [h.taken_at for h in listed] == [h.taken_at for h in engine.search(sort="-date")][:3]


def test_duplicates_are_found_whatever_the_structure(engine: SearchEngine, oracle: Oracle) -> None:
    exact = engine.duplicates("exact")
    copies = {}
    for i, digest in oracle.content.items():
        copies.setdefault(digest, set()).add(oracle.rows[i].path)
    assert sorted(sorted(f.path for f in g.files) for g in exact) == sorted(sorted(p) for p in copies.values() if len(p) > 1)
    own = {int(f): v for f, v in reversed(list(zip(oracle.owner, oracle.vectors)))}  # a file's first vector is its own
    for group in engine.duplicates("similar"):
        for f in group.files:  # each file is similar to another of its group, by brute force
            assert max(float(own[f.id] @ own[g.id]) for g in group.files if g.id != f.id) >= 0.9 - 1e-5


def test_the_modes_run_at_once_from_threads(engine: SearchEngine, oracle: Oracle) -> None:
    """A lock taken twice, or held across a slow call, fails here instead of hanging a server."""
    modes = [
        lambda: engine.search(TEXT, k=10),
        lambda: engine.search(TEXT, k=500),
        lambda: engine.search(TEXT, sort="date"),
        lambda: engine.search(TEXT, all_ranked=True),
        lambda: engine.search(TEXT, sort="date", min_score=0.0),
        lambda: engine.search(TEXT, k=10, tag="blue"),
        lambda: engine.search(TEXT, k=10, path=str(Path(next(iter(oracle.rows.values())).path).parent)),
    ]
    alone = [[(h.id, round(h.score, 5)) for h in mode()] for mode in modes]
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        for _ in range(3):
            results[i] = [(h.id, round(h.score, 5)) for h in modes[i % len(modes)]()]

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(2 * len(modes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a search never finished"
    assert all(results[i] == alone[i % len(modes)] for i in range(len(threads)))


def test_the_cli_answers_every_mode_for_k_and_in_time(engine: SearchEngine, oracle: Oracle, library) -> None:
    runner, index = CliRunner(), str(library[0])
    everything = len(set(oracle.content.values()))
    for args in ([TEXT, "-k", "500"], [TEXT, "--sort", "date"], [TEXT, "--all"], [TEXT, "--sort", "date", "--min-score", "0"]):
        result = run_within(60, runner.invoke, app, ["query", *args, "--index", index])
        assert result.exit_code == 0, result.output
        if "-k" in args or "--all" in args:
            assert len(result.stdout.splitlines()) == everything
    capped = run_within(60, runner.invoke, app, ["query", TEXT, "--all", "-k", "4", "--index", index])
    assert capped.exit_code == 0 and len(capped.stdout.splitlines()) == 4, capped.output


def test_an_unknown_structure_is_one_line_naming_the_choices(library) -> None:
    result = CliRunner().invoke(app, ["optimize", "--structure", "flat", "--index", str(library[0])])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "searchlite: error: unknown index structure 'flat': choose one of auto, exact, ivf, hnsw, ivfpq, hnswpq"
    ]


def test_info_says_in_words_how_every_structure_searches(engine: SearchEngine, library) -> None:
    # only exact and ivf had words; the others showed their bare name
    result = CliRunner().invoke(app, ["info", "--index", str(library[0])])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.stdout.splitlines() if line.startswith("vectors:")]
    assert re.search(r", (exact search|approximate search \(.+\))$", line), line
