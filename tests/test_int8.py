"""The int8 image tower: judged on the first run's own images before an index uses it, refused (fp32,
with the reason) when it drifts, recorded in the index so that `info` shows it, forced by
--precision, kept by later runs and by query images, and never mixed with fp32 silently. The tiny
random model proves the plumbing only; docs/performance.md has the figures on photos."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite import SearchEngine
from searchlite.cli import app
from searchlite.config import model_cache_dir
from searchlite.models import int8

from .test_engine import stored_vectors

CAT = Path("cats") / "chelsea the cat.JPG"


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of exported towers (and verdicts) for this test alone."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEARCHLITE_CACHE", str(cache))
    return cache


@pytest.fixture
def small_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ten test photos are a collection worth judging int8 on, 8 of them the sample."""
    monkeypatch.setattr(int8, "MIN_IMAGES", 5)
    monkeypatch.setattr(int8, "SAMPLE", 8)


@pytest.fixture
def cli(tiny_model):
    runner = CliRunner()
    config, checkpoint = tiny_model

    def run(index: Path, *args: object):
        model = ["--model", config, "--pretrained", checkpoint] if args and args[0] in ("index", "import") else []
        return runner.invoke(app, [str(a) for a in (*args, *model, "--index", index)])

    return run


def _tower(index: Path) -> dict:
    with SearchEngine.open(index, create=False) as engine:
        return engine.info()["image_tower"]


def _corrupt_scales(folder: Path) -> None:
    """Scale the int8 export's per-channel weight scales by random factors (its bytes, not its metadata)."""
    import onnx
    from onnx import numpy_helper

    path = folder / int8.FILENAME
    model = onnx.load(path, load_external_data=False)
    rng = np.random.default_rng(0)
    corrupted = 0
    for tensor in model.graph.initializer:
        if tensor.name.endswith("_scale") and tensor.dims and tensor.data_location != onnx.TensorProto.EXTERNAL:
            scales = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array((scales * rng.uniform(0.2, 3.0, scales.shape)).astype(scales.dtype), tensor.name))
            corrupted += 1
    assert corrupted
    onnx.save_model(model, path)


def test_a_first_run_judges_int8_on_its_photos_and_info_shows_the_verdict(cli, photos, index_dir, small_sample) -> None:
    first = cli(index_dir, "index", photos)
    assert first.exit_code == 0
    info = cli(index_dir, "info")
    line = next(line for line in info.stdout.splitlines() if line.startswith("image tower:"))
    assert "int8: validated on this collection (checked on 8 images: lowest cosine to fp32 " in line and "mixed" not in line
    tower = _tower(index_dir)
    assert tower["precision"] == "int8" and tower["images"] == tower["from_collection"] == 8 and tower["min_cosine"] >= int8.MIN_COSINE
    assert "searchlite: image tower: int8: validated on this collection (checked on 8 images" in first.stderr  # said once

    # every stored vector is the int8 tower's, the judged sample's included; a query image is encoded by it too
    with SearchEngine.open(index_dir) as engine:
        encoder = engine.image_encoder()
        assert encoder.precision == "int8"
        stored = stored_vectors(index_dir)
        paths = sorted(stored)
        np.testing.assert_allclose(engine.embed_images(paths), np.stack([stored[p] for p in paths]), atol=1e-5)
        hit = engine.search(image=photos / CAT, k=1)[0]
        assert hit.path == str(photos / CAT) and hit.score > 0.99999

    # the verdict is kept with the export: another index of the model takes it without judging again
    second = cli(index_dir.parent / "second", "index", photos)
    assert second.exit_code == 0 and "image tower" not in second.stderr
    assert _tower(index_dir.parent / "second")["precision"] == "int8"
    assert _tower(index_dir.parent / "second")["reason"] == f"validated on the photos of the index {index_dir}"

    # the verdict names the export's weights file too: rewritten, the verdict no longer holds
    with SearchEngine.open(index_dir) as engine:
        folder = model_cache_dir(engine.model_key())
    assert int8.cached_verdict(folder) is not None
    (folder / int8.WEIGHTS).write_bytes((folder / int8.WEIGHTS).read_bytes() + b"\0")
    assert int8.cached_verdict(folder) is None


def test_a_tower_that_fails_the_check_is_refused_and_fp32_recorded_with_the_reason(cli, photos, index_dir, tmp_path, small_sample) -> None:
    assert cli(index_dir, "index", photos).exit_code == 0  # exports and quantizes
    with SearchEngine.open(index_dir) as engine:
        folder = model_cache_dir(engine.model_key())
    _corrupt_scales(folder)  # another export: judged again

    refused = tmp_path / "refused"
    result = cli(refused, "index", photos)
    assert result.exit_code == 0 and "searchlite: image tower: fp32: int8 drifts from fp32 on this collection" in result.stderr
    tower = _tower(refused)
    assert tower["precision"] == "fp32" and tower["min_cosine"] < int8.MIN_COSINE
    assert tower["reason"].startswith("int8 drifts from fp32 on this collection (cosine ")
    assert "image tower: fp32: int8 drifts from fp32" in cli(refused, "info").stdout
    assert int8.cached_verdict(folder).precision == "fp32"

    # its vectors, the judged sample's included, are the fp32 tower's
    second = stored_vectors(refused)
    with SearchEngine.open(refused) as engine:
        assert engine.image_encoder().precision == "fp32"
        paths = sorted(second)
        expected = engine.embed_images(paths)
    np.testing.assert_allclose(np.stack([second[p] for p in paths]), expected, atol=1e-5)


def test_a_small_first_run_keeps_fp32_and_says_why(cli, photos, index_dir) -> None:
    assert cli(index_dir, "index", photos).exit_code == 0
    tower = _tower(index_dir)
    assert tower["precision"] == "fp32" and tower["reason"].startswith(f"int8 not tried on a first run of 10 files (it is from {int8.MIN_IMAGES}): this index stays fp32; a new index's")
    with SearchEngine.open(index_dir) as engine:
        assert not (model_cache_dir(engine.model_key()) / int8.FILENAME).exists()  # not even quantized


def test_forced_precisions_and_a_mix_is_said(cli, photos, index_dir) -> None:
    assert cli(index_dir, "index", photos, "--precision", "int8").exit_code == 0
    tower = _tower(index_dir)
    assert tower == {**tower, "precision": "int8", "reason": "--precision int8 (not validated)", "mixed": False}

    # auto keeps the index's int8: a new photo is encoded by it
    Image.new("RGB", (90, 70), (30, 200, 30)).save(photos / "green.png")
    assert cli(index_dir, "index", photos).exit_code == 0
    assert _tower(index_dir)["precision"] == "int8" and not _tower(index_dir)["mixed"]

    # fp32 forced on an int8 index: done, and said (a warning, and info)
    Image.new("RGB", (90, 70), (200, 30, 30)).save(photos / "red.png")
    result = cli(index_dir, "index", photos, "--precision", "fp32")
    assert result.exit_code == 0 and "now holds vectors from the fp32 image tower beside int8 ones" in result.stderr
    tower = _tower(index_dir)
    assert tower["precision"] == "fp32" and tower["mixed"] and tower["precisions"] == ["fp32", "int8"]
    assert "; mixed: vectors from the fp32 and int8 towers" in cli(index_dir, "info").stdout

    forced = index_dir.parent / "fp32"
    assert cli(forced, "index", photos, "--precision", "fp32").exit_code == 0
    assert _tower(forced) == {**_tower(forced), "precision": "fp32", "reason": "--precision fp32", "mixed": False}


def test_an_index_from_before_the_record_stays_fp32(cli, photos, index_dir) -> None:
    assert cli(index_dir, "index", photos, "--precision", "fp32").exit_code == 0
    with sqlite3.connect(index_dir / "searchlite.db") as db:  # as searchlite before int8 left it
        db.execute("DELETE FROM index_info WHERE key = 'image_tower'")
    (photos / "astronaut.jpg").rename(photos / "astronaut moved.jpg")
    Image.new("RGB", (90, 70), (20, 30, 200)).save(photos / "blue.png")
    assert cli(index_dir, "index", photos).exit_code == 0
    tower = _tower(index_dir)
    assert tower["precision"] == "fp32" and not tower["mixed"] and "before int8 was offered" in tower["reason"]


def test_an_int8_index_whose_int8_tower_changed_checks_it_again(cli, photos, index_dir, small_sample) -> None:
    assert cli(index_dir, "index", photos).exit_code == 0
    assert _tower(index_dir)["precision"] == "int8"
    with SearchEngine.open(index_dir) as engine:
        folder = model_cache_dir(engine.model_key())
    _corrupt_scales(folder)  # the export the index's verdict judged is gone

    # a query image is encoded by the new tower, and said: not checked yet
    query = cli(index_dir, "query", "--image", photos / CAT)
    assert query.exit_code == 0 and "int8 image tower changed since this index's vectors (not checked yet" in query.stderr

    # the next index run checks it again: refused, fp32, and the mix is said
    Image.new("RGB", (90, 70), (30, 200, 30)).save(photos / "green.png")
    result = cli(index_dir, "index", photos)
    assert result.exit_code == 0
    assert "int8 image tower changed since this index's vectors: checking it" in result.stderr
    assert "image tower: fp32: int8 drifts from fp32" in result.stderr
    assert "now holds vectors from the fp32 image tower beside int8 ones" in result.stderr
    tower = _tower(index_dir)
    assert tower["precision"] == "fp32" and tower["mixed"] and tower["precisions"] == ["fp32", "int8"]
    with SearchEngine.open(index_dir) as engine:
        assert engine.image_encoder().precision == "fp32"
        np.testing.assert_allclose(engine.embed_images([photos / "green.png"])[0], stored_vectors(index_dir)[str(photos / "green.png")], atol=1e-5)


def test_an_int8_tower_that_gives_nan_is_refused_for_that_reason(cli, photos, index_dir, small_sample, monkeypatch) -> None:
    from searchlite.models.image_tower import ImageTower

    encode = ImageTower.encode_images

    def broken(self, batch):
        vectors = encode(self, batch)
        return np.full_like(vectors, np.nan) if self.precision == "int8" else vectors

    monkeypatch.setattr(ImageTower, "encode_images", broken)
    result = cli(index_dir, "index", photos)
    assert result.exit_code == 0 and "image tower: fp32: int8 gives non-finite vectors (8 of 8 images)" in result.stderr
    info = cli(index_dir, "info", "--json")

    def no_nan(constant: str) -> None:
        raise AssertionError(f"{constant} in info --json")

    tower = json.loads(info.stdout, parse_constant=no_nan)["image_tower"]
    assert tower["precision"] == "fp32" and tower["reason"] == "int8 gives non-finite vectors (8 of 8 images)"
    assert "min_cosine" not in tower


def test_export_and_import_carry_the_image_tower_and_a_mix_is_said(cli, photos, index_dir, tmp_path) -> None:
    assert cli(index_dir, "index", photos, "--precision", "int8").exit_code == 0
    assert cli(index_dir, "export", tmp_path / "e.npy").exit_code == 0
    exported = ("import", tmp_path / "e.npy", tmp_path / "e.jsonl")

    fresh = tmp_path / "fresh"
    assert cli(fresh, *exported).exit_code == 0
    assert _tower(fresh) == {**_tower(index_dir), "mixed": False}
    assert "image tower: int8: --precision int8 (not validated)" in " ".join(cli(fresh, "info").stdout.split())

    fp32 = tmp_path / "fp32"
    assert cli(fp32, "index", photos / "cats", "--precision", "fp32").exit_code == 0
    result = cli(fp32, *exported)
    assert result.exit_code == 0 and "now holds vectors from the int8 image tower beside fp32 ones" in result.stderr
    tower = _tower(fp32)
    assert tower["precision"] == "fp32" and tower["mixed"] and tower["precisions"] == ["fp32", "int8"]


def test_an_unwritable_cache_still_gives_the_int8_tower(cli, photos, index_dir, own_cache, monkeypatch) -> None:
    make_folder = int8.tempfile.mkdtemp

    def refused_in_the_cache(*args, **kwargs):
        if kwargs.get("dir") is not None and own_cache in Path(kwargs["dir"]).parents and kwargs.get("prefix") == ".int8-":
            raise PermissionError(13, "Permission denied")
        return make_folder(*args, **kwargs)

    monkeypatch.setattr(int8.tempfile, "mkdtemp", refused_in_the_cache)  # the float32 tower kept, the int8 one cannot be
    result = cli(index_dir, "index", photos / "cats", "--precision", "int8")
    assert result.exit_code == 0, result.stderr
    assert _tower(index_dir)["precision"] == "int8"
    with SearchEngine.open(index_dir) as engine:
        folder = model_cache_dir(engine.model_key())
    assert not (folder / int8.FILENAME).exists()  # made elsewhere, for this process

    # without the float32 tower in the cache, the reason is said
    for name in ("image_tower.onnx", "image_tower.weights"):
        (folder / name).unlink()
    monkeypatch.setattr("searchlite.models.image_tower.export_image_tower", lambda *args: None)
    refused = cli(index_dir.parent / "other", "index", photos / "cats", "--precision", "int8")
    assert refused.exit_code != 0
    assert "precision int8: the int8 image tower cannot be made: the float32 image tower it is made from is not in" in refused.stderr


def test_int8_with_regions_is_refused(cli, photos, index_dir) -> None:
    result = cli(index_dir, "index", photos / "cats", "--precision", "int8", "--regions")
    assert result.exit_code != 0 and "precision int8 does not go with regions" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
