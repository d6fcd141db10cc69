"""`searchlite eval` / SearchEngine.evaluate: every number checked against an independent numpy
computation on the same embeddings (tiny random model: plumbing), bad inputs as one-line errors,
the plot, and one semantic check with the bundled shapes model."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite import InvalidInputError, SearchEngine
from searchlite.cli import app
from tests.conftest import load_script
from tests.test_engine import counting_encoders


def make_labelled(folder: Path, classes: list[str], per_class: int, seed: int = 0) -> dict[str, list[Path]]:
    """per_class small noisy pictures per class, each class around its own colour."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        base = rng.integers(0, 256, 3)
        out[name] = []
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 60, (40, 48, 3)), 0, 255).astype(np.uint8)
            path = folder / name / f"{n}-{i}.png"
            Image.fromarray(pixels).save(path)
            out[name].append(path)
    return out


def write_captions(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("image", "caption")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def tiny_engine(tiny_model):
    config, checkpoint = tiny_model
    with SearchEngine.without_index(model=str(config), pretrained=str(checkpoint)) as engine:
        yield engine


def zero_shot_reference(engine: SearchEngine, x: np.ndarray, truth: np.ndarray, labels: list[str], templates: list[str]) -> dict:
    """Accuracy, top-5 and confusion the plain way: class text embeddings (mean of template
    embeddings, re-normalised), cosine, argsort."""
    weights = []
    for label in labels:
        mean = engine.embed_text([t.format(label) for t in templates]).mean(axis=0)
        weights.append(mean / np.linalg.norm(mean))
    sims = x @ np.stack(weights).T
    order = np.argsort(-sims, axis=1)
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, order[:, 0]):
        confusion[t][p] += 1
    return {
        "top1": float(np.mean(order[:, 0] == truth)),
        "top5": float(np.mean([t in row[:5] for t, row in zip(truth, order)])),
        "confusion": confusion,
        "per_class": {labels[c]: float(np.mean(order[truth == c, 0] == c)) for c in range(len(labels))},
    }


def recall_reference(image_x: np.ndarray, text_x: np.ndarray, owner: list[int]) -> tuple[dict, dict]:
    """Recall@K by sorting: text->image over captions, image->text over images (any caption)."""
    sims = text_x @ image_x.T
    t2i = {k: float(np.mean([owner[i] in np.argsort(-sims[i])[:k] for i in range(len(owner))])) for k in (1, 5, 10)}
    i2t = {}
    for k in (1, 5, 10):
        hits = [any(owner[c] == j for c in np.argsort(-sims[:, j])[:k]) for j in range(len(image_x))]
        i2t[k] = float(np.mean(hits))
    return t2i, i2t


def test_zero_shot_probe_and_recall_equal_an_independent_computation(tiny_engine: SearchEngine, tmp_path: Path) -> None:
    classes = ["apple", "boat", "cat", "dog", "egg", "fern", "golden_gate"]  # more than 5: top-5 is reported
    files = make_labelled(tmp_path / "labelled", classes, per_class=4)
    (tmp_path / "labelled" / "boat" / "notes.txt").write_text("not an image")  # left out, with a warning
    (tmp_path / "templates.txt").write_text("a drawing of a {}.\nart of the {}\n")
    images = [files["apple"][0], files["boat"][1], files["cat"][2], files["dog"][3]]
    captions = [(str(images[0].relative_to(tmp_path)), "a red apple"), (str(images[1].relative_to(tmp_path)), "a boat at sea"),
                (str(images[1].relative_to(tmp_path)), "a small boat"), (str(images[2].relative_to(tmp_path)), "a cat"),
                (str(images[3].relative_to(tmp_path)), "a dog on grass")]
    csv_path = write_captions(tmp_path / "pairs.csv", captions)

    report = tiny_engine.evaluate(
        tmp_path / "labelled", captions=csv_path, templates=f"single,{tmp_path / 'templates.txt'}", shots="1,2", draws=3, seed=5
    )
    got = report.to_json()
    c = got["classification"]
    assert c["classes"] == classes and c["counts"] == {name: 4 for name in classes} and c["images"] == 28
    assert [u["path"] for u in got["unreadable"]] == [str(tmp_path / "labelled" / "boat" / "notes.txt")]

    paths = [p for name in classes for p in files[name]]
    truth = np.repeat(np.arange(len(classes)), 4)
    x = tiny_engine.embed_images(paths)
    labels = ["apple", "boat", "cat", "dog", "egg", "fern", "golden gate"]  # folder names' underscores read as spaces
    for zs, templates in zip(c["zero_shot"], [["a photo of a {}."], ["a drawing of a {}.", "art of the {}"]]):
        want = zero_shot_reference(tiny_engine, x, truth, labels, templates)
        assert zs["template_count"] == len(templates)
        assert zs["top1"] == pytest.approx(want["top1"], abs=1e-4) and zs["top5"] == pytest.approx(want["top5"], abs=1e-4)
        assert zs["confusion"] == want["confusion"]
        assert zs["per_class"] == pytest.approx({classes[i]: v for i, v in enumerate(want["per_class"].values())}, abs=1e-4)
        off = sorted(((n, i, j) for i, row in enumerate(want["confusion"]) for j, n in enumerate(row) if i != j and n), key=lambda t: -t[0])
        assert sorted(m["images"] for m in zs["most_confused"]) == sorted(n for n, _, _ in off)

    # the probe: one mean and spread per shot count over the draws, each tested on the images not drawn
    points = c["probe"]["points"]
    assert [p["shots"] for p in points] == [1, 2] and all(len(p["accuracies"]) == 3 for p in points)
    for p in points:
        accs = np.array(p["accuracies"])
        held_out = 28 - p["shots"] * len(classes)
        assert np.allclose(accs * held_out, np.round(accs * held_out), atol=1e-3)  # whole images right
        assert p["mean"] == pytest.approx(accs.mean(), abs=1e-4) and p["std"] == pytest.approx(accs.std(), abs=1e-4)
        assert (p["min"], p["max"]) == (pytest.approx(accs.min(), abs=1e-4), pytest.approx(accs.max(), abs=1e-4))
    wins = c["probe"]["beats_zero_shot_at"]
    for zs in c["zero_shot"]:
        want = next((p["shots"] for p in points if p["mean"] > zs["top1"]), None)
        assert wins[zs["templates"]] == want

    # retrieval: 4 images, 5 captions (one image has two)
    image_x = tiny_engine.embed_images(images)
    text_x = tiny_engine.embed_text([caption for _, caption in captions])
    t2i, i2t = recall_reference(image_x, text_x, [0, 1, 1, 2, 3])
    r = got["retrieval"]
    assert (r["images"], r["captions"]) == (4, 5)
    assert r["text_to_image"] == pytest.approx({f"R@{k}": v for k, v in t2i.items()}, abs=1e-4)
    assert r["image_to_text"] == pytest.approx({f"R@{k}": v for k, v in i2t.items()}, abs=1e-4)
    assert r["text_to_image"]["R@5"] == 1.0  # 4 images: every caption finds its image in the top 5

    # deterministic given the seed
    calls: list[tuple[str, int, int]] = []
    again = tiny_engine.evaluate(
        tmp_path / "labelled", captions=csv_path, templates=f"single,{tmp_path / 'templates.txt'}", shots="1,2", draws=3, seed=5,
        progress=lambda *call: calls.append(call),
    )
    assert again.to_json() == got
    assert calls[-1] == ("fitting probes", 6, 6) and ("encoding images", 29, 29) in calls  # 28 images, 1 unreadable
    other_seed = tiny_engine.evaluate(tmp_path / "labelled", templates="single", shots="1,2", draws=3, seed=6)
    assert [p["accuracies"] for p in other_seed.to_json()["classification"]["probe"]["points"]] != [p["accuracies"] for p in points]
    text = report.tables()
    assert "top-5" in text and "golden_gate" in text and "R@10" in text and "few-shot linear probe" in text


def test_indexed_files_reuse_their_stored_embeddings(engine_factory, tmp_path: Path) -> None:
    make_labelled(tmp_path / "labelled", ["a", "b"], per_class=3)
    engine_factory().index(tmp_path / "labelled")
    shutil.copytree(tmp_path / "labelled", tmp_path / "copied")  # same content elsewhere counts too
    make_labelled(tmp_path / "new", ["a", "b"], per_class=1, seed=9)
    shutil.copy(tmp_path / "new" / "a" / "0-0.png", tmp_path / "copied" / "a" / "new.png")
    shutil.copy(tmp_path / "new" / "a" / "0-0.png", tmp_path / "copied" / "b" / "same-new.png")  # copies: encoded once
    encoded: list[int] = []
    engine = engine_factory(encoder_factory=counting_encoders(encoded))
    report = engine.evaluate(tmp_path / "copied", templates="single", shots="1", draws=1)
    assert (report.from_index, report.encoded) == (6, 2) and sum(encoded) == 1


def test_default_shots_leave_out_what_does_not_fit_and_asked_ones_are_refused(tiny_engine: SearchEngine, tmp_path: Path) -> None:
    make_labelled(tmp_path / "labelled", ["a", "b", "c"], per_class=5)
    (tmp_path / "labelled" / "c" / "2-0.png").unlink()  # c keeps 4 images
    report = tiny_engine.evaluate(tmp_path / "labelled", templates="single", draws=2)
    c = report.to_json()["classification"]
    assert [p["shots"] for p in c["probe"]["points"]] == [1, 2] and c["probe"]["left_out_shots"] == [4, 8, 16]
    assert "left out: 4, 8, 16 shots" in report.tables()
    with pytest.raises(InvalidInputError, match=r"shots 4: class 'c' of .* has 4 images.*use shots below 4"):
        tiny_engine.evaluate(tmp_path / "labelled", templates="single", shots="1,4")


def run_cli(tiny_model, *args: str):
    config, checkpoint = tiny_model
    return CliRunner().invoke(app, ["eval", *args, "--model", str(config), "--pretrained", str(checkpoint)])


def test_cli_prints_tables_json_and_draws_the_plot(tiny_model, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    files = make_labelled(tmp_path / "labelled", ["red", "green", "blue"], per_class=4)
    csv_path = write_captions(tmp_path / "pairs.csv", [(str(files[n][0].relative_to(tmp_path)), f"a {n} thing") for n in files])
    out = run_cli(tiny_model, "labelled", "--captions", str(csv_path), "--templates", "single", "--shots", "1,2", "--draws", "2", "--plot", "fig.png")
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("zero-shot: 12 images in 3 classes") and "image -> text" in out.stdout
    assert "0 embeddings from the index, 12 images encoded" in out.stderr and "wrote fig.png" in out.stderr
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    js = run_cli(tiny_model, "labelled", "--templates", "single", "--shots", "1", "--draws", "2", "--seed", "3", "--json")
    assert js.exit_code == 0, js.output
    obj = json.loads(js.stdout)
    assert obj["seed"] == 3 and obj["classification"]["classes"] == ["blue", "green", "red"] and "retrieval" not in obj
    assert json.loads(run_cli(tiny_model, "labelled", "--templates", "single", "--shots", "1", "--draws", "2", "--seed", "3", "--json").stdout) == obj


def test_cli_without_matplotlib_says_how_to_get_it_before_any_work(tiny_model, tmp_path: Path, monkeypatch) -> None:
    make_labelled(tmp_path / "labelled", ["a", "b"], per_class=2)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = run_cli(tiny_model, str(tmp_path / "labelled"), "--plot", str(tmp_path / "fig.png"))
    assert out.exit_code == 1 and out.stdout == ""
    assert out.stderr == "searchlite: error: drawing plots needs matplotlib: pip install 'searchlite[eval]'\n"
    assert not (tmp_path / "fig.png").exists()


def test_bad_inputs_are_one_line_errors(tiny_model, tmp_path: Path) -> None:
    files = make_labelled(tmp_path / "labelled", ["a", "b"], per_class=3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "one" / "only").mkdir(parents=True)
    shutil.copy(files["a"][0], tmp_path / "one" / "only" / "x.png")
    rel = str(files["a"][0].relative_to(tmp_path))
    missing = write_captions(tmp_path / "missing.csv", [(rel, "a"), ("gone.jpg", "b"), ("gone2.jpg", "c")])
    bad_header = write_captions(tmp_path / "header.csv", [(rel, "a")], header=("file", "text"))
    cases = {
        (str(tmp_path / "empty"),): f"no images in subfolders of {tmp_path / 'empty'}: make one subfolder of images per class",
        (str(tmp_path / "one"),): f"{tmp_path / 'one'} has images of one class only (only): make two or more subfolders, one per class",
        (str(tmp_path / "nope"),): f"folder {tmp_path / 'nope'} not found: give a folder with one subfolder of images per class",
        ("--captions", str(missing)): f"caption file {missing} line 3: image gone.jpg not found (and 1 more rows): paths are relative to the CSV's folder",
        ("--captions", str(bad_header)): f"caption file {bad_header}: the first line must be the header image,caption (got 'file,text')",
        ("--captions", str(tmp_path / "none.csv")): f"caption file {tmp_path / 'none.csv'} not found",
        (str(tmp_path / "labelled"), "--shots", "3"): f"shots 3: class 'a' of {tmp_path / 'labelled'} has 3 images, and each draw keeps one per class to test on: use shots below 3",
        (str(tmp_path / "labelled"), "--shots", "1,x"): "shots: give whole numbers of 1 or more separated by commas, e.g. 1,2,4,8,16 (got '1,x')",
        (str(tmp_path / "labelled"), "--templates", "nope"): "templates 'nope': use 'single', 'imagenet' or a file with one template per line",
        ("--captions", str(missing), "--plot", str(tmp_path / "p.png")): "the plot shows classification results: give a labelled folder to plot",
        (str(tmp_path / "labelled"), "--plot", str(tmp_path / "no" / "p.png")): f"plot {tmp_path / 'no' / 'p.png'}: folder {tmp_path / 'no'} not found: create it first or write the plot elsewhere",
    }
    for args, message in cases.items():
        out = run_cli(tiny_model, *args)
        assert (out.exit_code, out.stdout) == (1, ""), (args, out.output)
        assert out.stderr == f"searchlite: error: {message}\n", args
    nothing = run_cli(tiny_model)
    assert nothing.exit_code == 2 and "give a LABELLED_DIR" in nothing.stderr


def test_the_shapes_model_names_colours_and_finds_captioned_scenes(tmp_path: Path) -> None:
    render = load_script("render_eval_shapes")
    rng = np.random.default_rng([2031, 1])  # fresh scenes, a seed used nowhere else
    by_colour: dict[str, int] = {}
    combos: dict[tuple[str, str], str] = {}
    for i in range(60):
        data, scene = render.render(rng)
        if by_colour.get(scene.color, 0) < 4:  # 4 scenes per colour
            by_colour[scene.color] = by_colour.get(scene.color, 0) + 1
            (tmp_path / "colours" / scene.color).mkdir(parents=True, exist_ok=True)
            (tmp_path / "colours" / scene.color / f"{i}.jpg").write_bytes(data)
        if (scene.color, scene.shape) not in combos:  # one scene per colour and shape, captioned
            combos[(scene.color, scene.shape)] = f"scenes/{i}.jpg"
            (tmp_path / "scenes").mkdir(exist_ok=True)
            (tmp_path / "scenes" / f"{i}.jpg").write_bytes(data)
    csv_path = write_captions(tmp_path / "pairs.csv", [(path, f"a {color} {shape}") for (color, shape), path in combos.items()])
    with SearchEngine.without_index(model="searchlite-shapes") as engine:
        report = engine.evaluate(tmp_path / "colours", captions=csv_path, templates="single", shots="1", draws=2)
    got = report.to_json()
    assert got["classification"]["counts"] == {c: 4 for c in ("blue", "green", "red", "yellow")}
    assert got["classification"]["zero_shot"][0]["top1"] >= 0.9, got
    assert got["retrieval"]["images"] >= 10 and got["retrieval"]["text_to_image"]["R@5"] >= 0.9, got


def test_a_caption_shared_by_two_images_ties_with_itself(tiny_engine: SearchEngine, tmp_path: Path) -> None:
    files = make_labelled(tmp_path / "pics", ["a", "b"], per_class=1)
    rows = [(str(files[n][0].relative_to(tmp_path)), "the same words") for n in ("a", "b")]
    r = tiny_engine.evaluate(captions=write_captions(tmp_path / "pairs.csv", rows)).to_json()["retrieval"]
    assert r["image_to_text"]["R@1"] == 1.0  # either copy of its caption is its caption
    assert r["text_to_image"]["R@1"] == 0.5  # one text cannot pick both images first
