"""Every command against hostile storage: a read-only folder, a missing one, a path under a regular
file and a full disk. Whatever happens, a user sees at most one line, `searchlite: error: ...`, and
exit status 1 — never a traceback.

Read-only is a read-only bind mount (root ignores file permissions; chmod suffices for others);
the full disk is a small tmpfs filled to the last byte, so SQLite and Python both meet a real
ENOSPC. Where mounting is not permitted, a full disk is simulated by making os.fsync fail with
ENOSPC (what write_atomic calls before replacing a file).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite.cli import app

CONDITIONS = ["readonly", "missing", "under_file", "full"]


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"HF_HUB_OFFLINE": "1", "SEARCHLITE_INDEX": None})


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def materials(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:
    """A folder with an index and every input a command takes: photos, labelled examples, a probe,
    exported embeddings and their paths, a templates file, training pairs."""
    from PIL import Image

    config, checkpoint = tiny_model
    root = tmp_path_factory.mktemp("materials")
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for label, rgb in colours.items():
        for n in range(2):
            image = Image.new("RGB", (48, 40), rgb)
            image.putpixel((n, n), (255, 255, 255))
            for folder in (root / "photos", root / "labelled" / label):
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{label}{n}.png")
    index = root / "index"
    for args in (
        ["index", root / "photos", "--index", index, "--model", config, "--pretrained", checkpoint],
        ["probe", "train", root / "labelled", "-o", root / "probe.npz", "--index", index],
        ["export", root / "emb.npy", "--index", index],
    ):
        result = _cli(*args)
        assert result.exit_code == 0, result.output
    (root / "templates.txt").write_text("a photo of a {}.\nan image of a {}.\n")
    pairs = [{"image": f"photos/{label}{n}.png", "caption": f"a {label} square"} for label in colours for n in range(2)]
    (root / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root


@pytest.fixture(scope="module")
def readonly_copy(materials: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the materials on read-only storage."""
    source = tmp_path_factory.mktemp("ro_source") / "m"
    shutil.copytree(materials, source)
    if os.geteuid() != 0:
        for folder, _, files in os.walk(source):
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
        for folder, _, _ in os.walk(source):
            os.chmod(folder, 0o555)
        yield source
        return
    target = tmp_path_factory.mktemp("ro_mount")
    if not (_mount("--bind", str(source), str(target)) and _mount("-o", "remount,bind,ro", str(target))):
        _umount(target)
        pytest.skip("cannot make read-only storage here: root ignores permissions and mounting is not permitted")
    yield target
    _umount(target)


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory: pytest.TempPathFactory):
    """A small tmpfs, or None where mounting is not permitted."""
    target = tmp_path_factory.mktemp("tmpfs")
    if not _mount("-t", "tmpfs", "-o", "size=48m", "tmpfs", str(target)):
        yield None
        return
    yield target
    _umount(target)


def _fill(folder: Path) -> None:
    """Use up every free byte of folder's file system."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


@pytest.fixture
def full_copy(materials: Path, tmpfs: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the materials on a full disk."""
    if tmpfs is None:
        target = tmp_path / "m"
        shutil.copytree(materials, target)

        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", no_space)
        yield target
        return
    target = tmpfs / "m"
    shutil.copytree(materials, target)
    _fill(tmpfs)
    yield target
    shutil.rmtree(target)
    (tmpfs / "filler").unlink()


@pytest.fixture
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The materials folder under the test's condition."""
    condition = request.param
    if condition == "readonly":
        return request.getfixturevalue("readonly_copy")
    if condition == "full":
        return request.getfixturevalue("full_copy")
    if condition == "missing":
        return tmp_path / "no" / "such" / "folder"
    regular = tmp_path / "file.txt"
    regular.write_text("not a folder")
    return regular / "sub"


@pytest.fixture
def model_flags(tiny_model) -> list[object]:
    config, checkpoint = tiny_model
    return ["--model", config, "--pretrained", checkpoint]


# --- the index folder the user named ----------------------------------------------------------

INDEX_CASES = {
    "index": lambda b, g, t, m: ["index", g / "photos", "--index", b / "index", *m],
    "query": lambda b, g, t, m: ["query", "a red square", "--index", b / "index"],
    "info": lambda b, g, t, m: ["info", "--index", b / "index"],
    "optimize": lambda b, g, t, m: ["optimize", "--index", b / "index"],
    "export": lambda b, g, t, m: ["export", t / "out.npy", "--index", b / "index"],
    "import": lambda b, g, t, m: ["import", g / "emb.npy", g / "emb.jsonl", "--index", b / "index", *m],
    "classify": lambda b, g, t, m: ["classify", g / "photos" / "red0.png", "--labels", "red,blue", "--index", b / "index"],
    "tag": lambda b, g, t, m: ["tag", "--labels", "red,blue", "--index", b / "index"],
    "probe train": lambda b, g, t, m: ["probe", "train", g / "labelled", "-o", t / "p.npz", "--index", b / "index"],
    "probe apply": lambda b, g, t, m: ["probe", "apply", g / "probe.npz", "--index", b / "index"],
}


@pytest.mark.parametrize("base", CONDITIONS, indirect=True)
@pytest.mark.parametrize("command", list(INDEX_CASES))
def test_index_folder(command: str, base: Path, materials: Path, tmp_path: Path, model_flags, request) -> None:
    condition = request.node.callspec.params["base"]
    result = _cli(*INDEX_CASES[command](base, materials, tmp_path, model_flags))
    creates = command in ("index", "import") and condition == "missing"  # a new index is made there
    must_fail = condition in ("missing", "under_file") and not creates
    _assert_clean(result, must_fail)
    assert "damaged" not in result.stderr  # a full disk or read-only storage is not damage
    if condition == "missing" and not creates:
        assert "searchlite index FOLDER" in result.stderr  # the CLI's hint for the index folder


# --- output files the user named --------------------------------------------------------------

OUTPUT_CASES = {
    "export": lambda b, g, m: ["export", b / "out.npy", "--index", g / "index"],
    "probe train": lambda b, g, m: ["probe", "train", g / "labelled", "-o", b / "p.npz", "--index", g / "index"],
    "train": lambda b, g, m: ["train", g / "train.jsonl", "-o", b / "m.pt", m[0], m[1], "--steps", "1", "--batch-size", "2"],
}


@pytest.mark.parametrize("base", CONDITIONS, indirect=True)
@pytest.mark.parametrize("command", list(OUTPUT_CASES))
def test_output_file(command: str, base: Path, materials: Path, model_flags) -> None:
    result = _cli(*OUTPUT_CASES[command](base, materials, model_flags))
    _assert_clean(result, must_fail=True)
    assert str(base) in result.stderr  # names the path


# --- input files the user named ---------------------------------------------------------------

INPUT_CASES = {
    "index": lambda b, g, t, m: ["index", b / "photos", "--index", t / "index", *m],
    "import": lambda b, g, t, m: ["import", b / "emb.npy", b / "emb.jsonl", "--index", t / "index", *m],
    "classify": lambda b, g, t, m: ["classify", g / "photos" / "red0.png", "--labels", "red,blue", "--templates", b / "templates.txt", "--index", g / "index"],
    "tag": lambda b, g, t, m: ["tag", "--labels", "red,blue", "--templates", b / "templates.txt", "--name", "t", "--index", g / "index"],
    "probe train": lambda b, g, t, m: ["probe", "train", b / "labelled", "-o", t / "p.npz", "--index", g / "index"],
    "probe apply": lambda b, g, t, m: ["probe", "apply", b / "probe.npz", "--index", g / "index"],
    "train": lambda b, g, t, m: ["train", b / "train.jsonl", "-o", t / "m.pt", m[0], m[1], "--steps", "1", "--batch-size", "2"],
}


@pytest.mark.parametrize("base", CONDITIONS, indirect=True)
@pytest.mark.parametrize("command", list(INPUT_CASES))
def test_input_file(command: str, base: Path, materials: Path, tmp_path: Path, model_flags, request) -> None:
    condition = request.node.callspec.params["base"]
    result = _cli(*INPUT_CASES[command](base, materials, tmp_path, model_flags))
    if condition in ("readonly", "full"):  # reading from read-only or full storage just works
        assert result.exit_code == 0, result.output
    else:
        _assert_clean(result, must_fail=True)
        assert str(base) in result.stderr


def _assert_clean(result, must_fail: bool) -> None:
    """Success, or exactly one line on stderr, `searchlite: error: ...`, and exit status 1."""
    if result.exit_code == 0 and not must_fail:
        return
    lines = result.stderr.splitlines()
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("searchlite: error: "), result.stderr
    assert "Traceback" not in result.output


# --- hints and the last line of defence -------------------------------------------------------


def test_the_library_names_values_and_the_cli_adds_the_flag(materials: Path) -> None:
    from searchlite import InvalidInputError, SearchEngine

    with SearchEngine.open(materials / "index") as engine, pytest.raises(InvalidInputError) as e:
        engine.classify([materials / "photos" / "red0.png"], "red")
    assert "--" not in str(e.value) and e.value.setting == "labels"
    result = _cli("classify", materials / "photos" / "red0.png", "--labels", "red", "--index", materials / "index")
    _assert_clean(result, must_fail=True)
    assert str(e.value) in result.stderr and "--labels" in result.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_error_is_one_line_asking_for_a_bug_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, verbose: bool) -> None:
    from searchlite.engine import SearchEngine

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(SearchEngine, "open", boom)
    result = _cli(*(["-v"] if verbose else []), "info", "--index", tmp_path)
    last = result.stderr.splitlines()[-1]
    assert result.exit_code == 1 and last.startswith("searchlite: error: unexpected RuntimeError: boom second line")
    assert "report" in last and "-v" in last
    assert ("Traceback" in result.stderr) == verbose
    if not verbose:
        assert len(result.stderr.splitlines()) == 1


def test_an_unexpected_os_error_names_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from searchlite.engine import SearchEngine

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "somefile"))

    monkeypatch.setattr(SearchEngine, "open", full)
    result = _cli("info", "--index", tmp_path)
    _assert_clean(result, must_fail=True)
    assert str(tmp_path / "somefile") in result.stderr and "free disk space" in result.stderr
