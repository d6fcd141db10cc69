"""The semantic end-to-end test: the bundled toy model searchlite-shapes, trained on synthetic
scenes, must find and classify freshly generated held-out scenes through the public API."""

from __future__ import annotations

import pytest

from searchlite import SearchEngine
from searchlite.models.spec import bundled_model
from tests.conftest import load_script

evaluate = load_script("eval_shapes").evaluate


def test_the_bundled_model_ships_inside_the_package_and_is_small() -> None:
    config, checkpoint = bundled_model("searchlite-shapes")
    assert config.is_file() and checkpoint.is_file()
    assert checkpoint.stat().st_size <= 10 * 1024 * 1024


@pytest.fixture(scope="module")
def results() -> dict:
    return evaluate("searchlite-shapes", None, count=240, seed=2)


def test_text_queries_find_the_right_shapes(results: dict) -> None:
    assert results["precision_at_5"] >= 0.9, results


def test_zero_shot_classification_by_colour_and_by_shape(results: dict) -> None:
    assert results["color_accuracy"] >= 0.9, results
    assert results["shape_accuracy"] >= 0.9, results


def test_the_bundled_model_needs_no_flags_after_the_first(tmp_path) -> None:
    scenes = load_script("make_shapes").write(tmp_path / "scenes", 24, seed=9)
    with SearchEngine.open(tmp_path / "index", model="searchlite-shapes") as engine:
        engine.index(tmp_path / "scenes")
        assert engine.info()["model"].startswith("searchlite-shapes")
    with SearchEngine.open(tmp_path / "index") as engine:
        hit = engine.search(f"a {scenes[0].color} {scenes[0].shape}", k=1)[0]
        assert hit.path.endswith(".png")
