"""write_atomic replaces regular files only: never a device, pipe, folder or symbolic link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from searchlite.errors import InvalidInputError
from searchlite.storage.atomic_file import write_atomic


def test_it_writes_new_files_and_replaces_regular_ones(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    write_atomic(path, b"one")
    path.chmod(0o640)
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f.bin"]  # no temp file left


@pytest.mark.parametrize("kind", ["device link", "file link", "fifo", "folder", "dangling link"])
def test_anything_but_a_regular_file_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "out.npy"
    if kind == "device link":
        path.symlink_to("/dev/null")
    elif kind == "file link":  # renaming over it would replace the link, not the file
        (tmp_path / "real").write_bytes(b"old")
        path.symlink_to(tmp_path / "real")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "nowhere")
    before = os.lstat(path)
    with pytest.raises(InvalidInputError, match=str(path)) as excinfo:
        write_atomic(path, b"data")
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert "not a regular file" in str(excinfo.value)
    assert sorted(os.listdir(tmp_path)) == sorted(["out.npy"] + (["real"] if kind == "file link" else []))
