"""Images without torch on a CPU: the image tower exported to the user's cache gives open_clip's
embeddings, later runs use it without importing torch, and a missing, damaged or foreign export is
rebuilt from the weights."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite import SearchEngine
from searchlite.config import model_cache_dir
from searchlite.models import image_tower
from searchlite.text import tower as text_tower

from .test_engine import stored_vectors


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A cache of exported towers for this test alone."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SEARCHLITE_CACHE", str(cache))
    return cache


def _export_dir(engine: SearchEngine) -> Path:
    return model_cache_dir(engine.model_key())


def _open_clip_reference(engine: SearchEngine, paths: list[Path]) -> np.ndarray:
    """open_clip's own encode_image(preprocess(img), normalize=True) for each file."""
    import torch

    encoder = engine.load_model()
    with torch.inference_mode():
        batch = torch.stack([encoder.open_clip_transform(Image.open(p).convert("RGB")) for p in paths])
        return encoder.model.encode_image(batch, normalize=True).numpy()


_CHILD = """
import json, sys
from searchlite import SearchEngine
with SearchEngine.open(sys.argv[1]) as engine:
    report = engine.index(sys.argv[2])
    hits = engine.search(image=sys.argv[3], k=1)
print(json.dumps({"encoded": report.encoded, "first": hits[0].path,
                  "torch": sorted({"torch", "open_clip", "torchvision"} & set(sys.modules))}))
"""


def test_a_cpu_index_run_exports_the_image_tower_and_later_runs_skip_torch(engine_factory, photos, index_dir, tiny_model) -> None:
    engine = engine_factory()
    engine.index(photos)
    assert (_export_dir(engine) / image_tower.FILENAME).is_file()
    assert (_export_dir(engine) / text_tower.FILENAME).is_file()
    assert not (index_dir / text_tower.FILENAME).exists()  # the towers live once per model, not per index

    # a later command, in a new process, adds a photo: neither torch nor open_clip is imported
    new = photos / "later" / "new photo.jpg"
    new.parent.mkdir()
    Image.open(photos / "astronaut.jpg").rotate(90).save(new, quality=90)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(index_dir), str(photos), str(new)],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    result = json.loads(out.stdout)
    assert result == {"encoded": 1, "first": str(new), "torch": []}

    # every stored vector, the torch-free ones included, is open_clip's own embedding of the file
    stored = stored_vectors(index_dir)
    paths = sorted(stored)
    reference = _open_clip_reference(engine, [Path(p) for p in paths])
    cosines = (np.stack([stored[p] for p in paths]) * reference).sum(axis=1)
    assert cosines.min() >= 0.999


def test_the_tower_matches_open_clip_on_odd_pictures(engine_factory, tmp_path) -> None:
    engine = engine_factory()
    tower = image_tower.export_image_tower(engine.load_model(), tmp_path / "export", engine.model_key())
    assert tower is not None
    rng = np.random.default_rng(1)
    pictures = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in ((64, 64), (65, 64), (1000, 7), (3, 500), (129, 97))
    ] + [Image.new("L", (80, 60), 128), Image.new("RGBA", (50, 90), (10, 200, 30, 255))]
    encoder = engine.load_model()
    expected = encoder.encode_images([encoder.open_clip_transform(p) for p in pictures])
    got = tower.encode_images([tower.preprocess(p) for p in pictures])
    assert (expected * got).sum(axis=1).min() >= 0.9999

    # loaded from the cache: it opens without prepacked weights, and a large batch brings them
    loaded = image_tower.ImageTower.load(tmp_path / "export", engine.model_key())
    inputs = [loaded.preprocess(p) for p in pictures]
    first = loaded._session
    np.testing.assert_allclose(loaded.encode_images(inputs[:1]), got[:1], atol=1e-5)
    assert loaded._faster is None  # a few images: not worth building them
    batch = inputs * (image_tower.PREPACK_BATCH // len(inputs) + 1)
    np.testing.assert_allclose(loaded.encode_images(batch)[: len(inputs)], got, atol=1e-5)
    loaded._faster.result(timeout=60)
    np.testing.assert_allclose(loaded.encode_images(inputs), got, atol=1e-5)
    assert loaded._session is not first and loaded._faster is None
    # as many images preprocessed one by one (an index run decoding its first batch) bring them too
    again = image_tower.ImageTower.load(tmp_path / "export", engine.model_key())
    for picture in pictures + pictures[: image_tower.PREPACK_BATCH - len(pictures)]:
        again.preprocess(picture)
    again._faster.result(timeout=60)
    np.testing.assert_allclose(again.encode_images(inputs), got, atol=1e-5)
    assert again._faster is None


@pytest.mark.parametrize("damage", ["truncated weights", "truncated graph", "another model's"])
def test_a_damaged_or_foreign_export_is_rebuilt_with_a_notice(damage, engine_factory, photos, index_dir, tmp_path, tiny_model, caplog) -> None:
    engine = engine_factory()
    engine.index(photos)
    expected = [(h.path, round(h.score, 4)) for h in engine.search(image=photos / "cats" / "chelsea the cat.JPG", k=3)]
    export = _export_dir(engine) / image_tower.FILENAME
    if damage.startswith("truncated"):
        damaged = export.with_name(image_tower.WEIGHTS) if "weights" in damage else export
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    else:
        other = tmp_path / "other-model"
        config, checkpoint = tiny_model
        import torch

        state = torch.load(checkpoint, weights_only=True)
        state = {k: v + 0.01 if k.startswith("visual.") and v.is_floating_point() else v for k, v in state.items()}
        torch.save(state, other.with_suffix(".pt"))
        stranger = engine_factory(index=tmp_path / "other-index", model=str(config), pretrained=str(other.with_suffix(".pt")))
        stranger.embed_images(photos / "cats" / "chelsea the cat.JPG")
        for name in (image_tower.FILENAME, image_tower.WEIGHTS):
            (export.parent / name).write_bytes((_export_dir(stranger) / name).read_bytes())

    with caplog.at_level(logging.WARNING, logger="searchlite"), SearchEngine.open(index_dir) as fresh:
        assert [(h.path, round(h.score, 4)) for h in fresh.search(image=photos / "cats" / "chelsea the cat.JPG", k=3)] == expected
        assert fresh.model_loaded  # torch answered, and exported the tower again
    notices = [r.getMessage() for r in caplog.records if "image tower" in r.getMessage()]
    assert len(notices) == 1 and "exporting it again" in notices[0] and "\n" not in notices[0]
    assert image_tower.ImageTower.load(export.parent, engine.model_key()) is not None


def test_an_unwritable_cache_costs_only_speed(engine_factory, photos, index_dir, monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SEARCHLITE_CACHE", str(blocker))
    engine = engine_factory()
    report = engine.index(photos)
    assert report.failed == 0 and report.added == 10
    assert engine.search("a cat", k=1)
    with SearchEngine.open(index_dir) as fresh:
        assert [h.path for h in fresh.search(image=photos / "cats" / "chelsea the cat.JPG", k=1)] == [str(photos / "cats" / "chelsea the cat.JPG")]


def test_two_processes_exporting_at_once_leave_one_good_export(tiny_model, photos, own_cache) -> None:
    config, checkpoint = tiny_model
    child = (
        "import sys\nfrom searchlite import SearchEngine\n"
        "with SearchEngine.without_index(model=sys.argv[1], pretrained=sys.argv[2]) as e:\n"
        "    print(e.embed_images(sys.argv[3]).shape)\n"
    )
    args = [sys.executable, "-c", child, str(config), str(checkpoint), str(photos / "cats" / "chelsea the cat.JPG")]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folder = next((own_cache / "models").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == [image_tower.FILENAME, image_tower.WEIGHTS]  # nothing temporary left
    assert image_tower.ImageTower.load(folder, folder.name) is not None


def test_a_model_with_other_preprocessing_is_not_exported(engine_factory, tmp_path) -> None:
    from torchvision import transforms

    engine = engine_factory()
    encoder = engine.load_model()
    size = encoder.image_size
    encoder.open_clip_transform = transforms.Compose([  # resized without keeping the aspect ratio
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    encoder._deferred = None  # as ClipEncoder finds it for such a transform  # noqa: SLF001
    assert image_tower.export_image_tower(encoder, tmp_path / "export", engine.model_key()) is None
    assert not (tmp_path / "export").exists()


def test_an_index_written_before_the_cache_keeps_its_torch_free_text_queries(engine_factory, photos, index_dir) -> None:
    engine = engine_factory()
    engine.index(photos)
    expected = [h.path for h in engine.search("a cat", k=3)]
    cached = _export_dir(engine) / text_tower.FILENAME
    os.replace(cached, index_dir / text_tower.FILENAME)  # where searchlite 0.1 kept it
    with SearchEngine.open(index_dir) as old:
        assert [h.path for h in old.search("a cat", k=3)] == expected
        assert not old.model_loaded
    with SearchEngine.open(index_dir) as writer:
        writer.index(photos)  # nothing new to encode: the run only moves the copy to the cache
    assert not (index_dir / text_tower.FILENAME).exists() and cached.is_file()
    with SearchEngine.open(index_dir) as later:
        assert [h.path for h in later.search("a cat", k=3)] == expected
        assert not later.model_loaded
