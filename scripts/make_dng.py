"""Write real camera RAW files from pictures: a minimal valid DNG (Adobe's open RAW format, which
LibRaw reads like any camera's), as a camera writes it: a Bayer mosaic of 12-bit sensor values in a
sub-directory, an embedded JPEG preview in the first directory, the orientation in a tag. For tests
and benchmarks (rawpy decodes these for real), and for trying searchlite on RAW files:

    python scripts/make_dng.py photo.jpg photo.dng [--preview 1600] [--orientation 6]
"""

from __future__ import annotations

import argparse
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10

# XYZ (D65) -> linear sRGB: a "camera" whose sensor colours are sRGB's primaries, so that LibRaw's
# rendering gives back the colours the mosaic was made from
XYZ_TO_SRGB = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]


class _Directory:
    """One TIFF image file directory: tag -> (type, count, value bytes)."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[int, int, bytes]] = {}

    def add(self, tag: int, typ: int, values: int | float | str | list) -> None:
        if isinstance(values, str):
            data = values.encode("ascii") + b"\0"
            self.entries[tag] = (typ, len(data), data)
            return
        values = values if isinstance(values, list) else [values]
        if typ in (RATIONAL, SRATIONAL):
            pairs = [n for v in values for n in (round(v * 10000), 10000)]
            data = struct.pack("<" + ("i" if typ == SRATIONAL else "I") * len(pairs), *pairs)
        else:
            data = struct.pack("<" + {BYTE: "B", SHORT: "H", LONG: "I"}[typ] * len(values), *values)
        self.entries[tag] = (typ, len(values), data)

    def size(self) -> int:
        return 2 + 12 * len(self.entries) + 4


def srgb_to_linear(pixels: np.ndarray) -> np.ndarray:
    """8-bit sRGB (h, w, 3) -> linear light in [0, 1] (float32)."""
    c = np.arange(256, dtype=np.float64) / 255.0
    table = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
    return table[pixels]


def write_dng(picture: Image.Image, preview: Image.Image | None = None, *, orientation: int = 1, make: str = "Searchlite") -> bytes:
    """A DNG whose sensor saw picture (RGB, sensor orientation; even width and height), with
    preview embedded as a JPEG when given, and the EXIF orientation a camera held sideways writes."""
    linear = srgb_to_linear(np.asarray(picture.convert("RGB")))
    h, w, _ = linear.shape
    white = 4095
    mosaic = np.empty((h, w), np.uint16)  # RGGB
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0] * white
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1] * white
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1] * white
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2] * white

    first = _Directory()
    strips: list[tuple[_Directory, bytes]] = []
    if preview is not None:
        buf = io.BytesIO()
        preview.convert("RGB").save(buf, "JPEG", quality=92)
        first.add(254, LONG, 1)  # NewSubfileType: a reduced-size picture
        first.add(256, LONG, preview.width)
        first.add(257, LONG, preview.height)
        first.add(258, SHORT, [8, 8, 8])
        first.add(259, SHORT, 7)  # JPEG
        first.add(262, SHORT, 6)  # YCbCr
        first.add(277, SHORT, 3)
        first.add(278, LONG, preview.height)
        first.add(284, SHORT, 1)
        strips.append((first, buf.getvalue()))
    first.add(271, ASCII, make)
    first.add(272, ASCII, "Test Camera")
    first.add(274, SHORT, orientation)
    first.add(50706, BYTE, [1, 4, 0, 0])  # DNGVersion
    first.add(50707, BYTE, [1, 1, 0, 0])  # DNGBackwardVersion
    first.add(50708, ASCII, f"{make} Test Camera")  # UniqueCameraModel
    first.add(50721, SRATIONAL, XYZ_TO_SRGB)  # ColorMatrix1
    first.add(50778, SHORT, 21)  # CalibrationIlluminant1: D65
    first.add(50728, RATIONAL, [1.0, 1.0, 1.0])  # AsShotNeutral: the camera's white balance

    raw = _Directory()
    raw.add(254, LONG, 0)
    raw.add(256, LONG, w)
    raw.add(257, LONG, h)
    raw.add(258, SHORT, 16)
    raw.add(259, SHORT, 1)
    raw.add(262, SHORT, 32803)  # colour filter array
    raw.add(277, SHORT, 1)
    raw.add(278, LONG, h)
    raw.add(284, SHORT, 1)
    raw.add(33421, SHORT, [2, 2])  # CFARepeatPatternDim
    raw.add(33422, BYTE, [0, 1, 1, 2])  # CFAPattern: RGGB
    raw.add(50710, BYTE, [0, 1, 2])  # CFAPlaneColor
    raw.add(50711, SHORT, 1)  # CFALayout: rectangular
    raw.add(50714, LONG, 0)  # BlackLevel
    raw.add(50717, LONG, white)  # WhiteLevel
    strips.append((raw, mosaic.astype("<u2").tobytes()))

    # layout: header, the first directory, the raw directory, then every value and strip
    first.add(330, LONG, 0)  # SubIFDs, filled in below
    for directory, _ in strips:
        directory.add(273, LONG, 0)  # StripOffsets
        directory.add(279, LONG, 0)  # StripByteCounts
    first_at = 8
    raw_at = first_at + first.size()
    blobs = bytearray()
    data_at = raw_at + raw.size()

    def place(data: bytes) -> int:
        if len(blobs) % 2:
            blobs.append(0)
        offset = data_at + len(blobs)
        blobs.extend(data)
        return offset

    first.add(330, LONG, raw_at)
    for directory, data in strips:
        directory.add(273, LONG, place(data))
        directory.add(279, LONG, len(data))

    def encode(directory: _Directory) -> bytes:
        out = struct.pack("<H", len(directory.entries))
        for tag in sorted(directory.entries):
            typ, count, data = directory.entries[tag]
            value = data.ljust(4, b"\0") if len(data) <= 4 else struct.pack("<I", place(data))
            out += struct.pack("<HHI", tag, typ, count) + value
        return out + struct.pack("<I", 0)

    body = encode(first) + encode(raw)
    return b"II*\0" + struct.pack("<I", first_at) + body + bytes(blobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("picture", type=Path, help="any picture Pillow reads (as the sensor saw it)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--preview", type=int, default=0, metavar="PX", help="embed a JPEG preview this wide (0: none)")
    parser.add_argument("--orientation", type=int, default=1, choices=range(1, 9), help="EXIF orientation to record")
    args = parser.parse_args()
    picture = Image.open(args.picture).convert("RGB")
    picture = picture.crop((0, 0, picture.width // 2 * 2, picture.height // 2 * 2))
    preview = None
    if args.preview:
        preview = picture.resize((args.preview, round(args.preview * picture.height / picture.width)), Image.LANCZOS)
    args.output.write_bytes(write_dng(picture, preview, orientation=args.orientation))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
