"""Contrastive training: data formats, the loss going down, resuming, and loading the result."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite import InvalidQueryError, PathNotFoundError, SearchEngine
from searchlite.cli import app
from searchlite.models.loading import load_encoder
from searchlite.models.spec import spec_from_flags
from searchlite.train.training import TrainSettings, read_pairs, train
from tests.conftest import load_script

shapes = load_script("make_shapes")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    shapes.write(folder, 48, seed=5)
    return folder


def test_pairs_from_a_folder_a_csv_and_jsonl(scenes: Path, tmp_path: Path) -> None:
    pairs = read_pairs(scenes)
    assert len(pairs) == 48
    assert pairs[0] == (str(scenes / "00000.png"), (scenes / "00000.txt").read_text().strip())
    (tmp_path / "img").mkdir()
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes((scenes / f"0000{i}.png").read_bytes())
    (tmp_path / "pairs.csv").write_text("image,caption\nimg/0.png,a red circle\nimg/1.png,a blue square\n")
    assert read_pairs(tmp_path / "pairs.csv") == [(str(tmp_path / "img/0.png"), "a red circle"), (str(tmp_path / "img/1.png"), "a blue square")]
    (tmp_path / "pairs.jsonl").write_text('{"image": "img/0.png", "caption": "x"}\n\n{"image": "img/2.png", "caption": "y"}\n')
    assert [c for _, c in read_pairs(tmp_path / "pairs.jsonl")] == ["x", "y"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.csv", "path,text\na.png,x\n", "columns image and caption"),
        ("bad.jsonl", '{"image": "a.png"}\n', "line 1"),
        ("one.csv", "image,caption\na.png,x\n", "need at least 2"),
        ("data.txt", "x", "a folder of images with .txt captions, a .csv or a .jsonl"),
    ],
)
def test_bad_training_data_is_refused_clearly(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(InvalidQueryError, match=message):
        read_pairs(tmp_path / name)
    with pytest.raises(PathNotFoundError):
        read_pairs(tmp_path / "missing")


def test_training_lowers_the_loss_and_the_result_loads_as_a_checkpoint(scenes: Path, tmp_path: Path, tiny_model) -> None:
    config, _ = tiny_model
    encoder = load_encoder(spec_from_flags(str(config), None, random_init=True), "cpu")
    losses: list[float] = []
    report = train(encoder, read_pairs(scenes), tmp_path / "out.pt", TrainSettings(steps=40, batch_size=16, lr=2e-3),
                   progress=lambda step, total, loss: losses.append(loss))
    assert report.steps == 40 and len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5  # it learns
    assert not (tmp_path / "out.pt.train-state").exists()
    with SearchEngine.open(tmp_path / "index", model=str(config), pretrained=str(tmp_path / "out.pt")) as engine:
        assert engine.index(scenes).added == 48


def test_an_interrupted_run_resumes_from_its_last_checkpoint(scenes: Path, tmp_path: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    settings = TrainSettings(steps=12, batch_size=8, checkpoint_every=5)
    pairs = read_pairs(scenes)

    def interrupt_at_8(step: int, total: int, loss: float) -> None:
        if step == 8:
            raise KeyboardInterrupt

    encoder = load_encoder(spec_from_flags(str(config), str(checkpoint), random_init=True), "cpu")
    with pytest.raises(KeyboardInterrupt):
        train(encoder, pairs, tmp_path / "out.safetensors", settings, progress=interrupt_at_8)
    assert (tmp_path / "out.safetensors.train-state").exists() and not (tmp_path / "out.safetensors").exists()
    encoder = load_encoder(spec_from_flags(str(config), str(checkpoint), random_init=True), "cpu")
    report = train(encoder, pairs, tmp_path / "out.safetensors", settings)
    assert report.resumed_from == 5 and report.steps == 12
    assert (tmp_path / "out.safetensors").exists()


def test_cli_train_fine_tunes_a_checkpoint(scenes: Path, tmp_path: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    runner = CliRunner()
    both = runner.invoke(app, ["train", str(scenes), "-o", str(tmp_path / "x.pt"), "--epochs", "1", "--steps", "2"])
    assert both.exit_code == 2 and "not both" in both.stderr
    result = runner.invoke(app, ["train", str(scenes), "-o", str(tmp_path / "ft.pt"), "--model", str(config),
                                 "--pretrained", str(checkpoint), "--epochs", "1", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert "3 steps over 48 pairs" in result.stderr and f"--pretrained {tmp_path / 'ft.pt'}" in result.stderr
    assert (tmp_path / "ft.pt").read_bytes() != checkpoint.read_bytes()
    missing = runner.invoke(app, ["train", str(tmp_path / "nope"), "-o", str(tmp_path / "y.pt")])
    assert missing.exit_code == 1 and "not found" in missing.stderr
