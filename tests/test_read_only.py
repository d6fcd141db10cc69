"""Indexes on read-only media answer `query` and `info`; commands that must write say so in one line.

Tests run as root here, for whom chmod denies nothing, so read-only media are made for real: a
read-only bind mount (`mount --bind` then `mount -o remount,ro,bind`, which this sandbox permits;
the tests skip with the reason where mounting is not allowed). A child dropping to nobody on a
chmod-ed copy does not work here: the interpreter lives under /root, which nobody cannot read."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searchlite.cli import app
from searchlite.config import DB_FILENAME
from tests.test_migrations import fixtures, old_index  # noqa: F401 - old_index needs the fixtures fixture


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """mount(src) -> a read-only view of the folder src; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(src: Path, name: str = "ro") -> Path:
        target = tmp_path / f"{name}{len(mounted)}"
        target.mkdir()
        bind = subprocess.run(["mount", "--bind", str(src), str(target)], capture_output=True, text=True)
        if bind.returncode:
            pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
        mounted.append(target)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=True)


def run(*args: str):
    return CliRunner().invoke(app, list(args))


WRITES = [
    ["index", "{photos}"],
    ["tag", "--labels", "red,blue"],
    ["optimize"],
    ["import", "{tmp}/emb.npy", "{tmp}/paths.txt"],
    ["probe", "apply", "{tmp}/probe.npz"],
]


@pytest.mark.parametrize("with_wal", [False, True], ids=["closed", "wal-left-behind"])
def test_a_read_only_index_answers_and_refuses_writes_in_one_line(
    with_wal: bool, engine_factory, photos: Path, index_dir: Path, tmp_path: Path, read_only_mount
) -> None:
    engine = engine_factory()
    engine.index(photos)
    want = run("query", "a cat", "--index", str(index_dir)).stdout
    engine.close()
    if with_wal:  # as a writer killed mid-run leaves them: rows committed only in the -wal
        keep = sqlite3.connect(index_dir / DB_FILENAME)
        keep.execute("PRAGMA wal_autocheckpoint=0")
        keep.execute("UPDATE images SET width = 1 WHERE id = 1")
        keep.commit()
        snapshot = tmp_path / "snapshot"
        shutil.copytree(index_dir, snapshot)
        keep.close()
        index_dir = snapshot
        assert (index_dir / (DB_FILENAME + "-wal")).exists()
    ro = read_only_mount(index_dir)
    assert run("query", "a cat", "--index", str(ro)).stdout == want
    info = run("info", "--json", "--index", str(ro))
    assert info.exit_code == 0 and '"images": 10' in info.stdout
    if with_wal:
        assert run("query", "a cat", "--json", "-k", "10", "--index", str(ro)).stdout.count('"width": 1,') == 1
    for args in WRITES:
        args = [a.format(photos=photos, tmp=tmp_path) for a in args]
        result = run(*args, "--index", str(ro))
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr == f"searchlite: error: the index in {ro} is read-only: it can answer queries; to change it, copy it (or remount its drive) where it can be written\n", args


def test_an_old_schema_on_read_only_media_still_answers(tmp_path: Path, read_only_mount) -> None:
    index, _, _ = old_index("2e598f4", tmp_path / "old")
    ro = read_only_mount(index)
    result = run("query", "a red square", "--tag", "red", "--index", str(ro))
    assert result.exit_code == 1 and result.stdout == ""  # no tag tables yet: no tags
    assert "unknown tag 'red': this index has no tags yet" in result.stderr
    result = run("query", "a red square", "--index", str(ro))
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 6
    info = run("info", "--index", str(ro))
    assert info.exit_code == 0 and re.search(r"^images: +6$", info.stdout, re.M)
    with sqlite3.connect(f"file:{ro / DB_FILENAME}?mode=ro&immutable=1", uri=True) as conn:
        assert conn.execute("SELECT value FROM index_info WHERE key = 'schema_version'").fetchone() == ("1",)


def test_a_read_only_index_in_a_folder_of_any_name_answers(engine_factory, photos: Path, index_dir: Path, read_only_mount) -> None:
    # SQLite is given a URI there: every byte of the folder's name is escaped, UTF-8 or not
    import os

    engine = engine_factory()
    engine.index(photos)
    want = run("query", "a cat", "--index", str(index_dir)).stdout
    engine.close()
    ro = read_only_mount(index_dir, name="read only ?#%20 \u00e9 " + os.fsdecode(b"\xff") + " ")
    result = run("query", "a cat", "--index", str(ro))
    assert result.exit_code == 0 and result.stdout == want
