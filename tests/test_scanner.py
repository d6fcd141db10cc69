"""Walking folders: what is seen, what is skipped, in which order."""

from __future__ import annotations

import os
from pathlib import Path

from searchlite.ingest.scanner import RAW_SIBLING, scan
from searchlite.storage.hashing import content_hash


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_is_recursive_sorted_and_skips_hidden_entries(tmp_path: Path) -> None:
    touch(tmp_path / "b.jpg")
    touch(tmp_path / "a" / "c.png")
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / "._b.jpg")  # macOS AppleDouble
    touch(tmp_path / ".thumbnails" / "t.jpg")
    found = [f.path for f in scan(tmp_path)]
    assert found == [str(tmp_path / "a" / "c.png"), str(tmp_path / "b.jpg")]


def test_scan_reports_size_and_mtime(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.jpg", b"12345")
    (info,) = scan(tmp_path)
    assert info.size == 5
    assert info.mtime_ns == os.stat(path).st_mtime_ns


def test_a_single_file_can_be_scanned(tmp_path: Path) -> None:
    path = touch(tmp_path / "a.jpg")
    assert [f.path for f in scan(path)] == [str(path)]


def test_links_to_folders_are_not_followed_so_loops_end(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    assert [f.path for f in scan(tmp_path)] == [str(tmp_path / "a" / "x.jpg")]


def test_dangling_links_are_reported_as_errors(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing", tmp_path / "dangling.jpg")
    (info,) = scan(tmp_path)
    assert info.path == str(tmp_path / "dangling.jpg") and info.error == "dangling symbolic link"


def test_links_to_files_inside_are_indexed_but_links_out_are_only_reported(tmp_path: Path) -> None:
    collection, outside = tmp_path / "photos", tmp_path / "elsewhere"
    touch(collection / "a.jpg")
    touch(outside / "b.jpg")
    os.symlink(collection / "a.jpg", collection / "inside-link.jpg")
    os.symlink(outside / "b.jpg", collection / "outside-link.jpg")
    os.symlink(outside, collection / "outside-folder")
    found = {os.path.basename(f.path): f for f in scan(collection)}
    assert set(found) == {"a.jpg", "inside-link.jpg", "outside-link.jpg"}
    assert found["inside-link.jpg"].skip is None
    assert "not followed" in found["outside-link.jpg"].skip and "--" not in found["outside-link.jpg"].skip


def test_follow_links_follows_everything_and_still_ends_on_loops(tmp_path: Path) -> None:
    collection, outside = tmp_path / "photos", tmp_path / "elsewhere"
    touch(collection / "a.jpg")
    touch(outside / "b.jpg")
    os.symlink(outside, collection / "outside-folder")
    os.symlink(collection, outside / "back")  # a loop through two folders
    os.symlink(collection, collection / "self")
    found = [os.path.relpath(f.path, collection) for f in scan(collection, follow_links=True)]
    assert found == ["a.jpg", "outside-folder/b.jpg"]
    assert all(f.skip is None and f.error is None for f in scan(collection, follow_links=True))


def test_excluded_folders_are_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "index" / "searchlite.db")
    touch(tmp_path / "x.jpg")
    found = [f.path for f in scan(tmp_path, exclude=[str(tmp_path / "index")])]
    assert found == [str(tmp_path / "x.jpg")]


def test_non_utf8_names_round_trip_to_the_original_bytes(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # latin-1, not valid UTF-8
    with open(raw, "wb") as f:
        f.write(b"x")
    (info,) = scan(tmp_path)
    assert os.fsencode(info.path) == raw


def test_content_hash_depends_only_on_content() -> None:
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")


def test_a_raw_beside_a_same_name_jpeg_is_skipped_unless_raw_siblings(tmp_path: Path) -> None:
    for name in ["IMG_1.CR2", "IMG_1.JPG", "img_2.nef", "IMG_2.jpeg", "IMG_3.ARW", "IMG_3.HEIC", "IMG_4.DNG", "other/IMG_4.JPG"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    skipped = {os.path.basename(f.path) for f in scan(tmp_path) if f.skip == RAW_SIBLING}
    assert skipped == {"IMG_1.CR2", "img_2.nef", "IMG_3.ARW"}  # IMG_4's JPEG is in another folder
    assert not any(f.skip for f in scan(tmp_path, raw_siblings=True))
