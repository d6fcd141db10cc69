"""Generate a corpus of hostile and exotic files, each with the verdict searchlite must reach:

    python scripts/make_hostile_corpus.py /tmp/hostile      # writes /tmp/hostile/collection (+ outside/)

Verdicts: "indexed" (with the RGB a viewer shows at the centre, for the exotic ones), "failed",
"skipped" (not an image, or a link out of the collection) and "absent" (hidden, AppleDouble).
Nothing is downloaded: every file is made here from scikit-image's photos and Pillow.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 20)}


@dataclass(frozen=True)
class Expected:
    """What searchlite must make of one file. path is relative to the collection, as bytes."""

    path: bytes
    verdict: str  # indexed | failed | skipped | absent
    center_rgb: tuple[int, int, int] | None = None  # what a viewer shows at the centre
    reason: str | None = None  # a word the recorded reason must contain


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with a tiny (incomplete) pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def photo(size: tuple[int, int] = (320, 240), which: int = 0) -> Image.Image:
    import skimage.data

    name = ["astronaut", "chelsea", "coffee", "rocket"][which % 4]
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size)


def make_corpus(root: Path) -> list[Expected]:
    """Write the corpus under root/collection (and root/outside); returns the expectations."""
    col = root / "collection"
    outside = root / "outside"
    col.mkdir(parents=True)
    outside.mkdir()
    expected: list[Expected] = []

    def put(rel: str | bytes, data: bytes, verdict: str, rgb=None, reason=None) -> None:
        rel_b = os.fsencode(rel) if isinstance(rel, str) else rel
        path = os.fsencode(col) + b"/" + rel_b
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        expected.append(Expected(rel_b, verdict, rgb, reason))

    # --- not images: every one gets a verdict, none is indexed -------------------------------
    rng = np.random.default_rng(7)
    for i in range(3):
        put(f"junk/empty-{i}.jpg", b"", "skipped", reason="not an image")
    for i in range(12):
        put(f"junk/random-{i}.{['jpg', 'png', 'gif', 'webp'][i % 4]}", rng.bytes(int(rng.integers(1, 5000))), "skipped", reason="not an image")
    for i in range(10):
        put(f"junk/text-{i}.png", f"this is a text file number {i}, named like a picture\n".encode() * (i + 1), "skipped", reason="not an image")
    put("junk/document.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "skipped", reason="not an image")
    put("junk/page.webp", b"<!doctype html><html><body>not a picture</body></html>", "skipped", reason="not an image")
    put("junk/script.bmp", b"#!/bin/sh\necho hello\n", "skipped", reason="not an image")
    # hidden and AppleDouble files are not even looked at
    for i in range(5):
        put(f"mac/._IMG_{i}.JPG", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ", "absent")
    put(".hidden.jpg", encode(photo(), "JPEG"), "absent")
    put(".thumbnails/t.jpg", encode(photo(), "JPEG"), "absent")
    # a folder named like an image holds a real one
    put("folder.jpg/inside.png", encode(photo(which=1), "PNG"), "indexed")

    # --- too big: refused from the header, before any pixel is decoded -----------------------
    put("bombs/bomb-50000x50000.png", png_bomb(50000, 50000), "failed", reason="MP limit")
    put("bombs/bomb-100000x100000.png", png_bomb(100000, 100000), "failed", reason="MP limit")
    put("bombs/bomb-20000x20000.png", png_bomb(20000, 20000), "failed", reason="MP limit")

    # --- truncated: policy is reject (never partially indexed) -------------------------------
    jpeg = encode(photo((640, 480)), "JPEG", quality=90)
    png = encode(photo((300, 200), 2), "PNG")
    for i, cut in enumerate([20, 200, 1000, len(jpeg) // 3, len(jpeg) // 2, len(jpeg) - 200]):
        put(f"truncated/jpeg-cut-{i}.jpg", jpeg[:cut], "failed")
    for i, cut in enumerate([30, 100, len(png) // 4, len(png) // 2, len(png) - 50]):
        put(f"truncated/png-cut-{i}.png", png[:cut], "failed")
    put("truncated/gif-header-only.gif", b"GIF89a\x10\x00\x10\x00", "failed")
    put("truncated/webp-header-only.webp", b"RIFF\x24\x00\x00\x00WEBPVP8 ", "failed")
    put("truncated/tiff-header-only.tif", b"II*\x00\x08\x00\x00\x00", "failed")
    put("truncated/bmp-header-only.bmp", b"BM" + b"\x00" * 20, "failed")

    # --- exotic but valid: indexed, with the colour a viewer shows ---------------------------
    for name, rgb in COLORS.items():
        solid = Image.new("RGB", (64, 48), rgb)
        cmyk = solid.convert("CMYK")
        put(f"exotic/{name}/cmyk.jpg", encode(cmyk, "JPEG", quality=95), "indexed", rgb)
        put(f"exotic/{name}/cmyk.tif", encode(cmyk, "TIFF"), "indexed", rgb)
        pal = solid.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        put(f"exotic/{name}/palette.png", encode(pal, "PNG"), "indexed", rgb)
        put(f"exotic/{name}/palette.gif", encode(pal, "GIF"), "indexed", rgb)
        # palette with a transparent frame around an opaque centre
        framed = Image.new("P", (64, 48), 0)
        framed.putpalette([0, 0, 0, *rgb] + [0, 0, 0] * 254)
        framed.paste(1, (16, 12, 48, 36))
        put(f"exotic/{name}/palette-transparent.png", encode(framed, "PNG", transparency=0), "indexed", rgb)
        put(f"exotic/{name}/palette-transparent.gif", encode(framed, "GIF", transparency=0), "indexed", rgb)
        # fully transparent pixels show the white background; half-transparent ones blend with it
        rgba = Image.new("RGBA", (64, 48), (*rgb, 0))
        rgba.paste((*rgb, 255), (16, 12, 48, 36))
        put(f"exotic/{name}/rgba.png", encode(rgba, "PNG"), "indexed", rgb)
        put(f"exotic/{name}/rgba.webp", encode(rgba, "WEBP", lossless=True), "indexed", rgb)
        put(f"exotic/{name}/rgba.tif", encode(rgba, "TIFF"), "indexed", rgb)
        half = Image.new("RGBA", (64, 48), (*rgb, 128))
        blended = tuple(round(c * 128 / 255 + 255 * (1 - 128 / 255)) for c in rgb)
        put(f"exotic/{name}/half-transparent.png", encode(half, "PNG"), "indexed", blended)
        gray = solid.convert("L")
        g = gray.getpixel((0, 0))
        put(f"exotic/{name}/la.png", encode(Image.merge("LA", [gray, Image.new("L", gray.size, 255)]), "PNG"), "indexed", (g, g, g))
        put(f"exotic/{name}/gray.jpg", encode(gray, "JPEG", quality=95), "indexed", (g, g, g))
        put(f"exotic/{name}/gray16.png", encode(Image.fromarray(np.full((48, 64), g * 257, np.uint16)), "PNG"), "indexed", (g, g, g))
        put(f"exotic/{name}/gray-int32.tif", encode(Image.fromarray(np.full((48, 64), g * 257, np.int32), "I"), "TIFF"), "indexed", (g, g, g))
        put(f"exotic/{name}/gray-float.tif", encode(Image.fromarray(np.full((48, 64), g / 255, np.float32), "F"), "TIFF"), "indexed", (g, g, g))
        put(f"exotic/{name}/progressive.jpg", encode(solid, "JPEG", quality=95, progressive=True), "indexed", rgb)
        put(f"exotic/{name}/subsampling-444.jpg", encode(solid, "JPEG", quality=95, subsampling=0), "indexed", rgb)
        put(f"exotic/{name}/rgb.bmp", encode(solid, "BMP"), "indexed", rgb)
        put(f"exotic/{name}/lzw.tif", encode(solid, "TIFF", compression="tiff_lzw"), "indexed", rgb)
        put(f"exotic/{name}/lossy.webp", encode(solid, "WEBP", quality=95), "indexed", rgb)
        # animations and multi-page files: the first frame is the picture
        others = [Image.new("RGB", (64, 48), c) for c in COLORS.values() if c != rgb]
        put(f"exotic/{name}/animated.gif", _save_all(solid, others, "GIF"), "indexed", rgb)
        put(f"exotic/{name}/animated.webp", _save_all(solid, others, "WEBP", lossless=True), "indexed", rgb)
        put(f"exotic/{name}/animated.png", _save_all(solid, others, "PNG"), "indexed", rgb)
        put(f"exotic/{name}/multipage.tif", _save_all(solid, others, "TIFF"), "indexed", rgb)
        # odd shapes
        put(f"exotic/{name}/one-pixel.png", encode(Image.new("RGB", (1, 1), rgb), "PNG"), "indexed", rgb)
        put(f"exotic/{name}/strip-5000x20.png", encode(Image.new("RGB", (5000, 20), rgb), "PNG"), "indexed", rgb)
        put(f"exotic/{name}/strip-20x5000.jpg", encode(Image.new("RGB", (20, 5000), rgb), "JPEG", quality=95), "indexed", rgb)
    for value, name in [(0, "black"), (1, "white")]:
        bit = Image.new("1", (64, 48), value)
        shade = (255, 255, 255) if value else (0, 0, 0)
        for fmt, ext in [("PNG", "png"), ("TIFF", "tif"), ("BMP", "bmp"), ("GIF", "gif")]:
            put(f"exotic/one-bit/{name}.{ext}", encode(bit, fmt), "indexed", shade)

    # EXIF orientation: a red top half and a blue bottom half as displayed, stored rotated
    upright = Image.new("RGB", (60, 40), (220, 30, 30))
    upright.paste((30, 60, 220), (0, 20, 60, 40))
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}
    for orientation, transpose in inverse.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = upright.transpose(transpose)
        put(f"exif/orientation-{orientation}.jpg", encode(stored, "JPEG", quality=95, exif=exif), "indexed")
    # a corrupt EXIF block costs the orientation, not the picture
    good = encode(Image.new("RGB", (64, 48), COLORS["green"]), "JPEG", quality=95)
    bad_exif = b"\xff\xe1" + struct.pack(">H", 40) + b"Exif\x00\x00MM\x00*\x00\x00\xff\xff" + b"\xde\xad" * 12
    put("exif/corrupt-exif.jpg", good[:2] + bad_exif + good[2:], "indexed", COLORS["green"])

    # --- file names: any name is indexed and round-trips exactly ------------------------------
    names = [
        b"names/caf\xe9 latin-1.jpg",  # not valid UTF-8
        b"names/\xff\xfe raw bytes.jpg",
        "names/日本語の写真.jpg".encode(),
        "names/cafe\u0301 nfd.jpg".encode(),
        "names/café nfc.jpg".encode(),
        "names/emoji 📷.jpg".encode(),
        b"names/with spaces  and   more.jpg",
        b"names/it's \"quoted\".jpg",
        b"names/$(echo pwned); rm -rf ~ && |.jpg",
        b"names/back\\slash.jpg",
        b"names/new\nline.jpg",
        b"names/tab\there.jpg",
        b"names/-rf.jpg",
        b"names/UPPER.JPEG",
        b"names/" + b"long" * 60 + b".jpg",
        b"names/no extension",
        b"names/wrong extension.gif",  # a JPEG named .gif
    ]
    for i, name in enumerate(names):
        put(name, encode(photo((160, 120), i).rotate(i * 11 + 3), "JPEG", quality=85), "indexed")

    # --- batches: bad files between good ones never shift the good ones' vectors -------------
    for i in range(30):
        put(f"batch/{i:03d}-good.jpg", encode(photo((200, 150), i).rotate(i * 7), "JPEG", quality=85), "indexed")
        if i % 3 == 0:
            put(f"batch/{i:03d}-x-bad.jpg", jpeg[: 300 + i], "failed")

    # --- links -------------------------------------------------------------------------------
    (outside / "elsewhere.jpg").write_bytes(encode(photo(which=3), "JPEG"))
    (col / "links").mkdir()
    os.symlink(outside / "elsewhere.jpg", col / "links" / "out-of-collection.jpg")
    expected.append(Expected(b"links/out-of-collection.jpg", "skipped", reason="not followed"))
    os.symlink(outside, col / "links" / "out-folder")  # not followed: nothing under it appears
    os.symlink(col / "batch" / "000-good.jpg", col / "links" / "inside.jpg")
    expected.append(Expected(b"links/inside.jpg", "indexed"))
    os.symlink(col / "nowhere.jpg", col / "links" / "dangling.jpg")
    expected.append(Expected(b"links/dangling.jpg", "failed", reason="dangling"))
    os.symlink(col, col / "links" / "loop")  # a loop back to the top
    os.symlink(col / "links", col / "links" / "self")
    return expected


def _save_all(first: Image.Image, others: list[Image.Image], fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    first.save(buf, fmt, save_all=True, append_images=others, **kwargs)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    root = parser.parse_args().root
    expected = make_corpus(root)
    counts: dict[str, int] = {}
    for e in expected:
        counts[e.verdict] = counts.get(e.verdict, 0) + 1
    print(f"wrote {len(expected)} files under {root / 'collection'}: {counts}")


if __name__ == "__main__":
    main()
