"""What a photo's header says about it: when it was taken, with what camera and lens, where, its
size as shown, its media type. Read from the EXIF block of whatever Pillow opened (getexif() works
for every format whose plugin reads EXIF: JPEG, PNG, WebP, TIFF, and HEIC/AVIF through their
plugins), never from the pixels, so that reading it costs a header parse.

A capture time is the photo's own wall clock (DateTimeOriginal, "what the camera showed"), with its
UTC offset when the file records one (OffsetTimeOriginal). Files without one get their mtime,
flagged as such (taken_source "mtime") so that a user can tell a guess from a record.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import ExifTags, Image

log = logging.getLogger(__name__)

# which reader filled a row's metadata (images.metadata_version): rows read by an older one (or
# none) are read again, header only, by the next `index` run
METADATA_VERSION = 1
HEADER_READ_BYTES = 1 << 20  # what is read of an indexed file to fill in its metadata

EXIF = "exif"
MTIME = "mtime"

_MAKE, _MODEL, _ORIENTATION = 0x010F, 0x0110, 0x0112
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 0x9011, 0x9012
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT = 1, 2, 3, 4, 5, 6
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


@dataclass(frozen=True)
class ImageMetadata:
    """Header facts of one image; any of them may be unknown (None)."""

    taken_at: str | None = None  # local wall-clock time, "YYYY-MM-DDTHH:MM:SS"
    taken_offset: str | None = None  # its UTC offset, "+02:00", when the file records it
    taken_source: str | None = None  # EXIF or MTIME
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None  # metres above sea level
    width: int | None = None  # as shown, after EXIF orientation
    height: int | None = None
    media_type: str | None = None  # "image/jpeg"
    phash: str | None = None  # 64-bit perceptual hash (hex) of the pixels, when they were decoded

    @property
    def taken_utc(self) -> float | None:
        """The capture instant (Unix seconds) when the offset is known, else None."""
        if self.taken_at is None or self.taken_offset is None:
            return None
        local = dt.datetime.fromisoformat(self.taken_at + self.taken_offset)
        return local.timestamp()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_columns(self) -> dict[str, Any]:
        """The store's metadata columns (taken_utc included)."""
        return asdict(self) | {"taken_utc": self.taken_utc}

    def with_mtime(self, mtime_ns: int) -> ImageMetadata:
        """This, with the file's mtime (in this machine's time zone) as its capture time when the
        header has none."""
        if self.taken_at is not None:
            return self
        local = dt.datetime.fromtimestamp(mtime_ns / 1e9).astimezone()
        return replace(
            self, taken_at=local.strftime("%Y-%m-%dT%H:%M:%S"), taken_offset=_format_offset(local.utcoffset()),
            taken_source=MTIME,
        )


def read_metadata(img: Image.Image) -> ImageMetadata:
    """The header facts of an opened (not necessarily loaded) image. Never raises: a damaged EXIF
    block costs the facts in it, not the image."""
    width, height = img.size
    media_type = Image.MIME.get(img.format or "") or (f"image/{img.format.lower()}" if img.format else None)
    try:
        exif = img.getexif()
    except Exception as e:  # noqa: BLE001 - any plugin's failure on a bad block
        log.debug("unreadable EXIF: %s", e)
        return ImageMetadata(width=width, height=height, media_type=media_type)
    facts: dict[str, Any] = {}
    for what, read in (("camera", _camera), ("time", _time), ("gps", _gps), ("orientation", _orientation)):
        try:
            facts.update(read(exif))
        except Exception as e:  # noqa: BLE001 - one bad tag costs that fact only
            log.debug("unreadable EXIF %s: %s", what, e)
    if facts.pop("swap", False):
        width, height = height, width
    return ImageMetadata(width=width, height=height, media_type=media_type, **facts)


def read_metadata_bytes(data: bytes) -> ImageMetadata:
    """read_metadata of the image in data (its header only), opened with the plugin its format
    needs (HEIC). Camera RAW files are read as the TIFF most of them are inside, for their EXIF (the
    size there may be a thumbnail's, so it is left out); one that is not gives its type only.
    Raises what Image.open raises."""
    from .images import HEADER_BYTES, RAW_FORMATS, detect_format, open_image

    fmt = detect_format(data[:HEADER_BYTES])
    if fmt in RAW_FORMATS:
        raw_type = f"image/x-{fmt.lower()}"
        try:
            with Image.open(io.BytesIO(data)) as img:
                return replace(read_metadata(img), width=None, height=None, media_type=raw_type)
        except Exception as e:  # noqa: BLE001 - CR3, RAF and others are not TIFF inside
            log.debug("no TIFF header in this %s file: %s", fmt, e)
            return ImageMetadata(media_type=raw_type)
    with open_image(data, fmt) as img:
        return read_metadata(img)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _camera(exif: Image.Exif) -> dict[str, Any]:
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    lens = _text(ifd.get(_LENS_MODEL))
    lens_make = _text(ifd.get(_LENS_MAKE))
    if lens and lens_make and not lens.lower().startswith(lens_make.lower()):
        lens = f"{lens_make} {lens}"
    return {"make": _text(exif.get(_MAKE)), "model": _text(exif.get(_MODEL)), "lens": lens or lens_make}


def _time(exif: Image.Exif) -> dict[str, Any]:
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    for tag, offset_tag in ((_DATETIME_ORIGINAL, _OFFSET_ORIGINAL), (_DATETIME_DIGITIZED, _OFFSET_DIGITIZED)):
        taken = _exif_time(ifd.get(tag))
        if taken is not None:
            return {"taken_at": taken, "taken_offset": _exif_offset(ifd.get(offset_tag)), "taken_source": EXIF}
    return {}


def _exif_time(value: Any) -> str | None:
    """"2023:06:14 10:30:00" -> "2023-06-14T10:30:00"; blank or impossible times -> None."""
    text = _text(value)
    if not text:
        return None
    try:
        parsed = dt.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return parsed.strftime("%Y-%m-%dT%H:%M:%S")


def _exif_offset(value: Any) -> str | None:
    match = _OFFSET.match(_text(value) or "")
    if not match:
        return None
    sign, hours, minutes = match.groups()
    if int(hours) > 14 or int(minutes) >= 60:
        return None
    return f"{sign}{hours}:{minutes}"


def _format_offset(offset: dt.timedelta | None) -> str | None:
    if offset is None:
        return None
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _gps(exif: Image.Exif) -> dict[str, Any]:
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if not gps:
        return {}
    lat = _degrees(gps.get(_GPS_LAT), _text(gps.get(_GPS_LAT_REF)), "S")
    lon = _degrees(gps.get(_GPS_LON), _text(gps.get(_GPS_LON_REF)), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return {}  # 0,0 is what receivers without a fix write
    facts: dict[str, Any] = {"latitude": round(lat, 7), "longitude": round(lon, 7)}
    alt = gps.get(_GPS_ALT)
    if alt is not None and math.isfinite(float(alt)):
        ref = gps.get(_GPS_ALT_REF)
        below = ref in (1, b"\x01") or (isinstance(ref, bytes) and ref[:1] == b"\x01")
        facts["altitude"] = round(-float(alt) if below else float(alt), 2)
    return facts


def _degrees(value: Any, ref: str | None, negative: str) -> float | None:
    """(degrees, minutes, seconds) rationals -> signed decimal degrees."""
    if value is None:
        return None
    parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    if not parts or not all(math.isfinite(p) for p in parts):
        return None
    degrees = sum(p / 60**i for i, p in enumerate(parts[:3]))
    return -degrees if (ref or "").upper().startswith(negative) else degrees


def _orientation(exif: Image.Exif) -> dict[str, Any]:
    return {"swap": exif.get(_ORIENTATION) in _SWAPPING_ORIENTATIONS}


def perceptual_hash(img: Image.Image) -> str:
    """imagehash.phash of a picture as shown, as its 16 hex digits: the picture in grey, resized to
    32x32 (Lanczos), its 2-D DCT-II, and each of the 8x8 lowest frequencies against their median.
    The DCT is scipy.fftpack's (unnormalised) as a product with a fixed matrix: imagehash imports
    scipy for it, which cost each decoder process 0.23 s before its first image."""
    pixels = np.asarray(img.convert("L").resize((_PHASH_SIDE, _PHASH_SIDE), Image.LANCZOS), dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8]
    bits = "".join("1" if bit else "0" for bit in (low > np.median(low)).ravel())
    return f"{int(bits, 2):016x}"


_PHASH_SIDE = 32
_n = np.arange(_PHASH_SIDE)
_DCT = 2 * np.cos(np.pi * _n[:, None] * (2 * _n[None, :] + 1) / (2 * _PHASH_SIDE))  # scipy's DCT-II, type 2, norm=None
