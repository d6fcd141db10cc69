"""The semantic end-to-end test: the bundled toy model searchlite-shapes, trained on synthetic
scenes from scripts/make_shapes.py, must find and classify fresh scenes drawn by an independent
renderer (scripts/render_eval_shapes.py) through the public API."""

from __future__ import annotations

import pytest

from searchlite import ModelMismatchError, SearchEngine
from searchlite.config import DB_FILENAME
from searchlite.models.spec import bundled_model, file_sha256
from searchlite.storage.store import Store
from tests.conftest import load_script

eval_shapes = load_script("eval_shapes")
evaluate = eval_shapes.evaluate

# The first bundled weights (one shape per scene, context length 16): indexes built with them must
# be refused, never mixed with vectors from the current weights.
OLD_SHA256 = "db76d72ab505df528027f96598937c3930f59a8459272a04f5f7476046fcb10e"
OLD_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_the_bundled_model_ships_inside_the_package_and_is_small() -> None:
    config, checkpoint = bundled_model("searchlite-shapes")
    assert config.is_file() and checkpoint.is_file()
    assert checkpoint.stat().st_size <= 10 * 1024 * 1024


@pytest.fixture(scope="module")
def results() -> dict:
    # scenes from the evaluation renderer, with a seed used nowhere else
    return evaluate("searchlite-shapes", None, count=200, seed=17, renderer="eval")


def test_text_queries_find_the_right_shapes(results: dict) -> None:
    assert results["precision_at_5"] >= 0.95, results
    assert results["worst_precision_at_5"] >= 0.95, results  # every one of the 12 queries


# By shape the shipped weights sit just above the 0.95 target: 0.9565 over 2,000 fresh scenes
# (seeds 9001-9010 of scripts/eval_shapes.py, 200 each, from 0.93 to 0.975), 0.955 on the 1,000
# below (seed 9011, fixed before it was first measured). On 200 scenes one standard error (0.015)
# spans the target; on 1,000 it is 0.0065.
@pytest.fixture(scope="module")
def shape_accuracy(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Zero-shot accuracy by shape (the default template) on 1,000 fresh one-shape scenes of a
    seed used nowhere else."""
    folder = tmp_path_factory.mktemp("held_out")
    truth = eval_shapes._scenes("eval", folder / "scenes", 1000, 9011, 1)
    with SearchEngine.open(folder / "index", model="searchlite-shapes") as engine:
        engine.index(folder / "scenes")
        results = engine.classify(list(truth), list(eval_shapes.SHAPES))
    return sum(r.label == next(iter(truth[r.path]))[1] for r in results) / len(truth)


# The targets are 0.95 by colour and by shape and 0.9 on two-shape scenes.
def test_zero_shot_with_the_default_template_by_colour_and_by_shape(results: dict, shape_accuracy: float) -> None:
    assert results["color_accuracy"] >= 0.95, results
    assert shape_accuracy >= 0.95, shape_accuracy


def test_on_two_shape_scenes_a_query_ranks_the_scenes_that_hold_it_first(results: dict) -> None:
    assert results["two_shape_precision_at_5"] >= 0.9, results


def test_the_bundled_model_needs_no_flags_after_the_first_and_queries_without_torch(tmp_path) -> None:
    scenes = load_script("render_eval_shapes").write(tmp_path / "scenes", 24, seed=9)
    with SearchEngine.open(tmp_path / "index", model="searchlite-shapes") as engine:
        engine.index(tmp_path / "scenes")
        assert engine.info()["model"].startswith("searchlite-shapes")
    with SearchEngine.open(tmp_path / "index") as engine:
        hit = engine.search(f"a {scenes[0].color} {scenes[0].shape}", k=1)[0]
        assert hit.path.endswith(".jpg")
        assert not engine.model_loaded  # the exported text tower answered


def test_an_index_built_with_the_old_bundled_weights_is_refused(tmp_path) -> None:
    load_script("render_eval_shapes").write(tmp_path / "scenes", 4, seed=9)
    with SearchEngine.open(tmp_path / "index", model="searchlite-shapes") as engine:
        engine.index(tmp_path / "scenes")
    _, checkpoint = bundled_model("searchlite-shapes")
    new_sha256 = file_sha256(str(checkpoint))
    assert new_sha256 != OLD_SHA256
    store = Store.open(tmp_path / "index" / DB_FILENAME)
    try:  # what an index built with the old weights records
        store.set_info("model", store.get_info("model") | {"checkpoint_sha256": OLD_SHA256, "config": OLD_CONFIG})
    finally:
        store.close()
    with pytest.raises(ModelMismatchError) as e:
        SearchEngine.open(tmp_path / "index", model="searchlite-shapes")
    message = str(e.value)
    assert OLD_SHA256[:12] in message and new_sha256[:12] in message and "in a new folder" in message
    assert e.value.setting == "model" and "--" not in message  # the CLI adds the flags
    with SearchEngine.open(tmp_path / "index") as engine, pytest.raises(ModelMismatchError, match="sha256 differs"):
        engine.load_model()  # adding images would need the old weights, which are gone
