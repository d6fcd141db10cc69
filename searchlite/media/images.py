"""Safe image decoding: bytes in, the RGB picture a viewer would show out.

Recognises images by content (magic bytes), never by extension (except, as a last resort, a RAW
whose TIFF structure says too little); applies EXIF orientation; takes the first frame of
animations and multi-page files; converts every mode to RGB, compositing transparency over a white
background and scaling high-bit-depth grayscale to 8 bits.

HEIC/HEIF needs pillow-heif and camera RAW needs rawpy (the `heif` and `raw` extras); AVIF needs a
Pillow built with it (11.3 and later). Without them such a file fails with the install command as
its reason, never silently.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import ImageDecodeError
from . import raw
from .raw import RAW_FORMATS

log = logging.getLogger(__name__)

# Pillow format names we accept. MPO is the multi-picture JPEG many cameras write; HEIF is
# pillow-heif's. Camera RAW (RAW_FORMATS) goes through rawpy instead.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "TIFF", "BMP", "HEIF", "AVIF"})

# Bumped whenever detect_format learns formats: a file judged "not an image" under an older
# number is looked at again (2: HEIF, AVIF and camera RAW; 3: videos, which the indexer recognises)
FORMATS_VERSION = 3

# How many leading bytes detect_format reads: a TIFF-based RAW is told from a plain TIFF by tags in
# its first directory, which cameras write near the start
HEADER_BYTES = 65536

# ISO base media file brands (the ftyp box): HEIF stills and sequences, AVIF, Canon's CR3
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})

# the optional extras: what each provides, and the command that installs it
_EXTRAS = {
    "heif": ("HEIC/HEIF images need the pillow-heif package", "pip install 'searchlite[heif]'"),
    "avif": ("AVIF images need Pillow 11.3 or later (built with AVIF)", "pip install 'searchlite[heif]'"),
    "raw": ("camera raw files need the rawpy package", "pip install 'searchlite[raw]'"),
}

BACKGROUND = (255, 255, 255)

# (width, height) of the full picture in the units of the current pixels; exact, as fractions
Extent = tuple[Fraction, Fraction]


def detect_format(header: bytes, name: str | None = None) -> str | None:
    """The image format named by a file's first bytes (up to HEADER_BYTES of them), or None when it
    is not a supported image: a Pillow format name, or one of RAW_FORMATS. name: the file's name,
    consulted only for a TIFF-structured file whose first directory does not say whether it is RAW."""
    if header.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        return raw.tiff_raw_format(header, name) or "TIFF"
    if header[:2] == b"BM":
        return "BMP"
    if header[4:8] == b"ftyp":
        return _iso_media_format(header)
    return raw.magic_format(header)


def _iso_media_format(header: bytes) -> str | None:
    """HEIF, AVIF or CR3 from an ISO base media file's ftyp box (major and compatible brands)."""
    major = header[8:12]
    if major == b"crx ":
        return "CR3"
    box_size = int.from_bytes(header[:4], "big")
    compatible = {header[i : i + 4] for i in range(16, min(box_size, len(header)) - 3, 4)}
    if major in _AVIF_BRANDS:
        return "AVIF"
    if major in _HEIF_BRANDS:
        return "HEIF"
    if major in _GENERIC_BRANDS:
        if compatible & _HEIF_BRANDS:
            return "HEIF"
        if compatible & _AVIF_BRANDS:
            return "AVIF"
        return "HEIF"  # a HEIF of another codec: libheif decides
    return None


def missing_extra(fmt: str | None) -> str | None:
    """The optional extra ("heif", "avif", "raw") that decoding fmt needs and this installation
    lacks, or None. Cheap: it finds modules without importing them."""
    if fmt in RAW_FORMATS:
        return None if importlib.util.find_spec("rawpy") is not None else "raw"
    if fmt == "HEIF":
        return None if importlib.util.find_spec("pillow_heif") is not None else "heif"
    if fmt == "AVIF":
        return None if _pillow_has_avif() else "avif"
    return None


def extra_available(extra: str) -> bool:
    """Whether an extra named by missing_extra is installed now."""
    fmt = {"heif": "HEIF", "avif": "AVIF", "raw": "DNG"}.get(extra)
    return fmt is not None and missing_extra(fmt) is None


def missing_extra_reason(extra: str) -> str:
    """Why a file needing this extra was not decoded, with the command that fixes it."""
    what, command = _EXTRAS[extra]
    return f"{what}: {command}"


def _pillow_has_avif() -> bool:
    from PIL import features

    return bool(features.check_module("avif"))


@functools.cache
def _register_heif_opener() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


def open_image(data: bytes, fmt: str | None = None) -> Image.Image:
    """Open a picture Pillow reads (any but camera RAW), the plugins its format needs registered:
    its header, size and EXIF (getexif()) are read, its pixels not yet. fmt: detect_format's answer,
    when known. Raises ImageDecodeError (the install command when an extra is missing)."""
    fmt = fmt or detect_format(data[:HEADER_BYTES])
    if fmt in RAW_FORMATS:
        raise ImageDecodeError(f"{fmt} is a camera raw format: decode it with decode_rgb")
    extra = missing_extra(fmt)
    if extra is not None:
        raise ImageDecodeError(missing_extra_reason(extra))
    if fmt == "HEIF":
        try:
            _register_heif_opener()
        except ImportError as e:  # present but broken (a missing shared library)
            raise ImageDecodeError(f"{missing_extra_reason('heif')} ({e})") from e
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageDecodeError("cannot decode image: damaged or unrecognised image data") from e
    if img.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(f"unsupported image format {img.format}")
    return img


@dataclass(frozen=True)
class Decoded:
    """A decoded picture and the full size of the original, as displayed (after EXIF rotation)."""

    image: Image.Image
    width: int
    height: int


def _megapixels(pixels: int) -> str:
    """150 for large counts; 0.004 rather than 0 for tiny limits (a test's, or a typo's)."""
    return f"{pixels / 1e6:.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.3g}"


def decode_rgb(
    data: bytes,
    min_side: int | None = None,
    *,
    max_pixels: int | None = None,
    center_crop: bool = False,
    resize_shortest: int | None = None,
    name: str | None = None,
) -> Decoded:
    """Decode image bytes to an RGB image, oriented as its EXIF says.

    min_side: when given, JPEGs are decoded at a reduced DCT scale (Image.draft) to no less than
      this on their shorter side, and any picture is box-reduced to no less than twice this.
      Several times faster for camera photos, and nearly the same after the model's own resize.
    max_pixels: refuse larger images from their header alone, before any pixel is decoded.
    center_crop: the model will resize the shorter side and crop the centre square, so a very
      long strip (say 5000x20) is first cut to the part that survives, keeping memory bounded.
    resize_shortest: finish with the model's own first step, a bicubic resize of the shorter side
      to this (pixel for pixel what open_clip's Resize does), so that what leaves a decoder
      process is the small picture.
    name: the file's name, for detect_format's last resort.
    Camera RAW: the camera's embedded preview when its shorter side is at least min_side (a JPEG
    the camera rendered: fast), else a demosaic of the sensor data with the camera's white balance
    (2x2 binned when even half the sensor is over twice min_side, bilinear when reduced for a model
    at all, LibRaw's AHD for a full-quality decode). Either way the RAW's orientation
    is applied once (a preview's own EXIF is ignored: previews are stored as the sensor saw them).
    Raises ImageDecodeError with a reason a user can read.
    """
    try:
        fmt = detect_format(data[:HEADER_BYTES], name)
        if fmt in RAW_FORMATS:
            img, width, height, transpose = _open_raw(data, min_side, max_pixels)
        else:
            img = open_image(data, fmt)
            width, height = img.size
            _check_pixels(width, height, max_pixels)
            transpose = None
        # the full picture's extent in the current pixels: a reduced decode's last row and column
        # hold only part of a pixel's worth (4000x2250 at 1/8 is 500x281.25, stored as 500x282)
        extent = (Fraction(img.size[0]), Fraction(img.size[1]))
        if min_side and img.format in ("JPEG", "MPO"):
            drafted = img.draft(None, (min_side, min_side))  # (mode, (0, 0, w, h)): the extent, scaled
            if drafted:
                extent = (Fraction(drafted[1][2]), Fraction(drafted[1][3]))
        if fmt not in RAW_FORMATS:
            transpose = _exif_transpose(img)
        img.load()  # first frame only; later frames are never decoded
        img = to_rgb(img)
        if center_crop:
            img, extent = _crop_long_strip(img, extent)
        if min_side:
            img, extent = _reduce(img, extent, 2 * min_side)
        if resize_shortest:
            img = resize_shortest_side(img, resize_shortest, extent)
        # EXIF orientation last, where it is cheapest and the extent (anchored at the top left of
        # the stored pixels) is still simple; none of the steps above depends on it
        if transpose is not None:
            img = img.transpose(transpose)
            if transpose in _SWAPS_SIDES:
                width, height = height, width
        return Decoded(img, width, height)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"image too large to decode safely ({e}); raise the megapixel limit to index it", setting="max_megapixels") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("cannot decode image: damaged or unrecognised image data") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        # Pillow signals unreadable and truncated data with these; truncated files are rejected,
        # never indexed from the part that decoded
        if "truncated" in str(e).lower():
            raise ImageDecodeError("cannot decode image: the file is truncated (its data ends early)") from e
        raise ImageDecodeError(f"cannot decode image: {e}") from e


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} ({_megapixels(width * height)} MP), over the "
            f"{_megapixels(max_pixels)} MP limit; raise the limit to index it",
            setting="max_megapixels",
        )


def _open_raw(
    data: bytes, min_side: int | None, max_pixels: int | None
) -> tuple[Image.Image, int, int, Image.Transpose | None]:
    """A camera RAW as (picture as the sensor saw it, sensor width, height, the transpose that
    shows it upright); see decode_rgb."""
    try:
        opened = raw.RawFile(data)
    except ImportError as e:
        reason = missing_extra_reason("raw")
        raise ImageDecodeError(reason if isinstance(e, ModuleNotFoundError) else f"{reason} ({e})") from e
    with opened:
        width, height = opened.size
        _check_pixels(width, height, max_pixels)
        transpose = _TRANSPOSES.get(opened.orientation)
        if min_side:
            preview = opened.preview()
            if preview is not None and _preview_serves(preview.size, (width, height), min_side):
                return preview, width, height, transpose
        half_size = bool(min_side) and min(width, height) >= 4 * min_side
        return opened.demosaic(half_size=half_size, fast=bool(min_side)), width, height, transpose


def _preview_serves(preview: tuple[int, int], sensor: tuple[int, int], min_side: int) -> bool:
    """A preview stands in for the RAW when it is big enough for the model and shows the same
    frame (some cameras letterbox previews to another aspect ratio)."""
    if min(preview) < min_side:
        return False
    aspect, sensor_aspect = preview[0] / preview[1], sensor[0] / sensor[1]
    return abs(aspect - sensor_aspect) <= 0.02 * sensor_aspect


def _crop_long_strip(img: Image.Image, extent: Extent) -> tuple[Image.Image, Extent]:
    """Keep the centre of a very elongated picture: twice its short side, which holds the centre
    square the model crops plus margin for the resampling filter."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    if long <= 3 * short:
        return img, extent
    keep = 2 * short
    start = (long - keep) // 2
    if w > h:
        return img.crop((start, 0, start + keep, h)), (Fraction(keep), extent[1])
    return img.crop((0, start, w, start + keep)), (extent[0], Fraction(keep))


def resize_shortest_side(img: Image.Image, size: int, extent: Extent | None = None) -> Image.Image:
    """torchvision's Resize(size, BICUBIC) on a PIL image: the shorter side becomes size, the
    longer one int(size * long / short). extent: how much of the current pixels the picture covers
    (see decode_rgb), from which the size is computed and the pixels sampled, so that a reduced
    decode gives the full one's geometry; by default, all of them."""
    w, h = extent or img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img.resize(new, Image.BICUBIC, box=(0, 0, float(w), float(h)))


def _reduce(img: Image.Image, extent: Extent, min_side: int) -> tuple[Image.Image, Extent]:
    """Box-reduce by an integer factor while the shorter side stays at least min_side. A box is a
    cruder filter than the bicubic resize after it, so decode_rgb leaves that twice the room."""
    factor = min(img.size) // min_side
    if factor < 2:
        return img, extent
    return img.reduce(factor), (extent[0] / factor, extent[1] / factor)


_TRANSPOSES = {  # EXIF orientation -> what shows the picture upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90}


def _exif_transpose(img: Image.Image) -> Image.Transpose | None:
    try:
        return _TRANSPOSES.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception as e:  # a corrupt EXIF block must not cost the picture itself
        log.debug("ignoring unreadable EXIF orientation: %s", e)
        return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB as a viewer would show it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(img)), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    ) or (mode in ("L", "RGB", "1") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _gray_to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grayscale to 0..255."""
    is_float = a.dtype.kind == "f"
    a = a.astype(np.float64)
    if is_float and a.size and np.nanmax(a) <= 1.0 and np.nanmin(a) >= 0.0:
        scale = 255.0  # float images in [0, 1]
    elif a.size and np.nanmax(a) > 255:
        scale = 255.0 / 65535.0  # 16-bit data, however Pillow labelled it
    else:
        scale = 1.0
    return np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
