"""Hostile and exotic files: every file gets a verdict, nothing valid is lost, nothing crashes.

The corpus (scripts/make_hostile_corpus.py, 200+ files) is indexed once per module through the real
pipeline (decoder processes included) and every expectation is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite import SearchEngine
from searchlite.cli import app
from searchlite.config import DB_FILENAME, IndexSettings
from searchlite.errors import ImageDecodeError
from searchlite.media.images import decode_rgb
from searchlite.storage.store import FAILED, INDEXED, SKIPPED, Store
from tests.conftest import load_script

corpus_script = load_script("make_hostile_corpus")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model):
    """(collection folder, expectations, index folder, first report) — indexed once."""
    root = tmp_path_factory.mktemp("hostile")
    expected = corpus_script.make_corpus(root)
    collection, index = root / "collection", root / "index"
    config, checkpoint = tiny_model
    with SearchEngine.open(index, model=str(config), pretrained=str(checkpoint)) as engine:
        report = engine.index(collection)
    return collection, expected, index, report


def rows_by_path(index: Path) -> dict[bytes, object]:
    store = Store.open(index / DB_FILENAME)
    try:
        return {os.fsencode(r.path): r for state in (INDEXED, FAILED, SKIPPED) for r in store.rows_in_state(state)}
    finally:
        store.close()


def test_the_corpus_is_big_and_varied(corpus) -> None:
    _, expected, _, _ = corpus
    assert len(expected) >= 200
    assert {e.verdict for e in expected} == {"indexed", "failed", "skipped", "absent"}


def test_every_file_gets_its_verdict_and_reason(corpus) -> None:
    collection, expected, index, report = corpus
    rows = rows_by_path(index)
    base = os.fsencode(collection) + b"/"
    state_of = {"indexed": INDEXED, "failed": FAILED, "skipped": SKIPPED}
    for e in expected:
        row = rows.get(base + e.path)
        if e.verdict == "absent":
            assert row is None, e.path
            continue
        assert row is not None, e.path
        assert row.state == state_of[e.verdict], (e.path, row.state, row.error)
        if e.verdict != "indexed":
            assert row.error, e.path
            assert e.reason is None or e.reason in row.error, (e.path, row.error)
            assert "\n" not in row.error and "object at 0x" not in row.error  # one readable line
    # nothing else was recorded
    assert set(rows) == {base + e.path for e in expected if e.verdict != "absent"}
    counts = {v: sum(e.verdict == v for e in expected) for v in state_of}
    links_out = sum(e.verdict == "skipped" and e.reason == "not followed" for e in expected)
    assert (report.added, report.failed, report.skipped + report.links_not_followed) == (counts["indexed"], counts["failed"], counts["skipped"])
    assert report.links_not_followed == links_out == 1


def test_exotic_files_show_the_colours_a_viewer_shows(corpus) -> None:
    collection, expected, _, _ = corpus
    checked = 0
    for e in expected:
        if e.center_rgb is None:
            continue
        decoded = decode_rgb(Path(os.fsdecode(os.fsencode(collection) + b"/" + e.path)).read_bytes())
        w, h = decoded.image.size
        pixel = decoded.image.getpixel((w // 2, h // 2))
        assert decoded.image.mode == "RGB"
        assert max(abs(a - b) for a, b in zip(pixel, e.center_rgb)) <= 12, (e.path, pixel, e.center_rgb)
        checked += 1
    assert checked >= 100


def test_exif_orientation_is_applied_for_all_eight_values(corpus) -> None:
    collection, _, _, _ = corpus
    for orientation in range(2, 9):
        decoded = decode_rgb((collection / "exif" / f"orientation-{orientation}.jpg").read_bytes())
        assert (decoded.width, decoded.height) == (60, 40)
        top, bottom = decoded.image.getpixel((30, 5)), decoded.image.getpixel((30, 35))
        assert top[0] > 150 and top[2] < 100, (orientation, top)
        assert bottom[2] > 150 and bottom[0] < 100, (orientation, bottom)


def test_bombs_are_refused_from_the_header(corpus) -> None:
    collection, _, index, _ = corpus
    rows = rows_by_path(index)
    bomb = rows[os.fsencode(collection / "bombs" / "bomb-100000x100000.png")]
    # the size limit is checked before decoding: a decode would have failed for memory or time
    assert "over the 150 MP limit" in bomb.error and "--" not in bomb.error  # the CLI adds flag hints


def test_bad_files_in_a_batch_never_shift_good_files_vectors(corpus, tmp_path: Path, tiny_model) -> None:
    collection, _, index, _ = corpus
    clean = tmp_path / "clean"
    clean.mkdir()
    for path in (collection / "batch").glob("*-good.jpg"):
        shutil.copy(path, clean / path.name)
    config, checkpoint = tiny_model
    with SearchEngine.open(tmp_path / "index", model=str(config), pretrained=str(checkpoint),
                           settings=IndexSettings(batch_size=7)) as engine:
        engine.index(clean)
        alone = {Path(h.path).name: engine.embed_images([h.path])[0] for h in engine.search("x", k=100)}
    mixed_store = Store.open(index / DB_FILENAME)
    try:
        for ids, vectors in mixed_store.iter_vectors():
            rows = mixed_store.fetch(ids.tolist())
            for i, v in zip(ids.tolist(), vectors):
                name = Path(rows[i].path).name
                if rows[i].path.startswith(str(collection / "batch")):
                    assert float(v @ alone[name]) > 0.99999, name
    finally:
        mixed_store.close()


def test_every_file_name_round_trips_through_the_cli_and_the_library(corpus) -> None:
    collection, expected, index, _ = corpus
    base = os.fsencode(collection) + b"/"
    names = {base + e.path for e in expected if e.path.startswith(b"names/")}
    runner = CliRunner()
    nul = runner.invoke(app, ["query", "x", "-k", "1000", "-0", "--index", str(index)]).stdout_bytes
    from_text = {record.split(b"\t", 1)[1] for record in nul.split(b"\0") if record}
    assert names <= from_text
    js = runner.invoke(app, ["query", "x", "-k", "1000", "--json", "--index", str(index)]).stdout_bytes.decode("utf-8")
    from_json = {os.fsencode(json.loads(line)["path"]) for line in js.splitlines()}
    assert names <= from_json
    with SearchEngine.open(index) as engine:
        from_library = {os.fsencode(h.path) for h in engine.search("x", k=1000)}
        assert names <= from_library
        # and each file is found by its own bytes
        raw = b"names/caf\xe9 latin-1.jpg"
        hit = engine.search(image=os.fsdecode(base + raw), k=1)[0]
        assert os.fsencode(hit.path) == base + raw


def test_a_second_run_redoes_nothing(corpus) -> None:
    collection, _, index, _ = corpus
    with SearchEngine.open(index) as engine:
        report = engine.index(collection)
    assert (report.encoded, report.failed, report.added, report.removed) == (0, 0, 0, 0)


# --- decoders that crash or hang ------------------------------------------------------------------

FAULTY_CHILD = """
import os, sys, time
import searchlite.media.images as images
real = images.decode_rgb
def faulty(data, *args, **kwargs):
    if b"CRASH-ME" in data:
        os.abort()
    if b"HANG-ME" in data:
        time.sleep(3600)
    return real(data, *args, **kwargs)
images.decode_rgb = faulty
from searchlite.media.decode_worker import serve
serve(int(sys.argv[1]), int(sys.argv[2]))
"""


def index_with_hang_guard(engine: SearchEngine, folder: Path) -> object:
    """engine.index(folder), failing the test (not hanging it) if a hung decoder is never killed."""
    result: list[object] = []
    run = threading.Thread(target=lambda: result.append(engine.index(folder)), daemon=True)
    run.start()
    run.join(timeout=300)  # a hang guard only: the 3s decode timeout ends the hung file in seconds
    assert not run.is_alive(), "the index run did not end: the hanging decoder was not killed"
    assert result, "the index run failed (see the thread's traceback above)"
    return result[0]


def test_a_crashing_or_hanging_decoder_costs_one_file(
    monkeypatch: pytest.MonkeyPatch, photos: Path, tiny_model, tmp_path: Path
) -> None:
    import searchlite.media.decode_worker as decode_worker

    monkeypatch.setattr(decode_worker, "_CHILD_CODE", FAULTY_CHILD)
    good = (photos / "astronaut.jpg").read_bytes()
    (photos / "crash.jpg").write_bytes(good + b"CRASH-ME")  # still a valid JPEG: trailing bytes
    (photos / "hang.jpg").write_bytes(good + b"HANG-ME")
    config, checkpoint = tiny_model
    settings = IndexSettings(decode_timeout_s=3)
    with SearchEngine.open(tmp_path / "index", model=str(config), pretrained=str(checkpoint), settings=settings) as engine:
        report = index_with_hang_guard(engine, photos)
        reasons = dict(report.failures)
        assert "decoder crashed" in reasons[str(photos / "crash.jpg")] and "2 times" in reasons[str(photos / "crash.jpg")]
        assert "longer than 3s" in reasons[str(photos / "hang.jpg")]
        assert report.added == 10  # every good photo, before and after the bad ones
        again = engine.index(photos)  # recorded as failed: a rerun does not loop on them
        assert again.failed == 0 and again.unchanged == 12


# --- files that change while the run goes on ------------------------------------------------------


def test_files_changing_or_vanishing_mid_run(monkeypatch: pytest.MonkeyPatch, engine_factory, photos: Path) -> None:
    import searchlite.ingest.indexer as indexer

    engine = engine_factory()
    engine.index(photos)
    Image.open(photos / "astronaut.jpg").rotate(90).save(photos / "grows.jpg")
    Image.open(photos / "astronaut.jpg").rotate(180).save(photos / "goes.jpg")
    real_scan = indexer.scanner.scan

    def scan_then_change(*args, **kwargs):
        files = list(real_scan(*args, **kwargs))
        with open(photos / "grows.jpg", "ab") as f:  # written to after the scan saw it
            f.write(b"more")
        os.unlink(photos / "goes.jpg")  # deleted after the scan saw it
        os.unlink(photos / "nature" / "horse.png")  # an indexed file deleted after the scan
        return iter(files)

    monkeypatch.setattr(indexer.scanner, "scan", scan_then_change)
    report = engine.index(photos)
    assert report.retry_later == 1 and report.failed == 0
    paths = {h.path for h in engine.search("x", k=100)}
    assert str(photos / "goes.jpg") not in paths and str(photos / "grows.jpg") not in paths
    monkeypatch.setattr(indexer.scanner, "scan", real_scan)
    report = engine.index(photos)
    assert report.added == 1  # grows.jpg, now that it is stable
    paths = {h.path for h in engine.search("x", k=100)}
    assert str(photos / "grows.jpg") in paths and str(photos / "nature" / "horse.png") not in paths


def test_query_and_classify_images_are_decoded_under_the_same_limits(
    monkeypatch: pytest.MonkeyPatch, photos: Path, tiny_model, tmp_path: Path
) -> None:
    """A file named on the command line gets the decoder process too: a hang or a crash is an
    error for that file, not a frozen or dead searchlite."""
    import searchlite.media.decode_worker as decode_worker

    monkeypatch.setattr(decode_worker, "_CHILD_CODE", FAULTY_CHILD)
    good = (photos / "astronaut.jpg").read_bytes()
    (tmp_path / "hang.jpg").write_bytes(good + b"HANG-ME")
    (tmp_path / "crash.jpg").write_bytes(good + b"CRASH-ME")
    config, checkpoint = tiny_model
    settings = IndexSettings(decode_timeout_s=2)
    with SearchEngine.open(tmp_path / "index", model=str(config), pretrained=str(checkpoint), settings=settings) as engine:
        engine.index(photos)
        with pytest.raises(ImageDecodeError, match="query image .*hang.jpg: decoding took longer than 2s"):
            engine.search(image=tmp_path / "hang.jpg")
        with pytest.raises(ImageDecodeError, match="decoder crashed"):
            engine.search(image=tmp_path / "crash.jpg")
        verdicts = {c.path: c for c in engine.classify([tmp_path / "crash.jpg", photos / "astronaut.jpg"], "cat,person")}
        assert "decoder crashed" in verdicts[str(tmp_path / "crash.jpg")].error
        assert verdicts[str(photos / "astronaut.jpg")].label in ("cat", "person")
        # an indexed photo as the query finds itself: it is read exactly as indexing read it
        top = engine.search(image=photos / "astronaut.jpg", k=1)[0]
        assert top.path == str(photos / "astronaut.jpg") and top.score > 0.9999
