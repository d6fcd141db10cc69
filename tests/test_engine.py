"""The library end to end on the real open_clip code path (a tiny random model from a checkpoint)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite import (
    IndexLockedError,
    IndexNotFoundError,
    ImageDecodeError,
    InvalidInputError,
    InvalidQueryError,
    ModelLoadError,
    ModelMismatchError,
    PathNotFoundError,
    SearchEngine,
)
from searchlite.config import DB_FILENAME, FAISS_FILENAME, LOCK_FILENAME
from searchlite.storage.writelock import writer_lock
from tests import kill_loop
from tests.conftest import decoder_processes


def stored_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    """Every indexed path and its stored vector, read straight from SQLite."""
    return {path: vector for path, (_, vector) in kill_loop.snapshot(index_dir).items() if vector is not None}


def reference_embedding(tiny_model, path: Path) -> np.ndarray:
    """open_clip's own encode_image(preprocess(img), normalize=True), independent of searchlite."""
    import torch

    config, checkpoint = tiny_model
    model, _, preprocess = _reference_model(str(config), str(checkpoint))
    with torch.no_grad():
        x = preprocess(Image.open(path)).unsqueeze(0)
        return model.encode_image(x, normalize=True)[0].numpy()


_models: dict = {}


def _reference_model(config: str, checkpoint: str):

    import open_clip

    if config not in _models:
        name = "reference-tiny-clip"
        cfg_dir = Path(config).parent / "reference"
        cfg_dir.mkdir(exist_ok=True)
        (cfg_dir / f"{name}.json").write_text(Path(config).read_text())
        open_clip.add_model_config(cfg_dir / f"{name}.json")
        model = open_clip.create_model_and_transforms(name, pretrained=checkpoint)
        model[0].eval()
        _models[config] = model
    return _models[config]


def paths_of(hits) -> list[str]:
    return [h.path for h in hits]


def counting_encoders(encoded: list[int]):
    """An encoder factory for SearchEngine.open that appends each image batch's size to encoded."""
    from searchlite.models.loading import load_encoder

    def factory(spec, device):
        encoder = load_encoder(spec, device)
        real = encoder.encode_images
        encoder.encode_images = lambda batch: encoded.append(len(batch)) or real(batch)
        return encoder

    return factory


# --- parity and search correctness ----------------------------------------------------------------


def test_stored_embeddings_match_open_clip_reference(engine_factory, photos: Path, index_dir: Path, tiny_model) -> None:
    # a camera-sized JPEG exercises the reduced-scale (draft) decode path
    big = Image.open(photos / "astronaut.jpg").resize((4000, 3000), Image.BICUBIC)
    big.save(photos / "camera sized.jpg", quality=92)
    engine = engine_factory()
    report = engine.index(photos)
    assert report.failed == 0 and report.added == 11
    stored = stored_vectors(index_dir)
    checked = 0
    for path, vector in stored.items():
        if Image.open(path).mode not in ("RGB", "L"):
            continue  # open_clip drops alpha instead of compositing it; compared elsewhere
        cosine = float(vector @ reference_embedding(tiny_model, Path(path)))
        assert cosine >= 0.999, (path, cosine)
        checked += 1
    assert checked >= 8
    for vector in stored.values():
        assert abs(np.linalg.norm(vector) - 1) < 1e-4


def test_search_matches_an_independent_open_clip_ranking(engine_factory, photos: Path, index_dir: Path, tiny_model) -> None:
    """Rank every photo with open_clip alone (its own decode, preprocess and towers) and compare."""
    import open_clip
    import torch

    engine = engine_factory()
    # open_clip drops alpha where searchlite composites it over white: opaque photos only
    (photos / "logos" / "skimage logo.webp").unlink()
    paths = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    engine.index(photos)
    images = np.stack([reference_embedding(tiny_model, Path(p)) for p in paths])
    stored = stored_vectors(index_dir)
    # |q.a - q.b| <= |a - b| for a unit query q: each image's own bound, from cosine >= 0.999
    bound = {p: float(np.linalg.norm(stored[p] - ref)) + 1e-5 for p, ref in zip(paths, images)}
    assert max(bound.values()) <= (2 * (1 - 0.999)) ** 0.5
    model, _, _ = _reference_model(str(tiny_model[0]), str(tiny_model[1]))
    tokenizer = open_clip.get_tokenizer("reference-tiny-clip")
    for text in ["a cat", "a rocket in space", "coffee"]:
        with torch.no_grad():
            q = model.encode_text(tokenizer([text]), normalize=True)[0].numpy()
        reference = dict(zip(paths, images @ q))
        hits = engine.search(text, k=5)
        for hit in hits:
            assert abs(hit.score - reference[hit.path]) <= bound[hit.path]
        # the top 5 are the reference's top 5, except where reference scores tie within tolerance
        tolerance = max(bound.values())
        fifth = sorted(reference.values(), reverse=True)[4]
        must_have = {p for p, s in reference.items() if s > fifth + 2 * tolerance}
        assert must_have <= set(paths_of(hits))
        assert all(reference[p] >= fifth - 2 * tolerance for p in paths_of(hits))


def test_image_query_finds_the_same_image_first_and_query_images_need_not_be_indexed(
    engine_factory, photos: Path, tmp_path: Path
) -> None:
    engine = engine_factory()
    engine.index(photos)
    outside = tmp_path / "query.png"
    shutil.copy(photos / "space" / "rocket.jpeg", outside)
    hits = engine.search(image=str(outside), k=3)
    assert hits[0].path == str(photos / "space" / "rocket.jpeg")
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_mixed_query_is_the_weighted_combination(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    img = str(photos / "astronaut.jpg")
    t = engine.embed_text(["beach", "people"])
    v = engine.embed_images([img])[0]
    q = 2 * t[0] + v - t[1]
    q /= np.linalg.norm(q)
    hits = engine.search("2::beach", image=img, negative="people", k=3)
    for hit in hits:
        assert hit.score == pytest.approx(float(q @ engine.embed_images([hit.path])[0]), abs=1e-4)


def test_many_query_images_are_embedded_in_batches_each_as_alone(engine_factory, photos: Path, monkeypatch) -> None:
    from searchlite.config import IndexSettings

    engine = engine_factory(settings=IndexSettings(batch_size=3))
    paths = sorted(p for p in photos.rglob("*") if p.is_file())[:7]
    alone = np.concatenate([engine.embed_images([p]) for p in paths])
    sizes = []
    encoder = type(engine.image_encoder())  # on a CPU, the exported tower
    encode_images = encoder.encode_images
    monkeypatch.setattr(encoder, "encode_images", lambda self, batch: sizes.append(len(batch)) or encode_images(self, batch))
    together = engine.embed_images(paths)
    assert sizes == [3, 3, 1]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_results_have_no_duplicates_and_k_is_respected(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    engine.index(photos)
    hits = engine.search("anything", k=100)
    assert len(hits) == 10
    assert len(set(paths_of(hits))) == 10
    assert len(engine.search("anything", k=3)) == 3


# --- incremental indexing -------------------------------------------------------------------------


def test_second_run_reads_nothing_and_loads_no_model(tiny_model, photos: Path, index_dir: Path) -> None:
    config, checkpoint = tiny_model
    with SearchEngine.open(index_dir, model=str(config), pretrained=str(checkpoint)) as engine:
        engine.index(photos)

    def no_model(*_args):
        raise AssertionError("the model was loaded for an unchanged folder")

    with SearchEngine.open(index_dir, encoder_factory=no_model) as engine:
        report = engine.index(photos)
    assert (report.added, report.updated, report.unchanged, report.encoded) == (0, 0, 10, 0)


def test_added_modified_and_deleted_files(engine_factory, photos: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    before = stored_vectors(index_dir)

    shutil.copy(photos / "astronaut.jpg", photos / "tmp.jpg")
    Image.open(photos / "cats" / "chelsea the cat.JPG").rotate(90).save(photos / "new.jpg")
    Image.open(photos / "nature" / "horse.png").transpose(Image.FLIP_LEFT_RIGHT).save(photos / "space" / "rocket.jpeg")
    (photos / "nature" / "grass.bmp").unlink()
    os.unlink(photos / "tmp.jpg")

    report = engine.index(photos)
    assert (report.added, report.updated, report.removed, report.encoded) == (1, 1, 1, 2)
    after = stored_vectors(index_dir)
    rocket = str(photos / "space" / "rocket.jpeg")
    assert float(before[rocket] @ after[rocket]) < 0.999  # re-encoded
    assert str(photos / "nature" / "grass.bmp") not in after
    hits = engine.search("grass", k=100)
    assert str(photos / "nature" / "grass.bmp") not in paths_of(hits)
    assert str(photos / "new.jpg") in paths_of(hits)
    assert len(hits) == 10


def test_moves_and_renames_keep_their_vectors_without_encoding(engine_factory, photos: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    before = stored_vectors(index_dir)
    old = photos / "cats" / "chelsea the cat.JPG"
    new = photos / "renamed" / "Chelsea.jpg"
    new.parent.mkdir()
    os.rename(old, new)
    report = engine.index(photos)
    assert (report.moved, report.added, report.removed, report.encoded) == (1, 0, 0, 0)
    after = stored_vectors(index_dir)
    np.testing.assert_array_equal(after[str(new)], before[str(old)])
    assert str(old) not in after
    hits = engine.search(image=str(new), k=1)
    assert hits[0].path == str(new)


def test_duplicates_reuse_the_vector_and_both_are_found(engine_factory, photos: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    shutil.copy(photos / "astronaut.jpg", photos / "copy of astronaut.jpg")
    report = engine.index(photos)
    assert (report.added, report.reused, report.encoded) == (1, 1, 0)
    hit = engine.search(image=str(photos / "astronaut.jpg"), k=2)[0]  # one hit for both files
    assert sorted([hit.path, *hit.copies]) == sorted([str(photos / "astronaut.jpg"), str(photos / "copy of astronaut.jpg")])


def test_duplicates_new_in_one_run_are_encoded_once(engine_factory, tmp_path: Path) -> None:
    encoded: list[int] = []
    counting = counting_encoders(encoded)

    folder = tmp_path / "twins"
    folder.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "a.png")
    shutil.copy(folder / "a.png", folder / "b.png")
    Image.new("RGB", (80, 60), (30, 30, 200)).save(folder / "c.png")
    report = engine_factory(encoder_factory=counting).index(folder)
    assert (report.added, report.encoded, report.reused) == (3, 2, 1)
    assert sum(encoded) == 2
    hits = engine_factory().search(image=str(folder / "a.png"), k=3)
    assert len(hits) == 2 and sorted([hits[0].path, *hits[0].copies]) == [str(folder / "a.png"), str(folder / "b.png")]


def test_files_refused_by_a_limit_are_retried_when_the_limit_changes(engine_factory, tmp_path: Path) -> None:
    from searchlite import IndexSettings

    folder = tmp_path / "small"
    folder.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / "a.png")
    strict = IndexSettings(max_megapixels=0.001)
    report = engine_factory(settings=strict).index(folder)
    assert report.failed == 1
    assert "0.0048 MP), over the 0.001 MP limit; raise the limit to index it" in report.failures[0][1]
    assert engine_factory().failures()[0].failed_under == {"decode_timeout_s": 30.0, "max_megapixels": 0.001}
    again = engine_factory(settings=strict).index(folder)  # same limit: the verdict stands
    assert (again.failed, again.unchanged, again.encoded) == (0, 1, 0)
    raised = engine_factory(settings=IndexSettings(max_megapixels=1.0)).index(folder)
    assert (raised.failed, raised.encoded) == (0, 1)
    engine = engine_factory()
    assert engine.failures() == [] and engine.info()["images"] == 1
    assert engine.index(folder).unchanged == 1  # indexed now: not judged again


def test_touching_a_file_does_not_re_encode_it(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    os.utime(photos / "astronaut.jpg", ns=(1, 1))
    report = engine.index(photos)
    assert (report.encoded, report.updated, report.unchanged) == (0, 0, 10)


def test_indexing_a_subfolder_leaves_the_rest_alone(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    report = engine.index(photos / "cats")
    assert report.removed == 0 and report.unchanged == 2
    assert engine.info()["images"] == 10


# --- file names and bad files ---------------------------------------------------------------------


def test_odd_file_names_round_trip(engine_factory, photos: Path) -> None:
    raw_dir = os.fsencode(photos)
    odd = [raw_dir + b"/caf\xe9 latin1.jpg", raw_dir + "/日本 語 'quoted' $x.jpg".encode(), raw_dir + b"/UPPER.PNG"]
    for i, name in enumerate(odd):
        img = Image.open(photos / "nature" / "horse.png").rotate(30 * (i + 1))
        img.save(os.fsdecode(name), "PNG" if name.endswith(b".PNG") else "JPEG")
    before = _folder_state(raw_dir)
    engine = engine_factory()
    engine.index(photos)
    found = {os.fsencode(h.path) for h in engine.search("x", k=100)}
    assert set(odd) <= found
    assert _folder_state(raw_dir) == before  # indexing read the photos and left every one as it was


def _folder_state(folder: bytes) -> dict[bytes, tuple[bytes, int]]:
    """Every file under folder (bytes paths: names need not be UTF-8): its content and mtime."""
    state = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                state[path] = (f.read(), os.stat(path).st_mtime_ns)
    return state


def test_bad_files_are_recorded_and_the_run_goes_on(engine_factory, photos: Path) -> None:
    (photos / "notes.txt").write_text("not an image")
    (photos / "fake.png").write_text("a text file named .png")
    (photos / "truncated.jpg").write_bytes((photos / "astronaut.jpg").read_bytes()[:200])
    (photos / "empty.jpg").write_bytes(b"")
    engine = engine_factory()
    report = engine.index(photos)
    assert report.added == 10
    assert report.skipped == 3  # notes.txt, fake.png, empty.jpg: not images by content
    assert report.failed == 1
    assert report.failures[0][0] == str(photos / "truncated.jpg")
    info = engine.info()
    assert (info["images"], info["failed"], info["not_images"]) == (10, 1, 3)
    assert [r.path for r in engine.failures()] == [str(photos / "truncated.jpg")]
    # a later run does not retry unchanged bad files
    assert engine.index(photos).failed == 0


def test_a_file_that_turns_bad_leaves_the_results(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    (photos / "astronaut.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = engine.index(photos)
    assert report.failed == 1
    assert str(photos / "astronaut.jpg") not in paths_of(engine.search("x", k=100))


def test_missing_folder_is_a_clear_error(engine_factory, tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match="folder .*nope not found"):
        engine_factory().index(tmp_path / "nope")


# --- the FAISS cache and the model record ---------------------------------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate", "stale", "foreign"])
def test_damaged_or_stale_vector_cache_is_rebuilt_from_sqlite(
    damage: str, engine_factory, photos: Path, index_dir: Path, caplog
) -> None:
    engine = engine_factory()
    engine.index(photos)
    want = engine.search("a cat", k=10)
    engine.close()
    faiss_file = index_dir / FAISS_FILENAME
    if damage == "delete":
        faiss_file.unlink()
    elif damage == "truncate":
        faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    elif damage == "foreign":  # another index's file: same size and count, other vectors
        from searchlite import VectorIndex

        other = VectorIndex(64)
        rng = np.random.default_rng(5)
        vectors = rng.standard_normal((10, 64)).astype(np.float32)
        other.add(np.arange(1, 11), vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        other.save(faiss_file)
    else:  # a cache from an older generation
        old = faiss_file.read_bytes()
        engine = engine_factory()
        (photos / "nature" / "grass.bmp").unlink()
        engine.index(photos)
        want = engine.search("a cat", k=10)
        engine.close()
        faiss_file.write_bytes(old)
    def no_model_for_rebuild(*_args):
        raise AssertionError("rebuilding must not run CLIP")
    with SearchEngine.open(index_dir, encoder_factory=no_model_for_rebuild) as reopened:
        reopened.vectors  # the rebuild itself needs no model
    got = engine_factory().search("a cat", k=10)
    assert paths_of(got) == paths_of(want)
    assert "rebuilt the vector cache" in caplog.text


def test_a_different_model_is_refused_naming_both(engine_factory, photos: Path, tmp_path: Path, tiny_model) -> None:
    import torch

    engine_factory().index(photos)
    config, checkpoint = tiny_model
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, other)
    with pytest.raises(ModelMismatchError) as e:
        engine_factory(pretrained=str(other))
    msg = str(e.value)
    assert str(checkpoint) in msg and str(other) in msg and "new folder" in msg and "--" not in msg


def test_the_index_remembers_its_model(engine_factory, photos: Path, index_dir: Path) -> None:
    engine_factory().index(photos)
    with SearchEngine.open(index_dir) as engine:  # no model flags
        assert engine.search("a cat", k=3)
        assert engine.info()["dim"] == 64


def test_a_moved_checkpoint_is_accepted_by_content(engine_factory, photos: Path, index_dir: Path, tmp_path: Path, tiny_model) -> None:
    engine_factory().index(photos)
    config, checkpoint = tiny_model
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(checkpoint, moved)
    engine = engine_factory(pretrained=str(moved))
    assert engine.search("a cat", k=1)


def test_searching_a_missing_or_empty_index_says_what_to_do(engine_factory, tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="no index in .*nothing: index a folder into it first") as e:
        SearchEngine.open(tmp_path / "nothing", create=False)
    assert e.value.setting == "index_dir" and "--" not in str(e.value)  # the CLI adds the command
    with pytest.raises(IndexNotFoundError, match="no index in .*index: index a folder into it first"):
        engine_factory().search("a cat")  # opened on a missing index, which only a write creates


def test_bad_queries_are_refused(engine_factory, photos: Path, tmp_path: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    with pytest.raises(PathNotFoundError, match="query image .*missing.jpg not found"):
        engine.search(image=str(tmp_path / "missing.jpg"))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ImageDecodeError, match="query image .*bad.jpg"):
        engine.search(image=str(tmp_path / "bad.jpg"))
    with pytest.raises(InvalidQueryError, match="k must be"):
        engine.search("x", k=0)


def test_model_flags_are_checked_before_any_work(tmp_path: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    with pytest.raises(ModelLoadError, match="needs pretrained weights"):
        SearchEngine.open(tmp_path / "i", model="ViT-B-16")
    with pytest.raises(ModelLoadError, match="model config .*nope.json not found"):
        SearchEngine.open(tmp_path / "i", model=str(tmp_path / "nope.json"), pretrained=str(checkpoint))
    (tmp_path / "bad.json").write_text('{"foo": 1}')
    with pytest.raises(ModelLoadError, match="not an open_clip config"):
        SearchEngine.open(tmp_path / "i", model=str(tmp_path / "bad.json"), pretrained=str(checkpoint))
    with pytest.raises(ModelLoadError, match="needs a local checkpoint"):
        SearchEngine.open(tmp_path / "i", model=str(config), pretrained="laion2b")


def test_unknown_model_name_or_tag_is_a_clear_error(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'NoSuchModel'"):  # at once, creating nothing
        SearchEngine.open(tmp_path / "i", model="NoSuchModel", pretrained="x")
    assert not (tmp_path / "i").exists()
    with SearchEngine.open(tmp_path / "j", model="ViT-B-32", pretrained="nosuchtag") as engine:
        with pytest.raises(ModelLoadError, match="unknown pretrained tag 'nosuchtag' for ViT-B-32"):
            engine.index(photos)


def test_a_second_writer_is_refused(engine_factory, photos: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    with writer_lock(index_dir / LOCK_FILENAME):
        with pytest.raises(IndexLockedError, match=f"pid {os.getpid()}"):
            engine.index(photos)
        assert engine.search("a cat", k=1)  # readers are not blocked


def test_an_unusable_device_is_a_clear_error(engine_factory, photos: Path) -> None:
    engine = engine_factory(device="cuda:99")
    with pytest.raises(ModelLoadError, match="device 'cuda:99' is not usable here.*use the cpu device"):
        engine.index(photos)


def test_device_defaults_to_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from searchlite.models.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"
    assert resolve_device("cpu") == "cpu"


def test_a_damaged_database_is_reported_and_left_alone(tmp_path: Path) -> None:
    from searchlite import CorruptIndexError

    index = tmp_path / "index"
    index.mkdir()
    garbage = b"this is not sqlite" * 100
    (index / DB_FILENAME).write_bytes(garbage)
    with pytest.raises(CorruptIndexError, match="damaged or is not a searchlite database"):
        SearchEngine.open(index)
    assert (index / DB_FILENAME).read_bytes() == garbage


def test_searches_from_many_threads_agree(engine_factory, photos: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = engine_factory()
    engine.index(photos)
    texts = ["a cat", "a rocket", "coffee", "grass"] * 5
    want = {t: paths_of(engine.search(t, k=5)) for t in set(texts)}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda t: paths_of(engine.search(t, k=5)), texts))
    assert got == [want[t] for t in texts]


def test_touched_and_moved_files_need_no_model(tiny_model, photos: Path, index_dir: Path) -> None:
    config, checkpoint = tiny_model
    with SearchEngine.open(index_dir, model=str(config), pretrained=str(checkpoint)) as engine:
        engine.index(photos)
    os.utime(photos / "astronaut.jpg", ns=(5, 5))
    os.rename(photos / "misc" / "camera.gif", photos / "camera.gif")

    def no_model(*_args):
        raise AssertionError("the model was loaded though nothing needed encoding")

    with SearchEngine.open(index_dir, encoder_factory=no_model) as engine:
        report = engine.index(photos)
    assert (report.moved, report.unchanged, report.encoded) == (1, 10 - 1, 0)


def test_a_model_that_cannot_load_stops_the_run_instead_of_failing_files(
    engine_factory, photos: Path, index_dir: Path
) -> None:
    from searchlite import WeightsUnavailableError

    engine_factory().index(photos)
    Image.open(photos / "astronaut.jpg").rotate(45).save(photos / "new.jpg")

    def unavailable(*_args):
        raise WeightsUnavailableError("no weights here")

    with SearchEngine.open(index_dir, encoder_factory=unavailable) as engine:
        with pytest.raises(WeightsUnavailableError):
            engine.index(photos)
        assert engine.info()["failed"] == 0
        assert engine.info()["images"] == 10


def test_files_deleted_since_the_last_run_are_left_out_of_results(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    first = engine.search("a cat", k=3)
    os.unlink(first[0].path)
    after = engine.search("a cat", k=3)
    assert first[0].path not in paths_of(after)
    assert paths_of(after) == paths_of(engine.search("a cat", k=4))[:3]
    assert len(after) == 3


def test_a_database_damaged_inside_is_reported_not_crashed_on(engine_factory, photos: Path, index_dir: Path) -> None:
    from searchlite import CorruptIndexError, SearchliteError

    engine = engine_factory()
    engine.index(photos)
    engine.close()
    db = index_dir / DB_FILENAME
    data = bytearray(db.read_bytes())
    for offset in range(4096, len(data), 4096):  # garble every page but the header page
        data[offset + 100 : offset + 600] = os.urandom(500)
    db.write_bytes(bytes(data))
    damaged = bytes(data)
    with pytest.raises(SearchliteError) as e:
        with SearchEngine.open(index_dir) as reopened:
            reopened.search("a cat")
            reopened.index(photos)
    assert isinstance(e.value, CorruptIndexError) and "damaged" in str(e.value)
    assert db.read_bytes() == damaged


def test_optimize_switches_to_an_approximate_index_that_keeps_answering(engine_factory, photos: Path, index_dir: Path, faster_structure) -> None:
    faster_structure("ivf")
    engine = engine_factory()
    for i in range(40):  # enough vectors for a small inverted file
        Image.open(photos / "astronaut.jpg").rotate(i * 9).save(photos / f"r{i:02d}.jpg")
    engine.index(photos)
    want = paths_of(engine.search(image=str(photos / "r05.jpg"), k=1))
    chosen = engine.optimize()
    assert chosen["kind"] == "ivf" and engine.info()["vector_index"] == "ivf"
    assert paths_of(engine.search(image=str(photos / "r05.jpg"), k=1)) == want
    engine.close()
    with SearchEngine.open(index_dir) as reopened:  # saved as it is, and still incremental
        Image.open(photos / "astronaut.jpg").rotate(200).save(photos / "late.jpg")
        assert reopened.index(photos).added == 1
        assert paths_of(reopened.search(image=str(photos / "late.jpg"), k=1)) == [str(photos / "late.jpg")]
        assert reopened.info()["vector_index"] == "ivf"


def test_export_then_import_loads_embeddings_without_encoding(engine_factory, photos: Path, index_dir: Path, tmp_path: Path, tiny_model) -> None:
    engine = engine_factory()
    engine.index(photos)
    assert engine.export_embeddings(tmp_path / "emb.npy") == 10
    exported = np.load(tmp_path / "emb.npy")
    assert exported.shape == (10, 64) and (tmp_path / "emb.jsonl").read_text().count("\n") == 10
    (photos / "nature" / "grass.bmp").unlink()  # one path is not on "this machine" any more

    config, checkpoint = tiny_model
    encoded: list[int] = []
    counting = counting_encoders(encoded)

    with SearchEngine.open(tmp_path / "imported", model=str(config), pretrained=str(checkpoint), encoder_factory=counting) as other:
        assert other.import_embeddings(tmp_path / "emb.npy", tmp_path / "emb.jsonl") == (9, 1)
        want = stored_vectors(index_dir)
        got = stored_vectors(tmp_path / "imported")
        assert set(got) == set(want) - {str(photos / "nature" / "grass.bmp")}
        for path, vector in got.items():
            np.testing.assert_allclose(vector, want[path], atol=1e-6)
        assert other.index(photos).unchanged == 9  # later runs take the imported files as indexed
        assert encoded == []
    (tmp_path / "bad.npy").write_bytes(b"junk")
    with pytest.raises(InvalidInputError, match="cannot read embeddings"):
        engine.import_embeddings(tmp_path / "bad.npy", tmp_path / "emb.jsonl")
    np.save(tmp_path / "wrong.npy", np.ones((3, 5), np.float32))
    with pytest.raises(InvalidInputError, match="one 64-dimensional row per path"):
        engine.import_embeddings(tmp_path / "wrong.npy", tmp_path / "emb.jsonl")


@pytest.mark.parametrize("ahead", [0, 1])
def test_batches_are_decoded_in_order_and_ahead_only_when_asked(ahead: int) -> None:
    """On a CPU (ahead 0) nothing is decoded while the model encodes a batch; on a GPU (ahead 1)
    the next batch is, and never more than that."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from searchlite.ingest.indexer import _chunked_map

    started: list[int] = []
    progress = threading.Condition()  # notified as each decode starts

    def decode(item: int) -> int:
        with progress:
            started.append(item)
            progress.notify_all()
        return item * 10

    class CountingPool:
        """The pool, counting what is handed to it: what is submitted is what will be decoded."""

        def __init__(self, pool: ThreadPoolExecutor) -> None:
            self.pool, self.submitted = pool, 0

        def submit(self, fn, *args):
            self.submitted += 1
            return self.pool.submit(fn, *args)

    items = list(range(10))
    with ThreadPoolExecutor(2) as threads:
        pool = CountingPool(threads)
        chunks = []
        for chunk in _chunked_map(pool, decode, items, lambda: 3, lambda: ahead):  # the body "encodes"
            chunks.append(chunk)
            expected = min(len(items), 3 * len(chunks) + 3 * ahead)
            assert pool.submitted == expected  # this chunk and `ahead` more, never others
            with progress:  # the ones ahead decode while this chunk is encoded (30 s: a hang guard)
                assert progress.wait_for(lambda: len(started) >= expected, timeout=30), f"{expected - len(started)} submitted decodes never started"
    assert chunks == [[0, 10, 20], [30, 40, 50], [60, 70, 80], [90]]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_index_runs_and_image_queries_leave_no_decoder_processes_behind(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    assert decoder_processes() == []
    engine.search(image=photos / "astronaut.jpg")
    assert len(decoder_processes()) <= engine.settings.workers  # kept for the next query image
    engine.close()
    assert decoder_processes() == []


def test_embed_text_takes_a_string_as_one_text_and_embed_images_names_the_bad_file(engine_factory, photos: Path, tmp_path: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    one = engine.embed_text("a cat")
    assert one.shape == (1, 64) and np.allclose(one, engine.embed_text(["a cat"]))
    assert engine.embed_text(["a cat", "a dog"]).shape == (2, 64)
    assert engine.embed_images(photos / "astronaut.jpg").shape == (1, 64)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ImageDecodeError, match=r"file .*broken.jpg: "):
        engine.embed_images([photos / "astronaut.jpg", tmp_path / "broken.jpg"])
    with pytest.raises(PathNotFoundError, match=r"file .*gone.jpg not found"):
        engine.embed_images([tmp_path / "gone.jpg"])


def test_optimize_exact_works_on_one_image_and_approximate_needs_two(engine_factory, tmp_path: Path) -> None:
    # an exact index of one image was refused as if it were an approximate one
    folder = tmp_path / "one"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "red.png")
    engine = engine_factory()
    engine.index(folder)
    assert engine.optimize(structure="exact")["kind"] == "exact"
    with pytest.raises(InvalidInputError, match="an ivf index needs at least 2"):
        engine.optimize(structure="ivf")
    assert [Path(h.path).name for h in engine.search(image=str(folder / "red.png"), k=1)] == ["red.png"]
    with pytest.raises(InvalidInputError, match="unknown index structure 'flat'"):
        engine.optimize(structure="flat")


def test_every_read_and_tagging_of_a_missing_index_says_so_before_loading_a_model(engine_factory, tmp_path: Path) -> None:
    # export wrote an empty export of a missing index; tag and apply_probe loaded CLIP before refusing
    engine = engine_factory()
    calls = {
        "export": lambda: engine.export_embeddings(tmp_path / "emb.npy"),
        "files": lambda: engine.files([1]),
        "stored_vector": lambda: engine.stored_vector(1),
        "sql_engine": lambda: engine.sql_engine,
        "tag": lambda: engine.tag("cat,dog"),
        "apply_probe": lambda: engine.apply_probe(tmp_path / "probe.npz"),
    }
    for name, call in calls.items():
        with pytest.raises(IndexNotFoundError, match="no index in"):
            call()
        assert not engine.model_loaded, name
    assert not (tmp_path / "emb.npy").exists() and not (tmp_path / "emb.jsonl").exists()


def test_a_long_lived_engine_saves_its_recent_queries_now_and_then(engine_factory, photos: Path, index_dir: Path, monkeypatch) -> None:
    # RecentQueries.add() said a save was due and nobody listened: only close() saved
    from searchlite.storage import recent_queries

    monkeypatch.setattr(recent_queries, "SAVE_EVERY", 2)
    engine = engine_factory()
    engine.index(photos)
    saved = index_dir / recent_queries.FILENAME
    engine.remember_queries = False
    for _ in range(3):
        engine.search(image=str(photos / "astronaut.jpg"), k=1)
    assert not saved.exists()
    engine.remember_queries = True
    engine.search(image=str(photos / "astronaut.jpg"), k=1)
    assert saved.exists() and np.load(saved).shape[0] == 4
