"""`searchlite explain`: where a text matches in a picture, from the image tower's grid features
(ModifiedResNet: the bundled shapes model; ViT: the tiny random model, plumbing only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite import SearchEngine
from searchlite.cli import app
from tests.conftest import load_script

render_eval_shapes = load_script("render_eval_shapes")


def test_the_peak_falls_on_the_queried_shape_with_the_shapes_model(tmp_path: Path) -> None:
    scenes = render_eval_shapes.write(tmp_path, 12, seed=23, shapes=2, distinct=True)
    nearer = inside = total = 0
    with SearchEngine.without_index(model="searchlite-shapes") as engine:
        for i, scene in enumerate(scenes):
            for n, ((color, shape), box) in enumerate(zip(scene.objects, scene.boxes)):
                x, y = engine.explain(tmp_path / f"{i:05d}.jpg", f"a {color} {shape}").peak
                other = scene.boxes[1 - n]
                distance = lambda b: math.hypot(x - (b[0] + b[2]) / 2, y - (b[1] + b[3]) / 2)  # noqa: E731
                nearer += distance(box) < distance(other)
                inside += box[0] <= x <= box[2] and box[1] <= y <= box[3]
                total += 1
    # scripts/eval_explain.py measures the figures on fresh scenes (README); here a smaller sample
    assert nearer / total >= 0.75 and inside / total >= 0.5, (nearer, inside, total)


def test_cli_prints_the_grid_and_writes_the_heat_map(tiny_model, tmp_path: Path) -> None:
    config, checkpoint = tiny_model
    picture = tmp_path / "wide.png"
    Image.new("RGB", (200, 120), (30, 140, 60)).save(picture)
    out = tmp_path / "heat.png"
    flags = ["--model", str(config), "--pretrained", str(checkpoint)]
    result = CliRunner().invoke(app, ["explain", str(picture), "a green field", "--json", "--output", str(out), *flags])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["width"], record["height"]) == (200, 120)
    scores = record["scores"]
    assert len(scores) >= 2 and len(scores[0]) > len(scores)  # a wide grid for a wide picture
    assert 0 <= record["peak"][0] <= 200 and 0 <= record["peak"][1] <= 120
    with Image.open(out) as heat:
        assert heat.format == "PNG" and heat.size[0] / heat.size[1] == pytest.approx(200 / 120, rel=0.05)
    plain = CliRunner().invoke(app, ["explain", str(picture), "a green field", *flags])
    assert plain.exit_code == 0 and len(plain.stdout.strip().split("\t")) == 2


def test_cli_names_a_missing_image(tiny_model, tmp_path: Path) -> None:
    config, checkpoint = tiny_model
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "nope.jpg"), "x", "--model", str(config), "--pretrained", str(checkpoint)])
    assert result.exit_code == 1
    assert result.stderr == f"searchlite: error: file {tmp_path / 'nope.jpg'} not found\n"
