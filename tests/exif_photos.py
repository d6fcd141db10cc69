"""A folder of photos with real EXIF headers written by Pillow: capture times (with and without a
UTC offset), cameras, lenses, GPS positions (the GPSInfo IFD), an EXIF rotation, and a file with
no EXIF at all (its mtime stands in)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (make, model, DateTimeOriginal, OffsetTimeOriginal, (lat, lon, alt) or None, orientation)
PHOTOS = {
    "lisbon.jpg": ("Canon", "Canon EOS R5", "2023:06:14 10:30:00", "+01:00", (38.7223, -9.1393, 50.0), 1),
    "alps.jpg": ("Apple", "iPhone 13", "2023:08:02 09:00:00", "+02:00", (46.5577, 7.9835, 2061.0), 1),
    "old.jpg": ("NIKON CORPORATION", "NIKON D750", "2019:12:31 23:59:59", None, None, 6),
    "sub/2022/party.png": ("Apple", "iPhone 13", "2022:05:01 20:00:00", None, None, 1),
}
NO_EXIF = "plain.png"
PLAIN_MTIME_NS = 1_614_600_000 * 10**9  # 2021-03-01 12:00 UTC


def _degrees(value: float) -> tuple[float, float, float]:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    return (float(d), float(m), round((value - d - m / 60) * 3600, 4))


def exif_for(make: str, model: str, taken: str, offset: str | None, gps: tuple[float, float, float] | None, orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = make, model, orientation
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = taken
    if offset:
        ifd[0x9011] = offset
    ifd[0xA434] = f"{model} lens"
    if gps is not None:
        lat, lon, alt = gps
        g = exif.get_ifd(0x8825)
        g[1], g[2] = ("N" if lat >= 0 else "S"), _degrees(lat)
        g[3], g[4] = ("E" if lon >= 0 else "W"), _degrees(lon)
        g[5], g[6] = b"\x00", alt
    return exif


def write_exif_photos(root: Path) -> Path:
    """The photos under root/photos (each a different picture, 96x64 before rotation)."""
    folder = root / "photos"
    rng = np.random.default_rng(5)
    for i, (name, facts) in enumerate({**PHOTOS, NO_EXIF: None}.items()):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
        pixels[:, : 12 * (i + 1)] = (50 * i, 255 - 50 * i, 120)
        image = Image.fromarray(pixels)
        if facts is None:
            image.save(path)
        else:
            image.save(path, exif=exif_for(*facts), **({"quality": 90} if name.endswith(".jpg") else {}))
    os.utime(folder / NO_EXIF, ns=(PLAIN_MTIME_NS, PLAIN_MTIME_NS))
    return folder
