"""Contrastive training: data formats, the loss going down, resuming, and loading the result."""

from __future__ import annotations

import functools
import os
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite import InvalidInputError, PathNotFoundError, SearchEngine
from searchlite.cli import app
from searchlite.models.loading import load_encoder
from searchlite.models.spec import bundled_model, spec_from_flags
from searchlite.train import training
from searchlite.train.training import OutputExistsError, TrainInterrupted, TrainSettings, read_pairs, train
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
    with pytest.raises(InvalidInputError, match=message):
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
    with pytest.raises(TrainInterrupted) as e:
        train(encoder, pairs, tmp_path / "out.safetensors", settings, progress=interrupt_at_8)
    assert isinstance(e.value, KeyboardInterrupt)  # code that catches Exception still stops
    assert e.value.saved_step == 5 and e.value.checkpoint == tmp_path / "out.safetensors.train-state"
    assert "checkpoint of step 5 is saved" in str(e.value) and "to resume" in str(e.value)
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
    assert "s of training (+" in result.stderr and "s loading the data and model)" in result.stderr
    assert (tmp_path / "ft.pt").read_bytes() != checkpoint.read_bytes()
    missing = runner.invoke(app, ["train", str(tmp_path / "nope"), "-o", str(tmp_path / "y.pt")])
    assert missing.exit_code == 1 and "not found" in missing.stderr


def cli_train(*args: str) -> object:
    return CliRunner().invoke(app, ["train", *args])


@pytest.mark.parametrize(
    "output,make,message",
    [
        ("out.pt", Path.mkdir, "is a folder: give a file path inside it"),
        ("out.pt", os.mkfifo, "is not a regular file: give the path of a new .pt or .safetensors file"),
        ("nowhere/out.pt", None, "does not exist: create it or give another output path"),
    ],
    ids=["folder", "fifo", "missing-folder"],
)
def test_a_bad_output_is_refused_before_the_model_loads(scenes: Path, tmp_path: Path, output: str, make, message: str) -> None:
    path = tmp_path / output
    if make:
        make(path)
    # an unknown model fails to load: getting the output's message shows the output was checked first
    result = cli_train(str(scenes), "-o", str(path), "--model", "no-such-model", "--steps", "1")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("searchlite: error: ") and message in result.stderr
    assert str(path) in result.stderr


def test_an_output_in_a_read_only_folder_is_refused(scenes: Path, tmp_path: Path) -> None:
    from tests.read_only_media import run_read_only

    folder = tmp_path / "ro"
    folder.mkdir()
    output = folder / "out.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}
    # an unknown model fails to load: getting the output's message shows the output was checked first
    result = run_read_only([folder], [sys.executable, "-m", "searchlite", "train", str(scenes), "-o", str(output), "--model", "no-such-model"], env=env, timeout=120)
    assert (result.returncode, result.stderr) == (
        1, f"searchlite: error: cannot write to folder {folder} of output {output}: give an output path in a writable folder\n"
    )
    assert list(folder.iterdir()) == []


def test_an_existing_output_is_replaced_only_with_overwrite(scenes: Path, tmp_path: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    output = tmp_path / "out.pt"
    output.write_bytes(b"earlier weights")
    refused = cli_train(str(scenes), "-o", str(output), "--model", str(config), "--steps", "1", "--batch-size", "8")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == f"searchlite: error: output {output} already exists: give another --output, or pass --overwrite to replace it"
    assert output.read_bytes() == b"earlier weights"
    encoder = load_encoder(spec_from_flags(str(config), None, random_init=True), "cpu")
    with pytest.raises(OutputExistsError, match="set overwrite=True to replace it"):
        train(encoder, read_pairs(scenes), output, TrainSettings(steps=1, batch_size=8))
    replaced = cli_train(str(scenes), "-o", str(output), "--model", str(config), "--steps", "1", "--batch-size", "8", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert output.read_bytes() != b"earlier weights"


def interrupting_train(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Make the next training run see Ctrl-C at at_step, as if the user pressed it then."""
    real = training.train

    def interrupted(encoder, pairs, output, settings, progress=None, **kwargs):
        def progress_then_ctrl_c(step: int, total: int, loss: float) -> None:
            if step == at_step:
                raise KeyboardInterrupt
            if progress:
                progress(step, total, loss)

        return real(encoder, pairs, output, settings, progress_then_ctrl_c, **kwargs)

    monkeypatch.setattr(training, "train", interrupted)


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(
    scenes: Path, tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = tiny_model
    interrupting_train(monkeypatch, at_step=2)
    result = cli_train(str(scenes), "-o", str(tmp_path / "out.pt"), "--model", str(config), "--steps", "4", "--batch-size", "8")
    assert result.exit_code == 130
    assert result.stderr.strip() == "searchlite: interrupted before the first checkpoint (every 500 steps): nothing was saved"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_after_a_checkpoint_names_it_and_the_same_command_resumes(
    scenes: Path, tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = tiny_model
    output, state = tmp_path / "out.pt", tmp_path / "out.pt.train-state"
    command = [str(scenes), "-o", str(output), "--model", str(config), "--steps", "6", "--batch-size", "8"]
    # checkpoints every 2 steps instead of 500, for both runs (the CLI builds its settings from this)
    monkeypatch.setattr(training, "TrainSettings", functools.partial(TrainSettings, checkpoint_every=2))
    real_train = training.train
    interrupting_train(monkeypatch, at_step=3)
    result = cli_train(*command)
    assert result.exit_code == 130
    assert result.stderr.strip() == f"searchlite: interrupted; the checkpoint of step 2 is saved in {state}: run the same command again to resume from it"
    assert state.exists() and not output.exists()
    monkeypatch.setattr(training, "train", real_train)
    resumed = cli_train(*command)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming training at step 2" in resumed.stderr and "6 steps over 48 pairs" in resumed.stderr
    assert output.exists() and not state.exists()


def test_help_and_code_agree_on_the_starting_weights(tiny_model) -> None:
    config, _ = tiny_model
    help_text = " ".join(CliRunner().invoke(app, ["train", "--help"]).stdout.split())
    assert "[default: random weights; the bundled searchlite-shapes starts from its shipped weights]" in help_text
    assert spec_from_flags(str(config), None, random_init=True).checkpoint is None  # random
    _, shipped = bundled_model("searchlite-shapes")
    assert spec_from_flags("searchlite-shapes", None, random_init=True).checkpoint == str(shipped)


def test_fewer_pairs_than_the_batch_size_train_on_a_smaller_batch(tmp_path: Path, tiny_model) -> None:
    config, _ = tiny_model
    data = tmp_path / "five"
    shapes.write(data, 5, seed=7)
    results: list[object] = []

    def run() -> None:  # in a thread: a regression loops forever, and the test must fail instead
        results.append(cli_train(str(data), "-o", str(tmp_path / "out.pt"), "--model", str(config), "--steps", "2"))
        results.append(cli_train(str(data), "-o", str(tmp_path / "epochs.pt"), "--model", str(config), "--epochs", "3"))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=300)  # a hang guard, not a speed check: this takes seconds
    assert not worker.is_alive(), "training 5 pairs with the default batch size of 64 never finished"
    by_steps, by_epochs = results
    assert by_steps.exit_code == 0, by_steps.output
    assert "only 5 image-caption pairs: training on batches of 5 instead of 64" in by_steps.stderr
    assert "2 steps over 5 pairs" in by_steps.stderr and (tmp_path / "out.pt").exists()
    assert by_epochs.exit_code == 0 and "3 steps over 5 pairs" in by_epochs.stderr  # one batch per epoch


@pytest.mark.parametrize("name", ["mine.pt", "mine.safetensors"])
def test_the_trained_checkpoint_indexes_with_the_flag_the_hint_names(scenes: Path, tmp_path: Path, tiny_model, name: str) -> None:
    """`train` says "use it with --pretrained OUT": that flag alone must do, whatever the architecture."""
    config, checkpoint = tiny_model
    output = tmp_path / name
    trained = cli_train(str(scenes), "-o", str(output), "--model", str(config), "--pretrained", str(checkpoint), "--steps", "1", "--batch-size", "8")
    assert trained.exit_code == 0, trained.output
    assert trained.stderr.rstrip().endswith(f"use it with --pretrained {output}")
    indexed = CliRunner().invoke(app, ["index", str(scenes), "--index", str(tmp_path / "index"), "--pretrained", str(output)])
    assert indexed.exit_code == 0, indexed.output
    assert "48 added" in indexed.stderr
    # the index is the one that --model CONFIG --pretrained OUT builds: the same model, not a mismatch
    with SearchEngine.open(tmp_path / "index", model=str(config), pretrained=str(output)) as engine:
        assert engine.info()["model"] == spec_from_flags(str(config), str(output)).describe()
        assert len(engine.search("a red circle", k=3)) == 3


def test_a_checkpoint_of_another_architecture_is_a_clear_error(scenes: Path, tmp_path: Path, tiny_model) -> None:
    _, checkpoint = tiny_model  # a plain state dict of the tiny model, given without its architecture
    result = CliRunner().invoke(app, ["index", str(scenes), "--index", str(tmp_path / "index"), "--pretrained", str(checkpoint)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"searchlite: error: cannot load ViT-B-32-256 / checkpoint {checkpoint} (sha256 ")
    assert "the weights do not fit this architecture" in result.stderr and "name the model they were trained as" in result.stderr
    assert "unexpected" not in result.stderr and result.stderr.count("\n") == 1
