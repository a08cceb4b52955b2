"""Decoding: every supported format and colour mode, EXIF orientation, draft mode, limits."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.imaging import ImageError, ImageTooLargeError, decode_image
from tests.images import COLORS, photo, solid


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_format_decodes_to_rgb_at_the_model_size(fmt: str) -> None:
    out = decode_image(solid("red", (40, 30), fmt=fmt), size=(16, 16))
    assert out.shape == (16, 16, 3)
    assert out.dtype == np.uint8
    assert out[..., 0].mean() > 180
    assert out[..., 1].mean() < 60


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "1", "LA"])
def test_colour_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode in ("1", "LA") else "PNG")
    out = decode_image(solid("green", fmt=fmt, mode=mode), size=(8, 8))
    assert out.shape == (8, 8, 3)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    wide = np.full((10, 10), 32768, dtype=np.uint16)  # mid grey in 16 bits
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    out = decode_image(buf.getvalue(), size=(10, 10))
    assert 120 <= int(out.mean()) <= 135


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (12, 12), COLORS[c]) for c in ("blue", "red", "red")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), size=(12, 12))
    assert out[..., 2].mean() > 180


def test_exif_orientation_is_honoured() -> None:
    # Left half red, right half blue, stored sideways with orientation 6 (rotate 90° clockwise to view).
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = COLORS["red"]
    pixels[:, 20:] = COLORS["blue"]
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = decode_image(buf.getvalue(), size=(40, 40))
    # Viewed upright, the red half is on top and the blue half at the bottom.
    assert out[:15, :, 0].mean() > 150 and out[:15, :, 2].mean() < 100
    assert out[-15:, :, 2].mean() > 150 and out[-15:, :, 0].mean() < 100


def test_large_jpeg_decodes_in_draft_mode_and_matches_a_full_decode() -> None:
    big = Image.open(io.BytesIO(photo())).resize((2560, 1708))
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90)
    fast = decode_image(buf.getvalue(), size=(64, 64)).astype(np.int16)
    full = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    # Draft mode decodes at 1/8 scale; the result stays close to the full-resolution path.
    assert np.abs(fast - full.astype(np.int16)).mean() < 12


def test_real_photo() -> None:
    assert decode_image(photo(), size=(64, 64)).shape == (64, 64, 3)


def test_resize_method_is_honoured() -> None:
    data = solid("red", (3, 3))
    near = decode_image(data, size=(9, 9), resize_method="nearest")
    assert (near == near[0, 0]).all()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"hello, this is text", "not a recognised image"),
        (solid("red", (64, 64))[:60], "truncated or corrupt"),
        (b"%PDF-1.4 not an image", "not a recognised image"),
    ],
)
def test_bad_bytes_are_named(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data, size=(16, 16))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming huge dimensions, tiny on the wire: a decompression bomb's calling card."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="the limit is 1000"):
        decode_image(solid("red", (40, 40)), size=(8, 8), max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header_only(100_000, 100_000), size=(8, 8))
