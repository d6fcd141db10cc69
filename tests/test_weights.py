"""Default weights through the Hugging Face cache, offline: the download path users take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite import SearchEngine, WeightsUnavailableError
from searchlite.cli import app
from tests.conftest import load_script


def test_missing_weights_offline_fail_at_once_with_what_to_do(photos: Path, tmp_path: Path) -> None:
    with SearchEngine.open(tmp_path / "index") as engine:  # the default model
        with pytest.raises(WeightsUnavailableError) as e:
            engine.index(photos)
    assert not (tmp_path / "index").exists()  # it failed before indexing anything (not file by file), leaving no index
    msg = str(e.value)
    assert "ViT-B-32-256 / datacomp_s34b_b86k" in msg
    assert "HF_HOME" in msg and "local checkpoint" in msg and "--" not in msg
    assert "the bundled model searchlite-shapes, which works offline" in msg
    assert e.value.setting == "weights"  # the CLI hints at --pretrained and --model
    assert "\n" not in msg


def test_an_offline_first_run_names_the_model_that_works_offline(photos: Path, tmp_path: Path) -> None:
    """Quick start's first command without network: one line that says what works instead."""
    runner = CliRunner()
    first = runner.invoke(app, ["index", str(photos), "--index", str(tmp_path / "index")])
    assert first.exit_code == 1
    assert first.stderr == (
        "searchlite: error: the weights of ViT-B-32-256 / datacomp_s34b_b86k are not in the Hugging Face cache (HF_HOME) "
        "and cannot be downloaded (HF_HUB_OFFLINE is set); run once with network to cache them, pass a local checkpoint "
        "with --pretrained CHECKPOINT, or try searchlite offline with --model searchlite-shapes (a demo model that knows "
        "four colours and three shapes)\n"
    )
    assert not (tmp_path / "index").exists()  # the failed first run leaves no empty index behind
    offline = runner.invoke(app, ["index", str(photos), "--index", str(tmp_path / "index"), "--model", "searchlite-shapes"])
    assert offline.exit_code == 0, offline.output
    assert "10 added" in offline.stderr


def test_a_failed_first_run_in_an_existing_folder_keeps_the_folder_and_the_engine_can_try_again(photos: Path, tmp_path: Path) -> None:
    """Only what the run made goes: a folder that was there stays (with whatever it held)."""
    from searchlite import SearchEngine
    from searchlite.errors import IndexNotFoundError, PathNotFoundError, WeightsUnavailableError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with SearchEngine.open(folder) as engine:
        with pytest.raises(WeightsUnavailableError):
            engine.index(photos)
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
        with pytest.raises(IndexNotFoundError):
            engine.info()
    with SearchEngine.open(tmp_path / "imported", model="searchlite-shapes") as engine:  # import alike
        with pytest.raises(PathNotFoundError):
            engine.import_embeddings(tmp_path / "missing.npy", tmp_path / "missing.jsonl")
    assert not (tmp_path / "imported").exists()
    with SearchEngine.open(folder, model="searchlite-shapes") as engine:
        assert engine.index(photos).added == 10


@pytest.mark.slow
def test_main_job_runs_on_default_weights_from_a_prefilled_hf_cache(photos: Path, tmp_path: Path) -> None:
    """The README's main job in a real process, as a user runs it, with the cache filled offline."""
    hf_home = tmp_path / "hf"
    load_script("prefill_hf_cache").prefill(hf_home)  # random weights: plumbing only
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "SEARCHLITE_INDEX": str(tmp_path / "index")}
    run = [sys.executable, "-m", "searchlite"]
    indexed = subprocess.run([*run, "index", str(photos)], env=env, capture_output=True, text=True, timeout=300)
    assert indexed.returncode == 0, indexed.stderr
    assert "10 added" in indexed.stderr and "0 failed" in indexed.stderr
    found = subprocess.run(
        [*run, "query", "--image", str(photos / "astronaut.jpg"), "-k", "1"], env=env, capture_output=True, timeout=300
    )
    assert found.returncode == 0, found.stderr
    score, path = found.stdout.decode().rstrip("\n").split("\t")
    assert path == str(photos / "astronaut.jpg") and float(score) > 0.999
    info = subprocess.run([*run, "info", "--json"], env=env, capture_output=True, text=True, timeout=60)
    facts = json.loads(info.stdout)
    assert (facts["model"], facts["dim"], facts["images"]) == ("ViT-B-32-256 / datacomp_s34b_b86k", 512, 10)
