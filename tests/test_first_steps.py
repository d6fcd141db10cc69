"""What a new user meets first, through the CLI and the library: a mistyped index, words typed
without quotes, contradictory dates, -k with --sort, and a model the index was not built with."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite import IndexNotFoundError, InvalidInputError, SearchEngine
from searchlite.cli import app
from searchlite.models.spec import spec_from_flags
from tests.conftest import load_script

make_shapes = load_script("make_shapes")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> tuple[Path, Path]:
    """(folder, index): fresh searchlite-shapes scenes and the astronaut photo, each file dated a
    day apart in the reverse order of its name (so date order is not name order)."""
    root = tmp_path_factory.mktemp("first_steps")
    folder = root / "photos"
    make_shapes.write(folder, 36, seed=20260424, shapes=1)
    shutil.copy(photo_dir / "astronaut.jpg", folder / "astronaut.jpg")
    for n, path in enumerate(sorted(folder.glob("*.png"))):
        os.utime(path, (1.7e9 - n * 86400, 1.7e9 - n * 86400))
    with SearchEngine.open(root / "index", model="searchlite-shapes") as engine:
        engine.index(folder)
    return folder, root / "index"


def cli(*args: object) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def caption(folder: Path, line: str) -> str:
    path = Path(line.split("\t")[-1])
    return (folder / f"{path.stem}.txt").read_text().strip() if path.suffix == ".png" else path.name


# --- a missing index -----------------------------------------------------------------------------


def test_opening_a_missing_index_creates_nothing_and_reading_it_says_so(tmp_path: Path, photos: Path, tiny_model) -> None:
    typo = tmp_path / "typo"
    with SearchEngine.open(typo) as engine:
        for read in (lambda: engine.search("a cat"), engine.info, engine.duplicates):
            with pytest.raises(IndexNotFoundError, match=f"no index in {typo}: index a folder into it first"):
                read()
    assert not typo.exists()
    config, checkpoint = tiny_model
    with SearchEngine.open(typo, model=str(config), pretrained=str(checkpoint)) as engine:
        assert engine.index(photos).added == 10  # the first write creates it
    with SearchEngine.open(typo) as engine:
        assert engine.info()["images"] == 10 and engine.search("a cat", k=1)


def test_a_read_only_command_on_a_missing_index_names_it_and_the_command_that_makes_it(tmp_path: Path) -> None:
    typo = tmp_path / "my index"
    for command in (["query", "a cat"], ["info"], ["duplicates"], ["classify", tmp_path / "x.jpg", "--labels", "a,b"]):
        result = cli(*command, "--index", typo)
        assert result.exit_code == 1
        assert result.stderr == (
            f"searchlite: error: no index in {typo}; run `searchlite index FOLDER --index '{typo}'` first, "
            "or pass --index DIR (or set SEARCHLITE_INDEX) for another index\n"
        )
    assert not typo.exists()


# --- words typed without quotes ------------------------------------------------------------------


def test_unquoted_words_are_one_query(shapes: tuple[Path, Path]) -> None:
    folder, index = shapes
    unquoted = lines(cli("query", "a", "yellow", "triangle", "-k", "5", "--index", index))
    assert unquoted == lines(cli("query", "a yellow triangle", "-k", "5", "--index", index))
    assert "yellow triangle" in caption(folder, unquoted[0])


def test_quoted_texts_and_weights_stay_separate_terms(shapes: tuple[Path, Path]) -> None:
    folder, index = shapes
    with SearchEngine.open(index) as engine:
        for typed in (["2::yellow", "triangle"], ["a red circle", "blue"]):
            want = [f"{h.score:.4f}\t{h.path}" for h in engine.search(typed, k=5)]
            assert lines(cli("query", *typed, "-k", "5", "--index", index)) == want


# --- dates that contradict each other ------------------------------------------------------------


@pytest.mark.parametrize("after,before", [("2024", "2020"), ("2024-06", "2024-06"), ("2023-06-14T18:30+02:00", "2023-06-14T17:00+01:00")])
def test_contradictory_dates_are_an_error_not_an_empty_result(shapes: tuple[Path, Path], after: str, before: str) -> None:
    _, index = shapes
    result = cli("query", "a red circle", "--after", after, "--before", before, "--index", index)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"searchlite: error: the dates contradict each other: nothing is from {after} on and before {before}; "
        "give the earlier date as after and the later one as before\n"
    )
    with SearchEngine.open(index) as engine, pytest.raises(InvalidInputError, match="contradict"):
        engine.search("a red circle", after=after, before=before)


def test_dates_in_order_still_filter(shapes: tuple[Path, Path]) -> None:
    _, index = shapes
    assert lines(cli("query", "a red circle", "--after", "2020", "--before", "2030", "--index", index))


# --- -k with --sort and --all --------------------------------------------------------------------


def test_k_with_sort_keeps_the_k_most_relevant_in_date_order(shapes: tuple[Path, Path]) -> None:
    _, index = shapes
    every = lines(cli("query", "a red circle", "--sort", "date", "--min-score", "-1", "--index", index))
    capped = lines(cli("query", "a red circle", "--sort", "date", "--min-score", "-1", "-k", "3", "--index", index))
    best = {line.split("\t")[1] for line in lines(cli("query", "a red circle", "-k", "3", "--index", index))}
    assert len(every) == 37 and len(capped) == 3
    assert capped == [line for line in every if line.split("\t")[-1] in best]  # the 3 best, in date order
    dates = [line.split("\t")[1] for line in capped]
    assert dates == sorted(dates)
    listed = lines(cli("query", "--sort", "-date", "-k", "2", "--index", index))
    assert listed == lines(cli("query", "--sort", "-date", "--index", index))[:2]
    ranked = lines(cli("query", "a red circle", "--all", "-k", "4", "--index", index))
    assert ranked == lines(cli("query", "a red circle", "--all", "--index", index))[:4]


def test_help_says_what_k_does_with_sort() -> None:
    help_text = " ".join(cli("query", "--help").stdout.split())
    assert "with --sort or --all, which return every match, the K most relevant of them, in their order" in help_text
    assert "Unquoted words are one text" in help_text


# --- another model than the index's --------------------------------------------------------------


def test_a_model_mismatch_gives_its_advice_once(shapes: tuple[Path, Path], tiny_model) -> None:
    folder, index = shapes
    config, checkpoint = tiny_model
    result = cli("index", folder, "--index", index, "--model", config, "--pretrained", checkpoint)
    assert result.exit_code == 1
    built, asked = spec_from_flags("searchlite-shapes", None).describe(), spec_from_flags(str(config), str(checkpoint)).describe()
    assert result.stderr == (
        f"searchlite: error: the index in {index} was built with {built}, not {asked}; "
        "drop --model/--pretrained to use the index's model, or pass --index NEW_DIR to build a separate index with this one\n"
    )
