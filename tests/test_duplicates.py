"""`searchlite duplicates`: exact copies, near copies (re-encoded, resized, rotated, converted)
confirmed by a perceptual hash, a keeper with its reason, a path filter; nothing deleted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli import app
from searchlite.query.duplicates import components, range_pairs

runner = CliRunner()


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Real photos plus copies of astronaut: exact, JPEG q60, half size, EXIF-rotated, PNG."""
    import skimage.data

    folder = tmp_path / "library"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=92)
    img = Image.open(folder / "astronaut.jpg").convert("RGB")
    shutil.copy(folder / "astronaut.jpg", folder / "astronaut copy.jpg")
    (folder / "edits").mkdir()
    img.save(folder / "edits" / "astronaut-q60.jpg", quality=60)
    img.resize((img.width // 2, img.height // 2), Image.LANCZOS).save(folder / "edits" / "astronaut-half.jpg", quality=90)
    img.transpose(Image.Transpose.ROTATE_90).save(folder / "edits" / "astronaut-rotated.jpg", quality=90, exif=_orientation(6))
    img.save(folder / "edits" / "astronaut.png")
    for path in folder.rglob("*.*"):  # one mtime (the capture time of files without EXIF): ties go to the shortest path
        os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    return folder


def test_duplicates_by_tier_with_a_keeper(engine_factory, library: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(library)
    before = sorted(p.name for p in library.rglob("*"))
    [exact] = engine.duplicates("exact")
    assert {Path(f.path).name for f in exact.files} == {"astronaut.jpg", "astronaut copy.jpg"}
    assert exact.keeper.endswith("/astronaut.jpg") and exact.reason == "as large and as early as any, and the shortest path"
    near = engine.duplicates("near")
    assert len(near) == 1, [[Path(f.path).name for f in g.files] for g in near]
    assert {Path(f.path).name for f in near[0].files} == {
        "astronaut.jpg", "astronaut copy.jpg", "astronaut-q60.jpg", "astronaut-half.jpg", "astronaut-rotated.jpg", "astronaut.png"
    }
    assert near[0].files[0].keeper and sum(f.keeper for f in near[0].files) == 1
    assert Path(near[0].keeper).name == "astronaut.jpg"  # full size beats half; earliest/shortest path among the rest
    [only_edits] = engine.duplicates("near", path=library / "edits")
    assert len(only_edits.files) == 4
    assert sorted(p.name for p in library.rglob("*")) == before  # nothing deleted

    result = runner.invoke(app, ["duplicates", "--index", str(index_dir), "--json"])
    assert result.exit_code == 0, result.output
    [group] = [json.loads(line) for line in result.stdout.splitlines()]
    assert group["tier"] == "near" and len(group["files"]) == 6 and group["keeper"] == near[0].keeper
    assert "1 group of near duplicates; 5 files beside the keepers (nothing was deleted)" in result.stderr
    result = runner.invoke(app, ["duplicates", "--index", str(index_dir), "--tier", "exact"])
    assert result.stdout.startswith("group 1: 2 files, keep the first (as large and as early as any, and the shortest path)\nkeep\t512x512\t")
    result = runner.invoke(app, ["duplicates", "--index", str(index_dir), "--tier", "twins"])
    assert result.exit_code == 2 and "unknown --tier 'twins': give --tier exact, near or similar" in result.stderr


def test_the_range_search_finds_the_pairs_an_exhaustive_comparison_finds() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((300, 32)).astype(np.float32)
    owner = rng.integers(0, 300, 900)
    vectors = centres[owner] + 0.05 * rng.standard_normal((900, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    left, right, scores = range_pairs(vectors, 0.9)
    sims = vectors @ vectors.T
    ref = {(i, j) for i, j in zip(*np.nonzero(sims >= 0.9)) if i < j}
    assert set(zip(left.tolist(), right.tolist())) == ref
    groups = {frozenset(g) for g in components(900, left, right)}
    assert groups == {frozenset(np.nonzero(owner == c)[0].tolist()) for c in np.unique(owner) if (owner == c).sum() > 1}


def test_the_approximate_range_search_of_large_sets_finds_the_close_pairs() -> None:
    rng = np.random.default_rng(4)
    n, d = 6000, 128  # above IVF_MIN_VECTORS: PCA + IVF candidates, checked exactly
    centres = rng.standard_normal((4000, d)).astype(np.float32)
    owner = np.concatenate([np.arange(4000), rng.integers(0, 4000, n - 4000)])
    vectors = centres[owner] + 0.2 * rng.standard_normal((n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    left, right, scores = range_pairs(vectors, 0.9)
    assert np.all(scores >= 0.9) and np.all(left < right)
    sims = vectors @ vectors.T
    ref = {(i, j) for i, j in zip(*np.nonzero(sims >= 0.9)) if i < j}
    found = set(zip(left.tolist(), right.tolist()))
    assert found <= ref and len(found) >= 0.97 * len(ref), (len(found), len(ref))


def test_the_perceptual_hash_is_imagehashs_phash(library: Path) -> None:
    # computed without scipy (see media/metadata.py); hashes stored by earlier versions stay comparable
    import imagehash

    from searchlite.media.metadata import perceptual_hash

    pictures = [Image.open(p) for p in sorted(library.rglob("*.*"))]
    rng = np.random.default_rng(0)
    pictures += [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in rng.integers(8, 500, (50, 2))]
    pictures += [pictures[0].convert("L"), pictures[0].convert("RGBA").resize((31, 700))]
    assert [perceptual_hash(p) for p in pictures] == [str(imagehash.phash(p)) for p in pictures]


def test_an_exact_copy_indexed_later_has_the_size_of_its_content(engine_factory, library: Path, index_dir: Path) -> None:
    # a copy of content already indexed reuses its vector; it used to be stored without a size, so
    # the keeper rule called the original "largest picture (512x512)"
    later = library.parent / "astronaut copy.jpg"
    shutil.move(library / "astronaut copy.jpg", later)
    engine = engine_factory()
    engine.index(library)
    shutil.move(later, library / "astronaut copy.jpg")
    assert engine.index(library).reused == 1
    [exact] = engine.duplicates("exact")
    assert {(Path(f.path).name, f.width, f.height) for f in exact.files} == {("astronaut.jpg", 512, 512), ("astronaut copy.jpg", 512, 512)}
    assert exact.reason == "as large and as early as any, and the shortest path"
    result = runner.invoke(app, ["duplicates", "--index", str(index_dir), "--tier", "exact"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[:2] for line in result.stdout.splitlines()[1:]] == [["keep", "512x512"], ["    ", "512x512"]]
    files = engine.files(f.id for f in exact.files).values()
    assert len({(f.width, f.height, f.taken_at) for f in files}) == 1  # and its header's metadata


def test_results_show_exact_copies_once_and_list_the_other_paths(engine_factory, library: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(library)
    original, copy = str(library / "astronaut.jpg"), str(library / "astronaut copy.jpg")
    searches = {
        "top-k": engine.search(image=original, k=20),
        "all": engine.search("a photo", all_ranked=True),
        "by date": engine.search(sort="date"),
        "relevant by date": engine.search("a photo", sort="-date", min_score=-1.0),
    }
    for mode, hits in searches.items():  # 8 files, two of them the same bytes
        assert len(hits) == 7 and len({h.path for h in hits}) == 7, mode
        [hit] = [h for h in hits if h.copies]
        assert {hit.path, *hit.copies} == {original, copy} and len(hit.copies) == 1, mode
    assert searches["top-k"][0].score == pytest.approx(1.0, abs=1e-5) and searches["top-k"][0].copies
    assert len(engine.search(image=original, k=2)) == 2  # k counts contents, not files

    result = runner.invoke(app, ["query", "--image", original, "-k", "3", "--json", "--index", str(index_dir)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and {records[0]["path"], *records[0]["copies"]} == {original, copy}
    assert all("copies" not in r for r in records[1:])
    os.remove(copy)  # deleted since the last index run: not listed
    assert engine.search(image=original, k=1)[0].copies == ()


def test_a_date_listing_keeps_content_whose_first_copy_was_deleted(engine_factory, library: Path) -> None:
    # copies were merged before existence was checked: with the first copy gone, the content fell out
    engine = engine_factory()
    engine.index(library)
    original, copy = str(library / "astronaut.jpg"), str(library / "astronaut copy.jpg")
    assert sorted([original, copy])[0] == copy  # no capture times: the copy comes first by path
    os.remove(copy)
    for limit in (None, 7, 1):
        paths = [h.path for h in engine.search(sort="date", limit=limit)]
        assert original in paths or limit == 1 and len(paths) == 1, limit
        assert copy not in paths
    assert len(engine.search(sort="date")) == 7
