"""Decoding: content sniffing, every mode to the RGB a viewer shows, orientation, draft, failures."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from searchlite.errors import ImageDecodeError
from searchlite.media.images import decode_rgb, detect_format, resize_shortest_side


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_formats_are_recognised_by_content_and_decoded(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30), (200, 10, 10)), fmt)
    assert detect_format(data[:16]) == fmt
    decoded = decode_rgb(data)
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == (40, 30)
    r, g, b = decoded.image.getpixel((20, 15))
    assert r > 150 and g < 80 and b < 80


@pytest.mark.parametrize("data", [b"", b"hello world, not an image", b"%PDF-1.4 ...", bytes(range(16))])
def test_non_images_are_not_recognised(data: bytes) -> None:
    assert detect_format(data[:16]) is None


def test_transparency_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert decode_rgb(encode(rgba, "PNG")).image.getpixel((5, 5)) == (255, 255, 255)
    la = Image.new("LA", (10, 10), (0, 0))  # transparent black
    assert decode_rgb(encode(la, "PNG")).image.getpixel((5, 5)) == (255, 255, 255)
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0] * 256)
    assert decode_rgb(encode(palette, "PNG", transparency=0)).image.getpixel((5, 5)) == (255, 255, 255)


def test_opaque_pixels_keep_their_color() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 255, 255))
    assert decode_rgb(encode(rgba, "PNG")).image.getpixel((5, 5)) == (0, 0, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    pixels = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = encode(Image.fromarray(pixels), "PNG")
    r, g, b = decode_rgb(data).image.getpixel((4, 4))
    assert r == g == b and 120 <= r <= 135


def test_float_grayscale_in_unit_range_is_scaled() -> None:
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    data = encode(Image.fromarray(pixels, "F"), "TIFF")
    r, _, _ = decode_rgb(data).image.getpixel((4, 4))
    assert 125 <= r <= 130


def test_cmyk_and_one_bit_become_rgb() -> None:
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # red in CMYK
    r, g, b = decode_rgb(encode(cmyk, "JPEG")).image.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    one_bit = Image.new("1", (10, 10), 1)
    assert decode_rgb(encode(one_bit, "PNG")).image.getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied_and_size_is_as_displayed() -> None:
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_rgb(encode(img, "JPEG", exif=exif))
    assert (decoded.width, decoded.height) == (20, 60)
    assert decoded.image.size == (20, 60)
    assert decoded.image.getpixel((10, 2))[0] > 200  # the band is now on top


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_rgb(buf.getvalue()).image.getpixel((5, 5))
    assert r > 200 and b < 60


def test_draft_decodes_large_jpegs_at_reduced_scale_but_never_below_min_side() -> None:
    data = encode(Image.new("RGB", (4000, 3000), (10, 200, 10)), "JPEG")
    decoded = decode_rgb(data, min_side=448)
    assert (decoded.width, decoded.height) == (4000, 3000)  # the original's size is reported
    assert min(decoded.image.size) >= 448
    assert decoded.image.size[0] < 4000  # but fewer pixels were decoded


def _detailed_photo(size: tuple[int, int], orientation: int = 1) -> bytes:
    """A JPEG with camera-like detail (sharp edges, sensor noise), where a misplaced pixel shows."""
    rng = np.random.default_rng(size[0] * 7 + orientation)
    pixels = rng.normal(128, 40, (size[1] // 16 + 1, size[0] // 16 + 1, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(pixels).resize(size, Image.NEAREST)  # 16-pixel blocks: edges everywhere
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 4, (size[1], size[0], 3)).astype(np.int16)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), "JPEG", quality=92, exif=exif)


@pytest.mark.parametrize("size", [(2000, 1125), (2001, 1499), (1125, 2000)])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("min_side", [64, 128])
def test_a_reduced_decode_gives_the_full_decodes_model_input(size: tuple[int, int], orientation: int, min_side: int) -> None:
    """A JPEG decoded at 1/8 scale is 2000/8 x 1125/8 = 250 x 140.625 pixels, stored as 250 x 141:
    the resize must sample the 140.625 the picture covers, and upright, or every pixel shifts."""
    from PIL import ImageOps

    data = _detailed_photo(size, orientation)
    full = resize_shortest_side(ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB")), 64)
    reduced = decode_rgb(data, min_side=min_side, resize_shortest=64).image
    assert reduced.size == full.size
    diff = np.abs(np.asarray(reduced, dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert diff.mean() < 1.5, diff.mean()  # sampling 141 rows instead: 2.6-2.7, and 16:9 a column short


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # PNG signature, garbage after
        b"\xff\xd8\xff" + b"\x00" * 40,  # JPEG marker, garbage after
        b"GIF89a",
        b"not an image at all",
    ],
)
def test_garbage_raises_a_readable_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="cannot decode image|unsupported"):
        decode_rgb(data)


def test_unsupported_formats_are_refused() -> None:
    data = encode(Image.new("RGB", (10, 10)), "PPM")
    with pytest.raises(ImageDecodeError, match="unsupported image format PPM"):
        decode_rgb(data)


@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (777, 333), (300, 300), (150, 200)])
def test_resizing_in_the_decoder_gives_the_model_input_pixel_for_pixel(size: tuple[int, int]) -> None:
    """The decoder processes do the model's first step (bicubic resize of the shorter side), so
    the preprocessed tensor is exactly the one open_clip's transform makes from the decoded image."""
    import torch
    from torchvision import transforms

    preprocess = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
    ])
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size[1] // 10 + 1, size[0] // 10 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    plain = decode_rgb(buf.getvalue(), 448, center_crop=True).image
    resized = decode_rgb(buf.getvalue(), 448, center_crop=True, resize_shortest=224).image
    assert min(resized.size) == 224
    assert torch.equal(preprocess(plain), preprocess(resized))
