"""Phones' HEIC and AVIF, cameras' RAW: real files written by pillow-heif, Pillow and by hand (a DNG
that rawpy decodes for real), detected by content, oriented once; RAW+JPEG pairs indexed once; a
file whose extra is missing fails with the command that installs it."""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli import app
from searchlite.errors import ImageDecodeError
from searchlite.media.images import HEADER_BYTES, decode_rgb, detect_format, open_image
from tests.conftest import load_script

write_dng = load_script("make_dng").write_dng

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _halves(size: tuple[int, int] = (60, 40)) -> Image.Image:
    """Blue left half, red right half: where each lands shows the orientation applied."""
    img = Image.new("RGB", size, RED)
    img.paste(BLUE, (0, 0, size[0] // 2, size[1]))
    return img


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 45) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Apple"
    exif[0x0110] = "iPhone 15"
    return exif.tobytes()


# --- HEIC and AVIF ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_are_recognised_by_content_and_oriented_once(fmt: str) -> None:
    """Orientation 6 (the phone held upright): the picture is shown turned 90 degrees clockwise,
    so the blue left half ends on top. pillow-heif turns it while decoding and Pillow's AVIF leaves
    it to the EXIF orientation: either way it is turned once, never twice or not at all."""
    data = _save(_halves(), fmt, exif=_exif(6), quality=90)
    assert detect_format(data[:HEADER_BYTES]) == fmt
    decoded = decode_rgb(data)
    assert (decoded.width, decoded.height) == (40, 60) and decoded.image.size == (40, 60)
    assert _near(decoded.image.getpixel((20, 5)), BLUE) and _near(decoded.image.getpixel((20, 55)), RED)
    # reduced for a model as indexing does, the same way up
    small = decode_rgb(data, 16, resize_shortest=20).image
    assert small.size == (20, 30) and _near(small.getpixel((10, 2)), BLUE)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_metadata_is_readable_with_getexif(fmt: str) -> None:
    exif = open_image(_save(_halves(), fmt, exif=_exif(1), quality=90)).getexif()
    assert exif[0x010F] == "Apple" and exif[0x0110] == "iPhone 15"


@pytest.mark.parametrize(
    "brands,fmt",
    [
        (b"heic\0\0\0\0mif1heic", "HEIF"),
        (b"mif1\0\0\0\0mif1heic", "HEIF"),
        (b"avif\0\0\0\0avifmif1", "AVIF"),
        (b"mif1\0\0\0\0mif1avif", "AVIF"),
        (b"crx \0\0\0\1crx isom", "CR3"),
        (b"isom\0\0\0\0isomavc1", None),  # an MP4 video, not an image
    ],
)
def test_iso_media_files_are_told_apart_by_their_brands(brands: bytes, fmt: str | None) -> None:
    header = struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands + b"\0" * 32
    assert detect_format(header) == fmt


# --- camera RAW -------------------------------------------------------------------------------


def _scene(size: tuple[int, int] = (240, 160)) -> Image.Image:
    """What the sensor saw: blue left half, red right half."""
    return _halves(size)


def _dng(orientation: int = 1, preview_size: tuple[int, int] | None = (120, 80)) -> bytes:
    """A DNG whose preview differs from its sensor data by a green band, so that each test sees
    which of the two it got."""
    preview = None
    if preview_size is not None:
        preview = _scene(preview_size)
        preview.paste(GREEN, (0, 0, preview_size[0], preview_size[1] // 4))
    return write_dng(_scene(), preview, orientation=orientation)


def test_a_dng_is_recognised_by_content_whatever_its_name() -> None:
    data = _dng()
    assert detect_format(data[:HEADER_BYTES]) == "DNG"
    assert detect_format(data[:HEADER_BYTES], "holiday.tif") == "DNG"


@pytest.mark.parametrize("orientation,size,top_left", [(1, (240, 160), BLUE), (6, (160, 240), BLUE), (3, (240, 160), RED)])
def test_a_dng_is_demosaiced_by_rawpy_when_its_preview_is_too_small(orientation: int, size, top_left) -> None:
    decoded = decode_rgb(_dng(orientation), min_side=100)  # the preview's shorter side is 80
    assert (decoded.width, decoded.height) == size and decoded.image.size == size
    pixels = decoded.image
    assert _near(pixels.getpixel((5, 5)), top_left)
    assert not any(_near(pixels.getpixel((x, 3)), GREEN) for x in (5, size[0] - 5))  # the sensor's data, not the preview
    assert not _near(pixels.getpixel((size[0] - 5, size[1] - 5)), top_left)


@pytest.mark.parametrize("orientation,size", [(1, (240, 160)), (6, (160, 240)), (8, (160, 240))])
def test_a_dng_large_enough_preview_is_used_and_turned_as_the_raw_says(orientation: int, size) -> None:
    decoded = decode_rgb(_dng(orientation), min_side=60)
    assert (decoded.width, decoded.height) == size  # the sensor's size, as displayed
    preview = decoded.image
    assert preview.size == (size[0] // 2, size[1] // 2)
    # the green band along the sensor's top edge: on top, on the right (turned clockwise) or on
    # the left (counter-clockwise) once oriented
    w, h = preview.size
    where = {1: (w // 2, 2), 6: (w - 3, h // 2), 8: (2, h // 2)}[orientation]
    assert _near(preview.getpixel(where), GREEN)


def test_a_dng_without_a_preview_or_without_min_side_is_demosaiced() -> None:
    for data, min_side in [(_dng(preview_size=None), 60), (_dng(), None)]:
        decoded = decode_rgb(data, min_side=min_side)
        assert decoded.image.size == (240, 160)
        assert _near(decoded.image.getpixel((5, 5)), BLUE) and _near(decoded.image.getpixel((235, 155)), RED)


def test_a_large_raw_is_demosaiced_at_half_size_for_a_small_model() -> None:
    data = write_dng(_scene((480, 320)), orientation=1)
    decoded = decode_rgb(data, min_side=64, resize_shortest=64)
    assert (decoded.width, decoded.height) == (480, 320) and decoded.image.size == (96, 64)
    assert _near(decoded.image.getpixel((5, 5)), BLUE) and _near(decoded.image.getpixel((90, 60)), RED)


def test_raw_limits_and_damage_are_readable_failures() -> None:
    with pytest.raises(ImageDecodeError, match=r"image is 240x160 .* over the .* MP limit") as e:
        decode_rgb(_dng(), max_pixels=1000)
    assert e.value.setting == "max_megapixels"
    damaged = _dng()[:2000]  # the directories survive, the sensor data is cut off
    with pytest.raises(ImageDecodeError, match="cannot decode camera raw file"):
        decode_rgb(damaged, min_side=1000)


def test_raws_are_decoded_in_the_isolated_decoder_processes_under_their_limits() -> None:
    from searchlite.config import IndexSettings
    from searchlite.media.decode_worker import DecodeWorker

    settings = IndexSettings()
    worker = DecodeWorker(settings.decode_timeout_s, settings.decoder_memory_limit)
    try:
        decoded = worker.decode(_dng(6, preview_size=None), min_side=60, max_pixels=settings.max_pixels, name="DSC_1.DNG")
        assert (decoded.width, decoded.height) == (160, 240) and _near(decoded.image.getpixel((5, 5)), BLUE)
        with pytest.raises(ImageDecodeError, match="over the .* MP limit"):
            worker.decode(_dng(), min_side=60, max_pixels=1000)
    finally:
        worker.close()


def _tiff(entries: list[tuple[int, int, int, bytes]], text: bytes = b"") -> bytes:
    """A little-endian TIFF header and first directory; text is placed after it (offset given as
    -1 in an entry points there)."""
    at = 8 + 2 + 12 * len(entries) + 4
    body = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        body += struct.pack("<HHI", tag, typ, count) + (struct.pack("<I", at) if value == b"-1" else value.ljust(4, b"\0"))
    return b"II*\0" + struct.pack("<I", 8) + body + b"\0\0\0\0" + text


def test_tiff_based_raws_are_told_from_plain_tiffs() -> None:
    nikon = b"NIKON CORPORATION\0"
    make = (0x010F, 2, len(nikon), b"-1")
    nef = _tiff([(0x00FE, 4, 1, struct.pack("<I", 1)), make, (0x014A, 4, 1, struct.pack("<I", 0))], nikon)
    in_camera_tiff = _tiff([(0x00FE, 4, 1, struct.pack("<I", 0)), (0x0103, 3, 1, struct.pack("<H", 1)), make], nikon)
    cr2 = b"II*\0\x10\0\0\0CR\x02\0" + b"\0" * 20
    assert detect_format(nef) == "NEF" and detect_format(nef, "DSC_1.tif") == "NEF"
    assert detect_format(in_camera_tiff, "DSC_1.NEF") == "TIFF"  # content beats the name
    assert detect_format(cr2) == "CR2"
    plain = _save(Image.new("RGB", (8, 8)), "TIFF")
    assert detect_format(plain[:HEADER_BYTES], "scan.nef") == "TIFF"  # no camera's Make
    # only a TIFF whose first directory lies beyond the header leaves it to the name
    far = b"II*\0" + struct.pack("<I", 10**6) + b"\0" * 64
    assert detect_format(far, "DSC_1.NEF") == "NEF" and detect_format(far, "a.ARW") == "ARW"
    assert detect_format(far, "scan.tif") == "TIFF" and detect_format(far) == "TIFF"


@pytest.mark.parametrize(
    "header,fmt",
    [(b"FUJIFILMCCD-RAW 0201FF383501", "RAF"), (b"IIRO\x08\0\0\0", "ORF"), (b"IIRS\x08\0\0\0", "ORF"), (b"IIU\0\x08\0\0\0", "RW2")],
)
def test_raws_with_signatures_of_their_own(header: bytes, fmt: str) -> None:
    assert detect_format(header + b"\0" * 16) == fmt


# --- a missing extra ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module,make,command",
    [
        ("pillow_heif", lambda: _save(_halves(), "HEIF"), "pip install 'searchlite[heif]'"),
        ("PIL._avif", lambda: _save(_halves(), "AVIF"), "pip install 'searchlite[heif]'"),
        ("rawpy", _dng, "pip install 'searchlite[raw]'"),
    ],
)
def test_a_missing_extra_fails_with_the_command_that_installs_it(monkeypatch: pytest.MonkeyPatch, module, make, command) -> None:
    data = make()
    monkeypatch.setitem(sys.modules, module, None)  # `import` now fails as if never installed
    with pytest.raises(ImageDecodeError) as e:
        decode_rgb(data, min_side=60)
    assert str(e.value).endswith(command)


# --- through the command line -----------------------------------------------------------------


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _album(root: Path) -> Path:
    """A phone's and a camera's pictures: HEIC, AVIF, a DNG alone, a DNG beside its JPEG."""
    root.mkdir()
    (root / "IMG_0001.HEIC").write_bytes(_save(_photo("astronaut"), "HEIF", exif=_exif(6), quality=80))
    (root / "IMG_0002.avif").write_bytes(_save(_photo("chelsea"), "AVIF", exif=_exif(1), quality=80))
    coffee = _photo("coffee")  # 600x400
    (root / "DSC_0003.DNG").write_bytes(write_dng(coffee, coffee.resize((300, 200)), orientation=1))
    rocket = _photo("rocket").crop((0, 0, 426, 426))
    (root / "DSC_0004.dng").write_bytes(write_dng(rocket, rocket.resize((212, 212))))
    _photo("rocket").save(root / "DSC_0004.JPG", quality=85)
    return root


@pytest.fixture
def cli(tiny_model, index_dir: Path):
    runner = CliRunner()
    config, checkpoint = tiny_model

    def run(*args: str):
        if args and args[0] == "index":
            args = (*args, "--model", config, "--pretrained", checkpoint)
        return runner.invoke(app, [str(a) for a in args], env={"SEARCHLITE_INDEX": str(index_dir)})

    return run


def test_heic_avif_and_raw_are_indexed_and_found_and_raw_jpeg_pairs_count_once(cli, tmp_path: Path) -> None:
    album = _album(tmp_path / "album")
    result = cli("index", album)
    assert result.exit_code == 0, result.output
    assert "4 added" in result.stderr and "0 failed" in result.stderr and "0 not images" in result.stderr
    assert "1 raw with a JPEG beside" in result.stderr and "--raw-siblings indexes both" in result.stderr
    facts = json.loads(cli("info", "--json").stdout)
    assert (facts["images"], facts["failed"], facts["not_images"], facts["raw_siblings_skipped"]) == (4, 0, 0, 1)
    assert "raw siblings:" in cli("info").stdout
    skipped = cli("info", "--skipped").stdout
    assert skipped.startswith(str(album / "DSC_0004.dng") + "\t") and "the JPEG is indexed" in skipped
    # a query with the HEIC itself finds it first; its stored size is as displayed (turned upright)
    hits = [json.loads(line) for line in cli("query", "--image", album / "IMG_0001.HEIC", "--json").stdout.splitlines()]
    assert hits[0]["path"] == str(album / "IMG_0001.HEIC") and hits[0]["score"] > 0.999
    assert {h["path"] for h in hits} == {str(album / n) for n in ("IMG_0001.HEIC", "IMG_0002.avif", "DSC_0003.DNG", "DSC_0004.JPG")}

    # both of a pair when asked; the index remembers the choice, and forgets it when told
    both = cli("index", album, "--raw-siblings")
    assert both.exit_code == 0 and "1 updated" in both.stderr and "raw with a JPEG" not in both.stderr
    again = cli("index", album)
    assert "0 updated" in again.stderr and "5 unchanged" in again.stderr
    assert json.loads(cli("info", "--json").stdout)["images"] == 5
    single = cli("index", album, "--no-raw-siblings")
    assert "1 raw with a JPEG beside" in single.stderr
    assert json.loads(cli("info", "--json").stdout)["images"] == 4
    # the JPEG gone, its RAW is the picture: indexed
    (album / "DSC_0004.JPG").unlink()
    alone = cli("index", album)
    assert "1 updated" in alone.stderr and "1 removed" in alone.stderr
    assert json.loads(cli("info", "--json").stdout)["images"] == 4


def test_files_needing_a_missing_extra_fail_with_its_install_command_until_it_is_installed(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    album = _album(tmp_path / "album")
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "rawpy", None)
        patched.setitem(sys.modules, "pillow_heif", None)
        result = cli("index", album)
        assert result.exit_code == 0, result.output
        assert "2 added" in result.stderr and "2 failed" in result.stderr
        assert f"failed: {album / 'IMG_0001.HEIC'}: HEIC/HEIF images need the pillow-heif package: pip install 'searchlite[heif]'" in result.stderr
        assert f"failed: {album / 'DSC_0003.DNG'}: camera raw files need the rawpy package: pip install 'searchlite[raw]'" in result.stderr
        listed = cli("info", "--failed").stdout
        assert "pip install 'searchlite[raw]'" in listed and "pip install 'searchlite[heif]'" in listed
        # still missing: not read again
        assert "5 unchanged, 0 failed" in cli("index", album).stderr
    # installed: judged again without being touched
    result = cli("index", album)
    assert "2 updated" in result.stderr and "0 failed" in result.stderr, result.stderr
    assert json.loads(cli("info", "--json").stdout)["images"] == 4


def test_files_an_older_searchlite_called_not_images_are_looked_at_again_once(cli, tmp_path: Path, index_dir: Path) -> None:
    from searchlite.config import DB_FILENAME
    from searchlite.storage.store import SKIPPED, Store

    album = tmp_path / "album"
    album.mkdir()
    heic = album / "IMG_0001.HEIC"
    heic.write_bytes(_save(_photo("astronaut"), "HEIF", quality=80))
    notes = album / "notes.txt"
    notes.write_text("a text file")
    assert "1 added" in cli("index", album).stderr
    # the verdicts of a searchlite that knew no HEIC (no record of the formats it knew)
    store = Store.open(index_dir / DB_FILENAME)
    try:
        with store.transaction() as tx:
            for path in (heic, notes):
                st = path.stat()
                tx.put(str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, content_hash=None, state=SKIPPED, error="not an image")
    finally:
        store.close()
    result = cli("index", album)
    assert "1 updated" in result.stderr and "1 not images" in result.stderr, result.stderr
    assert "2 unchanged" in cli("index", album).stderr  # judged under this version: not read again
    assert json.loads(cli("info", "--json").stdout)["images"] == 1
