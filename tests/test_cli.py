"""The `searchlite` command as a user types it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite.cli import app


@pytest.fixture
def cli(tiny_model, index_dir: Path):
    """Run searchlite with the test index; model flags only where given."""
    runner = CliRunner()

    def run(*args: str, env: dict | None = None):
        return runner.invoke(app, [str(a) for a in args], env={"SEARCHLITE_INDEX": str(index_dir), **(env or {})})

    return run


@pytest.fixture
def indexed(cli, photos: Path, tiny_model):
    config, checkpoint = tiny_model
    result = cli("index", photos, "--model", config, "--pretrained", checkpoint)
    assert result.exit_code == 0, result.output
    return photos


def test_index_prints_a_summary_on_stderr_and_nothing_on_stdout(cli, photos: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    result = cli("index", photos, "--model", config, "--pretrained", checkpoint)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "10 added" in result.stderr and "0 failed" in result.stderr
    again = cli("index", photos)
    assert "10 unchanged" in again.stderr


def test_query_prints_score_tab_path_best_first(cli, indexed: Path) -> None:
    result = cli("query", "a cat", "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout_bytes.decode().splitlines()
    assert len(lines) == 3
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert all(Path(line.split("\t", 1)[1]).is_file() for line in lines)


def test_query_json_lines(cli, indexed: Path) -> None:
    result = cli("query", "a rocket", "--json")
    hits = [json.loads(line) for line in result.stdout_bytes.decode().splitlines()]
    assert len(hits) == 10
    assert {"path", "score", "width", "height"} <= set(hits[0])
    assert hits[0]["score"] >= hits[-1]["score"]


def test_query_by_image_with_weights_and_negatives(cli, indexed: Path) -> None:
    rocket = indexed / "space" / "rocket.jpeg"
    result = cli("query", "--image", rocket, "-k", "1")
    assert result.stdout_bytes.decode().split("\t")[1].strip() == str(rocket)
    mixed = cli("query", "2::beach", "--image", f"0.5::{rocket}", "--not", "3::people", "-k", "2")
    assert mixed.exit_code == 0 and len(mixed.stdout_bytes.splitlines()) == 2
    bad = cli("query", "0::beach")
    assert bad.exit_code == 1 and "positive number" in bad.stderr
    timed = cli("query", "10:30 meeting", "-k", "1")  # a single colon is text, not a weight
    assert timed.exit_code == 0 and len(timed.stdout_bytes.splitlines()) == 1


def test_query_refuses_json_with_nul_records(cli) -> None:
    result = cli("query", "a cat", "--json", "-0")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == "searchlite: error: give --json or -0, not both (JSON lines already keep any file name intact)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "a cat", "--sort", "size"], "unknown --sort 'size': give --sort date (oldest first) or --sort -date (newest first)"),
        (["query", "a cat", "--type", "movie"], "unknown --type 'movie': give --type video or image"),
        (["duplicates", "--tier", "twins"], "unknown --tier 'twins': give --tier exact, near or similar"),
    ],
)
def test_a_flag_with_fixed_values_refuses_another_in_one_line_before_opening_the_index(cli, index_dir: Path, args, message) -> None:
    result = cli(*args)
    assert result.exit_code == 2 and result.stdout == "" and result.stderr == f"searchlite: error: {message}\n"
    assert not index_dir.exists()


def test_non_utf8_paths_round_trip_through_text_and_json_output(cli, photos: Path, tiny_model) -> None:
    raw = os.fsencode(photos) + b"/caf\xe9.jpg"
    with open(raw, "wb") as f:
        f.write((photos / "astronaut.jpg").read_bytes()[:-1] + b"\xd9")  # same pixels, new bytes
    config, checkpoint = tiny_model
    cli("index", photos, "--model", config, "--pretrained", checkpoint)
    text = cli("query", "x", "-k", "20").stdout_bytes
    assert raw in [line.split(b"\t", 1)[1] for line in text.splitlines()]
    js = cli("query", "x", "-k", "20", "--json").stdout_bytes.decode("utf-8")  # valid UTF-8 JSON
    assert raw in [os.fsencode(json.loads(line)["path"]) for line in js.splitlines()]


def test_info_plain_and_json(cli, indexed: Path) -> None:
    facts = json.loads(cli("info", "--json").stdout)
    assert facts["images"] == 10 and facts["failed"] == 0 and facts["dim"] == 64
    assert facts["database_bytes"] > 0 and facts["vectors_bytes"] > 0
    plain = cli("info")
    assert plain.exit_code == 0 and plain.stderr == ""
    lines = dict(line.split(":", 1) for line in plain.stdout.splitlines())
    assert lines["images"].strip() == "10" and lines["failed"].strip() == "0" and lines["dimensions"].strip() == "64"
    assert lines["model"].strip().startswith("custom config") and lines["tags"].strip() == "none"
    assert re.fullmatch(r" +\d+\.\d (kB|MB)", lines["database"])
    assert re.fullmatch(r" +\d+\.\d kB, exact search", lines["vectors"])
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in plain.stdout.splitlines()}) == 1  # aligned
    assert "None" not in plain.stdout and "{" not in plain.stdout and "_bytes" not in plain.stdout and "\t" not in plain.stdout


def test_info_lists_tag_counts_and_says_what_is_not_there_yet() -> None:
    from searchlite.cli.commands_info import describe_info, human_size

    assert [human_size(n) for n in (0, 999, 1000, 12_345_678, 3 * 10**9)] == ["0 bytes", "999 bytes", "1.0 kB", "12.3 MB", "3.0 GB"]
    facts = {"index": "/x", "images": 4, "failed": 1, "not_images": 0, "model": None, "dim": None,
             "database_bytes": 4096, "vectors_bytes": 0, "vector_index": "ivf", "tags": {"beach": 3, "city": 1}}
    text = describe_info(facts)
    assert "model:      none yet" in text and "dimensions: none yet" in text
    assert "tags:       beach 3, city 1\n" in text and "vectors:    0 bytes, approximate search (IVF)" in text
    assert "failed:     1 (searchlite info --failed lists them)" in text


def test_info_failed_lists_files_with_reasons(cli, photos: Path, tiny_model) -> None:
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    config, checkpoint = tiny_model
    result = cli("index", photos, "--model", config, "--pretrained", checkpoint)
    assert result.exit_code == 0
    assert "failed: " in result.stderr and "broken.jpg" in result.stderr
    listed = cli("info", "--failed").stdout
    assert listed.startswith(str(photos / "broken.jpg") + "\t") and "cannot decode" in listed


@pytest.mark.parametrize(
    "args,message",
    [
        (["query", "a cat"], "no index in"),
        (["info"], "no index in"),
        (["index", "/no/such/folder"], "folder /no/such/folder not found"),
    ],
)
def test_errors_are_one_line_with_exit_status_1(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith("searchlite: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_bad_queries_and_model_mismatch_are_one_line_errors(cli, indexed: Path, tmp_path: Path, tiny_model) -> None:
    missing = cli("query", "--image", tmp_path / "nope.jpg")
    assert missing.exit_code == 1 and "query image" in missing.stderr and "not found" in missing.stderr
    empty = cli("query")
    assert empty.exit_code == 1 and "empty query" in empty.stderr
    config, _ = tiny_model
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the same checkpoint")
    mismatch = cli("index", indexed, "--model", config, "--pretrained", other)
    assert mismatch.exit_code == 1 and "was built with" in mismatch.stderr


def test_index_location_flag_beats_environment(cli, photos: Path, tiny_model, tmp_path: Path) -> None:
    config, checkpoint = tiny_model
    flagged = tmp_path / "flagged"
    cli("index", photos, "--index", flagged, "--model", config, "--pretrained", checkpoint)
    assert (flagged / "searchlite.db").exists()
    assert cli("info").exit_code == 1  # the environment's index was never created


def _modules_after(argv: list[str], cwd: Path) -> set[str]:
    code = (
        "import sys\n"
        "from searchlite.cli import app\n"
        f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip'))), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    return set(result.stderr.strip().splitlines()[-1].split()) if result.stderr.strip() else set()


def test_help_and_info_do_not_import_torch(indexed: Path, index_dir: Path, tmp_path: Path) -> None:
    assert _modules_after(["--help"], tmp_path) == set()
    assert _modules_after(["info", "--index", str(index_dir)], tmp_path) == set()


def test_python_dash_m_and_the_console_script(indexed: Path, index_dir: Path) -> None:
    env = {**os.environ, "SEARCHLITE_INDEX": str(index_dir)}
    module = subprocess.run([sys.executable, "-m", "searchlite", "query", "a cat", "-k", "2"], env=env, capture_output=True, timeout=120)
    assert module.returncode == 0, module.stderr
    assert len(module.stdout.splitlines()) == 2
    script = Path(sys.executable).parent / "searchlite"
    if script.exists():
        helped = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0 and "index" in helped.stdout and "query" in helped.stdout


def test_optimize_help_states_the_recall_it_tunes_for() -> None:
    from searchlite.storage.vector_index import TARGET_RECALL

    result = CliRunner().invoke(app, ["optimize", "--help"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())  # as the user reads it, whatever the line wrapping
    assert f"searching just enough for recall@10 >= {TARGET_RECALL:.2f} on text queries" in shown


def test_optimize_command(cli, indexed: Path) -> None:
    result = cli("optimize")
    assert result.exit_code == 0 and "vector index: exact" in result.stderr  # too few vectors for inverted lists


def test_export_and_import_commands(cli, indexed: Path, tmp_path: Path, tiny_model) -> None:
    out = cli("export", tmp_path / "e.npy")
    assert out.exit_code == 0 and "wrote 10 embeddings" in out.stderr
    config, checkpoint = tiny_model
    other = tmp_path / "other"
    imported = cli("import", tmp_path / "e.npy", tmp_path / "e.jsonl", "--index", other, "--model", config, "--pretrained", checkpoint)
    assert imported.exit_code == 0 and "imported 10 embeddings" in imported.stderr
    assert len(cli("query", "x", "--index", other, "-k", "100").stdout_bytes.splitlines()) == 10


def test_links_out_of_the_collection_are_counted_and_listed(cli, tmp_path: Path, tiny_model) -> None:
    from PIL import Image

    collection, outside = tmp_path / "collection", tmp_path / "outside"
    collection.mkdir()
    outside.mkdir()
    Image.new("RGB", (80, 60), (200, 30, 30)).save(collection / "a.png")
    Image.new("RGB", (80, 60), (30, 30, 200)).save(outside / "b.png")
    (collection / "notes.txt").write_text("not an image")
    os.symlink(outside / "b.png", collection / "b-link.png")
    config, checkpoint = tiny_model
    result = cli("index", collection, "--model", config, "--pretrained", checkpoint)
    assert result.exit_code == 0, result.output
    assert "1 added" in result.stderr and "1 not images, 1 link not followed" in result.stderr
    assert f"link not followed (out of the collection; --follow-links follows it): {collection / 'b-link.png'}" in result.stderr
    info = cli("info", "--json")
    facts = json.loads(info.stdout)
    assert (facts["images"], facts["not_images"], facts["links_not_followed"]) == (1, 1, 1)
    listed = cli("info", "--skipped").stdout.splitlines()
    assert f"{collection / 'b-link.png'}\tsymbolic link out of the collection: not followed (following links is off)" in listed
    assert f"{collection / 'notes.txt'}\tnot an image" in listed
    assert cli("info", "--failed").stdout == ""


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--model", "ViT-Q-99"], "unknown model 'ViT-Q-99'"),
        (["--model", "ViT-Q-99", "--pretrained", "laion2b"], "unknown model 'ViT-Q-99'"),
        (["--pretrained", "/no/such/tiny.pt"], "checkpoint file /no/such/tiny.pt not found"),
        (["--pretrained", "tiny.safetensors"], "checkpoint file tiny.safetensors not found"),
    ],
)
def test_bad_model_flags_are_refused_at_once_and_create_nothing(cli, photos: Path, index_dir: Path, flags: list[str], message: str) -> None:
    result = cli("index", photos, *flags)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("searchlite: error: ") and message in result.stderr
    if "unknown model" in message:
        assert 'python -c "import open_clip; print(open_clip.list_models())"' in result.stderr
    assert "needs --pretrained" not in result.stderr
    assert not index_dir.exists()


def test_a_missing_folder_is_named_before_any_work_and_creates_nothing(cli, photos: Path, index_dir: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    result = cli("index", photos, photos / "missing", "--model", config, "--pretrained", checkpoint)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"searchlite: error: folder {photos / 'missing'} not found"]
    assert not index_dir.exists()


def test_a_moved_checkpoint_is_found_again_with_pretrained_alone(cli, photos: Path, tmp_path: Path, tiny_model, monkeypatch) -> None:
    config, checkpoint = tiny_model
    first, moved = tmp_path / "first.pt", tmp_path / "moved" / "tiny.pt"
    shutil.copy(checkpoint, first)
    assert cli("index", photos, "--model", config, "--pretrained", first).exit_code == 0
    moved.parent.mkdir()
    first.rename(moved)
    # the model's exported towers answer without the checkpoint ...
    assert cli("query", "--image", photos / "astronaut.jpg").exit_code == 0
    # ... and without them (a new cache) the model must be loaded: its checkpoint is gone
    monkeypatch.setenv("SEARCHLITE_CACHE", str(tmp_path / "empty cache"))
    lost = cli("query", "--image", photos / "astronaut.jpg")
    assert lost.exit_code == 1
    assert f"checkpoint {first} not found" in lost.stderr
    assert "`searchlite index FOLDER --pretrained" in lost.stderr  # a command that has the flag
    found = cli("index", photos, "--pretrained", moved)
    assert found.exit_code == 0, found.output
    assert "10 unchanged" in found.stderr
    assert str(moved) in json.loads(cli("info", "--json").stdout)["model"]
    again = cli("query", "--image", photos / "astronaut.jpg", "-k", "1")  # recorded: no flag needed
    assert again.exit_code == 0, again.output
    assert again.stdout.split("\t")[1].strip() == str(photos / "astronaut.jpg")


def test_the_summary_counts_the_model_loading_apart(cli, photos: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    first = cli("index", photos, "--model", config, "--pretrained", checkpoint)
    assert re.search(r"10 added.* in \d+\.\ds, plus \d+\.\ds loading the model \(10 encoded", first.stderr), first.stderr
    (photos / "nature" / "grass.bmp").unlink()
    second = cli("index", photos)  # nothing to encode: no model
    assert "1 removed" in second.stderr and "loading the model" not in second.stderr


@pytest.mark.parametrize("special", ["/dev/null", "/dev/stdout"])
def test_export_refuses_special_files_and_links_to_them(cli, indexed: Path, tmp_path: Path, special: str) -> None:
    out = tmp_path / "out.npy"
    out.symlink_to(special)
    result = cli("export", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"searchlite: error: {out} is not a regular file")
    assert len(result.stderr.strip().splitlines()) == 1
    assert out.is_symlink() and os.readlink(out) == special and not (tmp_path / "out.jsonl").exists()
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    assert cli("export", fifo).exit_code == 1 and not (tmp_path / "pipe.jsonl").exists()


def test_no_command_advises_a_flag_it_lacks(cli, photos: Path, tiny_model, tmp_path: Path, monkeypatch) -> None:
    config, checkpoint = tiny_model
    moved = tmp_path / "weights" / "tiny.pt"
    moved.parent.mkdir()
    shutil.copy(checkpoint, tmp_path / "tiny.pt")
    assert cli("index", photos, "--model", config, "--pretrained", tmp_path / "tiny.pt").exit_code == 0
    (tmp_path / "tiny.pt").rename(moved)
    monkeypatch.setenv("SEARCHLITE_CACHE", str(tmp_path / "empty cache"))  # no exported towers: the model must load
    from PIL import Image

    Image.new("RGB", (40, 30), (9, 99, 199)).save(photos / "new.png")  # something the model must encode
    query = cli("query", "--image", photos / "new.png")  # query has no --pretrained: it says which command has
    assert query.exit_code == 1 and "give the weights once with `searchlite index FOLDER --pretrained" in query.stderr
    index = cli("index", photos)  # index has the flag: it says so
    assert index.exit_code == 1 and "; pass the weights with --pretrained" in index.stderr
    assert cli("index", photos, "--pretrained", moved).exit_code == 0  # the new location, recorded
    assert cli("query", "--image", photos / "new.png").exit_code == 0


def test_an_unknown_precision_is_bad_input_with_the_flag_hint(cli, photos: Path, tiny_model) -> None:
    config, checkpoint = tiny_model
    result = cli("index", photos, "--model", config, "--pretrained", checkpoint, "--precision", "fp8")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr == "searchlite: error: precision fp8: use one of auto, fp32, int8, bf16, fp16; use --precision auto|fp32|int8|bf16|fp16\n"
