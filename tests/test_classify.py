"""Zero-shot classification, tags and linear probes, on the real open_clip path (tiny random model:
plumbing only; semantics are tested with the shapes model in test_shapes.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite import InvalidInputError, ModelMismatchError, NotFoundError, SearchEngine, TagNotFoundError
from searchlite.cli import app
from searchlite.classify.zeroshot import imagenet_templates, parse_labels, resolve_templates


def test_templates_and_labels_are_parsed_strictly(tmp_path: Path) -> None:
    assert resolve_templates(None) == ["a photo of a {}."]
    assert len(imagenet_templates()) == 80 and all("{}" in t for t in imagenet_templates())
    (tmp_path / "t.txt").write_text("a drawing of a {}.\n\nart of the {}\n")
    assert resolve_templates(str(tmp_path / "t.txt")) == ["a drawing of a {}.", "art of the {}"]
    (tmp_path / "bad.txt").write_text("no placeholder\n")
    with pytest.raises(InvalidInputError, match="exactly one {}"):
        resolve_templates(str(tmp_path / "bad.txt"))
    with pytest.raises(InvalidInputError, match="single', 'imagenet' or a file"):
        resolve_templates("nope")
    assert parse_labels(" dog, cat ,car,") == ["dog", "cat", "car"]
    for bad in ["dog", "dog,dog", ""]:
        with pytest.raises(InvalidInputError, match="two or more distinct labels"):
            parse_labels(bad)


def test_prompt_ensemble_is_the_renormalised_mean_of_template_embeddings(engine_factory, photos: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    classifier = engine.zero_shot("dog,cat", "imagenet")
    templates = imagenet_templates()
    scale = engine.load_model().logit_scale
    for row, label in zip(classifier.weights, ["dog", "cat"]):
        mean = engine.embed_text([t.format(label) for t in templates]).mean(axis=0)
        np.testing.assert_allclose(row, scale * mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)


def test_classify_gives_softmax_probabilities_and_a_verdict_per_file(engine_factory, photos: Path, tmp_path: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff nope")
    files = [photos / "astronaut.jpg", tmp_path / "broken.jpg", photos / "space" / "rocket.jpeg"]
    results = engine.classify(files, "person,rocket,cat")
    assert [r.path for r in results] == [str(f) for f in files]
    assert results[1].label is None and "broken.jpg" in results[1].error
    text = engine.embed_text(["a photo of a person.", "a photo of a rocket.", "a photo of a cat."])
    scale = engine.load_model().logit_scale
    for r in (results[0], results[2]):
        probs = dict(r.ranking)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        logits = scale * (text @ engine.embed_images([r.path])[0])
        want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert [probs[l] for l in ["person", "rocket", "cat"]] == pytest.approx(want.tolist(), abs=1e-4)
        assert r.label == ["person", "rocket", "cat"][int(np.argmax(want))]


def test_tags_cover_every_image_filter_queries_and_follow_the_index(engine_factory, photos: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    with pytest.raises(NotFoundError, match="unknown tag 'person': this index has no tags yet; tag its images first") as untagged:
        engine.search("x", tag="person")
    assert isinstance(untagged.value, TagNotFoundError) and untagged.value.http_status == 404
    assert engine.tag("person,animal,space", threshold=0.3) == 10
    counts = engine.info()["tags"]
    assert set(counts) <= {"person", "animal", "space"} and sum(counts.values()) >= 10
    for label, n in counts.items():
        hits = engine.search("anything", k=100, tag=label)
        assert len(hits) == n and all(label in h.tags for h in hits)
    with pytest.raises(TagNotFoundError, match="unknown tag 'no such tag': this index's tags are animal, person, space"):
        engine.search("x", tag="no such tag")
    # new images are tagged by the next index run; deleted ones lose their tags
    Image.open(photos / "astronaut.jpg").rotate(90).save(photos / "new.jpg")
    os.unlink(photos / "nature" / "horse.png")
    report = engine.index(photos)
    assert report.tagged == 1
    assert sum(engine.info()["tags"].values()) >= 10
    assert all(h.tags for h in engine.search("x", k=100))
    # the same label set again: nothing to redo, and no model needed (cached class weights)
    engine.close()

    def no_model(*_args):
        raise AssertionError("tags were recomputed with the model")

    with SearchEngine.open(index_dir, encoder_factory=no_model) as again:
        assert again.tag("person,animal,space", threshold=0.3) == 0
    # a new label set under the same name replaces the old tags
    replaced = engine_factory()
    replaced.tag("indoors,outdoors")
    assert set(replaced.info()["tags"]) <= {"indoors", "outdoors"}


def make_examples(photos: Path, folder: Path, per_label: int = 6) -> None:
    for label, source in [("astronaut", "astronaut.jpg"), ("rocket", "space/rocket.jpeg")]:
        (folder / label).mkdir(parents=True)
        for i in range(per_label):
            Image.open(photos / source).convert("RGB").rotate(i * 7 - 20).save(folder / label / f"{i}.jpg")
    (folder / "rocket" / "notes.txt").write_text("not an image")


def test_probe_train_save_apply(engine_factory, photos: Path, tmp_path: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    make_examples(photos, tmp_path / "examples")
    fitted = engine.train_probe(tmp_path / "examples")
    assert fitted.counts == {"astronaut": 6, "rocket": 6} and fitted.folds == 5
    assert 0.0 <= fitted.cv_accuracy <= 1.0
    engine.save_probe(fitted, tmp_path / "space.npz")
    assert engine.apply_probe(tmp_path / "space.npz") == 10
    counts = engine.info()["tags"]
    assert set(counts) <= {"astronaut", "rocket"} and sum(counts.values()) >= 10
    # the probe's own training images are classified as trained
    probs = fitted.classifier.probabilities(engine.embed_images([tmp_path / "examples" / "rocket" / "0.jpg"]))
    assert fitted.classifier.labels[int(probs.argmax())] == "rocket"


def test_probes_from_another_model_or_broken_files_are_refused(engine_factory, photos: Path, tmp_path: Path, index_dir: Path) -> None:
    engine = engine_factory()
    engine.index(photos)
    make_examples(photos, tmp_path / "examples")
    fitted = engine.train_probe(tmp_path / "examples")
    from searchlite.classify import probe

    probe.save(tmp_path / "other.npz", fitted, "another model")
    with pytest.raises(ModelMismatchError, match="another model than this index"):
        engine.apply_probe(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(InvalidInputError, match="not a searchlite probe file"):
        engine.apply_probe(tmp_path / "junk.npz")
    with pytest.raises(InvalidInputError, match="two labels"):
        (tmp_path / "one" / "only").mkdir(parents=True)
        Image.open(photos / "astronaut.jpg").save(tmp_path / "one" / "only" / "a.jpg")
        engine.train_probe(tmp_path / "one")


def test_cli_classify_tag_probe_and_query_by_tag(tiny_model, photos: Path, index_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"SEARCHLITE_INDEX": str(index_dir)}
    config, checkpoint = tiny_model
    assert runner.invoke(app, ["index", str(photos), "--model", str(config), "--pretrained", str(checkpoint)], env=env).exit_code == 0

    out = runner.invoke(app, ["classify", str(photos / "astronaut.jpg"), str(photos / "space" / "rocket.jpeg"), "--labels", "person,rocket,cat"], env=env)
    assert out.exit_code == 0, out.output
    lines = out.stdout_bytes.decode().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[1] in {"person", "rocket", "cat"}
    js = runner.invoke(app, ["classify", str(photos / "astronaut.jpg"), "--labels", "person,rocket", "--templates", "imagenet", "--json"], env=env)
    obj = json.loads(js.stdout)
    assert {"path", "label", "score", "labels"} <= set(obj) and len(obj["labels"]) == 2

    tagged = runner.invoke(app, ["tag", "--labels", "person,animal,space"], env=env)
    assert tagged.exit_code == 0 and "tagged 10 images" in tagged.stderr
    facts = json.loads(runner.invoke(app, ["info", "--json"], env=env).stdout)
    label = max(facts["tags"], key=facts["tags"].get)
    filtered = runner.invoke(app, ["query", "x", "--tag", label, "--json", "-k", "100"], env=env)
    hits = [json.loads(line) for line in filtered.stdout.splitlines()]
    assert len(hits) == facts["tags"][label] and all(label in h["tags"] for h in hits)
    unknown = runner.invoke(app, ["query", "x", "--tag", "sunset"], env=env)
    assert unknown.exit_code == 1 and unknown.stdout == ""
    assert unknown.stderr == "searchlite: error: unknown tag 'sunset': this index's tags are animal, person, space\n"

    make_examples(photos, tmp_path / "examples")
    trained = runner.invoke(app, ["probe", "train", str(tmp_path / "examples"), "--output", str(tmp_path / "p.npz")], env=env)
    assert trained.exit_code == 0 and "cross-validated accuracy" in trained.stderr
    applied = runner.invoke(app, ["probe", "apply", str(tmp_path / "p.npz")], env=env)
    assert applied.exit_code == 0 and "tagged 10 images" in applied.stderr

    bad = runner.invoke(app, ["tag", "--labels", "justone"], env=env)
    assert bad.exit_code == 1 and "two or more distinct labels" in bad.stderr


def test_cli_classify_needs_no_index_and_reports_missing_files(tiny_model, photos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the default ./index would go
    config, checkpoint = tiny_model
    missing = tmp_path / "missing.jpg"
    args = ["classify", str(photos / "astronaut.jpg"), str(missing), str(photos / "space" / "rocket.jpeg"), "--labels", "person,rocket,cat"]
    out = CliRunner().invoke(app, [*args, "--model", str(config), "--pretrained", str(checkpoint)])
    assert out.exit_code == 1
    assert out.stderr == f"searchlite: error: file {missing} not found\n"
    lines = out.stdout_bytes.decode().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(photos / "astronaut.jpg"), str(photos / "space" / "rocket.jpeg")]
    assert all(line.split("\t")[1] in {"person", "rocket", "cat"} for line in lines)
    assert sorted(os.listdir(tmp_path)) == sorted(["photos"])  # no ./index, nothing else written

    js = CliRunner().invoke(app, [*args[:2], *args[4:], "--json", "--model", str(config), "--pretrained", str(checkpoint)])
    assert js.exit_code == 0 and js.stderr == "" and json.loads(js.stdout)["label"] in {"person", "rocket", "cat"}
    # no index and no model named: the default model, whose weights this offline test cannot have
    default = CliRunner().invoke(app, [*args[:2], *args[4:]])
    assert default.exit_code == 1 and default.stderr.startswith("searchlite: error: ") and "ViT-B-32-256" in default.stderr
    assert len(default.stderr.strip().splitlines()) == 1 and sorted(os.listdir(tmp_path)) == ["photos"]


def test_an_engine_without_index_classifies_and_refuses_the_rest(tiny_model, photos: Path, tmp_path: Path) -> None:
    config, checkpoint = tiny_model

    def no_model(*_args):
        raise AssertionError("a model was loaded for files that do not exist")

    with SearchEngine.without_index(model=str(config), pretrained=str(checkpoint), encoder_factory=no_model) as engine:
        results = engine.classify([tmp_path / "a.jpg", tmp_path / "b.jpg"], "dog,cat")
        assert [r.error for r in results] == [f"file {tmp_path / 'a.jpg'} not found", f"file {tmp_path / 'b.jpg'} not found"]
    with SearchEngine.without_index(model=str(config), pretrained=str(checkpoint)) as engine:
        (result,) = engine.classify([photos / "astronaut.jpg"], "dog,cat")
        assert result.error is None and sum(p for _, p in result.ranking) == pytest.approx(1.0, abs=1e-5)
        for refused in (lambda: engine.search("x"), lambda: engine.index(photos), lambda: engine.tag("dog,cat"), engine.info):
            with pytest.raises(InvalidInputError, match="this engine has no index"):
                refused()
    assert sorted(os.listdir(tmp_path)) == ["photos"]
